//! The hotspot-mesh node: everything the `hotspot-node` binary does, as a library so tests and
//! benchmarks drive the same code.
//!
//! One module per layer, lowest first; each imports only the layers above it in this list
//! (`scripts/check-layers` enforces it):
//!
//! 1. [`sys`]: host plumbing (programs, mounts, network namespaces, cgroups, loop devices, clock).
//! 2. [`mesh`]: the libp2p gossip mesh (adverts, peer table, reservation messages).
//! 3. [`criu`]: the CRIU driver (dump, restore, lazy pages, network lock, version policy).
//! 4. [`workload`]: namespaced workloads and runc containers, their records, checkpoint/restore.
//! 5. [`migrate`]: the migration driver and the traits it needs; the journal, recovery, the
//!    target side, the QUIC link.
//! 6. [`providers`]: moving volumes and addresses (one machine, LAN, EC2) and price sources.
//! 7. [`daemon`]: `hotspot-node run`: wiring, config, the control API, triggers, evacuation.
//! 8. [`lab`]: a cluster of nodes in network namespaces on one bridge.
//!
//! The command line (`cli`) is the binary's own module, above all of these.

pub mod sys;

pub mod mesh;

pub mod criu;

pub mod workload;

pub mod migrate;

pub mod providers;

pub mod daemon;

pub mod lab;

pub use criu::Criu;
pub use daemon::config::Config;
pub use daemon::control::{Reply, Request};
pub use migrate::journal::Journal;
pub use migrate::{MigrateError, Summary};
pub use workload::{Workload, Workloads};

