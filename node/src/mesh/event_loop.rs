//! The one task that owns the libp2p swarm. Commands come in on a bounded channel and are
//! answered on `oneshot`s; outbound reservation requests wait in `pending`, keyed by request id.

mod links;

use crate::sys::clock::now_ms;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hotspot_protocol::reservation::ReservationMessage;
use hotspot_protocol::{decode, encode, ids, NodeAdvert, NodeId, NodeState};
use libp2p::gossipsub::{self, MessageAcceptance, PublishError};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, identity, mdns, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::advert_check::{check_advert, node_id_of, peer_id_of, Verdict};
use super::behaviour::{advert_topic, build_swarm, Behaviour, BehaviourEvent, Envelope};
use super::peer_table::{Admission, PeerTable};
use super::reconnect::ConnectionBook;
use super::{Command, MeshClient, MeshError, MeshEvent, MeshOptions, MeshStats, PeerSnapshot, Responder};

/// How long a `leaving` advert is given to reach the connections before `leave()` returns.
const LEAVE_FLUSH: Duration = Duration::from_millis(300);
/// Delay before re-sending our advert to a newly subscribed peer (coalesces bursts of joins).
const WELCOME_DELAY: Duration = Duration::from_millis(150);
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(10);

type PendingReply = oneshot::Sender<Result<ReservationMessage, MeshError>>;

pub(super) struct EventLoop {
    swarm: Swarm<Behaviour>,
    opts: MeshOptions,
    cancel: CancellationToken,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<MeshEvent>,
    local: NodeId,
    table: PeerTable,
    advert: Option<NodeAdvert>,
    last_seq: u64,
    republish_at: Option<tokio::time::Instant>,
    leaving: Option<(tokio::time::Instant, oneshot::Sender<()>)>,
    pending: HashMap<OutboundRequestId, (NodeId, PendingReply)>,
    invalid_counts: HashMap<PeerId, u32>,
    /// Open connections by peer, to notice a peer that came back (see `reconnect`).
    connections: ConnectionBook,
    stats: MeshStats,
}


