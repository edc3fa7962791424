//! The source side of a migration: pre-copy rounds, freeze, final dump, resource move, restore
//! on the target, clean-up — journaled write-ahead, rolled back on failure.

use crate::sys::clock::now_ms;
use crate::sys::fault::CrashPoint;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hotspot_protocol::handoff::{another_precopy_round, SourcePhase, TargetPhase, TargetReport};
use hotspot_protocol::migration::{MigrationId, MigrationMode, WorkloadSpec};
use hotspot_protocol::reservation::ReservationId;
use hotspot_protocol::NodeId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::{BoxError, Checkpointer, MigrateError, Progress, ResourceMover, Summary, TargetLink};
use crate::migrate::journal::{Journal, MigrationRecord, Role};

/// Everything decided before the migration starts (target elected, reservation granted).
#[derive(Debug, Clone)]
pub struct SourcePlan {
    pub migration: MigrationId,
    pub workload: WorkloadSpec,
    pub target: NodeId,
    pub target_name: String,
    pub reservation: ReservationId,
    pub mode: MigrationMode,
    /// Dumps go to `images_root/<migration>/round-N` and `.../final`.
    pub images_root: PathBuf,
    /// Pre-copy rounds at most (0 = freeze at once).
    pub max_precopy_rounds: u32,
    /// Another round runs only while it shrinks the bytes to send by this fraction...
    pub min_shrink: f64,
    /// ...and while the last round shipped more than this fraction of the image.
    pub done_fraction: f64,
    /// The target's transfer address, journaled so a restarted source can reach it at once.
    pub target_addr: Option<String>,
}


/// The parts a migration drives; borrowed for its duration.
pub struct Parts<'a, C, L, R> {
    pub journal: &'a Journal,
    pub checkpointer: &'a C,
    pub link: &'a L,
    pub mover: &'a R,
    /// Bounded; events are dropped (never waited for) when the consumer lags, so a slow
    /// terminal can never stretch the freeze.
    pub progress: &'a mpsc::Sender<Progress>,
    /// Cancelling before the freeze rolls back; after it the migration completes or rolls back
    /// on its own, since stopping half-way would leave the workload stopped.
    pub cancel: &'a CancellationToken,
    /// Cancelled when the node must be gone soon (a spot notice): no further pre-copy round
    /// starts and one under way is cut short; the freeze comes at once. Whatever the cut round
    /// already shipped stays in the target's store, so the final image reuses it.
    pub hurry: &'a CancellationToken,
}

impl<C, L, R> Parts<'_, C, L, R> {
    pub(crate) fn report(&self, event: Progress) {
        let _ = self.progress.try_send(event);
    }
    pub(crate) fn phase(&self, phase: SourcePhase) {
        self.report(Progress::Phase { phase: format!("{phase:?}") });
    }
}

/// Runs a migration to the end. On error the workload runs on the source again
/// ([`MigrateError::RolledBack`]) unless the error says otherwise.
pub async fn run<C: Checkpointer, L: TargetLink, R: ResourceMover>(plan: &SourcePlan, parts: &Parts<'_, C, L, R>) -> Result<Summary, MigrateError> {
    let span = info_span!("migrate", migration = %plan.migration, workload = %plan.workload.name, target = %plan.target_name);
    run_inner(plan, parts).instrument(span).await
}

