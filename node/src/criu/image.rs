//! Just enough of CRIU's image format to read the two small files we need without `crit`:
//! `inventory.img` (its image format version, to refuse images from a newer CRIU) and
//! `stats-dump`/`stats-restore` (freeze and restore timings).
//!
//! An image file is `u32 set-magic, u32 file-magic`, then entries of `u32 length` + protobuf.
//! The protobuf reader below understands varints and skips everything else, which is all these
//! messages use.

use std::path::Path;

/// CRIU's image set magics (criu/include/magic.h).
const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
const INVENTORY_MAGIC: u32 = 0x5831_3116;
const STATS_MAGIC: u32 = 0x5709_3306;
const PAGEMAP_MAGIC: u32 = 0x5608_4025;
const PAGE_SIZE: u64 = 4096;
/// pagemap_entry flags (criu/include/pagemap.h).
const PE_PARENT: u64 = 1 << 0;
const PE_PRESENT: u64 = 1 << 2;

/// Newest image layout this driver was tested with (`CRTOOLS_IMAGES_V1_1`).
pub const SUPPORTED_IMG_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a CRIU image of the expected kind (magic {magic:#x})")]
    BadMagic { path: String, magic: u32 },
    #[error("{path} is truncated or corrupt")]
    Corrupt { path: String },
    #[error("{pages} holds {found} bytes but {pagemap} lists {expected}: the images are truncated or corrupt")]
    PagesSize { pages: String, pagemap: String, found: u64, expected: u64 },
}

/// Reads the first entry of an image file after checking its magic.
fn first_entry(path: &Path, magic: u32) -> Result<Vec<u8>, ImageError> {
    let p = || path.display().to_string();
    let data = std::fs::read(path).map_err(|source| ImageError::Read { path: p(), source })?;
    let word = |i: usize| data.get(i..i + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let (first, mut at) = (word(0).ok_or_else(|| ImageError::Corrupt { path: p() })?, 4);
    // Inventory and stats carry a set magic first; the file magic follows.
    if first == IMG_COMMON_MAGIC || first == IMG_SERVICE_MAGIC {
        at = 8;
    }
    let found = word(at - 4).ok_or_else(|| ImageError::Corrupt { path: p() })?;
    if found != magic {
        return Err(ImageError::BadMagic { path: p(), magic: found });
    }
    let len = word(at).ok_or_else(|| ImageError::Corrupt { path: p() })? as usize;
    data.get(at + 4..at + 4 + len).map(<[u8]>::to_vec).ok_or_else(|| ImageError::Corrupt { path: p() })
}

/// Varint fields of one protobuf message (field number, value); nested messages as bytes.
fn fields(mut buf: &[u8]) -> Option<Vec<(u32, Field<'_>)>> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (num, wire) = ((key >> 3) as u32, key & 7);
        let field = match wire {
            0 => Field::Varint(varint(&mut buf)?),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                buf = buf.get(n..)?;
                continue;
            }
            2 => {
                let n = varint(&mut buf)? as usize;
                let (bytes, rest) = (buf.get(..n)?, buf.get(n..)?);
                buf = rest;
                Field::Bytes(bytes)
            }
            _ => return None,
        };
        out.push((num, field));
    }
    Some(out)
}

#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint_field(fields: &[(u32, Field<'_>)], num: u32) -> Option<u64> {
    // Protobuf: the last occurrence of a scalar field wins.
    fields.iter().rev().find_map(|(n, f)| match (n, f) {
        (n, Field::Varint(v)) if *n == num => Some(*v),
        _ => None,
    })
}

fn bytes_field<'a>(fields: &[(u32, Field<'a>)], num: u32) -> Option<&'a [u8]> {
    fields.iter().find_map(|(n, f)| match (n, f) {
        (n, Field::Bytes(b)) if *n == num => Some(*b),
        _ => None,
    })
}

/// `img_version` of `DIR/inventory.img`.
pub fn inventory_version(image_dir: &Path) -> Result<u32, ImageError> {
    let path = image_dir.join("inventory.img");
    let entry = first_entry(&path, INVENTORY_MAGIC)?;
    let f = fields(&entry).ok_or_else(|| ImageError::Corrupt { path: path.display().to_string() })?;
    varint_field(&f, 1).map(|v| v as u32).ok_or(ImageError::Corrupt { path: path.display().to_string() })
}

/// All entries of an image file (after its magic), each a protobuf message.
fn entries(path: &Path, magic: u32) -> Result<Vec<Vec<u8>>, ImageError> {
    let p = || path.display().to_string();
    let first = first_entry(path, magic)?;
    let data = std::fs::read(path).map_err(|source| ImageError::Read { path: p(), source })?;
    // first_entry validated the header; find where the entries start again.
    let set = u32::from_le_bytes(data[..4].try_into().unwrap());
    let mut at = if set == IMG_COMMON_MAGIC || set == IMG_SERVICE_MAGIC { 8 } else { 4 };
    let mut out = Vec::new();
    while at < data.len() {
        let len = data.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize).ok_or_else(|| ImageError::Corrupt { path: p() })?;
        out.push(data.get(at + 4..at + 4 + len).ok_or_else(|| ImageError::Corrupt { path: p() })?.to_vec());
        at += 4 + len;
    }
    debug_assert_eq!(out.first(), Some(&first));
    Ok(out)
}

