//! The target side of a migration: answers the source's [`MigrationMessage`]s.
//!
//! Every answer is idempotent per migration id (a source that lost a reply asks again), checked
//! against the peer that made the offer, and journaled before it is acted on. The target
//! restores only when asked (`Restore`), which the source sends only after journaling
//! `RestoreRequested`; that ordering is what keeps the workload running exactly once.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hotspot_protocol::error::{ErrorCode, WireError};
use hotspot_protocol::handoff::{TargetPhase, TargetReport};
use hotspot_protocol::migration::{MigrationId, MigrationMessage, WorkloadSpec};
use hotspot_protocol::reservation::ReservationId;
use hotspot_protocol::NodeId;
use tracing::{debug, info, warn};

use crate::sys::clock::now_ms;
use super::error::RestoreError;
use crate::migrate::journal::{Journal, JournalError, MigrationRecord, Role};

/// Restores workloads on this node.
pub trait Restorer: Send + Sync {
    /// Restores `spec` from the image in `dir` (resources already moved here); returns its PID.
    fn restore(&self, spec: &WorkloadSpec, dir: &Path) -> impl Future<Output = Result<u32, RestoreError>> + Send;
    /// Removes whatever a failed restore left behind (namespaces, cgroups), keeping the image.
    fn discard(&self, workload: &str) -> impl Future<Output = ()> + Send;
    /// Post-copy: restores from `dir` (everything but the memory) with a lazy-pages daemon
    /// fetching the memory from `page_server` while the workload runs; returns its PID.
    fn restore_lazy(&self, _spec: &WorkloadSpec, _dir: &Path, _page_server: SocketAddr) -> impl Future<Output = Result<u32, RestoreError>> + Send {
        async { Err(RestoreError::Unsupported { what: "post-copy restore", reason: "this restorer has no lazy-pages support" }) }
    }
}

/// The target's reservation ledger, as the migration sees it.
pub trait Reservations: Send + Sync {
    /// True if `id` is a live reservation made by `source`.
    fn held_by(&self, id: &ReservationId, source: &NodeId) -> bool;
    /// The workload arrived: the reservation no longer expires.
    fn commit(&self, id: &ReservationId) -> bool;
    fn release(&self, id: &ReservationId);
}

pub struct TargetService<R, B> {
    pub journal: Journal,
    pub restorer: R,
    pub reservations: B,
}

fn refuse(migration: MigrationId, code: ErrorCode, message: impl Into<String>) -> MigrationMessage {
    MigrationMessage::Refuse { migration, error: WireError { code, message: message.into() } }
}

/// The spec a target needs to restore, kept with the journal record (opaque to the journal).
fn spec_of(rec: &MigrationRecord) -> Option<WorkloadSpec> {
    serde_cbor::from_slice(&rec.provider_state).ok()
}

impl<R: Restorer, B: Reservations> TargetService<R, B> {
    /// Records that the image of `migration` is complete in `dir` (called by the transfer
    /// receiver once every chunk verified and the directory was rebuilt).
    pub fn image_received(&self, migration: &MigrationId, dir: PathBuf) -> Result<(), JournalError> {
        let mut rec = self.journal.get(migration)?.ok_or(JournalError::Missing(*migration))?;
        rec.image_dir = Some(dir);
        self.journal.put(&rec)
    }

    /// Answers one message from `peer`.
    pub async fn handle(&self, peer: &NodeId, msg: MigrationMessage) -> MigrationMessage {
        match self.handle_inner(peer, msg).await {
            Ok(reply) => reply,
            Err((migration, e)) => refuse(migration, ErrorCode::Internal, e.to_string()),
        }
    }

