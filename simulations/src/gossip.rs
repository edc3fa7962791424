//! What each node knows about its peers.
//!
//! A real node keeps the newest advert gossip delivered from every peer and ranks all of them.
//! Storing 10,000 x 10,000 views is out of the question, so the simulator keeps one shared board:
//! every advert version each node published (the last [`GossipParams::history`] of them), and a
//! *delivery function* that says when version `seq` of publisher `p` reached viewer `v`:
//! `published + base + min(Exp(mean), cap)`, and if that delivery is lost (probability `loss`)
//! the next periodic re-advert (`heartbeat` later) tries again, up to `max_attempts` times. It is
//! a hash of (seed, v, p, seq, attempt), so it costs no memory and no event order. Viewer `v`'s
//! view of `p` at time `t` is the newest version whose delivery time is <= t — stale by the delay,
//! older still after a loss — exactly what a receiver that drops older sequence numbers keeps.
//!
//! Ranking every peer is also too slow, and unnecessary: the election's cost depends only on the
//! advertised price and the host's size, both the same for every node of a market, and ties break
//! on node id. So within a market the best candidates are the lowest-id nodes whose *viewed*
//! advert shows room. The board indexes, per market and workload class, the nodes that showed room
//! for it in any version a viewer may still hold (a node that fills up stays indexed for the
//! delivery horizon). The deciding node (`moves.rs`) merges these per-market id orders, cheapest
//! market first, keeping the nodes that pass `election::check_eligible` *on the viewer's
//! version*, and stops when no unseen node can enter the first `k` it would try: those are then
//! the peers it would try after ranking its whole view (up to adverts of one market showing
//! different prices for the seconds a price change takes to spread; the invariant-checking mode
//! runs the full ranking beside it and counts differences).

use std::collections::{BTreeSet, VecDeque};

use hotspot_protocol::election::{check_eligible, WorkloadProfile};
use hotspot_protocol::advert::Capacity;
use hotspot_protocol::{NodeAdvert, NodeId, NodeState};

use crate::rng::{hash, unit};
use crate::scenario::CLASSES;

pub const NCLASSES: usize = CLASSES.len();

/// Gossip delay and loss. Defaults: a gossipsub mesh of 10,000 nodes spreads a message in about
/// log(10,000) ~ 4 hops of ~100-250 ms each.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipParams {
    /// Minimum delay. Default 100 ms.
    pub base_ms: u64,
    /// Mean extra delay (exponential). Default 600 ms.
    pub mean_extra_ms: f64,
    /// Cap on the extra delay. Default 5 s.
    pub cap_ms: u64,
    /// Probability one delivery is lost. Default 0.02.
    pub loss: f64,
    /// Period of re-adverts that repair a loss. Default 30 s.
    pub heartbeat_ms: u64,
    /// Deliveries tried before a version is given up (a newer one supersedes it). Default 4.
    pub max_attempts: u32,
    /// Versions kept per publisher. Default 16.
    pub history: usize,
}

impl Default for GossipParams {
    fn default() -> Self {
        GossipParams { base_ms: 100, mean_extra_ms: 600.0, cap_ms: 5_000, loss: 0.02, heartbeat_ms: 30_000, max_attempts: 4, history: 16 }
    }
}

impl GossipParams {
    /// When version `seq` of `publisher` (published at `published_ms`) reaches `viewer`;
    /// `u64::MAX` if every attempt is lost.
    pub fn deliver_at(&self, seed: u64, viewer: u32, publisher: u32, seq: u64, published_ms: u64) -> u64 {
        if viewer == publisher {
            return published_ms;
        }
        for attempt in 0..self.max_attempts.max(1) {
            let h = hash(&[seed, viewer as u64, publisher as u64, seq, attempt as u64]);
            if unit(h.rotate_left(17)) >= self.loss {
                return published_ms + attempt as u64 * self.heartbeat_ms + self.delay(h);
            }
        }
        u64::MAX
    }

