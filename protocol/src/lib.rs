//! Wire types, codecs and pure decision logic of hotspot-mesh.
//!
//! Nothing in this crate opens a socket, reads a clock or touches a file: callers pass the
//! current time in (`now_ms`) and own all I/O. That lets `simulations` run exactly the code the
//! nodes run, at 10,000 nodes, and lets every decision be tested deterministically.
//!
//! Layout:
//! - [`ids`]: versioned names of every wire protocol and topic.
//! - [`codec`]: the versioned envelope every message travels in, with hard size limits.
//! - [`advert`]: node identity, capacity and the gossiped node advert.
//! - [`reservation`]: reservation messages and the target-side [`reservation::Ledger`].
//! - [`election`]: choosing a target and deciding whether a hop pays off.
//! - [`manifest`]: CRIU image manifests and chunk-transfer messages.
//! - [`migration`]: messages between source and target during a migration.
//! - [`handoff`]: the migration state machine and its crash-recovery rules.
//! - [`error`]: error codes carried on the wire.

/// Implements `Display` (the first `$display` bytes as hex) and `Debug` (`Name(first $debug
/// bytes as hex)`) for a newtype over a byte array: ids read the same in logs, tables and paths.
macro_rules! hex_id {
    ($ty:ident, display = $display:expr, debug = $debug:expr) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0[..$display].iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($ty), "("))?;
                self.0[..$debug].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
                write!(f, ")")
            }
        }
    };
}
pub(crate) use hex_id;

pub mod advert;
pub mod codec;
pub mod election;
pub mod error;
pub mod handoff;
pub mod ids;
pub mod manifest;
pub mod migration;
pub mod reservation;

pub use advert::{Capacity, NodeAdvert, NodeId, NodeState, Resources};
pub use codec::{decode, encode, DecodeError, EncodeError, Limit};
pub use error::ErrorCode;
