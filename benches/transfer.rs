//! `cargo bench --bench transfer`: our QUIC image transfer vs `tar | zstd -1 | socat` on loopback.
//!
//! Workload: redis filled with ~1 GiB of random-entropy values of mixed sizes, in its own PID
//! namespace, dumped with `criu dump --leave-running`. Then ~1 % of its data is overwritten and a
//! little more allocated, and it is dumped again.
//! 1. Fresh image: median time of ours (chunk + hash + offer + zstd + QUIC + verify + store +
//!    rebuild, into an empty store) vs the baseline pipeline into an empty directory, alternated.
//!    Neither side fsyncs (page cache only) so the disk does not decide the comparison.
//! 2. Second hop: the second dump sent to a receiver holding the first; every UDP byte of the
//!    connection, both directions, as % of the image size.
//! Also prints, per page-chunk size, how much of the second dump is not shared with the first
//! and the manifest size: the data behind `chunker::DEFAULT_PAGE_CHUNK_BYTES`.
//!
//! Knobs for profiling (defaults are the measurement): `HOTSPOT_BENCH_TRANSFER_MIB`
//! (redis data size, 1024), `HOTSPOT_BENCH_TRANSFER_RUNS` (5), `HOTSPOT_BENCH_TRANSFER_TABLE=0`
//! (skip the chunk-size table), `HOTSPOT_BENCH_TRANSFER_DUMPS=DIR` (keep the two dumps in DIR and
//! reuse them on the next run), `RUST_LOG=hotspot_transfer=debug` (stage timings).

use std::collections::HashSet;
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotspot_transfer::identity::NodeKey;
use hotspot_transfer::{build_manifest, endpoint, send_dir, ChunkerConfig, ReceiveOptions, SendOptions, Store, StoreOptions, TrustSet};

