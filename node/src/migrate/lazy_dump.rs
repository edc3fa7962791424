//! Post-copy parts backed by this host: CRIU lazy dumps behind a [`PageRelay`], rollback by
//! resuming the frozen tree, and lazy restores on the target.
//!
//! # Rolling back a lazy dump
//! Until the page stream ends, the source tree is frozen, not gone: CRIU keeps it to serve its
//! memory. Rolling back therefore resumes that very tree (no restore, nothing copied): the
//! relay makes CRIU's dump fail, CRIU thaws the tree, and we undo the two things CRIU's failure
//! path leaves behind in a lazy dump — its TCP sockets still in repair mode (we turn repair off
//! through `pidfd_getfd`, as CRIU's own unlock does) and the network-lock DROP rules.
//!
//! A marker file in the image directory records how to reach the page server, so a node that
//! crashed mid-migration can still tell an orphaned `criu dump` to fail and resume the tree.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotspot_protocol::migration::WorkloadSpec;
use tracing::{error, info, warn};

use super::page_relay::{free_port_in, Gate, PageRelay, Upstream};
use super::error::{CheckpointError, LazyPagesError};
use super::DumpReport;
use crate::criu::{netlock, Criu, CriuError, LazyDump};
use crate::workload::{Checkpoint, RestoreSpec, ServiceNet, WorkloadError, Workloads};

/// How long the memory may take to reach the target after the restore.
pub const PAGE_STREAM_TIMEOUT: Duration = Duration::from_secs(1800);
const MARKER: &str = "hotspot-lazy-dump";
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Lazy dumps in flight on this node, by workload.
#[derive(Clone, Default)]
pub struct LazyDumps(Arc<Mutex<HashMap<String, InFlight>>>);

struct InFlight {
    dump: LazyDump,
    relay: PageRelay,
}

impl LazyDumps {
    fn put(&self, name: &str, f: InFlight) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), f);
    }
    fn take(&self, name: &str) -> Option<InFlight> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(name)
    }
}

/// What the marker file records: `netns`, page-server port, criu's PID, the tree's PID.
#[derive(Debug, Clone, PartialEq)]
struct Marker {
    netns: PathBuf,
    port: u16,
    criu_pid: u32,
    tree_pid: i32,
}

impl Marker {
    fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = format!("{}\n{}\n{}\n{}\n", self.netns.display(), self.port, self.criu_pid, self.tree_pid);
        std::fs::write(dir.join(MARKER), text)
    }
    fn read(dir: &Path) -> Option<Marker> {
        let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
        let mut l = text.lines();
        Some(Marker { netns: l.next()?.into(), port: l.next()?.parse().ok()?, criu_pid: l.next()?.parse().ok()?, tree_pid: l.next()?.parse().ok()? })
    }
    fn upstream(&self) -> Upstream {
        Upstream { netns: self.netns.clone(), addr: SocketAddr::from(([127, 0, 0, 1], self.port)) }
    }
}

/// Whether `dir` holds a post-copy dump (its memory stayed behind a page server).
pub fn is_lazy_image(dir: &Path) -> bool {
    dir.join(MARKER).exists()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, CheckpointError> + Send + 'static) -> Result<T, CheckpointError> {
    tokio::task::spawn_blocking(f).await?
}

/// Freezes `name` with `criu dump --lazy-pages` (page server on loopback in its namespace) and
/// puts a relay on `serve_ip` in front of it for `peer`.
pub async fn dump(wls: &Workloads, criu: &Arc<Criu>, dumps: &LazyDumps, name: &str, dir: &Path, serve_ip: IpAddr, peer: Option<IpAddr>) -> Result<(DumpReport, SocketAddr), CheckpointError> {
    let (w2, c2, n2, d2) = (wls.clone(), criu.clone(), name.to_string(), dir.to_path_buf());
    let started = Instant::now();
    let (lazy, marker) = blocking(move || {
        let w = w2.get(&n2)?;
        let tree_pid = w.pid().ok_or_else(|| LazyPagesError::NoPid { workload: n2.clone() })?;
        let netns = w.netns_path();
        let port = free_port_in(&netns).map_err(|source| LazyPagesError::Port { netns: netns.clone(), source })?;
        let (_, lazy) = w2.checkpoint_lazy(&c2, &n2, &d2, SocketAddr::from(([127, 0, 0, 1], port)))?;
        let marker = Marker { netns, port, criu_pid: lazy.criu_pid().unwrap_or(0), tree_pid };
        marker.write(&d2).map_err(CheckpointError::io("writing", d2.join(MARKER)))?;
        Ok((lazy, marker))
    })
    .await?;
    let frozen_ms = started.elapsed().as_millis() as u64;
    let relay = match PageRelay::start(serve_ip, peer, marker.upstream()).await {
        Ok(r) => r,
        Err(source) => {
            let cause = LazyPagesError::Relay { ip: serve_ip, source };
            let wls = wls.clone();
            let (n, d) = (name.to_string(), dir.to_path_buf());
            if let Err(resume) = blocking(move || resume_orphan(&wls, &n, &d, Some(lazy))).await {
                return Err(LazyPagesError::ResumeFailed { cause: Box::new(cause), resume: Box::new(resume) }.into());
            }
            return Err(cause.into());
        }
    };
    let addr = relay.addr();
    let report = DumpReport { image_bytes: crate::criu::dir_bytes(dir), frozen_ms };
    info!(workload = name, %addr, image_bytes = report.image_bytes, frozen_ms, "lazy dump serving pages");
    dumps.put(name, InFlight { dump: lazy, relay });
    Ok((report, addr))
}

