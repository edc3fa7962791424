//! The describe-spot-price-history loader, on a sample file written by the project.

use std::path::Path;

use hotspot_simulations::trace::{self, TraceError};
use hotspot_simulations::{run_policies, EngineParams, Policy, Scenario, ScenarioConfig};

const HOUR: u64 = 3_600_000;

fn sample() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spot-price-history.json")
}

#[test]
fn loads_markets_and_step_prices_from_the_sample() {
    let tr = trace::load(&sample()).expect("sample loads");
    let labels: Vec<String> = tr.markets.iter().map(|m| m.key.label()).collect();
    assert_eq!(labels, ["m5.large/us-east-1a", "m5.large/us-east-1b", "r5.large/us-east-1a"]);
    assert_eq!(tr.start_unix_ms, 1_714_521_600_000, "2024-05-01T00:00:00Z is time 0");
    assert_eq!(tr.span_ms, 12 * HOUR);

    let a = &tr.markets[0].path;
    // Records were out of order; the Windows record at 01:00 is ignored.
    assert_eq!(a.at(0), 0.0361);
    assert_eq!(a.at(HOUR), 0.0361);
    assert_eq!(a.at(2 * HOUR), 0.0385);
    assert!((a.integral_to(3 * HOUR) - (2.0 * 0.0361 + 0.0385)).abs() < 1e-12);

    let b = &tr.markets[1].path;
    // Before its first record (00:30) a market holds its first price.
    assert_eq!(b.at(0), 0.0412);
    assert_eq!(b.at(6 * HOUR + 1), 0.11, "a spike above m5.large's on-demand 0.096");
    assert_eq!(b.at(7 * HOUR), 0.04);
    assert_eq!(tr.markets[2].path.at(12 * HOUR), 0.0295);
}

#[test]
fn a_trace_drives_a_simulation_whose_spike_revokes() {
    let tr = trace::load(&sample()).unwrap();
    let cfg = ScenarioConfig { nodes: 60, days: 0.5, seed: 4, interruptions_per_node_day: 0.0, ..ScenarioConfig::default() };
    let sc = Scenario::from_trace(&cfg, &tr);
    assert_eq!(sc.markets.len(), 3);
    // Only 2-CPU types in this trace: no 4-CPU workloads are generated that nothing could host.
    assert!(sc.workloads.iter().all(|w| w.class <= 2));
    let params = EngineParams { check_invariants: true, ..EngineParams::default() };
    let report = run_policies(&sc, &params, &[Policy::OnDemand, Policy::SpotStay, Policy::Mesh], 1, None).unwrap();
    // The 06:00 spike in m5.large/us-east-1b crosses the bid: its workloads are revoked.
    assert!(report.get(Policy::SpotStay).unwrap().revocations > 0);
    assert_eq!(report.get(Policy::OnDemand).unwrap().revocations, 0);
    assert!(report.cost_vs_ondemand(Policy::Mesh).unwrap() < 0.6);
    assert_eq!(report.overbooked(), 0);
    assert!(report.get(Policy::OnDemand).unwrap().downtime_hours < 1e-9, "on-demand places everything at once");
}

#[test]
fn bad_traces_are_refused_with_the_reason() {
    let err = |s: &str| trace::parse(s).unwrap_err();
    assert!(matches!(err("{}"), TraceError::Json(_)));
    assert!(matches!(err(r#"{"SpotPriceHistory": []}"#), TraceError::Empty));
    let rec = |ty: &str, price: &str, ts: &str| {
        format!(
            r#"{{"SpotPriceHistory": [{{"AvailabilityZone": "us-east-1a", "InstanceType": "{ty}", "ProductDescription": "Linux/UNIX", "SpotPrice": "{price}", "Timestamp": "{ts}"}}]}}"#
        )
    };
    assert!(matches!(err(&rec("m5.large", "-1", "2024-05-01T00:00:00Z")), TraceError::BadPrice { index: 0, .. }));
    assert!(matches!(err(&rec("m5.large", "0.1", "yesterday")), TraceError::BadTimestamp { .. }));
    let unknown = err(&rec("x9.huge", "0.1", "2024-05-01T00:00:00Z"));
    assert!(unknown.to_string().contains("x9.huge") && unknown.to_string().contains("m5.large"), "{unknown}");
    let missing = trace::load(Path::new("/nonexistent/trace.json")).unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/trace.json"));
}
