//! `hotspot-node migrate WORKLOAD --to PEER|auto`: move a running workload to another node
//! through the local daemon, with a progress line (phase, bytes, rate) and a final summary.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hotspot_node::daemon::control::{self, Reply, Request};
use hotspot_node::migrate::{Progress, Summary};
use hotspot_protocol::migration::MigrationMode;

use super::peers::ControlArgs;

#[derive(Debug, clap::Args)]
#[command(after_help = "The daemon reserves capacity on the target, ships a first image while the workload runs, \
then freezes it, ships only the chunks that changed, moves its address and restores it there. On any failure \
the workload keeps running (or is restored) on this node. Exit code 0 when moved, 1 otherwise.

--post-copy restores on the target first and streams the memory after (CRIU lazy pages): the shortest \
freeze, but until the last page arrived the workload depends on both nodes, and it is lost if this node \
dies mid-stream. The page stream is CRIU's own TCP protocol between the two nodes' transfer addresses, \
outside the authenticated QUIC connection. Pre-copy (the default) never depends on two nodes at once.")]
pub struct MigrateArgs {
    /// Workload to move (see `hotspot-node workload list`).
    pub workload: String,
    /// Target peer: a name or node-id prefix from `hotspot-node peers`, or `auto` to elect the
    /// best by price and capacity (the next candidates are tried if it refuses).
    #[arg(long)]
    pub to: String,
    /// Post-copy: restore first, memory follows (shortest freeze; see below for the risk).
    #[arg(long)]
    pub post_copy: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn summary_text(s: &Summary) -> String {
    format!(
        "moved {} to {} in {} ms: frozen {} ms{}, {:.1} MiB image, {:.1} MiB on the wire, {:.1} MiB saved by dedup, {} pre-copy round(s){}",
        s.workload,
        s.target,
        s.total_ms,
        s.freeze_ms,
        freeze_steps(s),
        mib(s.image_bytes),
        mib(s.wire_bytes),
        mib(s.dedup_saved_bytes),
        s.precopy_rounds,
        if s.mode == "post_copy" { format!(", post-copy: {:.1} MiB of memory streamed in {} ms after the restore", mib(s.page_bytes), s.page_stream_ms) } else { String::new() }
    )
}

/// ` (dump 210 ms, ship 80 ms, move 40 ms, restore 300 ms)`, or nothing for an old daemon.
fn freeze_steps(s: &Summary) -> String {
    if s.freeze_steps_ms.is_empty() {
        return String::new();
    }
    let steps: Vec<String> = s.freeze_steps_ms.iter().map(|(n, ms)| format!("{n} {ms} ms")).collect();
    format!(" ({})", steps.join(", "))
}

pub fn run(args: &MigrateArgs) -> Result<i32> {
    let to = (args.to != "auto").then(|| args.to.clone());
    let mode = args.post_copy.then_some(MigrationMode::PostCopy);
    let request = Request::Migrate { workload: args.workload.clone(), to, mode };
    let started = Instant::now();
    let mut phase = String::from("Starting");
    let mut last_bytes = (Instant::now(), 0u64);
    let tty = !args.control.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut stderr = std::io::stderr();
    let reply = control::call_stream(&args.control.socket, &request, Duration::from_secs(600), |reply| {
        let Reply::Progress { progress } = reply else { return };
        if matches!(progress, Progress::Done(_)) {
            return; // the final reply carries the summary
        }
        if args.control.json {
            println!("{}", serde_json::to_string(progress).unwrap_or_default());
            return;
        }
        let line = match progress {
            Progress::Phase { phase: p } => {
                phase = p.clone();
                format!("[{:>6.1}s] {phase}", started.elapsed().as_secs_f64())
            }
            Progress::Bytes { image_bytes, wanted_bytes, sent_bytes } => {
                let (t, b) = last_bytes;
                let rate = sent_bytes.saturating_sub(b) as f64 / t.elapsed().as_secs_f64().max(1e-3);
                last_bytes = (Instant::now(), *sent_bytes);
                let pct = if *wanted_bytes > 0 { 100.0 * *sent_bytes as f64 / *wanted_bytes as f64 } else { 100.0 };
                format!(
                    "[{:>6.1}s] {phase}: {:.1}/{:.1} MiB new of {:.1} MiB image ({pct:.0}%), {:.1} MiB/s",
                    started.elapsed().as_secs_f64(),
                    mib(*sent_bytes),
                    mib(*wanted_bytes),
                    mib(*image_bytes),
                    mib(rate as u64)
                )
            }
            Progress::Round { round, image_bytes, new_bytes, wire_bytes } => format!(
                "[{:>6.1}s] image {round} shipped: {:.1} MiB image, {:.1} MiB new, {:.1} MiB on the wire",
                started.elapsed().as_secs_f64(),
                mib(*image_bytes),
                mib(*new_bytes),
                mib(*wire_bytes)
            ),
            Progress::RolledBack { reason } => format!("rolled back: {reason}"),
            Progress::Done(_) => return,
        };
        if tty && matches!(progress, Progress::Bytes { .. }) {
            let _ = write!(stderr, "\r{line:<100}");
        } else {
            let _ = writeln!(stderr, "{}{line}", if tty { "\r" } else { "" });
        }
    })?;
    match reply {
        Reply::Migrated { summary } => {
            if args.control.json {
                println!("{}", serde_json::to_string(&Progress::Done(summary.clone()))?);
            } else {
                println!("{}", summary_text(&summary));
            }
            Ok(0)
        }
        Reply::Error { message } => bail!("migration failed: {message}"),
        // The stream ended on a progress line: the daemon stopped (crashed or was killed) mid-way.
        Reply::Progress { progress } => bail!(
            "the daemon stopped answering during the migration (last step: {}); its journal resumes or rolls the \
             migration back when it starts again: see `hotspot-node status` and the daemon's log",
            progress_step(&progress)
        ),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// A short name of the last progress line, for the message when the daemon stops mid-way.
fn progress_step(p: &Progress) -> String {
    match p {
        Progress::Phase { phase } => phase.clone(),
        Progress::Bytes { .. } => "sending the image".into(),
        Progress::Round { round, .. } => format!("image {round} shipped"),
        Progress::RolledBack { .. } => "rolling back".into(),
        Progress::Done(_) => "done".into(),
    }
}
