//! The hotspot-mesh node: everything the `hotspot-node` binary does, as a library so tests and
//! benchmarks drive the same code.
//!
//! - [`hostcheck`]: what this host can do for migration (CRIU, kernel features, namespaces).
//! - [`journal`]: the crash-safe migration journal (sled).
//! - [`observability`]: tracing subscriber set-up.
//! - [`criu`]: the CRIU driver (dump, restore, network lock).
//! - [`workload`]: namespaced workloads, their records, checkpoint and restore.
//! - [`testbed`]: real-process fixtures (cleanup guard, pipelining redis client) for host tests and benches.
//! - [`local_provider`]: moves volumes (loop devices) and service addresses (netns interfaces) on a one-machine cluster.
//! - [`lab`]: a cluster of nodes in network namespaces on one bridge, for tests, benches and the demo.

pub mod hostcheck;
pub mod journal;
pub mod migrate;
pub mod observability;
pub mod testing;
pub mod criu;
pub mod workload;
pub mod mesh;
pub mod daemon;
pub mod testbed;
pub mod local_provider;
pub mod lab;
