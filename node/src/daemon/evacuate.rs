//! Moving workloads off this node by itself: one code path for `hotspot-node drain`, a spot
//! notice (`hotspot-node notice`, a notice file, or EC2's metadata service) and the price
//! trigger ([`super::hop`]). Every move goes through the same `Migrations::migrate` a manual
//! `hotspot-node migrate` uses, so reservations, journaling and rollback are the same.
//!
//! An evacuation moves workloads one after another, largest first (the longest move starts while
//! the most time is left), each to the target elected by price and capacity; a target that
//! refuses its reservation is skipped for the next candidate. Under a notice, moves skip
//! pre-copy, and one already under way (a price hop, say) has its pre-copy round cut short: the
//! freeze comes at once, since total time is what counts now (`Migrations::hurry`). A move past
//! its freeze is never cut (a half-done migration rolls back, which saves nothing); workloads
//! not yet started when the deadline passes are reported as left behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hotspot_protocol::NodeState;
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

use super::api::{EvacuationEvent, EvacuationReport, FailedMove, MoveRecord};
use super::control::Reply;
use super::migration::Migrations;
use super::service::NodeService;
use super::config::TriggerConfig;
use crate::migrate::Summary;

/// The node's automatic triggers: evacuations and the price trigger share it.
pub struct Triggers {
    pub(crate) service: Arc<NodeService>,
    pub(crate) migrations: Option<Arc<Migrations>>,
    pub(crate) config: TriggerConfig,
    /// One evacuation or price move at a time; a notice waits for the move in flight.
    pub(crate) moving: tokio::sync::Mutex<()>,
}

fn send(out: Option<&mpsc::Sender<Reply>>, event: EvacuationEvent) {
    if let Some(out) = out {
        // A CLI that went away or reads slowly never stalls the evacuation.
        let _ = out.try_send(Reply::Evacuation { event });
    }
}

impl Triggers {
    pub fn new(config: TriggerConfig, service: Arc<NodeService>, migrations: Option<Arc<Migrations>>) -> Arc<Self> {
        Arc::new(Triggers { service, migrations, config, moving: tokio::sync::Mutex::new(()) })
    }

    /// Moves one workload (`to`: a preference list of peers, or `None` to elect) and records the
    /// outcome for `status` (`Migrations` frees its old reservation here when it left).
    pub(crate) async fn move_one(&self, workload: &str, to: Option<String>, trigger: &str, out: Option<&mpsc::Sender<Reply>>) -> Result<Summary, String> {
        let result = match &self.migrations {
            None => Err("this node cannot migrate workloads (CRIU unusable; see the daemon log)".to_string()),
            Some(m) => {
                let (tx, mut rx) = mpsc::channel(64);
                let (m, name) = (m.clone(), workload.to_string());
                let task = tokio::spawn(async move { m.migrate(name, to, tx).await });
                let mut last = None;
                while let Some(reply) = rx.recv().await {
                    match reply {
                        Reply::Progress { progress } => send(out, EvacuationEvent::Progress { workload: workload.into(), progress }),
                        other => last = Some(other),
                    }
                }
                let _ = task.await;
                match last {
                    Some(Reply::Migrated { summary }) => Ok(summary),
                    Some(Reply::Error { message }) => Err(message),
                    other => Err(format!("the migration ended without an outcome ({other:?})")),
                }
            }
        };
        self.service.record_move(MoveRecord {
            trigger: trigger.into(),
            workload: workload.into(),
            at_ms: crate::sys::clock::now_ms(),
            summary: result.as_ref().ok().cloned(),
            error: result.as_ref().err().cloned(),
        });
        result
    }

    /// Running workloads, largest first (memory, then CPU), then by name.
    async fn workloads_by_size(&self) -> Vec<String> {
        let service = self.service.clone();
        let mut list = tokio::task::spawn_blocking(move || service.workloads_here()).await.unwrap_or_default();
        list.sort_by(|a, b| {
            (b.needs.memory_bytes, b.needs.cpu_millis).cmp(&(a.needs.memory_bytes, a.needs.cpu_millis)).then_with(|| a.name.cmp(&b.name))
        });
        list.into_iter().map(|w| w.name).collect()
    }

