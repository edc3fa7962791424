//! The hotspot-mesh node: everything the `hotspot-node` binary does, as a library so tests and
//! benchmarks drive the same code.
//!
//! - [`hostcheck`]: what this host can do for migration (CRIU, kernel features, namespaces).
//! - [`journal`]: the crash-safe migration journal (sled).
//! - [`observability`]: tracing subscriber set-up.
//! - [`criu`]: the CRIU driver (dump, restore, network lock).
//! - [`workload`]: namespaced workloads, their records, checkpoint and restore.
//! - [`testbed`]: real-process fixtures (cleanup guard, pipelining redis client) for host tests and benches.
//! - [`mesh`], [`daemon`]: the gossip mesh and the `hotspot-node run` daemon.
//! - [`migrate`]: moving a workload to another node (source driver, target service, recovery).
//! - [`provider`]: moving a workload's volume and address between nodes (EC2: EBS, ENI, EIP).
//! - [`imds`]: the EC2 instance metadata service (identity, spot interruption notices).
//! - [`local_provider`]: moves volumes (loop devices) and service addresses (netns interfaces) on a one-machine cluster.
//! - [`lab`]: a cluster of nodes in network namespaces on one bridge, for tests, benches and the demo.

pub mod criu;
pub mod daemon;
pub mod hostcheck;
pub mod imds;
pub mod journal;
pub mod lab;
pub mod lan_provider;
pub mod local_provider;
pub mod mesh;
pub mod migrate;
pub mod observability;
pub mod provider;
pub mod testbed;
pub mod testing;
pub mod workload;
