//! `cargo bench --bench checkpoint`: checkpoint and restore of redis holding 64 MiB and 1 GiB
//! of random (incompressible) values, with a live client pipelining INCR/SET/PING every 2 ms
//! over one TCP connection. Each run dumps redis in one network namespace, moves its address
//! to another and restores it there (images on local disk, no network transfer).
//!
//! Reported per dataset (medians): CRIU dump wall time and frozen time, restore time, image
//! size and the client-visible gap (longest time between two answered batches, so it
//! includes the 2 ms pacing). Baseline in the same run: the gap a client sees when redis is
//! instead restarted and reloads the same dataset from its RDB file (SAVE beforehand, not
//! timed; the client must reconnect, and writes since the SAVE would be lost).
//!
//! Also one post-copy move per dataset (lazy pages: restore first, memory faulted in from the
//! frozen source afterwards), printed on its own line and not part of the last line.
//!
//! Last line: `checkpoint gap_ms_64m=<n> gap_ms_1g=<n> image_mb_1g=<n>`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hotspot_node::criu::Criu;
use hotspot_testkit::testbed::{self, Cleanup, PipeliningClient, Reply};
use hotspot_node::sys::netns;
use hotspot_node::workload::{Checkpoint, CheckpointOptions, RestoreSpec, ServiceNet, StartOptions, Workloads};

#[path = "support/mod.rs"]
mod support;
use support::median;

const MIB: u64 = 1024 * 1024;

struct Run {
    dump_ms: f64,
    frozen_ms: f64,
    restore_ms: f64,
    image_mb: f64,
    gap_ms: f64,
}

fn redis_options(name: &str, client_ns: &str, subnet: u32, dir: &Path) -> StartOptions {
    StartOptions {
        name: name.into(),
        command: hotspot_testkit::testbed::redis_command(&["--appendonly", "no", "--dbfilename", "bench.rdb"]),
        address: Some(format!("10.77.{subnet}.2/24").parse().unwrap()),
        uplink_netns: Some(client_ns.into()),
        uplink_address: Some(format!("10.77.{subnet}.1/24").parse().unwrap()),
        volume: Some(dir.to_path_buf()),
        ..Default::default()
    }
}

fn redis_start(wls: &Workloads, name: &str, client_ns: &str, subnet: u32, dir: &Path) -> SocketAddr {
    wls.start(&redis_options(name, client_ns, subnet, dir)).expect("start redis");
    let addr: SocketAddr = format!("10.77.{subnet}.2:6379").parse().unwrap();
    assert!(testbed::wait_listening(Some(client_ns), addr, Duration::from_secs(20)), "redis listens");
    addr
}

