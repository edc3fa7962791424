//! Content-addressed CRIU image transfer over QUIC.
//!
//! - [`identity`]: the node's long-lived ed25519 key (shared with the mesh).

pub mod identity;
