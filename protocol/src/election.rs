//! Choosing where a workload should run, and whether moving it pays off.
//!
//! The policy is HotSpot's: a workload pays its share of its host's price (the largest fraction of
//! the host's CPU, memory or disk it takes). Moving costs the time both hosts are paid during the
//! move (image over the bandwidth plus a fixed volume/interface move time) plus a fixed penalty.
//! Hop only when the saving over the expected stay beats that cost by a margin, and the target is
//! cheaper by at least the same margin: the margin is the hysteresis that keeps nodes from
//! flapping between two similar prices. Forced moves (spot notice, drain) skip the saving test.
//! Ties break on node id, so every node ranks the same peers the same way.

use std::collections::BTreeSet;
use std::fmt;

use crate::advert::{NodeAdvert, NodeId, Resources};

/// What a workload needs from a host.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadProfile {
    pub needs: Resources,
    pub arch: String,
    /// CPU flags of the host it runs on now; restored code may use any of them.
    pub cpu_features: BTreeSet<String>,
    /// Zone of the workload's volume, when it has one: the volume can only move within it.
    pub volume_zone: Option<String>,
    /// Bytes that travel on a hop (checkpoint image).
    pub image_bytes: u64,
}

/// Knobs of the hop policy.
#[derive(Debug, Clone, PartialEq)]
pub struct HopPolicy {
    /// Relative margin (0.10 = 10 %) a target must beat the current cost by, and the saving must
    /// beat the move cost by.
    pub margin: f64,
    /// Hours a workload is expected to stay after a hop; the saving is counted over this horizon.
    pub expected_stay_hours: f64,
    /// Image transfer bandwidth assumed for the move, bytes per second.
    pub bandwidth_bytes_per_sec: f64,
    /// Seconds to move the volume and network interface (HotSpot measured 18-48 s on EC2).
    pub fixed_move_secs: f64,
    /// USD charged per move for the disruption it causes (client-visible gap, risk).
    pub move_penalty: f64,
}

impl Default for HopPolicy {
    fn default() -> Self {
        HopPolicy {
            margin: 0.10,
            expected_stay_hours: 1.0,
            bandwidth_bytes_per_sec: 100e6,
            fixed_move_secs: 30.0,
            move_penalty: 0.0,
        }
    }
}

impl HopPolicy {
    /// Seconds a move of `image_bytes` takes.
    pub fn move_secs(&self, image_bytes: u64) -> f64 {
        let bw = self.bandwidth_bytes_per_sec.max(1.0);
        image_bytes as f64 / bw + self.fixed_move_secs.max(0.0)
    }

    /// USD a move costs: both hosts are paid while it runs, plus the penalty.
    pub fn move_cost(&self, image_bytes: u64, source_cost_per_hour: f64, target_cost_per_hour: f64) -> f64 {
        self.move_secs(image_bytes) / 3600.0 * (source_cost_per_hour + target_cost_per_hour) + self.move_penalty
    }
}

/// Why a peer cannot host the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    IsSelf,
    NotAccepting,
    ArchMismatch { have: String, need: String },
    MissingCpuFeatures(Vec<String>),
    WrongZone { have: String, need: String },
    NoCapacity,
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::IsSelf => write!(f, "is this node"),
            Exclusion::NotAccepting => write!(f, "not accepting workloads (draining or leaving)"),
            Exclusion::ArchMismatch { have, need } => write!(f, "arch {have}, workload needs {need}"),
            Exclusion::MissingCpuFeatures(m) => write!(f, "lacks CPU features {}", m.join(",")),
            Exclusion::WrongZone { have, need } => write!(f, "zone {have}, the volume is in {need}"),
            Exclusion::NoCapacity => write!(f, "not enough free capacity"),
        }
    }
}

/// What the workload would cost per hour on a host with this price and total capacity.
pub fn cost_per_hour(price_per_hour: f64, total: &Resources, needs: &Resources) -> f64 {
    price_per_hour * needs.share_of(total).min(1.0)
}

