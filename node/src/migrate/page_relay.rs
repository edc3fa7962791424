//! The source's gate in front of CRIU's lazy-pages page server during a post-copy migration.
//!
//! `criu dump --lazy-pages` freezes the workload and serves its memory on a TCP port; the
//! target's `criu lazy-pages` fetches pages from it while the restored workload runs. That is
//! CRIU's own protocol on the LAN, **not** inside our authenticated QUIC connection, so:
//! - CRIU listens on loopback inside the workload's network namespace only (its service
//!   address moves to the target during the migration anyway);
//! - this relay listens on the node's transfer address for the migration's duration only,
//!   accepts the one peer it was told to expect (by IP) and nobody else, and forwards to it.
//!
//! It also guards the one irreversible step. CRIU treats the end of the page stream as "every
//! page delivered" and then kills the frozen source tree, while any error in the stream makes it
//! resume the tree instead. So the relay holds back the client's `PS_IOV_CLOSE` until the source
//! knows the target's restore succeeded ([`Gate::Release`]); on [`Gate::Abort`] it sends CRIU an
//! unknown command instead, which fails the dump and leaves the workload running on the source.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// `struct page_server_iov { u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id; }` (x86-64 layout,
/// 4 bytes of padding after `cmd`). Every client-to-server message is one of these.
pub const IOV_LEN: usize = 32;
const PS_CMD_MASK: u32 = 0xffff;
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_IOV_FORCE_CLOSE: u32 = 0x1024;
/// A command CRIU does not know: its page server answers it by failing the dump.
const PS_IOV_ABORT: u32 = 0xffff;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the relay does with the end of the page stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Target's restore not confirmed yet: pages flow, the close waits.
    Hold,
    /// The target runs the workload: let the close through (CRIU then stops the source tree).
    Release,
    /// Roll back: fail CRIU's dump so the source tree resumes.
    Abort,
}

/// CRIU's page server: a loopback port inside a network namespace.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub netns: PathBuf,
    pub addr: SocketAddr,
}

impl Upstream {
    /// Connects from inside `netns` (a socket keeps the namespace it was made in).
    pub fn connect_blocking(&self) -> io::Result<std::net::TcpStream> {
        let ns = std::fs::File::open(&self.netns)?;
        let addr = self.addr;
        in_netns_thread(ns, move || std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT))
    }

    /// Tells an orphaned page server (its daemon crashed) to fail, so the tree resumes.
    pub fn abort_blocking(&self) -> io::Result<()> {
        use std::io::Write;
        let mut s = self.connect_blocking()?;
        s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        s.write_all(&abort_frame())?;
        let _ = std::io::Read::read(&mut s, &mut [0u8; 64]);
        Ok(())
    }
}

/// A free loopback port inside `netns`, for CRIU's page server to listen on.
pub fn free_port_in(netns: &Path) -> io::Result<u16> {
    let ns = std::fs::File::open(netns)?;
    in_netns_thread(ns, || Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()))
}

/// Runs `f` on a fresh thread that joined `ns` first (setns is per thread; the thread ends after).
fn in_netns_thread<T: Send + 'static>(ns: std::fs::File, f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on an open namespace file; affects only this short-lived thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("netns worker thread panicked"))?
}

fn abort_frame() -> [u8; IOV_LEN] {
    let mut f = [0u8; IOV_LEN];
    f[..4].copy_from_slice(&PS_IOV_ABORT.to_le_bytes());
    f
}

fn is_close(frame: &[u8; IOV_LEN]) -> bool {
    let cmd = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) & PS_CMD_MASK;
    cmd == PS_IOV_CLOSE || cmd == PS_IOV_FORCE_CLOSE
}

/// How the page stream ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Bytes from CRIU's page server to the target (page data and headers).
    pub served_bytes: u64,
    /// The target's lazy-pages daemon closed the stream properly after the release.
    pub closed_cleanly: bool,
    /// The relay told CRIU to fail (rollback).
    pub aborted: bool,
}

/// A running relay; dropping it stops it (without touching CRIU: a dropped, never-connected
/// relay leaves the page server waiting, so a later abort can still resume the tree).
pub struct PageRelay {
    addr: SocketAddr,
    gate: watch::Sender<Gate>,
    served: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<io::Result<RelayReport>>>,
}

