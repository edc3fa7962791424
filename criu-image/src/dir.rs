//! The files of a checkpoint directory: the image format version, page files checked against
//! their pagemaps, CRIU's timings.

use std::path::{Path, PathBuf};

use crate::stats::{parse_dump_stats, parse_inventory_version, parse_restore_stats, CriuDumpStats, CriuRestoreStats};
use crate::{parse_pagemap, FormatError};

/// An image file that cannot be used, and which one.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Format { path: PathBuf, source: FormatError },
    #[error("{} holds {found} bytes but {} lists {expected}: the images are truncated or corrupt", pages.display(), pagemap.display())]
    PagesSize { pages: PathBuf, pagemap: PathBuf, found: u64, expected: u64 },
}

/// Reads `path` and parses it with `parse`.
fn parse_file<T>(path: &Path, parse: impl FnOnce(&[u8]) -> Result<T, FormatError>) -> Result<T, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Read { path: path.to_path_buf(), source })?;
    parse(&bytes).map_err(|source| ImageError::Format { path: path.to_path_buf(), source })
}

/// `img_version` of `DIR/inventory.img` (compare with [`crate::SUPPORTED_IMG_VERSION`]).
pub fn inventory_version(image_dir: &Path) -> Result<u32, ImageError> {
    parse_file(&image_dir.join("inventory.img"), parse_inventory_version)
}

/// Checks every task `pagemap-*.img` against its `pages-N.img`: the page file must hold exactly
/// the pages the map says are present. Catches truncated transfers before CRIU restores a tree
/// from them (a short page file makes CRIU's restorer spin on zero-length reads). Only for
/// images whose pages were written locally (not to a page server or left lazy).
pub fn verify_pages(image_dir: &Path) -> Result<(), ImageError> {
    let rd = std::fs::read_dir(image_dir).map_err(|source| ImageError::Read { path: image_dir.to_path_buf(), source })?;
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("pagemap-") || !name.ends_with(".img") || name.starts_with("pagemap-shmem") {
            continue;
        }
        let pagemap = entry.path();
        // PE_LAZY only says a page *may* be fetched lazily; a local dump still writes it.
        let map = parse_file(&pagemap, parse_pagemap)?;
        let expected = map.present_bytes();
        let pages = image_dir.join(format!("pages-{}.img", map.pages_id));
        let found = std::fs::metadata(&pages).map(|m| m.len()).unwrap_or(0);
        if found != expected {
            return Err(ImageError::PagesSize { pages, pagemap, found, expected });
        }
    }
    Ok(())
}

/// CRIU's timings of the dump in `image_dir` (`stats-dump`), if it wrote them.
pub fn read_dump_stats(image_dir: &Path) -> Option<CriuDumpStats> {
    parse_file(&image_dir.join("stats-dump"), parse_dump_stats).ok()
}

/// CRIU's timings of the restore from `image_dir` (`stats-restore`), if it wrote them.
pub fn read_restore_stats(image_dir: &Path) -> Option<CriuRestoreStats> {
    parse_file(&image_dir.join("stats-restore"), parse_restore_stats).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{push_entry, push_pagemap_entry, PageRun, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, INVENTORY_MAGIC, PAGEMAP_MAGIC, PE_LAZY, PE_PARENT, PE_PRESENT, STATS_MAGIC};

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
        assert!(matches!(inventory_version(dir.path()), Err(ImageError::Format { source: FormatError::BadMagic { .. }, .. })));
        std::fs::write(dir.path().join("inventory.img"), [1u8, 2, 3]).unwrap();
        assert!(matches!(inventory_version(dir.path()), Err(ImageError::Format { source: FormatError::Truncated(_), .. })));
        std::fs::remove_file(dir.path().join("inventory.img")).unwrap();
        assert!(matches!(inventory_version(dir.path()), Err(ImageError::Read { .. })));
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
        assert_eq!(read_restore_stats(dir.path()), None, "no stats-restore");
    }

    #[test]
    fn reads_restore_stats() {
        let dir = tempfile::tempdir().unwrap();
        // stats_entry { restore (2) = { forking 3: 7, restore 4: 11, pages_restored 5: 13 } }
        let inner = [0x18, 7, 0x20, 11, 0x28, 13];
        let mut outer = vec![0x12, inner.len() as u8];
        outer.extend(inner);
        std::fs::write(dir.path().join("stats-restore"), image(Some(IMG_SERVICE_MAGIC), STATS_MAGIC, &outer)).unwrap();
        assert_eq!(read_restore_stats(dir.path()), Some(CriuRestoreStats { forking_us: 7, restore_us: 11, pages_restored: 13 }));
        // The dump part of a restore file is missing, not zero.
        std::fs::copy(dir.path().join("stats-restore"), dir.path().join("stats-dump")).unwrap();
        assert_eq!(read_dump_stats(dir.path()), None);
    }

    #[test]
    fn page_files_must_match_their_pagemaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = [IMG_COMMON_MAGIC, PAGEMAP_MAGIC].iter().flat_map(|m| m.to_le_bytes()).collect::<Vec<u8>>();
        push_entry(&mut map, &[(1, 4)]);
        for (vaddr, nr_pages, flags) in [(0x1000, 2, PE_PRESENT), (0x8000, 5, PE_PARENT), (0x20000, 1, PE_PRESENT | PE_LAZY)] {
            push_pagemap_entry(&mut map, &PageRun { vaddr, nr_pages, flags });
        }
        std::fs::write(dir.path().join("pagemap-1.img"), &map).unwrap();
        // Shmem pagemaps are not checked (their pages may live elsewhere).
        std::fs::write(dir.path().join("pagemap-shmem-9.img"), b"junk").unwrap();
        std::fs::write(dir.path().join("pages-4.img"), vec![0u8; 3 * 4096]).unwrap();
        verify_pages(dir.path()).unwrap();
        std::fs::write(dir.path().join("pages-4.img"), vec![0u8; 2 * 4096]).unwrap();
        let err = verify_pages(dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::PagesSize { found: 8192, expected: 12288, .. }), "{err}");
        std::fs::remove_file(dir.path().join("pages-4.img")).unwrap();
        assert!(matches!(verify_pages(dir.path()), Err(ImageError::PagesSize { found: 0, .. })));
        std::fs::write(dir.path().join("pagemap-2.img"), b"junk").unwrap();
        std::fs::write(dir.path().join("pages-4.img"), vec![0u8; 3 * 4096]).unwrap();
        assert!(matches!(verify_pages(dir.path()), Err(ImageError::Format { .. })));
    }
}
