//! One hop of the workload and what it cost: the client-visible gap (measured by the client
//! itself), the freeze time and bytes on the wire (from the migration's own summary), total time.

use std::process::Command;
use std::time::{Duration, Instant};

use hotspot_node::lab;
use serde_json::Value;

use super::{ClusterError, LocalCluster, WORKLOAD};

/// What one hop cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    pub from: String,
    pub to: String,
    /// "price" (the node moved it by itself) or "manual" (`hotspot-node migrate`).
    pub trigger: &'static str,
    /// Longest time the client waited for a reply during the hop.
    pub client_gap: Duration,
    /// From the migration summary (None when the daemon does not report one).
    pub freeze_ms: Option<u64>,
    pub wire_bytes: Option<u64>,
    pub image_bytes: Option<u64>,
    pub dedup_saved_bytes: Option<u64>,
    /// Wall time: the migration's own total for manual hops; for price hops, from the price
    /// change until the workload answered on the target (includes the trigger's reaction).
    pub total: Duration,
}

/// Whether `bin` has the `migrate` subcommand.
pub fn migrate_available(bin: &std::path::Path) -> bool {
    Command::new(bin).args(["migrate", "--help"]).output().is_ok_and(|o| o.status.success())
}

/// The last object in `v` (searched depth-first) that looks like a migration summary of the
/// workload: it has `freeze_ms` and `wire_bytes`.
fn find_summary(v: &Value) -> Option<&Value> {
    match v {
        Value::Object(m) => {
            let nested = m.values().rev().find_map(find_summary);
            let own = (m.contains_key("freeze_ms") && m.contains_key("wire_bytes") && m.get("workload").is_none_or(|w| w == WORKLOAD)).then_some(v);
            nested.or(own)
        }
        Value::Array(a) => a.iter().rev().find_map(find_summary),
        _ => None,
    }
}

fn field(summary: Option<&Value>, key: &str) -> Option<u64> {
    summary.and_then(|s| s.get(key)).and_then(Value::as_u64)
}

impl LocalCluster {
    fn hop_from(&self, from: usize, to: usize, trigger: &'static str, summary: Option<&Value>, total: Duration) -> Hop {
        Hop {
            from: self.nodes[from].name.clone(),
            to: self.nodes[to].name.clone(),
            trigger,
            client_gap: self.client.as_ref().map_or(Duration::ZERO, |c| c.take_max_stall()),
            freeze_ms: field(summary, "freeze_ms"),
            wire_bytes: field(summary, "wire_bytes"),
            image_bytes: field(summary, "image_bytes"),
            dedup_saved_bytes: field(summary, "dedup_saved_bytes"),
            total: field(summary, "total_ms").map(Duration::from_millis).unwrap_or(total),
        }
    }

    fn require_migrate(&self) -> Result<(), ClusterError> {
        if migrate_available(&self.bin) {
            Ok(())
        } else {
            Err(ClusterError::MigrateUnavailable(self.bin.clone()))
        }
    }

