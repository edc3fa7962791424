//! The policies a run compares and the knobs of the simulated nodes.

use std::fmt;

use hotspot_protocol::election::HopPolicy;

use crate::gossip::GossipParams;
use crate::price::HOUR_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// Every workload on on-demand instances: never revoked, the cost baseline.
    OnDemand,
    /// Spot, placed at the cheapest host on arrival and left there; on revocation it restarts
    /// elsewhere from its last checkpoint.
    SpotStay,
    /// HotSpot's controller: one greedy decision-maker with full, instant knowledge.
    Central,
    /// hotspot-mesh: each node decides with what gossip told it, reserving on targets.
    Mesh,
}

impl Policy {
    pub const ALL: [Policy; 4] = [Policy::OnDemand, Policy::SpotStay, Policy::Central, Policy::Mesh];

    pub fn name(self) -> &'static str {
        match self {
            Policy::OnDemand => "on-demand",
            Policy::SpotStay => "spot-stay",
            Policy::Central => "central",
            Policy::Mesh => "mesh",
        }
    }

    /// Whether this policy moves workloads ahead of revocations and to cheaper hosts.
    pub fn hops(self) -> bool {
        matches!(self, Policy::Central | Policy::Mesh)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How simulated nodes and migrations behave. Defaults documented per field.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineParams {
    /// The election knobs the nodes run with (the `protocol` defaults: 10 % margin, 1 h stay,
    /// 100 MB/s, 30 s fixed move).
    pub hop: HopPolicy,
    pub gossip: GossipParams,
    /// Spot interruption notice. Default 120 s (EC2).
    pub notice_ms: u64,
    /// A node learns of its notice by polling the instance metadata (spot/instance-action) at
    /// this period: it sees it up to this long after it is issued. Default 5 s (AWS's advice).
    pub notice_poll_ms: u64,
    /// Volume + interface move time, uniform in this range per move. Default 18-48 s (HotSpot's
    /// EBS+ENI measurements on EC2).
    pub fixed_move_ms: (u64, u64),
    /// Share of the image dirtied during pre-copy, shipped while frozen. Default 0.1.
    pub dirty_fraction: f64,
    /// Periodic checkpoint interval: a restart loses the work since the last one. Default 1 h.
    pub checkpoint_ms: u64,
    /// Time to bring a workload back from a checkpoint on a new host. Default 90 s.
    pub restart_ms: u64,
    /// Time a revoked node needs to come back (new spot instance booting). Default 3 min.
    pub boot_ms: u64,
    /// After a non-price interruption, when capacity returns. Default 30 min.
    pub relaunch_after_interruption_ms: u64,
    /// Mesh nodes look for cheaper hosts on a timer of this period (random phase per node), with
    /// what gossip told them by then. Default 30 s. (The central controller acts at once.)
    pub hop_check_ms: u64,
    /// Reservations tried per voluntary hop, in the election's order. Default 8: a denied hop
    /// waits for the next check.
    pub max_tries: usize,
    /// Reservations tried per forced move or placement before backing off: the node walks down
    /// the election's list (a few ms per round trip) while its host is going away. Default 64.
    pub max_tries_forced: usize,
    /// Retry of a forced move whose reservations were all denied. Default 3 s.
    pub forced_retry_ms: u64,
    /// Retry of a placement that found no room. Default 30 s.
    pub place_retry_ms: u64,
    /// Cost sampling for the over-time plot. Default 1 h.
    pub sample_ms: u64,
    /// Check conservation invariants after every event (slow; tests). Default false.
    pub check_invariants: bool,
    /// Ablation for tests: place without asking the target's ledger (shows the overbooking check
    /// is live). Default true.
    pub reserve: bool,
}

impl Default for EngineParams {
    fn default() -> Self {
        EngineParams {
            hop: HopPolicy::default(),
            gossip: GossipParams::default(),
            notice_ms: 120_000,
            notice_poll_ms: 5_000,
            fixed_move_ms: (18_000, 48_000),
            dirty_fraction: 0.1,
            checkpoint_ms: HOUR_MS,
            restart_ms: 90_000,
            boot_ms: 180_000,
            relaunch_after_interruption_ms: 30 * 60_000,
            hop_check_ms: 30_000,
            max_tries: 8,
            max_tries_forced: 64,
            forced_retry_ms: 3_000,
            place_retry_ms: 30_000,
            sample_ms: HOUR_MS,
            check_invariants: false,
            reserve: true,
        }
    }
}