async fn run_inner<C: Checkpointer, L: TargetLink, R: ResourceMover>(plan: &SourcePlan, p: &Parts<'_, C, L, R>) -> Result<Summary, MigrateError> {
    let started = Instant::now();
    let dir = plan.images_root.join(plan.migration.to_string());
    let name = plan.workload.name.as_str();
    let mut rec = MigrationRecord {
        migration: plan.migration,
        workload: name.to_string(),
        peer: plan.target,
        reservation: Some(plan.reservation),
        role: Role::Source(SourcePhase::Reserved),
        image_dir: None,
        provider_state: Vec::new(),
        history: vec![(Role::Source(SourcePhase::Reserved), now_ms())],
        peer_addr: plan.target_addr.clone(),
    };
    p.journal.put(&rec)?;
    p.phase(SourcePhase::Reserved);
    let mut summary = Summary {
        mode: match plan.mode {
            MigrationMode::PreCopy => "pre_copy".into(),
            MigrationMode::PostCopy => "post_copy".into(),
        },
        migration: plan.migration.to_string(),
        workload: name.to_string(),
        target: plan.target_name.clone(),
        ..Summary::default()
    };

    // --- Before the freeze: any failure leaves the workload running here. ---------------
    let running_here = |phase: &'static str, cause: BoxError| roll_back_running(plan, p, phase, cause);

    if let Err(e) = p.link.offer(plan.migration, plan.reservation, &plan.workload, plan.mode).await {
        return running_here("offer", e).await;
    }
    if plan.mode == MigrationMode::PostCopy {
        return super::post_copy::run(plan, p, rec, summary, started).await;
    }
    let mut prev_new: Option<u64> = None;
    let mut round = 0;
    while plan.mode == MigrationMode::PreCopy && round < plan.max_precopy_rounds {
        if p.cancel.is_cancelled() {
            return running_here("pre-copy", "cancelled".into()).await;
        }
        if p.hurry.is_cancelled() {
            info!(round, "node must leave: no further pre-copy round");
            break;
        }
        rec = p.journal.advance_source(&plan.migration, SourcePhase::PreCopy, now_ms())?;
        p.phase(SourcePhase::PreCopy);
        let round_dir = dir.join(format!("round-{round}"));
        let shipped = async {
            fresh_dir(&round_dir)?;
            // Never cut: CRIU would go on dumping in the background and collide with the final dump.
            p.checkpointer.dump(name, &round_dir, true).await?;
            let ship = p.link.ship(plan.migration, &round_dir);
            tokio::select! {
                r = ship => r.map(|(_, s)| Some(s)),
                _ = p.hurry.cancelled() => Ok(None),
            }
        }
        .await;
        // The target holds this round's chunks now; the local copy is not needed again.
        let _ = std::fs::remove_dir_all(&round_dir);
        let ship = match shipped {
            Ok(Some(s)) => s,
            Err(e) => return running_here("pre-copy", e).await,
            Ok(None) => {
                info!(round, "node must leave: pre-copy round cut short, freezing now");
                break;
            }
        };
        info!(round, image_bytes = ship.image_bytes, new_bytes = ship.new_bytes, wire_bytes = ship.wire_bytes, "pre-copy round shipped");
        p.report(Progress::Round { round, image_bytes: ship.image_bytes, new_bytes: ship.new_bytes, wire_bytes: ship.wire_bytes });
        summary.wire_bytes += ship.wire_bytes;
        round += 1;
        let done_bytes = (ship.image_bytes as f64 * plan.done_fraction) as u64;
        if !another_precopy_round(round, plan.max_precopy_rounds, prev_new, ship.new_bytes, plan.min_shrink, done_bytes) {
            break;
        }
        prev_new = Some(ship.new_bytes);
    }
    summary.precopy_rounds = round;

    // --- Freeze. ----------------------------------------------------------------------
    let final_dir = journal_final_dump(p, &mut rec, &dir)?;
    let frozen_at = Instant::now();
    if let Err(e) = fresh_dir(&final_dir) {
        return running_here("final dump", e).await;
    }
    let mut step = Instant::now();
    let dump = match p.checkpointer.dump(name, &final_dir, false).await {
        Ok(d) => d,
        // A failed dump leaves the tree running (CRIU resumes it), so this is a pre-freeze failure.
        Err(e) => return running_here("final dump", e).await,
    };
    summary.image_bytes = dump.image_bytes;
    summary.lap("dump", &mut step);
    crate::sys::fault::crash_point(CrashPoint::FinalDump);
    let (transfer_id, ship) = match p.link.ship(plan.migration, &final_dir).await {
        Ok(x) => x,
        Err(e) => return roll_back_stopped(plan, p, &final_dir, false, "final transfer", e).await,
    };
    summary.lap("ship", &mut step);
    summary.wire_bytes += ship.wire_bytes;
    p.report(Progress::Round { round, image_bytes: ship.image_bytes, new_bytes: ship.new_bytes, wire_bytes: ship.wire_bytes });

    p.journal.advance_source(&plan.migration, SourcePhase::MovingResources, now_ms())?;
    p.phase(SourcePhase::MovingResources);
    let mut state = rec.provider_state.clone();
    let moved = p.mover.move_to_target(&plan.workload, &plan.target, &mut state).await;
    rec = p.journal.get(&plan.migration)?.ok_or(crate::migrate::journal::JournalError::Missing(plan.migration))?;
    rec.provider_state = state;
    p.journal.put(&rec)?;
    if let Err(e) = moved {
        return roll_back_stopped(plan, p, &final_dir, true, "resource move", e).await;
    }
    summary.lap("move", &mut step);
    crate::sys::fault::crash_point(CrashPoint::ResourcesMoved);

    p.journal.advance_source(&plan.migration, SourcePhase::RestoreRequested, now_ms())?;
    p.phase(SourcePhase::RestoreRequested);
    if let Err(e) = p.link.restore(plan.migration, transfer_id).await {
        if let Some(e) = restore_failed(plan, p, e).await? {
            return roll_back_stopped(plan, p, &final_dir, true, "restore on target", e).await;
        }
    }
    summary.lap("restore", &mut step);
    summary.freeze_ms = frozen_at.elapsed().as_millis() as u64;
    p.journal.advance_source(&plan.migration, SourcePhase::Confirmed, now_ms())?;
    p.phase(SourcePhase::Confirmed);

    finish(plan.migration, name, &dir, p).await?;
    summary.dedup_saved_bytes = summary_saved(&summary);
    summary.total_ms = started.elapsed().as_millis() as u64;
    info!(freeze_ms = summary.freeze_ms, steps = ?summary.freeze_steps_ms, wire_bytes = summary.wire_bytes, total_ms = summary.total_ms, "migration done");
    p.report(Progress::Done(summary.clone()));
    Ok(summary)
}

