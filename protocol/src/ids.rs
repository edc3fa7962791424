//! Versioned names of everything that crosses the wire. Bump the trailing number on any
//! incompatible change; old and new nodes then simply do not talk instead of misparsing.

/// ALPN of the QUIC image-transfer and migration protocol.
pub const TRANSFER_ALPN: &[u8] = b"hotspot-mesh/transfer/1";
/// ALPN of migration control (offer, restore, status, commit, abort) between source and target,
/// served by the same node-key-authenticated QUIC endpoint as image transfers.
pub const MIGRATE_ALPN: &[u8] = b"hotspot-mesh/migrate/1";
/// Gossipsub topic carrying [`crate::advert::NodeAdvert`]s.
pub const ADVERT_TOPIC: &str = "hotspot-mesh/adverts/1";
/// libp2p request-response protocol for reservations.
pub const RESERVE_PROTOCOL: &str = "/hotspot-mesh/reserve/1";
/// libp2p identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/hotspot-mesh/id/1";
/// Version of the local control-socket protocol (CLI <-> daemon).
pub const CONTROL_PROTOCOL_VERSION: u16 = 1;

/// Version of the envelope and of every message type in this crate.
pub const PROTOCOL_VERSION: u16 = 1;
/// Oldest envelope version this build still decodes.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
