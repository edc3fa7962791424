//! What a run reports: one row per policy, rendered as a text table and JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::state::{Counters, WlRt};
use crate::params::Policy;
use crate::price::HOUR_MS;
use crate::scenario::{Scenario, DAY_MS};

#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    /// USD paid: each workload pays its share of every host it holds capacity on.
    pub cost_usd: f64,
    /// Hours of useful work done (work lost to a restart is not counted twice).
    pub useful_hours: f64,
    /// Workload-days of presence (from arrival to completion or the end of the run).
    pub workload_days: f64,
    pub revocations: u64,
    pub migrations: u64,
    /// Moves cut short by the end of the notice (restored from the checkpoint instead).
    pub failed_moves: u64,
    pub restarts: u64,
    pub lost_work_hours: f64,
    pub downtime_hours: f64,
    pub overbooked_targets: usize,
    /// Workloads on the nodes of the injected mass revocation, and how many of them restarted
    /// from a checkpoint (the rest moved in time).
    pub mass_revocation_workloads: u64,
    pub mass_revocation_restarts: u64,
    /// Reservations committed after their ledger entry expired (a bug if non-zero).
    pub expired_commits: u64,
    /// Decisions checked against a full-view election, and how many tried other peers first.
    pub view_checks: u64,
    pub view_mismatches: u64,
    pub reservation_msgs: u64,
    pub denied_reservations: u64,
    /// Denials of placements, forced moves and voluntary hops.
    pub denied_placement: u64,
    pub denied_forced: u64,
    pub denied_voluntary: u64,
    pub adverts: u64,
    pub decisions: u64,
    pub node_hours: f64,
    pub events: u64,
    pub wall_s: f64,
    /// Simulated seconds per wall-clock second.
    pub speed: f64,
    /// (hours since start, cumulative USD).
    pub cost_series: Vec<(f64, f64)>,
}

impl PolicyResult {
    pub(crate) fn collect(policy: Policy, sc: &Scenario, wls: &[WlRt], c: &Counters, cost: f64, wall: Duration) -> Self {
        let hours = |ms: u64| ms as f64 / HOUR_MS as f64;
        let present_ms: u64 = wls.iter().map(|w| w.run_ms + w.down_ms).sum();
        let wall_s = wall.as_secs_f64();
        PolicyResult {
            policy: policy.name().into(),
            cost_usd: cost,
            useful_hours: hours(wls.iter().map(|w| w.progress_ms).sum()),
            workload_days: present_ms as f64 / DAY_MS as f64,
            revocations: c.revocations,
            migrations: c.migrations,
            failed_moves: c.failed_moves,
            restarts: c.restarts,
            lost_work_hours: hours(c.lost_work_ms),
            downtime_hours: hours(wls.iter().map(|w| w.down_ms).sum()),
            overbooked_targets: c.overbooked.len(),
            mass_revocation_workloads: c.mass_hit,
            mass_revocation_restarts: c.mass_restarted,
            expired_commits: c.expired_commits,
            view_checks: c.view_checks,
            view_mismatches: c.view_mismatches,
            reservation_msgs: c.reservation_msgs,
            denied_reservations: c.denied,
            denied_placement: c.denied_kind[0],
            denied_forced: c.denied_kind[1],
            denied_voluntary: c.denied_kind[2],
            adverts: c.adverts,
            decisions: c.decisions,
            node_hours: sc.nodes.len() as f64 * hours(sc.horizon_ms),
            events: c.events,
            wall_s,
            speed: sc.horizon_ms as f64 / 1000.0 / wall_s.max(1e-9),
            cost_series: c.cost_series.iter().map(|(t, usd)| (hours(*t), *usd)).collect(),
        }
    }

    pub fn cost_per_useful_hour(&self) -> f64 {
        self.cost_usd / self.useful_hours.max(1e-12)
    }

    pub fn per_workload_day(&self, n: u64) -> f64 {
        n as f64 / self.workload_days.max(1e-12)
    }

    pub fn msgs_per_node_hour(&self) -> f64 {
        self.reservation_msgs as f64 / self.node_hours.max(1e-12)
    }
}

/// All policies of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub nodes: usize,
    pub days: f64,
    pub seed: u64,
    pub workloads: usize,
    pub markets: usize,
    pub injected_revocations: usize,
    pub results: Vec<PolicyResult>,
}

impl RunReport {
    pub fn get(&self, policy: Policy) -> Option<&PolicyResult> {
        self.results.iter().find(|r| r.policy == policy.name())
    }

    /// Cost per useful hour relative to the on-demand policy's (None without an on-demand row).
    pub fn cost_vs_ondemand(&self, policy: Policy) -> Option<f64> {
        let base = self.get(Policy::OnDemand)?.cost_per_useful_hour();
        Some(self.get(policy)?.cost_per_useful_hour() / base)
    }

    pub fn overbooked(&self) -> usize {
        self.results.iter().map(|r| r.overbooked_targets).sum()
    }

    /// Simulated seconds per wall second over all policies together.
    pub fn speed(&self) -> f64 {
        let wall: f64 = self.results.iter().map(|r| r.wall_s).sum();
        self.results.len() as f64 * self.days * 86_400.0 / wall.max(1e-9)
    }

    /// The table, as Markdown. Deterministic: the same seed gives the same bytes.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "nodes={} days={} seed={} workloads={} markets={} injected_revocations={}\n",
            self.nodes, self.days, self.seed, self.workloads, self.markets, self.injected_revocations
        );
        let _ = writeln!(
            out,
            "| policy | cost vs on-demand | cost USD | revocations /workload-day | migrations /workload-day | failed moves | downtime h | lost work h | overbooked targets | decision msgs /node/h | denied reservations |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.results {
            let rel = Policy::ALL
                .iter()
                .find(|p| p.name() == r.policy)
                .and_then(|p| self.cost_vs_ondemand(*p))
                .map_or("n/a".to_string(), |v| format!("{v:.3}"));
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {:.4} | {:.4} | {} | {:.2} | {:.2} | {} | {:.4} | {} |",
                r.policy,
                rel,
                r.cost_usd,
                r.per_workload_day(r.revocations),
                r.per_workload_day(r.migrations),
                r.failed_moves,
                r.downtime_hours,
                r.lost_work_hours,
                r.overbooked_targets,
                r.msgs_per_node_hour(),
                r.denied_reservations,
            );
        }
        out
    }

    /// Wall time and simulated-seconds per wall-second of each policy (not part of the table:
    /// it changes from run to run).
    pub fn timing(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            let _ = writeln!(out, "{:<10} wall {:>7.1} s  {:>9.0} simulated-s/wall-s  {} events", r.policy, r.wall_s, r.speed, r.events);
        }
        let _ = writeln!(out, "all        {:>9.0} simulated-s/wall-s", self.speed());
        out
    }
}
