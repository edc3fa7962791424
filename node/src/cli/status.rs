//! `hotspot-node status`: this node, its workloads and reservations.

use std::time::Duration;

use anyhow::{bail, Result};
use hotspot_node::daemon::control::{HeldReservation, Reply, Request};

use super::peers::{resources, ControlArgs};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub control: ControlArgs,
}

fn reservation_lines(title: &str, list: &[HeldReservation]) -> String {
    let mut out = format!("{title}: {}\n", list.len());
    for r in list {
        out += &format!(
            "  {}  peer {}  workload {}  {}  expires_at_ms {}{}\n",
            r.id,
            &r.peer[..12.min(r.peer.len())],
            r.workload,
            resources(&r.needs),
            r.expires_at_ms,
            if r.committed { " (committed)" } else { "" }
        );
    }
    out
}

pub fn run(args: &StatusArgs) -> Result<i32> {
    let Reply::Status(s) = args.control.call(&Request::Status, Duration::from_secs(10))? else {
        bail!("daemon sent an unexpected reply to `status`");
    };
    if args.control.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(0);
    }
    let mut out = format!("node      {} ({})\n", s.name, s.node);
    out += &format!("state     {}   zone {}   arch {}   up {:.0}s\n", s.state, s.zone, s.arch, s.uptime_ms as f64 / 1000.0);
    out += &format!("price     {:.4} USD/h ({})\n", s.price_per_hour, s.price_source);
    out += &format!("capacity  free {} of {}\n", resources(&s.free), resources(&s.total));
    let m = &s.mesh;
    let rejected: Vec<String> = m["adverts_rejected"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| format!("{k}={v}")).collect())
        .unwrap_or_default();
    out += &format!(
        "mesh      {} connected, adverts sent {} accepted {} ignored {} rejected [{}], banned {}\n",
        m["connected_peers"],
        m["adverts_sent"],
        m["adverts_accepted"],
        m["adverts_ignored"],
        rejected.join(" "),
        m["banned_peers"].as_array().map_or(0, |a| a.len())
    );
    out += &format!("workloads: {}\n", s.workloads.len());
    for w in &s.workloads {
        out += &format!("  {}  {}\n", w.name, resources(&w.needs));
    }
    if !s.lost_at_reboot.is_empty() {
        out += &format!("lost at reboot: {} (not restored; `hotspot-node workload stop NAME` forgets one)\n", s.lost_at_reboot.len());
        for l in &s.lost_at_reboot {
            out += &format!("  {}  {}\n", l.name, l.reason);
        }
    }
    out += &reservation_lines("reservations held for peers", &s.reservations_held);
    out += &reservation_lines("reservations obtained on peers", &s.reservations_obtained);
    out += &format!("moves made by this node: {}\n", s.moves.len());
    for m in &s.moves {
        let outcome = match (&m.summary, &m.error) {
            (Some(s), _) => format!("to {} in {} ms (frozen {} ms)", s.target, s.total_ms, s.freeze_ms),
            (None, Some(e)) => format!("failed: {e}"),
            (None, None) => "?".into(),
        };
        out += &format!("  [{}] {} {}\n", m.trigger, m.workload, outcome);
    }
    print!("{out}");
    Ok(0)
}
