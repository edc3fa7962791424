//! Just enough of CRIU's image format to work with checkpoints without `crit`, shared by
//! `hotspot-transfer` (cutting page data by virtual address, rewriting pagemaps for incremental
//! images) and `hotspot-node` (refusing images from a newer CRIU, checking page files before a
//! restore, reading dump and restore timings).
//!
//! A CRIU image file (other than raw ones like `pages-*.img`) starts with magic u32s (little
//! endian): `IMG_COMMON_MAGIC` or `IMG_SERVICE_MAGIC`, then the image type's magic. Then come
//! entries, each a u32 length and that many bytes of protobuf. (Magics from
//! `criu/include/magic.h`, field numbers from CRIU 4.2's `images/*.proto`, pagemap flags from
//! `criu/include/pagemap.h`.)
//!
//! Layers, lowest first:
//! - [`push_varint`], [`Message`]: the protobuf subset these images use (varints; other wire
//!   types are skipped or kept as bytes).
//! - [`Image`], [`Entry`]: an image file's magic and its length-prefixed entries.
//! - [`parse_pagemap`], [`parse_inventory_version`], [`parse_dump_stats`],
//!   [`parse_restore_stats`]: the messages we need, from bytes ([`FormatError`] on bad input).
//! - [`inventory_version`], [`verify_pages`], [`read_dump_stats`], [`read_restore_stats`]: the
//!   same read from a checkpoint directory ([`ImageError`] names the file).
//!
//! Parsing is pure and bounded: it never panics and never allocates more than the input allows.

mod dir;
mod image;
mod pagemap;
mod proto;
mod stats;

pub use dir::{inventory_version, read_dump_stats, read_restore_stats, verify_pages, ImageError};
pub use image::{Entries, Entry, Image};
pub use pagemap::{parse_pagemap, push_pagemap_entry, vaddr_cuts, PageRun, Pagemap};
pub use proto::{push_entry, push_varint, Message, Value};
pub use stats::{parse_dump_stats, parse_inventory_version, parse_restore_stats, CriuDumpStats, CriuRestoreStats};

pub const PAGE_SIZE: u64 = 4096;

/// Set magic of most image files.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// Set magic of service files (`stats-*`, ...).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
pub const INVENTORY_MAGIC: u32 = 0x5831_3116;
pub const STATS_MAGIC: u32 = 0x5709_3306;
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;

/// pagemap_entry flag: the run's pages are in the parent image (`parent/`).
pub const PE_PARENT: u32 = 1 << 0;
/// pagemap_entry flag: the run's pages may be fetched lazily (a local dump still writes them).
pub const PE_LAZY: u32 = 1 << 1;
/// pagemap_entry flag: the run's pages are stored in the matching `pages-*.img`.
pub const PE_PRESENT: u32 = 1 << 2;

/// Newest image layout this code was tested with (`CRTOOLS_IMAGES_V1_1`).
pub const SUPPORTED_IMG_VERSION: u32 = 2;

/// What is wrong with the bytes of an image file.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a CRIU image of the expected kind (magic {found:#010x}, expected {expected:#010x})")]
    BadMagic { expected: u32, found: u32 },
    #[error("truncated CRIU image at byte {0}")]
    Truncated(usize),
    #[error("malformed protobuf entry at byte {at}: {what}")]
    Protobuf { at: usize, what: &'static str },
    #[error("CRIU image has no entries")]
    NoEntries,
}
