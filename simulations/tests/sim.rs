//! Whole-simulation tests: determinism, conservation, hand-computed costs, and that the
//! overbooking check can fire.

use hotspot_protocol::election::HopPolicy;
use hotspot_simulations::catalog::{find_type, MarketKey};
use hotspot_simulations::gossip::GossipParams;
use hotspot_simulations::price::{PricePath, SyntheticPrices};
use hotspot_simulations::scenario::{Market, NodeSpec, Revocation, RevocationCause, WorkloadSpec};
use hotspot_simulations::{run_policies, EngineParams, Policy, RunReport, Scenario, ScenarioConfig};

const S: u64 = 1000;
const H: u64 = 3600 * S;

fn busy_config(seed: u64, nodes: u32) -> ScenarioConfig {
    ScenarioConfig {
        nodes,
        days: 1.0,
        seed,
        interruptions_per_node_day: 0.05,
        mass_revocation: Some((6 * H, nodes / 10)),
        prices: SyntheticPrices { spikes_per_day: 0.5, ..SyntheticPrices::default() },
        ..ScenarioConfig::default()
    }
}

fn run(sc: &Scenario, params: &EngineParams, jobs: usize) -> RunReport {
    run_policies(sc, params, &Policy::ALL, jobs, None).expect("simulation runs")
}

#[test]
fn same_seed_same_table() {
    let params = EngineParams::default();
    let sc = Scenario::generate(&busy_config(11, 300));
    let first = run(&sc, &params, 2);
    let again = run(&Scenario::generate(&busy_config(11, 300)), &params, 1);
    assert_eq!(first.table(), again.table());
    let series = |r: &RunReport| r.results.iter().map(|p| p.cost_series.clone()).collect::<Vec<_>>();
    assert_eq!(series(&first), series(&again));
    let other = run(&Scenario::generate(&busy_config(12, 300)), &params, 2);
    assert_ne!(first.table(), other.table(), "the seed matters");
}

#[test]
fn every_workload_runs_exactly_once_or_is_counted_down() {
    // The engine checks after every event: each arrived workload runs on exactly one node or is
    // down; run + down time adds up to its age; every node's tally matches what it holds and fits.
    let params = EngineParams { check_invariants: true, ..EngineParams::default() };
    let sc = Scenario::generate(&busy_config(5, 150));
    let report = run(&sc, &params, 2);
    let mesh = report.get(Policy::Mesh).unwrap();
    let central = report.get(Policy::Central).unwrap();
    let stay = report.get(Policy::SpotStay).unwrap();
    // The checks ran through revocations, hops and restarts, not a quiet day.
    assert!(mesh.revocations > 0 && mesh.migrations > 0, "{mesh:?}");
    assert!(central.migrations > 0 && stay.restarts > 0);
    assert_eq!(report.overbooked(), 0);
    for r in &report.results {
        assert_eq!(r.expired_commits, 0, "{}", r.policy);
        // The candidate shortcut tries the peers a full-view election would (up to a node of one
        // market still showing the pre-change price for the seconds gossip takes).
        assert!(r.view_checks > 100, "{}: {} decisions checked", r.policy, r.view_checks);
        assert!(r.view_mismatches * 100 <= r.view_checks, "{}: {} of {} differ", r.policy, r.view_mismatches, r.view_checks);
    }
}

/// Two m5.large nodes in one zone (n0 in market A, n1 in market B), one workload of half a node
/// (1 CPU, 4 GiB) arriving at t = 10 s and running past the 2 h horizon. Moves take exactly 36 s
/// (no image transfer), gossip exactly 1 s, no loss; nodes see their notice at once.
fn tiny(a: PricePath, b: PricePath, revocations: Vec<Revocation>) -> (Scenario, EngineParams) {
    let m5 = find_type("m5.large").unwrap();
    let market = |spot| Market { key: MarketKey { instance: m5, zone: "us-east-1a".into() }, zone: 0, spot };
    let sc = Scenario {
        seed: 3,
        horizon_ms: 2 * H,
        zones: vec!["us-east-1a".into()],
        markets: vec![market(a), market(b)],
        nodes: vec![NodeSpec { market: 0, bid: 0.096 }, NodeSpec { market: 1, bid: 0.096 }],
        workloads: vec![WorkloadSpec { arrival_ms: 10 * S, class: 1, work_ms: 240 * H, volume_zone: None }],
        revocations,
    };
    let params = EngineParams {
        hop: HopPolicy { bandwidth_bytes_per_sec: 1e15, fixed_move_secs: 36.0, ..HopPolicy::default() },
        gossip: GossipParams { base_ms: 1000, mean_extra_ms: 0.0, loss: 0.0, ..GossipParams::default() },
        fixed_move_ms: (36 * S, 36 * S),
        dirty_fraction: 0.0,
        hop_check_ms: 0,
        notice_poll_ms: 0,
        check_invariants: true,
        ..EngineParams::default()
    };
    (sc, params)
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() < 1e-9, "{what}: got {got}, want {want}");
}