/// Journals `FinalDump` with the final image's directory before the freeze; returns it.
pub(crate) fn journal_final_dump<C, L, R>(p: &Parts<'_, C, L, R>, rec: &mut MigrationRecord, dir: &Path) -> Result<PathBuf, MigrateError> {
    let final_dir = dir.join("final");
    rec.image_dir = Some(final_dir.clone());
    rec.role = Role::Source(SourcePhase::FinalDump);
    rec.history.push((rec.role, now_ms()));
    p.journal.put(rec)?;
    p.phase(SourcePhase::FinalDump);
    Ok(final_dir)
}

/// After a failed restore request: did the workload come up anyway (reply lost)? Only a clear
/// "no" from the target allows bringing it back here: `Ok(Some(cause))` then, `Ok(None)` if it
/// runs there, [`MigrateError::InDoubt`] if the target cannot say.
pub(crate) async fn restore_failed<C, L: TargetLink, R>(plan: &SourcePlan, p: &Parts<'_, C, L, R>, e: BoxError) -> Result<Option<BoxError>, MigrateError> {
    match p.link.status(plan.migration).await {
        Ok(TargetReport::Phase(TargetPhase::Running)) => {
            info!("restore reply lost but the target runs the workload");
            Ok(None)
        }
        Ok(_) => Ok(Some(e)),
        Err(status_err) => Err(MigrateError::InDoubt {
            migration: plan.migration,
            workload: plan.workload.name.clone(),
            cause: format!("{e}; status query: {status_err}").into(),
        }),
    }
}

/// Gives up before the freeze (or after a dump that left the workload running): tell the
/// target, give the reservation back, journal the rollback.
pub(crate) async fn roll_back_running<C: Checkpointer, L: TargetLink, R>(plan: &SourcePlan, p: &Parts<'_, C, L, R>, phase: &'static str, cause: BoxError) -> Result<Summary, MigrateError> {
    warn!(phase, error = %cause, "migration failed before the freeze; workload still runs here");
    let _ = p.link.abort(plan.migration, &cause.to_string()).await;
    let _ = p.link.release(plan.reservation).await;
    p.journal.advance_source(&plan.migration, SourcePhase::RolledBack, now_ms())?;
    p.report(Progress::RolledBack { reason: cause.to_string() });
    Err(MigrateError::RolledBack { workload: plan.workload.name.clone(), phase, cause })
}

/// Image bytes that did not have to cross the wire: every round's image minus what was sent.
pub(crate) fn summary_saved(s: &Summary) -> u64 {
    (s.image_bytes * (s.precopy_rounds as u64 + 1)).saturating_sub(s.wire_bytes)
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
    cause: BoxError,
) -> Result<Summary, MigrateError> {
    let post_copy = plan.mode == MigrationMode::PostCopy;
    warn!(phase, error = %cause, resources_moved, post_copy, "migration failed after the freeze; bringing the workload back on this node");
    let _ = p.link.abort(plan.migration, &cause.to_string()).await;
    let name = plan.workload.name.clone();
    let result = async {
        // Pre-copy asks the mover even when nothing moved: the dead workload's volume may need
        // staging on this node before the local restore (the mover's move_back is idempotent).
        if resources_moved || !post_copy {
            let mut rec = p.journal.get(&plan.migration)?.ok_or(crate::migrate::journal::JournalError::Missing(plan.migration))?;
            let back = match post_copy {
                true => p.mover.move_back_shared(&plan.workload, &mut rec.provider_state).await,
                false => p.mover.move_back(&plan.workload, &mut rec.provider_state).await,
            };
            p.journal.put(&rec)?;
            back?;
        }
        match post_copy {
            true => p.checkpointer.abort_lazy(&name, final_dir).await,
            false => p.checkpointer.restore_local(&name, final_dir).await,
        }
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

pub(crate) fn fresh_dir(dir: &Path) -> Result<(), BoxError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}
