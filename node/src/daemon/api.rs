//! The control API's requests and replies, as JSON on the control socket ([`super::control`]).
//! Field names are part of the protocol: add fields with `#[serde(default)]`, never rename.

use hotspot_protocol::{NodeState, Resources};
use serde::{Deserialize, Serialize};

use crate::migrate::{Progress, Summary};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Peers,
    Reserve(ReserveParams),
    Release { peer: String, id: String },
    /// Pins the advertised price (`None` returns to the configured source). For operators and tests.
    SetPrice { price_per_hour: Option<f64> },
    /// Migrates a workload to `to` (peer name or node id prefix; `None` elects one). Answered
    /// by a stream of `Progress` lines and a final `Migrated` or `Error`.
    /// `mode` defaults to pre-copy; absent in requests from older clients.
    Migrate {
        workload: String,
        to: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<hotspot_protocol::migration::MigrationMode>,
    },
    /// Stops taking workloads (advert `draining`, reservations denied) and moves every workload
    /// off, streaming `Evacuation` lines and a final `Evacuated`. `cancel` returns to healthy.
    Drain { cancel: bool },
    /// A spot interruption notice given by hand: announce `leaving` at once and move every
    /// workload off before `deadline_secs` (default: the configured notice deadline). Streams
    /// like `Drain`.
    Notice { deadline_secs: Option<u64> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReserveParams {
    /// Peer name or node id (prefix); `None` elects the best target by price and capacity.
    pub peer: Option<String>,
    pub workload: String,
    pub needs: Resources,
    pub ttl_ms: u64,
    /// The workload's volume and its zone (EC2: the EBS volume's availability zone): a target in
    /// another zone cannot attach it, so it is not elected and `peer` naming one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_zone: Option<VolumeZone>,
}

/// A volume and the zone it can be attached in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeZone {
    pub volume: String,
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Status(Box<StatusReport>),
    Peers { peers: Vec<PeerRow> },
    Reserve(ReserveOutcome),
    Released { released: bool },
    PriceSet { price_per_hour: f64 },
    Progress { progress: Progress },
    Migrated { summary: Summary },
    Error { message: String },
    /// One step of a drain or notice evacuation.
    Evacuation { event: EvacuationEvent },
    /// The end of a drain or notice evacuation.
    Evacuated { report: EvacuationReport },
    /// The node's state after `Drain { cancel: true }`.
    State { state: NodeState },
}

/// One row of `hotspot-node peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    pub node: String,
    pub name: String,
    pub price_per_hour: f64,
    pub free: Resources,
    pub total: Resources,
    pub state: NodeState,
    pub zone: String,
    pub arch: String,
    pub workloads: usize,
    pub seq: u64,
    /// Time since the last advert from this peer.
    pub age_ms: u64,
    /// Wall clock (ms since the epoch) when that advert arrived.
    pub received_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldReservation {
    pub id: String,
    /// Source node (held here) or target node (obtained elsewhere).
    pub peer: String,
    pub workload: String,
    pub needs: Resources,
    pub expires_at_ms: u64,
    pub committed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub node: String,
    pub name: String,
    pub zone: String,
    pub arch: String,
    pub state: NodeState,
    pub price_per_hour: f64,
    pub price_source: String,
    pub total: Resources,
    pub free: Resources,
    pub uptime_ms: u64,
    pub workloads: Vec<hotspot_protocol::advert::WorkloadSummary>,
    /// Capacity this node promised to sources.
    pub reservations_held: Vec<HeldReservation>,
    /// Capacity this node reserved on targets.
    pub reservations_obtained: Vec<HeldReservation>,
    pub mesh: serde_json::Value,
    /// Workloads that were running before a reboot and could not be restored (daemon::reboot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_at_reboot: Vec<LostWorkload>,
    /// Moves this node made by itself (price, drain, notice), newest last.
    #[serde(default)]
    pub moves: Vec<MoveRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub peer: String,
    pub name: String,
    /// "granted", or why not.
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReserveOutcome {
    pub granted: Option<HeldReservation>,
    /// Targets tried, best first.
    pub attempts: Vec<Attempt>,
}

/// One step of an evacuation, streamed to `hotspot-node drain` / `notice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EvacuationEvent {
    Started { trigger: String, workloads: Vec<String>, deadline_ms: Option<u64> },
    Moving { workload: String, index: usize, total: usize },
    Progress { workload: String, progress: Progress },
    Moved { workload: String, summary: Summary },
    Failed { workload: String, error: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedMove {
    pub workload: String,
    pub error: String,
}

/// How an evacuation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvacuationReport {
    pub trigger: String,
    /// The node's state at the end (stays `draining` until `drain --cancel`).
    pub state: NodeState,
    pub moved: Vec<Summary>,
    pub failed: Vec<FailedMove>,
    /// Not attempted: the deadline passed, or the drain was cancelled.
    pub left_behind: Vec<String>,
    pub took_ms: u64,
    /// Whether every move finished before the deadline (`None` without a deadline).
    pub deadline_met: Option<bool>,
}

/// One move this node made by itself, shown by `hotspot-node status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveRecord {
    /// "price", "drain", "notice" or "imds".
    pub trigger: String,
    pub workload: String,
    pub at_ms: u64,
    pub summary: Option<Summary>,
    pub error: Option<String>,
}

/// A workload that was running here before the host went down and could not be brought back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LostWorkload {
    pub format: u32,
    pub name: String,
    /// Host PID it had before the reboot.
    pub pid: Option<i32>,
    pub started_unix_ms: u64,
    /// When this node first found it gone.
    pub detected_unix_ms: u64,
    /// The process was started before the current boot, or its runtime state in /run is gone.
    pub at_reboot: bool,
    /// Why it was not restored (no checkpoint, unusable checkpoint, failed restore).
    pub reason: String,
}
