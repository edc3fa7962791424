//! The event loop's dealings with connections: dialling (bootstrap, mDNS, advertised
//! addresses) and resetting a peer whose gossip link went stale (see [`crate::mesh::reconnect`]).

use std::collections::BTreeMap;
use std::time::Instant;

use libp2p::core::ConnectedPoint;
use libp2p::swarm::{dial_opts::{DialOpts, PeerCondition}, ConnectionId};
use libp2p::{Multiaddr, PeerId};
use tracing::{debug, info, warn};

use super::EventLoop;
use crate::mesh::reconnect::Established;

/// `addr` without a trailing `/p2p/<peer>`.
fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect()
}

impl EventLoop {
    pub(super) fn dial_bootstrap(&mut self) {
        for addr in self.opts.bootstrap.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
    }

    pub(super) fn expire(&mut self) {
        for entry in self.table.expire(Instant::now()) {
            let node = entry.advert.node.short();
            if !self.swarm.is_connected(&entry.peer) {
                info!(peer = %node, "peer timed out (no advert within the TTL)");
                continue;
            }
            // Connected, yet silent for a whole TTL: the gossip link is wedged (a restart the
            // connection book could not tell from a simultaneous dial) or the peer died and its
            // connection lingers. Either way a fresh connection is right; a dead peer's redial
            // just fails.
            info!(peer = %node, libp2p_peer = %entry.peer, "peer timed out while still connected; resetting it");
            let addrs = entry.advert.mesh_addrs.iter().filter_map(|a| a.parse().ok()).collect();
            self.connections.reset(entry.peer, addrs);
            let _ = self.swarm.disconnect_peer_id(entry.peer);
        }
    }

    /// A peer that connects again while we still hold an older connection to it was restarted
    /// (or lost its side of the path): gossipsub would not resend our subscription on the new
    /// connection, so the peer is reset and dialled again once all its connections are closed.
    pub(super) fn on_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: &ConnectedPoint) {
        let remote = endpoint.get_remote_address();
        debug!(%peer, addr = %remote, "connected");
        // An inbound QUIC connection comes from the peer's listening socket (libp2p-quic dials
        // from it); an inbound TCP one from an ephemeral port nobody listens on.
        let redial_at = match endpoint {
            ConnectedPoint::Dialer { address, .. } => Some(address.clone()),
            ConnectedPoint::Listener { send_back_addr, .. } => {
                send_back_addr.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1)).then(|| send_back_addr.clone())
            }
        };
        match self.connections.established(peer, id, redial_at, Instant::now()) {
            Established::First | Established::Simultaneous => {}
            Established::Reconnected { older, oldest_age } => {
                info!(%peer, addr = %remote, older, oldest_age_ms = oldest_age.as_millis() as u64,
                    "peer connected again while older connections stayed open (restarted?); resetting it");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
    }

    /// Dials a peer whose connections were all closed by a reset, where its connections came
    /// from and wherever mDNS saw it. Not through the behaviours' address lists: identify keeps
    /// the peer's loopback addresses, and when peers share a port number a dial there reaches
    /// this very node, fails with "unexpected peer id" and takes the whole dial down with it.
    pub(super) fn redial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if self.swarm.is_connected(&peer) {
            return debug!(%peer, "reset peer already connected again");
        }
        let own: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        let addrs: Vec<Multiaddr> = addrs.into_iter().filter(|a| !own.contains(&without_p2p(a))).collect();
        info!(%peer, addrs = ?addrs, "redialling a reset peer");
        let opts = DialOpts::peer_id(peer).condition(PeerCondition::DisconnectedAndNotDialing).addresses(addrs).build();
        if let Err(e) = self.swarm.dial(opts) {
            warn!(%peer, error = %e, "cannot redial a reset peer");
        }
    }

    pub(super) fn on_discovered(&mut self, found: Vec<(PeerId, Multiaddr)>) {
        let mut by_peer: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
        for (peer, addr) in found {
            self.connections.discovered(peer, addr.clone());
            by_peer.entry(peer).or_default().push(addr);
        }
        for (peer, addrs) in by_peer {
            if peer == *self.swarm.local_peer_id() || self.swarm.is_connected(&peer) {
                continue;
            }
            debug!(%peer, "discovered via mDNS; dialling");
            if let Err(e) = self.swarm.dial(DialOpts::peer_id(peer).addresses(addrs).build()) {
                debug!(%peer, error = %e, "cannot dial discovered peer");
            }
        }
    }

    /// Dials a peer we know only through gossip at the addresses its advert lists: reservation
    /// requests go straight to a node, and without mDNS (bootstrap-only networks) the mesh would
    /// otherwise be a star in which a source can reach only its bootstrap peer.
    pub(super) fn connect_to_advertised(&mut self, peer: PeerId, addrs: &[String]) {
        if self.swarm.is_connected(&peer) || addrs.is_empty() || self.swarm.connected_peers().count() >= self.opts.max_peers {
            return;
        }
        let addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let opts = DialOpts::peer_id(peer).condition(PeerCondition::DisconnectedAndNotDialing).addresses(addrs).build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, error = %e, "cannot dial advertised peer");
        }
    }

    pub(super) fn on_closed(&mut self, peer: PeerId, id: ConnectionId) {
        if let Some(addrs) = self.connections.closed(peer, id) {
            self.redial(peer, addrs);
        }
    }
}
