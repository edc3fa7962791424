//! The migration parts backed by this host: CRIU dumps and restores of [`Workloads`] and the
//! reservation ledger. Volumes and addresses move through a [`super::ResourceMover`]
//! ([`crate::providers::local::LocalProvider`] on one machine).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hotspot_protocol::migration::WorkloadSpec;
use hotspot_protocol::NodeId;
use tracing::{info, warn};

use super::lazy_dump::{self, LazyDumps};
use super::target::Restorer;
use super::error::{CheckpointError, RestoreError};
use super::{Checkpointer, DumpReport};
use crate::criu::Criu;
use crate::sys::names::restore_netns;
use crate::workload::{Checkpoint, CheckpointOptions, RestoreSpec, ServiceNet, Workloads};

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, CheckpointError> + Send + 'static) -> Result<T, CheckpointError> {
    tokio::task::spawn_blocking(f).await?
}

/// Dumps and local restores through [`Workloads`] (blocking CRIU calls on the blocking pool).
#[derive(Clone)]
pub struct WorkloadCheckpointer {
    pub workloads: Workloads,
    pub criu: Arc<Criu>,
    /// Post-copy: the address the page relay listens on (the node's transfer address).
    pub serve_ip: IpAddr,
    pub lazy: LazyDumps,
}

impl WorkloadCheckpointer {
    pub fn new(workloads: Workloads, criu: Arc<Criu>, serve_ip: IpAddr) -> Self {
        WorkloadCheckpointer { workloads, criu, serve_ip, lazy: LazyDumps::default() }
    }
}

impl Checkpointer for WorkloadCheckpointer {
    async fn dump(&self, workload: &str, dir: &Path, leave_running: bool) -> Result<DumpReport, CheckpointError> {
        let (wls, criu, name, dir) = (self.workloads.clone(), self.criu.clone(), workload.to_string(), dir.to_path_buf());
        blocking(move || {
            let mut opts = CheckpointOptions::new(dir);
            opts.leave_running = leave_running;
            let cp = wls.checkpoint(&criu, &name, &opts)?;
            let stats = cp.stats.unwrap_or_else(|| unreachable!("a local dump reports stats"));
            Ok(DumpReport { image_bytes: stats.image_bytes, frozen_ms: stats.elapsed.as_millis() as u64 })
        })
        .await
    }

    async fn restore_local(&self, workload: &str, dir: &Path) -> Result<(), CheckpointError> {
        let (wls, criu, name, dir) = (self.workloads.clone(), self.criu.clone(), workload.to_string(), dir.to_path_buf());
        blocking(move || {
            let record = wls.get(&name)?.record;
            let cp = Checkpoint::open(&dir, &criu)?;
            let spec = RestoreSpec { name: name.clone(), netns: record.netns, service_net: ServiceNet::Present, timeout: Duration::from_secs(120) };
            let (w, _) = wls.restore(&criu, &cp, &spec)?;
            info!(workload = %name, pid = w.pid().unwrap_or(0), "restored on this node (rollback)");
            Ok(())
        })
        .await
    }

    async fn retire(&self, workload: &str) -> Result<(), CheckpointError> {
        let (wls, name) = (self.workloads.clone(), workload.to_string());
        blocking(move || Ok(wls.retire(&name)?)).await
    }

    async fn dump_lazy(&self, workload: &str, dir: &Path, peer: Option<IpAddr>) -> Result<(DumpReport, SocketAddr), CheckpointError> {
        lazy_dump::dump(&self.workloads, &self.criu, &self.lazy, workload, dir, self.serve_ip, peer).await
    }

    async fn finish_lazy(&self, workload: &str, timeout: Duration) -> Result<u64, CheckpointError> {
        lazy_dump::finish(&self.lazy, workload, timeout).await
    }

    async fn abort_lazy(&self, workload: &str, dir: &Path) -> Result<(), CheckpointError> {
        lazy_dump::abort(&self.workloads, &self.lazy, workload, dir).await
    }
}

