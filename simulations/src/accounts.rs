//! Bookkeeping every transition goes through: progress and downtime, capacity held on nodes and
//! its bill, adverts, and the conservation checks.

use hotspot_protocol::advert::Capacity;
use hotspot_protocol::reservation::ReservationId;
use hotspot_protocol::{NodeAdvert, NodeState, Resources};

use crate::catalog::{cpu_features, ARCH};
use crate::engine::{Event, Sim, SimError};
use crate::gossip::{AdvertUpdate, NCLASSES};
use crate::state::{Holding, Life, WState};

impl Sim<'_> {
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
            mesh_addrs: Vec::new(),
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
    pub(crate) fn cost_so_far(&self) -> f64 {
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


    /// Conservation: every arrived workload runs on exactly one node or is counted as down; time
    /// is all accounted; every node's tally matches what is held on it and fits.
    pub(crate) fn check_invariants(&self) -> Result<(), SimError> {
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
