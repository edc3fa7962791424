//! `pagemap-*.img`: a `pagemap_head { pages_id = 1 }`, then `pagemap_entry { vaddr = 1,
//! compat_nr_pages = 2, in_parent = 3, flags = 4, nr_pages = 5 }` runs. The runs flagged
//! `PE_PRESENT` are stored back to back in `pages-<pages_id>.img`.

use crate::image::Image;
use crate::proto::push_entry;
use crate::{FormatError, PAGEMAP_MAGIC, PAGE_SIZE, PE_PARENT, PE_PRESENT};

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

    /// The pagemap of an image already checked to be one ([`Image::parse`] with
    /// [`PAGEMAP_MAGIC`]).
    pub fn from_image(image: &Image<'_>) -> Result<Pagemap, FormatError> {
        let mut entries = image.entries();
        let head = entries.next().unwrap_or(Err(FormatError::NoEntries))?;
        let at = head.offset;
        let pages_id = head.message()?.varint(1).ok_or(FormatError::Protobuf { at, what: "head without pages_id" })?;
        let pages_id = u32::try_from(pages_id).map_err(|_| FormatError::Protobuf { at, what: "pages_id out of range" })?;
        let mut runs = Vec::new();
        for entry in entries {
            let entry = entry?;
            let (f, at) = (entry.message()?, entry.offset);
            let vaddr = f.varint(1).ok_or(FormatError::Protobuf { at, what: "entry without vaddr" })?;
            let nr_pages = f.varint(5).or(f.varint(2)).ok_or(FormatError::Protobuf { at, what: "entry without nr_pages" })?;
            // Images from before `flags` existed say `in_parent` instead.
            let flags = match f.varint(4) {
                Some(flags) => flags as u32,
                None if f.varint(3) == Some(1) => PE_PARENT,
                None => PE_PRESENT,
            };
            runs.push(PageRun { vaddr, nr_pages, flags });
        }
        Ok(Pagemap { pages_id, runs })
    }
}

/// Parses a `pagemap-*.img` (or `pagemap-shmem-*.img`).
pub fn parse_pagemap(bytes: &[u8]) -> Result<Pagemap, FormatError> {
    Pagemap::from_image(&Image::parse(bytes, PAGEMAP_MAGIC)?)
}

/// Appends one length-prefixed `pagemap_entry { vaddr = 1, compat_nr_pages = 2 (0, as CRIU 4
/// writes it), flags = 4, nr_pages = 5 }`: what [`parse_pagemap`] reads back as `run`.
pub fn push_pagemap_entry(out: &mut Vec<u8>, run: &PageRun) {
    push_entry(out, &[(1, run.vaddr), (2, 0), (4, run.flags as u64), (5, run.nr_pages)]);
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
    use crate::{push_entry, IMG_COMMON_MAGIC};

    fn image(entries: &[&[(u32, u64)]]) -> Vec<u8> {
        let mut out = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        out.extend(PAGEMAP_MAGIC.to_le_bytes());
        entries.iter().for_each(|e| push_entry(&mut out, e));
        out
    }

    #[test]
    fn parses_criu_4_pagemap() {
        let bytes = image(&[
            &[(1, 3)],
            &[(1, 0x7000), (2, 0), (4, 4), (5, 3)],
            &[(1, 0x20000), (2, 2), (4, 6)],
            &[(1, 0x40000), (2, 0), (4, 1), (5, 9)],
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
    fn old_images_say_in_parent() {
        let pm = parse_pagemap(&image(&[&[(1, 1)], &[(1, 0x1000), (3, 1), (5, 2)], &[(1, 0x9000), (2, 1)]])).unwrap();
        assert_eq!(pm.runs.iter().map(|r| r.flags).collect::<Vec<_>>(), vec![PE_PARENT, PE_PRESENT]);
        assert_eq!(pm.present_bytes(), PAGE_SIZE);
    }

    #[test]
    fn written_entries_read_back() {
        let run = PageRun { vaddr: 0x7f00_dead_b000, nr_pages: 300, flags: PE_PRESENT | crate::PE_LAZY };
        let mut bytes = image(&[&[(1, 9)]]);
        push_pagemap_entry(&mut bytes, &run);
        assert_eq!(parse_pagemap(&bytes).unwrap(), Pagemap { pages_id: 9, runs: vec![run] });
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let mut bytes = image(&[&[(1, 1)]]);
            bytes.extend((0..len).map(|i| (i * 37) as u8));
            let _ = parse_pagemap(&bytes);
            let _ = parse_pagemap(&bytes[..len.min(bytes.len())]);
        }
        assert!(matches!(parse_pagemap(&[1, 2, 3, 4, 5, 6, 7, 8]), Err(FormatError::BadMagic { .. })));
        assert_eq!(parse_pagemap(&image(&[])), Err(FormatError::NoEntries));
        assert!(matches!(parse_pagemap(&image(&[&[(2, 1)]])), Err(FormatError::Protobuf { what: "head without pages_id", .. })));
    }
}