    async fn handle_inner(&self, peer: &NodeId, msg: MigrationMessage) -> Result<MigrationMessage, (MigrationId, JournalError)> {
        use MigrationMessage as M;
        let id = match &msg {
            M::Offer { migration, .. }
            | M::Restore { migration, .. }
            | M::RestoreLazy { migration, .. }
            | M::Commit { migration }
            | M::Abort { migration, .. }
            | M::Status { migration } => *migration,
            other => {
                let mid = MigrationId([0; 16]);
                return Ok(refuse(mid, ErrorCode::BadRequest, format!("a target does not accept {other:?}")));
            }
        };
        let j = |e| (id, e);
        let existing = self.journal.get(&id).map_err(j)?;
        if let Some(rec) = &existing {
            if rec.peer != *peer {
                warn!(migration = %id, %peer, owner = %rec.peer, "message about another node's migration");
                return Ok(refuse(id, ErrorCode::Unauthorized, "migration belongs to another node"));
            }
        }
        let phase = existing.as_ref().and_then(|r| match r.role {
            Role::Target(p) => Some(p),
            Role::Source(_) => None,
        });
        let page_server = match &msg {
            M::RestoreLazy { page_server, .. } => Some(page_server.clone()),
            _ => None,
        };
        Ok(match msg {
            M::Offer { reservation, workload, .. } => match phase {
                Some(TargetPhase::Abandoned) => refuse(id, ErrorCode::BadRequest, "migration was abandoned; start a new one"),
                Some(_) => M::Accept { migration: id },
                None => {
                    if !self.reservations.held_by(&reservation, peer) {
                        return Ok(refuse(id, ErrorCode::UnknownReservation, "no live reservation of yours with that id"));
                    }
                    let rec = MigrationRecord {
                        migration: id,
                        workload: workload.name.clone(),
                        peer: *peer,
                        reservation: Some(reservation),
                        role: Role::Target(TargetPhase::Receiving),
                        image_dir: None,
                        provider_state: serde_cbor::to_vec(&workload).expect("specs encode"),
                        history: vec![(Role::Target(TargetPhase::Receiving), now_ms())],
                        peer_addr: None,
                    };
                    self.journal.put(&rec).map_err(j)?;
                    info!(migration = %id, workload = %workload.name, %peer, "accepted migration");
                    M::Accept { migration: id }
                }
            },
            M::Restore { .. } | M::RestoreLazy { .. } => match (phase, existing) {
                (Some(TargetPhase::Running), Some(_)) => M::Restored { migration: id, pid: 0 },
                (Some(TargetPhase::Receiving), Some(rec)) => {
                    let lazy = match page_server.as_deref().map(str::parse::<SocketAddr>) {
                        None => None,
                        Some(Ok(a)) => Some(a),
                        Some(Err(e)) => return Ok(refuse(id, ErrorCode::BadRequest, format!("page server: {e}"))),
                    };
                    self.restore(rec, lazy).await.map_err(j)?
                }
                (Some(TargetPhase::Restoring), _) => refuse(id, ErrorCode::Busy, "restore already under way"),
                _ => refuse(id, ErrorCode::BadRequest, "no migration to restore (offer first, or it was abandoned)"),
            },
            M::Status { .. } => M::StatusReply { migration: id, report: phase.map_or(TargetReport::Unknown, TargetReport::Phase) },
            M::Commit { .. } => match phase {
                Some(TargetPhase::Running) => {
                    self.journal.remove(&id).map_err(j)?;
                    // The workload runs from memory now (a post-copy source commits only after
                    // the last page arrived): the image would only pin its chunks in the store.
                    if let Some(dir) = existing.and_then(|r| r.image_dir) {
                        debug!(migration = %id, dir = %dir.display(), "removing the restored image");
                        super::precopy_images::remove_dir(dir);
                    }
                    M::Ack { migration: id }
                }
                _ => refuse(id, ErrorCode::BadRequest, "commit of a migration that is not running here"),
            },
            M::Abort { reason, .. } => match (phase, existing) {
                (Some(TargetPhase::Running), _) => refuse(id, ErrorCode::BadRequest, "workload already runs here; cannot abort"),
                (Some(_), Some(rec)) => {
                    warn!(migration = %id, %reason, "source aborted the migration");
                    if let Some(r) = rec.reservation {
                        self.reservations.release(&r);
                    }
                    self.journal.set_target_phase(&id, TargetPhase::Abandoned, now_ms()).map_err(j)?;
                    M::Ack { migration: id }
                }
                _ => M::Ack { migration: id },
            },
            _ => unreachable!("filtered above"),
        })
    }

    async fn restore(&self, rec: MigrationRecord, page_server: Option<SocketAddr>) -> Result<MigrationMessage, JournalError> {
        let id = rec.migration;
        let (Some(dir), Some(spec)) = (rec.image_dir.clone(), spec_of(&rec)) else {
            return Ok(refuse(id, ErrorCode::BadRequest, "the image has not been received completely"));
        };
        self.journal.set_target_phase(&id, TargetPhase::Restoring, now_ms())?;
        let restored = match page_server {
            None => self.restorer.restore(&spec, &dir).await,
            Some(addr) => self.restorer.restore_lazy(&spec, &dir, addr).await,
        };
        match restored {
            Ok(pid) => {
                if let Some(r) = rec.reservation {
                    self.reservations.commit(&r);
                }
                self.journal.set_target_phase(&id, TargetPhase::Running, now_ms())?;
                info!(migration = %id, workload = %spec.name, pid, "restored");
                Ok(MigrationMessage::Restored { migration: id, pid })
            }
            Err(e) => {
                warn!(migration = %id, workload = %spec.name, error = %e, "restore failed; abandoning");
                self.restorer.discard(&spec.name).await;
                if let Some(r) = rec.reservation {
                    self.reservations.release(&r);
                }
                self.journal.set_target_phase(&id, TargetPhase::Abandoned, now_ms())?;
                // CRIU's errors span lines; the wire allows no control characters.
                let message = e.to_string().replace(|c: char| c.is_control(), " ");
                Ok(MigrationMessage::RestoreFailed { migration: id, error: WireError { code: ErrorCode::RestoreFailed, message } })
            }
        }
    }
}
