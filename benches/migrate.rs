//! `cargo bench --bench migrate`: live migration of redis between two real `hotspot-node`
//! daemons (CRIU, QUIC, content addressing, address moved between namespaces) against a naive
//! baseline in the same run: `criu dump` to a dir -> `tar | zstd -1 | socat` -> unpack ->
//! `criu restore`. Datasets of random bytes (incompressible), a pipelining client measuring the
//! gap it sees. Per size: hop A->B (cold), B->A (cold: A never received), A->B again (B has
//! the chunks: the "second hop" figure), then two post-copy hops (B->A, A->B: restore first,
//! memory paged in from the source after), then naive moves. Medians; last line
//! `migrate gap_ms_1g=<n> total_ratio_vs_naive=<n> second_hop_wire_pct=<n> gap_ms_1g_postcopy=<n>`
//! (the `_1g` figures are those of the last size run).
//! `MIGRATE_BENCH_SIZES_MIB` (default "64,1024") and `MIGRATE_BENCH_NAIVE_RUNS` (default 2) tune it;
//! `MIGRATE_BENCH_KEEP_LOGS=DIR` keeps the daemons' logs (a timeline of every hop).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hotspot_node::criu::Criu;
use hotspot_node::daemon::control::{self, Reply, Request};
use hotspot_node::lab;
use hotspot_node::sys::names::{restore_netns, workload_netns};
use hotspot_node::migrate::Summary;
use hotspot_testkit::testbed::{self, Cleanup, PipeliningClient};
use hotspot_protocol::migration::MigrationMode;
use hotspot_node::sys::netns;
use hotspot_node::workload::{Checkpoint, CheckpointOptions, RestoreSpec, ServiceNet, StartOptions, Workloads};

#[path = "support/mod.rs"]
mod support;
use support::{daemon_binary, median};

/// A `hotspot-node run` process on loopback from [`lab::Daemon`] (killed on drop).
struct Daemon(lab::Daemon);

impl Daemon {
    fn start(bin: &Path, root: &Path, name: &str, bootstrap: Option<&str>) -> Daemon {
        let workloads = root.join(format!("{name}-workloads")).display().to_string();
        let mut extra = vec!["--workloads-dir", workloads.as_str(), "--mdns", "false", "--listen", "/ip4/127.0.0.1/tcp/0", "--advert-interval-ms", "500"];
        extra.extend(["--transfer-listen", "127.0.0.1:0", "--cpu-millis", "8000", "--memory-bytes", "17179869184"]);
        if let Some(b) = bootstrap {
            extra.extend(["--bootstrap", b]);
        }
        Daemon(lab::Daemon::start_with_env(bin, root, name, None, &extra, &[("RUST_LOG", "info")]).unwrap_or_else(|e| panic!("{name}: {e}")))
    }

    fn status(&self) -> Option<control::StatusReport> {
        self.0.status().ok()
    }

    fn peers(&self) -> usize {
        self.0.peers().map_or(0, |p| p.len())
    }

    /// Migrates `workload` to the node of daemon `to`; on failure, the error with both logs' tails.
    fn migrate(&self, workload: &str, to: &Daemon, mode: MigrationMode) -> Result<Summary, String> {
        let req = Request::Migrate { workload: workload.into(), to: Some(to.0.name.clone()), mode: Some(mode) };
        match control::call_stream(&self.0.socket, &req, Duration::from_secs(600), |_| {}).expect("control socket") {
            Reply::Migrated { summary } => Ok(summary),
            other => Err(format!("migration to {} failed: {other:?}\n{}{}", to.0.name, self.0.log_tail(40), to.0.log_tail(40))),
        }
    }
}

fn sh(script: &str) -> Child {
    Command::new("sh").args(["-c", script]).stdin(Stdio::null()).spawn().expect("sh")
}

struct SizeResult {
    gaps_ms: Vec<f64>,
    totals_ms: Vec<f64>,
    freeze_ms: Vec<f64>,
    wire: Vec<u64>,
    naive_gaps_ms: Vec<f64>,
    naive_totals_ms: Vec<f64>,
    post_gaps_ms: Vec<f64>,
    post_freeze_ms: Vec<f64>,
}

