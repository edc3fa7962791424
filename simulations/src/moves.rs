//! What simulated nodes decide, with the `protocol` crate's code: `election::decide` on the
//! adverts the deciding node sees, then `reservation::Ledger::request` on the targets in the
//! election's order until one grants. Then the migration itself: pre-copy while running, a frozen
//! final dump plus the volume/interface move, commit on the target.

use hotspot_protocol::election::{cost_per_hour, decide, CurrentHost, HopDecision};
use hotspot_protocol::reservation::{DenyReason, ReservationId, ReservationMessage, ReserveRequest};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hotspot_protocol::{NodeAdvert, NodeId};

use crate::engine::{Event, Sim};
use crate::state::{Life, WState};
use crate::gossip::View;
use crate::params::Policy;
use crate::rng::hash;
use crate::scenario::node_index;

/// Stands for "no current host" when a workload is placed (arrival, restart).
const NOWHERE: NodeId = NodeId([0xff; 32]);

impl Sim<'_> {
    /// The ordered targets the election picks for `w`, seen from `view`. `host` is where it runs.
    fn elect(&mut self, w: u32, view: View, host: Option<u32>, forced: bool) -> Option<Vec<NodeId>> {
        self.c.decisions += 1;
        let wl = &self.wls[w as usize];
        let (self_id, current_cost) = match host {
            Some(h) => {
                let node = &self.nodes[h as usize];
                let price = self.paths[node.market as usize].at(self.now);
                (node.id, cost_per_hour(price, &node.total, &wl.profile.needs))
            }
            // No source host is paid during a placement.
            None => (NOWHERE, 0.0),
        };
        let scope = match self.sc.workloads[w as usize].volume_zone {
            Some(z) => &self.zone_markets[z as usize],
            None => &self.all_markets,
        };
        // Merge the markets' id-ordered indexes, keyed by (lowest cost any view may hold for the
        // market, node id). The election ranks by cost then id, and every unseen node's (cost, id)
        // is at least its market's key: once the k-th best found beats the smallest key left,
        // nothing unseen can be among the first k the node tries.
        let keep = 1.0 - self.p.hop.margin.max(0.0);
        let k = self.tries(forced);
        let mut heads = BinaryHeap::new();
        for &m in scope {
            let bound = self.lowest_recent_cost(m, wl.class);
            if !forced && bound > current_cost * keep {
                continue; // a voluntary hop needs a target cheaper by the margin (decide's first test)
            }
            if let Some(first) = self.board.next_open(view, m, wl.class, 0) {
                heads.push(Reverse((bound.to_bits(), first, m))); // costs are >= 0: bits order
            }
        }
        let mut best: Vec<(f64, u32, &NodeAdvert)> = Vec::with_capacity(k + 1);
        while let Some(Reverse((bound_bits, node, m))) = heads.pop() {
            if best.len() >= k {
                let (cost, id, _) = best[k - 1];
                if (cost, id) < (f64::from_bits(bound_bits), node) {
                    break;
                }
            }
            if let Some(advert) = self.board.eligible(view, node, &wl.profile, &self_id, &wl.denied_by, self.now) {
                let cost = cost_per_hour(advert.price_per_hour, &advert.capacity.total, &wl.profile.needs);
                let at = best.partition_point(|(c, id, _)| (*c, *id) < (cost, node));
                best.insert(at, (cost, node, advert));
                best.truncate(k);
            }
            if let Some(next) = node.checked_add(1).and_then(|from| self.board.next_open(view, m, wl.class, from)) {
                heads.push(Reverse((bound_bits, next, m)));
            }
        }
        let adverts: Vec<&NodeAdvert> = best.into_iter().map(|(_, _, a)| a).collect();
        let current = CurrentHost { node: self_id, cost_per_hour: current_cost, must_leave: forced };
        let ids = |d: HopDecision| match d {
            HopDecision::Hop { candidates, .. } => Some(candidates.into_iter().map(|c| c.node).collect::<Vec<_>>()),
            HopDecision::Stay(_) => None,
        };
        let chosen = ids(decide(&wl.profile, &current, adverts, &self.p.hop));
        if self.p.check_invariants {
            // Cross-check the shortcut: the election over the node's whole view of the scope must
            // put the same peers first (the ones reservations are tried on).
            let full: Vec<_> = scope
                .iter()
                .flat_map(|m| self.market_nodes[*m as usize].iter())
                .filter_map(|n| self.board.seen(view, *n, self.now).map(|a| (*n, a)))
                .filter(|(n, a)| !wl.denied_by.iter().any(|(d, seq)| d == n && *seq >= a.seq))
                .map(|(_, a)| a)
                .collect();
            let reference = ids(decide(&wl.profile, &current, full, &self.p.hop));
            let top = |v: &Option<Vec<NodeId>>| v.as_ref().map(|c| c.iter().take(k).copied().collect::<Vec<_>>());
            let differs = top(&chosen) != top(&reference);
            self.c.view_checks += 1;
            self.c.view_mismatches += differs as u64;
        }
        chosen
    }

    fn tries(&self, forced: bool) -> usize {
        if forced { self.p.max_tries_forced } else { self.p.max_tries }.max(1)
    }

    /// Asks targets in order for a reservation; the first grant wins. A denial is remembered
    /// against the advert the source holds of the target, so the next decision (on a retry) goes
    /// on to the next peers instead of asking the same full ones again — node-local knowledge
    /// from the Denied messages it received.
    fn reserve(&mut self, w: u32, view: View, source: NodeId, targets: &[NodeId], forced: bool, ttl_ms: u64) -> Option<(u32, ReservationId)> {
        for target in targets.iter().take(self.tries(forced)) {
            let t = node_index(target);
            let wl = &mut self.wls[w as usize];
            wl.attempts += 1;
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&w.to_le_bytes());
            id[4..8].copy_from_slice(&wl.attempts.to_le_bytes());
            let req = ReserveRequest { id: ReservationId(id), source, workload: format!("w{w}"), needs: wl.profile.needs, ttl_ms };
            let node = &mut self.nodes[t as usize];
            // A node that left does not answer; the source times out, as good as a denial.
            let refusal = match node.life {
                Life::Up => None,
                Life::Leaving | Life::Down => Some(DenyReason::Leaving),
            };
            self.c.reservation_msgs += 2;
            if !self.p.reserve && refusal.is_none() {
                return Some((t, req.id)); // ablation: trust the stale view, skip the ledger
            }
            match node.ledger.request(&req, refusal, self.now) {
                ReservationMessage::Granted { id, .. } => {
                    self.wls[w as usize].denied_by.clear();
                    return Some((t, id));
                }
                _ => {
                    self.c.denied += 1;
                    let kind = match (source == NOWHERE, forced) {
                        (true, _) => 0,
                        (false, true) => 1,
                        (false, false) => 2,
                    };
                    self.c.denied_kind[kind] += 1;
                    let seen = self.board.seen(view, t, self.now).map_or(0, |a| a.seq);
                    let memory = &mut self.wls[w as usize].denied_by;
                    if memory.len() >= 256 {
                        memory.drain(..128); // bounded: the oldest denials are the stalest
                    }
                    memory.push((t, seen));
                }
            }
        }
        None
    }

    /// Evaluates a hop of a running workload (forced: its host is going away).
    pub(crate) fn attempt_move(&mut self, w: u32, forced: bool) {
        let WState::Running { node: host } = self.wls[w as usize].state else { return };
        if forced && self.nodes[host as usize].life != Life::Leaving {
            return;
        }
        let view = if self.policy == Policy::Mesh { View::Node(host) } else { View::Global };
        let targets = self.elect(w, view, Some(host), forced).unwrap_or_default();
        let (precopy, _) = self.move_times(w);
        // Long enough for the slowest move and a restore from checkpoint after it.
        let ttl = precopy * 2 + self.p.fixed_move_ms.1 + self.p.restart_ms + 60_000;
        let source = self.nodes[host as usize].id;
        match self.reserve(w, view, source, &targets, forced, ttl) {
            Some((dst, res)) => {
                self.hold(w, dst, res);
                self.set_state(w, WState::PreCopy { src: host, dst });
                let gen = self.wls[w as usize].gen;
                self.schedule(self.now + precopy, Event::PreCopyDone { w, gen });
            }
            None if forced => {
                let at = self.now + self.p.forced_retry_ms;
                if at < self.nodes[host as usize].terminate_at {
                    let gen = self.wls[w as usize].gen;
                    self.schedule(at, Event::Evaluate { w, gen, forced: true });
                }
            }
            None => {}
        }
    }

    /// (pre-copy, frozen) durations of a move of `w`: bulk image over the bandwidth while it runs;
    /// then the dirtied share plus the volume/interface move while frozen. The move time is drawn
    /// per (workload, reservation attempt), which stays fixed for the whole move.
    fn move_times(&self, w: u32) -> (u64, u64) {
        let wl = &self.wls[w as usize];
        let bw = self.p.hop.bandwidth_bytes_per_sec.max(1.0);
        let precopy = (wl.profile.image_bytes as f64 / bw * 1000.0) as u64;
        let (lo, hi) = self.p.fixed_move_ms;
        let fixed = lo + hash(&[self.sc.seed, w as u64, wl.attempts as u64]) % (hi.saturating_sub(lo) + 1);
        (precopy, fixed + (precopy as f64 * self.p.dirty_fraction) as u64)
    }

    /// Finds a host for a workload that has none (arrival, restart after a revocation).
    pub(crate) fn place(&mut self, w: u32) {
        if self.wls[w as usize].state != WState::Down {
            return;
        }
        // The mesh has no scheduler: the workload is submitted to some live node, which elects.
        // The run starts from a deployed fleet, though: what runs at time 0 was placed before
        // (when gossip had long converged), so every policy starts from the same global placement.
        let view = match self.policy {
            Policy::Mesh if self.now > 0 => self.entry_node(w).map(View::Node).unwrap_or(View::Global),
            _ => View::Global,
        };
        let targets = self.elect(w, view, None, true).unwrap_or_default();
        match self.reserve(w, view, NOWHERE, &targets, true, self.p.restart_ms + 60_000) {
            Some((dst, res)) => {
                self.hold(w, dst, res);
                self.nodes[dst as usize].ledger.commit(&res, self.now);
                self.set_state(w, WState::Running { node: dst });
            }
            None => {
                let gen = self.wls[w as usize].gen;
                self.schedule(self.now + self.p.place_retry_ms, Event::Place { w, gen });
            }
        }
    }

    fn entry_node(&self, w: u32) -> Option<u32> {
        let n = self.nodes.len() as u64;
        (0..64u64).map(|i| (hash(&[self.sc.seed, w as u64, self.now, i]) % n) as u32).find(|c| self.nodes[*c as usize].life == Life::Up)
    }

    pub(crate) fn on_precopy_done(&mut self, w: u32) {
        if let WState::PreCopy { src, dst } = self.wls[w as usize].state {
            let (_, freeze) = self.move_times(w);
            self.set_state(w, WState::Frozen { src: Some(src), dst });
            let gen = self.wls[w as usize].gen;
            self.schedule(self.now + freeze, Event::MoveDone { w, gen });
        }
    }

    pub(crate) fn on_move_done(&mut self, w: u32) {
        let WState::Frozen { src, dst } = self.wls[w as usize].state else { return };
        if let Some(s) = src {
            self.release(w, s);
            self.c.migrations += 1;
        }
        let res = self.wls[w as usize].holdings.iter().find(|h| h.node == dst).map(|h| h.res);
        if let Some(res) = res {
            if !self.nodes[dst as usize].ledger.commit(&res, self.now) {
                self.c.expired_commits += 1;
            }
        }
        self.set_state(w, WState::Running { node: dst });
        if self.nodes[dst as usize].life == Life::Leaving && self.policy.hops() {
            self.attempt_move(w, true); // the target got its own notice meanwhile
        }
    }

    /// The end of a revoked node: whatever still runs there restarts from its checkpoint.
    pub(crate) fn on_terminate(&mut self, n: u32) {
        self.nodes[n as usize].life = Life::Down;
        let mass = self.nodes[n as usize].notice_cause == Some(crate::scenario::RevocationCause::Injected);
        let holders = self.nodes[n as usize].holders.clone();
        for w in holders {
            match self.wls[w as usize].state {
                WState::Running { node } if node == n => {
                    self.c.mass_restarted += mass as u64;
                    self.release(w, n);
                    self.restart_elsewhere(w);
                }
                WState::PreCopy { src, dst } | WState::Frozen { src: Some(src), dst } if src == n => {
                    // Too slow for the notice: restore the last checkpoint on the reserved target.
                    self.c.failed_moves += 1;
                    self.c.mass_restarted += mass as u64;
                    self.release(w, n);
                    self.lose_work_since_checkpoint(w);
                    self.c.restarts += 1;
                    self.set_state(w, WState::Frozen { src: None, dst });
                    let gen = self.wls[w as usize].gen;
                    self.schedule(self.now + self.p.restart_ms, Event::MoveDone { w, gen });
                }
                WState::PreCopy { src, .. } | WState::Frozen { src: Some(src), .. } => {
                    // The target vanished: keep (or resume) running on the source.
                    self.c.failed_moves += 1;
                    self.release(w, n);
                    self.set_state(w, WState::Running { node: src });
                    if self.policy.hops() {
                        self.attempt_move(w, true);
                    }
                }
                WState::Frozen { src: None, .. } => {
                    self.release(w, n);
                    self.set_state(w, WState::Down);
                    self.place(w);
                }
                _ => {}
            }
        }
        let node = &mut self.nodes[n as usize];
        debug_assert!(node.holders.is_empty());
        node.life_gen += 1;
        node.noticed = false;
        node.notice_cause = None;
        node.ledger = hotspot_protocol::reservation::Ledger::new(node.total);
        let life = node.life_gen;
        let price_ok = self.paths[node.market as usize].at(self.now) <= node.bid;
        if !node.waiting_for_price {
            self.schedule(self.now + self.p.relaunch_after_interruption_ms, Event::Relaunch { node: n, life });
        } else if price_ok {
            node.waiting_for_price = false;
            self.schedule(self.now + self.p.boot_ms, Event::Relaunch { node: n, life });
        }
    }

    fn restart_elsewhere(&mut self, w: u32) {
        self.lose_work_since_checkpoint(w);
        self.c.restarts += 1;
        self.set_state(w, WState::Down);
        let gen = self.wls[w as usize].gen;
        self.schedule(self.now + self.p.restart_ms, Event::Place { w, gen });
    }

    /// The lowest cost per hour a workload of `class` could have in `market` in anyone's view:
    /// views lag by at most the gossip horizon, so any price in force during it.
    fn lowest_recent_cost(&self, market: u16, class: u8) -> f64 {
        let price = self.paths[market as usize].min_between(self.now.saturating_sub(self.board.params().horizon_ms()), self.now);
        let total = self.sc.markets[market as usize].key.instance.total();
        cost_per_hour(price, &total, &crate::scenario::CLASSES[class as usize].needs)
    }

    /// After prices moved: which running workloads might now hop? A workload is evaluated only if
    /// some market that has room for its class is cheaper than its host by the margin at a price
    /// some view may still hold (see `lowest_recent_cost`) — otherwise `decide` can
    /// only say "not cheaper enough". Mesh nodes evaluate at their next hop-check timer after
    /// gossip brought them the news.
    pub(crate) fn hop_scan(&mut self) {
        let zones = self.sc.zones.len();
        let classes = crate::gossip::NCLASSES;
        // best[class * (zones + 1) + zone], zone == zones meaning any.
        let mut best = vec![f64::INFINITY; classes * (zones + 1)];
        for (m, market) in self.sc.markets.iter().enumerate() {
            for c in 0..classes {
                if self.board.has_open(m as u16, c as u8) {
                    let cost = self.lowest_recent_cost(m as u16, c as u8);
                    let slot = c * (zones + 1);
                    best[slot + market.zone as usize] = best[slot + market.zone as usize].min(cost);
                    best[slot + zones] = best[slot + zones].min(cost);
                }
            }
        }
        let keep = 1.0 - self.p.hop.margin.max(0.0);
        let mut due = Vec::new();
        for (n, node) in self.nodes.iter().enumerate() {
            if node.life != Life::Up {
                continue;
            }
            let price = self.paths[node.market as usize].at(self.now);
            for &w in &node.holders {
                let wl = &self.wls[w as usize];
                if wl.state != (WState::Running { node: n as u32 }) {
                    continue;
                }
                let zone = self.sc.workloads[w as usize].volume_zone.map_or(zones, |z| z as usize);
                let current = cost_per_hour(price, &node.total, &wl.profile.needs);
                if best[wl.class as usize * (zones + 1) + zone] <= current * keep {
                    let at = match self.policy {
                        Policy::Mesh => {
                            let heard = self.now + self.p.gossip.delay(hash(&[self.sc.seed, n as u64, self.now]));
                            next_timer(heard, hash(&[self.sc.seed, n as u64]), self.p.hop_check_ms)
                        }
                        _ => self.now,
                    };
                    due.push((at, w, wl.gen));
                }
            }
        }
        for (at, w, gen) in due {
            self.schedule(at, Event::Evaluate { w, gen, forced: false });
        }
    }
}

/// First firing at or after `t` of a timer with this period and a phase drawn from `phase_hash`.
fn next_timer(t: u64, phase_hash: u64, period: u64) -> u64 {
    if period == 0 {
        return t;
    }
    let phase = phase_hash % period;
    let k = (t.saturating_sub(phase)).div_ceil(period);
    (phase + k * period).max(t)
}
