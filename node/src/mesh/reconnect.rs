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
//! (mDNS finds both at the same time): both live, nothing to do. A restart that falls inside
//! that window is caught later by the event loop's watchdog: a peer whose advert timed out while
//! we are still connected to it is reset the same way ([`ConnectionBook::reset`]).
//!
//! The redial goes where the peer's connections came from, where mDNS last saw it (a restart on
//! new ports) and, for a watchdog reset, the addresses of its last advert. Pure bookkeeping, no
//! sockets and no clocks (time is passed in); the event loop acts on the answers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

/// Bounds of the mDNS address book: peers, and addresses kept per peer (newest first).
const MAX_DISCOVERED_PEERS: usize = 4096;
const MAX_ADDRS_PER_PEER: usize = 8;

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

/// One open connection: when it was established and where its peer can be dialled back.
#[derive(Debug)]
struct Open {
    id: ConnectionId,
    at: Instant,
    redial_at: Option<Multiaddr>,
}

/// The connections the swarm holds, by peer, and the peers to dial once their reset is done.
/// Mirrors the swarm's own connections, so it is bounded by them.
#[derive(Debug, Default)]
pub struct ConnectionBook {
    open: HashMap<PeerId, Vec<Open>>,
    /// Peers being reset, with addresses to dial them at.
    resetting: HashMap<PeerId, Vec<Multiaddr>>,
    /// Where mDNS last saw each peer (a restarted peer's new ports show up here first).
    discovered: HashMap<PeerId, Vec<Multiaddr>>,
}

impl ConnectionBook {
    /// Records a new connection; `redial_at` is where the peer can be dialled back if it has to
    /// be reset (the address it came from when that is its listening socket, as with QUIC).
    pub fn established(&mut self, peer: PeerId, id: ConnectionId, redial_at: Option<Multiaddr>, now: Instant) -> Established {
        let conns = self.open.entry(peer).or_default();
        let oldest = conns.iter().map(|c| c.at).min();
        conns.push(Open { id, at: now, redial_at });
        let older = conns.len() - 1;
        let Some(oldest) = oldest else { return Established::First };
        let oldest_age = now.saturating_duration_since(oldest);
        if oldest_age < SIMULTANEOUS_DIAL {
            return Established::Simultaneous;
        }
        self.reset(peer, Vec::new());
        Established::Reconnected { older, oldest_age }
    }

    /// Marks `peer` as being reset (the caller closes its connections): once the last one is
    /// closed, dial it where its newest connections came from, then at `also`.
    pub fn reset(&mut self, peer: PeerId, also: Vec<Multiaddr>) {
        let Some(conns) = self.open.get(&peer) else { return };
        let known = self.resetting.entry(peer).or_default();
        let newest_first = conns.iter().rev().filter_map(|c| c.redial_at.clone());
        for addr in newest_first.chain(also) {
            if !known.contains(&addr) {
                known.push(addr);
            }
        }
    }

    /// Records a closed connection. When it was the peer's last one and the peer is being
    /// reset, returns the addresses to dial it at now: its connections' and the ones mDNS saw.
    pub fn closed(&mut self, peer: PeerId, id: ConnectionId) -> Option<Vec<Multiaddr>> {
        let conns = self.open.get_mut(&peer)?;
        conns.retain(|c| c.id != id);
        if !conns.is_empty() {
            return None;
        }
        self.open.remove(&peer);
        let mut addrs = self.resetting.remove(&peer)?;
        for addr in self.discovered.get(&peer).into_iter().flatten() {
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        Some(addrs)
    }

    /// Records an address mDNS found `peer` at (bounded: a full book takes no new peers).
    pub fn discovered(&mut self, peer: PeerId, addr: Multiaddr) {
        if !self.discovered.contains_key(&peer) && self.discovered.len() >= MAX_DISCOVERED_PEERS {
            return;
        }
        let addrs = self.discovered.entry(peer).or_default();
        addrs.retain(|a| *a != addr);
        addrs.insert(0, addr);
        addrs.truncate(MAX_ADDRS_PER_PEER);
    }

    /// Forgets an address whose mDNS record expired.
    pub fn expired(&mut self, peer: PeerId, addr: &Multiaddr) {
        if let Some(addrs) = self.discovered.get_mut(&peer) {
            addrs.retain(|a| a != addr);
            if addrs.is_empty() {
                self.discovered.remove(&peer);
            }
        }
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
        assert_eq!(book.closed(peer, new), Some(vec![addr(2), addr(1)]), "the new life's address first");
        // Done: the redialled connection is a first one again, and its close redials nothing.
        let again = ConnectionId::new_unchecked(3);
        assert_eq!(book.established(peer, again, None, later + Duration::from_millis(5)), Established::First);
        assert_eq!(book.closed(peer, again), None);
    }

    #[test]
    fn a_reset_asked_for_by_the_caller_redials_after_the_last_close() {
        let mut book = ConnectionBook::default();
        let (peer, t0) = (PeerId::random(), Instant::now());
        let (a, b) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        book.established(peer, a, Some(addr(7)), t0);
        book.established(peer, b, Some(addr(8)), t0);
        book.reset(peer, vec![addr(1), addr(1), addr(7)]);
        assert_eq!(book.closed(peer, b), None);
        assert_eq!(book.closed(peer, a), Some(vec![addr(8), addr(7), addr(1)]));
        // A peer with no connection has nothing to reset (and must not leave an entry behind).
        book.reset(peer, vec![addr(3)]);
        assert_eq!(book.established(peer, a, None, t0), Established::First);
        assert_eq!(book.closed(peer, a), None);
    }

    #[test]
    fn a_redial_also_tries_where_mdns_saw_the_peer_last() {
        let mut book = ConnectionBook::default();
        let (peer, t0) = (PeerId::random(), Instant::now());
        let (old, new) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        book.discovered(peer, addr(1));
        book.discovered(peer, addr(5));
        book.discovered(peer, addr(6));
        book.expired(peer, &addr(6));
        book.established(peer, old, Some(addr(1)), t0);
        book.established(peer, new, None, t0 + Duration::from_secs(5));
        assert_eq!(book.closed(peer, old), None);
        assert_eq!(book.closed(peer, new), Some(vec![addr(1), addr(5)]));
        for port in 0..20 {
            book.discovered(peer, addr(100 + port));
        }
        assert_eq!(book.discovered[&peer].len(), MAX_ADDRS_PER_PEER);
        assert_eq!(book.discovered[&peer][0], addr(119), "newest first");
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
