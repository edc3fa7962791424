//! A cluster lab on one machine: a bridge in its own network namespace and one namespace per
//! node plugged into it like hosts on a LAN, real `hotspot-node run` daemons started inside
//! them, and extra namespaces for clients. Used by host tests, the top-level tests, benches and
//! the demo (`examples/local_cluster.rs`).
//!
//! Nothing is created in the host's network namespace and nothing is routed out: traffic stays
//! between these namespaces (addresses `10.77.S.x/24`, one subnet per lab). Everything is
//! removed on drop — also when a test panics — and [`interrupt`] lets a program turn Ctrl-C
//! into an orderly return so the drops run. [`Lan::sweep_stale`] removes what a killed
//! process left behind.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::daemon::control::{self, PeerRow, Reply, Request, StatusReport};
use crate::sys::netns;
use crate::workload::{IfAddr, NetError};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("starting {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("{0} did not open its control socket within 30 s (see its log)")]
    NotReady(String),
    #[error("{node}: {message}")]
    Control { node: String, message: String },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("interrupted")]
    Interrupted,
}

/// Prefix of every namespace a lab creates: `hm<pid>x<n>...`.
const PREFIX: &str = "hm";

/// A bridge in its own namespace plus one namespace per node, all named after this process.
#[derive(Debug)]
pub struct Lan {
    pub hub: String,
    /// Node namespaces, in order; node `i` has address [`Lan::node_ip`]`(i)` on its `eth0`.
    pub nodes: Vec<String>,
    /// Client namespaces added with [`Lan::add_client`].
    pub clients: Vec<String>,
    pub subnet: u8,
    tag: String,
}

impl Lan {
    /// Creates the bridge and `count` node namespaces on it.
    pub fn new(count: usize) -> Result<Lan, LabError> {
        // Unique per process and per Lan: tests of one binary may run in parallel threads.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{pid}x{n}");
        let subnet = ((pid + n * 37) % 200) as u8 + 20;
        let mut lan = Lan { hub: format!("{tag}hub"), nodes: Vec::new(), clients: Vec::new(), subnet, tag };
        netns::create(&lan.hub)?;
        netns::ip(&["-n", &lan.hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        netns::ip(&["-n", &lan.hub, "link", "set", "br0", "up"])?;
        for i in 0..count {
            let ns = format!("{}n{i}", lan.tag);
            lan.plug(&ns, &format!("p{i}"), lan.node_ip(i))?;
            lan.nodes.push(ns);
        }
        Ok(lan)
    }

    /// Creates namespace `ns` (owned by the lan from now on) with `eth0` on the bridge.
    fn plug(&self, ns: &str, port: &str, ip: Ipv4Addr) -> Result<(), LabError> {
        netns::create(ns)?;
        netns::ip(&["-n", &self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        self.bridge_port(port)?;
        netns::ip(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        netns::ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        // mDNS goes to 224.0.0.251: route multicast onto the bridge, inside the namespace only.
        netns::ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        Ok(())
    }

    /// Plugs interface `port` (already in the hub namespace) into the bridge and brings it up:
    /// how a workload's service veth (its "ENI") joins the LAN.
    pub fn bridge_port(&self, port: &str) -> Result<(), LabError> {
        netns::ip(&["-n", &self.hub, "link", "set", port, "master", "br0", "up"])?;
        Ok(())
    }

    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, i as u8 + 1)
    }

    /// A service address on the LAN (`10.77.S.100+k/24`), not used by any node or client.
    pub fn service_address(&self, k: u8) -> IfAddr {
        IfAddr { ip: Ipv4Addr::new(10, 77, self.subnet, 100 + k).into(), prefix: 24 }
    }

    /// Adds a client namespace on the bridge (address `10.77.S.200+k`) and returns its name.
    pub fn add_client(&mut self) -> Result<String, LabError> {
        let k = self.clients.len();
        let ns = format!("{}c{k}", self.tag);
        let result = self.plug(&ns, &format!("c{k}"), Ipv4Addr::new(10, 77, self.subnet, 200 + k as u8));
        self.clients.push(ns.clone()); // removed on drop even if plugging failed half-way
        result.map(|()| ns)
    }

    /// Removes namespaces left by lab processes that no longer run (a SIGKILLed demo or test).
    /// Returns the names removed.
    pub fn sweep_stale() -> Vec<String> {
        let Ok(entries) = std::fs::read_dir("/run/netns") else { return Vec::new() };
        let mut removed = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split_once('x')).and_then(|(p, _)| p.parse::<u32>().ok()) else { continue };
            if !Path::new(&format!("/proc/{pid}")).exists() && netns::delete(&name).is_ok() {
                removed.push(name);
            }
        }
        removed
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(&self.clients).chain(std::iter::once(&self.hub)) {
            if let Err(e) = netns::delete(ns) {
                eprintln!("lab: removing network namespace {ns}: {e}");
            }
        }
    }
}

/// One `hotspot-node run` process, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    /// Its own directory: `data/` (key, ledger), `control.sock`.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `BIN run` inside `netns` (when given) with its data under `root/name` and extra
    /// flags; returns once its control socket answers.
    pub fn start(bin: &Path, root: &Path, name: &str, netns: Option<&str>, extra: &[&str]) -> Result<Daemon, LabError> {
        Self::start_with_env(bin, root, name, netns, extra, &[])
    }

