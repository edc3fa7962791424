//! `hotspot-node peers`: the peer table of the running daemon.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use hotspot_node::daemon::config::DEFAULT_CONTROL_SOCKET;
use hotspot_node::daemon::control::{self, PeerRow, Reply, Request};
use hotspot_protocol::Resources;

/// How to reach the daemon; shared by the commands that talk to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// The daemon's control socket.
    #[arg(long, env = "HOTSPOT_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ControlArgs {
    pub fn call(&self, request: &Request, timeout: Duration) -> Result<Reply> {
        match control::call(&self.socket, request, timeout)? {
            Reply::Error { message } => bail!("daemon: {message}"),
            reply => Ok(reply),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PeersArgs {
    #[command(flatten)]
    pub control: ControlArgs,
}

pub fn gib(bytes: u64) -> String {
    format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
}

pub fn resources(r: &Resources) -> String {
    format!("{:.1}cpu {} mem {} disk", r.cpu_millis as f64 / 1000.0, gib(r.memory_bytes), gib(r.disk_bytes))
}

pub fn render(peers: &[PeerRow]) -> String {
    let mut out = format!("{:<14} {:<16} {:>9} {:<30} {:<9} {:>7}\n", "PEER", "NAME", "USD/H", "FREE", "STATE", "AGE");
    for p in peers {
        out += &format!(
            "{:<14} {:<16} {:>9.4} {:<30} {:<9} {:>6.1}s\n",
            &p.node[..12],
            p.name,
            p.price_per_hour,
            resources(&p.free),
            p.state.to_string(),
            p.age_ms as f64 / 1000.0
        );
    }
    if peers.is_empty() {
        out += "(no peers yet: they appear once their adverts arrive)\n";
    }
    out
}

pub fn run(args: &PeersArgs) -> Result<i32> {
    let Reply::Peers { peers } = args.control.call(&Request::Peers, Duration::from_secs(10))? else {
        bail!("daemon sent an unexpected reply to `peers`");
    };
    if args.control.json {
        println!("{}", serde_json::to_string_pretty(&peers)?);
    } else {
        print!("{}", render(&peers));
    }
    Ok(0)
}
