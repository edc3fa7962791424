//! The hotspot-mesh node: everything the `hotspot-node` binary does, as a library so tests and
//! benchmarks drive the same code.
//!
//! - [`hostcheck`]: what this host can do for migration (CRIU, kernel features, namespaces).
//! - [`observability`]: tracing subscriber set-up.
//! - [`provider`]: moving a workload's volume and address between nodes (EC2: EBS, ENI, EIP).
//! - [`imds`]: the EC2 instance metadata service (identity, spot interruption notices).

pub mod hostcheck;
pub mod imds;
pub mod observability;
pub mod provider;
pub mod testing;