    /// Whether version `seq` of `publisher` reached `viewer` by `now_ms`: [`Self::deliver_at`]
    /// `<= now_ms`, without computing the delay when the version is older than any delay.
    pub fn delivered_by(&self, seed: u64, viewer: u32, publisher: u32, seq: u64, published_ms: u64, now_ms: u64) -> bool {
        if viewer == publisher {
            return published_ms <= now_ms;
        }
        for attempt in 0..self.max_attempts.max(1) {
            let h = hash(&[seed, viewer as u64, publisher as u64, seq, attempt as u64]);
            if unit(h.rotate_left(17)) >= self.loss {
                let sent = published_ms + attempt as u64 * self.heartbeat_ms;
                return sent + self.base_ms + self.cap_ms <= now_ms || sent + self.delay(h) <= now_ms;
            }
        }
        false
    }

    /// A one-off delay for a hashed event (e.g. when a node hears of a price change).
    pub fn delay(&self, h: u64) -> u64 {
        let extra = -self.mean_extra_ms * (1.0 - unit(h)).ln();
        self.base_ms + (extra as u64).min(self.cap_ms)
    }

    /// After this long every viewer holds a published version or a newer one.
    pub fn horizon_ms(&self) -> u64 {
        self.base_ms + self.cap_ms + self.heartbeat_ms * self.max_attempts.max(1) as u64
    }
}

/// The fields of a node's advert that change between versions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdvertUpdate {
    pub seq: u64,
    pub state: NodeState,
    pub price_per_hour: f64,
    pub capacity: Capacity,
}

/// Whose knowledge a decision uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The newest advert of every node, instantly (the central controller).
    Global,
    /// What gossip delivered to this node by now.
    Node(u32),
}

struct Version {
    published_ms: u64,
    advert: NodeAdvert,
}

/// Every node's recent adverts and the per-(market, class) index of nodes with room.
pub struct AdvertBoard {
    params: GossipParams,
    seed: u64,
    history: Vec<VecDeque<Version>>,
    /// `open[market * NCLASSES + class]`: nodes that showed room for the class within the horizon.
    open: Vec<BTreeSet<u32>>,
    /// The same, by newest advert only (what the global view searches).
    open_now: Vec<BTreeSet<u32>>,
    /// Per node, per class: since when its newest advert shows no room (None: it shows room).
    unfit_since: Vec<[Option<u64>; NCLASSES]>,
}

impl AdvertBoard {
    pub fn new(params: GossipParams, seed: u64, nodes: usize, markets: usize) -> Self {
        AdvertBoard {
            params,
            seed,
            history: (0..nodes).map(|_| VecDeque::new()).collect(),
            open: (0..markets * NCLASSES).map(|_| BTreeSet::new()).collect(),
            open_now: (0..markets * NCLASSES).map(|_| BTreeSet::new()).collect(),
            unfit_since: vec![[Some(0); NCLASSES]; nodes],
        }
    }

    pub fn params(&self) -> &GossipParams {
        &self.params
    }

    /// Records a new advert of `node` (in `market`): the previous one with `update` applied, or
    /// `first()` for a node's first advert. (The oldest kept version is recycled: a node's name,
    /// zone and features never change, so publishing allocates nothing.) Returns a bit mask of the
    /// classes it stopped having room for: the caller calls [`AdvertBoard::prune`] for them a
    /// horizon later.
    pub fn publish(
        &mut self,
        node: u32,
        market: u16,
        update: AdvertUpdate,
        now_ms: u64,
        first: impl FnOnce() -> NodeAdvert,
    ) -> u8 {
        let h = &mut self.history[node as usize];
        let mut advert = if h.len() >= self.params.history.max(1) {
            h.pop_front().expect("history is not empty").advert
        } else if let Some(last) = h.back() {
            last.advert.clone()
        } else {
            first()
        };
        advert.seq = update.seq;
        advert.issued_at_ms = now_ms;
        advert.state = update.state;
        advert.price_per_hour = update.price_per_hour;
        advert.capacity = update.capacity;
        let mut now_unfit = 0u8;
        for (c, class) in CLASSES.iter().enumerate() {
            let fits = advert.accepts_workloads() && class.needs.fits_in(&advert.capacity.free);
            let slot = &mut self.unfit_since[node as usize][c];
            let i = market as usize * NCLASSES + c;
            if fits {
                *slot = None;
                self.open[i].insert(node);
                self.open_now[i].insert(node);
            } else {
                self.open_now[i].remove(&node);
            }
            if !fits && slot.is_none() {
                *slot = Some(now_ms);
                now_unfit |= 1 << c;
            }
        }
        h.push_back(Version { published_ms: now_ms, advert });
        now_unfit
    }

