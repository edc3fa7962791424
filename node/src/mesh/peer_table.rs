//! What this node knows about its peers: the newest advert of each, with liveness.
//!
//! Adverts expire `ttl` after they were received, so a node that vanishes without a word (killed,
//! partitioned) drops out after one TTL. A `leaving` advert removes the node at once but is kept
//! as a tombstone until it expires, so older adverts of that node still circulating in the mesh
//! cannot bring it back. Time is passed in, which keeps the table testable without sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hotspot_protocol::{NodeAdvert, NodeId, NodeState};
use libp2p::PeerId;

/// One known peer.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub advert: NodeAdvert,
    /// The libp2p identity derived from `advert.node` (requests go there).
    pub peer: PeerId,
    pub received_at: Instant,
    /// Wall clock when received (ms since the epoch), for tools that compare nodes' logs.
    pub received_at_ms: u64,
}

/// What [`PeerTable::admit`] did with an advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// First advert of a node not currently known.
    Joined,
    Updated,
    /// A `leaving` advert: the node is gone from the live view now.
    Left,
    /// Not newer than what we have (a replay or a late duplicate): dropped.
    Stale,
    /// The table is at its bound and this is a new node: dropped.
    Full,
}

#[derive(Debug)]
pub struct PeerTable {
    entries: HashMap<NodeId, PeerEntry>,
    ttl: Duration,
    max_peers: usize,
}

impl PeerTable {
    pub fn new(ttl: Duration, max_peers: usize) -> Self {
        PeerTable { entries: HashMap::new(), ttl, max_peers }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True when `advert` is newer than anything seen from its node (so it may spread).
    pub fn is_newer(&self, advert: &NodeAdvert) -> bool {
        self.entries.get(&advert.node).is_none_or(|e| advert.seq > e.advert.seq)
    }

    /// Records an advert that passed validation.
    pub fn admit(&mut self, advert: NodeAdvert, peer: PeerId, now: Instant, now_ms: u64) -> Admission {
        let previous = self.entries.get(&advert.node);
        if previous.is_some_and(|e| advert.seq <= e.advert.seq) {
            return Admission::Stale;
        }
        if previous.is_none() && self.entries.len() >= self.max_peers {
            return Admission::Full;
        }
        let was_live = previous.is_some_and(|e| e.advert.state != NodeState::Leaving);
        let admission = match (advert.state, was_live) {
            (NodeState::Leaving, _) => Admission::Left,
            (_, true) => Admission::Updated,
            (_, false) => Admission::Joined,
        };
        self.entries.insert(advert.node, PeerEntry { advert, peer, received_at: now, received_at_ms: now_ms });
        admission
    }

    /// Forgets entries not refreshed within the TTL; returns the live ones that timed out.
    pub fn expire(&mut self, now: Instant) -> Vec<PeerEntry> {
        let ttl = self.ttl;
        let (expired, kept) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|(_, e)| now.saturating_duration_since(e.received_at) >= ttl);
        self.entries = kept;
        let expired: HashMap<NodeId, PeerEntry> = expired;
        expired.into_values().filter(|e| e.advert.state != NodeState::Leaving).collect()
    }

    /// Live peers (not leaving, not expired), ordered by node id.
    pub fn live(&self) -> Vec<&PeerEntry> {
        let mut out: Vec<&PeerEntry> =
            self.entries.values().filter(|e| e.advert.state != NodeState::Leaving).collect();
        out.sort_by_key(|e| e.advert.node);
        out
    }

    pub fn get(&self, node: &NodeId) -> Option<&PeerEntry> {
        self.entries.get(node).filter(|e| e.advert.state != NodeState::Leaving)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(n: u8, seq: u64, state: NodeState) -> NodeAdvert {
        NodeAdvert { seq, state, ..NodeAdvert::blank(NodeId([n; 32]), format!("n{n}")) }
    }

    #[test]
    fn newer_adverts_replace_older_and_replays_are_stale() {
        let mut t = PeerTable::new(Duration::from_secs(5), 10);
        let now = Instant::now();
        let p = PeerId::random();
        assert_eq!(t.admit(advert(1, 5, NodeState::Healthy), p, now, 0), Admission::Joined);
        assert_eq!(t.admit(advert(1, 6, NodeState::Healthy), p, now, 0), Admission::Updated);
        assert_eq!(t.admit(advert(1, 6, NodeState::Healthy), p, now, 0), Admission::Stale);
        assert_eq!(t.admit(advert(1, 2, NodeState::Healthy), p, now, 0), Admission::Stale);
        assert!(!t.is_newer(&advert(1, 6, NodeState::Healthy)));
        assert_eq!(t.live().len(), 1);
    }

    #[test]
    fn leaving_removes_at_once_and_blocks_older_adverts() {
        let mut t = PeerTable::new(Duration::from_secs(5), 10);
        let now = Instant::now();
        let p = PeerId::random();
        t.admit(advert(1, 5, NodeState::Healthy), p, now, 0);
        assert_eq!(t.admit(advert(1, 7, NodeState::Leaving), p, now, 0), Admission::Left);
        assert!(t.live().is_empty());
        assert!(t.get(&NodeId([1; 32])).is_none());
        // A late healthy advert from before the leave must not resurrect it.
        assert_eq!(t.admit(advert(1, 6, NodeState::Healthy), p, now, 0), Admission::Stale);
        // A restart (higher seq) does.
        assert_eq!(t.admit(advert(1, 8, NodeState::Healthy), p, now, 0), Admission::Joined);
    }

    #[test]
    fn silent_nodes_expire_after_ttl() {
        let mut t = PeerTable::new(Duration::from_secs(5), 10);
        let start = Instant::now();
        t.admit(advert(1, 1, NodeState::Healthy), PeerId::random(), start, 0);
        t.admit(advert(2, 1, NodeState::Healthy), PeerId::random(), start + Duration::from_secs(3), 0);
        assert!(t.expire(start + Duration::from_millis(4999)).is_empty());
        let expired: Vec<NodeId> = t.expire(start + Duration::from_secs(5)).into_iter().map(|e| e.advert.node).collect();
        assert_eq!(expired, vec![NodeId([1; 32])]);
        assert_eq!(t.live().len(), 1);
    }

    #[test]
    fn table_is_bounded() {
        let mut t = PeerTable::new(Duration::from_secs(5), 2);
        let now = Instant::now();
        t.admit(advert(1, 1, NodeState::Healthy), PeerId::random(), now, 0);
        t.admit(advert(2, 1, NodeState::Healthy), PeerId::random(), now, 0);
        assert_eq!(t.admit(advert(3, 1, NodeState::Healthy), PeerId::random(), now, 0), Admission::Full);
        // Known nodes still update.
        assert_eq!(t.admit(advert(2, 2, NodeState::Healthy), PeerId::random(), now, 0), Admission::Updated);
    }
}