/// One request on a fresh connection from the client namespace.
fn ask(client_ns: &str, addr: SocketAddr, args: &'static [&'static [u8]]) -> std::io::Result<Reply> {
    netns::run_in(client_ns, move || -> std::io::Result<Reply> {
        use std::io::Write;
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
        (&s).write_all(&testbed::command(args))?;
        testbed::read_reply(&mut std::io::BufReader::new(s))
    })
    .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// One post-copy move (not in the last line): the dump freezes redis and serves its memory;
/// the target restores at once and faults pages in through `criu lazy-pages`.
#[allow(clippy::too_many_arguments)]
fn post_copy_run(criu: &Criu, wls: &Workloads, label: &str, name: &str, client_ns: &str, addr: SocketAddr, (from, to): (&String, &String), tmp: &Path) {
    if criu.capabilities().lazy_pages != hotspot_node::criu::LazyPages::Available {
        eprintln!("[{label}] post-copy skipped: {:?}", criu.capabilities().lazy_pages.hint());
        return;
    }
    let client = PipeliningClient::start(Some(client_ns), addr, Duration::from_millis(2), "lazy").expect("client");
    assert!(client.wait_batches(50, Duration::from_secs(30)), "client runs before the dump");
    if !netns::exists(to) {
        netns::create(to).expect("target netns");
    }
    let images = tmp.join("images-lazy");
    let server: SocketAddr = format!("127.0.0.1:{}", 28000 + std::process::id() % 1000).parse().unwrap();
    let t0 = Instant::now();
    let (_, lazy) = wls.checkpoint_lazy(criu, name, &images, server).expect("lazy checkpoint");
    let ready = t0.elapsed();
    let daemon = criu.lazy_pages_daemon(&images, &wls.restore_work_dir(name), server, lazy.netns()).expect("lazy-pages daemon");
    let cp = Checkpoint::open(&images, criu).expect("open checkpoint");
    let spec = RestoreSpec { name: name.into(), netns: to.clone(), service_net: ServiceNet::MoveFrom(from.clone()), timeout: Duration::from_secs(600) };
    let (_, outcome) = wls.restore(criu, &cp, &spec).expect("lazy restore");
    assert!(client.wait_batches(50, Duration::from_secs(60)), "client answered after the restore");
    daemon.finish(Duration::from_secs(600)).expect("lazy-pages daemon");
    lazy.finish(Duration::from_secs(600)).expect("lazy dump");
    let all_pages = t0.elapsed();
    let report = client.finish();
    assert_eq!(report.error, None, "client must not need a reconnect");
    report.incr_sequence_ok().expect("INCR sequence continuous");
    println!(
        "{label:>4}: post-copy: frozen-to-serving {:.0} ms, restore {:.0} ms, client gap {:.0} ms, all pages moved {:.0} ms after the freeze",
        ready.as_secs_f64() * 1e3,
        outcome.elapsed.as_secs_f64() * 1e3,
        report.max_stall.as_secs_f64() * 1e3,
        all_pages.as_secs_f64() * 1e3
    );
    std::fs::remove_dir_all(&images).ok();
}

fn bench_size(criu: &Criu, label: &str, bytes: u64, runs: usize, subnet: u32) -> (Vec<Run>, f64) {
    let id = std::process::id();
    let tmp = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let wls = Workloads::new(tmp.path().join("state"));
    let name = format!("bench-{label}-{id}");
    let client_ns = format!("hsc-b{label}-{id}");
    let homes = [format!("hs-{name}"), format!("hs-{name}-2")];
    let mut guard = Cleanup::new(wls.clone());
    guard.names.push(name.clone());
    guard.netns.extend([client_ns.clone(), homes[0].clone(), homes[1].clone()]);
    netns::create(&client_ns).unwrap();
    let volume = tmp.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let addr = redis_start(&wls, &name, &client_ns, subnet, &volume);
    let start = Instant::now();
    let keys = testbed::fill_random(Some(&client_ns), addr, bytes, 16 * 1024).expect("fill redis");
    eprintln!("[{label}] filled {keys} keys of 16 KiB random bytes in {:.1} s", start.elapsed().as_secs_f64());

    let mut results = Vec::new();
    for run in 0..runs {
        let (from, to) = (&homes[run % 2], &homes[(run + 1) % 2]);
        let client = PipeliningClient::start(Some(&client_ns), addr, Duration::from_millis(2), &format!("run{run}")).expect("client");
        assert!(client.wait_batches(50, Duration::from_secs(30)), "client runs before the dump");
        let images = tmp.path().join(format!("images-{run}"));
        // The target prepares its namespace before the source freezes, as a migration would.
        if !netns::exists(to) {
            netns::create(to).expect("target netns");
        }
        let cp = wls.checkpoint(criu, &name, &CheckpointOptions::new(&images)).expect("checkpoint");
        let stats = cp.stats.clone().expect("dump stats");
        let cp = Checkpoint::open(&images, criu).expect("open checkpoint");
        let spec = RestoreSpec { name: name.clone(), netns: to.clone(), service_net: ServiceNet::MoveFrom(from.clone()), timeout: Duration::from_secs(600) };
        let (_, outcome) = wls.restore(criu, &cp, &spec).expect("restore");
        assert!(client.wait_batches(50, Duration::from_secs(60)), "client answered after the restore");
        let report = client.finish();
        assert_eq!(report.error, None, "client must not need a reconnect");
        report.incr_sequence_ok().expect("INCR sequence continuous");
        let r = Run {
            dump_ms: stats.elapsed.as_secs_f64() * 1e3,
            frozen_ms: stats.criu.map(|c| c.frozen_us as f64 / 1e3).unwrap_or(f64::NAN),
            restore_ms: outcome.elapsed.as_secs_f64() * 1e3,
            image_mb: stats.image_bytes as f64 / MIB as f64,
            gap_ms: report.max_stall.as_secs_f64() * 1e3,
        };
        eprintln!(
            "[{label}] run {run}: dump {:.0} ms (frozen {:.0} ms), restore {:.0} ms, image {:.1} MiB, client gap {:.0} ms ({} batches)",
            r.dump_ms, r.frozen_ms, r.restore_ms, r.image_mb, r.gap_ms, report.incrs.len()
        );
        std::fs::remove_dir_all(&images).ok();
        results.push(r);
    }

    post_copy_run(criu, &wls, label, &name, &client_ns, addr, (&homes[runs % 2], &homes[(runs + 1) % 2]), tmp.path());

    // Baseline: restart from an RDB instead of migrating.
    match ask(&client_ns, addr, &[b"SAVE"]) {
        Ok(Reply::Simple(_)) => {}
        other => panic!("SAVE: {other:?}"),
    }
    let t0 = Instant::now();
    wls.stop(&name).expect("stop redis");
    // Not waiting for it to listen: the loop below times that.
    wls.start(&redis_options(&name, &client_ns, subnet, &volume)).expect("restart redis");
    loop {
        if let Ok(Reply::Simple(p)) = ask(&client_ns, addr, &[b"PING"]) {
            if p == "PONG" {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "redis reloads its RDB");
        std::thread::sleep(Duration::from_millis(2));
    }
    let restart_ms = t0.elapsed().as_secs_f64() * 1e3;
    match ask(&client_ns, addr, &[b"DBSIZE"]) {
        Ok(Reply::Int(n)) => assert!(n as u64 >= keys, "the RDB held the dataset ({n} keys)"),
        other => panic!("DBSIZE: {other:?}"),
    }
    eprintln!("[{label}] baseline restart from RDB: client gap {restart_ms:.0} ms (with reconnect)");
    drop(guard);
    (results, restart_ms)
}

fn main() {
    if let Some(why) = hotspot_testkit::host::migration_host_missing() {
        eprintln!("checkpoint bench needs a migration host: {why}");
        std::process::exit(1);
    }
    let criu = Criu::detect().expect("criu");
    let subnet = 200 + std::process::id() % 50;
    let mut gaps = Vec::new();
    let mut image_1g = 0.0;
    for (label, bytes, runs) in [("64m", 64 * MIB, 5), ("1g", 1024 * MIB, 3)] {
        let (runs, restart_ms) = bench_size(&criu, label, bytes, runs, subnet);
        let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        println!(
            "{label:>4}: dump {:.0} ms (frozen {:.0} ms), restore {:.0} ms, image {:.1} MiB, client gap {:.0} ms; baseline restart-from-RDB gap {:.0} ms  (medians of {})",
            m(|r| r.dump_ms),
            m(|r| r.frozen_ms),
            m(|r| r.restore_ms),
            m(|r| r.image_mb),
            m(|r| r.gap_ms),
            restart_ms,
            runs.len()
        );
        gaps.push(m(|r| r.gap_ms));
        if label == "1g" {
            image_1g = m(|r| r.image_mb);
        }
    }
    println!("checkpoint gap_ms_64m={:.0} gap_ms_1g={:.0} image_mb_1g={:.0}", gaps[0], gaps[1], image_1g);
}
