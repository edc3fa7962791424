//! The gossip mesh: discovery, signed node adverts, the peer table and reservation requests.
//!
//! One task (the [`event_loop`]) owns the libp2p `Swarm`. Everything else talks to it through a
//! cloneable [`MeshClient`] (bounded command channel, `oneshot` replies) and receives inbound
//! reservation requests as [`MeshEvent`]s on a bounded channel. The loop stops when its
//! cancellation token fires; announce `leaving` first with [`MeshClient::leave`].
//!
//! - [`behaviour`]: the libp2p behaviours (gossipsub, mDNS, identify, request-response, block list).
//! - [`advert_check`]: validation of incoming adverts before they may spread.
//! - [`peer_table`]: newest advert per peer, with expiry.
//! - [`reconnect`]: noticing a peer that came back while its old connection lingers.

pub mod advert_check;
pub mod behaviour;
mod event_loop;
pub mod peer_table;
pub mod reconnect;

use std::time::Duration;

use hotspot_protocol::reservation::ReservationMessage;
use hotspot_protocol::{NodeAdvert, NodeId};
use libp2p::request_response::ResponseChannel;
use libp2p::Multiaddr;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use advert_check::{node_id_of, peer_id_of};
pub use peer_table::PeerEntry;

/// Everything the mesh needs to start. Built by the daemon from its config.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Seed of the node's ed25519 key (`NodeKey::seed`); the libp2p identity is derived from it.
    pub key_seed: [u8; 32],
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start and whenever this node has no connection (networks without multicast).
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub mdns_query_interval: Duration,
    /// Our advert is re-sent this often even when nothing changed (liveness).
    pub advert_interval: Duration,
    /// A peer not heard from for this long is forgotten.
    pub advert_ttl: Duration,
    pub heartbeat: Duration,
    pub identify_interval: Duration,
    /// Rejected adverts from one peer before it is banned (disconnected and blocked).
    pub ban_after_invalid: u32,
    pub reserve_timeout: Duration,
    /// Bound of the peer table.
    pub max_peers: usize,
    /// Bound of the command and event channels.
    pub channel_capacity: usize,
}

impl MeshOptions {
    pub fn new(key_seed: [u8; 32]) -> Self {
        MeshOptions {
            key_seed,
            listen: vec!["/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("valid"), "/ip4/0.0.0.0/tcp/0".parse().expect("valid")],
            bootstrap: Vec::new(),
            mdns: true,
            mdns_query_interval: Duration::from_secs(30),
            advert_interval: Duration::from_secs(5),
            advert_ttl: Duration::from_secs(20),
            heartbeat: Duration::from_secs(1),
            identify_interval: Duration::from_secs(300),
            ban_after_invalid: 3,
            reserve_timeout: Duration::from_secs(5),
            max_peers: 4096,
            channel_capacity: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("mesh configuration: {0}")]
    Config(String),
    #[error("mesh transport: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("the mesh event loop has stopped")]
    Stopped,
    #[error("unknown peer {0}: not in the peer table (see `hotspot-node peers`)")]
    UnknownPeer(String),
    #[error("reservation request to {peer} failed: {reason}")]
    Request { peer: String, reason: String },
    #[error("cannot encode message: {0}")]
    Encode(#[from] hotspot_protocol::EncodeError),
}

/// A peer as the rest of the node sees it.
#[derive(Debug, Clone)]
pub struct PeerSnapshot {
    pub advert: NodeAdvert,
    pub age: Duration,
    pub received_at_ms: u64,
}

/// Counters of the mesh, shown by `hotspot-node status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MeshStats {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    pub connected_peers: usize,
    pub adverts_sent: u64,
    pub adverts_accepted: u64,
    pub adverts_ignored: u64,
    /// Rejected adverts by reason (forged, malformed, too_large, unsigned).
    pub adverts_rejected: std::collections::BTreeMap<String, u64>,
    pub banned_peers: Vec<String>,
}

/// Where an inbound reservation request is answered.
pub struct Responder {
    channel: ResponseChannel<behaviour::Envelope>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

/// Things the mesh tells the rest of the node.
#[derive(Debug)]
pub enum MeshEvent {
    /// A peer asks us for a reservation (or releases one). Answer with [`MeshClient::respond`].
    Reservation { from: NodeId, message: ReservationMessage, responder: Responder },
}

#[derive(Debug)]
enum Command {
    SetAdvert(Box<NodeAdvert>),
    Leave { advert: Box<NodeAdvert>, reply: oneshot::Sender<()> },
    Peers { reply: oneshot::Sender<Vec<PeerSnapshot>> },
    Stats { reply: oneshot::Sender<MeshStats> },
    Request { node: NodeId, message: ReservationMessage, reply: oneshot::Sender<Result<ReservationMessage, MeshError>> },
    Respond { responder: Responder, message: ReservationMessage },
    AddBootstrap(Vec<Multiaddr>),
}

/// Cloneable handle to the mesh event loop.
#[derive(Debug, Clone)]
pub struct MeshClient {
    commands: mpsc::Sender<Command>,
}

impl MeshClient {
    async fn send(&self, cmd: Command) -> Result<(), MeshError> {
        self.commands.send(cmd).await.map_err(|_| MeshError::Stopped)
    }

    /// Replaces our advert (the loop assigns `seq` and `issued_at_ms`) and publishes it now.
    pub async fn set_advert(&self, advert: NodeAdvert) -> Result<(), MeshError> {
        self.send(Command::SetAdvert(Box::new(advert))).await
    }

    /// Publishes a `leaving` advert and waits until it has been handed to the connections.
    pub async fn leave(&self, advert: NodeAdvert) -> Result<(), MeshError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Leave { advert: Box::new(advert), reply }).await?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    pub async fn peers(&self) -> Result<Vec<PeerSnapshot>, MeshError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Peers { reply }).await?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    pub async fn stats(&self) -> Result<MeshStats, MeshError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats { reply }).await?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    /// Sends a reservation message to a peer and waits for its answer (bounded by the timeout).
    pub async fn request(&self, node: NodeId, message: ReservationMessage) -> Result<ReservationMessage, MeshError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request { node, message, reply }).await?;
        rx.await.map_err(|_| MeshError::Stopped)?
    }

    pub async fn respond(&self, responder: Responder, message: ReservationMessage) -> Result<(), MeshError> {
        self.send(Command::Respond { responder, message }).await
    }

    /// Adds bootstrap addresses found after start (EC2 discovery) and dials the new ones now;
    /// like the configured ones, they are dialled again whenever the node has no peer.
    pub async fn add_bootstrap(&self, addrs: Vec<Multiaddr>) -> Result<(), MeshError> {
        self.send(Command::AddBootstrap(addrs)).await
    }
}

/// A running mesh: the client, the inbound events and the task to join on shutdown.
pub struct Mesh {
    pub client: MeshClient,
    pub events: mpsc::Receiver<MeshEvent>,
    pub task: tokio::task::JoinHandle<()>,
    pub node_id: NodeId,
}

/// Builds the swarm, starts listening and spawns the event loop. Stops when `cancel` fires.
pub fn spawn(opts: MeshOptions, cancel: CancellationToken) -> Result<Mesh, MeshError> {
    let (loop_, client, events, node_id) = event_loop::EventLoop::new(opts, cancel)?;
    let task = tokio::spawn(loop_.run());
    Ok(Mesh { client, events, task, node_id })
}
