//! Subcommands of `hotspot-node`, one module each.
pub mod check;
pub mod migrate;
pub mod workload;
pub mod peers;
pub mod reserve;
pub mod run;
pub mod status;
pub mod transfer;
pub mod ec2;
pub mod triggers;
pub mod ec2_run;
pub mod observability;
