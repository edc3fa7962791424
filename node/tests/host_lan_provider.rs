//! The LAN provider end to end: two daemons with `provider = "lan"` (no shared cluster
//! directory, no shared disk: as on VMs) in node namespaces on one bridge, a client namespace on
//! the same bridge, redis started on node1 with a service address on the LAN's subnet and
//! reached through node1's proxy ARP. `hotspot-node migrate redis --to node2` moves it with
//! real CRIU while a client pipelines INCR/SET/PING on one connection: the connection survives
//! (no reconnect), the INCR sequence has no gap, every key is there, node2 now answers ARP for
//! the address and node1 no longer does; then the same back to node1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hotspot_node::lab::{self, Daemon, Lan};
use hotspot_node::sys::names::restore_netns;
use hotspot_testkit::testbed::{self, Cleanup, PipeliningClient};
use hotspot_testkit::host;
use hotspot_node::sys::cgroup::Cgroup;
use hotspot_node::sys::netns;
use hotspot_node::workload::{StartOptions, Workloads};

const BIN: &str = env!("CARGO_BIN_EXE_hotspot-node");
const TEST: &str = "host_lan_provider_moves_redis_and_its_address_between_nodes_and_back";
const WORKLOAD: &str = "redis";
/// A second workload, with a host-directory volume: the LAN provider must refuse to move it.
const WITH_VOLUME: &str = "redisvol";

struct Node {
    daemon: Daemon,
    ns: String,
    id8: String,
    state: PathBuf,
}

impl Node {
    fn workloads(&self) -> Workloads {
        Workloads::new(&self.state).with_cgroup_parent(format!("hotspot-{}", self.id8))
    }
    fn runs_redis(&self) -> bool {
        self.workloads().get(WORKLOAD).is_ok_and(|w| w.is_running())
    }
    /// Whether this node answers ARP for `ip` on its LAN interface.
    fn publishes(&self, ip: &str) -> bool {
        netns::ip(&["-n", &self.ns, "neigh", "show", "proxy", ip, "dev", "eth0"]).is_ok_and(|o| !o.trim().is_empty())
    }
    /// The MAC of this node's LAN interface.
    fn mac(&self) -> String {
        let out = netns::ip(&["-n", &self.ns, "-o", "link", "show", "dev", "eth0"]).unwrap();
        out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap().to_string()
    }
    fn migrate_to(&self, to: &str) -> String {
        self.migrate_named(WORKLOAD, to, true)
    }
    fn migrate_named(&self, workload: &str, to: &str, must_succeed: bool) -> String {
        let out = self.daemon.cli(&["migrate", workload, "--to", to]).unwrap();
        if !must_succeed {
            assert!(!out.status.success(), "migrate {workload} should have failed");
            return format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let log = std::fs::read_to_string(&self.daemon.log).unwrap_or_default();
        assert!(out.status.success(), "migrate {WORKLOAD} --to {to} failed:\n{text}\n--- {} log:\n{log}", self.daemon.name);
        text
    }
}

/// Removes the per-node cgroup parents once empty.
struct CgroupParents(Vec<String>);
impl Drop for CgroupParents {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Cgroup::at(p).destroy(Duration::from_secs(1));
        }
    }
}

fn start_node(lan: &Lan, root: &Path, i: usize) -> Node {
    let name = format!("node{}", i + 1);
    let state = root.join(&name).join("state");
    std::fs::create_dir_all(&state).unwrap();
    // The LAN provider from the config file (what scripts/provision-node writes); its interface
    // is found from the transfer address (eth0 in the node namespace).
    let config = root.join(format!("{name}.toml"));
    std::fs::write(&config, format!("provider = \"lan\"\nworkloads_dir = \"{}\"\n", state.display())).unwrap();
    let (cfg, transfer, price) = (config.display().to_string(), format!("{}:7947", lan.node_ip(i)), format!("{:.2}", 0.10 + 0.02 * i as f64));
    let flags = ["--config", &cfg, "--transfer-listen", &transfer, "--price", &price, "--advert-interval-ms", "1000", "--cpu-millis", "4000", "--memory-bytes", "8589934592"];
    let daemon = Daemon::start(Path::new(BIN), root, &name, Some(&lan.nodes[i]), &flags).unwrap();
    let id = daemon.status().unwrap().node;
    Node { daemon, ns: lan.nodes[i].clone(), id8: id[..8].to_string(), state }
}

