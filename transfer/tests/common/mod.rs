//! Shared test harness: a receiver on loopback, a sender, synthetic and real CRIU images.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hotspot_criu_image::{push_entry, IMG_COMMON_MAGIC, PAGEMAP_MAGIC, PAGE_SIZE, PE_PRESENT};
use hotspot_transfer::identity::NodeKey;
use hotspot_transfer::{endpoint, serve, ReceiveError, ReceiveOptions, Received, SendOptions, Store, StoreOptions, TrustSet};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Same semantics as `hotspot_node::testing::require_migration_host` (transfer must not depend
/// on node): skip with a reason on a laptop, fail under CI where skipping would hide breakage.
pub fn require_migration_host(test: &str) -> bool {
    let missing = if unsafe { libc::geteuid() } != 0 {
        Some("needs root (CRIU, namespaces)".to_string())
    } else if criu().is_none() {
        Some("needs criu >= 4.2 (run scripts/install-deps)".to_string())
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => panic!("{test}: {why}; CI must run this test"),
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

pub fn criu() -> Option<PathBuf> {
    ["/usr/local/sbin/criu", "/usr/sbin/criu", "/usr/bin/criu"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// A synthetic image of `mib` MiB in `tmp/src`, a receiver (key 1) trusting a sender (key 2)
/// with its root in `tmp/rx`, and the sender's endpoint.
pub struct Setup {
    pub tmp: tempfile::TempDir,
    pub src: PathBuf,
    pub r: NodeKey,
    pub s: NodeKey,
    pub rx: Receiver,
    pub ep: quinn::Endpoint,
}

impl Setup {
    pub async fn new(mib: u64, seed: u64, store: StoreOptions) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fake_image_mib(&src, mib, seed);
        let (r, s) = (key(1), key(2));
        let rx = Receiver::start(&r, &[&s], &tmp.path().join("rx"), store).await;
        let ep = sender_endpoint(&s, &r, rx.addr);
        Setup { tmp, src, r, s, rx, ep }
    }

    pub fn rx_root(&self) -> PathBuf {
        self.tmp.path().join("rx")
    }
}

pub fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32])
}

/// A receiver serving on 127.0.0.1 with its own store.
pub struct Receiver {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    pub images: PathBuf,
    pub done: mpsc::Receiver<Result<Received, ReceiveError>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(key: &NodeKey, trusted: &[&NodeKey], root: &Path, store_opts: StoreOptions) -> Receiver {
        Self::start_with(key, trusted, root, store_opts, |_| {}).await
    }

    /// [`Receiver::start`] with its options changed by `tweak`.
    pub async fn start_with(key: &NodeKey, trusted: &[&NodeKey], root: &Path, store_opts: StoreOptions, tweak: impl FnOnce(&mut ReceiveOptions)) -> Receiver {
        let store = Arc::new(open_store(&root.join("store"), store_opts).await);
        let trust = TrustSet::new(trusted.iter().map(|k| k.node_id()));
        let ep = endpoint::receiver(key, trust, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = ep.local_addr().unwrap();
        let (tx, done) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let images = root.join("images");
        let mut opts = ReceiveOptions::new(images.clone());
        opts.sync = false;
        tweak(&mut opts);
        let task = tokio::spawn(serve(ep, store.clone(), opts, tx, shutdown.clone()));
        Receiver { addr, store, images, done, shutdown, task }
    }

    pub async fn next(&mut self) -> Result<Received, ReceiveError> {
        tokio::time::timeout(Duration::from_secs(60), self.done.recv()).await.expect("receiver reported in time").expect("receiver alive")
    }

    /// Stops serving and waits until nothing else holds the store (as if the process exited).
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
        let mut store = self.store;
        for _ in 0..100 {
            match Arc::try_unwrap(store) {
                Ok(s) => {
                    drop(s);
                    return;
                }
                Err(s) => store = s,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("store still in use after stop");
    }
}

/// Opens a store, retrying while a just-dropped handle still holds sled's lock.
pub async fn open_store(dir: &Path, opts: StoreOptions) -> Store {
    for _ in 0..50 {
        match Store::open(dir, opts.clone()) {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Store::open(dir, opts).unwrap()
}

pub fn sender_endpoint(me: &NodeKey, receiver: &NodeKey, addr: SocketAddr) -> quinn::Endpoint {
    endpoint::sender(me, TrustSet::new([receiver.node_id()]), Some(receiver.node_id()), addr).unwrap()
}

pub fn send_opts() -> SendOptions {
    SendOptions { label: "test".into(), batch_bytes: 256 * 1024, ..SendOptions::default() }
}

/// Deterministic pseudo-random bytes (xorshift), incompressible like real heap data.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes a CRIU-shaped image: `pagemap-1.img` with `runs` (vaddr, pages), `pages-1.img` with
/// their data from `page`, and a couple of other files.
pub fn fake_image(dir: &Path, runs: &[(u64, u64)], page: impl Fn(u64) -> Vec<u8>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut pm = Vec::new();
    pm.extend(IMG_COMMON_MAGIC.to_le_bytes());
    pm.extend(PAGEMAP_MAGIC.to_le_bytes());
    push_entry(&mut pm, &[(1, 1)]);
    let mut pages = Vec::new();
    for &(vaddr, n) in runs {
        push_entry(&mut pm, &[(1, vaddr), (2, 0), (4, PE_PRESENT as u64), (5, n)]);
        for p in 0..n {
            let data = page(vaddr + p * PAGE_SIZE);
            assert_eq!(data.len() as u64, PAGE_SIZE);
            pages.extend(data);
        }
    }
    std::fs::write(dir.join("pagemap-1.img"), pm).unwrap();
    std::fs::write(dir.join("pages-1.img"), pages).unwrap();
    std::fs::write(dir.join("core-1.img"), noise(7, 3000)).unwrap();
    std::fs::write(dir.join("inventory.img"), b"\x16\x31\x31\x58inventory").unwrap();
}

/// A default synthetic image of `mib` MiB of incompressible pages in a few runs.
pub fn fake_image_mib(dir: &Path, mib: u64, seed: u64) {
    let pages = mib * 256;
    let runs = [(0x7f00_0000_0000, pages / 2), (0x7f00_1000_0000, pages - pages / 2)];
    fake_image(dir, &runs, |vaddr| noise(vaddr ^ seed, PAGE_SIZE as usize));
}

/// Asserts two directories hold the same files with the same bytes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let list = |d: &Path| {
        let mut v: Vec<_> = walk(d).into_iter().map(|p| p.strip_prefix(d).unwrap().to_path_buf()).collect();
        v.sort();
        v
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "file lists differ");
    for rel in la {
        let (x, y) = (std::fs::read(a.join(&rel)).unwrap(), std::fs::read(b.join(&rel)).unwrap());
        assert!(x == y, "{} differs ({} vs {} bytes)", rel.display(), x.len(), y.len());
    }
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A process in its own PID namespace (PID 1, session leader, no inherited fds) holding
/// `mib` MiB of random heap; killed on drop.
pub struct Workload {
    child: Child,
    pub pid: u32,
}

const WORKLOAD_PY: &str = r#"
import os, sys, time, signal
os.closerange(3, 65536)
fd = os.open("/dev/null", os.O_RDWR)
for i in (0, 1, 2): os.dup2(fd, i)
os.close(fd)
mib = int(sys.argv[1])
heap = [bytearray(os.urandom(1 << 20)) for _ in range(mib)]
extra = []
def touch(sig, frame):
    # change 1 % of the heap pages in place and allocate a little more
    for buf in heap:
        for at in range(0, len(buf), 100 * 4096):
            buf[at:at + 8] = os.urandom(8)
    extra.append(bytearray(os.urandom(256 << 10)))
signal.signal(signal.SIGUSR1, touch)
while True: time.sleep(1)
"#;

impl Workload {
    pub fn start(mib: u32) -> Workload {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("unshare");
        // Network namespaces other tools mounted under /run/netns would be copied into this mount
        // namespace and make CRIU refuse the dump; drop them here (private: the host keeps them).
        let script = format!("umount -l /run/netns/* /run/netns 2>/dev/null; exec python3 -c '{WORKLOAD_PY}' {mib}");
        cmd.args(["--fork", "--pid", "--mount-proc", "--propagation", "private", "setsid", "sh", "-c", &script]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        unsafe {
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("unshare runs");
        // PID 1 of the namespace is unshare's only child.
        let pid = (0..100)
            .find_map(|_| {
                std::thread::sleep(Duration::from_millis(50));
                let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap_or_default();
                kids.split_whitespace().next().and_then(|p| p.parse::<u32>().ok())
            })
            .expect("workload started");
        // Wait until the heap is allocated (RSS past the target).
        for _ in 0..200 {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rss_kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0);
            if rss_kb > mib as u64 * 1024 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Workload { child, pid }
    }

    /// Dumps the workload with CRIU, leaving it running.
    pub fn dump(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new(criu().unwrap())
            .args(["dump", "--leave-running", "-t", &self.pid.to_string(), "-D"])
            .arg(dir)
            .args(["-o", "dump.log"])
            .output()
            .unwrap();
        let log = std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default();
        assert!(out.status.success(), "criu dump failed: {}\n{log}", String::from_utf8_lossy(&out.stderr));
    }

    /// Asks the workload to change ~1 % of its heap and allocate a little more.
    pub fn touch(&self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