/// The target runs the workload: release the page stream and wait until it is over.
pub async fn finish(dumps: &LazyDumps, name: &str, timeout: Duration) -> Result<u64, CheckpointError> {
    let InFlight { dump, relay } = dumps.take(name).ok_or_else(|| LazyPagesError::NotInFlight { workload: name.to_string() })?;
    relay.set(Gate::Release);
    let criu = tokio::task::spawn_blocking(move || dump.finish(timeout));
    let report = relay.finish(timeout).await.map_err(LazyPagesError::Stream)?;
    criu.await??;
    if !report.closed_cleanly {
        return Err(LazyPagesError::Incomplete { served_bytes: report.served_bytes }.into());
    }
    Ok(report.served_bytes)
}

/// Rollback before the target's restore succeeded: the frozen tree runs here again.
pub async fn abort(wls: &Workloads, dumps: &LazyDumps, name: &str, dir: &Path) -> Result<(), CheckpointError> {
    let (wls, n, d) = (wls.clone(), name.to_string(), dir.to_path_buf());
    match dumps.take(name) {
        Some(InFlight { dump, relay }) => {
            hold_tree(&wls, &n);
            relay.set(Gate::Abort);
            let relayed = relay.finish(ABORT_TIMEOUT).await;
            if let Err(e) = &relayed {
                warn!(error = %e, "page relay did not end cleanly; telling CRIU directly");
            }
            blocking(move || {
                if relayed.is_err() {
                    let _ = Marker::read(&d).map(|m| m.upstream().abort_blocking());
                }
                match dump.finish(ABORT_TIMEOUT) {
                    Ok(_) => Err(LazyPagesError::AlreadyStreamed.into()),
                    Err(_) => resume_tree(&wls, &n, &d), // CRIU failed the dump, as asked
                }
            })
            .await
        }
        None => blocking(move || resume_orphan(&wls, &n, &d, None)).await,
    }
}

/// A lazy dump whose relay never came up, or one left by a crashed daemon: tell CRIU to fail.
fn resume_orphan(wls: &Workloads, name: &str, dir: &Path, lazy: Option<LazyDump>) -> Result<(), CheckpointError> {
    let marker = Marker::read(dir).ok_or_else(|| LazyPagesError::NoMarker { dir: dir.to_path_buf() })?;
    hold_tree(wls, name);
    if let Err(e) = marker.upstream().abort_blocking() {
        warn!(error = %e, "could not reach the page server (criu gone?)");
    }
    match lazy {
        Some(l) => {
            let _ = l.finish(ABORT_TIMEOUT);
        }
        None => wait_gone(marker.criu_pid, ABORT_TIMEOUT),
    }
    resume_tree(wls, name, dir)
}

fn wait_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let alive = || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    while pid != 0 && alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// After CRIU failed the lazy dump and thawed the tree: repair mode off, lock rules out, PID back.
fn resume_tree(wls: &Workloads, name: &str, dir: &Path) -> Result<(), CheckpointError> {
    let marker = Marker::read(dir).ok_or_else(|| LazyPagesError::NoMarker { dir: dir.to_path_buf() })?;
    let alive = std::fs::read_to_string(format!("/proc/{}/stat", marker.tree_pid)).is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "));
    if !alive {
        return Err(LazyPagesError::TreeGone { pid: marker.tree_pid }.into());
    }
    let mut pids = wls.get(name).map(|w| w.cgroup().pids()).unwrap_or_default();
    pids.extend(descendants(marker.tree_pid));
    pids.sort_unstable();
    pids.dedup();
    let resumed = unlock_held_tree(wls, name, dir, marker.tree_pid, &pids);
    // Whatever failed above, a tree held by `hold_tree` must not stay stopped.
    signal_all(&pids, libc::SIGCONT);
    let (sockets, removed) = resumed?;
    info!(workload = name, pid = marker.tree_pid, sockets, removed, "post-copy rolled back: the frozen workload runs here again");
    Ok(())
}

