//! The libp2p behaviours this node runs, and how the swarm is built from the node key.

use std::time::Duration;

use hotspot_protocol::{ids, Limit};
use libp2p::{
    allow_block_list, gossipsub, identify, identity, mdns, noise, request_response, swarm::NetworkBehaviour, tcp,
    yamux, StreamProtocol, Swarm,
};
use serde::{Deserialize, Serialize};

use super::{MeshError, MeshOptions};

/// A reservation message in its versioned envelope (`hotspot_protocol::codec`). The
/// request-response codec only frames bytes; decoding and validation are ours, so a malformed
/// request is answered with a clear error instead of killing the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope(#[serde(with = "serde_bytes")] pub Vec<u8>);

pub type ReserveBehaviour = request_response::cbor::Behaviour<Envelope, Envelope>;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Banned peers (repeated invalid adverts) never get a connection again.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub gossipsub: gossipsub::Behaviour,
    pub mdns: libp2p::swarm::behaviour::toggle::Toggle<mdns::tokio::Behaviour>,
    pub identify: identify::Behaviour,
    pub reserve: ReserveBehaviour,
}

/// The advert topic, versioned (see `hotspot_protocol::ids`).
pub fn advert_topic() -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(ids::ADVERT_TOPIC)
}

/// Largest gossipsub frame we accept: above the advert limit so oversized adverts reach our
/// validator (and get their sender penalised) instead of silently failing in the codec.
const MAX_TRANSMIT_BYTES: usize = 4 * Limit::ADVERT.0;

fn gossipsub_config(opts: &MeshOptions) -> Result<gossipsub::Config, MeshError> {
    gossipsub::ConfigBuilder::default()
        .heartbeat_interval(opts.heartbeat)
        .validation_mode(gossipsub::ValidationMode::Strict)
        // Nothing is forwarded until check_advert() has accepted it.
        .validate_messages()
        .max_transmit_size(MAX_TRANSMIT_BYTES)
        // Small meshes: publish to every subscribed peer so adverts arrive in one hop.
        .flood_publish(true)
        .build()
        .map_err(|e| MeshError::Config(format!("gossipsub: {e}")))
}

/// Peer scoring: each rejected advert costs its sender (P4, squared), so after a few the sender
/// falls below the graylist threshold and its messages are dropped unread. Quiet peers are not
/// penalised (adverts are rare, so mesh delivery rates mean nothing here), and many nodes behind
/// one IP address are normal on a local cluster.
fn peer_score() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    };
    let mut params = gossipsub::PeerScoreParams { ip_colocation_factor_weight: 0.0, ..Default::default() };
    params.topics.insert(advert_topic().hash(), topic);
    (params, gossipsub::PeerScoreThresholds::default())
}

pub fn build_swarm(opts: &MeshOptions) -> Result<Swarm<Behaviour>, MeshError> {
    let keypair = identity::Keypair::ed25519_from_bytes(opts.key_seed)
        .map_err(|e| MeshError::Config(format!("node key: {e}")))?;
    let gossip_config = gossipsub_config(opts)?;
    let mdns_config = mdns::Config { query_interval: opts.mdns_query_interval, ..Default::default() };
    let mdns_enabled = opts.mdns;
    let identify_interval = opts.identify_interval;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| MeshError::Transport(e.to_string()))?
        .with_quic()
        .with_behaviour(|key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)?;
            let (params, thresholds) = peer_score();
            gossipsub.with_peer_score(params, thresholds)?;
            let mdns = if mdns_enabled {
                Some(mdns::tokio::Behaviour::new(mdns_config, key.public().to_peer_id())?)
            } else {
                None
            };
            let identify = identify::Behaviour::new(
                identify::Config::new(ids::IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(format!("hotspot-node/{}", env!("CARGO_PKG_VERSION")))
                    .with_interval(identify_interval),
            );
            let codec = request_response::cbor::codec::Codec::<Envelope, Envelope>::default()
                .set_request_size_maximum(Limit::CONTROL.0 as u64 + 64)
                .set_response_size_maximum(Limit::CONTROL.0 as u64 + 64);
            let reserve = request_response::Behaviour::with_codec(
                codec,
                [(StreamProtocol::new(ids::RESERVE_PROTOCOL), request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(opts.reserve_timeout),
            );
            Ok(Behaviour { blocked: Default::default(), gossipsub, mdns: mdns.into(), identify, reserve })
        })
        .map_err(|e| MeshError::Config(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}