/// Checks whether `peer` can host the workload.
pub fn check_eligible(profile: &WorkloadProfile, self_id: &NodeId, peer: &NodeAdvert) -> Result<(), Exclusion> {
    if peer.node == *self_id {
        return Err(Exclusion::IsSelf);
    }
    if !peer.accepts_workloads() {
        return Err(Exclusion::NotAccepting);
    }
    if peer.arch != profile.arch {
        return Err(Exclusion::ArchMismatch { have: peer.arch.clone(), need: profile.arch.clone() });
    }
    let missing: Vec<String> = profile.cpu_features.difference(&peer.cpu_features).cloned().collect();
    if !missing.is_empty() {
        return Err(Exclusion::MissingCpuFeatures(missing));
    }
    if let Some(zone) = &profile.volume_zone {
        if &peer.zone != zone {
            return Err(Exclusion::WrongZone { have: peer.zone.clone(), need: zone.clone() });
        }
    }
    if !profile.needs.fits_in(&peer.capacity.free) {
        return Err(Exclusion::NoCapacity);
    }
    Ok(())
}

/// The peers that cannot host the workload and why (this node itself left out), in the order
/// given: what a node says when no candidate is left.
pub fn exclusions<'a>(
    profile: &WorkloadProfile,
    self_id: &NodeId,
    peers: impl IntoIterator<Item = &'a NodeAdvert>,
) -> Vec<(&'a NodeAdvert, Exclusion)> {
    peers
        .into_iter()
        .filter_map(|p| match check_eligible(profile, self_id, p) {
            Ok(()) | Err(Exclusion::IsSelf) => None,
            Err(e) => Some((p, e)),
        })
        .collect()
}

/// An eligible target with its costs.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub node: NodeId,
    pub name: String,
    /// USD per hour the workload would cost there.
    pub cost_per_hour: f64,
    /// USD the move there costs.
    pub move_cost: f64,
    /// Total over the expected stay plus the move; lower is better.
    pub score: f64,
}

/// Eligible peers, best first. The source tries them in this order when a reservation is denied.
pub fn rank<'a>(
    profile: &WorkloadProfile,
    self_id: &NodeId,
    source_cost_per_hour: f64,
    peers: impl IntoIterator<Item = &'a NodeAdvert>,
    policy: &HopPolicy,
) -> Vec<Candidate> {
    // A workload being placed (no current host) or a host with no sane price pays nothing
    // during the move; an infinite cost here would make every score infinite and reduce the
    // ranking to node-id order.
    let source_cost_per_hour = if source_cost_per_hour.is_finite() { source_cost_per_hour.max(0.0) } else { 0.0 };
    let mut out: Vec<Candidate> = peers
        .into_iter()
        .filter(|p| check_eligible(profile, self_id, p).is_ok())
        .map(|p| {
            let cost = cost_per_hour(p.price_per_hour, &p.capacity.total, &profile.needs);
            let move_cost = policy.move_cost(profile.image_bytes, source_cost_per_hour, cost);
            Candidate {
                node: p.node,
                name: p.name.clone(),
                cost_per_hour: cost,
                move_cost,
                score: cost * policy.expected_stay_hours + move_cost,
            }
        })
        .collect();
    out.sort_by(|a, b| a.score.total_cmp(&b.score).then_with(|| a.node.cmp(&b.node)));
    out
}