    /// Moves every workload off while the node stays in `state` (a cancelled drain stops
    /// between moves). Workloads that arrive meanwhile (reservations granted before the state
    /// changed) are moved in a later pass.
    pub async fn evacuate(&self, trigger: &str, state: NodeState, deadline: Option<Instant>, out: Option<&mpsc::Sender<Reply>>) -> EvacuationReport {
        let _one_at_a_time = self.moving.lock().await;
        let started = Instant::now();
        let span = info_span!("evacuation", trigger, ?state);
        async {
            let mut report = EvacuationReport {
                trigger: trigger.into(),
                state,
                moved: Vec::new(),
                failed: Vec::new(),
                left_behind: Vec::new(),
                took_ms: 0,
                deadline_met: None,
            };
            let first = self.workloads_by_size().await;
            let deadline_ms = deadline.map(|d| d.saturating_duration_since(started).as_millis() as u64);
            info!(workloads = first.len(), ?deadline_ms, "evacuating");
            send(out, EvacuationEvent::Started { trigger: trigger.into(), workloads: first.clone(), deadline_ms });
            let mut pending = first;
            for _pass in 0..3 {
                let total = pending.len();
                for (index, workload) in pending.iter().enumerate() {
                    if self.service.state() != state {
                        info!(workload = %workload, "evacuation stopped: the node changed state");
                        report.left_behind.push(workload.clone());
                        continue;
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        warn!(workload = %workload, "deadline passed before this workload could be moved");
                        report.left_behind.push(workload.clone());
                        continue;
                    }
                    send(out, EvacuationEvent::Moving { workload: workload.clone(), index, total });
                    match self.move_one(workload, None, trigger, out).await {
                        Ok(summary) => {
                            info!(workload = %workload, target = %summary.target, total_ms = summary.total_ms, "moved off");
                            send(out, EvacuationEvent::Moved { workload: workload.clone(), summary: summary.clone() });
                            report.moved.push(summary);
                        }
                        Err(error) => {
                            warn!(workload = %workload, %error, "could not move off");
                            send(out, EvacuationEvent::Failed { workload: workload.clone(), error: error.clone() });
                            report.failed.push(FailedMove { workload: workload.clone(), error });
                        }
                    }
                }
                // Late arrivals: anything running now that this evacuation has not tried yet.
                let tried = |w: &String| report.moved.iter().any(|s| &s.workload == w) || report.failed.iter().any(|f| &f.workload == w) || report.left_behind.contains(w);
                pending = self.workloads_by_size().await.into_iter().filter(|w| !tried(w)).collect();
                if pending.is_empty() || self.service.state() != state {
                    break;
                }
            }
            report.took_ms = started.elapsed().as_millis() as u64;
            report.deadline_met = deadline.map(|d| Instant::now() <= d && report.left_behind.is_empty() && report.failed.is_empty());
            report.state = self.service.state();
            info!(moved = report.moved.len(), failed = report.failed.len(), left_behind = report.left_behind.len(), took_ms = report.took_ms, "evacuation done");
            report
        }
        .instrument(span)
        .await
    }

    /// `hotspot-node drain`: stop taking workloads, gossip `draining`, move everything off.
    pub async fn drain(&self, out: Option<&mpsc::Sender<Reply>>) -> Reply {
        if self.service.state() == NodeState::Leaving {
            return Reply::Error { message: "this node is leaving (spot notice): it is already evacuating".into() };
        }
        self.service.set_state(NodeState::Draining);
        Reply::Evacuated { report: self.evacuate("drain", NodeState::Draining, None, out).await }
    }

    /// `hotspot-node drain --cancel`: take workloads again.
    pub fn undrain(&self) -> Reply {
        match self.service.state() {
            NodeState::Leaving => Reply::Error { message: "this node is leaving (spot notice); that cannot be undone".into() },
            _ => Reply::State { state: self.service.set_state(NodeState::Healthy) },
        }
    }

    /// A spot interruption notice (from the CLI, a notice file or IMDS): announce `leaving` at
    /// once and move everything off before the deadline.
    pub async fn notice(&self, trigger: &str, deadline: Duration, out: Option<&mpsc::Sender<Reply>>) -> Reply {
        let deadline = Instant::now() + deadline;
        warn!(trigger, deadline_secs = deadline.saturating_duration_since(Instant::now()).as_secs(), "interruption notice: leaving");
        self.service.set_state(NodeState::Leaving);
        // Total time is what counts now, not the freeze: also cuts a move already under way.
        if let Some(m) = &self.migrations {
            m.hurry();
        }
        Reply::Evacuated { report: self.evacuate(trigger, NodeState::Leaving, Some(deadline), out).await }
    }

    pub fn default_notice_deadline(&self) -> Duration {
        Duration::from_secs(self.config.notice_deadline_secs)
    }
}