/// Two LAN-provider nodes meshed, a client namespace; everything removed on drop (fields drop
/// in order: workloads, cgroup parents, daemons, namespaces, files).
struct Lab {
    _cleanups: Vec<Cleanup>,
    _parents: CgroupParents,
    nodes: Vec<Node>,
    client_ns: String,
    lan: Lan,
    root: tempfile::TempDir,
}

fn lab_with_two_nodes() -> Lab {
    lab::Lan::sweep_stale();
    let root = tempfile::tempdir().unwrap();
    let mut lan = Lan::new(2).unwrap();
    let client_ns = lan.add_client().unwrap();
    let nodes: Vec<Node> = (0..2).map(|i| start_node(&lan, root.path(), i)).collect();
    let _parents = CgroupParents(nodes.iter().map(|n| format!("hotspot-{}", n.id8)).collect());
    let _cleanups: Vec<Cleanup> = nodes
        .iter()
        .map(|n| {
            let mut c = Cleanup::new(n.workloads());
            c.names.extend([WORKLOAD.into(), WITH_VOLUME.into()]);
            c.netns.extend([restore_netns(WORKLOAD, &n.id8), restore_netns(WITH_VOLUME, &n.id8)]);
            c
        })
        .collect();
    lab::wait_until("both nodes to see each other by mDNS", Duration::from_secs(60), || nodes.iter().all(|n| n.daemon.peers().is_ok_and(|p| !p.is_empty())))
        .unwrap();
    Lab { _cleanups, _parents, nodes, client_ns, lan, root }
}

