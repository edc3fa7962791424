//! Noticing a peer that came back while we still hold a connection to its previous life.
//!
//! A node killed and restarted quickly (same key) dials its peers again, but they still hold
//! their QUIC connection to the dead process: UDP brings no reset, so that connection lingers
//! until QUIC's idle timeout. The new connection is then the peer's *second*, and gossipsub
//! sends its topic subscriptions only on a peer's first connection
//! (`on_connection_established` returns early when `other_established > 0`): the restarted node
//! never learns that we subscribe to adverts and publishes to nobody, while ours go into the
//! per-peer queue that the dead connection's handler also drains. Closing just the old
//! connection leaves the subscription unsent, so the peer is reset as a whole (every connection
//! closed) and dialled again once the last one is gone: a fresh first connection on both sides.
//!
//! Two connections within [`SIMULTANEOUS_DIAL`] of each other are both sides dialling at once
//! (mDNS finds both at the same time): both live, nothing to do. Pure bookkeeping, no sockets
//! and no clocks (time is passed in); the event loop acts on the answers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

/// Two connections to one peer opened closer together than this are a simultaneous dial.
pub const SIMULTANEOUS_DIAL: Duration = Duration::from_secs(2);

/// What a newly established connection means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Established {
    /// The only connection to this peer.
    First,
    /// Another connection opened at about the same time: both sides dialled.
    Simultaneous,
    /// The peer connected again while older connections stayed open: they belong to a previous
    /// life of the peer (or a path that died). Reset the peer: close all, then redial.
    Reconnected { older: usize, oldest_age: Duration },
}

/// The connections the swarm holds, by peer, and the peers to dial once their reset is done.
/// Mirrors the swarm's own connections, so it is bounded by them.
#[derive(Debug, Default)]
pub struct ConnectionBook {
    open: HashMap<PeerId, Vec<(ConnectionId, Instant)>>,
    /// Peers being reset, with addresses to dial them at (besides what mDNS knows).
    resetting: HashMap<PeerId, Vec<Multiaddr>>,
}

impl ConnectionBook {
    /// Records a new connection; `redial_at` is where the peer can be dialled back if it has to
    /// be reset (the address it came from when that is its listening socket, as with QUIC).
    pub fn established(&mut self, peer: PeerId, id: ConnectionId, redial_at: Option<Multiaddr>, now: Instant) -> Established {
        let conns = self.open.entry(peer).or_default();
        let oldest = conns.iter().map(|(_, at)| *at).min();
        conns.push((id, now));
        let older = conns.len() - 1;
        let Some(oldest) = oldest else { return Established::First };
        let oldest_age = now.saturating_duration_since(oldest);
        if oldest_age < SIMULTANEOUS_DIAL {
            return Established::Simultaneous;
        }
        let addrs = self.resetting.entry(peer).or_default();
        if let Some(addr) = redial_at {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Established::Reconnected { older, oldest_age }
    }

    /// Records a closed connection. When it was the peer's last one and the peer is being
    /// reset, returns the addresses to dial it at now.
    pub fn closed(&mut self, peer: PeerId, id: ConnectionId) -> Option<Vec<Multiaddr>> {
        let conns = self.open.get_mut(&peer)?;
        conns.retain(|(c, _)| *c != id);
        if !conns.is_empty() {
            return None;
        }
        self.open.remove(&peer);
        self.resetting.remove(&peer)
    }

    /// Connections currently open to `peer`.
    pub fn count(&self, peer: &PeerId) -> usize {
        self.open.get(peer).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/10.77.1.2/udp/{port}/quic-v1").parse().unwrap()
    }

    #[test]
    fn a_second_connection_at_once_is_a_simultaneous_dial() {
        let mut book = ConnectionBook::default();
        let (peer, t0) = (PeerId::random(), Instant::now());
        let (a, b) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        assert_eq!(book.established(peer, a, None, t0), Established::First);
        assert_eq!(book.established(peer, b, Some(addr(1)), t0 + Duration::from_millis(300)), Established::Simultaneous);
        // Closing one of them is ordinary: no reset, no redial.
        assert_eq!(book.closed(peer, a), None);
        assert_eq!(book.closed(peer, b), None);
        assert_eq!(book.count(&peer), 0);
    }

    #[test]
    fn a_peer_that_connects_again_while_its_old_connection_lingers_is_reset_and_redialled() {
        let mut book = ConnectionBook::default();
        let (peer, t0) = (PeerId::random(), Instant::now());
        let (old, new) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        book.established(peer, old, Some(addr(1)), t0);
        let later = t0 + Duration::from_secs(30);
        assert_eq!(
            book.established(peer, new, Some(addr(2)), later),
            Established::Reconnected { older: 1, oldest_age: Duration::from_secs(30) }
        );
        // The redial waits until every connection of the reset is gone, then uses the new address.
        assert_eq!(book.closed(peer, old), None);
        assert_eq!(book.closed(peer, new), Some(vec![addr(2)]));
        // Done: the redialled connection is a first one again, and its close redials nothing.
        let again = ConnectionId::new_unchecked(3);
        assert_eq!(book.established(peer, again, None, later + Duration::from_millis(5)), Established::First);
        assert_eq!(book.closed(peer, again), None);
    }

    #[test]
    fn other_peers_are_not_affected_and_unknown_closes_are_ignored() {
        let mut book = ConnectionBook::default();
        let (p, q, t0) = (PeerId::random(), PeerId::random(), Instant::now());
        book.established(p, ConnectionId::new_unchecked(1), None, t0);
        assert_eq!(book.established(q, ConnectionId::new_unchecked(2), None, t0 + Duration::from_secs(10)), Established::First);
        assert_eq!(book.closed(q, ConnectionId::new_unchecked(9)), None);
        assert_eq!(book.closed(PeerId::random(), ConnectionId::new_unchecked(1)), None);
        assert_eq!((book.count(&p), book.count(&q)), (1, 1));
    }
}
