//! Resource providers: what moves a workload's volume and service address from one node to
//! another, and where a node's price comes from. Each provider implements
//! [`crate::migrate::ResourceMover`] (source side) and prepares the target before a restore.
//!
//! - [`local`]: nodes of one machine (network namespaces): loop-device volumes in a shared
//!   cluster directory, service interfaces moved between namespaces.
//! - [`lan`]: machines on one Ethernet segment: the service address moves (gratuitous ARP).
//! - [`ec2`]: EBS volumes and ENIs / secondary IPs / Elastic IPs through the EC2 API; the
//!   instance metadata service (identity, spot notices), spot price, peer discovery by tag.
//! - [`price`]: the price source a node advertises (fixed, a replayed trace, or EC2 spot).

pub mod ec2;
pub mod lan;
pub mod local;
pub mod move_state;
pub mod price;
