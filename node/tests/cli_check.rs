//! Black-box runs of the real `hotspot-node check`.

use std::process::Command;

fn check_json() -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_hotspot-node")).args(["check", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json prints JSON");
    (out.status.code().unwrap(), report)
}

#[test]
fn exit_code_matches_report() {
    let (code, report) = check_json();
    let ok = report["ok"].as_bool().unwrap();
    assert_eq!(code == 0, ok, "exit code {code} but ok={ok}");
    let fails: Vec<_> = report["checks"].as_array().unwrap().iter().filter(|c| c["status"] == "fail").collect();
    assert_eq!(fails.is_empty(), ok);
    for f in fails {
        assert!(f["hint"].is_string(), "every failure says how to fix it: {f}");
    }
}

#[test]
fn migration_host_reports_criu_4_2() {
    if !hotspot_testkit::host::require_migration_host("migration_host_reports_criu_4_2") {
        return;
    }
    let (code, report) = check_json();
    assert_eq!(code, 0, "check failed on a migration host: {report:#}");
    let version = report["criu"]["version"].as_str().unwrap();
    let (major, minor, _) = hotspot_node::criu::version::parse_criu_version(&format!("Version: {version}")).unwrap();
    assert!((major, minor) >= (4, 2), "criu {version}");
}

#[test]
fn bad_usage_is_explained() {
    let out = Command::new(env!("CARGO_BIN_EXE_hotspot-node")).arg("no-such-command").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unrecognized subcommand"), "{err}");
    let help = Command::new(env!("CARGO_BIN_EXE_hotspot-node")).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("check"));
}
