//! `hotspot-node`: the hotspot-mesh daemon and its command-line interface.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};
use hotspot_node::observability::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "hotspot-node",
    version,
    about = "Peer-to-peer migration mesh: keeps workloads alive on spot servers by hopping them between nodes",
    long_about = "Every worker runs the same daemon. Nodes gossip their price and capacity, elect a target when a \
workload must move (spot notice, cheaper peer, drain, or an operator's `migrate`), checkpoint it with CRIU and stream \
the image over QUIC, then move its volume and address. Start with `hotspot-node check`."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "HOTSPOT_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check whether this host can checkpoint and migrate workloads (CRIU, kernel, namespaces).
    Check(cli::check::CheckArgs),
    /// EC2: this instance's identity, its spot price, the cluster's peers; a fake metadata service.
    Ec2(cli::ec2::Ec2Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    observability::init(cli.log_format, "info");
    let code = match &cli.command {
        Command::Check(args) => cli::check::run(args)?,
        Command::Ec2(args) => cli::ec2::run(args)?,
    };
    std::process::exit(code);
}
