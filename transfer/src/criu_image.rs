//! Just enough of CRIU's image format to cut page data by virtual address.
//!
//! A CRIU image file (other than raw ones like `pages-*.img`) starts with magic u32s (little
//! endian): `IMG_COMMON_MAGIC` or `IMG_SERVICE_MAGIC`, then the image type's magic. Then come
//! entries, each a u32 length and that many bytes of protobuf. `pagemap-*.img` holds a
//! `pagemap_head { pages_id }` and then `pagemap_entry { vaddr, compat_nr_pages, in_parent, flags,
//! nr_pages }` runs; the runs flagged `PE_PRESENT` are stored back to back in `pages-<pages_id>.img`.
//! (Field numbers from CRIU 4.2's `images/pagemap.proto`; flags from `criu/include/pagemap.h`.)
//!
//! Parsing is pure and bounded: it never panics and never allocates more than the input allows.

pub const PAGE_SIZE: u64 = 4096;
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;

pub const PE_PARENT: u32 = 1 << 0;
pub const PE_LAZY: u32 = 1 << 1;
pub const PE_PRESENT: u32 = 1 << 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("not a CRIU pagemap image (magic {0:#010x})")]
    NotPagemap(u32),
    #[error("truncated CRIU image at byte {0}")]
    Truncated(usize),
    #[error("malformed protobuf entry at byte {0}: {1}")]
    Protobuf(usize, &'static str),
    #[error("pagemap has no head entry")]
    NoHead,
}

/// One run of consecutive pages of a pagemap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub vaddr: u64,
    pub nr_pages: u64,
    pub flags: u32,
}