/// One naive move on one host: dump, tar | zstd -1 | socat over loopback, unpack, restore into
/// a fresh namespace (address moved like the real path). Returns (client gap, total) in ms.
fn naive_move(criu: &Criu, wls: &Workloads, name: &str, client: (&str, SocketAddr), to_ns: &str, tmp: &Path) -> (f64, f64) {
    let from_ns = wls.get(name).unwrap().record.netns;
    let (src, dst) = (tmp.join(format!("naive-src-{to_ns}")), tmp.join(format!("naive-dst-{to_ns}")));
    std::fs::create_dir_all(&dst).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut receiver = sh(&format!("socat -u TCP-LISTEN:{port},reuseaddr STDOUT | zstd -d -q | tar -C {} -xf -", dst.display()));
    std::thread::sleep(Duration::from_millis(300)); // listening before the freeze, as an operator would
    let pc = PipeliningClient::start(Some(client.0), client.1, Duration::from_millis(2), &format!("naive{to_ns}")).unwrap();
    assert!(pc.wait_batches(20, Duration::from_secs(10)));
    let t0 = Instant::now();
    wls.checkpoint(criu, name, &CheckpointOptions::new(&src)).expect("naive dump");
    let sent = sh(&format!("tar -C {} -cf - . | zstd -1 -q | socat -u STDIN TCP:127.0.0.1:{port}", src.display())).wait().unwrap();
    assert!(sent.success() && receiver.wait().unwrap().success(), "naive pipe failed");
    let cp = Checkpoint::open(&dst, criu).expect("naive image");
    let spec = RestoreSpec { name: name.into(), netns: to_ns.into(), service_net: ServiceNet::MoveFrom(from_ns), timeout: Duration::from_secs(300) };
    wls.restore(criu, &cp, &spec).expect("naive restore");
    let total = t0.elapsed().as_secs_f64() * 1e3;
    assert!(pc.wait_batches(50, Duration::from_secs(20)), "served after the naive move");
    let report = pc.finish();
    assert_eq!(report.error, None, "naive move kept the connection");
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&dst);
    (report.max_stall.as_secs_f64() * 1e3, total)
}

fn bench_size(bin: &Path, criu: &Criu, mib: u64, naive_runs: usize, subnet: u32) -> SizeResult {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let name = format!("mb{mib}x{}", std::process::id());
    let client_ns = format!("hsc-{name}");
    let wls: Vec<Workloads> = ["a", "b"].iter().map(|n| Workloads::new(root.join(format!("{n}-workloads")))).collect();
    let mut guards: Vec<Cleanup> = wls.iter().map(|w| Cleanup::new(w.clone())).collect();
    guards.iter_mut().for_each(|g| g.names.push(name.clone()));
    guards[0].netns.extend([workload_netns(&name), client_ns.clone()]);
    guards[0].netns.extend((0..naive_runs).map(|i| restore_netns(&name, &format!("nv{i}"))));
    let a = Daemon::start(bin, root, "a", None);
    let boot = a.status().unwrap().mesh["listen_addrs"][0].as_str().unwrap().to_string();
    let b = Daemon::start(bin, root, "b", Some(&boot));
    for d in [&a, &b] {
        let node = d.status().unwrap().node;
        guards[0].netns.push(restore_netns(&name, &node));
    }
    let start = Instant::now();
    while a.peers() < 1 || b.peers() < 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "daemons did not mesh");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));

    netns::create(&client_ns).unwrap();
    let server: SocketAddr = format!("10.77.{subnet}.2:6379").parse().unwrap();
    wls[0]
        .start(&StartOptions {
            name: name.clone(),
            command: hotspot_testkit::testbed::redis_command(&["--appendonly", "no"]),
            address: Some(format!("10.77.{subnet}.2/24").parse().unwrap()),
            uplink_netns: Some(client_ns.clone()),
            uplink_address: Some(format!("10.77.{subnet}.1/24").parse().unwrap()),
            ..Default::default()
        })
        .expect("start redis");
    assert!(testbed::wait_listening(Some(&client_ns), server, Duration::from_secs(10)));
    let t = Instant::now();
    let keys = testbed::fill_random(Some(&client_ns), server, mib << 20, 16 * 1024).expect("fill");
    eprintln!("[{mib} MiB] filled {keys} keys of random bytes in {:.1} s", t.elapsed().as_secs_f64());

    let mut r = SizeResult { gaps_ms: vec![], totals_ms: vec![], freeze_ms: vec![], wire: vec![], naive_gaps_ms: vec![], naive_totals_ms: vec![], post_gaps_ms: vec![], post_freeze_ms: vec![] };
    let (pre, post) = (MigrationMode::PreCopy, MigrationMode::PostCopy);
    let hops = [(&a, &b, "A->B cold", pre), (&b, &a, "B->A cold", pre), (&a, &b, "A->B again", pre), (&b, &a, "B->A post-copy", post), (&a, &b, "A->B post-copy", post)];
    for (from, to, label, mode) in hops {
        let pc = PipeliningClient::start(Some(&client_ns), server, Duration::from_millis(2), label).unwrap();
        assert!(pc.wait_batches(20, Duration::from_secs(10)));
        let s = from.migrate(&name, to, mode).unwrap_or_else(|e| {
            keep_logs(root, mib);
            panic!("{label}: {e}")
        });
        assert!(pc.wait_batches(50, Duration::from_secs(20)), "served after {label}");
        let report = pc.finish();
        assert_eq!(report.error, None, "{label}: the client kept its connection");
        report.incr_sequence_ok().unwrap();
        let gap = report.max_stall.as_secs_f64() * 1e3;
        eprintln!(
            "[{mib} MiB] {label}: client gap {gap:.0} ms, frozen {} ms {:?}, total {} ms, wire {:.1} MiB of {:.1} MiB image, {} pre-copy round(s), {:.1} MiB paged in after the restore in {} ms",
            s.freeze_ms,
            s.freeze_steps_ms,
            s.total_ms,
            s.wire_bytes as f64 / 1048576.0,
            s.image_bytes as f64 / 1048576.0,
            s.precopy_rounds,
            s.page_bytes as f64 / 1048576.0,
            s.page_stream_ms
        );
        if mode == post {
            r.post_gaps_ms.push(gap);
            r.post_freeze_ms.push(s.freeze_ms as f64);
            continue;
        }
        r.gaps_ms.push(gap);
        r.totals_ms.push(s.total_ms as f64);
        r.freeze_ms.push(s.freeze_ms as f64);
        r.wire.push(s.wire_bytes);
    }
    // The workload is on B now; naive moves run there, daemons out of the way.
    let b_wls = wls[1].clone();
    for i in 0..naive_runs {
        let (gap, total) = naive_move(criu, &b_wls, &name, (&client_ns, server), &restore_netns(&name, &format!("nv{i}")), root);
        eprintln!("[{mib} MiB] naive dump|tar|zstd -1|socat|restore: client gap {gap:.0} ms, total {total:.0} ms");
        r.naive_gaps_ms.push(gap);
        r.naive_totals_ms.push(total);
    }
    drop((a, b));
    keep_logs(root, mib);
    r
}

