//! The migration triggers across real daemons: drain, a spot notice, the price trigger, and
//! reservations when two sources elect the same target. Real CRIU, real redis, real QUIC;
//! daemons on loopback (bootstrap, mDNS off), each workload in its own network namespace. Every
//! namespace and cluster directory is named after this process; all removed on drop.

#[path = "mesh_support/mod.rs"]
mod mesh_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hotspot_node::daemon::control::{Reply, Request, ReserveParams};
use hotspot_node::daemon::api::EvacuationReport;
use hotspot_node::lab::Daemon;
use hotspot_node::sys::names::{restore_netns, workload_netns};
use hotspot_testkit::testbed::Cleanup;
use hotspot_testkit::host;
use hotspot_node::workload::{StartOptions, Workloads};
use hotspot_protocol::{NodeState, Resources};
use mesh_support::{wait_for, Node, BIN};

struct Cluster {
    // Field order is drop order: daemons stop before their workloads and namespaces go.
    nodes: Vec<Node>,
    wls: Vec<Workloads>,
    guards: Vec<Cleanup>,
    tag: String,
    root: PathBuf,
    _tmp: tempfile::TempDir,
}

const LOCAL: [&str; 6] = ["--mdns", "false", "--listen", "/ip4/127.0.0.1/tcp/0", "--advert-interval-ms", "500"];

impl Cluster {
    /// Daemons named node1.. with the given prices (and CPU offered, thousandths), meshed
    /// through node1. Each workload needs a tenth of a CPU.
    fn new(tag: &str, nodes: &[(f64, u32)], extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let tag = format!("{tag}{}", std::process::id());
        let mut c = Cluster { nodes: Vec::new(), wls: Vec::new(), guards: Vec::new(), tag, root: root.clone(), _tmp: tmp };
        for (i, (price, cpu)) in nodes.iter().enumerate() {
            let name = format!("node{}", i + 1);
            let wdir = root.join(format!("{name}-workloads"));
            c.wls.push(Workloads::new(&wdir));
            c.guards.push(Cleanup::new(Workloads::new(&wdir)));
            let (price, cpu, wdir) = (price.to_string(), cpu.to_string(), wdir.display().to_string());
            let mut flags: Vec<&str> = LOCAL.to_vec();
            flags.extend(["--price", &price, "--cpu-millis", &cpu, "--memory-bytes", "8589934592", "--workloads-dir", &wdir, "--transfer-listen", "127.0.0.1:0"]);
            flags.extend(extra);
            let bootstrap = c.nodes.first().map(|n: &Node| n.status().mesh["listen_addrs"][0].as_str().expect("node1 listens").to_string());
            if let Some(b) = &bootstrap {
                flags.extend(["--bootstrap", b]);
            }
            // A cluster directory of our own: the local provider must not meet other tests' nodes.
            let cluster = root.join("cluster").display().to_string();
            let d = Daemon::start_with_env(Path::new(BIN), &root, &name, None, &flags, &[("HOTSPOT_LOCAL_CLUSTER", &cluster)])
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            c.nodes.push(Node(d));
        }
        let others = nodes.len() - 1;
        wait_for("the daemons to see each other", Duration::from_secs(30), || c.nodes.iter().all(|n| n.peers().len() == others));
        std::thread::sleep(Duration::from_secs(1)); // trust sets follow the peer table
        c
    }

    fn workload_name(&self, k: usize) -> String {
        format!("{}w{k}", self.tag)
    }

    /// Starts redis workload `k` on node `i` (no service address: only its memory moves).
    fn start_redis(&mut self, i: usize, k: usize) -> String {
        let name = self.workload_name(k);
        for (g, n) in self.guards.iter_mut().zip(&self.nodes) {
            g.names.push(name.clone());
            g.netns.push(restore_netns(&name, &n.status().node));
        }
        self.guards[i].netns.push(workload_netns(&name));
        self.wls[i]
            .start(&StartOptions { name: name.clone(), command: hotspot_testkit::testbed::redis_command(&["--appendonly", "no"]), ..Default::default() })
            .unwrap();
        wait_for("the workload to be advertised", Duration::from_secs(10), || self.nodes[i].status().workloads.iter().any(|w| w.name == name));
        name
    }

    fn where_is(&self, name: &str) -> Vec<usize> {
        (0..self.wls.len()).filter(|&i| self.wls[i].get(name).is_ok_and(|w| w.is_running())).collect()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.root.join(format!("node{}.log", i + 1))).unwrap_or_default()
    }

    fn reserve(&self, from: usize, peer: &str, needs: Resources) -> hotspot_node::daemon::control::ReserveOutcome {
        let params = ReserveParams { peer: Some(peer.into()), workload: format!("{}probe", self.tag), needs, ttl_ms: 60_000, volume_zone: None };
        match self.nodes[from].call(&Request::Reserve(params)) {
            Reply::Reserve(o) => o,
            other => panic!("reserve: {other:?}"),
        }
    }
}