/// Restores incoming workloads into `hs-NAME-<node>` (see [`restore_netns`]); the service
/// interface is already there (moved by the source's resource mover), CRIU's network-lock
/// rules go in before its address comes up (done by [`Workloads::restore`]).
#[derive(Clone)]
pub struct WorkloadRestorer {
    pub workloads: Workloads,
    pub criu: Arc<Criu>,
    pub node: NodeId,
}

/// Post-copy images keep almost no pages here, so their page maps are cut instead.
fn corrupt(dir: &Path, lazy: bool) -> Result<(), CheckpointError> {
    // An incremental image keeps most pages in its parent (see `hotspot_transfer::parent`).
    let parent = dir.join(hotspot_transfer::parent::PARENT_LINK);
    if parent.is_dir() {
        corrupt(&parent, lazy)?;
    }
    let victim = if lazy { "pagemap-" } else { "pages-" };
    for entry in std::fs::read_dir(dir).map_err(CheckpointError::io("reading", dir))? {
        let path = entry.map_err(CheckpointError::io("reading", dir))?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(victim)) {
            let len = std::fs::metadata(&path).map_err(CheckpointError::io("truncating", &path))?.len();
            let cut = std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(len / 2));
            cut.map_err(CheckpointError::io("truncating", &path))?;
        }
    }
    Ok(())
}

impl Restorer for WorkloadRestorer {
    async fn restore(&self, spec: &WorkloadSpec, dir: &Path) -> Result<u32, RestoreError> {
        let (wls, criu, name, dir) = (self.workloads.clone(), self.criu.clone(), spec.name.clone(), dir.to_path_buf());
        let (ns, fault) = (restore_netns(&spec.name, &self.node), crate::sys::fault::corrupt_received_images());
        let pid = blocking(move || {
            if fault {
                warn!(dir = %dir.display(), "test hook: corrupting the received image before restore");
                corrupt(&dir, false)?;
            }
            let cp = Checkpoint::open(&dir, &criu)?;
            let spec = RestoreSpec { name, netns: ns, service_net: ServiceNet::Present, timeout: Duration::from_secs(120) };
            let (w, _) = wls.restore(&criu, &cp, &spec)?;
            Ok(w.pid().unwrap_or(0) as u32)
        })
        .await?;
        Ok(pid)
    }

    async fn restore_lazy(&self, spec: &WorkloadSpec, dir: &Path, page_server: SocketAddr) -> Result<u32, RestoreError> {
        let (wls, criu, spec, dir) = (self.workloads.clone(), self.criu.clone(), spec.clone(), dir.to_path_buf());
        let (ns, fault) = (restore_netns(&spec.name, &self.node), crate::sys::fault::corrupt_received_images());
        let pid = blocking(move || {
            if fault {
                warn!(dir = %dir.display(), "test hook: corrupting the received image before restore");
                corrupt(&dir, true)?;
            }
            lazy_dump::restore_blocking(&wls, &criu, &spec, ns, &dir, page_server)
        })
        .await?;
        Ok(pid)
    }

    async fn discard(&self, workload: &str) {
        // `Workloads::restore` already removed its cgroup and record on failure; a namespace it
        // did not create (the source's mover made it) is the source's to take back.
        info!(workload, "restore failed here; nothing of it is kept");
    }
}

/// Where the source keeps its dumps during migrations.
pub fn images_root(data_dir: &Path) -> PathBuf {
    data_dir.join("migrations")
}

/// What a workload needs from a target: a tenth of a CPU and its resident memory (PID 1's).
pub fn needs_of(w: &crate::workload::Workload) -> hotspot_protocol::Resources {
    let rss_kib = w
        .pid()
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .unwrap_or(0);
    hotspot_protocol::Resources { cpu_millis: 100, memory_bytes: rss_kib * 1024, disk_bytes: 0 }
}