/// Why a workload stays where it is.
#[derive(Debug, Clone, PartialEq)]
pub enum StayReason {
    NoEligibleTarget,
    /// The best target is not cheaper by the margin.
    NotCheaperEnough { best_cost_per_hour: f64, current_cost_per_hour: f64 },
    /// The saving over the expected stay does not pay for the move.
    MoveCostsMore { saving: f64, move_cost: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum HopDecision {
    Stay(StayReason),
    /// Move, trying `candidates` in order (first is best).
    Hop { candidates: Vec<Candidate>, forced: bool },
}

/// Where the workload runs now.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentHost {
    pub node: NodeId,
    pub cost_per_hour: f64,
    /// The host is going away (spot notice, drain): move to the best target whatever it costs.
    pub must_leave: bool,
}

/// Decides whether the workload should hop, and where.
pub fn decide<'a>(
    profile: &WorkloadProfile,
    current: &CurrentHost,
    peers: impl IntoIterator<Item = &'a NodeAdvert>,
    policy: &HopPolicy,
) -> HopDecision {
    let candidates = rank(profile, &current.node, current.cost_per_hour, peers, policy);
    let Some(best) = candidates.first() else {
        return HopDecision::Stay(StayReason::NoEligibleTarget);
    };
    if current.must_leave {
        return HopDecision::Hop { candidates, forced: true };
    }
    let margin = policy.margin.max(0.0);
    if best.cost_per_hour > current.cost_per_hour * (1.0 - margin) {
        return HopDecision::Stay(StayReason::NotCheaperEnough {
            best_cost_per_hour: best.cost_per_hour,
            current_cost_per_hour: current.cost_per_hour,
        });
    }
    let saving = (current.cost_per_hour - best.cost_per_hour) * policy.expected_stay_hours;
    if saving < best.move_cost * (1.0 + margin) {
        return HopDecision::Stay(StayReason::MoveCostsMore { saving, move_cost: best.move_cost });
    }
    // Keep only candidates that also pass the saving test, in rank order.
    let worthwhile = candidates
        .into_iter()
        .filter(|c| {
            c.cost_per_hour <= current.cost_per_hour * (1.0 - margin)
                && (current.cost_per_hour - c.cost_per_hour) * policy.expected_stay_hours >= c.move_cost * (1.0 + margin)
        })
        .collect();
    HopDecision::Hop { candidates: worthwhile, forced: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advert::{Capacity, NodeState};

    fn res(cpu: u32, gib: u64) -> Resources {
        Resources { cpu_millis: cpu, memory_bytes: gib << 30, disk_bytes: 0 }
    }

    fn peer(n: u8, price: f64) -> NodeAdvert {
        NodeAdvert {
            node: NodeId([n; 32]),
            name: format!("node{n}"),
            seq: 1,
            issued_at_ms: 0,
            state: NodeState::Healthy,
            price_per_hour: price,
            capacity: Capacity { total: res(4000, 16), free: res(4000, 16) },
            arch: "x86_64".into(),
            cpu_features: ["sse4_2", "avx2"].iter().map(|s| s.to_string()).collect(),
            zone: "a".into(),
            workloads: vec![],
            transfer_addr: None,
            mesh_addrs: Vec::new(),
        }
    }

    fn profile() -> WorkloadProfile {
        WorkloadProfile {
            needs: res(1000, 4),
            arch: "x86_64".into(),
            cpu_features: ["sse4_2", "avx2"].iter().map(|s| s.to_string()).collect(),
            volume_zone: Some("a".into()),
            image_bytes: 1 << 30,
        }
    }

    fn here(cost: f64) -> CurrentHost {
        CurrentHost { node: NodeId([0; 32]), cost_per_hour: cost, must_leave: false }
    }

    #[test]
    fn incompatible_peers_are_excluded() {
        let mut no_avx = peer(1, 0.01);
        no_avx.cpu_features.remove("avx2");
        let mut arm = peer(2, 0.01);
        arm.arch = "aarch64".into();
        let mut other_zone = peer(3, 0.01);
        other_zone.zone = "b".into();
        let mut full = peer(4, 0.01);
        full.capacity.free = res(500, 1);
        let mut leaving = peer(5, 0.01);
        leaving.state = NodeState::Leaving;
        let me = peer(0, 0.01);
        let ok = peer(6, 0.5);
        let peers = [no_avx, arm, other_zone, full, leaving, me, ok];
        let ranked = rank(&profile(), &NodeId([0; 32]), 1.0, &peers, &HopPolicy::default());
        assert_eq!(ranked.iter().map(|c| c.node).collect::<Vec<_>>(), vec![NodeId([6; 32])]);
        assert_eq!(
            check_eligible(&profile(), &NodeId([0; 32]), &peers[0]),
            Err(Exclusion::MissingCpuFeatures(vec!["avx2".into()]))
        );
    }

    #[test]
    fn a_volume_keeps_the_election_in_its_zone() {
        let mut far = peer(1, 0.001);
        far.zone = "b".into();
        let near = peer(2, 0.5);
        let peers = [far.clone(), near];
        // The far peer is far cheaper, but the volume cannot follow it there.
        let ranked = rank(&profile(), &NodeId([0; 32]), 1.0, &peers, &HopPolicy::default());
        assert_eq!(ranked.iter().map(|c| c.node.0[0]).collect::<Vec<_>>(), vec![2]);
        // Without a volume, zones do not matter and the cheaper one wins.
        let free = WorkloadProfile { volume_zone: None, ..profile() };
        assert_eq!(rank(&free, &NodeId([0; 32]), 1.0, &peers, &HopPolicy::default())[0].node, NodeId([1; 32]));
        // Only the far one left: nothing to elect, and the reason names both zones.
        let only_far = [far, peer(0, 0.1)];
        assert!(rank(&profile(), &NodeId([0; 32]), 1.0, &only_far, &HopPolicy::default()).is_empty());
        let why = exclusions(&profile(), &NodeId([0; 32]), &only_far);
        assert_eq!(why.len(), 1, "this node is not listed as excluded");
        assert_eq!(why[0].1, Exclusion::WrongZone { have: "b".into(), need: "a".into() });
        assert_eq!(why[0].1.to_string(), "zone b, the volume is in a");
        let current = CurrentHost { node: NodeId([0; 32]), cost_per_hour: 1.0, must_leave: true };
        assert_eq!(decide(&profile(), &current, &only_far, &HopPolicy::default()), HopDecision::Stay(StayReason::NoEligibleTarget));
    }

    #[test]
    fn cost_is_share_of_host_price() {
        // 1 CPU of 4 and 4 GiB of 16: a quarter of the host.
        assert!((cost_per_hour(0.4, &res(4000, 16), &res(1000, 4)) - 0.1).abs() < 1e-12);
        // Memory-bound: 8 GiB of 16 is half even with little CPU.
        assert!((cost_per_hour(0.4, &res(4000, 16), &res(100, 8)) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn hysteresis_prevents_flapping() {
        let policy = HopPolicy { margin: 0.1, expected_stay_hours: 10.0, fixed_move_secs: 0.0, ..HopPolicy::default() };
        // Current host costs 0.100/h for this workload (price 0.4, quarter share).
        // A peer 5 % cheaper is not worth it...
        let slightly = [peer(1, 0.38)];
        assert!(matches!(decide(&profile(), &here(0.1), &slightly, &policy), HopDecision::Stay(StayReason::NotCheaperEnough { .. })));
        // ...a peer 25 % cheaper is.
        let cheaper = [peer(1, 0.30)];
        let HopDecision::Hop { candidates, forced: false } = decide(&profile(), &here(0.1), &cheaper, &policy) else {
            panic!("expected a hop");
        };
        assert_eq!(candidates[0].node, NodeId([1; 32]));
        // After hopping (now at 0.075/h), the old host at 0.4 -> 0.1/h is not attractive back.
        let back = [peer(0x10, 0.4)];
        let now = CurrentHost { node: NodeId([1; 32]), cost_per_hour: 0.075, must_leave: false };
        assert!(matches!(decide(&profile(), &now, &back, &policy), HopDecision::Stay(_)));
    }

    #[test]
    fn short_stays_do_not_pay_for_the_move() {
        let policy = HopPolicy { expected_stay_hours: 0.01, fixed_move_secs: 40.0, move_penalty: 0.01, ..HopPolicy::default() };
        let cheaper = [peer(1, 0.2)];
        assert!(matches!(decide(&profile(), &here(0.1), &cheaper, &policy), HopDecision::Stay(StayReason::MoveCostsMore { .. })));
    }

    #[test]
    fn forced_moves_ignore_price_and_ties_are_deterministic() {
        let policy = HopPolicy::default();
        let peers = [peer(9, 2.0), peer(3, 2.0), peer(7, 2.0)];
        let current = CurrentHost { node: NodeId([0; 32]), cost_per_hour: 0.01, must_leave: true };
        let HopDecision::Hop { candidates, forced: true } = decide(&profile(), &current, &peers, &policy) else {
            panic!("a leaving host must move");
        };
        let order: Vec<u8> = candidates.iter().map(|c| c.node.0[0]).collect();
        assert_eq!(order, vec![3, 7, 9]);
        // Same answer whatever order the peer table is in.
        let reversed = [peer(7, 2.0), peer(9, 2.0), peer(3, 2.0)];
        let HopDecision::Hop { candidates: again, .. } = decide(&profile(), &current, &reversed, &policy) else {
            panic!()
        };
        assert_eq!(candidates, again);
    }

    #[test]
    fn infinite_source_cost_still_ranks_by_price() {
        let peers = [peer(1, 0.9), peer(2, 0.1), peer(3, 0.5)];
        let ranked = rank(&profile(), &NodeId([0; 32]), f64::INFINITY, &peers, &HopPolicy::default());
        assert_eq!(ranked.iter().map(|c| c.node.0[0]).collect::<Vec<_>>(), vec![2, 3, 1]);
        assert!(ranked.iter().all(|c| c.score.is_finite()));
    }

    #[test]
    fn no_target_means_stay() {
        let current = CurrentHost { node: NodeId([0; 32]), cost_per_hour: 1.0, must_leave: true };
        let empty: [NodeAdvert; 0] = [];
        assert_eq!(decide(&profile(), &current, &empty, &HopPolicy::default()), HopDecision::Stay(StayReason::NoEligibleTarget));
    }
}
