//! Reboot survival: workloads recorded as running are accounted for when the daemon starts
//! after a (simulated) reboot. A daemon runs in its own network namespace with two real
//! workloads: `kept` (redis with a service address, checkpointed with `--leave-running` into its
//! reboot checkpoint directory) and `lost` (no checkpoint). The "reboot" kills the daemon and
//! every workload process and wipes what a reboot wipes: their network namespaces and veths in
//! /run/netns, their cgroups, the local-cluster dir under /run and the control socket. The
//! daemon started again must restore `kept` (redis answers with the data from before the
//! checkpoint, not the write after it) and report `lost` in `status` and in its log; a further
//! restart changes nothing (idempotent).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hotspot_node::sys::names::workload_netns;
use hotspot_node::daemon::control::StatusReport;
use hotspot_node::lab::{self, Daemon, Lan};
use hotspot_testkit::host;
use hotspot_node::sys::cgroup::Cgroup;
use hotspot_node::sys::netns;
use hotspot_node::workload::{record};

const BIN: &str = env!("CARGO_BIN_EXE_hotspot-node");
const TEST: &str = "host_reboot_restores_checkpointed_workloads_and_reports_the_rest";

struct Setup {
    lan: Lan,
    state: PathBuf,
    cluster: PathBuf,
    kept: String,
    lost: String,
}

impl Setup {
    fn in_ns(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter").arg(format!("--net={}", netns::path(&self.lan.nodes[0]).display())).arg("--").args(args).output().unwrap()
    }

    fn workload(&self, args: &[&str]) -> String {
        let state = self.state.display().to_string();
        let mut full = vec![BIN, "workload", "--state-dir", &state];
        full.extend(args);
        let out = self.in_ns(&full);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "hotspot-node workload {args:?}: {text}");
        text
    }

    fn redis(&self, args: &[&str]) -> String {
        let ip = self.lan.service_address(1).ip.to_string();
        let mut full = vec!["redis-cli", "-h", &ip];
        full.extend(args);
        String::from_utf8_lossy(&self.in_ns(&full).stdout).trim().to_string()
    }

    fn start_daemon(&self, root: &Path) -> Daemon {
        let state = self.state.display().to_string();
        let cluster = self.cluster.display().to_string();
        Daemon::start_with_env(
            Path::new(BIN),
            root,
            "rebooted",
            Some(&self.lan.nodes[0]),
            &["--workloads-dir", &state],
            &[("HOTSPOT_LOCAL_CLUSTER", &cluster), ("HOTSPOT_LOG_FORMAT", "json")],
        )
        .unwrap()
    }

    /// What a reboot takes away: every process, /run (namespaces, cluster dir), cgroups.
    fn reboot(&self, daemon: &mut Daemon) {
        daemon.kill();
        for name in [&self.kept, &self.lost] {
            let rec = record::load(&record::path(&self.state, name)).unwrap();
            let pid = rec.pid.expect("recorded as running");
            // SIGKILL to PID 1 of its PID namespace takes the whole tree.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            lab::wait_until("the workload to die", Duration::from_secs(10), || {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
            })
            .unwrap();
            netns::delete(&rec.netns).unwrap();
            Cgroup::at(&rec.cgroup).destroy(Duration::from_secs(5)).unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.cluster);
        let _ = std::fs::remove_file(&daemon.socket);
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for name in [&self.kept, &self.lost] {
            let state = self.state.display().to_string();
            let _ = Command::new(BIN).args(["workload", "--state-dir", &state, "stop", name]).output();
            if let Ok(rec) = record::load(&record::path(&self.state, name)) {
                let _ = netns::delete(&rec.netns);
            }
        }
        let _ = std::fs::remove_dir_all(&self.cluster);
    }
}

fn lost_names(s: &StatusReport) -> Vec<&str> {
    s.lost_at_reboot.iter().map(|l| l.name.as_str()).collect()
}

