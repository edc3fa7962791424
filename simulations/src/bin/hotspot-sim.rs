//! `hotspot-sim`: compare spot policies on a simulated market, with the nodes' own election and
//! reservation code.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hotspot_simulations::{plot, run_policies, trace, EngineParams, Policy, Progress, Scenario, ScenarioConfig};

#[derive(Parser)]
#[command(name = "hotspot-sim", version, about = "Spot-market simulations of hotspot-mesh's hopping policies", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate one scenario under every policy (on-demand, spot-stay, central, mesh) and write
    /// the table (table.md, report.json) and plots (price.svg, cost.svg, cost_per_policy.svg).
    ///
    /// Same seed, same table. Example: hotspot-sim run --nodes 10000 --days 2 --seed 7
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Number of spot nodes (spread at random over every instance type x zone market).
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// Simulated days.
    #[arg(long, default_value_t = 2.0)]
    days: f64,
    /// Seed of every random draw (prices, fleet, workloads, gossip delays and losses).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Real prices instead of the synthetic process: JSON from
    /// `aws ec2 describe-spot-price-history --output json` (Linux/UNIX records are used).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Directory for table.md, report.json and the SVG plots.
    #[arg(long, value_name = "DIR", default_value = "hotspot-sim-out")]
    out: PathBuf,
    /// Nodes given a revocation notice at the same instant (default: a tenth of the fleet;
    /// 0 disables).
    #[arg(long, value_name = "COUNT")]
    mass_revocation: Option<u32>,
    /// When the mass revocation happens, in hours from the start.
    #[arg(long, value_name = "HOURS", default_value_t = 12.0)]
    mass_revocation_at: f64,
    /// Fraction of the fleet's capacity the workloads need on average.
    #[arg(long, default_value_t = 0.5)]
    utilisation: f64,
    /// Random interruptions per node per day (below the bid).
    #[arg(long, default_value_t = 0.002)]
    interruptions: f64,
    /// Probability one gossip delivery is lost.
    #[arg(long, default_value_t = 0.02)]
    gossip_loss: f64,
    /// Policies to run (comma-separated: on-demand, spot-stay, central, mesh).
    #[arg(long, value_delimiter = ',', default_value = "on-demand,spot-stay,central,mesh")]
    policies: Vec<String>,
    /// Policies simulated at the same time (threads).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Check the conservation invariants after every event and cross-check each decision
    /// against an election over the node's whole view (slow: for small runs).
    #[arg(long)]
    check: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args),
    }
}

fn parse_policy(name: &str) -> Result<Policy> {
    Policy::ALL
        .into_iter()
        .find(|p| p.name() == name.trim())
        .with_context(|| format!("unknown policy {name:?} (known: on-demand, spot-stay, central, mesh)"))
}

fn run(args: RunArgs) -> Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if !(args.days > 0.0 && args.days <= 3650.0) {
        bail!("--days must be in (0, 3650]");
    }
    let policies = args.policies.iter().map(|p| parse_policy(p)).collect::<Result<Vec<_>>>()?;
    let mass = args.mass_revocation.unwrap_or(args.nodes / 10);
    let cfg = ScenarioConfig {
        nodes: args.nodes,
        days: args.days,
        seed: args.seed,
        utilisation: args.utilisation,
        interruptions_per_node_day: args.interruptions,
        mass_revocation: (mass > 0).then_some(((args.mass_revocation_at * 3_600_000.0) as u64, mass)),
        ..ScenarioConfig::default()
    };
    let scenario = match &args.trace {
        Some(path) => {
            let tr = trace::load(path).with_context(|| format!("loading price trace {}", path.display()))?;
            if (tr.span_ms as f64) < args.days * 86_400_000.0 {
                eprintln!(
                    "note: the trace covers {:.1} days; prices hold their last value for the rest of the {} days",
                    tr.span_ms as f64 / 86_400_000.0,
                    args.days
                );
            }
            Scenario::from_trace(&cfg, &tr)
        }
        None => Scenario::generate(&cfg),
    };
    let mut params = EngineParams::default();
    params.gossip.loss = args.gossip_loss;
    params.check_invariants = args.check;
    eprintln!(
        "simulating {} nodes, {} markets, {} workloads, {} days, seed {}, policies {}",
        scenario.nodes.len(),
        scenario.markets.len(),
        scenario.workloads.len(),
        args.days,
        args.seed,
        policies.iter().map(|p| p.name()).collect::<Vec<_>>().join(",")
    );
    let progress = Progress::new(policies.len(), scenario.horizon_ms);
    let started = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        let bar = (!args.quiet).then(|| s.spawn(|| draw_progress(&progress, &done, started)));
        let report = run_policies(&scenario, &params, &policies, args.jobs, Some(&progress));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(bar) = bar {
            let _ = bar.join();
        }
        report
    })?;
    let table = report.table();
    println!("{table}");
    println!("{}", report.timing());
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let write = |name: &str, body: &str| -> Result<()> {
        let path = args.out.join(name);
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))
    };
    write("table.md", &table)?;
    write("report.json", &serde_json::to_string_pretty(&report)?)?;
    write("price.svg", &plot::price_svg(&scenario, 8))?;
    write("cost.svg", &plot::cost_over_time_svg(&report))?;
    write("cost_per_policy.svg", &plot::cost_per_policy_svg(&report))?;
    eprintln!("wrote table.md, report.json, price.svg, cost.svg, cost_per_policy.svg to {}", args.out.display());
    Ok(())
}

fn draw_progress(progress: &Progress, done: &std::sync::atomic::AtomicBool, started: Instant) {
    let mut err = std::io::stderr();
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let f = progress.fraction().clamp(0.0, 1.0);
        let filled = (f * 40.0) as usize;
        let _ = write!(err, "\r[{}{}] {:5.1}%  {:.0}s ", "#".repeat(filled), "-".repeat(40 - filled), f * 100.0, started.elapsed().as_secs_f64());
        let _ = err.flush();
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = writeln!(err, "\r[{}] 100.0%  {:.0}s ", "#".repeat(40), started.elapsed().as_secs_f64());
}