#[path = "support/mod.rs"]
mod support;
use support::median;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/local/sbin/criu").exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("transfer bench needs root and criu");
        }
        eprintln!("SKIPPED transfer bench: needs root and criu >= 4.2");
        return;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    }
    let (target_bytes, runs) = (env_u64("HOTSPOT_BENCH_TRANSFER_MIB", 1024) << 20, env_u64("HOTSPOT_BENCH_TRANSFER_RUNS", 5).max(1) as usize);
    let work = tempfile::Builder::new().prefix("hotspot-bench-transfer").tempdir_in("/var/tmp").unwrap();
    let dumps = std::env::var_os("HOTSPOT_BENCH_TRANSFER_DUMPS").map_or_else(|| work.path().to_path_buf(), PathBuf::from);
    let (d1, d2) = (dumps.join("dump1"), dumps.join("dump2"));
    if !(d1.join("inventory.img").exists() && d2.join("inventory.img").exists()) {
        let _ = (std::fs::remove_dir_all(&d1), std::fs::remove_dir_all(&d2));
        let redis = Redis::start();
        let mut rng = XorShift(0x5eed_1234_abcd_ef01);
        let keys = redis.fill(&mut rng, target_bytes);
        criu_dump(redis.pid, &d1);
        redis.churn(&mut rng, &keys);
        criu_dump(redis.pid, &d2);
    }
    // Sender and receiver share one kernel here. Fresh dumps leave ~2.4 GB of dirty page cache
    // whose writeback would throttle the receiver's writes (ours and the baseline's alike, but
    // by how much depends on which runs first); on two machines the receiver never sees the
    // sender's dirty pages. Start every comparison from clean page cache.
    unsafe { libc::sync() };
    let image_bytes = dir_bytes(&d1);
    println!("image 1: {} MiB, image 2: {} MiB", image_bytes >> 20, dir_bytes(&d2) >> 20);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let out = work.path().join(format!("rx-{run}"));
        let t = rt.block_on(ours_once(&out, &[&d1])).0;
        std::fs::remove_dir_all(&out).unwrap();
        let b = baseline_once(&d1, &work.path().join(format!("base-{run}")));
        println!("run {run}: ours {:.3} s, baseline {:.3} s", t.as_secs_f64(), b.as_secs_f64());
        ours.push(t);
        base.push(b);
    }
    let (ours, base) = (median(ours), median(base));
    // Informational, and after the timed runs: hashing both dumps five times over leaves the
    // process and page cache in a state that slowed the runs that followed it by up to 40 %.
    println!("{:>9} {:>9} {:>10} {:>14} {:>12} {:>12}", "chunk_kib", "chunks", "unshared%", "manifest_bytes", "manifest_zst", "wire_est%");
    let table: &[u64] = if env_u64("HOTSPOT_BENCH_TRANSFER_TABLE", 1) == 0 { &[] } else { &[4, 8, 16, 32, 64] };
    for &kib in table {
        let cfg = ChunkerConfig { page_chunk_bytes: kib * 1024, ..Default::default() };
        let (a, b) = (build_manifest(&d1, "a", &cfg).unwrap(), build_manifest(&d2, "b", &cfg).unwrap());
        let have: HashSet<_> = a.chunks().map(|c| c.hash).collect();
        let mut seen = HashSet::new();
        let unshared: u64 = b.chunks().filter(|c| !have.contains(&c.hash) && seen.insert(c.hash)).map(|c| c.len as u64).sum();
        let manifest = hotspot_protocol::codec::encode(&b).unwrap().len();
        let zst = match hotspot_transfer::wire::compressed_offer(hotspot_transfer::TransferId([0; 16]), &b).unwrap() {
            hotspot_protocol::manifest::TransferMessage::OfferCompressed { manifest, .. } => manifest.len(),
            _ => unreachable!("compressed_offer returns OfferCompressed"),
        };
        let total = b.total_bytes() as f64;
        println!(
            "{kib:>9} {:>9} {:>10.2} {manifest:>14} {zst:>12} {:>12.2}",
            b.chunks().count(),
            100.0 * unshared as f64 / total,
            100.0 * (unshared + zst as u64) as f64 / total
        );
    }

    let (_, reports) = rt.block_on(ours_once(&work.path().join("hop"), &[&d1, &d2]));
    let second = &reports[1];
    // Both directions count: the manifest and chunks out, the receiver's wants and acks back.
    let wire = second.wire_bytes + second.wire_bytes_received;
    let wire_pct = 100.0 * wire as f64 / second.image_bytes as f64;
    println!(
        "second hop: {} chunks, {} raw bytes, {} compressed, {} + {} bytes on the wire of {} image bytes",
        second.chunks_sent, second.raw_bytes_sent, second.compressed_bytes_sent, second.wire_bytes, second.wire_bytes_received, second.image_bytes
    );
    println!("median: ours {:.3} s, baseline {:.3} s", ours.as_secs_f64(), base.as_secs_f64());
    println!(
        "transfer ratio_vs_baseline={:.3} second_hop_wire_pct={:.2} throughput_mb_s={:.0}",
        ours.as_secs_f64() / base.as_secs_f64(),
        wire_pct,
        image_bytes as f64 / 1e6 / ours.as_secs_f64()
    );
}