#[test]
fn host_reboot_restores_checkpointed_workloads_and_reports_the_rest() {
    if !host::require_migration_host(TEST) {
        return;
    }
    Lan::sweep_stale();
    let tmp = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let setup = Setup {
        lan: Lan::new(1).unwrap(),
        state: tmp.path().join("workloads"),
        cluster: PathBuf::from(format!("/run/hotspot-reboot-test-{pid}")),
        kept: format!("rb-kept-{pid}"),
        lost: format!("rb-lost-{pid}"),
    };
    let mut daemon = setup.start_daemon(tmp.path());

    let address = setup.lan.service_address(1).to_string();
    let mut start = vec!["start", &setup.kept, "--address", &address, "--"];
    let redis = hotspot_testkit::testbed::redis_command(&[]);
    start.extend(redis.iter().map(String::as_str));
    setup.workload(&start);
    setup.workload(&["start", &setup.lost, "--", "sleep", "100000"]);
    lab::wait_until("redis to answer", Duration::from_secs(20), || setup.redis(&["PING"]) == "PONG").unwrap();
    assert_eq!(setup.redis(&["SET", "before", "kept"]), "OK");
    let checkpoint = setup.state.join("checkpoints").join(&setup.kept);
    let images = checkpoint.display().to_string();
    setup.workload(&["checkpoint", &setup.kept, "--images", &images, "--leave-running"]);
    assert_eq!(setup.redis(&["SET", "after", "gone"]), "OK", "a write after the checkpoint: a reboot loses it");
    lab::wait_until("the daemon to advertise both workloads", Duration::from_secs(20), || {
        daemon.status().is_ok_and(|s| s.workloads.len() == 2)
    })
    .unwrap();

    setup.reboot(&mut daemon);
    assert!(!netns::exists(&workload_netns(&setup.kept)), "the reboot wiped the namespaces");

    let mut daemon = setup.start_daemon(tmp.path());
    let status = daemon.status().unwrap();
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    let running: Vec<&str> = status.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(running, [setup.kept.as_str()], "kept was restored and runs again; log:\n{log}");
    assert_eq!(lost_names(&status), [setup.lost.as_str()], "lost is reported, not forgotten; log:\n{log}");
    let lost = &status.lost_at_reboot[0];
    assert!(lost.at_reboot && lost.reason.contains("no reboot checkpoint"), "{lost:?}");
    assert_eq!(setup.redis(&["GET", "before"]), "kept", "restored from the checkpoint");
    assert_eq!(setup.redis(&["GET", "after"]), "", "the write after the checkpoint did not survive the reboot");
    // Logged with span fields: the JSON line carries the workload as a field.
    let lost_line = log.lines().find(|l| l.contains("workload lost at reboot")).unwrap_or_else(|| panic!("no lost line in:\n{log}"));
    let lost_json: serde_json::Value = serde_json::from_str(lost_line).unwrap();
    assert_eq!(lost_json["workload"], setup.lost.as_str(), "{lost_line}");
    assert!(lost_line.contains("reboot_accounting"), "inside the reboot_accounting span: {lost_line}");
    assert!(log.contains("workload restored from its reboot checkpoint"), "{log}");
    let text = daemon.cli(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("lost at reboot: 1") && text.contains(&setup.lost), "`hotspot-node status` shows it:\n{text}");

    // A plain daemon restart (no reboot): nothing to restore again, the report stays as it was.
    let kept_pid = record::load(&record::path(&setup.state, &setup.kept)).unwrap().pid;
    daemon.stop();
    let daemon = setup.start_daemon(tmp.path());
    let again = daemon.status().unwrap();
    assert_eq!(record::load(&record::path(&setup.state, &setup.kept)).unwrap().pid, kept_pid, "kept was not restored twice");
    assert_eq!(again.lost_at_reboot, status.lost_at_reboot, "same report, same first-detection time");
    assert_eq!(setup.redis(&["GET", "before"]), "kept");

    // Stopping the lost workload (what the status line suggests) clears the report.
    setup.workload(&["stop", &setup.lost]);
    assert!(daemon.status().unwrap().lost_at_reboot.is_empty());
}
