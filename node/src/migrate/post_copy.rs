//! Post-copy migration (`MigrationMode::PostCopy`): freeze, restore on the target first, let the
//! memory follow.
//!
//! 1. `criu dump --lazy-pages` freezes the workload and writes everything but its memory; the
//!    memory stays behind CRIU's page server (loopback in the workload's namespace), fronted by a
//!    relay on this node's transfer address that admits only the target
//!    ([`super::page_relay`]). Journal: `FinalDump`.
//! 2. Only the small non-page image files travel over our QUIC transfer.
//! 3. Volume and address move (`MovingResources`); the volume is *shared* while the frozen tree
//!    still holds it.
//! 4. `RestoreRequested`: the target starts `criu lazy-pages` against the relay, then
//!    `criu restore --lazy-pages`; the workload runs and its pages fault in from here.
//! 5. `Confirmed`: the relay lets the stream end; CRIU stops the frozen tree once every page was
//!    fetched; then clean-up (`CleanedUp`).
//!
//! Rollback rule: until the target's restore succeeded, any failure resumes the frozen tree
//! here (nothing is restored, nothing copied back). After it, the source must keep serving
//! pages until the target's lazy-pages daemon finished.
//!
//! # Trade-off (why pre-copy is the default)
//! Post-copy has the shortest freeze (no memory crosses the wire while the workload is stopped),
//! but for the length of the page stream the workload lives on two machines at once: if the
//! source node dies mid-stream, the pages it had not sent yet are gone and the workload is lost
//! on both sides (the target stops its copy rather than run with holes in its memory). The
//! page stream is also CRIU's own TCP protocol on the LAN, not our authenticated, encrypted
//! QUIC. Pre-copy never has a moment where the workload depends on two nodes.

use std::time::Instant;

use hotspot_protocol::handoff::SourcePhase;
use tracing::{info, warn};

use super::lazy_dump::PAGE_STREAM_TIMEOUT;
use super::source::{finish, fresh_dir, journal_final_dump, restore_failed, roll_back_running, roll_back_stopped, summary_saved, Parts, SourcePlan};
use super::{Checkpointer, MigrateError, Progress, ResourceMover, Summary, TargetLink};
use super::journal::{JournalError, MigrationRecord};
use crate::sys::clock::now_ms;
use crate::sys::fault::CrashPoint;

pub(crate) async fn run<C: Checkpointer, L: TargetLink, R: ResourceMover>(
    plan: &SourcePlan,
    p: &Parts<'_, C, L, R>,
    mut rec: MigrationRecord,
    mut summary: Summary,
    started: Instant,
) -> Result<Summary, MigrateError> {
    let name = plan.workload.name.as_str();
    let dir = plan.images_root.join(plan.migration.to_string());
    let final_dir = journal_final_dump(p, &mut rec, &dir)?;

    let frozen_at = Instant::now();
    if let Err(e) = fresh_dir(&final_dir) {
        return roll_back_running(plan, p, "lazy dump", e).await;
    }
    let mut step = Instant::now();
    let (dump, page_server) = match p.checkpointer.dump_lazy(name, &final_dir, p.link.peer_ip()).await {
        Ok(x) => x,
        // A dump that failed before serving pages left the workload running (CRIU resumes it).
        Err(e) => return roll_back_running(plan, p, "lazy dump", e).await,
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
    p.report(Progress::Round { round: 0, image_bytes: ship.image_bytes, new_bytes: ship.new_bytes, wire_bytes: ship.wire_bytes });

    p.journal.advance_source(&plan.migration, SourcePhase::MovingResources, now_ms())?;
    p.phase(SourcePhase::MovingResources);
    let mut state = rec.provider_state.clone();
    let moved = p.mover.move_to_target_shared(&plan.workload, &plan.target, &mut state).await;
    save_state(p, plan, state)?;
    if let Err(e) = moved {
        return roll_back_stopped(plan, p, &final_dir, true, "resource move", e).await;
    }
    summary.lap("move", &mut step);
    crate::sys::fault::crash_point(CrashPoint::ResourcesMoved);

    p.journal.advance_source(&plan.migration, SourcePhase::RestoreRequested, now_ms())?;
    p.phase(SourcePhase::RestoreRequested);
    if let Err(e) = p.link.restore_lazy(plan.migration, transfer_id, page_server).await {
        if let Some(e) = restore_failed(plan, p, e).await? {
            return roll_back_stopped(plan, p, &final_dir, true, "restore on target", e).await;
        }
    }
    summary.lap("restore", &mut step);
    summary.freeze_ms = frozen_at.elapsed().as_millis() as u64;
    p.journal.advance_source(&plan.migration, SourcePhase::Confirmed, now_ms())?;
    p.phase(SourcePhase::Confirmed);
    p.report(Progress::Phase { phase: "StreamingPages".into() });

    let streaming = Instant::now();
    match p.checkpointer.finish_lazy(name, PAGE_STREAM_TIMEOUT).await {
        Ok(bytes) => {
            summary.page_bytes = bytes;
            summary.wire_bytes += bytes;
        }
        Err(cause) => {
            // Past the point of no return: the target runs the workload and holds its address.
            warn!(error = %cause, "post-copy page stream failed after the restore");
            finish(plan.migration, name, &dir, p).await?;
            return Err(MigrateError::PostCopyLost { workload: name.to_string(), cause });
        }
    }
    summary.page_stream_ms = streaming.elapsed().as_millis() as u64;
    finish(plan.migration, name, &dir, p).await?;
    summary.image_bytes += summary.page_bytes;
    summary.dedup_saved_bytes = summary_saved(&summary);
    summary.total_ms = started.elapsed().as_millis() as u64;
    info!(freeze_ms = summary.freeze_ms, steps = ?summary.freeze_steps_ms, page_bytes = summary.page_bytes, page_stream_ms = summary.page_stream_ms, total_ms = summary.total_ms, "post-copy migration done");
    p.report(Progress::Done(summary.clone()));
    Ok(summary)
}

fn save_state<C, L, R>(p: &Parts<'_, C, L, R>, plan: &SourcePlan, state: Vec<u8>) -> Result<(), JournalError> {
    let mut rec = p.journal.get(&plan.migration)?.ok_or(JournalError::Missing(plan.migration))?;
    rec.provider_state = state;
    p.journal.put(&rec)
}
