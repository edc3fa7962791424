//! The discrete-event core: the event queue and what each event does to the fleet. Bookkeeping
//! lives in `accounts.rs`, what nodes decide in `moves.rs`, the state types in `state.rs`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};

use hotspot_protocol::election::WorkloadProfile;
use hotspot_protocol::reservation::Ledger;
use hotspot_protocol::Resources;

use crate::catalog::{cpu_features, ARCH};
use crate::gossip::AdvertBoard;
use crate::metrics::PolicyResult;
use crate::params::{EngineParams, Policy};
use crate::price::PricePath;
use crate::scenario::{RevocationCause, Scenario, CLASSES};
use crate::state::{Counters, Life, NodeRt, WState, WlRt};

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
                    notice_cause: None,
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
            if self.c.events.is_multiple_of(4096) {
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
        node.notice_cause = Some(cause);
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
        let mass = self.nodes[n as usize].notice_cause == Some(RevocationCause::Injected);
        let holders = self.nodes[n as usize].holders.clone();
        for w in holders {
            match self.wls[w as usize].state {
                WState::Running { node } if node == n => {
                    self.c.revocations += 1;
                    self.c.mass_hit += mass as u64;
                    if self.policy.hops() {
                        self.attempt_move(w, true);
                    }
                }
                WState::PreCopy { src, .. } | WState::Frozen { src: Some(src), .. } if src == n => {
                    self.c.revocations += 1;
                    self.c.mass_hit += mass as u64;
                }
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

    fn finish(mut self, wall: std::time::Duration) -> PolicyResult {
        for w in 0..self.wls.len() as u32 {
            self.settle(w);
        }
        let cost = self.cost_so_far();
        self.c.cost_series.push((self.now, cost));
        PolicyResult::collect(self.policy, self.sc, &self.wls, &self.c, cost, wall)
    }

}
