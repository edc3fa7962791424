//! End-to-end migration between real daemons: real CRIU, real redis with a live pipelining
//! client, images and control over real QUIC, the service address moved between network
//! namespaces. Daemons run on loopback (mDNS off, bootstrap); workloads and the client live in
//! namespaces created here. Everything is removed on drop, also when a test panics.

#[path = "mesh_support/mod.rs"]
mod mesh_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hotspot_node::sys::names::{restore_netns, workload_netns};
use hotspot_node::migrate::{Progress, Summary};
use hotspot_testkit::testbed::{self, Cleanup, PipeliningClient};
use hotspot_node::sys::netns;
use hotspot_node::workload::{StartOptions, Workloads};
use hotspot_testkit::host;
use mesh_support::{wait_for, Node, BIN};

struct Cluster {
    // Field order is drop order: daemons stop before their workloads and namespaces go.
    nodes: Vec<Node>,
    wls: Vec<Workloads>,
    guards: Vec<Cleanup>,
    name: String,
    client_ns: String,
    server: SocketAddr,
    filled_keys: u64,
    _tmp: tempfile::TempDir,
}

const LOCAL: [&str; 10] = ["--mdns", "false", "--listen", "/ip4/127.0.0.1/tcp/0", "--advert-interval-ms", "500", "--cpu-millis", "4000", "--memory-bytes", "8589934592"];

fn start_node(root: &Path, name: &str, bootstrap: Option<&str>, fault: Option<&str>) -> Node {
    let wdir = root.join(format!("{name}-workloads")).display().to_string();
    let mut flags: Vec<&str> = LOCAL.to_vec();
    flags.extend(["--workloads-dir", wdir.as_str(), "--transfer-listen", "127.0.0.1:0"]);
    if let Some(b) = bootstrap {
        flags.extend(["--bootstrap", b]);
    }
    if let Some(f) = fault {
        flags.extend(["--fault", f]);
    }
    Node::start(root, name, None, &flags)
}

impl Cluster {
    /// node1 and node2 meshed; redis (with `fill` random bytes) on node1 behind a client netns.
    fn new(tag: &str, fill: u64) -> Cluster {
        Self::with_node2_fault(tag, fill, None)
    }

    /// [`Cluster::new`] with node2's daemon started with `--fault PLAN`.
    fn with_node2_fault(tag: &str, fill: u64, node2_fault: Option<&str>) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let id = std::process::id();
        let name = format!("{tag}{id}");
        let client_ns = format!("hsc-{tag}{id}");
        let wls: Vec<Workloads> = ["node1", "node2"].iter().map(|n| Workloads::new(root.join(format!("{n}-workloads")))).collect();
        let mut guards: Vec<Cleanup> = wls.iter().map(|w| Cleanup::new(w.clone())).collect();
        for g in &mut guards {
            g.names.push(name.clone());
        }
        guards[0].netns.extend([workload_netns(&name), client_ns.clone()]);
        let mut c = Cluster { nodes: Vec::new(), wls, guards, name, client_ns, server: "0.0.0.0:0".parse().unwrap(), filled_keys: 0, _tmp: tmp };
        let n1 = start_node(&root, "node1", None, None);
        let addr = n1.status().mesh["listen_addrs"][0].as_str().expect("node1 listens").to_string();
        let n2 = start_node(&root, "node2", Some(&addr), node2_fault);
        c.nodes = vec![n1, n2];
        for n in &c.nodes {
            let node = n.status().node;
            c.guards[0].netns.push(restore_netns(&c.name, &node));
        }
        wait_for("the two daemons to see each other", Duration::from_secs(30), || c.nodes.iter().all(|n| n.peers().len() == 1));
        std::thread::sleep(Duration::from_secs(1)); // trust sets follow the peer table

