//! The source side of a migration, written once for both modes: pre-copy rounds (pre-copy
//! only), then the freeze — dump, ship, move, restore, confirm — journaled write-ahead and
//! rolled back on failure ([`super::outcome`]).
//!
//! The modes differ in three places of the freeze:
//! - **dump**: pre-copy's final dump writes all memory and stops the workload; post-copy's
//!   `criu dump --lazy-pages` freezes it and writes everything but its memory, which stays
//!   behind a page server that only the target may reach.
//! - **move**: post-copy *shares* the volume while the frozen tree still holds it.
//! - **restore**: post-copy's target restores with its memory fetched from that page server,
//!   and after the confirm the source serves pages until the target has them all.
//!
//! Rollback rule: until the target's restore succeeded, any failure brings the workload back
//! here (pre-copy restores it from the final image, post-copy resumes the frozen tree).
//!
//! # Trade-off (why pre-copy is the default)
//! Post-copy has the shortest freeze (no memory crosses the wire while the workload is stopped),
//! but for the length of the page stream the workload lives on two machines at once: if the
//! source node dies mid-stream, the pages it had not sent yet are gone and the workload is lost
//! on both sides (the target stops its copy rather than run with holes in its memory). The
//! page stream is also CRIU's own TCP protocol on the LAN, not our authenticated, encrypted
//! QUIC. Pre-copy never has a moment where the workload depends on two nodes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hotspot_protocol::handoff::{another_precopy_round, SourcePhase};
use hotspot_protocol::migration::MigrationMode;
use tracing::{info, info_span, warn, Instrument};

use super::journal::{JournalError, MigrationRecord, Role};
use super::lazy_dump::PAGE_STREAM_TIMEOUT;
use super::outcome::{finish, restore_failed, roll_back_running, roll_back_stopped};
pub use super::plan::{Parts, SourcePlan};
use super::{Checkpointer, MigrateError, Progress, ResourceMover, ShipReport, StepError, Summary, TargetLink};
use crate::sys::clock::now_ms;
use crate::sys::fault::{crash_point, CrashPoint};

/// Runs a migration to the end. On error the workload runs on the source again
/// ([`MigrateError::RolledBack`]) unless the error says otherwise.
pub async fn run<C: Checkpointer, L: TargetLink, R: ResourceMover>(plan: &SourcePlan, parts: &Parts<'_, C, L, R>) -> Result<Summary, MigrateError> {
    let span = info_span!("migrate", migration = %plan.migration, workload = %plan.workload.name, target = %plan.target_name, mode = ?plan.mode);
    run_inner(plan, parts).instrument(span).await
}