impl PageRun {
    /// Whether this run's pages are stored in the matching `pages-*.img`.
    pub fn in_pages_file(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pagemap {
    /// The `N` of the `pages-N.img` that holds this pagemap's page data.
    pub pages_id: u32,
    pub runs: Vec<PageRun>,
}

impl Pagemap {
    /// Bytes of page data this pagemap expects in its pages file.
    pub fn present_bytes(&self) -> u64 {
        self.runs.iter().filter(|r| r.in_pages_file()).map(|r| r.nr_pages.saturating_mul(PAGE_SIZE)).fold(0, u64::saturating_add)
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, ImageError> {
    let b = bytes.get(at..at + 4).ok_or(ImageError::Truncated(at))?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Parses a `pagemap-*.img` (or `pagemap-shmem-*.img`).
pub fn parse_pagemap(bytes: &[u8]) -> Result<Pagemap, ImageError> {
    let mut at = 0;
    let first = read_u32(bytes, at)?;
    at += 4;
    let magic = if first == IMG_COMMON_MAGIC || first == IMG_SERVICE_MAGIC {
        at += 4;
        read_u32(bytes, 4)?
    } else {
        first
    };
    if magic != PAGEMAP_MAGIC {
        return Err(ImageError::NotPagemap(magic));
    }
    let mut head = None;
    let mut runs = Vec::new();
    while at < bytes.len() {
        let len = read_u32(bytes, at)? as usize;
        let start = at + 4;
        let body = bytes.get(start..start.saturating_add(len)).ok_or(ImageError::Truncated(start))?;
        if head.is_none() {
            let fields = Fields::parse(body, start)?;
            head = Some(fields.get(1).ok_or(ImageError::Protobuf(start, "head without pages_id"))? as u32);
        } else {
            let f = Fields::parse(body, start)?;
            let vaddr = f.get(1).ok_or(ImageError::Protobuf(start, "entry without vaddr"))?;
            let nr_pages = f.get(5).or(f.get(2)).ok_or(ImageError::Protobuf(start, "entry without nr_pages"))?;
            // Images from before `flags` existed say `in_parent` instead.
            let flags = match f.get(4) {
                Some(flags) => flags as u32,
                None if f.get(3) == Some(1) => PE_PARENT,
                None => PE_PRESENT,
            };
            runs.push(PageRun { vaddr, nr_pages, flags });
        }
        at = start + len;
    }
    Ok(Pagemap { pages_id: head.ok_or(ImageError::NoHead)?, runs })
}

/// The scalar fields of one protobuf message we care about (numbers 1..=5; others skipped).
struct Fields([Option<u64>; 6]);

impl Fields {
    fn get(&self, n: usize) -> Option<u64> {
        self.0.get(n).copied().flatten()
    }

    fn parse(mut body: &[u8], offset: usize) -> Result<Self, ImageError> {
        let mut out = [None; 6];
        while !body.is_empty() {
            let key = varint(&mut body).ok_or(ImageError::Protobuf(offset, "bad field key"))?;
            let (field, wire) = (key >> 3, key & 7);
            let value = match wire {
                0 => varint(&mut body).ok_or(ImageError::Protobuf(offset, "bad varint"))?,
                1 => take(&mut body, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))?,
                5 => take(&mut body, 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as u64)?,
                2 => {
                    let len = varint(&mut body).ok_or(ImageError::Protobuf(offset, "bad length"))?;
                    take(&mut body, usize::try_from(len).unwrap_or(usize::MAX))?;
                    continue;
                }
                _ => return Err(ImageError::Protobuf(offset, "unsupported wire type")),
            };
            if let Some(slot) = usize::try_from(field).ok().and_then(|f| out.get_mut(f)) {
                *slot = Some(value);
            }
        }
        return Ok(Fields(out));

        fn take<'a>(body: &mut &'a [u8], n: usize) -> Result<&'a [u8], ImageError> {
            if body.len() < n {
                return Err(ImageError::Protobuf(0, "field runs past its entry"));
            }
            let (head, rest) = body.split_at(n);
            *body = rest;
            Ok(head)
        }
    }
}

fn varint(body: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = body.split_first()?;
        *body = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Appends `value` as a protobuf varint.
pub fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        out.push(if value == 0 { b } else { b | 0x80 });
        if value == 0 {
            break;
        }
    }
}

/// Appends one length-prefixed `pagemap_entry { vaddr = 1, compat_nr_pages = 2 (0, as CRIU 4
/// writes it), flags = 4, nr_pages = 5 }`: what [`parse_pagemap`] reads back as `run`.
pub fn push_pagemap_entry(out: &mut Vec<u8>, run: &PageRun) {
    let mut body = Vec::with_capacity(24);
    for (field, value) in [(1u8, run.vaddr), (2, 0), (4, run.flags as u64), (5, run.nr_pages)] {
        body.push(field << 3);
        push_varint(&mut body, value);
    }
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
}

/// Cuts the page data of `pagemap` into chunks whose boundaries sit at multiples of `chunk_bytes`
/// in the process's *virtual address space* (and at run ends). A page that did not change keeps
/// its chunk's hash even when runs before it grew or shrank, which file-offset cutting loses.
/// Returns the chunk lengths in file order; they add up to [`Pagemap::present_bytes`].
pub fn vaddr_cuts(pagemap: &Pagemap, chunk_bytes: u64) -> Vec<u64> {
    let chunk_bytes = chunk_bytes.max(PAGE_SIZE) / PAGE_SIZE * PAGE_SIZE;
    let mut out = Vec::new();
    for run in pagemap.runs.iter().filter(|r| r.in_pages_file()) {
        let mut at = run.vaddr;
        let end = run.vaddr.saturating_add(run.nr_pages.saturating_mul(PAGE_SIZE));
        while at < end {
            let next_boundary = (at / chunk_bytes).saturating_add(1).saturating_mul(chunk_bytes);
            let cut = next_boundary.min(end);
            out.push(cut - at);
            at = cut;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(u8, u64)]) -> Vec<u8> {
        let mut body = Vec::new();
        for &(n, v) in fields {
            body.push(n << 3);
            push_varint(&mut body, v);
        }
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend(body);
        out
    }

    fn image(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        out.extend(PAGEMAP_MAGIC.to_le_bytes());
        entries.iter().for_each(|e| out.extend(e));
        out
    }

    #[test]
    fn parses_criu_4_pagemap() {
        let bytes = image(&[
            entry(&[(1, 3)]),
            entry(&[(1, 0x7000), (2, 0), (4, 4), (5, 3)]),
            entry(&[(1, 0x20000), (2, 2), (4, 6)]),
            entry(&[(1, 0x40000), (2, 0), (4, 1), (5, 9)]),
        ]);
        let pm = parse_pagemap(&bytes).unwrap();
        assert_eq!(pm.pages_id, 3);
        assert_eq!(pm.runs.len(), 3);
        assert_eq!(pm.runs[0], PageRun { vaddr: 0x7000, nr_pages: 3, flags: PE_PRESENT });
        assert_eq!(pm.runs[1].nr_pages, 2, "compat_nr_pages used when nr_pages is absent");
        assert_eq!(pm.present_bytes(), 5 * PAGE_SIZE);
        // 0x7000..0xa000 with 16 KiB cuts: [0x7000,0x8000) then [0x8000,0xa000); run 2: one chunk.
        assert_eq!(vaddr_cuts(&pm, 16384), vec![4096, 8192, 8192]);
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let mut bytes = image(&[entry(&[(1, 1)])]);
            bytes.extend((0..len).map(|i| (i * 37) as u8));
            let _ = parse_pagemap(&bytes);
            let _ = parse_pagemap(&bytes[..len.min(bytes.len())]);
        }
        assert!(matches!(parse_pagemap(&[1, 2, 3, 4, 5, 6, 7, 8]), Err(ImageError::NotPagemap(_))));
    }
}