    /// [`Daemon::start`] with extra environment variables (settings by their `HOTSPOT_*` names).
    pub fn start_with_env(bin: &Path, root: &Path, name: &str, netns: Option<&str>, extra: &[&str], env: &[(&str, &str)]) -> Result<Daemon, LabError> {
        let dir = root.join(name);
        let socket = dir.join("control.sock");
        let log = root.join(format!("{name}.log"));
        let mut cmd = match netns {
            // nsenter, not `ip netns exec`: that one also gives the process a private mount
            // namespace, and the namespaces a daemon creates (`ip netns add` bind mounts under
            // /run/netns, a moved workload's new home) would then be invisible to the others.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns::path(ns).display())).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let spawn_err = |source| LabError::Spawn { what: format!("{} run ({name})", bin.display()), source };
        let stderr = std::fs::File::create(&log).map_err(spawn_err)?;
        cmd.arg("run")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(&socket)
            .args(["--name", name])
            .args(extra)
            // Daemons sharing the host's namespace would all bind the default transfer port;
            // give each an ephemeral loopback one unless the caller chose.
            .args(if netns.is_none() && !extra.contains(&"--transfer-listen") { &["--transfer-listen", "127.0.0.1:0"][..] } else { &[][..] })
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // Its own process group: a terminal's Ctrl-C reaches only the lab's owner, which then
        // stops every daemon in order.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(spawn_err)?;
        let daemon = Daemon { name: name.into(), dir, socket, log, bin: bin.into(), child: Some(child) };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `lines` lines of its log under a `--- NAME (PATH):` header, for failure messages
    /// (the log lives in a temporary directory that is gone once the test or bench panicked).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        let mut out = format!("--- {} ({}):\n", self.name, self.log.display());
        tail.iter().rev().for_each(|l| {
            out.push_str(l);
            out.push('\n');
        });
        out
    }

    fn wait_ready(&self) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if control::call(&self.socket, &Request::Status, Duration::from_secs(2)).is_ok() {
                return Ok(());
            }
            if interrupt::requested() {
                return Err(LabError::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LabError::NotReady(self.name.clone()))
    }

    pub fn call(&self, request: &Request) -> Result<Reply, LabError> {
        control::call(&self.socket, request, Duration::from_secs(20)).map_err(|e| LabError::Control { node: self.name.clone(), message: e.to_string() })
    }

    fn unexpected(&self, reply: Reply) -> LabError {
        LabError::Control { node: self.name.clone(), message: format!("unexpected reply {reply:?}") }
    }

    pub fn peers(&self) -> Result<Vec<PeerRow>, LabError> {
        match self.call(&Request::Peers)? {
            Reply::Peers { peers } => Ok(peers),
            other => Err(self.unexpected(other)),
        }
    }

    pub fn peer_names(&self) -> Result<Vec<String>, LabError> {
        let mut names: Vec<String> = self.peers()?.into_iter().map(|p| p.name).collect();
        names.sort();
        Ok(names)
    }

    pub fn status(&self) -> Result<StatusReport, LabError> {
        match self.call(&Request::Status)? {
            Reply::Status(s) => Ok(*s),
            other => Err(self.unexpected(other)),
        }
    }

    /// Runs the real CLI (`BIN ARGS --socket SOCKET`) against this daemon.
    pub fn cli(&self, args: &[&str]) -> Result<Output, LabError> {
        Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .map_err(|source| LabError::Spawn { what: format!("hotspot-node {}", args.join(" ")), source })
    }

    /// Clean stop (SIGTERM, so it announces `leaving`); returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().ok()
    }

    /// Crash (SIGKILL): no leaving advert.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Ctrl-C (SIGINT) and SIGTERM as a flag: programs poll [`interrupt::requested`] between steps
/// and return normally, so every guard's `Drop` cleans up.
pub mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        // Only an atomic store: async-signal-safe.
        REQUESTED.store(true, Ordering::SeqCst);
    }

    /// Installs the handler for SIGINT and SIGTERM (a second Ctrl-C still sets the flag; use
    /// SIGKILL and [`super::Lan::sweep_stale`] if cleanup itself hangs).
    pub fn install() {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: installing a handler that only touches an atomic.
        unsafe {
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
    }

    pub fn requested() -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, waking early (with `Err`) when an interrupt arrives.
    pub fn sleep(d: std::time::Duration) -> Result<(), super::LabError> {
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {
            if requested() {
                return Err(super::LabError::Interrupted);
            }
            std::thread::sleep(std::time::Duration::from_millis(20).min(end - std::time::Instant::now()));
        }
        Ok(())
    }
}

/// Polls `check` until it holds, `timeout` passes or an interrupt arrives; returns how long it took.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<Duration, LabError> {
    let start = Instant::now();
    loop {
        if check() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(LabError::Timeout { what: what.into(), after: timeout });
        }
        interrupt::sleep(Duration::from_millis(50))?;
    }
}