async fn run_inner<C: Checkpointer, L: TargetLink, R: ResourceMover>(plan: &SourcePlan, p: &Parts<'_, C, L, R>) -> Result<Summary, MigrateError> {
    let started = Instant::now();
    let name = plan.workload.name.as_str();
    let rec = MigrationRecord {
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
    if let Err(e) = p.link.offer(plan.migration, plan.reservation, &plan.workload, plan.mode).await {
        return roll_back_running(plan, p, "offer", e.into()).await;
    }
    if plan.mode == MigrationMode::PreCopy {
        match precopy_rounds(plan, p, &mut summary).await? {
            Rounds::Shipped(rounds) => summary.precopy_rounds = rounds,
            Rounds::Failed(cause) => return roll_back_running(plan, p, "pre-copy", cause).await,
        }
    }
    freeze(plan, p, rec, summary, started).await
}

/// How the pre-copy rounds ended.
enum Rounds {
    /// This many rounds shipped; the freeze comes next.
    Shipped(u32),
    /// A round failed; the workload still runs here.
    Failed(StepError),
}

/// Pre-copy: dumps of the running workload, shipped while it runs, until another round would
/// not shrink what is left to send (or the node must leave).
async fn precopy_rounds<C: Checkpointer, L: TargetLink, R>(plan: &SourcePlan, p: &Parts<'_, C, L, R>, summary: &mut Summary) -> Result<Rounds, MigrateError> {
    let dir = images_dir(plan);
    let mut prev_new: Option<u64> = None;
    let mut round = 0;
    while round < plan.max_precopy_rounds {
        if p.cancel.is_cancelled() {
            return Ok(Rounds::Failed(StepError::Cancelled));
        }
        if p.hurry.is_cancelled() {
            info!(round, "node must leave: no further pre-copy round");
            break;
        }
        p.journal.advance_source(&plan.migration, SourcePhase::PreCopy, now_ms())?;
        p.phase(SourcePhase::PreCopy);
        let round_dir = dir.join(format!("round-{round}"));
        let shipped: Result<Option<ShipReport>, StepError> = async {
            fresh_dir(&round_dir)?;
            // Never cut: CRIU would go on dumping in the background and collide with the final dump.
            p.checkpointer.dump(&plan.workload.name, &round_dir, true).await?;
            let ship = p.link.ship(plan.migration, &round_dir);
            tokio::select! {
                r = ship => r.map(|(_, s)| Some(s)).map_err(Into::into),
                _ = p.hurry.cancelled() => Ok(None),
            }
        }
        .await;
        // The target holds this round's chunks now; the local copy is not needed again.
        let _ = std::fs::remove_dir_all(&round_dir);
        let ship = match shipped {
            Ok(Some(s)) => s,
            Err(e) => return Ok(Rounds::Failed(e)),
            Ok(None) => {
                info!(round, "node must leave: pre-copy round cut short, freezing now");
                break;
            }
        };
        info!(round, image_bytes = ship.image_bytes, new_bytes = ship.new_bytes, wire_bytes = ship.wire_bytes, "pre-copy round shipped");
        report_round(p, round, &ship);
        summary.wire_bytes += ship.wire_bytes;
        round += 1;
        let done_bytes = (ship.image_bytes as f64 * plan.done_fraction) as u64;
        if !another_precopy_round(round, plan.max_precopy_rounds, prev_new, ship.new_bytes, plan.min_shrink, done_bytes) {
            break;
        }
        prev_new = Some(ship.new_bytes);
    }
    Ok(Rounds::Shipped(round))
}

/// The freeze: dump, ship, move, restore, confirm; post-copy then streams the memory.
async fn freeze<C: Checkpointer, L: TargetLink, R: ResourceMover>(
    plan: &SourcePlan,
    p: &Parts<'_, C, L, R>,
    mut rec: MigrationRecord,
    mut summary: Summary,
    started: Instant,
) -> Result<Summary, MigrateError> {
    let name = plan.workload.name.as_str();
    let dir = images_dir(plan);
    let lazy = plan.mode == MigrationMode::PostCopy;
    let dump_phase = if lazy { "lazy dump" } else { "final dump" };
    let final_dir = journal_final_dump(p, &mut rec, &dir)?;
    let frozen_at = Instant::now();
    if let Err(e) = fresh_dir(&final_dir) {
        return roll_back_running(plan, p, dump_phase, e).await;
    }

    // 1. Dump. A failed dump leaves the tree running (CRIU resumes it): a pre-freeze failure.
    let mut step = Instant::now();
    let dumped = match lazy {
        false => p.checkpointer.dump(name, &final_dir, false).await.map(|d| (d, None)),
        true => p.checkpointer.dump_lazy(name, &final_dir, p.link.peer_ip()).await.map(|(d, server)| (d, Some(server))),
    };
    let (dump, page_server): (_, Option<SocketAddr>) = match dumped {
        Ok(x) => x,
        Err(e) => return roll_back_running(plan, p, dump_phase, e.into()).await,
    };
    summary.image_bytes = dump.image_bytes;
    summary.lap("dump", &mut step);
    crash_point(CrashPoint::FinalDump);

    // 2. Ship the final image (post-copy: only the small non-page files).
    let (transfer_id, ship) = match p.link.ship(plan.migration, &final_dir).await {
        Ok(x) => x,
        Err(e) => return roll_back_stopped(plan, p, &final_dir, false, "final transfer", e.into()).await,
    };
    summary.lap("ship", &mut step);
    summary.wire_bytes += ship.wire_bytes;
    report_round(p, summary.precopy_rounds, &ship);

    // 3. Move the volume and the address.
    p.journal.advance_source(&plan.migration, SourcePhase::MovingResources, now_ms())?;
    p.phase(SourcePhase::MovingResources);
    let mut state = rec.provider_state.clone();
    let moved = match lazy {
        false => p.mover.move_to_target(&plan.workload, &plan.target, &mut state).await,
        true => p.mover.move_to_target_shared(&plan.workload, &plan.target, &mut state).await,
    };
    save_provider_state(p, plan, state)?;
    if let Err(e) = moved {
        return roll_back_stopped(plan, p, &final_dir, true, "resource move", e.into()).await;
    }
    summary.lap("move", &mut step);
    crash_point(CrashPoint::ResourcesMoved);

    // 4. Restore on the target. Only its clear "no" lets the workload come back here.
    p.journal.advance_source(&plan.migration, SourcePhase::RestoreRequested, now_ms())?;
    p.phase(SourcePhase::RestoreRequested);
    let restored = match page_server {
        None => p.link.restore(plan.migration, transfer_id).await,
        Some(server) => p.link.restore_lazy(plan.migration, transfer_id, server).await,
    };
    if let Err(e) = restored {
        if let Some(e) = restore_failed(plan, p, e).await? {
            return roll_back_stopped(plan, p, &final_dir, true, "restore on target", e.into()).await;
        }
    }
    summary.lap("restore", &mut step);
    summary.freeze_ms = frozen_at.elapsed().as_millis() as u64;
    p.journal.advance_source(&plan.migration, SourcePhase::Confirmed, now_ms())?;
    p.phase(SourcePhase::Confirmed);

    // 5. Post-copy: the target runs the workload; serve its memory until it has it all.
    if lazy {
        p.report(Progress::Phase { phase: "StreamingPages".into() });
        let streaming = Instant::now();
        match p.checkpointer.finish_lazy(name, PAGE_STREAM_TIMEOUT).await {
            Ok(bytes) => {
                summary.page_bytes = bytes;
                summary.wire_bytes += bytes;
                summary.image_bytes += bytes;
            }
            Err(cause) => {
                // Past the point of no return: the target runs the workload and holds its address.
                warn!(error = %cause, "post-copy page stream failed after the restore");
                finish(plan.migration, name, &dir, p).await?;
                return Err(MigrateError::PostCopyLost { workload: name.to_string(), cause: cause.into() });
            }
        }
        summary.page_stream_ms = streaming.elapsed().as_millis() as u64;
    }

    finish(plan.migration, name, &dir, p).await?;
    summary.dedup_saved_bytes = saved_bytes(&summary);
    summary.total_ms = started.elapsed().as_millis() as u64;
    info!(freeze_ms = summary.freeze_ms, steps = ?summary.freeze_steps_ms, wire_bytes = summary.wire_bytes, page_bytes = summary.page_bytes,
          page_stream_ms = summary.page_stream_ms, total_ms = summary.total_ms, "migration done");
    p.report(Progress::Done(summary.clone()));
    Ok(summary)
}

/// Where this migration's dumps go: `images_root/<migration>/round-N` and `.../final`.
fn images_dir(plan: &SourcePlan) -> PathBuf {
    plan.images_root.join(plan.migration.to_string())
}

fn report_round<C, L, R>(p: &Parts<'_, C, L, R>, round: u32, ship: &ShipReport) {
    p.report(Progress::Round { round, image_bytes: ship.image_bytes, new_bytes: ship.new_bytes, wire_bytes: ship.wire_bytes });
}

/// Journals `FinalDump` with the final image's directory before the freeze; returns it.
fn journal_final_dump<C, L, R>(p: &Parts<'_, C, L, R>, rec: &mut MigrationRecord, dir: &Path) -> Result<PathBuf, MigrateError> {
    let final_dir = dir.join("final");
    rec.image_dir = Some(final_dir.clone());
    rec.role = Role::Source(SourcePhase::FinalDump);
    rec.history.push((rec.role, now_ms()));
    p.journal.put(rec)?;
    p.phase(SourcePhase::FinalDump);
    Ok(final_dir)
}

/// The provider's record goes into the journal whether or not its step succeeded: it says
/// what was done before a failure, which the rollback (or a restarted node) needs.
fn save_provider_state<C, L, R>(p: &Parts<'_, C, L, R>, plan: &SourcePlan, state: Vec<u8>) -> Result<(), JournalError> {
    let mut rec = p.journal.get(&plan.migration)?.ok_or(JournalError::Missing(plan.migration))?;
    rec.provider_state = state;
    p.journal.put(&rec)
}

/// Image bytes that did not have to cross the wire: every round's image minus what was sent.
fn saved_bytes(s: &Summary) -> u64 {
    (s.image_bytes * (s.precopy_rounds as u64 + 1)).saturating_sub(s.wire_bytes)
}

fn fresh_dir(dir: &Path) -> Result<(), StepError> {
    let failed = |op: &'static str| move |source| StepError::Images { op, path: dir.to_path_buf(), source };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(failed("removing old images in"))?;
    }
    std::fs::create_dir_all(dir).map_err(failed("creating image directory"))?;
    Ok(())
}