/// The stopped tree's record, address, TCP repair mode and lock rules put back in order;
/// returns (sockets taken out of repair, lock rules removed).
fn unlock_held_tree(wls: &Workloads, name: &str, dir: &Path, tree_pid: i32, pids: &[i32]) -> Result<(usize, usize), CheckpointError> {
    let mut rec = wls.get(name)?.record;
    rec.pid = Some(tree_pid);
    crate::workload::record::store(wls.state_dir(), &rec).map_err(WorkloadError::from)?;
    let w = wls.get(name)?;
    // A rollback after the address moved brought the interface back down and without its
    // address (a namespace move flushes both); a restore would set it up, a resume must too.
    if let Some(addr) = w.address() {
        crate::sys::netns::bring_up_service(&w.record.netns, addr)?;
    }
    let sockets = unrepair_tcp(pids);
    let rules = netlock::load(dir).unwrap_or_default();
    let removed = netlock::remove(&w.netns_path(), &rules).map_err(CriuError::from)?;
    Ok((sockets, removed))
}

/// Queues SIGSTOP for every process of the frozen workload before CRIU is told to fail.
///
/// CRIU's lazy dump fails after the point where it would have unlocked the network, so it
/// resumes the tree with its TCP sockets still in repair mode; a process that reads one then
/// gets EPERM and closes the connection (silently: a socket in repair mode sends no FIN), and
/// the client stalls for good. With a stop pending, the tree stops again the moment CRIU lets it
/// go, and [`resume_tree`] turns repair off before it sends SIGCONT.
fn hold_tree(wls: &Workloads, name: &str) {
    let pids = wls.get(name).map(|w| w.cgroup().pids()).unwrap_or_default();
    signal_all(&pids, libc::SIGSTOP);
}

fn signal_all(pids: &[i32], signal: libc::c_int) {
    for &pid in pids {
        // SAFETY: kill(2) on the workload's own PIDs.
        unsafe { libc::kill(pid, signal) };
    }
}

/// `pid` and every process below it (from /proc/PID/task/*/children).
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for task in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
        i += 1;
    }
    out
}

/// Turns TCP repair mode off on every socket of `pids` (CRIU's failure path of a lazy dump
/// leaves it on); returns how many sockets took it. Non-TCP and listening sockets refuse; fine.
fn unrepair_tcp(pids: &[i32]) -> usize {
    let mut done = 0;
    for &pid in pids {
        // SAFETY: plain syscalls on descriptors we own and close.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        if pidfd < 0 {
            continue;
        }
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
            let is_socket = std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
            let Some(fd) = entry.file_name().to_str().and_then(|f| f.parse::<i32>().ok()) else { continue };
            if !is_socket {
                continue;
            }
            let local = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) } as i32;
            if local < 0 {
                warn!(pid, fd, error = %std::io::Error::last_os_error(), "pidfd_getfd");
                continue;
            }
            let off: libc::c_int = 0;
            let r = unsafe { libc::setsockopt(local, libc::IPPROTO_TCP, libc::TCP_REPAIR, (&off as *const libc::c_int).cast(), 4) };
            done += usize::from(r == 0);
            unsafe { libc::close(local) };
        }
        unsafe { libc::close(pidfd) };
    }
    done
}

/// Target side: lazy-pages daemon first (the restore hands it the workload's page faults),
/// then the restore; a watcher stops the workload if the page stream breaks, since a process
/// whose missing pages can no longer arrive would read zeroes.
pub fn restore_blocking(wls: &Workloads, criu: &Criu, spec: &WorkloadSpec, netns: String, dir: &Path, page_server: SocketAddr) -> Result<u32, CheckpointError> {
    let cp = Checkpoint::open(dir, criu)?;
    if !cp.meta.remote_pages {
        return Err(LazyPagesError::NotLazyImage { dir: dir.to_path_buf() }.into());
    }
    let daemon = criu.lazy_pages_daemon(dir, &wls.restore_work_dir(&spec.name), page_server, None)?;
    let rs = RestoreSpec { name: spec.name.clone(), netns, service_net: ServiceNet::Present, timeout: Duration::from_secs(120) };
    let (w, outcome) = wls.restore(criu, &cp, &rs)?;
    let pid = w.pid().unwrap_or(0) as u32;
    info!(workload = %spec.name, pid, restore_ms = outcome.elapsed.as_millis() as u64, %page_server, "restored; memory streams in");
    let (wls, name) = (wls.clone(), spec.name.clone());
    std::thread::Builder::new().name(format!("lazy-{name}")).spawn(move || match daemon.finish(PAGE_STREAM_TIMEOUT) {
        Ok(()) => info!(workload = %name, "post-copy: every page arrived"),
        Err(e) => {
            error!(workload = %name, error = %e, "post-copy page stream broke: stopping the workload, its memory is incomplete");
            if let Err(e) = wls.stop(&name) {
                error!(workload = %name, error = %e, "could not stop the workload");
            }
        }
    })
    .map_err(LazyPagesError::Watcher)?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_lazy_image(dir.path()));
        let m = Marker { netns: "/run/netns/hs-x".into(), port: 4242, criu_pid: 77, tree_pid: 99 };
        m.write(dir.path()).unwrap();
        assert!(is_lazy_image(dir.path()));
        assert_eq!(Marker::read(dir.path()), Some(m));
    }
}