impl PageRelay {
    /// Listens on `listen_ip` (port chosen by the kernel) for `peer` (any when `None`).
    pub async fn start(listen_ip: IpAddr, peer: Option<IpAddr>, upstream: Upstream) -> io::Result<PageRelay> {
        let listener = TcpListener::bind(SocketAddr::new(listen_ip, 0)).await?;
        let addr = listener.local_addr()?;
        let (gate, gate_rx) = watch::channel(Gate::Hold);
        let served = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, peer, upstream, gate_rx, served.clone()));
        info!(%addr, ?peer, "page relay up");
        Ok(PageRelay { addr, gate, served, task: Some(task) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn served_bytes(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub fn set(&self, gate: Gate) {
        let _ = self.gate.send(gate);
    }

    /// Waits until the stream is over (after [`PageRelay::set`]).
    pub async fn finish(mut self, timeout: Duration) -> io::Result<RelayReport> {
        let task = self.task.take().expect("finished once");
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(io::Error::other(format!("page relay task: {e}"))),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("page stream not over after {timeout:?}"))),
        }
    }
}

impl Drop for PageRelay {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn serve(listener: TcpListener, peer: Option<IpAddr>, upstream: Upstream, mut gate: watch::Receiver<Gate>, served: Arc<AtomicU64>) -> io::Result<RelayReport> {
    let client = loop {
        // `Some(stream)`: the target connected; `None`: abort before anyone did.
        let next = tokio::select! {
            accepted = listener.accept() => {
                let (stream, from) = accepted?;
                if peer.is_some_and(|p| p != from.ip()) {
                    warn!(%from, expected = ?peer, "page relay: refused a connection from an unexpected address");
                    continue;
                }
                debug!(%from, "page relay: target connected");
                Some(stream)
            }
            changed = gate.wait_for(|g| *g == Gate::Abort) => {
                if changed.is_err() {
                    return Err(io::Error::other("gate dropped"));
                }
                None
            }
        };
        match next {
            Some(stream) => break stream,
            None => {
                // Nobody connected: tell CRIU ourselves.
                let up = upstream.clone();
                tokio::task::spawn_blocking(move || up.abort_blocking()).await.map_err(io::Error::other)??;
                return Ok(RelayReport { aborted: true, ..RelayReport::default() });
            }
        }
    };
    drop(listener); // one session per migration, as CRIU's page server
    let up = upstream.clone();
    let up = tokio::task::spawn_blocking(move || up.connect_blocking()).await.map_err(io::Error::other)??;
    up.set_nonblocking(true)?;
    let up = TcpStream::from_std(up)?;
    let _ = (up.set_nodelay(true), client.set_nodelay(true));
    pump(client, up, gate, served).await
}

async fn pump(client: TcpStream, up: TcpStream, mut gate: watch::Receiver<Gate>, served: Arc<AtomicU64>) -> io::Result<RelayReport> {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let counted = served.clone();
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = ur.read(&mut buf).await?;
            if n == 0 {
                let _ = cw.shutdown().await;
                return Ok::<_, io::Error>(cw);
            }
            cw.write_all(&buf[..n]).await?;
            served.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let mut report = RelayReport::default();
    let mut frame = [0u8; IOV_LEN];
    loop {
        let read = tokio::select! {
            r = cr.read_exact(&mut frame) => r.map(|_| true),
            _ = gate.wait_for(|g| *g == Gate::Abort) => Ok(false),
        };
        match read {
            Ok(true) if !is_close(&frame) => uw.write_all(&frame).await?,
            // The close, a client that vanished, or an abort: the gate decides.
            outcome => {
                let clean = matches!(outcome, Ok(true));
                let decided = *gate.wait_for(|g| *g != Gate::Hold).await.map_err(|_| io::Error::other("gate dropped"))?;
                if decided == Gate::Abort {
                    uw.write_all(&abort_frame()).await?;
                    report.aborted = true;
                    down.abort();
                    info!("page relay: told CRIU to fail the dump (rollback)");
                } else if clean {
                    uw.write_all(&frame).await?;
                    // CRIU answers the close, then waits for the client to hang up.
                    let mut rest = Vec::new();
                    let _ = cr.read_to_end(&mut rest).await;
                    report.closed_cleanly = true;
                } else {
                    warn!("page relay: the target's lazy-pages daemon went away before every page was fetched");
                }
                let _ = uw.shutdown().await;
                if !report.aborted {
                    let _ = tokio::time::timeout(Duration::from_secs(30), down).await;
                }
                report.served_bytes = counted.load(Ordering::Relaxed);
                return Ok(report);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::mpsc;

    fn frame(cmd: u32) -> [u8; IOV_LEN] {
        let mut f = [0u8; IOV_LEN];
        f[..4].copy_from_slice(&cmd.to_le_bytes());
        f
    }

    /// A stand-in for CRIU's lazy page server: answers GET with a header and one page, CLOSE
    /// with a status; reports every command it saw, as it sees it.
    fn fake_page_server() -> (SocketAddr, mpsc::Receiver<u32>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut f = [0u8; IOV_LEN];
            while s.read_exact(&mut f).is_ok() {
                let cmd = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
                let _ = tx.send(cmd);
                match cmd {
                    7 => s.write_all(&[0xab; IOV_LEN + 4096]).unwrap(),
                    PS_IOV_CLOSE => s.write_all(&0i32.to_le_bytes()).unwrap(),
                    _ => return, // CRIU fails the dump on anything else
                }
            }
        });
        (addr, rx)
    }

    fn can_setns() -> bool {
        // setns(2), even into our own namespace, needs CAP_SYS_ADMIN.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipped: the relay joins network namespaces, which needs root");
        }
        root
    }

    fn here(addr: SocketAddr) -> Upstream {
        Upstream { netns: "/proc/self/ns/net".into(), addr }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_waits_for_the_release() {
        if !can_setns() {
            return;
        }
        let (up, seen) = fake_page_server();
        let lo: IpAddr = [127, 0, 0, 1].into();
        let relay = PageRelay::start(lo, Some(lo), here(up)).await.unwrap();
        let addr = relay.addr();
        let client = tokio::task::spawn_blocking(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(&frame(7)).unwrap();
            let mut page = vec![0u8; IOV_LEN + 4096];
            c.read_exact(&mut page).unwrap();
            c.write_all(&frame(PS_IOV_CLOSE)).unwrap();
            let mut status = [0u8; 4];
            c.read_exact(&mut status).unwrap();
            page.len() + status.len()
        });
        assert_eq!(seen.recv_timeout(Duration::from_secs(5)), Ok(7));
        assert!(seen.recv_timeout(Duration::from_millis(300)).is_err(), "the close is held until the source releases it");
        relay.set(Gate::Release);
        assert_eq!(client.await.unwrap(), IOV_LEN + 4096 + 4);
        let report = relay.finish(Duration::from_secs(5)).await.unwrap();
        assert!(report.closed_cleanly && !report.aborted, "{report:?}");
        assert_eq!(report.served_bytes, (IOV_LEN + 4096 + 4) as u64);
        assert_eq!(seen.recv_timeout(Duration::from_secs(5)), Ok(PS_IOV_CLOSE));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_makes_criu_fail_with_or_without_a_client() {
        if !can_setns() {
            return;
        }
        let lo: IpAddr = [127, 0, 0, 1].into();
        // Nobody connected: the relay tells CRIU itself.
        let (up, seen) = fake_page_server();
        let relay = PageRelay::start(lo, None, here(up)).await.unwrap();
        relay.set(Gate::Abort);
        assert!(relay.finish(Duration::from_secs(5)).await.unwrap().aborted);
        assert_eq!(seen.recv_timeout(Duration::from_secs(5)), Ok(PS_IOV_ABORT));
        // A target whose restore failed asks to close: CRIU gets the abort instead.
        let (up, seen) = fake_page_server();
        let relay = PageRelay::start(lo, Some(lo), here(up)).await.unwrap();
        let addr = relay.addr();
        let client = tokio::task::spawn_blocking(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(&frame(PS_IOV_CLOSE)).unwrap();
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        relay.set(Gate::Abort);
        let report = relay.finish(Duration::from_secs(5)).await.unwrap();
        assert!(report.aborted && !report.closed_cleanly);
        client.await.unwrap();
        assert_eq!(seen.recv_timeout(Duration::from_secs(5)), Ok(PS_IOV_ABORT), "the close never reached CRIU");
        assert!(seen.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn frames() {
        let mut close = [0u8; IOV_LEN];
        close[..4].copy_from_slice(&PS_IOV_CLOSE.to_le_bytes());
        assert!(is_close(&close));
        assert!(!is_close(&abort_frame()));
        let mut get = [0u8; IOV_LEN];
        get[..4].copy_from_slice(&7u32.to_le_bytes());
        assert!(!is_close(&get));
    }
}