#[test]
fn host_lan_provider_moves_redis_and_its_address_between_nodes_and_back() {
    if !host::require_migration_host(TEST) {
        return;
    }
    let Lab { nodes, client_ns, lan, .. } = &lab_with_two_nodes();

    // redis on node1, started inside node1's namespace as `hotspot-node workload start` would
    // be: its uplink veth end and /32 route are on node1; the daemon publishes the address.
    let address = lan.service_address(1);
    let ip = address.ip.to_string();
    let server = SocketAddr::new(address.ip, 6379);
    let opts = StartOptions {
        name: WORKLOAD.into(),
        command: testbed::redis_command(&[]),
        address: Some(address),
        netns: Some(restore_netns(WORKLOAD, &nodes[0].id8)),
        ..Default::default()
    };
    let wls = nodes[0].workloads();
    netns::run_in(&nodes[0].ns, move || wls.start(&opts)).unwrap().unwrap();
    assert!(
        testbed::wait_listening(Some(client_ns), server, Duration::from_secs(20)),
        "redis on node1 is not reachable from the LAN at {server} (log: {})",
        nodes[0].daemon.log.display()
    );
    assert!(nodes[0].publishes(&ip) && !nodes[1].publishes(&ip));
    let filled = testbed::fill_random(Some(client_ns), server, 8 << 20, 4096).unwrap();
    let client = PipeliningClient::start(Some(client_ns), server, Duration::from_millis(2), "lan").unwrap();
    assert!(client.wait_batches(50, Duration::from_secs(10)), "the client got no answers");

    for (from, to) in [(0, 1), (1, 0)] {
        client.take_max_stall();
        let out = nodes[from].migrate_to(&format!("node{}", to + 1));
        assert!(nodes[to].runs_redis(), "redis does not run on node{} after:\n{out}", to + 1);
        assert!(!nodes[from].runs_redis(), "redis still runs on node{}", from + 1);
        assert!(nodes[to].publishes(&ip), "node{} does not answer ARP for {ip}", to + 1);
        assert!(!nodes[from].publishes(&ip), "node{} still answers ARP for {ip}", from + 1);
        // The gratuitous ARP moved the client's cache entry to the target's MAC. The provider
        // repeats it after 0.3 s and 1.3 s: a host ignores an update within its neighbour
        // `locktime` of the previous one, so the first one alone may not take.
        let neigh = || netns::ip(&["-n", client_ns, "neigh", "show", &ip]).unwrap();
        lab::wait_until("the client's ARP entry to move", Duration::from_secs(3), || neigh().contains(&nodes[to].mac()))
            .unwrap_or_else(|e| panic!("{e}: the client's ARP entry for {ip} is not node{}'s MAC {}: {}", to + 1, nodes[to].mac(), neigh()));
        assert!(client.wait_batches(100, Duration::from_secs(20)), "the client stalled after the move to node{} (client error: {:?})", to + 1, client.error());
        let gap = client.take_max_stall();
        eprintln!("node{} -> node{}: client-visible gap {gap:?}\n{out}", from + 1, to + 1);
        // The client waits no longer than the workload is frozen (plus scheduling slack on a
        // loaded 2-core box): before the uplink answered ARP ahead of the restore, a restored
        // socket's first reply was lost and resent only after its 1 s initial RTO.
        let frozen_ms: u64 = out.split("frozen ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).expect("the summary gives the freeze");
        assert!(gap <= Duration::from_millis(frozen_ms + 300), "client stalled {gap:?} for a {frozen_ms} ms freeze");
    }

    let report = client.finish();
    assert_eq!(report.error, None, "the client's connection broke (it would have to reconnect)");
    report.incr_sequence_ok().unwrap();
    assert!(report.incrs.len() > 200, "too few INCRs: {}", report.incrs.len());
    assert_eq!(report.dbsize, Some(filled as i64 + report.sets_acked as i64 + 1), "DBSIZE: filled keys + acknowledged SETs + the counter");
}

/// A workload with a volume is refused (VMs share no disk): the migration rolls back, the
/// workload keeps running on node1 and node1 answers ARP for its address again.
#[test]
fn host_lan_provider_refuses_a_workload_with_a_volume_and_rolls_back() {
    if !host::require_migration_host("host_lan_provider_refuses_a_workload_with_a_volume_and_rolls_back") {
        return;
    }
    let Lab { nodes, client_ns, lan, root, .. } = &lab_with_two_nodes();
    let address = lan.service_address(2);
    let (ip, server) = (address.ip.to_string(), SocketAddr::new(address.ip, 6379));
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let opts = StartOptions {
        name: WITH_VOLUME.into(),
        command: testbed::redis_command(&[]),
        address: Some(address),
        volume: Some(data),
        netns: Some(restore_netns(WITH_VOLUME, &nodes[0].id8)),
        ..Default::default()
    };
    let wls = nodes[0].workloads();
    netns::run_in(&nodes[0].ns, move || wls.start(&opts)).unwrap().unwrap();
    assert!(testbed::wait_listening(Some(client_ns), server, Duration::from_secs(20)), "not reachable at {server}");
    let out = nodes[0].migrate_named(WITH_VOLUME, "node2", false);
    assert!(out.contains("moves no disks") && out.contains("rolled back"), "{out}");
    assert!(nodes[0].workloads().get(WITH_VOLUME).is_ok_and(|w| w.is_running()), "not running on node1 after the rollback");
    assert!(nodes[0].publishes(&ip) && !nodes[1].publishes(&ip), "node1 must answer ARP for {ip} again, node2 not");
    assert!(testbed::wait_listening(Some(client_ns), server, Duration::from_secs(20)), "not reachable after the rollback");
}
