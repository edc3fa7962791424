//! Five real daemons, each in its own network namespace on one private bridge, with no bootstrap
//! list: they must find each other by mDNS, see a clean stop at once and a crash after the TTL,
//! and never overbook a target under concurrent reservations.

mod mesh_support;

use std::time::{Duration, Instant};

use hotspot_node::daemon::control::ReserveOutcome;
use mesh_support::{require_root, wait_for, Lan, Node};

const TTL_MS: u64 = 4000;

fn start_cluster(root: &std::path::Path, lan: &Lan, target_flags: &[&str]) -> Vec<Node> {
    let ttl = TTL_MS.to_string();
    (0..lan.nodes.len())
        .map(|i| {
            let mut flags = vec![
                "--listen",
                "/ip4/0.0.0.0/udp/0/quic-v1,/ip4/0.0.0.0/tcp/0",
                "--mdns",
                "true",
                "--advert-interval-ms",
                "1000",
                "--advert-ttl-ms",
                &ttl,
            ];
            if i == 0 {
                flags.extend_from_slice(target_flags);
            }
            Node::start(root, &format!("node-{i}"), Some(&lan.nodes[i]), &flags)
        })
        .collect()
}

fn others(nodes: &[Node], me: usize) -> Vec<String> {
    let mut names: Vec<String> = nodes.iter().enumerate().filter(|(i, _)| *i != me).map(|(_, n)| n.name.clone()).collect();
    names.sort();
    names
}

#[test]
fn host_mesh_five_nodes_discover_by_mdns_and_notice_departures() {
    if !require_root("host_mesh_five_nodes_discover_by_mdns_and_notice_departures") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let lan = Lan::new(5).expect("create the lab network");
    let started = Instant::now();
    let mut nodes = start_cluster(root.path(), &lan, &[]);
    let took = wait_for("every node to see the other four", Duration::from_secs(15), || {
        nodes.iter().enumerate().all(|(i, n)| n.peer_names() == others(&nodes, i))
    });
    eprintln!("full view after {:?} (all started {:?} ago)", took, started.elapsed());

    // The real CLI shows the same, as a table and as JSON.
    let out = nodes[2].cli(&["peers", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["state"] == "healthy" && r["price_per_hour"].as_f64() == Some(0.10)));
    let table = String::from_utf8(nodes[2].cli(&["peers"]).stdout).unwrap();
    assert!(table.starts_with("PEER") && table.contains("node-4") && table.contains("healthy"), "{table}");

    // Clean stop: gone from every peer table at once (well inside the TTL).
    let t = Instant::now();
    nodes[4].stop();
    let gone = wait_for("node-4 to vanish after a clean stop", Duration::from_millis(TTL_MS / 2), || {
        nodes[..4].iter().all(|n| !n.peer_names().contains(&"node-4".to_string()))
    });
    eprintln!("clean stop noticed by all after {:?} ({:?} incl. process exit)", gone, t.elapsed());

    // Crash: still listed for a while (nobody said goodbye), gone after the TTL.
    nodes[3].kill();
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(nodes[..3].iter().all(|n| n.peer_names().contains(&"node-3".to_string())), "a crash is only noticed by the TTL");
    wait_for("node-3 to expire", Duration::from_millis(TTL_MS + 3000), || {
        nodes[..3].iter().all(|n| !n.peer_names().contains(&"node-3".to_string()))
    });
    let expired = killed_at.elapsed();
    assert!(expired >= Duration::from_millis(TTL_MS - 1000), "expired after {expired:?}, TTL is {TTL_MS} ms");
    eprintln!("crash noticed after {expired:?} (TTL {TTL_MS} ms)");
    for i in 0..3 {
        assert_eq!(nodes[i].peer_names(), others(&nodes[..3], i));
    }
}

#[test]
fn host_mesh_ten_concurrent_reservations_for_room_of_three_grant_three() {
    if !require_root("host_mesh_ten_concurrent_reservations_for_room_of_three_grant_three") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let lan = Lan::new(5).expect("create the lab network");
    // node-0 offers exactly 3 CPUs and 3 GiB; each request wants 1 CPU and 1 GiB.
    let mut nodes = start_cluster(root.path(), &lan, &["--cpu-millis", "3000", "--memory-bytes", "3221225472"]);
    wait_for("sources to see node-0", Duration::from_secs(15), || {
        nodes[1..].iter().all(|n| n.peer_names().contains(&"node-0".to_string()))
    });
    // Ten CLI processes at once, spread over the four source daemons.
    let children: Vec<_> = (0..10)
        .map(|i| {
            let src = &nodes[1 + i % 4];
            std::process::Command::new(mesh_support::BIN)
                .args(["reserve", "--peer", "node-0", "--cpus", "1", "--memory-mib", "1024", "--json"])
                .args(["--workload", &format!("w{i}")])
                .arg("--socket")
                .arg(&src.socket)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut granted = 0;
    let mut denied = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let outcome: ReserveOutcome = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        match out.status.code() {
            Some(0) => {
                assert!(outcome.granted.is_some());
                granted += 1;
            }
            Some(2) => {
                assert!(outcome.attempts[0].outcome.contains("not enough free capacity"), "{outcome:?}");
                denied += 1;
            }
            other => panic!("reserve exited {other:?}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }
    assert_eq!((granted, denied), (3, 7));
    let target = nodes[0].status();
    assert_eq!(target.reservations_held.len(), 3);
    assert_eq!(target.free.cpu_millis, 0);
    // The target now advertises no room; sources see that and elect nobody.
    wait_for("node-1 to see node-0 full", Duration::from_secs(5), || {
        nodes[1].peers().iter().any(|p| p.name == "node-0" && p.free.cpu_millis == 0)
    });
    // The ledger is on disk: a restarted target still holds the three grants.
    nodes[0].stop();
    let restarted = Node::start(root.path(), "node-0", Some(&lan.nodes[0]), &["--cpu-millis", "3000", "--memory-bytes", "3221225472"]);
    let status = restarted.cli(&["status", "--json"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["reservations_held"].as_array().unwrap().len(), 3);
    assert_eq!(json["free"]["cpu_millis"], 0);
}

#[test]
fn cli_without_daemon_says_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(mesh_support::BIN)
        .args(["peers", "--socket"])
        .arg(dir.path().join("nothing.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not running") && err.contains("hotspot-node run"), "{err}");
}