    /// Drops `node` from the class index if no viewer can still hold a version with room.
    pub fn prune(&mut self, node: u32, market: u16, class: u8, now_ms: u64) {
        if let Some(since) = self.unfit_since[node as usize][class as usize] {
            if since + self.params.horizon_ms() <= now_ms {
                self.open[market as usize * NCLASSES + class as usize].remove(&node);
            }
        }
    }

    /// Forgets a node that left (its last advert said so, and it is gone).
    pub fn has_open(&self, market: u16, class: u8) -> bool {
        !self.open[market as usize * NCLASSES + class as usize].is_empty()
    }

    pub fn latest(&self, node: u32) -> Option<&NodeAdvert> {
        self.history[node as usize].back().map(|v| &v.advert)
    }

    /// The advert of `node` as `view` holds it at `now_ms`.
    pub fn seen(&self, view: View, node: u32, now_ms: u64) -> Option<&NodeAdvert> {
        match view {
            View::Global => self.latest(node),
            View::Node(viewer) => self.history[node as usize]
                .iter()
                .rev()
                .find(|v| self.params.delivered_by(self.seed, viewer, node, v.advert.seq, v.published_ms, now_ms))
                .map(|v| &v.advert),
        }
    }

    /// The first indexed node with room for `class` in `market`, from id `from` on. The global
    /// view searches nodes whose newest advert has room; a node's view also those that had room
    /// in a version it may still hold.
    pub fn next_open(&self, view: View, market: u16, class: u8, from: u32) -> Option<u32> {
        let index = match view {
            View::Global => &self.open_now,
            View::Node(_) => &self.open,
        };
        index[market as usize * NCLASSES + class as usize].range(from..).next().copied()
    }

    /// `node`'s advert as `view` holds it, if the workload could go there: not a target that
    /// denied it since that advert (`denied`: node, advert seq), and `election::check_eligible`.
    pub fn eligible<'a>(
        &'a self,
        view: View,
        node: u32,
        profile: &WorkloadProfile,
        self_id: &NodeId,
        denied: &[(u32, u64)],
        now_ms: u64,
    ) -> Option<&'a NodeAdvert> {
        let advert = self.seen(view, node, now_ms)?;
        if denied.iter().any(|(n, seq)| *n == node && *seq >= advert.seq) {
            return None; // denied us, and no newer advert since
        }
        // The cheap necessary conditions first; then the election's own check.
        let roomy = advert.accepts_workloads() && profile.needs.fits_in(&advert.capacity.free);
        (roomy && check_eligible(profile, self_id, advert).is_ok()).then_some(advert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_is_delayed_lossy_and_bounded() {
        let p = GossipParams { loss: 0.3, ..GossipParams::default() };
        let mut delays = Vec::new();
        let mut lost_once = 0;
        for viewer in 0..2000 {
            let at = p.deliver_at(9, viewer, 5000, 1, 1_000);
            assert!(at >= 1_000 + p.base_ms);
            if at != u64::MAX {
                assert!(at <= 1_000 + p.horizon_ms());
                delays.push(at - 1_000);
                if at - 1_000 >= p.heartbeat_ms {
                    lost_once += 1;
                }
            }
        }
        assert_eq!(p.deliver_at(9, 7, 7, 1, 1_000), 1_000, "a node sees its own advert at once");
        for viewer in 0..300 {
            let at = p.deliver_at(9, viewer, 5000, 2, 1_000);
            for now in [1_000, 1_500, 2_000, 6_100, 31_000, 40_000, 200_000] {
                assert_eq!(p.delivered_by(9, viewer, 5000, 2, 1_000, now), at <= now, "viewer {viewer} at {now}");
            }
        }
        // 30 % loss: about 30 % of deliveries need a re-advert.
        assert!((450..750).contains(&lost_once), "{lost_once} of 2000 needed a repair");
        assert_eq!(delays, (0..2000).filter_map(|v| {
            let at = p.deliver_at(9, v, 5000, 1, 1_000);
            (at != u64::MAX).then(|| at - 1_000)
        }).collect::<Vec<_>>(), "delivery is a pure function");
    }
}
