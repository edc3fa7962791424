//! Image manifests and the chunk-transfer messages.
//!
//! A manifest lists the files of a CRIU image directory; each file is the concatenation of its
//! ordered chunks, so the receiver rebuilds it byte for byte and verifies every chunk's blake3.
//! Bulk chunk bytes do not travel inside CBOR: a [`TransferMessage::Chunk`] header is followed on
//! the stream by `compressed_len` raw bytes.

use serde::{Deserialize, Serialize};

use crate::codec::{check_len, check_str, Limit, WireMessage};
use crate::error::WireError;

/// blake3 hash of a chunk's uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkHash(#[serde(with = "serde_bytes")] pub [u8; 32]);

crate::hex_id!(ChunkHash, "chunk hash", debug = 6);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: ChunkHash,
    /// Uncompressed length.
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the image directory; plain names only (no `..`, no leading `/`).
    pub path: String,
    /// Unix permission bits.
    pub mode: u32,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Free-form label (workload name, dump round); not used for identity.
    pub label: String,
    pub files: Vec<ManifestFile>,
}

impl ImageManifest {
    pub const MAX_FILES: usize = 100_000;
    pub const MAX_CHUNK_LEN: u32 = 16 * 1024 * 1024;

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        self.files.iter().flat_map(|f| f.chunks.iter())
    }
}

/// Checks that a manifest path cannot escape the directory it is rebuilt in.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    check_str("path", path, 4096)?;
    if path.is_empty() || path.starts_with('/') || path.contains('\0') || path.contains('\\') {
        return Err(format!("path {path:?} is not a plain relative path"));
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("path {path:?} has an empty, '.' or '..' component"));
    }
    Ok(())
}

impl WireMessage for ImageManifest {
    const LIMIT: Limit = Limit::MANIFEST;
    fn validate(&self) -> Result<(), String> {
        check_str("label", &self.label, 256)?;
        check_len("files", &self.files, Self::MAX_FILES)?;
        for f in &self.files {
            check_relative_path(&f.path)?;
            let sum: u64 = f.chunks.iter().map(|c| c.len as u64).sum();
            if sum != f.size {
                return Err(format!("{}: chunks add up to {sum} bytes, size says {}", f.path, f.size));
            }
            if let Some(c) = f.chunks.iter().find(|c| c.len == 0 || c.len > Self::MAX_CHUNK_LEN) {
                return Err(format!("{}: chunk of {} bytes (must be 1..={})", f.path, c.len, Self::MAX_CHUNK_LEN));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Zstd,
}

/// Messages of the image-transfer protocol (ALPN [`crate::ids::TRANSFER_ALPN`]).
/// New variants may be added; existing ones are never renamed (CBOR carries the names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferMessage {
    /// Sender -> receiver: the image to rebuild.
    Offer { transfer_id: [u8; 16], manifest: ImageManifest },
    /// Receiver -> sender: the chunks it does not have yet. May be sent several times (large
    /// images are asked for in pieces, and chunks that failed verification are asked for again).
    Want { missing: Vec<ChunkHash> },
    /// Sender -> receiver: header of one chunk; `compressed_len` bytes follow on the stream.
    Chunk { hash: ChunkHash, raw_len: u32, compressed_len: u32, compression: Compression },
    /// Receiver -> sender: a chunk failed verification and must be sent again.
    Rejected { hash: ChunkHash, reason: String },
    /// Receiver -> sender: every chunk is stored and the image rebuilt.
    Complete { files: u32, bytes: u64 },
    Error(WireError),
    /// Sender -> receiver: header of several chunks compressed together as one frame (small
    /// chunks compress badly one by one); `compressed_len` bytes follow on the stream. The
    /// decompressed frame is the chunks' bytes in order; each is verified on its own.
    ChunkBatch { chunks: Vec<ChunkRef>, compressed_len: u32, compression: Compression },
    /// Sender -> receiver: an `Offer` whose manifest (plain CBOR of [`ImageManifest`], `raw_len`
    /// bytes) is zstd-compressed: a manifest is ~47 bytes per chunk, a third of it CBOR keys and
    /// lengths, and on a re-dump it is most of what crosses the wire. The receiver decodes it
    /// with [`ImageManifest`]'s own limits and validation.
    OfferCompressed {
        transfer_id: [u8; 16],
        raw_len: u32,
        #[serde(with = "serde_bytes")]
        manifest: Vec<u8>,
    },
}

impl TransferMessage {
    /// Most chunks in one [`TransferMessage::ChunkBatch`].
    pub const MAX_BATCH_CHUNKS: usize = 4096;
    /// Most uncompressed bytes in one [`TransferMessage::ChunkBatch`].
    pub const MAX_BATCH_BYTES: u32 = 16 * 1024 * 1024;
}

/// Largest compressed size accepted for `raw` bytes: zstd's worst case expands by a small bound;
/// anything past 2x (or 1 KiB for tiny inputs) is not a frame of ours.
pub fn max_compressed_len(raw: u32) -> u32 {
    raw.saturating_mul(2).max(1024)
}

impl WireMessage for TransferMessage {
    const LIMIT: Limit = Limit::MANIFEST;
    fn validate(&self) -> Result<(), String> {
        match self {
            TransferMessage::Offer { manifest, .. } => manifest.validate(),
            TransferMessage::Chunk { raw_len, compressed_len, .. } => {
                // zstd's worst case expands by a small bound; anything past 2x is not a chunk of ours.
                if *raw_len == 0 || *raw_len > ImageManifest::MAX_CHUNK_LEN || *compressed_len > raw_len.saturating_mul(2).max(1024) {
                    return Err(format!("chunk lengths raw={raw_len} compressed={compressed_len} out of range"));
                }
                Ok(())
            }
            TransferMessage::Want { missing } => check_len("missing", missing, 16 * 1024 * 1024 / 32),
            TransferMessage::Rejected { reason, .. } => check_str("reason", reason, 1024),
            TransferMessage::Complete { .. } => Ok(()),
            TransferMessage::Error(e) => check_str("message", &e.message, 64 * 1024),
            TransferMessage::OfferCompressed { raw_len, manifest, .. } => {
                if *raw_len as usize > Limit::MANIFEST.0 || manifest.is_empty() {
                    return Err(format!("compressed manifest of {raw_len} bytes out of range"));
                }
                Ok(())
            }
            TransferMessage::ChunkBatch { chunks, compressed_len, .. } => {
                if chunks.is_empty() {
                    return Err("chunk batch is empty".into());
                }
                check_len("chunks", chunks, Self::MAX_BATCH_CHUNKS)?;
                if chunks.iter().any(|c| c.len == 0 || c.len > ImageManifest::MAX_CHUNK_LEN) {
                    return Err("chunk batch holds a chunk of 0 or too many bytes".into());
                }
                let raw: u64 = chunks.iter().map(|c| c.len as u64).sum();
                if raw > Self::MAX_BATCH_BYTES as u64 || *compressed_len > max_compressed_len(raw as u32) {
                    return Err(format!("chunk batch lengths raw={raw} compressed={compressed_len} out of range"));
                }
                Ok(())
            }
        }
    }
}
