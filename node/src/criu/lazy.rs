//! Post-copy (CRIU lazy pages): the source dump stays up as a page server after writing
//! everything but the memory; the target restores at once and its `criu lazy-pages` daemon
//! fetches pages as they fault (and the rest in the background). Needs userfaultfd and
//! `fs.pipe-max-size >= 4 MiB` (see [`super::LazyPages`]).
//!
//! Both long-running CRIU processes report readiness on `--status-fd`; we wait for that byte
//! with a deadline, so a dump that fails early is reported at once with its log.

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::driver::{dir_bytes, DumpStats, DUMP_LOG};
use super::options::{DumpOptions, PageServer};
use super::{last_error_lines, netlock, Criu, CriuError};
use crate::sys::process;

const LAZY_LOG: &str = "lazy-pages.log";
/// Descriptor number the status pipe gets in CRIU.
const STATUS_FD: i32 = 3;

/// A running CRIU process started with `--status-fd`; killed if dropped unfinished.
struct Running {
    child: Option<Child>,
    action: &'static str,
    log: PathBuf,
}

impl Running {
    fn spawn(mut cmd: Command, action: &'static str, log: PathBuf, ready_within: Duration) -> Result<Self, CriuError> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(CriuError::Io { what: "status pipe", path: log, source: std::io::Error::last_os_error() });
        }
        let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let w = write_end.as_raw_fd();
        cmd.arg("--status-fd").arg(STATUS_FD.to_string()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: dup2 is async-signal-safe; the copy at STATUS_FD is not close-on-exec.
        unsafe {
            cmd.pre_exec(move || if libc::dup2(w, STATUS_FD) < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
        }
        let child = cmd.spawn().map_err(|source| CriuError::Run { action, source: process::RunError::Spawn { program: "criu".into(), source } })?;
        drop(write_end);
        let mut running = Running { child: Some(child), action, log };
        let mut pfd = libc::pollfd { fd: read_end.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ready_within.as_millis().min(i32::MAX as u128) as i32) };
        if n == 0 {
            return Err(CriuError::TimedOut { action, after: ready_within, log: running.log.clone() });
        }
        let mut byte = [0u8; 1];
        let got = std::fs::File::from(read_end).read(&mut byte).unwrap_or(0);
        if got == 0 {
            // Closed without the ready byte: CRIU exited with an error.
            let status = running.wait(Duration::from_secs(10)).map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            let log = running.log.clone();
            return Err(CriuError::Failed { action, status, last_errors: last_error_lines(&log, 8), log });
        }
        Ok(running)
    }

    fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, CriuError> {
        let child = self.child.as_mut().expect("waited once");
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => return Err(CriuError::TimedOut { action: self.action, after: timeout, log: self.log.clone() }),
                Err(source) => return Err(CriuError::Io { what: "wait for criu", path: self.log.clone(), source }),
            }
        }
    }

    fn finish(mut self, timeout: Duration) -> Result<(), CriuError> {
        let status = self.wait(timeout)?;
        if status.success() {
            Ok(())
        } else {
            Err(CriuError::Failed { action: self.action, status: status.to_string(), last_errors: last_error_lines(&self.log, 8), log: self.log.clone() })
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A lazy dump whose tree is frozen and whose memory is being served at `address`.
pub struct LazyDump {
    running: Running,
    opts: DumpOptions,
    started: Instant,
    locked_connections: usize,
}

/// The target side's `criu lazy-pages` daemon.
pub struct LazyPagesDaemon {
    running: Running,
}

impl Criu {
    /// Starts a post-copy dump: returns once CRIU wrote everything but the memory and serves
    /// the pages at `address`. Call [`LazyDump::finish`] after the restore.
    pub fn dump_lazy(&self, opts: &DumpOptions, address: SocketAddr) -> Result<LazyDump, CriuError> {
        self.require_lazy_pages()?;
        let mut opts = opts.clone();
        opts.page_server = Some(PageServer::Lazy(address));
        opts.leave_running = false;
        std::fs::create_dir_all(&opts.image_dir).map_err(|source| CriuError::Io { what: "create image dir", path: opts.image_dir.clone(), source })?;
        let cmd = self.dump_command(&opts)?;
        let started = Instant::now();
        let running = Running::spawn(cmd, "dump --lazy-pages", opts.image_dir.join(DUMP_LOG), opts.timeout)?;
        let mut locked_connections = 0;
        if let (true, Some(ns)) = (opts.tcp_established, &opts.netns) {
            let rules = netlock::capture(ns)?;
            locked_connections = rules.len() / 2;
            netlock::save(&opts.image_dir, &rules)?;
        }
        Ok(LazyDump { running, opts, started, locked_connections })
    }

    /// Starts `criu lazy-pages` for a restore from `image_dir`, fetching from `address`.
    /// `work_dir` must be the restore's work dir: the restore finds the daemon's socket there.
    pub fn lazy_pages_daemon(&self, image_dir: &Path, work_dir: &Path, address: SocketAddr, netns: Option<&Path>) -> Result<LazyPagesDaemon, CriuError> {
        self.require_lazy_pages()?;
        std::fs::create_dir_all(work_dir).map_err(|source| CriuError::Io { what: "create work dir", path: work_dir.into(), source })?;
        let mut cmd = Command::new(&self.path);
        cmd.arg("lazy-pages").arg("-D").arg(image_dir).arg("-W").arg(work_dir).args(["-o", LAZY_LOG, "-v4", "--page-server"]);
        cmd.args(["--address", &address.ip().to_string(), "--port", &address.port().to_string()]);
        if let Some(ns) = netns {
            process::in_netns(&mut cmd, ns).map_err(|source| CriuError::Run { action: "lazy-pages", source })?;
        }
        let running = Running::spawn(cmd, "lazy-pages", work_dir.join(LAZY_LOG), Duration::from_secs(60))?;
        Ok(LazyPagesDaemon { running })
    }
}

impl LazyDump {
    /// Namespace the page server listens in: the workload's, since CRIU runs there for the
    /// network lock. A target on another host reaches it through a relay from this namespace
    /// (or, on one host, by running its daemon in it).
    pub fn netns(&self) -> Option<&Path> {
        self.opts.netns.as_deref()
    }

    /// PID of the `criu dump` process serving the pages.
    pub fn criu_pid(&self) -> Option<u32> {
        self.running.child.as_ref().map(Child::id)
    }

    /// Waits until every page was fetched and the source tree is gone.
    pub fn finish(self, timeout: Duration) -> Result<DumpStats, CriuError> {
        let LazyDump { running, opts, started, locked_connections } = self;
        running.finish(timeout)?;
        Ok(DumpStats {
            elapsed: started.elapsed(),
            image_bytes: dir_bytes(&opts.image_dir),
            locked_connections,
            // stats-dump of a lazy dump is written mid-way and its frozen time is not the
            // freeze the workload saw; callers time post-copy themselves.
            criu: None,
        })
    }
}

impl LazyPagesDaemon {
    /// Waits until the daemon has fetched all remaining pages and exited.
    pub fn finish(self, timeout: Duration) -> Result<(), CriuError> {
        self.running.finish(timeout)
    }
}