/// For a timeline of each hop: `MIGRATE_BENCH_KEEP_LOGS=DIR` keeps the daemons' and CRIU's logs.
fn keep_logs(root: &Path, mib: u64) {
    if let Some(keep) = std::env::var_os("MIGRATE_BENCH_KEEP_LOGS") {
        let dest = Path::new(&keep).join(format!("{mib}mib"));
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("mkdir -p '{0}' && cd '{1}' && find . -name '*.log' -size -64M -exec cp --parents {{}} '{0}' \\;", dest.display(), root.display()))
            .status();
        eprintln!("[{mib} MiB] daemon logs kept in {}", dest.display());
    }
}

fn main() {
    if unsafe { libc_geteuid() } != 0 {
        eprintln!("migrate bench: needs root (namespaces, CRIU); skipped");
        return;
    }
    let sizes: Vec<u64> = std::env::var("MIGRATE_BENCH_SIZES_MIB")
        .unwrap_or_else(|_| "64,1024".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let naive_runs: usize = std::env::var("MIGRATE_BENCH_NAIVE_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let bin = daemon_binary("migrate");
    let criu = Criu::detect().expect("criu");
    let mut last = None;
    for (i, mib) in sizes.iter().enumerate() {
        let r = bench_size(&bin, &criu, *mib, naive_runs, 150 + i as u32 + std::process::id() % 50);
        let ratio = median(r.totals_ms.clone()) / median(r.naive_totals_ms.clone());
        let second_pct = r.wire[2] as f64 / r.wire[0] as f64 * 100.0;
        eprintln!(
            "{mib:>5} MiB: migrate client gap {:.0} ms (frozen {:.0} ms), total {:.0} ms; naive gap {:.0} ms, total {:.0} ms; total ratio {ratio:.2}; second hop wire {second_pct:.1} % (medians of {} hops / {} naive)",
            median(r.gaps_ms.clone()),
            median(r.freeze_ms.clone()),
            median(r.totals_ms.clone()),
            median(r.naive_gaps_ms.clone()),
            median(r.naive_totals_ms.clone()),
            r.gaps_ms.len(),
            r.naive_totals_ms.len()
        );
        eprintln!(
            "{mib:>5} MiB: post-copy client gap {:.0} ms (frozen until restored {:.0} ms; medians of {} hops)",
            median(r.post_gaps_ms.clone()),
            median(r.post_freeze_ms.clone()),
            r.post_gaps_ms.len()
        );
        last = Some((median(r.gaps_ms), ratio, second_pct, median(r.post_gaps_ms)));
    }
    let (gap, ratio, pct, post_gap) = last.expect("at least one size");
    println!("migrate gap_ms_1g={gap:.0} total_ratio_vs_naive={ratio:.2} second_hop_wire_pct={pct:.1} gap_ms_1g_postcopy={post_gap:.0}");
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
