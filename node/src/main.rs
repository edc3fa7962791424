//! `hotspot-node`: the hotspot-mesh daemon and its command-line interface.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cli::observability::{self, LogFormat};

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
    /// Start, list, stop, checkpoint and restore namespaced workloads.
    Workload(cli::workload::WorkloadArgs),
    /// Run the node daemon: join the mesh, advertise price and capacity, answer reservations.
    Run(Box<cli::run::RunArgs>),
    /// List the peers this node knows: price, free capacity, state, age of their last advert.
    Peers(cli::peers::PeersArgs),
    /// Show this node: identity, price, capacity, workloads, reservations, mesh counters.
    Status(cli::status::StatusArgs),
    /// Reserve capacity on a peer (elected by price and capacity unless --peer is given).
    Reserve(cli::reserve::ReserveArgs),
    /// Release a reservation obtained with `reserve`.
    Release(cli::reserve::ReleaseArgs),
    /// Send a CRIU image directory to a node (only chunks it lacks travel; resumable).
    Send(cli::transfer::SendArgs),
    /// Receive CRIU images from trusted nodes into the local chunk store.
    Receive(cli::transfer::ReceiveArgs),
    /// EC2: this instance's identity, its spot price, the cluster's peers; a fake metadata service.
    Ec2(cli::ec2::Ec2Args),
    /// Move a running workload to another node (`--to PEER` or `--to auto`), live.
    Migrate(cli::migrate::MigrateArgs),
    /// Stop taking workloads and move every workload off this node (`--cancel` to undo).
    Drain(cli::triggers::DrainArgs),
    /// Take workloads again after `drain` (same as `drain --cancel`).
    Undrain(cli::peers::ControlArgs),
    /// A spot interruption notice by hand: announce leaving and evacuate before the deadline.
    Notice(cli::triggers::NoticeArgs),
    /// Change the price this node advertises at runtime (`--clear` for the configured source).
    Price(cli::triggers::PriceArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    observability::init(cli.log_format, "info");
    let code = match &cli.command {
        Command::Check(args) => cli::check::run(args)?,
        Command::Workload(args) => cli::workload::run(args)?,
        Command::Run(args) => cli::run::run(args)?,
        Command::Peers(args) => cli::peers::run(args)?,
        Command::Status(args) => cli::status::run(args)?,
        Command::Reserve(args) => cli::reserve::run(args)?,
        Command::Release(args) => cli::reserve::release(args)?,
        Command::Send(args) => cli::transfer::send(args)?,
        Command::Receive(args) => cli::transfer::receive(args)?,
        Command::Ec2(args) => cli::ec2::run(args)?,
        Command::Migrate(args) => cli::migrate::run(args)?,
        Command::Drain(args) => cli::triggers::drain(args)?,
        Command::Undrain(control) => cli::triggers::drain(&cli::triggers::DrainArgs { cancel: true, control: control.clone() })?,
        Command::Notice(args) => cli::triggers::notice(args)?,
        Command::Price(args) => cli::triggers::price(args)?,
    };
    std::process::exit(code);
}
