//! Wire types, codecs and pure decision logic of hotspot-mesh.
//!
//! Nothing in this crate opens a socket, reads a clock or touches a file: callers pass the
//! current time in (`now_ms`) and own all I/O. That lets `simulations` run exactly the code the
//! nodes run, at 10,000 nodes, and lets every decision be tested deterministically.
//!
//! Layout:
//! - [`ids`]: versioned names of every wire protocol and topic.
//! - [`hex`]: ids as text (lowercase hex `Display`/`FromStr`, [`hex_id!`]).
//! - [`codec`]: the versioned envelope every message travels in, with hard size limits.
//! - [`advert`]: node identity, capacity and the gossiped node advert.
//! - [`reservation`]: reservation messages and the target-side [`reservation::Ledger`].
//! - [`election`]: choosing a target and deciding whether a hop pays off.
//! - [`manifest`]: CRIU image manifests and chunk-transfer messages.
//! - [`migration`]: messages between source and target during a migration.
//! - [`handoff`]: the migration state machine and its crash-recovery rules.
//! - [`error`]: error codes carried on the wire.

pub mod advert;
pub mod codec;
pub mod election;
pub mod error;
pub mod handoff;
pub mod hex;
pub mod ids;
pub mod manifest;
pub mod migration;
pub mod reservation;

pub use advert::{Capacity, NodeAdvert, NodeId, NodeState, Resources};
pub use codec::{decode, encode, DecodeError, EncodeError, Limit};
pub use error::ErrorCode;
