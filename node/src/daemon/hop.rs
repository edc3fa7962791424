//! The price trigger: every `triggers.check_interval_ms`, and at once when a peer's advert
//! changes, each local workload is put to `hotspot_protocol::election::decide` against the peer
//! table. When a peer is cheaper by the margin after the cost of the move, the workload moves
//! there (the next worthwhile candidate is asked when one refuses its reservation).
//!
//! Flapping is prevented twice: the margin (a target must be cheaper by it, and the saving over
//! the expected stay must beat the move cost by it), and a cool-down per workload counted from
//! its arrival here and from this node's last attempt to move it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotspot_protocol::advert::WorkloadSummary;
use hotspot_protocol::election::{cost_per_hour, decide, CurrentHost, HopDecision, WorkloadProfile};
use hotspot_protocol::{NodeAdvert, NodeState};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::evacuate::Triggers;

/// How often the peer table is looked at for changes (cheap: an in-process query).
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What, in the peer table, can change a decision.
fn fingerprint(peers: &[NodeAdvert]) -> Vec<(hotspot_protocol::NodeId, u64, NodeState, u64)> {
    peers.iter().map(|a| (a.node, a.price_per_hour.to_bits(), a.state, a.capacity.free.memory_bytes)).collect()
}

/// When each workload may be considered again.
#[derive(Default)]
struct CoolDown {
    since: HashMap<String, Instant>,
}

impl CoolDown {
    /// Starts the clock for workloads seen for the first time; forgets those gone.
    fn observe(&mut self, present: &[WorkloadSummary], now: Instant) {
        self.since.retain(|name, _| present.iter().any(|w| &w.name == name));
        for w in present {
            self.since.entry(w.name.clone()).or_insert(now);
        }
    }

    fn ready(&self, name: &str, now: Instant, cooldown: Duration) -> bool {
        self.since.get(name).is_none_or(|t| now.saturating_duration_since(*t) >= cooldown)
    }

    fn restart(&mut self, name: &str, now: Instant) {
        self.since.insert(name.to_string(), now);
    }
}

impl Triggers {
    /// Runs the price trigger until `cancel` fires (returns at once when disabled).
    pub async fn price_loop(self: Arc<Self>, cancel: CancellationToken) {
        if !self.config.price {
            info!("price trigger disabled (triggers.price = false)");
            return;
        }
        let interval = Duration::from_millis(self.config.check_interval_ms);
        let cooldown = Duration::from_millis(self.config.cooldown_ms);
        let mut tick = tokio::time::interval(WATCH_EVERY);
        let mut last_check: Option<Instant> = None;
        let mut last_seen = None;
        let mut cool = CoolDown::default();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.service.state() != NodeState::Healthy {
                continue;
            }
            let Ok(peers) = self.service.mesh().peers().await else { return };
            let adverts: Vec<NodeAdvert> = peers.into_iter().map(|p| p.advert).collect();
            let seen = fingerprint(&adverts);
            let changed = last_seen.as_ref() != Some(&seen);
            if !changed && last_check.is_some_and(|t: Instant| t.elapsed() < interval) {
                continue;
            }
            last_check = Some(Instant::now());
            last_seen = Some(seen);
            let service = self.service.clone();
            let Ok((workloads, (price, total))) = tokio::task::spawn_blocking(move || (service.workloads_here(), service.price_and_total())).await else {
                return;
            };
            let now = Instant::now();
            cool.observe(&workloads, now);
            for w in workloads {
                if cancel.is_cancelled() || self.service.state() != NodeState::Healthy {
                    break;
                }
                if !cool.ready(&w.name, now, cooldown) {
                    debug!(workload = %w.name, "price trigger: cooling down");
                    continue;
                }
                let Some(to) = self.worthwhile_targets(&w, price, &total, &adverts) else { continue };
                // Not while an evacuation (or another price move) is under way.
                let Ok(_one_at_a_time) = self.moving.try_lock() else { break };
                cool.restart(&w.name, Instant::now());
                let span = info_span!("price_trigger", workload = %w.name, to = %to.1);
                match self.move_one(&w.name, Some(to.0), "price", None).instrument(span.clone()).await {
                    Ok(s) => span.in_scope(|| info!(target_node = %s.target, total_ms = s.total_ms, freeze_ms = s.freeze_ms, "moved to a cheaper node")),
                    Err(e) => span.in_scope(|| warn!(error = %e, "price move failed; cooling down before the next try")),
                }
                cool.restart(&w.name, Instant::now());
            }
        }
    }

    /// The peers worth hopping to for `w` (a preference list of node ids for `migrate`, and the
    /// best one's name), or `None` to stay.
    fn worthwhile_targets(&self, w: &WorkloadSummary, price: f64, total: &hotspot_protocol::Resources, peers: &[NodeAdvert]) -> Option<(String, String)> {
        let profile = WorkloadProfile {
            needs: w.needs,
            arch: self.service.arch().to_string(),
            cpu_features: self.service.cpu_features().clone(),
            // The volume and the address can only move within the zone.
            volume_zone: Some(self.service.zone().to_string()),
            image_bytes: w.needs.memory_bytes,
        };
        let current = CurrentHost { node: self.service.node(), cost_per_hour: cost_per_hour(price, total, &w.needs), must_leave: false };
        match decide(&profile, &current, peers, &self.config.policy()) {
            HopDecision::Hop { candidates, .. } if !candidates.is_empty() => {
                let best = &candidates[0];
                info!(
                    workload = %w.name,
                    target_node = %best.name,
                    current_cost_per_hour = current.cost_per_hour,
                    target_cost_per_hour = best.cost_per_hour,
                    move_cost = best.move_cost,
                    "a peer is cheaper by the margin after the move cost"
                );
                let list: Vec<String> = candidates.iter().map(|c| c.node.to_string()).collect();
                Some((list.join(","), best.name.clone()))
            }
            HopDecision::Hop { .. } => None,
            HopDecision::Stay(reason) => {
                debug!(workload = %w.name, ?reason, "price trigger: stay");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cool_down_counts_from_arrival_and_attempts() {
        let t0 = Instant::now();
        let cd = Duration::from_secs(10);
        let mut c = CoolDown::default();
        let w = |n: &str| WorkloadSummary { name: n.into(), needs: Default::default() };
        c.observe(&[w("a")], t0);
        assert!(!c.ready("a", t0 + Duration::from_secs(9), cd), "just arrived");
        assert!(c.ready("a", t0 + cd, cd));
        c.restart("a", t0 + cd);
        assert!(!c.ready("a", t0 + cd + Duration::from_secs(1), cd), "just tried");
        c.observe(&[], t0 + cd);
        c.observe(&[w("a")], t0 + cd * 5);
        assert!(!c.ready("a", t0 + cd * 5, cd), "a return visit is an arrival too");
    }
}
