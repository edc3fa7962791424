//! Subcommands of `hotspot-node`, one module each.
pub mod check;
pub mod ec2;