    /// `hotspot-node migrate redis --to NODE --json` against the node running it.
    pub fn migrate(&mut self, to: usize) -> Result<Hop, ClusterError> {
        self.require_migrate()?;
        let from = self.where_is().ok_or_else(|| ClusterError::Hop(format!("{WORKLOAD} runs nowhere")))?;
        if let Some(c) = &self.client {
            c.take_max_stall();
        }
        let start = Instant::now();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["migrate", WORKLOAD, "--to", &self.nodes[to].name, "--json", "--socket"]).arg(&self.daemons[from].socket);
        cmd.env("RUST_BACKTRACE", "0").env("RUST_LIB_BACKTRACE", "0");
        // Not in our process group: a Ctrl-C stops the demo after this hop, never mid-hop.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let out = cmd
            .output()
            .map_err(|e| ClusterError::Hop(format!("running hotspot-node migrate: {e}")))?;
        let took = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(ClusterError::Hop(format!(
                "hotspot-node migrate {WORKLOAD} --to {} failed ({}): {}{}",
                self.nodes[to].name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            )));
        }
        let events: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let summary = events.iter().rev().find_map(find_summary).cloned();
        if self.where_is() != Some(to) {
            return Err(ClusterError::Hop(format!("migrate reported success but {WORKLOAD} does not run on {}", self.nodes[to].name)));
        }
        Ok(self.hop_from(from, to, "manual", summary.as_ref(), took))
    }

    /// Makes `to` the cheapest node by far and waits for the workload to move there by itself
    /// (the price trigger). Fails with a clear message if it does not within `timeout`.
    pub fn hop_by_price(&mut self, to: usize, usd_per_hour: f64, timeout: Duration) -> Result<Hop, ClusterError> {
        self.require_migrate()?;
        let from = self.where_is().ok_or_else(|| ClusterError::Hop(format!("{WORKLOAD} runs nowhere")))?;
        if let Some(c) = &self.client {
            c.take_max_stall();
        }
        let moves_before = self.price_moves(from).len();
        let start = Instant::now();
        self.set_price(to, usd_per_hour)?;
        match lab::wait_until("the price trigger", timeout, || self.where_is() == Some(to)) {
            Ok(_) => {}
            Err(lab::LabError::Timeout { .. }) => {
                return Err(ClusterError::PriceTriggerIdle(format!(
                    "{} became the cheapest node (${usd_per_hour}/h) but {WORKLOAD} did not move there within {timeout:?}: the price \
                     trigger is disabled, failed (see `hotspot-node status` and the logs), or its margin is larger than this drop. Logs: {}",
                    self.nodes[to].name,
                    self.dir.path().display()
                )))
            }
            Err(e) => return Err(e.into()),
        }
        let took = start.elapsed();
        // The source records the move once `migrate` returns on its side, which can be a moment
        // after the workload already answers on the target: wait for the record too.
        let mut record = None;
        let recorded = lab::wait_until("the source to record the price move", Duration::from_secs(30), || {
            let moves = self.price_moves(from);
            if moves.len() > moves_before {
                record = moves.last().cloned();
            }
            record.is_some()
        });
        let Some(record) = record.filter(|_| recorded.is_ok()) else {
            return Err(ClusterError::PriceTriggerIdle(format!(
                "{WORKLOAD} reached {} but {}'s status records no price-trigger move of it",
                self.nodes[to].name, self.nodes[from].name
            )));
        };
        Ok(self.hop_from(from, to, "price", find_summary(&record), took))
    }

    /// The completed moves of the workload that `node`'s own price trigger made, oldest first
    /// (only those count as a price hop).
    fn price_moves(&self, node: usize) -> Vec<Value> {
        let Ok(out) = self.daemons[node].cli(&["status", "--json"]) else { return Vec::new() };
        let Ok(status) = serde_json::from_slice::<Value>(&out.stdout) else { return Vec::new() };
        let Some(moves) = status.get("moves").and_then(Value::as_array) else { return Vec::new() };
        moves
            .iter()
            .filter(|m| m["trigger"] == "price" && m["workload"] == WORKLOAD && m["summary"].is_object())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_summary_of_the_workload() {
        let v: Value = serde_json::json!({
            "history": [
                {"workload": "redis", "freeze_ms": 1, "wire_bytes": 10},
                {"workload": "other", "freeze_ms": 2, "wire_bytes": 20},
                {"workload": "redis", "freeze_ms": 3, "wire_bytes": 30}
            ]
        });
        assert_eq!(field(find_summary(&v), "freeze_ms"), Some(3));
        let done: Value = serde_json::json!({"event": "done", "workload": "redis", "freeze_ms": 7, "wire_bytes": 70, "total_ms": 9});
        assert_eq!(field(find_summary(&done), "total_ms"), Some(9));
        assert!(find_summary(&serde_json::json!({"event": "phase", "phase": "final_dump"})).is_none());
    }
}
