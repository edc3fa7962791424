//! `cargo bench --bench sim`: the 10,000-node spot-market scenario with 1,000 simultaneous
//! revocations, every policy (the on-demand policy is the cost baseline of the same run).
//!
//! Knobs (environment): HOTSPOT_SIM_DAYS (default 3), HOTSPOT_SIM_NODES (default 10000),
//! HOTSPOT_SIM_SEED (default 1), HOTSPOT_SIM_JOBS (threads, default 2).
//! The simulation is deterministic, so one run per policy is the measurement; only wall time
//! varies between runs (and with whatever else the machine is doing).

use std::time::Instant;

use hotspot_simulations::{run_policies, EngineParams, Policy, Scenario, ScenarioConfig};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let nodes: u32 = env("HOTSPOT_SIM_NODES", 10_000);
    let days: f64 = env("HOTSPOT_SIM_DAYS", 3.0);
    let seed: u64 = env("HOTSPOT_SIM_SEED", 1);
    let jobs: usize = env("HOTSPOT_SIM_JOBS", 2);
    let revoked = nodes / 10;
    let cfg = ScenarioConfig {
        nodes,
        days,
        seed,
        // Half-way through the run a tenth of the fleet gets its notice in the same millisecond.
        mass_revocation: Some(((days * 43_200_000.0) as u64, revoked)),
        ..ScenarioConfig::default()
    };
    let started = Instant::now();
    let scenario = Scenario::generate(&cfg);
    println!(
        "scenario: {} nodes, {} markets, {} workloads, {} days, {} simultaneous revocations at {:.1} h (generated in {:.2} s)",
        scenario.nodes.len(),
        scenario.markets.len(),
        scenario.workloads.len(),
        days,
        revoked,
        days * 12.0,
        started.elapsed().as_secs_f64()
    );
    let params = EngineParams::default();
    let report = run_policies(&scenario, &params, &Policy::ALL, jobs, None).expect("simulation invariant broken");
    let wall_s = started.elapsed().as_secs_f64();
    println!("{}", report.table());
    print!("{}", report.timing());
    let mesh = report.get(Policy::Mesh).expect("mesh ran");
    println!(
        "mesh: {} decisions, {} reservation messages ({} denied), {} adverts, {} moves cut short by the notice",
        mesh.decisions, mesh.reservation_msgs, mesh.denied_reservations, mesh.adverts, mesh.failed_moves
    );
    for r in &report.results {
        if r.mass_revocation_workloads > 0 {
            println!(
                "{}: the {} simultaneous revocations hit {} workloads; {} restarted from a checkpoint, the other {} moved in time (or finished)",
                r.policy,
                revoked,
                r.mass_revocation_workloads,
                r.mass_revocation_restarts,
                r.mass_revocation_workloads.saturating_sub(r.mass_revocation_restarts)
            );
        }
    }
    let overbooked = report.overbooked();
    let rel = |p| report.cost_vs_ondemand(p).unwrap_or(f64::NAN);
    println!(
        "sim nodes={} days={} wall_s={:.1} mesh_cost_vs_ondemand={:.3} central_cost_vs_ondemand={:.3} overbooked={}",
        nodes,
        days,
        wall_s,
        rel(Policy::Mesh),
        rel(Policy::Central),
        overbooked
    );
    if overbooked > 0 {
        std::process::exit(1);
    }
}
