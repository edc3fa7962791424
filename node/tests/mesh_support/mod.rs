//! Black-box harness for mesh tests on top of [`hotspot_node::lab`]: real `hotspot-node run`
//! processes, each optionally in its own network namespace on a private bridge, driven through
//! their control sockets. The lab removes everything on drop, also when a test panics; this
//! file only adds the panicking conveniences tests want.

#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use hotspot_node::daemon::control::{PeerRow, Reply, Request, StatusReport};
use hotspot_node::lab::Daemon;

pub const BIN: &str = env!("CARGO_BIN_EXE_hotspot-node");

#[allow(unused_imports)]
pub use hotspot_node::lab::Lan;

/// One daemon process (killed on drop).
pub struct Node(pub Daemon);

impl std::ops::Deref for Node {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl Node {
    /// Starts `hotspot-node run` (inside `netns` when given) with extra flags.
    pub fn start(root: &Path, name: &str, netns: Option<&str>, extra: &[&str]) -> Node {
        Node(Daemon::start(Path::new(BIN), root, name, netns, extra).unwrap_or_else(|e| panic!("{name}: {e}")))
    }
    pub fn pid(&self) -> u32 {
        self.0.pid().expect("running")
    }
    pub fn call(&self, request: &Request) -> Reply {
        self.0.call(request).unwrap_or_else(|e| panic!("{e}"))
    }
    pub fn peers(&self) -> Vec<PeerRow> {
        self.0.peers().unwrap_or_else(|e| panic!("{e}"))
    }
    pub fn peer_names(&self) -> Vec<String> {
        self.0.peer_names().unwrap_or_else(|e| panic!("{e}"))
    }
    pub fn status(&self) -> StatusReport {
        self.0.status().unwrap_or_else(|e| panic!("{e}"))
    }
    pub fn cli(&self, args: &[&str]) -> Output {
        self.0.cli(args).unwrap_or_else(|e| panic!("{e}"))
    }
    /// Clean stop (SIGTERM); waits for the process to exit and checks it exited cleanly.
    pub fn stop(&mut self) {
        if let Some(status) = self.0.stop() {
            assert!(status.success(), "{} exited with {status}", self.name);
        }
    }
    /// Crash (SIGKILL): no leaving advert.
    pub fn kill(&mut self) {
        self.0.kill()
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
