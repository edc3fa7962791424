//! Black-box harness for mesh tests: real `hotspot-node run` processes, each optionally in its
//! own network namespace on a private bridge, driven through their control sockets.
//! Everything started here is killed and removed on drop, also when a test panics.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hotspot_node::daemon::control::{self, PeerRow, Reply, Request, StatusReport};

pub const BIN: &str = env!("CARGO_BIN_EXE_hotspot-node");

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A bridge in its own namespace plus one namespace per node, all named after this process.
/// Nothing is created in the host namespace; traffic never leaves these namespaces.
pub struct Lan {
    pub hub: String,
    pub nodes: Vec<String>,
    subnet: u8,
}

impl Lan {
    pub fn new(count: usize) -> Lan {
        // Unique per process and per Lan: tests of one binary may run in parallel threads.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag = format!("hm{}x{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut lan = Lan { hub: format!("{tag}hub"), nodes: Vec::new(), subnet: (std::process::id() % 200) as u8 + 20 };
        ip(&["netns", "add", &lan.hub]);
        ip(&["-n", &lan.hub, "link", "set", "lo", "up"]);
        ip(&["-n", &lan.hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
        ip(&["-n", &lan.hub, "link", "set", "br0", "up"]);
        for i in 0..count {
            let ns = format!("{tag}n{i}");
            ip(&["netns", "add", &ns]);
            lan.nodes.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let port = format!("p{i}");
            ip(&["-n", &lan.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["-n", &lan.hub, "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("10.77.{}.{}/24", lan.subnet, i + 1);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            // mDNS goes to 224.0.0.251: route multicast onto the bridge, inside the namespace only.
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One daemon process.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts `hotspot-node run` (inside `netns` when given) with extra flags.
    pub fn start(root: &Path, name: &str, netns: Option<&str>, extra: &[&str]) -> Node {
        let dir = root.join(name);
        let socket = dir.join("control.sock");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("run")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(&socket)
            .args(["--name", name])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join(format!("{name}.log"))).expect("log file"));
        let child = cmd.spawn().expect("spawn hotspot-node run");
        let node = Node { name: name.into(), dir, socket, child: Some(child) };
        node.wait_ready();
        node
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if control::call(&self.socket, &Request::Status, Duration::from_secs(2)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not open its control socket", self.name);
    }

    pub fn call(&self, request: &Request) -> Reply {
        control::call(&self.socket, request, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    pub fn peers(&self) -> Vec<PeerRow> {
        match self.call(&Request::Peers) {
            Reply::Peers { peers } => peers,
            other => panic!("{}: unexpected {other:?}", self.name),
        }
    }

    pub fn peer_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.peers().into_iter().map(|p| p.name).collect();
        names.sort();
        names
    }

    pub fn status(&self) -> StatusReport {
        match self.call(&Request::Status) {
            Reply::Status(s) => *s,
            other => panic!("{}: unexpected {other:?}", self.name),
        }
    }

    /// Runs the real CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).arg("--socket").arg(&self.socket).output().expect("run cli")
    }

    /// Clean stop (SIGTERM); waits for the process to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().expect("wait");
            assert!(status.success(), "{} exited with {status}", self.name);
        }
    }

    /// Crash (SIGKILL): no leaving advert.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it holds or `timeout` passes; returns how long it took.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Network-namespace tests need root. Skips with a reason elsewhere; fails under CI.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: needs root for network namespaces; CI must run this test");
    }
    eprintln!("SKIPPED {test}: needs root for network namespaces");
    false
}