/// Runs `drain` or `notice` through the CLI with `--json`; the final report.
fn evacuate(node: &Node, args: &[&str]) -> EvacuationReport {
    let mut all = args.to_vec();
    all.push("--json");
    let out = node.cli(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{args:?}:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("last line is not a report ({e})"))
}

const CPUS4: u32 = 4000;
const SMALL: Resources = Resources { cpu_millis: 100, memory_bytes: 1 << 20, disk_bytes: 0 };

#[test]
fn host_triggers_drain_moves_workloads_off_and_refuses_reservations() {
    if !host::require_migration_host("host_triggers_drain_moves_workloads_off_and_refuses_reservations") {
        return;
    }
    let mut c = Cluster::new("drn", &[(0.10, CPUS4), (0.10, CPUS4)], &[]);
    let small = c.start_redis(0, 1);
    let large = c.start_redis(0, 2);
    // Make the second one the larger: the drain moves it first.
    let server = "127.0.0.1:6379".parse().unwrap();
    // redis is advertised as soon as its process starts, a moment before it listens.
    let ns = workload_netns(&large);
    wait_for("redis to take the data", Duration::from_secs(10), || hotspot_testkit::testbed::fill_random(Some(&ns), server, 16 << 20, 4096).is_ok());
    wait_for("the larger workload to be advertised as larger", Duration::from_secs(10), || {
        let s = c.nodes[0].status();
        let mem = |n: &str| s.workloads.iter().find(|w| w.name == n).map_or(0, |w| w.needs.memory_bytes);
        mem(&large) > mem(&small)
    });

    let report = evacuate(&c.nodes[0], &["drain"]);
    assert_eq!(report.failed, vec![], "{report:?}");
    assert_eq!(report.moved.iter().map(|s| s.workload.clone()).collect::<Vec<_>>(), vec![large.clone(), small.clone()], "largest first");
    assert_eq!(report.state, NodeState::Draining);
    assert_eq!(c.where_is(&small), vec![1]);
    assert_eq!(c.where_is(&large), vec![1]);
    assert_eq!(c.nodes[0].status().state, NodeState::Draining);
    wait_for("node2 to see node1 draining", Duration::from_secs(10), || c.nodes[1].peers().iter().any(|p| p.name == "node1" && p.state == NodeState::Draining));

    // A draining node refuses new reservations, with the reason.
    let denied = c.reserve(1, "node1", SMALL);
    assert!(denied.granted.is_none());
    assert_eq!(denied.attempts[0].outcome, "denied: target is draining", "{denied:?}");
    // ...and nobody elects it: a migration back by election finds no target.
    let out = c.nodes[1].cli(&["migrate", &small, "--to", "auto"]);
    assert!(!out.status.success());

    let undrain = c.nodes[0].cli(&["drain", "--cancel"]);
    assert!(undrain.status.success() && String::from_utf8_lossy(&undrain.stdout).contains("healthy"));
    wait_for("node2 to see node1 healthy", Duration::from_secs(10), || c.nodes[1].peers().iter().any(|p| p.name == "node1" && p.state == NodeState::Healthy));
    let granted = c.reserve(1, "node1", SMALL);
    assert!(granted.granted.is_some(), "{granted:?}");

    // node2 held committed reservations for both arrivals; one leaving again frees its own.
    let committed = |n: &str| c.nodes[1].status().reservations_held.iter().any(|r| r.committed && r.workload == n);
    assert!(committed(&small), "the arrival committed its reservation on node2");
    let out = c.nodes[1].cli(&["migrate", &small, "--to", "node1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!committed(&small), "node2 released the reservation of the workload that left");
    assert!(committed(&large));
}

#[test]
fn host_triggers_notice_evacuates_before_the_deadline() {
    if !host::require_migration_host("host_triggers_notice_evacuates_before_the_deadline") {
        return;
    }
    let mut c = Cluster::new("ntc", &[(0.10, CPUS4), (0.30, CPUS4), (0.20, CPUS4)], &[]);
    let a = c.start_redis(0, 1);
    let b = c.start_redis(0, 2);
    let started = Instant::now();
    let report = evacuate(&c.nodes[0], &["notice", "--deadline-secs", "90"]);
    let took = started.elapsed();
    assert_eq!(report.deadline_met, Some(true), "{report:?}");
    // A node about to be reclaimed freezes at once: the image travels once, no pre-copy round.
    assert!(report.moved.iter().all(|s| s.precopy_rounds == 0), "no pre-copy under a notice: {:?}", report.moved);
    assert!(took < Duration::from_secs(90));
    assert_eq!(report.state, NodeState::Leaving);
    // Both went to the cheapest peer that had room (node3), even though node1 was cheaper still.
    assert_eq!(c.where_is(&a), vec![2]);
    assert_eq!(c.where_is(&b), vec![2]);
    // The other nodes dropped node1 from their live view at once (not after the advert TTL).
    for n in &c.nodes[1..] {
        assert!(n.peers().iter().all(|p| p.name != "node1"), "{} still lists node1", n.name);
    }
    let moves = c.nodes[0].status().moves;
    assert_eq!(moves.iter().filter(|m| m.trigger == "notice" && m.summary.is_some()).count(), 2, "{moves:?}");
    // A leaving node cannot be drained or undrained.
    assert!(!c.nodes[0].cli(&["drain", "--cancel"]).status.success());
}

#[test]
fn host_triggers_price_trigger_hops_once_and_not_back() {
    if !host::require_migration_host("host_triggers_price_trigger_hops_once_and_not_back") {
        return;
    }
    let mut c = Cluster::new("prc", &[(0.10, CPUS4), (0.10, CPUS4)], &["--hop-cooldown-ms", "3000", "--hop-check-interval-ms", "500"]);
    let w = c.start_redis(0, 1);
    std::thread::sleep(Duration::from_secs(4)); // equal prices: nothing moves
    assert_eq!(c.where_is(&w), vec![0]);

    let out = c.nodes[1].cli(&["price", "0.05"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the price trigger to move the workload to node2", Duration::from_secs(60), || c.where_is(&w) == vec![1]);
    // The move is recorded when the source's side of the migration ends, a moment after the
    // workload runs on the target.
    wait_for("node1 to record the move", Duration::from_secs(30), || !c.nodes[0].status().moves.is_empty());
    let moves = c.nodes[0].status().moves;
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!(moves[0].trigger, "price");
    assert!(c.log(0).contains("price_trigger"), "the move is logged in the trigger's span");

    // node1 becomes a little cheaper than node2, but not by the margin: no hop back, also
    // well past the cool-down.
    assert!(c.nodes[0].cli(&["price", "0.048"]).status.success());
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(c.where_is(&w), vec![1], "hysteresis: no hop back within the margin");
    assert!(c.nodes[1].status().moves.is_empty());

    // Clearly cheaper again: it follows (the trigger still works after the cool-down).
    assert!(c.nodes[0].cli(&["price", "0.02"]).status.success());
    wait_for("the workload to follow the cheaper price back", Duration::from_secs(60), || c.where_is(&w) == vec![0]);
    wait_for("node2 to record its move", Duration::from_secs(30), || c.nodes[1].status().moves.len() == 1);
    assert!(c.nodes[0].cli(&["price", "--clear"]).status.success());
}

#[test]
fn host_triggers_two_sources_one_slot_one_goes_elsewhere() {
    if !host::require_migration_host("host_triggers_two_sources_one_slot_one_goes_elsewhere") {
        return;
    }
    // node3 is the cheapest but has room for one workload (a tenth of a CPU each); node4 is
    // dearer with room for both.
    let mut c = Cluster::new("two", &[(0.30, CPUS4), (0.30, CPUS4), (0.001, 150), (0.20, CPUS4)], &["--price-trigger", "false"]);
    let a = c.start_redis(0, 1);
    let b = c.start_redis(1, 2);
    // Both sources elect at the same moment; the target's ledger grants one.
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| c.nodes[0].cli(&["migrate", &a, "--to", "auto"]));
        let hb = s.spawn(|| c.nodes[1].cli(&["migrate", &b, "--to", "auto"]));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    for r in [&ra, &rb] {
        assert!(r.status.success(), "{}{}", String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    }
    let placed_now = || {
        let mut placed = [c.where_is(&a), c.where_is(&b)];
        placed.sort();
        placed
    };
    // Both CLIs returned; records settle as each source retires its copy.
    // Exactly one lands on node3; the other on another node (it left its source).
    let settled = |p: &[Vec<usize>; 2]| p.iter().filter(|v| **v == vec![2]).count() == 1 && p.iter().all(|v| v.len() == 1);
    wait_for("both workloads to settle", Duration::from_secs(20), || settled(&placed_now()));
    let placed = placed_now();
    eprintln!("{}\n{}", String::from_utf8_lossy(&ra.stdout), String::from_utf8_lossy(&rb.stdout));
    assert!(settled(&placed), "one on node3, the other elsewhere: {placed:?}");
    // Elsewhere is the next cheapest, node4, although the mesh was bootstrapped through node1
    // only: a source reaches a peer it knows from gossip alone at the advert's mesh addresses.
    assert_eq!(placed, [vec![2], vec![3]], "the refused source fell through to node4, the next cheapest");
    assert_ne!(c.where_is(&a), vec![0], "a left its source");
    assert_ne!(c.where_is(&b), vec![1], "b left its source");

    // The deny-then-next path, explicitly: node3 is full, so it refuses and node4 grants.
    let needs = Resources { cpu_millis: 100, memory_bytes: 1 << 20, disk_bytes: 0 };
    let outcome = c.reserve(0, "node3,node4", needs);
    assert_eq!(outcome.attempts.len(), 2, "{outcome:?}");
    assert_eq!(outcome.attempts[0].outcome, "denied: not enough free capacity");
    assert_eq!(outcome.attempts[1].name, "node4");
    assert!(outcome.granted.is_some());
}
