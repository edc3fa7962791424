//! The discrete-event core: state of nodes and workloads, the event queue, billing and the
//! conservation checks. What nodes decide lives in `moves.rs`.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::atomic::{AtomicU64, Ordering};

use hotspot_protocol::advert::Capacity;
use hotspot_protocol::election::WorkloadProfile;
use hotspot_protocol::reservation::{Ledger, ReservationId};
use hotspot_protocol::{NodeAdvert, NodeId, NodeState, Resources};

use crate::catalog::{cpu_features, ARCH};
use crate::gossip::{AdvertBoard, AdvertUpdate, NCLASSES};
use crate::metrics::PolicyResult;
use crate::params::{EngineParams, Policy};
use crate::price::PricePath;
use crate::scenario::{RevocationCause, Scenario, CLASSES};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invariant broken at t={at_ms} ms: {detail}")]
    Invariant { at_ms: u64, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Event {
    PriceChange { market: u16 },
    HopScan,
    Arrive { w: u32 },
    Notice { node: u32, cause: RevocationCause },
    NoticeSeen { node: u32, life: u32 },
    Terminate { node: u32, life: u32 },
    Relaunch { node: u32, life: u32 },
    Complete { w: u32, gen: u32 },
    Evaluate { w: u32, gen: u32, forced: bool },
    Place { w: u32, gen: u32 },
    PreCopyDone { w: u32, gen: u32 },
    MoveDone { w: u32, gen: u32 },
    Prune { node: u32, class: u8 },
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Life {
    Up,
    Leaving,
    Down,
}

pub(crate) struct NodeRt {
    pub id: NodeId,
    pub market: u16,
    pub bid: f64,
    pub total: Resources,
    pub life: Life,
    /// Bumped at every termination so stale Terminate/Relaunch events are ignored.
    pub life_gen: u32,
    pub terminate_at: u64,
    /// A revocation notice is out (the node may not have seen it yet).
    pub noticed: bool,
    /// Revoked for price: comes back when the price falls to the bid.
    pub waiting_for_price: bool,
    pub ledger: Ledger,
    /// Independent tally of what the node hosts or has promised, for the overbooking check.
    pub used: Resources,
    /// Workloads holding capacity here (running, or arriving by a move).
    pub holders: Vec<u32>,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WState {
    NotArrived,
    Running { node: u32 },
    /// Still running on `src` while the bulk of the image goes to `dst`.
    PreCopy { src: u32, dst: u32 },
    /// Down: final dump, volume and interface move; or (src None) restoring from a checkpoint.
    Frozen { src: Option<u32>, dst: u32 },
    /// Down, waiting for a host.
    Down,
    Done,
}

/// Capacity a workload holds on a node, and since when it pays for it.
pub(crate) struct Holding {
    pub node: u32,
    pub res: ReservationId,
    pub since: u64,
}

pub(crate) struct WlRt {
    pub class: u8,
    pub profile: WorkloadProfile,
    pub work_ms: u64,
    pub arrival_ms: u64,
    pub state: WState,
    pub gen: u32,
    pub progress_ms: u64,
    pub since: u64,
    pub run_ms: u64,
    pub down_ms: u64,
    pub holdings: Vec<Holding>,
    pub attempts: u32,
    /// Targets that denied this workload's reservation, with the advert sequence number the
    /// source held then: it skips them until a newer advert shows they changed.
    pub denied_by: Vec<(u32, u64)>,
}

/// Counters a run reports.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub cost_closed: f64,
    pub revocations: u64,
    pub migrations: u64,
    pub failed_moves: u64,
    pub restarts: u64,
    pub lost_work_ms: u64,
    pub reservation_msgs: u64,
    pub denied: u64,
    /// Denials by kind of decision: placement, forced move, voluntary hop.
    pub denied_kind: [u64; 3],
    pub adverts: u64,
    pub decisions: u64,
    pub expired_commits: u64,
    /// Decisions cross-checked against the election over the whole view, and how many of them
    /// tried different peers first (only with `check_invariants`).
    pub view_checks: u64,
    pub view_mismatches: u64,
    pub events: u64,
    pub overbooked: BTreeSet<u32>,
    pub cost_series: Vec<(u64, f64)>,
}

pub struct Sim<'s> {
    pub(crate) sc: &'s Scenario,
    pub(crate) policy: Policy,
    pub(crate) p: &'s EngineParams,
    pub(crate) now: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    pub(crate) paths: Vec<PricePath>,
    pub(crate) nodes: Vec<NodeRt>,
    pub(crate) wls: Vec<WlRt>,
    pub(crate) board: AdvertBoard,
    pub(crate) market_nodes: Vec<Vec<u32>>,
    /// Markets per zone, and all markets: the scopes a candidate search covers.
    pub(crate) zone_markets: Vec<Vec<u16>>,
    pub(crate) all_markets: Vec<u16>,
    pub(crate) c: Counters,
    hop_scan_pending: bool,
}

impl<'s> Sim<'s> {
    pub fn new(sc: &'s Scenario, policy: Policy, p: &'s EngineParams) -> Self {
        let paths: Vec<PricePath> = sc
            .markets
            .iter()
            .map(|m| match policy {
                Policy::OnDemand => PricePath::constant(m.key.instance.on_demand_per_hour),
                _ => m.spot.clone(),
            })
            .collect();
        let nodes = sc
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let total = sc.markets[n.market as usize].key.instance.total();
                NodeRt {
                    id: sc.node_id(i as u32),
                    market: n.market,
                    bid: n.bid,
                    total,
                    life: Life::Up,
                    life_gen: 0,
                    terminate_at: 0,
                    noticed: false,
                    waiting_for_price: false,
                    ledger: Ledger::new(total),
                    used: Resources::default(),
                    holders: Vec::new(),
                    seq: 0,
                }
            })
            .collect();
        let features = cpu_features();
        let wls = sc
            .workloads
            .iter()
            .map(|w| {
                let class = &CLASSES[w.class as usize];
                WlRt {
                    class: w.class,
                    profile: WorkloadProfile {
                        needs: class.needs,
                        arch: ARCH.into(),
                        cpu_features: features.clone(),
                        volume_zone: w.volume_zone.map(|z| sc.zones[z as usize].clone()),
                        image_bytes: class.image_bytes,
                    },
                    work_ms: w.work_ms,
                    arrival_ms: w.arrival_ms,
                    state: WState::NotArrived,
                    gen: 0,
                    progress_ms: 0,
                    since: w.arrival_ms,
                    run_ms: 0,
                    down_ms: 0,
                    holdings: Vec::new(),
                    attempts: 0,
                    denied_by: Vec::new(),
                }
            })
            .collect();
        let mut gossip = p.gossip.clone();
        if policy != Policy::Mesh {
            gossip.history = 1; // only the mesh reads old versions
        }
        let mut market_nodes = vec![Vec::new(); sc.markets.len()];
        for (i, n) in sc.nodes.iter().enumerate() {
            market_nodes[n.market as usize].push(i as u32);
        }
        let zone_markets = (0..sc.zones.len())
            .map(|z| (0..sc.markets.len() as u16).filter(|m| sc.markets[*m as usize].zone as usize == z).collect())
            .collect();
        Sim {
            sc,
            policy,
            p,
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            paths,
            nodes,
            wls,
            board: AdvertBoard::new(gossip, sc.seed, sc.nodes.len(), sc.markets.len()),
            market_nodes,
            zone_markets,
            all_markets: (0..sc.markets.len() as u16).collect(),
            c: Counters::default(),
            hop_scan_pending: false,
        }
    }

    pub(crate) fn schedule(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at.max(self.now), self.seq, ev)));
    }

    /// Runs to the horizon. `progress` receives the simulated time (ms) now and then.
    pub fn run(mut self, progress: Option<&AtomicU64>) -> Result<PolicyResult, SimError> {
        let started = std::time::Instant::now();
        for n in 0..self.nodes.len() as u32 {
            self.publish(n);
        }
        if self.policy != Policy::OnDemand {
            for (m, path) in self.paths.iter().enumerate() {
                for &(t, _) in &path.points()[1..] {
                    self.seq += 1;
                    self.queue.push(Reverse((t, self.seq, Event::PriceChange { market: m as u16 })));
                }
            }
            for r in &self.sc.revocations {
                self.seq += 1;
                self.queue.push(Reverse((r.at_ms, self.seq, Event::Notice { node: r.node, cause: r.cause })));
            }
        }
        for w in 0..self.wls.len() as u32 {
            let at = self.wls[w as usize].arrival_ms;
            self.schedule(at, Event::Arrive { w });
        }
        self.schedule(0, Event::Sample);
        let horizon = self.sc.horizon_ms;
        while let Some(Reverse((at, _, ev))) = self.queue.pop() {
            if at > horizon {
                break;
            }
            self.now = at;
            self.c.events += 1;
            self.handle(ev);
            if self.p.check_invariants {
                self.check_invariants()?;
            }
            if self.c.events % 4096 == 0 {
                if let Some(p) = progress {
                    p.store(self.now, Ordering::Relaxed);
                }
            }
        }
        self.now = horizon;
        if let Some(p) = progress {
            p.store(horizon, Ordering::Relaxed);
        }
        Ok(self.finish(started.elapsed()))
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::PriceChange { market } => self.on_price_change(market),
            Event::HopScan => {
                self.hop_scan_pending = false;
                self.hop_scan();
            }
            Event::Arrive { w } => {
                self.set_state(w, WState::Down);
                self.place(w);
            }
            Event::Notice { node, cause } => self.on_notice(node, cause),
            Event::NoticeSeen { node, life } if self.nodes[node as usize].life_gen == life => self.on_notice_seen(node),
            Event::Terminate { node, life } if self.nodes[node as usize].life_gen == life => self.on_terminate(node),
            Event::Relaunch { node, life } if self.nodes[node as usize].life_gen == life => self.on_relaunch(node),
            Event::Complete { w, gen } if self.wls[w as usize].gen == gen => self.on_complete(w),
            Event::Evaluate { w, gen, forced } if self.wls[w as usize].gen == gen => self.attempt_move(w, forced),
            Event::Place { w, gen } if self.wls[w as usize].gen == gen => self.place(w),
            Event::PreCopyDone { w, gen } if self.wls[w as usize].gen == gen => self.on_precopy_done(w),
            Event::MoveDone { w, gen } if self.wls[w as usize].gen == gen => self.on_move_done(w),
            Event::Prune { node, class } => {
                let market = self.nodes[node as usize].market;
                self.board.prune(node, market, class, self.now);
            }
            Event::Sample => {
                let cost = self.cost_so_far();
                self.c.cost_series.push((self.now, cost));
                self.schedule(self.now + self.p.sample_ms, Event::Sample);
            }
            _ => {} // stale: the node or workload moved on since this was scheduled
        }
    }

    fn on_price_change(&mut self, market: u16) {
        let price = self.paths[market as usize].at(self.now);
        for i in 0..self.market_nodes[market as usize].len() {
            let n = self.market_nodes[market as usize][i];
            let node = &self.nodes[n as usize];
            match node.life {
                Life::Up | Life::Leaving => {
                    self.publish(n);
                    if price > self.nodes[n as usize].bid {
                        self.on_notice(n, RevocationCause::Price);
                    }
                }
                Life::Down if node.waiting_for_price && price <= node.bid => {
                    let life = node.life_gen;
                    self.nodes[n as usize].waiting_for_price = false;
                    self.schedule(self.now + self.p.boot_ms, Event::Relaunch { node: n, life });
                }
                Life::Down => {}
            }
        }
        if self.policy.hops() && !self.hop_scan_pending {
            // Markets change together on the tick: one scan after all of them.
            self.hop_scan_pending = true;
            self.schedule(self.now, Event::HopScan);
        }
    }

    /// The cloud decides to take the node back: it ends `notice_ms` from now. The node learns it
    /// at its next poll of the instance metadata.
    fn on_notice(&mut self, n: u32, cause: RevocationCause) {
        let node = &mut self.nodes[n as usize];
        if node.life != Life::Up || node.noticed {
            return;
        }
        node.noticed = true;
        node.terminate_at = self.now + self.p.notice_ms;
        node.waiting_for_price = cause == RevocationCause::Price;
        let life = node.life_gen;
        self.schedule(self.now + self.p.notice_ms, Event::Terminate { node: n, life });
        let poll = self.p.notice_poll_ms;
        let seen_at = self.now + if poll == 0 { 0 } else { crate::rng::hash(&[self.sc.seed, n as u64, self.now]) % poll };
        self.schedule(seen_at, Event::NoticeSeen { node: n, life });
    }

    /// The node saw its notice: it stops accepting workloads, says so, and (hopping policies)
    /// moves its workloads away.
    fn on_notice_seen(&mut self, n: u32) {
        self.nodes[n as usize].life = Life::Leaving;
        self.publish(n);
        let holders = self.nodes[n as usize].holders.clone();
        for w in holders {
            match self.wls[w as usize].state {
                WState::Running { node } if node == n => {
                    self.c.revocations += 1;
                    if self.policy.hops() {
                        self.attempt_move(w, true);
                    }
                }
                WState::PreCopy { src, .. } | WState::Frozen { src: Some(src), .. } if src == n => self.c.revocations += 1,
                _ => {}
            }
        }
    }

    fn on_relaunch(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        if node.life != Life::Down {
            return;
        }
        node.life = Life::Up;
        node.ledger = Ledger::new(node.total);
        self.publish(n);
    }

    fn on_complete(&mut self, w: u32) {
        self.set_state(w, WState::Done);
        self.release_all(w);
    }

    /// Accrues progress or downtime up to now.
    pub(crate) fn settle(&mut self, w: u32) {
        let wl = &mut self.wls[w as usize];
        let elapsed = self.now.saturating_sub(wl.since);
        match wl.state {
            WState::Running { .. } | WState::PreCopy { .. } => {
                wl.progress_ms += elapsed;
                wl.run_ms += elapsed;
            }
            WState::Frozen { .. } | WState::Down => wl.down_ms += elapsed,
            WState::NotArrived | WState::Done => {}
        }
        wl.since = self.now;
    }

    /// Moves a workload to a new state; pending events for the old state become stale.
    pub(crate) fn set_state(&mut self, w: u32, state: WState) {
        self.settle(w);
        let wl = &mut self.wls[w as usize];
        wl.state = state;
        wl.gen += 1;
        if matches!(state, WState::Running { .. } | WState::PreCopy { .. }) {
            let at = self.now + wl.work_ms.saturating_sub(wl.progress_ms);
            let gen = wl.gen;
            self.schedule(at, Event::Complete { w, gen });
        }
    }

    /// A restart resumes from the last periodic checkpoint.
    pub(crate) fn lose_work_since_checkpoint(&mut self, w: u32) {
        self.settle(w);
        let wl = &mut self.wls[w as usize];
        let lost = wl.progress_ms % self.p.checkpoint_ms.max(1);
        wl.progress_ms -= lost;
        self.c.lost_work_ms += lost;
    }

    /// Takes capacity on `node` under a granted reservation; checks the node is not overbooked.
    pub(crate) fn hold(&mut self, w: u32, n: u32, res: ReservationId) {
        let needs = self.wls[w as usize].profile.needs;
        let node = &mut self.nodes[n as usize];
        node.used = node.used.saturating_add(&needs);
        if !node.used.fits_in(&node.total) {
            self.c.overbooked.insert(n);
        }
        node.holders.push(w);
        self.wls[w as usize].holdings.push(Holding { node: n, res, since: self.now });
        self.publish(n);
    }

    /// Gives back the capacity `w` holds on `n` and bills it.
    pub(crate) fn release(&mut self, w: u32, n: u32) {
        let wl = &mut self.wls[w as usize];
        let Some(i) = wl.holdings.iter().position(|h| h.node == n) else { return };
        let h = wl.holdings.swap_remove(i);
        let needs = wl.profile.needs;
        let node = &mut self.nodes[n as usize];
        self.c.cost_closed += needs.share_of(&node.total).min(1.0) * self.paths[node.market as usize].cost_between(h.since, self.now);
        node.ledger.release(&h.res);
        node.used = node.used.saturating_sub(&needs);
        if let Some(j) = node.holders.iter().position(|x| *x == w) {
            node.holders.swap_remove(j);
        }
        self.publish(n);
    }

    pub(crate) fn release_all(&mut self, w: u32) {
        while let Some(n) = self.wls[w as usize].holdings.first().map(|h| h.node) {
            self.release(w, n);
        }
    }

    /// Gossips the node's current advert (after any change of price, capacity or state).
    pub(crate) fn publish(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        if node.life == Life::Down {
            return;
        }
        node.seq += 1;
        let update = AdvertUpdate {
            seq: node.seq,
            state: if node.life == Life::Up { NodeState::Healthy } else { NodeState::Leaving },
            price_per_hour: self.paths[node.market as usize].at(self.now),
            capacity: Capacity { total: node.total, free: node.ledger.available(self.now) },
        };
        let (id, market) = (node.id, node.market);
        let zone = &self.sc.markets[market as usize].key.zone;
        let first = || NodeAdvert {
            node: id,
            name: format!("n{n}"),
            seq: 0,
            issued_at_ms: 0,
            state: NodeState::Healthy,
            price_per_hour: 0.0,
            capacity: Capacity::default(),
            arch: ARCH.into(),
            cpu_features: cpu_features(),
            zone: zone.clone(),
            workloads: Vec::new(),
            transfer_addr: None,
        };
        self.c.adverts += 1;
        let unfit = self.board.publish(n, market, update, self.now, first);
        let at = self.now + self.board.params().horizon_ms();
        for class in 0..NCLASSES as u8 {
            if unfit & (1 << class) != 0 {
                self.schedule(at, Event::Prune { node: n, class });
            }
        }
    }

    /// USD spent so far, including capacity held now.
    fn cost_so_far(&self) -> f64 {
        let open: f64 = self
            .wls
            .iter()
            .flat_map(|wl| wl.holdings.iter().map(move |h| (wl, h)))
            .map(|(wl, h)| {
                let node = &self.nodes[h.node as usize];
                wl.profile.needs.share_of(&node.total).min(1.0) * self.paths[node.market as usize].cost_between(h.since, self.now)
            })
            .sum();
        self.c.cost_closed + open
    }

    fn finish(mut self, wall: std::time::Duration) -> PolicyResult {
        for w in 0..self.wls.len() as u32 {
            self.settle(w);
        }
        let cost = self.cost_so_far();
        self.c.cost_series.push((self.now, cost));
        PolicyResult::collect(self.policy, self.sc, &self.wls, &self.c, cost, wall)
    }

    /// Conservation: every arrived workload runs on exactly one node or is counted as down; time
    /// is all accounted; every node's tally matches what is held on it and fits.
    fn check_invariants(&self) -> Result<(), SimError> {
        let fail = |detail: String| Err(SimError::Invariant { at_ms: self.now, detail });
        let mut running_on = vec![0u32; self.wls.len()];
        for (n, node) in self.nodes.iter().enumerate() {
            let mut used = Resources::default();
            for &w in &node.holders {
                let wl = &self.wls[w as usize];
                used = used.saturating_add(&wl.profile.needs);
                let runs_here = match wl.state {
                    WState::Running { node } | WState::PreCopy { src: node, .. } => node == n as u32,
                    _ => false,
                };
                running_on[w as usize] += runs_here as u32;
                if !wl.holdings.iter().any(|h| h.node == n as u32) {
                    return fail(format!("node {n} lists workload {w} that holds nothing there"));
                }
            }
            if used != node.used || !used.fits_in(&node.total) {
                return fail(format!("node {n} tally {:?} vs held {used:?} of {:?}", node.used, node.total));
            }
            if node.life == Life::Down && !node.holders.is_empty() {
                return fail(format!("terminated node {n} still hosts {:?}", node.holders));
            }
        }
        for (w, wl) in self.wls.iter().enumerate() {
            let expected = matches!(wl.state, WState::Running { .. } | WState::PreCopy { .. }) as u32;
            if running_on[w] != expected {
                return fail(format!("workload {w} in {:?} runs on {} nodes", wl.state, running_on[w]));
            }
            if !matches!(wl.state, WState::NotArrived | WState::Done) {
                let accounted = wl.run_ms + wl.down_ms + (self.now - wl.since);
                if accounted != self.now - wl.arrival_ms {
                    return fail(format!("workload {w}: run+down {accounted} ms != {} ms since arrival", self.now - wl.arrival_ms));
                }
            }
        }
        Ok(())
    }
}
