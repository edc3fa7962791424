//! Content-addressed CRIU image transfer over QUIC.
//!
//! - [`identity`]: the node's long-lived ed25519 key (shared with the mesh).
//! - [`chunker`]: image directory -> manifest of blake3-addressed chunks.
//! - [`store`]: chunk store (packs + versioned sled index, refcounts, GC, disk limits).
//! - [`rebuild`]: manifest + store -> image directory, every chunk verified.
//! - [`parent`]: the same as a CRIU incremental image on top of an earlier image here.
//! - [`tls`], [`endpoint`]: QUIC endpoints authenticated by node keys against a trust set.
//! - [`framing`]: length-prefixed wire messages on streams (transfer and migration control).
//! - [`wire`]: the transfer protocol's messages, frame limits and compressed offers.
//! - [`send`], [`receive`]: the two sides of a transfer (dedup, zstd, parallel streams, resume).

mod buffers;
pub mod chunker;
pub mod endpoint;
pub mod framing;
pub mod identity;
pub mod parent;
pub mod rebuild;
pub mod receive;
pub mod send;
pub mod store;
pub mod tls;
pub mod wire;

pub use chunker::{build_manifest, ChunkerConfig};
pub use receive::{receive_one, serve, serve_dispatch, ParentLookup, ReceiveError, ReceiveOptions, Received};
pub use send::{send_dir, SendError, SendOptions, SendProgress, SendReport};
pub use store::{ManifestId, Store, StoreError, StoreOptions};
pub use tls::TrustSet;
pub use wire::TransferId;