        netns::create(&c.client_ns).unwrap();
        let subnet = 100 + id % 100;
        c.server = format!("10.77.{subnet}.2:6379").parse().unwrap();
        c.wls[0]
            .start(&StartOptions {
                name: c.name.clone(),
                command: hotspot_testkit::testbed::redis_command(&["--appendonly", "no"]),
                address: Some(format!("10.77.{subnet}.2/24").parse().unwrap()),
                uplink_netns: Some(c.client_ns.clone()),
                uplink_address: Some(format!("10.77.{subnet}.1/24").parse().unwrap()),
                ..Default::default()
            })
            .unwrap();
        assert!(testbed::wait_listening(Some(&c.client_ns), c.server, Duration::from_secs(10)), "redis came up");
        if fill > 0 {
            c.filled_keys = testbed::fill_random(Some(&c.client_ns), c.server, fill, 4096).unwrap();
        }
        c
    }

    fn client(&self) -> PipeliningClient {
        let client = PipeliningClient::start(Some(&self.client_ns), self.server, Duration::from_millis(3), "live").unwrap();
        assert!(client.wait_batches(30, Duration::from_secs(10)), "client is served (client error: {:?})", client.error());
        client
    }

    fn runs_on(&self, i: usize) -> bool {
        self.wls[i].get(&self.name).is_ok_and(|w| w.is_running())
    }

    /// `hotspot-node migrate` on node `from` with `--json`: the summary, or the error text.
    fn migrate(&self, from: usize, to: &str) -> Result<Summary, String> {
        self.migrate_with(from, to, &[])
    }

    fn migrate_with(&self, from: usize, to: &str, extra: &[&str]) -> Result<Summary, String> {
        let mut args = vec!["migrate", self.name.as_str(), "--to", to, "--json"];
        args.extend(extra);
        let out = self.nodes[from].cli(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("migrate {} -> {to}:\n{stdout}{}", self.nodes[from].name, String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        match serde_json::from_str::<Progress>(stdout.lines().last().unwrap_or_default()) {
            Ok(Progress::Done(s)) => Ok(s),
            other => Err(format!("last line is not a summary: {other:?}")),
        }
    }
}

fn check_client(client: PipeliningClient, filled_keys: u64) {
    let report = client.finish();
    assert_eq!(report.error, None, "the client saw no error and never reconnected");
    report.incr_sequence_ok().unwrap();
    assert_eq!(report.dbsize, Some(report.sets_acked as i64 + 1 + filled_keys as i64), "every key survived");
    eprintln!("client: {} batches, longest stall {:?}", report.incrs.len(), report.max_stall);
}

#[test]
fn host_migrate_redis_to_peer_and_back() {
    if !host::require_migration_host("host_migrate_redis_to_peer_and_back") {
        return;
    }
    let c = Cluster::new("mig", 32 << 20);
    let client = c.client();
    let first = c.migrate(0, "node2").expect("first hop");
    assert!(c.runs_on(1) && !c.runs_on(0), "runs on node2 only");
    assert!(c.wls[0].get(&c.name).is_err(), "node1 forgot the workload");
    assert!(client.wait_batches(50, Duration::from_secs(10)), "served from node2 (client error: {:?})", client.error());
    assert!(first.wire_bytes > 16 << 20, "the first hop carried the dataset: {first:?}");
    // After a pre-copy round the final image is rebuilt on it: only changed pages are written
    // inside the freeze (a CRIU incremental image; the restore above read through it).
    assert!(first.precopy_rounds >= 1, "{first:?}");
    let log = c.nodes[1].log_tail(100_000);
    assert!(log.contains("image rebuilt on its parent"), "node2 rebuilt the final image in full:\n{log}");

    let back = c.migrate(1, "node1").expect("hop back");
    assert!(c.runs_on(0) && !c.runs_on(1), "runs on node1 only");
    assert!(client.wait_batches(50, Duration::from_secs(10)), "served from node1 again (client error: {:?})", client.error());
    let again = c.migrate(0, "auto").expect("third hop, elected");
    assert!(c.runs_on(1) && !c.runs_on(0));
    eprintln!("wire bytes: first {} back {} return-to-node2 {}", first.wire_bytes, back.wire_bytes, again.wire_bytes);
    assert!(again.wire_bytes * 5 < first.wire_bytes, "node2 still had the chunks: {} vs {}", again.wire_bytes, first.wire_bytes);
    check_client(client, c.filled_keys);
}

#[test]
fn host_migrate_failed_restore_rolls_back() {
    if !host::require_migration_host("host_migrate_failed_restore_rolls_back") {
        return;
    }
    let c = Cluster::with_node2_fault("rb", 8 << 20, Some("corrupt-received-images"));
    let client = c.client();
    let err = c.migrate(0, "node2").expect_err("restore on node2 must fail");
    assert!(err.contains("rolled back"), "{err}");
    assert!(c.runs_on(0) && !c.runs_on(1), "runs on node1 only");
    assert!(client.wait_batches(50, Duration::from_secs(10)), "still served by node1 (client error: {:?})", client.error());
    check_client(client, c.filled_keys);
}

#[test]
fn host_migrate_target_killed_mid_transfer() {
    if !host::require_migration_host("host_migrate_target_killed_mid_transfer") {
        return;
    }
    let mut c = Cluster::new("kill", 256 << 20);
    let client = c.client();
    let mut child = Command::new(BIN)
        .args(["migrate", &c.name, "--to", "node2", "--json", "--socket"])
        .arg(&c.nodes[0].socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut killed = false;
    for line in lines {
        let line = line.unwrap();
        if !killed && line.contains("\"bytes\"") && line.contains("\"sent_bytes\":") && !line.contains("\"sent_bytes\":0") {
            c.nodes[1].kill();
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    eprintln!("migrate: {err}");
    assert!(killed, "the transfer was under way when node2 died");
    assert!(!status.success(), "the migration failed");
    assert!(c.runs_on(0), "the workload keeps running on node1");
    assert!(client.wait_batches(50, Duration::from_secs(10)), "still served by node1 (client error: {:?})", client.error());
    check_client(client, c.filled_keys);
}

#[test]
fn host_migrate_post_copy_keeps_the_client() {
    if !host::require_migration_host("host_migrate_post_copy_keeps_the_client") {
        return;
    }
    let c = Cluster::new("pc", 64 << 20);
    let client = c.client();
    let s = c.migrate_with(0, "node2", &["--post-copy"]).expect("post-copy hop");
    assert!(c.runs_on(1) && !c.runs_on(0), "runs on node2 only");
    assert_eq!(s.mode, "post_copy");
    assert_eq!(s.precopy_rounds, 0);
    assert!(s.page_bytes > 48 << 20, "the dataset's memory streamed after the restore: {s:?}");
    assert!(s.wire_bytes - s.page_bytes < 8 << 20, "only the small non-memory images went over QUIC before the restore: {s:?}");
    assert!(client.wait_batches(50, Duration::from_secs(10)), "served from node2 (client error: {:?})", client.error());
    let back = c.migrate(1, "node1").expect("pre-copy hop back from a post-copied workload");
    assert_eq!(back.mode, "pre_copy");
    assert!(c.runs_on(0) && !c.runs_on(1));
    eprintln!("post-copy freeze steps {:?}; pre-copy back {:?}", s.freeze_steps_ms, back.freeze_steps_ms);
    eprintln!("post-copy: freeze {} ms, {} page bytes in {} ms; pre-copy back: freeze {} ms", s.freeze_ms, s.page_bytes, s.page_stream_ms, back.freeze_ms);
    check_client(client, c.filled_keys);
}

#[test]
fn host_migrate_post_copy_failed_restore_resumes_the_source() {
    if !host::require_migration_host("host_migrate_post_copy_failed_restore_resumes_the_source") {
        return;
    }
    let c = Cluster::with_node2_fault("pcrb", 8 << 20, Some("corrupt-received-images"));
    let client = c.client();
    let err = c.migrate_with(0, "node2", &["--post-copy"]).expect_err("restore on node2 must fail");
    assert!(err.contains("rolled back"), "{err}");
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap_or_default();
    eprintln!("node1 log (post-copy lines):\n{}", log.lines().filter(|l| ["lazy", "relay", "post-copy", "rolled", "netlock", "resum"].iter().any(|k| l.contains(k))).collect::<Vec<_>>().join("\n"));
    assert!(c.runs_on(0) && !c.runs_on(1), "the frozen redis runs on node1 again, nowhere else");
    assert!(client.wait_batches(50, Duration::from_secs(10)), "still served by node1, on the same connection (client error: {:?})", client.error());
    check_client(client, c.filled_keys);
}
