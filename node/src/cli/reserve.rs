//! `hotspot-node reserve` / `release`: ask a peer to hold capacity (what a migration does first).

use std::time::Duration;

use anyhow::{bail, Result};
use hotspot_node::daemon::control::{ReserveParams, Reply, Request};
use hotspot_protocol::Resources;

use super::peers::{resources, ControlArgs};

#[derive(Debug, clap::Args)]
pub struct ReserveArgs {
    /// Target peer (name or node-id prefix). Without it, the best peer by price and capacity is
    /// elected, and the next ones are tried on denial.
    #[arg(long)]
    pub peer: Option<String>,
    /// Workload the capacity is for.
    #[arg(long, default_value = "manual")]
    pub workload: String,
    /// CPUs needed (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    pub cpus: f64,
    /// Memory needed, MiB.
    #[arg(long, default_value_t = 0)]
    pub memory_mib: u64,
    /// Disk needed, MiB.
    #[arg(long, default_value_t = 0)]
    pub disk_mib: u64,
    /// How long the target holds it unless released, seconds (targets cap it at 600).
    #[arg(long, default_value_t = 60)]
    pub ttl_secs: u64,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// Target peer holding the reservation (name or node id).
    #[arg(long)]
    pub peer: String,
    /// Reservation id (32 hex digits, from `reserve` or `status`).
    pub id: String,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Exit code 0 when granted, 2 when every candidate denied.
pub fn run(args: &ReserveArgs) -> Result<i32> {
    if !(args.cpus.is_finite() && args.cpus >= 0.0) {
        bail!("--cpus must be a non-negative number");
    }
    let needs = Resources {
        cpu_millis: (args.cpus * 1000.0).round() as u32,
        memory_bytes: args.memory_mib << 20,
        disk_bytes: args.disk_mib << 20,
    };
    let request = Request::Reserve(ReserveParams {
        peer: args.peer.clone(),
        workload: args.workload.clone(),
        needs,
        ttl_ms: args.ttl_secs.saturating_mul(1000).max(1),
        volume_zone: None,
    });
    let Reply::Reserve(outcome) = args.control.call(&request, Duration::from_secs(60))? else {
        bail!("daemon sent an unexpected reply to `reserve`");
    };
    if args.control.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        for a in &outcome.attempts {
            println!("{:<16} {}  {}", a.name, &a.peer[..12], a.outcome);
        }
        match &outcome.granted {
            Some(r) => println!("reserved {} on {} as {} (expires_at_ms {})", resources(&r.needs), &r.peer[..12], r.id, r.expires_at_ms),
            None if outcome.attempts.is_empty() => println!("no eligible peer for {}", resources(&needs)),
            None => println!("every candidate denied"),
        }
    }
    Ok(if outcome.granted.is_some() { 0 } else { 2 })
}

pub fn release(args: &ReleaseArgs) -> Result<i32> {
    let request = Request::Release { peer: args.peer.clone(), id: args.id.clone() };
    let Reply::Released { released } = args.control.call(&request, Duration::from_secs(30))? else {
        bail!("daemon sent an unexpected reply to `release`");
    };
    if args.control.json {
        println!("{}", serde_json::json!({ "released": released }));
    } else {
        println!("released {}", args.id);
    }
    Ok(0)
}