/// Checks every `pagemap-*.img` against its `pages-N.img`: the page file must hold exactly
/// the pages the map says are present. Catches truncated transfers before CRIU restores a
/// tree from them (a short page file makes CRIU's restorer spin on zero-length reads).
/// Only for images whose pages were written locally (not to a page server or left lazy).
pub fn verify_pages(image_dir: &Path) -> Result<(), ImageError> {
    let rd = std::fs::read_dir(image_dir).map_err(|source| ImageError::Read { path: image_dir.display().to_string(), source })?;
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("pagemap-") || !name.ends_with(".img") || name.starts_with("pagemap-shmem") {
            continue;
        }
        let path = entry.path();
        let corrupt = || ImageError::Corrupt { path: path.display().to_string() };
        let all = entries(&path, PAGEMAP_MAGIC)?;
        let (head, maps) = all.split_first().ok_or_else(corrupt)?;
        let pages_id = varint_field(&fields(head).ok_or_else(corrupt)?, 1).ok_or_else(corrupt)?;
        let mut expected = 0u64;
        for m in maps {
            let f = fields(m).ok_or_else(corrupt)?;
            let nr = varint_field(&f, 5).or_else(|| varint_field(&f, 2)).ok_or_else(corrupt)?;
            let flags = varint_field(&f, 4).unwrap_or(if varint_field(&f, 3) == Some(1) { PE_PARENT } else { PE_PRESENT });
            // PE_LAZY only says a page *may* be fetched lazily; a local dump still writes it.
            if flags & PE_PRESENT != 0 && flags & PE_PARENT == 0 {
                expected += nr * PAGE_SIZE;
            }
        }
        let pages = image_dir.join(format!("pages-{pages_id}.img"));
        let found = std::fs::metadata(&pages).map(|m| m.len()).unwrap_or(0);
        if found != expected {
            return Err(ImageError::PagesSize {
                pages: pages.display().to_string(),
                pagemap: path.display().to_string(),
                found,
                expected,
            });
        }
    }
    Ok(())
}

/// Timings CRIU records about a dump (`stats-dump`), microseconds and pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CriuDumpStats {
    pub freezing_us: u64,
    pub frozen_us: u64,
    pub memdump_us: u64,
    pub memwrite_us: u64,
    pub pages_scanned: u64,
    pub pages_written: u64,
}

/// Timings CRIU records about a restore (`stats-restore`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CriuRestoreStats {
    pub forking_us: u64,
    pub restore_us: u64,
    pub pages_restored: u64,
}

fn stats_entry(path: &Path, which: u32) -> Option<Vec<(u32, u64)>> {
    let entry = first_entry(path, STATS_MAGIC).ok()?;
    let outer = fields(&entry)?;
    let inner = fields(bytes_field(&outer, which)?)?;
    Some(inner.into_iter().filter_map(|(n, f)| if let Field::Varint(v) = f { Some((n, v)) } else { None }).collect())
}

pub fn read_dump_stats(image_dir: &Path) -> Option<CriuDumpStats> {
    let f = stats_entry(&image_dir.join("stats-dump"), 1)?;
    let get = |n| f.iter().find(|(k, _)| *k == n).map_or(0, |(_, v)| *v);
    Some(CriuDumpStats {
        freezing_us: get(1),
        frozen_us: get(2),
        memdump_us: get(3),
        memwrite_us: get(4),
        pages_scanned: get(5),
        pages_written: get(7),
    })
}

pub fn read_restore_stats(dir: &Path) -> Option<CriuRestoreStats> {
    let f = stats_entry(&dir.join("stats-restore"), 2)?;
    let get = |n| f.iter().find(|(k, _)| *k == n).map_or(0, |(_, v)| *v);
    Some(CriuRestoreStats { forking_us: get(3), restore_us: get(4), pages_restored: get(5) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(set_magic: Option<u32>, magic: u32, entry: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(m) = set_magic {
            out.extend(m.to_le_bytes());
        }
        out.extend(magic.to_le_bytes());
        out.extend((entry.len() as u32).to_le_bytes());
        out.extend(entry);
        out
    }

    #[test]
    fn reads_inventory_version_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        // field 1 varint 2, field 2 varint 1
        std::fs::write(dir.path().join("inventory.img"), image(Some(IMG_COMMON_MAGIC), INVENTORY_MAGIC, &[0x08, 2, 0x10, 1])).unwrap();
        assert_eq!(inventory_version(dir.path()).unwrap(), 2);
        std::fs::write(dir.path().join("inventory.img"), image(Some(IMG_COMMON_MAGIC), STATS_MAGIC, &[0x08, 2])).unwrap();
        assert!(matches!(inventory_version(dir.path()), Err(ImageError::BadMagic { .. })));
        std::fs::write(dir.path().join("inventory.img"), [1u8, 2, 3]).unwrap();
        assert!(matches!(inventory_version(dir.path()), Err(ImageError::Corrupt { .. })));
    }

    #[test]
    fn reads_dump_stats() {
        let dir = tempfile::tempdir().unwrap();
        // stats_entry { dump (1) = { freezing 1: 5, frozen 2: 300 (0xac 0x02), pages_written 7: 9 } }
        let inner = [0x08, 5, 0x10, 0xac, 0x02, 0x38, 9];
        let mut outer = vec![0x0a, inner.len() as u8];
        outer.extend(inner);
        std::fs::write(dir.path().join("stats-dump"), image(Some(IMG_SERVICE_MAGIC), STATS_MAGIC, &outer)).unwrap();
        let s = read_dump_stats(dir.path()).unwrap();
        assert_eq!((s.freezing_us, s.frozen_us, s.pages_written), (5, 300, 9));
    }
}
