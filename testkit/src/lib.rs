//! Test support for hotspot-mesh, kept out of the product: `cargo tree -p hotspot-node -e normal`
//! does not list this crate, and depending on it is what turns on the node's `fault-injection`
//! feature in test builds.
//!
//! - [`host`]: the host-test preamble as one fixture ([`host::HostTest`]: root/CRIU check,
//!   temporary state directory, workloads, clean-up guard), skipped with a reason on a laptop and
//!   failing under `CI=true`.
//! - [`testbed`]: real-process fixtures: the clean-up guard, a pipelining redis client that
//!   records every acknowledged INCR, redis start-up helpers.
//! - [`moto`]: moto's EC2 emulator on a free loopback port, and relays into lab namespaces.

pub mod host;
pub mod moto;
pub mod testbed;