/// Our addresses for the advert: concrete ones only (no 0.0.0.0), non-loopback first, bounded.
fn advertised_addrs<'a>(addrs: impl Iterator<Item = &'a Multiaddr>) -> Vec<String> {
    use libp2p::multiaddr::Protocol;
    let mut out: Vec<(bool, String)> = addrs
        .filter_map(|a| match a.iter().next() {
            Some(Protocol::Ip4(ip)) if !ip.is_unspecified() => Some((ip.is_loopback(), a.to_string())),
            Some(Protocol::Ip6(ip)) if !ip.is_unspecified() => Some((ip.is_loopback(), a.to_string())),
            Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => Some((false, a.to_string())),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out.into_iter().map(|(_, a)| a).take(NodeAdvert::MAX_MESH_ADDRS).collect()
}

/// The node id behind a libp2p peer id (ed25519 keys are inlined in the peer id).
fn node_id_of_peer(peer: &PeerId) -> Option<NodeId> {
    let mh = libp2p::multihash::Multihash::<64>::from_bytes(&peer.to_bytes()).ok()?;
    let key = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(NodeId(key.try_into_ed25519().ok()?.to_bytes()))
}

impl EventLoop {
    pub(super) fn new(
        opts: MeshOptions,
        cancel: CancellationToken,
    ) -> Result<(Self, MeshClient, mpsc::Receiver<MeshEvent>, NodeId), MeshError> {
        let mut swarm = build_swarm(&opts)?;
        let keypair = identity::Keypair::ed25519_from_bytes(opts.key_seed).map_err(|e| MeshError::Config(e.to_string()))?;
        let local = node_id_of(&keypair).ok_or_else(|| MeshError::Config("node key is not ed25519".into()))?;
        for addr in &opts.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| MeshError::Listen { addr: addr.clone(), reason: e.to_string() })?;
        }
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&advert_topic())
            .map_err(|e| MeshError::Config(format!("subscribe: {e}")))?;
        let (cmd_tx, commands) = mpsc::channel(opts.channel_capacity);
        let (events, event_rx) = mpsc::channel(opts.channel_capacity);
        let stats = MeshStats { peer_id: swarm.local_peer_id().to_string(), ..Default::default() };
        let table = PeerTable::new(opts.advert_ttl, opts.max_peers);
        let mut this = EventLoop {
            swarm,
            opts,
            cancel,
            commands,
            events,
            local,
            table,
            advert: None,
            last_seq: 0,
            republish_at: None,
            leaving: None,
            pending: HashMap::new(),
            invalid_counts: HashMap::new(),
            connections: ConnectionBook::default(),
            stats,
        };
        this.dial_bootstrap();
        Ok((this, MeshClient { commands: cmd_tx }, event_rx, local))
    }

    #[tracing::instrument(name = "mesh", skip_all, fields(node = %self.local.short()))]
    pub(super) async fn run(mut self) {
        let mut advert_tick = tokio::time::interval(self.opts.advert_interval);
        advert_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expire_tick = tokio::time::interval((self.opts.advert_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)));
        let mut bootstrap_tick = tokio::time::interval(BOOTSTRAP_RETRY);
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        loop {
            let republish_at = self.republish_at.unwrap_or_else(far);
            let leave_at = self.leaving.as_ref().map(|(t, _)| *t).unwrap_or_else(far);
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tokio::time::sleep_until(leave_at), if self.leaving.is_some() => {
                    if let Some((_, reply)) = self.leaving.take() {
                        let _ = reply.send(());
                    }
                }
                _ = tokio::time::sleep_until(republish_at), if self.republish_at.is_some() => {
                    self.republish_at = None;
                    self.publish();
                }
                _ = advert_tick.tick() => self.publish(),
                _ = expire_tick.tick() => self.expire(),
                _ = bootstrap_tick.tick() => {
                    if self.swarm.connected_peers().next().is_none() {
                        self.dial_bootstrap();
                    }
                }
            }
        }
        for (_, (_, reply)) in self.pending.drain() {
            let _ = reply.send(Err(MeshError::Stopped));
        }
        info!("mesh stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            // Once `leaving` went out, a late update must not bring the node back to life.
            Command::SetAdvert(_) if self.advert.as_ref().is_some_and(|a| a.state == NodeState::Leaving) => {}
            Command::SetAdvert(advert) => {
                self.advert = Some(*advert);
                self.publish();
            }
            Command::Leave { mut advert, reply } => {
                advert.state = NodeState::Leaving;
                self.advert = Some(*advert);
                self.publish();
                self.leaving = Some((tokio::time::Instant::now() + LEAVE_FLUSH, reply));
            }
            Command::Peers { reply } => {
                let now = Instant::now();
                let peers = self
                    .table
                    .live()
                    .into_iter()
                    .map(|e| PeerSnapshot {
                        advert: e.advert.clone(),
                        age: now.saturating_duration_since(e.received_at),
                        received_at_ms: e.received_at_ms,
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.connected_peers = self.swarm.connected_peers().count();
                stats.listen_addrs = self.swarm.listeners().map(|a| a.to_string()).collect();
                let _ = reply.send(stats);
            }
            Command::Request { node, message, reply } => self.send_request(node, message, reply),
            Command::AddBootstrap(addrs) => {
                for addr in addrs {
                    // Bounded: a cluster's instances, not anything a caller may push.
                    if self.opts.bootstrap.contains(&addr) || self.opts.bootstrap.len() >= 4096 {
                        continue;
                    }
                    info!(%addr, "new bootstrap peer");
                    if let Err(e) = self.swarm.dial(addr.clone()) {
                        warn!(%addr, error = %e, "cannot dial bootstrap peer");
                    }
                    self.opts.bootstrap.push(addr);
                }
            }
            Command::Respond { responder, message } => {
                let bytes = match encode(&message) {
                    Ok(b) => b,
                    Err(e) => return warn!(error = %e, "cannot encode reservation answer"),
                };
                if self.swarm.behaviour_mut().reserve.send_response(responder.channel, Envelope(bytes)).is_err() {
                    debug!("reservation answer not sent: requester went away");
                }
            }
        }
    }

    fn send_request(&mut self, node: NodeId, message: ReservationMessage, reply: PendingReply) {
        let Some(peer) = self.table.get(&node).map(|e| e.peer).or_else(|| peer_id_of(&node)) else {
            let _ = reply.send(Err(MeshError::UnknownPeer(node.to_string())));
            return;
        };
        match encode(&message) {
            Ok(bytes) => {
                let id = self.swarm.behaviour_mut().reserve.send_request(&peer, Envelope(bytes));
                self.pending.insert(id, (node, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// Publishes our current advert with the next sequence number.
    fn publish(&mut self) {
        let Some(advert) = self.advert.as_mut() else { return };
        let now = now_ms();
        // Wall-clock based so a restarted node's adverts are newer than its previous life's.
        self.last_seq = (self.last_seq + 1).max(now);
        advert.seq = self.last_seq;
        advert.issued_at_ms = now;
        advert.mesh_addrs = advertised_addrs(self.swarm.listeners().chain(self.swarm.external_addresses()));
        let bytes = match encode(&*advert) {
            Ok(b) => b,
            Err(e) => return warn!(error = %e, "cannot encode our advert"),
        };
        match self.swarm.behaviour_mut().gossipsub.publish(advert_topic(), bytes) {
            Ok(_) => self.stats.adverts_sent += 1,
            Err(PublishError::NoPeersSubscribedToTopic) => debug!("no peers yet; advert not sent"),
            Err(e) => warn!(error = %e, "cannot publish advert"),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => self.on_gossip(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => self.on_discovered(found),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                gone.iter().for_each(|(peer, addr)| self.connections.expired(*peer, addr))
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                if info.protocol_version != ids::IDENTIFY_PROTOCOL =>
            {
                warn!(peer = %peer_id, version = %info.protocol_version, "peer speaks another mesh version; disconnecting");
                let _ = self.swarm.disconnect_peer_id(peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Reserve(ev)) => self.on_reserve(ev),
            SwarmEvent::NewListenAddr { address, .. } => info!(%address, "listening"),
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                self.on_connected(peer_id, connection_id, &endpoint)
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, cause, .. } => {
                debug!(peer = %peer_id, ?cause, "disconnected");
                self.on_closed(peer_id, connection_id);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => debug!(?peer_id, %error, "dial failed"),
            _ => {}
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message { propagation_source, message_id, message } => {
                let verdict = check_advert(&message.data, message.source.as_ref(), &self.local, &self.table);
                let acceptance = match verdict {
                    Verdict::Accept(advert) => {
                        self.stats.adverts_accepted += 1;
                        let (node, name) = (advert.node, advert.name.clone());
                        let peer = message.source.expect("accepted adverts are signed");
                        self.connect_to_advertised(peer, &advert.mesh_addrs);
                        match self.table.admit(*advert, peer, Instant::now(), now_ms()) {
                            Admission::Joined => info!(peer = %node.short(), %name, "peer joined"),
                            Admission::Left => info!(peer = %node.short(), %name, "peer left (leaving advert)"),
                            Admission::Full => warn!(peer = %node.short(), "peer table full; advert dropped"),
                            Admission::Updated | Admission::Stale => {}
                        }
                        MessageAcceptance::Accept
                    }
                    Verdict::Ignore(why) => {
                        self.stats.adverts_ignored += 1;
                        debug!(from = %propagation_source, why, "advert ignored");
                        MessageAcceptance::Ignore
                    }
                    Verdict::Reject(rejection) => {
                        *self.stats.adverts_rejected.entry(rejection.kind().to_string()).or_default() += 1;
                        warn!(from = %propagation_source, reason = %rejection, "advert rejected");
                        self.penalise(propagation_source);
                        MessageAcceptance::Reject
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            gossipsub::Event::Subscribed { peer_id, topic } if topic == advert_topic().hash() => {
                debug!(peer = %peer_id, "peer subscribed to adverts; welcoming it with ours");
                self.republish_at.get_or_insert_with(|| tokio::time::Instant::now() + WELCOME_DELAY);
            }
            _ => {}
        }
    }

    /// Counts a rejected message against the peer that sent it; bans it after too many.
    fn penalise(&mut self, peer: PeerId) {
        let count = self.invalid_counts.entry(peer).or_default();
        *count += 1;
        if *count >= self.opts.ban_after_invalid {
            let behaviour = self.swarm.behaviour_mut();
            if behaviour.blocked.block_peer(peer) {
                behaviour.gossipsub.blacklist_peer(&peer);
                warn!(%peer, invalid = *count, "peer banned for invalid adverts");
                self.stats.banned_peers.push(peer.to_string());
            }
        }
    }

    fn on_reserve(&mut self, event: request_response::Event<Envelope, Envelope>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let Some(from) = node_id_of_peer(&peer) else {
                        return warn!(%peer, "reservation request from a non-ed25519 peer dropped");
                    };
                    let message = match decode::<ReservationMessage>(&request.0) {
                        Ok(m) => m,
                        Err(e) => return warn!(%peer, error = %e, "malformed reservation request dropped"),
                    };
                    if let ReservationMessage::Request(r) = &message {
                        if r.source != from {
                            return warn!(%peer, claimed = %r.source.short(), "reservation in another node's name dropped");
                        }
                    }
                    let event = MeshEvent::Reservation { from, message, responder: Responder { channel } };
                    if self.events.try_send(event).is_err() {
                        warn!(%peer, "reservation inbox full or closed; request dropped");
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some((node, reply)) = self.pending.remove(&request_id) {
                        let answer = decode::<ReservationMessage>(&response.0)
                            .map_err(|e| MeshError::Request { peer: node.short(), reason: e.to_string() });
                        let _ = reply.send(answer);
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some((node, reply)) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(MeshError::Request { peer: node.short(), reason: error.to_string() }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => debug!(%peer, %error, "inbound reservation failed"),
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}
