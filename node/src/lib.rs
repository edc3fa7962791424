//! The hotspot-mesh node: everything the `hotspot-node` binary does, as a library so tests and
//! benchmarks drive the same code.
//!
//! - [`hostcheck`]: what this host can do for migration (CRIU, kernel features, namespaces).
//! - [`observability`]: tracing subscriber set-up.

pub mod hostcheck;
pub mod observability;
pub mod testing;
pub mod mesh;
pub mod daemon;