/// Sends each dir in turn to one fresh receiver; returns the time of the first and all reports.
async fn ours_once(root: &Path, dirs: &[&Path]) -> (Duration, Vec<hotspot_transfer::SendReport>) {
    let (rk, sk) = (NodeKey::from_seed([1; 32]), NodeKey::from_seed([2; 32]));
    let store = Arc::new(Store::open(&root.join("store"), StoreOptions { sync: false, ..Default::default() }).unwrap());
    let ep = endpoint::receiver(&rk, TrustSet::new([sk.node_id()]), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let (tx, mut done) = tokio::sync::mpsc::channel(4);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut opts = ReceiveOptions::new(root.join("images"));
    opts.sync = false;
    let server = tokio::spawn(hotspot_transfer::serve(ep, store, opts, tx, stop.clone()));
    let sender = endpoint::sender(&sk, TrustSet::new([rk.node_id()]), Some(rk.node_id()), addr).unwrap();
    let mut first = None;
    let mut reports = Vec::new();
    for dir in dirs {
        let start = Instant::now();
        let report = send_dir(&sender, addr, dir, SendOptions::default(), None).await.unwrap();
        done.recv().await.unwrap().unwrap();
        first.get_or_insert(start.elapsed());
        reports.push(report);
    }
    stop.cancel();
    server.await.unwrap();
    (first.unwrap(), reports)
}

/// `tar -c DIR | zstd -1 | socat` into `socat | zstd -d | tar -x` on loopback.
fn baseline_once(dir: &Path, out: &Path) -> Duration {
    std::fs::create_dir_all(out).unwrap();
    let port = free_port();
    let mut rx = Command::new("sh")
        .arg("-c")
        .arg(format!("socat -u TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr - | zstd -d -q | tar -x -C '{}'", out.display()))
        .spawn()
        .unwrap();
    // socat serves one connection only, so wait for LISTEN in /proc instead of probing.
    let needle = format!("0100007F:{port:04X} 00000000:0000 0A");
    while !std::fs::read_to_string("/proc/net/tcp").unwrap().contains(&needle) {
        assert!(rx.try_wait().unwrap().is_none(), "baseline receiver exited early");
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("tar -c -C '{}' . | zstd -1 -q -c | socat -u - TCP:127.0.0.1:{port}", dir.display()))
        .status()
        .unwrap()
        .success();
    assert!(ok && rx.wait().unwrap().success(), "baseline pipeline failed");
    let t = start.elapsed();
    assert_eq!(dir_bytes(out), dir_bytes(dir), "baseline unpacked everything");
    std::fs::remove_dir_all(out).unwrap();
    t
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn dir_bytes(d: &Path) -> u64 {
    std::fs::read_dir(d).unwrap().map(|e| e.unwrap().metadata().unwrap()).map(|m| if m.is_file() { m.len() } else { 0 }).sum()
}

fn criu_dump(pid: u32, dir: &PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("/usr/local/sbin/criu").args(["dump", "--leave-running", "-t", &pid.to_string(), "-D"]).arg(dir).args(["-o", "dump.log"]).output().unwrap();
    assert!(out.status.success(), "criu dump: {}", std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default());
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// redis-server as PID 1 of its own PID namespace (a session leader with no inherited fds), so
/// CRIU can dump it. Killed on drop. (The node's workload module can replace this later.)
struct Redis {
    child: Child,
    pid: u32,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let mut cmd = Command::new("unshare");
        cmd.args(["--fork", "--pid", "--mount-proc", "--propagation", "private", "setsid", "sh", "-c"]);
        // Network namespaces other tools mounted under /run/netns would be copied into this mount
        // namespace and make CRIU refuse the dump; drop them here (private: the host keeps them).
        cmd.arg(format!(
            "umount -l /run/netns/* /run/netns 2>/dev/null; exec redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --protected-mode no </dev/null >/dev/null 2>&1"
        ));
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        unsafe {
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let mut pid = None;
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(25));
            let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap_or_default();
            pid = kids.split_whitespace().next().and_then(|p| p.parse().ok());
            if pid.is_some() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
        }
        Redis { child, pid: pid.expect("redis started"), port }
    }

    /// SETs `keys` with values from `value_len`, pipelined; returns once redis acknowledged all.
    fn set_all(&self, keys: impl Iterator<Item = (String, usize)>, rng: &mut XorShift) {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut reader = stream.try_clone().unwrap();
        let drain = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0usize;
            while let Ok(k) = reader.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += buf[..k].iter().filter(|&&b| b == b'\n').count();
            }
            n
        });
        let mut w = BufWriter::with_capacity(1 << 20, &stream);
        let mut value = Vec::new();
        let mut count = 0;
        for (key, len) in keys {
            value.resize(len, 0);
            rng.fill(&mut value);
            write!(w, "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${len}\r\n", key.len()).unwrap();
            w.write_all(&value).unwrap();
            w.write_all(b"\r\n").unwrap();
            count += 1;
        }
        w.flush().unwrap();
        drop(w);
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let replies = drain.join().unwrap();
        assert_eq!(replies, count, "every SET acknowledged");
    }

    /// Fills ~`bytes` of values of mixed sizes (256 B .. 64 KiB); returns (key, size) of each.
    fn fill(&self, rng: &mut XorShift, bytes: u64) -> Vec<(String, usize)> {
        let mut keys = Vec::new();
        let mut total = 0u64;
        while total < bytes {
            let len = 256 + (rng.next() % (64 * 1024 - 256)) as usize;
            keys.push((format!("key:{}", keys.len()), len));
            total += len as u64;
        }
        self.set_all(keys.clone().into_iter(), rng);
        keys
    }

    /// Overwrites ~1 % of the data with new random values and adds ~0.5 % more.
    fn churn(&self, rng: &mut XorShift, keys: &[(String, usize)]) {
        let changed = keys.iter().step_by(100).cloned();
        let added = (0..keys.len() / 200).map(|i| (format!("new:{i}"), keys[i].1));
        self.set_all(changed.chain(added), rng);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
