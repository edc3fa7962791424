//! How a source-side migration ends: committed to the target ([`finish`]), rolled back with
//! the workload still running here ([`roll_back_running`]) or stopped here and brought back
//! ([`roll_back_stopped`]), or in doubt when the target cannot say ([`restore_failed`]).

use std::path::Path;

use hotspot_protocol::handoff::{SourcePhase, TargetPhase, TargetReport};
use hotspot_protocol::migration::{MigrationId, MigrationMode};
use tracing::{info, warn};

use super::journal::JournalError;
use super::plan::{Parts, SourcePlan};
use super::{Checkpointer, LinkError, MigrateError, Progress, ResourceMover, StepError, Summary, TargetLink};
use crate::sys::clock::now_ms;

/// After a failed restore request: did the workload come up anyway (reply lost)? Only a clear
/// "no" from the target allows bringing it back here: `Ok(Some(cause))` then, `Ok(None)` if it
/// runs there, [`MigrateError::InDoubt`] if the target cannot say.
pub(crate) async fn restore_failed<C, L: TargetLink, R>(plan: &SourcePlan, p: &Parts<'_, C, L, R>, e: LinkError) -> Result<Option<LinkError>, MigrateError> {
    match p.link.status(plan.migration).await {
        Ok(TargetReport::Phase(TargetPhase::Running)) => {
            info!("restore reply lost but the target runs the workload");
            Ok(None)
        }
        Ok(_) => Ok(Some(e)),
        Err(status_err) => Err(MigrateError::InDoubt {
            migration: plan.migration,
            workload: plan.workload.name.clone(),
            cause: StepError::StatusUnknown { restore: Box::new(e), status: Box::new(status_err) },
        }),
    }
}

/// Gives up before the freeze (or after a dump that left the workload running): tell the
/// target, give the reservation back, journal the rollback.
pub(crate) async fn roll_back_running<C: Checkpointer, L: TargetLink, R>(plan: &SourcePlan, p: &Parts<'_, C, L, R>, phase: &'static str, cause: StepError) -> Result<Summary, MigrateError> {
    warn!(phase, error = %cause, "migration failed before the freeze; workload still runs here");
    let _ = p.link.abort(plan.migration, &cause.to_string()).await;
    let _ = p.link.release(plan.reservation).await;
    p.journal.advance_source(&plan.migration, SourcePhase::RolledBack, now_ms())?;
    p.report(Progress::RolledBack { reason: cause.to_string() });
    Err(MigrateError::RolledBack { workload: plan.workload.name.clone(), phase, cause })
}

/// Clean-up after the target confirmed: forget the workload here, tell the target, drop images.
pub(crate) async fn finish<C: Checkpointer, L: TargetLink, R>(migration: MigrationId, workload: &str, dir: &Path, p: &Parts<'_, C, L, R>) -> Result<(), MigrateError> {
    if let Err(e) = p.checkpointer.retire(workload).await {
        warn!(error = %e, "could not retire the workload record on the source");
    }
    if let Err(e) = p.link.commit(migration).await {
        // The target adopts on its own once it runs the workload; commit only lets it drop state.
        warn!(error = %e, "commit not delivered; the target keeps its migration record until asked");
    }
    let _ = std::fs::remove_dir_all(dir);
    p.journal.advance_source(&migration, SourcePhase::CleanedUp, now_ms())?;
    Ok(())
}

/// The workload is stopped here: bring resources back if they moved and restore it locally.
/// Post-copy: the workload is frozen, not gone, so the volume comes back shared and the frozen
/// tree resumes instead of a restore.
pub(crate) async fn roll_back_stopped<C: Checkpointer, L: TargetLink, R: ResourceMover>(
    plan: &SourcePlan,
    p: &Parts<'_, C, L, R>,
    final_dir: &Path,
    resources_moved: bool,
    phase: &'static str,
    cause: StepError,
) -> Result<Summary, MigrateError> {
    let post_copy = plan.mode == MigrationMode::PostCopy;
    warn!(phase, error = %cause, resources_moved, post_copy, "migration failed after the freeze; bringing the workload back on this node");
    let _ = p.link.abort(plan.migration, &cause.to_string()).await;
    let name = plan.workload.name.clone();
    let result: Result<(), StepError> = async {
        // Pre-copy asks the mover even when nothing moved: the dead workload's volume may need
        // staging on this node before the local restore (the mover's move_back is idempotent).
        if resources_moved || !post_copy {
            let mut rec = p.journal.get(&plan.migration)?.ok_or(JournalError::Missing(plan.migration))?;
            let back = match post_copy {
                true => p.mover.move_back_shared(&plan.workload, &mut rec.provider_state).await,
                false => p.mover.move_back(&plan.workload, &mut rec.provider_state).await,
            };
            p.journal.put(&rec)?;
            back?;
        }
        let restored = match post_copy {
            true => p.checkpointer.abort_lazy(&name, final_dir).await,
            false => p.checkpointer.restore_local(&name, final_dir).await,
        };
        Ok(restored?)
    }
    .await;
    match result {
        Ok(()) => {
            let _ = p.link.release(plan.reservation).await;
            p.journal.advance_source(&plan.migration, SourcePhase::RolledBack, now_ms())?;
            p.report(Progress::RolledBack { reason: cause.to_string() });
            Err(MigrateError::RolledBack { workload: name, phase, cause })
        }
        Err(rollback) => Err(MigrateError::RollbackFailed { workload: name, phase, cause, rollback }),
    }
}

