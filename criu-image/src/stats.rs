//! `inventory.img` (the image format version) and `stats-dump` / `stats-restore` (CRIU's own
//! timings of a dump or restore).

use crate::image::Image;
use crate::{FormatError, INVENTORY_MAGIC, STATS_MAGIC};

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

/// `img_version` (field 1 of `inventory_entry`) of an `inventory.img`.
pub fn parse_inventory_version(bytes: &[u8]) -> Result<u32, FormatError> {
    let entry = Image::parse(bytes, INVENTORY_MAGIC)?.first_entry()?;
    let version = entry.message()?.varint(1).ok_or(FormatError::Protobuf { at: entry.offset, what: "inventory without img_version" })?;
    u32::try_from(version).map_err(|_| FormatError::Protobuf { at: entry.offset, what: "img_version out of range" })
}

/// `stats_entry { dump_stats dump = 1; restore_stats restore = 2; }`: the varints of part `which`.
fn stats_part(bytes: &[u8], which: u32) -> Result<impl Fn(u32) -> u64 + '_, FormatError> {
    let entry = Image::parse(bytes, STATS_MAGIC)?.first_entry()?;
    let part = entry.nested(which)?.ok_or(FormatError::Protobuf { at: entry.offset, what: "stats without the expected part" })?;
    Ok(move |n| part.varint(n).unwrap_or(0))
}

/// A `stats-dump` file's `dump_stats { freezing_time = 1, frozen_time = 2, memdump_time = 3,
/// memwrite_time = 4, pages_scanned = 5, pages_written = 7 }` (absent fields are 0).
pub fn parse_dump_stats(bytes: &[u8]) -> Result<CriuDumpStats, FormatError> {
    let get = stats_part(bytes, 1)?;
    Ok(CriuDumpStats { freezing_us: get(1), frozen_us: get(2), memdump_us: get(3), memwrite_us: get(4), pages_scanned: get(5), pages_written: get(7) })
}

/// A `stats-restore` file's `restore_stats { forking_time = 3, restore_time = 4, pages_restored = 5 }`.
pub fn parse_restore_stats(bytes: &[u8]) -> Result<CriuRestoreStats, FormatError> {
    let get = stats_part(bytes, 2)?;
    Ok(CriuRestoreStats { forking_us: get(3), restore_us: get(4), pages_restored: get(5) })
}
