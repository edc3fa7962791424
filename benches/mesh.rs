//! `cargo bench --bench mesh`: what the mesh daemon costs at rest and how fast news spreads.
//!
//! Real `hotspot-node run` processes on loopback (mDNS off, bootstrap list, default advert
//! interval and TTL):
//! 1. Baseline: one daemon alone, no peers: RSS and CPU over 15 s.
//! 2. The measured daemon with 5 peers: RSS and CPU over 60 s once the mesh has settled.
//! 3. Advert spread: the measured daemon's price is changed (control socket `set_price`) several
//!    times; each time, the delay until all 5 peers hold the new price, from the peers' own
//!    receive timestamps. Median reported.
//!
//! Last line: `mesh idle_rss_mb=<n> idle_cpu_pct=<n> advert_spread_ms=<n>`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hotspot_node::daemon::control::{self, Reply, Request};
use hotspot_node::lab;

#[path = "support/mod.rs"]
mod support;
use support::{daemon_binary, median};

const PEERS: usize = 5;
const IDLE_SECS: u64 = 60;
const BASELINE_SECS: u64 = 15;
const PRICE_CHANGES: usize = 9;

/// A `hotspot-node run` process from [`lab::Daemon`] (killed on drop), plus what this bench reads.
struct Daemon(lab::Daemon);

impl Daemon {
    fn start(bin: &Path, root: &Path, name: &str, bootstrap: Option<&str>) -> Daemon {
        let mut extra = vec!["--mdns", "false", "--listen", "/ip4/127.0.0.1/tcp/0"];
        if let Some(b) = bootstrap {
            extra.extend(["--bootstrap", b]);
        }
        let log = std::env::var("HOTSPOT_BENCH_LOG").unwrap_or_else(|_| "info".into());
        Daemon(lab::Daemon::start_with_env(bin, root, name, None, &extra, &[("RUST_LOG", &log)]).unwrap_or_else(|e| panic!("{name}: {e}")))
    }

    fn call(&self, r: &Request) -> Option<Reply> {
        self.0.call(r).ok()
    }

    fn listen_addr(&self) -> String {
        match self.call(&Request::Status) {
            Some(Reply::Status(s)) => s.mesh["listen_addrs"][0].as_str().unwrap().to_string(),
            other => panic!("{}: {other:?}", self.0.name),
        }
    }

    fn peers(&self) -> Vec<control::PeerRow> {
        match self.call(&Request::Peers) {
            Some(Reply::Peers { peers }) => peers,
            other => panic!("{}: {other:?}", self.0.name),
        }
    }

    /// (resident set in bytes, CPU time in seconds) from /proc.
    fn usage(&self) -> (u64, f64) {
        let pid = self.0.pid().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may contain spaces) start at ") ".
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        (rss_kib * 1024, ticks as f64 / clock_ticks())
    }
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok()).unwrap_or(100.0)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// RSS (MiB) at the end and CPU (% of one core) over `secs` of idling.
fn idle(d: &Daemon, secs: u64) -> (f64, f64) {
    let (_, cpu0) = d.usage();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (rss, cpu1) = d.usage();
    (rss as f64 / (1 << 20) as f64, (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bin = daemon_binary("mesh");
    // Kept (with the daemons' logs) if the bench fails; removed on success.
    let root = tempfile::Builder::new().prefix("hotspot-mesh-bench-").tempdir().unwrap().keep();
    let root = &root;
    println!("daemon logs in {}", root.display());

    let alone = Daemon::start(&bin, root, "alone", None);
    std::thread::sleep(Duration::from_secs(3));
    let (base_rss, base_cpu) = idle(&alone, BASELINE_SECS);
    drop(alone);
    println!("baseline (no peers, {BASELINE_SECS} s): rss_mb={base_rss:.1} cpu_pct={base_cpu:.2}");

    let measured = Daemon::start(&bin, root, "measured", None);
    let addr = measured.listen_addr();
    let peers: Vec<Daemon> =
        (0..PEERS).map(|i| Daemon::start(&bin, root, &format!("peer-{i}"), Some(&addr))).collect();
    let start = Instant::now();
    while !(measured.peers().len() == PEERS && peers.iter().all(|p| p.peers().len() == PEERS)) {
        assert!(start.elapsed() < Duration::from_secs(60), "mesh did not settle");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("mesh of {} settled in {:?}", PEERS + 1, start.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let (rss, cpu) = idle(&measured, IDLE_SECS);
    println!("idle with {PEERS} peers ({IDLE_SECS} s): rss_mb={rss:.1} cpu_pct={cpu:.2} (vs alone: {:+.1} MiB)", rss - base_rss);

    let mut spreads = Vec::new();
    for i in 0..PRICE_CHANGES {
        // Short decimals: serde_json (without float_roundtrip) parses them back exactly.
        let price = (20 + i) as f64 / 100.0;
        let sent = now_ms();
        match measured.call(&Request::SetPrice { price_per_hour: Some(price) }) {
            Some(Reply::PriceSet { .. }) => {}
            other => panic!("set_price: {other:?}"),
        }
        let t = Instant::now();
        let arrived = loop {
            let seen: Vec<u64> = peers
                .iter()
                .filter_map(|p| {
                    p.peers().into_iter().find(|r| r.name == "measured" && (r.price_per_hour - price).abs() < 1e-9).map(|r| r.received_at_ms)
                })
                .collect();
            if seen.len() == PEERS {
                break seen.into_iter().max().unwrap();
            }
            assert!(t.elapsed() < Duration::from_secs(10), "price change {i} did not reach all peers");
            std::thread::sleep(Duration::from_millis(20));
        };
        spreads.push(arrived.saturating_sub(sent) as f64);
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("advert spread to all {PEERS} peers, ms: {spreads:?}");
    let spread = median(spreads);
    drop(peers);
    drop(measured);
    let _ = std::fs::remove_dir_all(root);
    println!("mesh idle_rss_mb={rss:.1} idle_cpu_pct={cpu:.2} advert_spread_ms={spread:.1}");
}
