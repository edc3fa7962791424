//! The simulated nodes and workloads, and the counters a run reports.

use std::collections::BTreeSet;

use hotspot_protocol::election::WorkloadProfile;
use hotspot_protocol::reservation::{Ledger, ReservationId};
use hotspot_protocol::{NodeId, Resources};

use crate::scenario::RevocationCause;

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
    /// Why the pending notice was given.
    pub notice_cause: Option<RevocationCause>,
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
    /// Workloads on nodes of the injected mass revocation when they saw the notice, and how
    /// many of them had to restart from a checkpoint.
    pub mass_hit: u64,
    pub mass_restarted: u64,
    pub cost_series: Vec<(u64, f64)>,
}
