//! `hotspot-node drain`, `notice` and `price`: the operator's handles on the node's triggers.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hotspot_node::daemon::control::{self, Reply, Request};
use hotspot_node::daemon::api::{EvacuationEvent, EvacuationReport};
use hotspot_node::migrate::Progress;

use super::migrate::summary_text;
use super::peers::ControlArgs;

#[derive(Debug, clap::Args)]
#[command(after_help = "The node advertises `draining` at once, denies new reservations (sources are told \
\"target is draining\") and moves every workload to the node elected by price and capacity, largest first, one \
after another. It stays draining until `hotspot-node drain --cancel`. Exit code 0 when every workload moved.")]
pub struct DrainArgs {
    /// Take workloads again (back to healthy); also `hotspot-node undrain`.
    #[arg(long)]
    pub cancel: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "A spot interruption notice given by hand (on EC2 the daemon polls the metadata service \
itself when `triggers.imds = true`; `triggers.notice_file` is a file whose appearance is a notice). The node \
announces `leaving` at once, so no peer elects it any more, and moves every workload off before the deadline, \
largest first. Leaving cannot be undone. Exit code 0 when every workload moved in time.")]
pub struct NoticeArgs {
    /// Seconds until the node goes away [default: triggers.notice_deadline_secs, 120].
    #[arg(long)]
    pub deadline_secs: Option<u64>,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Pins the price this node advertises, as a spot market would change it; peers' price \
triggers react within seconds. `--clear` returns to the configured price source.")]
pub struct PriceArgs {
    /// USD per hour to advertise.
    #[arg(required_unless_present = "clear")]
    pub usd_per_hour: Option<f64>,
    /// Return to the configured price source.
    #[arg(long, conflicts_with = "usd_per_hour")]
    pub clear: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

fn event_line(event: &EvacuationEvent, started: Instant) -> Option<String> {
    let t = started.elapsed().as_secs_f64();
    Some(match event {
        EvacuationEvent::Started { trigger, workloads, deadline_ms } => format!(
            "[{t:>6.1}s] {trigger}: {} workload(s) to move{}: {}",
            workloads.len(),
            deadline_ms.map_or(String::new(), |d| format!(" within {:.0}s", d as f64 / 1000.0)),
            workloads.join(", ")
        ),
        EvacuationEvent::Moving { workload, index, total } => format!("[{t:>6.1}s] ({}/{total}) moving {workload}", index + 1),
        EvacuationEvent::Progress { workload, progress: Progress::Phase { phase } } => format!("[{t:>6.1}s]   {workload}: {phase}"),
        EvacuationEvent::Progress { .. } => return None,
        EvacuationEvent::Moved { summary, .. } => format!("[{t:>6.1}s]   {}", summary_text(summary)),
        EvacuationEvent::Failed { workload, error } => format!("[{t:>6.1}s]   {workload} NOT moved: {error}"),
    })
}

fn report_text(r: &EvacuationReport) -> String {
    let mut out = format!(
        "{}: moved {}, failed {}, left behind {} in {:.1}s; node is {}",
        r.trigger,
        r.moved.len(),
        r.failed.len(),
        r.left_behind.len(),
        r.took_ms as f64 / 1000.0,
        r.state
    );
    if let Some(met) = r.deadline_met {
        out += if met { " (deadline met)" } else { " (DEADLINE MISSED)" };
    }
    for f in &r.failed {
        out += &format!("\n  {}: {}", f.workload, f.error);
    }
    if !r.left_behind.is_empty() {
        out += &format!("\n  left behind: {}", r.left_behind.join(", "));
    }
    out
}

/// Streams an evacuation's progress; exit code 0 when everything moved (in time).
fn evacuate(control: &ControlArgs, request: &Request) -> Result<i32> {
    let started = Instant::now();
    let reply = control::call_stream(&control.socket, request, Duration::from_secs(600), |reply| {
        let Reply::Evacuation { event } = reply else { return };
        if control.json {
            println!("{}", serde_json::to_string(event).unwrap_or_default());
        } else if let Some(line) = event_line(event, started) {
            eprintln!("{line}");
        }
    })?;
    match reply {
        Reply::Evacuated { report } => {
            if control.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report_text(&report));
            }
            Ok(if report.failed.is_empty() && report.left_behind.is_empty() && report.deadline_met != Some(false) { 0 } else { 1 })
        }
        Reply::Error { message } => bail!("daemon: {message}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

pub fn drain(args: &DrainArgs) -> Result<i32> {
    if !args.cancel {
        return evacuate(&args.control, &Request::Drain { cancel: false });
    }
    match args.control.call(&Request::Drain { cancel: true }, Duration::from_secs(10))? {
        Reply::State { state } if args.control.json => println!("{}", serde_json::json!({ "state": state })),
        Reply::State { state } => println!("node is {state}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
    Ok(0)
}

pub fn notice(args: &NoticeArgs) -> Result<i32> {
    evacuate(&args.control, &Request::Notice { deadline_secs: args.deadline_secs })
}

pub fn price(args: &PriceArgs) -> Result<i32> {
    let request = Request::SetPrice { price_per_hour: if args.clear { None } else { args.usd_per_hour } };
    match args.control.call(&request, Duration::from_secs(10))? {
        Reply::PriceSet { price_per_hour } if args.control.json => println!("{}", serde_json::json!({ "price_per_hour": price_per_hour })),
        Reply::PriceSet { price_per_hour } => println!("advertising {price_per_hour:.4} USD/h"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
    Ok(0)
}