#[test]
fn hand_checked_hop_to_a_cheaper_market() {
    // A costs 0.04/h throughout; B 0.06/h, dropping to 0.02/h at 1 h. The workload pays half.
    let (sc, params) = tiny(PricePath::constant(0.04), PricePath::new(vec![(0, 0.06), (H, 0.02)]), vec![]);
    let r = run(&sc, &params, 1);
    let cost = |p| r.get(p).unwrap().cost_usd;
    // On-demand: half of 0.096/h from 10 s to 7200 s.
    close(cost(Policy::OnDemand), 0.5 * 0.096 * 7190.0 / 3600.0, "on-demand");
    // Spot-stay: placed on A (0.02/h, cheaper than B's 0.03/h at 10 s) and left there.
    close(cost(Policy::SpotStay), 0.02 * 7190.0 / 3600.0, "spot-stay");
    // Central: at 3600 s B costs 0.01/h, 50 % less, saving 0.01 over the 1 h stay against a move
    // cost of 36 s x (0.02 + 0.01)/h: hop. A is paid 10..3636 s, B 3600..7200 s.
    close(cost(Policy::Central), (0.02 * 3626.0 + 0.01 * 3600.0) / 3600.0, "central");
    // Mesh: n0 hears of B's new price 1 s later and hops at 3601 s: A 10..3637 s, B 3601..7200 s.
    close(cost(Policy::Mesh), (0.02 * 3627.0 + 0.01 * 3599.0) / 3600.0, "mesh");
    for p in [Policy::Central, Policy::Mesh] {
        let res = r.get(p).unwrap();
        assert_eq!((res.migrations, res.revocations), (1, 0), "{p}");
        close(res.downtime_hours, 36.0 / 3600.0, "downtime");
        close(res.useful_hours, 7154.0 / 3600.0, "useful work");
    }
    let relative = (0.03014444444444444 / 7154.0) / (0.09586666666666667 / 7190.0);
    assert!((r.cost_vs_ondemand(Policy::Central).unwrap() - relative).abs() < 1e-9);
    assert_eq!(r.get(Policy::SpotStay).unwrap().migrations, 0);
}

#[test]
fn hand_checked_revocation_restart_versus_hop() {
    // A 0.04/h, B 0.06/h, constant. n0 (A) gets an interruption notice at 1800 s.
    let notice = vec![Revocation { at_ms: 1800 * S, node: 0, cause: RevocationCause::Interruption }];
    let (sc, params) = tiny(PricePath::constant(0.04), PricePath::constant(0.06), notice);
    let r = run(&sc, &params, 1);
    // Spot-stay: runs on A until termination at 1920 s, loses its 1910 s of work (no checkpoint
    // yet), restarts on B 90 s later (2010 s) and pays 0.03/h there.
    let stay = r.get(Policy::SpotStay).unwrap();
    close(stay.cost_usd, (0.02 * 1910.0 + 0.03 * 5190.0) / 3600.0, "spot-stay");
    close(stay.downtime_hours, 90.0 / 3600.0, "spot-stay downtime");
    close(stay.lost_work_hours, 1910.0 / 3600.0, "spot-stay lost work");
    close(stay.useful_hours, 5190.0 / 3600.0, "spot-stay useful");
    assert_eq!((stay.revocations, stay.restarts, stay.migrations), (1, 1, 0));
    // Central and mesh: move to B on the notice, 36 s frozen; A paid 10..1836 s, B 1800..7200 s.
    for p in [Policy::Central, Policy::Mesh] {
        let hop = r.get(p).unwrap();
        close(hop.cost_usd, (0.02 * 1826.0 + 0.03 * 5400.0) / 3600.0, p.name());
        close(hop.downtime_hours, 36.0 / 3600.0, "hop downtime");
        assert_eq!((hop.revocations, hop.migrations, hop.restarts, hop.failed_moves), (1, 1, 0, 0), "{p}");
    }
    assert_eq!(r.get(Policy::OnDemand).unwrap().revocations, 0);
}

#[test]
fn overbooking_check_fires_without_reservations_and_never_with_them() {
    let mut cfg = busy_config(9, 400);
    cfg.mass_revocation = Some((3 * H, 100));
    let sc = Scenario::generate(&cfg);
    let with = run_policies(&sc, &EngineParams::default(), &[Policy::Mesh], 1, None).unwrap();
    assert_eq!(with.overbooked(), 0);
    let ablated = EngineParams { reserve: false, ..EngineParams::default() };
    let without = run_policies(&sc, &ablated, &[Policy::Mesh], 1, None).unwrap();
    assert!(without.overbooked() > 0, "stale views with no ledger must overbook some target");
}

#[test]
fn plots_are_written_for_every_policy() {
    let (sc, params) = tiny(PricePath::constant(0.04), PricePath::new(vec![(0, 0.06), (H, 0.02)]), vec![]);
    let r = run(&sc, &params, 1);
    for svg in [
        hotspot_simulations::plot::price_svg(&sc, 8),
        hotspot_simulations::plot::cost_over_time_svg(&r),
        hotspot_simulations::plot::cost_per_policy_svg(&r),
    ] {
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }
    let cost = hotspot_simulations::plot::cost_over_time_svg(&r);
    for p in Policy::ALL {
        assert!(cost.contains(&format!(">{}</text>", p.name())), "legend for {p}");
    }
    assert_eq!(cost.matches("stroke-width=\"1.5\"").count(), 4, "one line per policy");
    let bars = hotspot_simulations::plot::cost_per_policy_svg(&r);
    assert!(bars.contains(">1.000</text>"), "on-demand is the unit bar");
}
