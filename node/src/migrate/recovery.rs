//! What a restarted source does with migrations its journal says were under way.

use std::path::PathBuf;

use hotspot_protocol::handoff::{recover_source, SourcePhase, SourceRecovery};
use hotspot_protocol::migration::{MigrationId, WorkloadSpec};
use tracing::{info, warn};

use super::outcome::finish;
use super::plan::Parts;
use crate::sys::clock::now_ms;
use super::{Checkpointer, MigrateError, ResourceMover, StepError, TargetLink};
use crate::migrate::journal::{JournalError, MigrationRecord, Role};

/// The outcome for one journaled migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// The workload runs on this node again.
    RolledBack,
    /// The workload runs on the target; the source cleaned up.
    Completed,
    /// Nothing to do.
    AlreadyOver,
}

/// Recovers one source-side record. `spec` describes the workload (for the resource mover).
pub async fn recover<C: Checkpointer, L: TargetLink, R: ResourceMover>(
    rec: &MigrationRecord,
    spec: &WorkloadSpec,
    images_root: PathBuf,
    p: &Parts<'_, C, L, R>,
) -> Result<Recovered, MigrateError> {
    let Role::Source(phase) = rec.role else { return Ok(Recovered::AlreadyOver) };
    let report = match phase {
        SourcePhase::MovingResources | SourcePhase::RestoreRequested => p.link.status(rec.migration).await.ok(),
        _ => None,
    };
    let mut action = recover_source(phase, report);
    // A post-copy migration cut short by a crash cannot go forward: its page relay died with the
    // old process. Before the target restored, it goes back (the frozen tree resumes).
    let post_copy = rec.image_dir.as_deref().is_some_and(super::lazy_dump::is_lazy_image);
    if post_copy && action == SourceRecovery::ResumeForward {
        action = SourceRecovery::RestoreLocally { resources_moved: true };
    }
    info!(migration = %rec.migration, workload = %rec.workload, ?phase, ?report, ?action, "recovering migration");
    let id = rec.migration;
    let dir = images_root.join(id.to_string());
    let fail = |cause: StepError| MigrateError::RollbackFailed { workload: rec.workload.clone(), phase: "recovery", cause, rollback: StepError::NotAttempted };
    match action {
        SourceRecovery::Nothing => Ok(Recovered::AlreadyOver),
        SourceRecovery::ReleaseAndRollBack => {
            if let Some(r) = rec.reservation {
                let _ = p.link.release(r).await;
            }
            p.journal.advance_source(&id, SourcePhase::RolledBack, now_ms())?;
            Ok(Recovered::RolledBack)
        }
        SourceRecovery::RestoreLocally { resources_moved } => {
            let _ = p.link.abort(id, "source restarted and rolled back").await;
            // Pre-copy: also when nothing moved, so the mover can stage the volume the dead
            // workload held in its own mount namespace (move_back is idempotent).
            if resources_moved || !post_copy {
                let mut state = rec.provider_state.clone();
                let back = if post_copy { p.mover.move_back_shared(spec, &mut state).await } else { p.mover.move_back(spec, &mut state).await };
                save_state(p, id, state)?;
                back.map_err(|e| fail(e.into()))?;
            }
            let image_dir = rec.image_dir.clone().ok_or_else(|| fail(StepError::NoImageDir))?;
            if post_copy {
                p.checkpointer.abort_lazy(&rec.workload, &image_dir).await.map_err(|e| fail(e.into()))?;
            } else {
                p.checkpointer.restore_local(&rec.workload, &image_dir).await.map_err(|e| fail(e.into()))?;
            }
            p.journal.advance_source(&id, SourcePhase::RolledBack, now_ms())?;
            Ok(Recovered::RolledBack)
        }
        SourceRecovery::ResumeForward => {
            let mut state = rec.provider_state.clone();
            let moved = p.mover.move_to_target(spec, &rec.peer, &mut state).await;
            save_state(p, id, state)?;
            moved.map_err(|e| fail(e.into()))?;
            if phase != SourcePhase::RestoreRequested {
                p.journal.advance_source(&id, SourcePhase::RestoreRequested, now_ms())?;
            }
            // The transfer id is not needed to find a fully received image: the target keys it
            // by migration. An all-zero id asks for "the latest image of this migration".
            p.link.restore(id, [0; 16]).await.map_err(|cause| MigrateError::InDoubt { migration: id, workload: rec.workload.clone(), cause: cause.into() })?;
            p.journal.advance_source(&id, SourcePhase::Confirmed, now_ms())?;
            finish(id, &rec.workload, &dir, p).await?;
            Ok(Recovered::Completed)
        }
        SourceRecovery::Finish => {
            if phase != SourcePhase::Confirmed {
                p.journal.advance_source(&id, SourcePhase::Confirmed, now_ms())?;
            }
            finish(id, &rec.workload, &dir, p).await?;
            Ok(Recovered::Completed)
        }
        SourceRecovery::WaitForTarget => {
            warn!(migration = %id, "target unreachable after the restore request; waiting");
            Err(MigrateError::InDoubt { migration: id, workload: rec.workload.clone(), cause: StepError::TargetSilent })
        }
    }
}

fn save_state<C, L, R>(p: &Parts<'_, C, L, R>, id: MigrationId, state: Vec<u8>) -> Result<(), JournalError> {
    let mut rec = p.journal.get(&id)?.ok_or(JournalError::Missing(id))?;
    rec.provider_state = state;
    p.journal.put(&rec)
}
