//! Migration faults and post-copy on the lab cluster: real daemons in their own network
//! namespaces on a bridged LAN, redis on a loop-device volume with a live pipelining client.
//!
//! - The source daemon is SIGKILLed at an exact step of the migration (test-only hook
//!   `--fault crash-after:<point>`, see `hotspot_node::sys::fault`), then restarted:
//!   its journal must bring the workload back to running on exactly one node, with its volume,
//!   and the client's connection, counter and keys intact.
//! - Post-copy (`migrate --post-copy`) moves redis with its volume and the client never notices.

use std::time::Duration;

use hotspot_mesh::local_cluster::{find_node_bin, migrate_available, LocalCluster, Options};
use hotspot_node::lab::{self, Daemon};
use hotspot_node::sys::mounts::is_mount_point;
use hotspot_testkit::host;

const WORKLOAD: &str = "redis";

fn cluster(test: &str, fault: Option<&str>) -> Option<LocalCluster> {
    let bin = find_node_bin()?;
    if !migrate_available(&bin) || !host::require_migration_host(test) {
        return None;
    }
    // Every daemon gets the plan; only the source ever reaches a source-side crash point.
    let mut opts = Options::new(bin);
    opts.daemon_args = fault.map(|f| vec!["--fault".to_string(), f.to_string()]).unwrap_or_default();
    let up = LocalCluster::up(&opts);
    let (mut c, _) = up.unwrap();
    c.start_redis(0, 16 << 20).unwrap();
    Some(c)
}

/// Starts node `i` again exactly as `LocalCluster::up` did (same data, keys, journal), minus the hook.
fn restart(c: &mut LocalCluster, i: usize) {
    c.daemons[i].kill();
    let price = format!("{:.2}", 0.10 + 0.02 * i as f64);
    let transfer = format!("{}:7947", c.lan.node_ip(i));
    let state = c.nodes[i].state_dir.display().to_string();
    let cluster_dir = c.dir.path().join("cluster").display().to_string();
    let flags = ["--price", price.as_str(), "--advert-interval-ms", "1000", "--cpu-millis", "4000", "--memory-bytes", "8589934592", "--transfer-listen", transfer.as_str()];
    let env = [("HOTSPOT_STATE_DIR", state.as_str()), ("HOTSPOT_LOCAL_CLUSTER", cluster_dir.as_str())];
    let (name, netns) = (c.nodes[i].name.clone(), c.nodes[i].netns.clone());
    let daemon = Daemon::start_with_env(c.bin(), c.dir.path(), &name, Some(&netns), &flags, &env).unwrap();
    c.daemons[i] = daemon;
}

fn running_on(c: &LocalCluster) -> Vec<usize> {
    (0..c.nodes.len()).filter(|&i| c.workloads(i).get(WORKLOAD).is_ok_and(|w| w.is_running())).collect()
}

/// The workload runs on `node` only, its volume is mounted there only, and the client's view
/// of it is unbroken.
fn assert_exactly_once_on(c: &mut LocalCluster, node: usize) {
    assert_eq!(running_on(c), vec![node], "runs on exactly one node");
    for i in 0..c.nodes.len() {
        let mounted = is_mount_point(&c.workloads(i).volume_mount_dir(WORKLOAD));
        assert_eq!(mounted, i == node, "volume mounted on node{} only", node + 1);
    }
    assert!(c.workloads(node).get(WORKLOAD).unwrap().record.volume_on_device, "still on its loop-device volume");
    let report = c.finish_client().expect("client ran");
    assert_eq!(report.error, None, "the client saw no error and never reconnected");
    report.incr_sequence_ok().expect("INCR continuous: the workload never ran twice or lost state");
    assert_eq!(report.dbsize, Some(c.fill_keys as i64 + report.sets_acked as i64 + 1), "every key survived");
}

/// The last lines of every daemon's log, for a failure message.
fn daemon_logs(c: &LocalCluster) -> String {
    c.daemons.iter().map(|d| d.log_tail(60)).collect()
}

/// `hotspot-node migrate redis --to node<to+1> [extra] --json` on node `from`.
fn migrate_cli(c: &LocalCluster, from: usize, to: usize, extra: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(c.bin())
        .args(["migrate", WORKLOAD, "--to", &c.nodes[to].name, "--json"])
        .args(extra)
        .arg("--socket")
        .arg(&c.daemons[from].socket)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("migrate node{} -> node{} {extra:?}: {}\n{text}", from + 1, to + 1, out.status);
    (out.status.success(), text)
}

fn source_crash_recovers(test: &str, point: &str, expect_on: usize) {
    let Some(mut c) = cluster(test, Some(&format!("crash-after:{point}"))) else { return };
    let (ok, out) = migrate_cli(&c, 0, 1, &[]);
    assert!(!ok, "the source daemon died mid-migration");
    assert!(out.contains("the daemon stopped answering during the migration"), "the CLI says what happened: {out}");
    let log = std::fs::read_to_string(&c.daemons[0].log).unwrap_or_default();
    assert!(log.contains("fault injection: killing this process"), "node1 died at the hook, not elsewhere:\n{log}");
    assert!(running_on(&c).is_empty(), "the final dump stopped the workload before the crash");
    restart(&mut c, 0);
    let took = lab::wait_until("the restarted source to recover the migration", Duration::from_secs(90), || !running_on(&c).is_empty())
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon_logs(&c)));
    eprintln!("recovered in {took:?}");
    std::thread::sleep(Duration::from_secs(2)); // nothing else may come up after that
    assert!(c.client_batches() > 0);
    let client = c.client_batches();
    lab::wait_until("the client to be served again", Duration::from_secs(60), || c.client_batches() > client + 20)
        .unwrap_or_else(|e| panic!("{e} (client error: {:?})\n{}", c.client_error(), daemon_logs(&c)));
    assert_exactly_once_on(&mut c, expect_on);
}

#[test]
fn host_migrate_faults_source_killed_after_final_dump_rolls_back_once() {
    source_crash_recovers("host_migrate_faults_source_killed_after_final_dump_rolls_back_once", "final-dump", 0);
}

#[test]
fn host_migrate_faults_source_killed_after_moving_resources_resumes_forward() {
    source_crash_recovers("host_migrate_faults_source_killed_after_moving_resources_resumes_forward", "resources-moved", 1);
}

#[test]
fn host_migrate_post_copy_moves_redis_with_its_volume() {
    let Some(mut c) = cluster("host_migrate_post_copy_moves_redis_with_its_volume", None) else { return };
    let (ok, out) = migrate_cli(&c, 0, 1, &["--post-copy"]);
    assert!(ok, "post-copy hop: {out}");
    assert!(out.contains("\"mode\":\"post_copy\""), "summary says post-copy: {out}");
    assert_eq!(running_on(&c), vec![1]);
    let before = c.client_batches();
    lab::wait_until("the client to be served from node2", Duration::from_secs(20), || c.client_batches() > before + 50)
        .unwrap_or_else(|e| panic!("{e} (client error: {:?})", c.client_error()));
    // And on to node3 by post-copy again: node2's copy is itself a restored one.
    let (ok, out) = migrate_cli(&c, 1, 2, &["--post-copy"]);
    assert!(ok, "second post-copy hop: {out}");
    assert_exactly_once_on(&mut c, 2);
}
