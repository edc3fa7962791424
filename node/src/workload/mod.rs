//! Namespaced workloads: process trees the node starts (or adopts from runc) in the shape
//! CRIU can checkpoint and move, and their persisted records.
//!
//! A workload has its own PID, mount, UTS, IPC and network namespaces, its own cgroup
//! (`hotspot/NAME` in every hierarchy), PID 1 a session leader and no inherited host
//! descriptors. Its network namespace (`hs-NAME` unless told otherwise) holds the service
//! address on `eth0`, one end of a veth whose other end (the uplink) sits in the root
//! namespace or a given one: the local stand-in for an ENI. Its volume is a host directory
//! (the stand-in for an EBS disk), the working directory of the workload.

mod checkpoint;
mod image;
pub mod record;
pub mod runc;
mod spawn;

use crate::sys::clock::now_ms;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use image::{Checkpoint, CheckpointMeta, CheckpointOptions, RestoreSpec, ServiceNet, CHECKPOINT_FORMAT, CHECKPOINT_META};
pub use crate::sys::netns::{IfAddr, NetError};
pub use record::{Uplink, WorkloadKind, WorkloadRecord};

use crate::criu::CriuError;
use crate::sys::cgroup::{Cgroup, CgroupError};
use crate::sys::netns;
use record::RecordError;

/// Console file of a pivot_root'ed workload, inside its rootfs.
const ROOTFS_CONSOLE: &str = "/.hotspot-console.log";

/// Default state directory of the node.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hotspot-node";

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("workloads need root (namespaces, cgroups, CRIU): run with sudo")]
    NotRoot,
    #[error("{0:?} is not a valid workload name (1-32 of a-z A-Z 0-9 . _ -)")]
    BadName(String),
    #[error("workload {0} already exists (stop it first or pick another name)")]
    NameTaken(String),
    #[error("network namespace {0} already exists and belongs to no workload; delete it with `ip netns delete {0}`")]
    NetnsTaken(String),
    #[error("no workload named {0} (see `hotspot-node workload list`)")]
    Unknown(String),
    #[error("workload {name} is not running{}", .console.as_ref().map(|c| format!(" (it exited; its output is in {})", c.display())).unwrap_or_default())]
    NotRunning { name: String, console: Option<PathBuf> },
    #[error("no command given: put it after `--`")]
    NoCommand,
    #[error("command {0:?} not found")]
    CommandMissing(String),
    #[error("{what} {path} does not exist")]
    MissingPath { what: &'static str, path: PathBuf },
    #[error("starting workload {name}: {source}")]
    Spawn { name: String, source: std::io::Error },
    #[error("checkpoint in {dir}: {reason}")]
    BadCheckpoint { dir: PathBuf, reason: String },
    #[error("restore failed, workload rolled back to its source (pid {pid}): {cause}")]
    RolledBack { pid: i32, cause: Box<WorkloadError> },
    #[error("restore failed ({cause}) and so did the rollback: {rollback}")]
    RollbackFailed { cause: Box<WorkloadError>, rollback: Box<WorkloadError> },
    #[error("runc: {0}")]
    Runc(String),
    #[error(transparent)]
    Criu(#[from] CriuError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub name: String,
    pub command: Vec<String>,
    /// Service address on `eth0` in the workload's namespace.
    pub address: Option<IfAddr>,
    /// Namespace of the veth's other end; `None` = the root namespace (with a host route to
    /// the address, so the host itself is the client side).
    pub uplink_netns: Option<String>,
    /// Address of the uplink end (when clients live in `uplink_netns`).
    pub uplink_address: Option<IfAddr>,
    pub volume: Option<PathBuf>,
    /// Block device (a loop device, an EBS disk) holding an ext4 filesystem, mounted at
    /// `volume` inside the workload's mount namespace only (the host never sees the mount).
    /// `volume` is then the mount point: it must exist (as a directory) on the host or rootfs.
    pub volume_device: Option<PathBuf>,
    /// The provider's handle of the volume device (see `WorkloadRecord::volume_handle`).
    pub volume_handle: Option<String>,
    /// Own root filesystem, pivot_root'ed into.
    pub rootfs: Option<PathBuf>,
    /// Network namespace name; default `hs-NAME`.
    pub netns: Option<String>,
}

/// A workload this node knows, with its record.
#[derive(Debug, Clone)]
pub struct Workload {
    pub record: WorkloadRecord,
}

impl Workload {
    pub fn name(&self) -> &str {
        &self.record.name
    }
    pub fn pid(&self) -> Option<i32> {
        self.record.pid
    }
    pub fn netns(&self) -> &str {
        &self.record.netns
    }
    pub fn netns_path(&self) -> PathBuf {
        netns::path(&self.record.netns)
    }
    pub fn cgroup(&self) -> Cgroup {
        Cgroup::at(&self.record.cgroup)
    }
    pub fn address(&self) -> Option<IfAddr> {
        self.record.address
    }
    pub fn volume(&self) -> Option<&Path> {
        self.record.volume.as_deref()
    }
    /// Where the volume is mounted as the workload sees it.
    pub fn volume_inside(&self) -> Option<PathBuf> {
        self.record.volume.as_ref().map(|v| if self.record.rootfs.is_some() { PathBuf::from("/volume") } else { v.clone() })
    }
    /// Its PID 1 is alive (not a zombie) and still in its cgroup (guards against PID reuse).
    pub fn is_running(&self) -> bool {
        let Some(pid) = self.record.pid else { return false };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        let in_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.lines().any(|l| l.ends_with(&format!("/{}", self.record.cgroup))));
        matches!(state, Some(s) if s != 'Z' && s != 'X') && in_cgroup
    }
}

/// Workloads of one node, persisted under a state directory.
#[derive(Debug, Clone)]
pub struct Workloads {
    state_dir: PathBuf,
    /// Parent of the workloads' cgroups (`hotspot` unless set): nodes sharing one host (the
    /// local cluster) need their own, or one node's clean-up would kill another's workload.
    cgroup_parent: String,
}

pub fn validate_name(name: &str) -> Result<(), WorkloadError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(WorkloadError::BadName(name.to_string()))
    }
}

fn require_root() -> Result<(), WorkloadError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(WorkloadError::NotRoot);
    }
    Ok(())
}


/// Host end of the service veth: short (IFNAMSIZ) and stable per workload name.
pub(crate) fn uplink_if_name(name: &str) -> String {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("hsu{:08x}", h as u32)
}

fn command_exists(cmd: &str, rootfs: Option<&Path>) -> bool {
    let in_root = |p: &Path| match rootfs {
        Some(r) => r.join(p.strip_prefix("/").unwrap_or(p)),
        None => p.to_path_buf(),
    };
    if cmd.contains('/') {
        return in_root(Path::new(cmd)).exists();
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    path.split(':').any(|d| in_root(&Path::new(d).join(cmd)).is_file())
}

/// Undoes a half-done start or restore unless disarmed.
#[derive(Default)]
struct Undo {
    netns: Option<String>,
    cgroup: Option<Cgroup>,
}

impl Undo {
    fn disarm(&mut self) {
        self.netns = None;
        self.cgroup = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.destroy(Duration::from_secs(2));
        }
        if let Some(ns) = self.netns.take() {
            let _ = netns::delete(&ns);
        }
    }
}

impl Workloads {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Workloads { state_dir: state_dir.into(), cgroup_parent: "hotspot".into() }
    }

    /// Puts the cgroups of workloads this node starts or restores under `parent`.
    pub fn with_cgroup_parent(mut self, parent: impl Into<String>) -> Self {
        self.cgroup_parent = parent.into();
        self
    }

    pub(crate) fn cgroup_of(&self, name: &str) -> String {
        format!("{}/{name}", self.cgroup_parent)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Where a workload's stdout and stderr go: the node's log dir, or inside its rootfs
    /// (the only files a pivot_root'ed workload can reach).
    pub fn console_log(&self, name: &str) -> PathBuf {
        match self.get(name).ok().and_then(|w| w.record.rootfs) {
            Some(root) => root.join(ROOTFS_CONSOLE.trim_start_matches('/')),
            None => self.state_dir.join("logs").join(format!("{name}.log")),
        }
    }

    /// The console path as the workload sees it (created in the node's log dir if needed).
    fn console_path(&self, name: &str, rootfs: Option<&Path>) -> Result<PathBuf, WorkloadError> {
        if rootfs.is_some() {
            return Ok(PathBuf::from(ROOTFS_CONSOLE));
        }
        let path = self.state_dir.join("logs").join(format!("{name}.log"));
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|source| WorkloadError::Io { path: dir.to_path_buf(), source })?;
        Ok(path)
    }

    pub fn get(&self, name: &str) -> Result<Workload, WorkloadError> {
        validate_name(name)?;
        let file = record::path(&self.state_dir, name);
        if !file.exists() {
            return Err(WorkloadError::Unknown(name.to_string()));
        }
        Ok(Workload { record: record::load(&file)? })
    }

    /// Every workload record (unreadable records as errors).
    pub fn list(&self) -> Vec<Result<Workload, RecordError>> {
        record::list(&self.state_dir).into_iter().map(|r| r.map(|record| Workload { record })).collect()
    }

    fn save(&self, rec: &WorkloadRecord) -> Result<(), WorkloadError> {
        Ok(record::store(&self.state_dir, rec)?)
    }

    /// Starts a workload and records it.
    #[tracing::instrument(skip_all, fields(workload = %opts.name))]
    pub fn start(&self, opts: &StartOptions) -> Result<Workload, WorkloadError> {
        require_root()?;
        validate_name(&opts.name)?;
        let argv0 = opts.command.first().ok_or(WorkloadError::NoCommand)?;
        if record::path(&self.state_dir, &opts.name).exists() {
            return Err(WorkloadError::NameTaken(opts.name.clone()));
        }
        for (what, p) in [("volume", &opts.volume), ("rootfs", &opts.rootfs)] {
            if let Some(p) = p.as_ref().filter(|p| !p.is_dir()) {
                return Err(WorkloadError::MissingPath { what, path: p.clone() });
            }
        }
        if opts.volume_device.is_some() && opts.volume.is_none() {
            return Err(WorkloadError::MissingPath { what: "volume mount point (--volume) for the volume device", path: PathBuf::new() });
        }
        if let Some(dev) = opts.volume_device.as_ref().filter(|d| !d.exists()) {
            return Err(WorkloadError::MissingPath { what: "volume device", path: dev.clone() });
        }
        if !command_exists(argv0, opts.rootfs.as_deref()) {
            return Err(WorkloadError::CommandMissing(argv0.clone()));
        }
        let ns = opts.netns.clone().unwrap_or_else(|| crate::sys::names::workload_netns(&opts.name));
        if netns::exists(&ns) {
            return Err(WorkloadError::NetnsTaken(ns));
        }
        let mut undo = Undo::default();
        netns::create(&ns)?;
        undo.netns = Some(ns.clone());
        let uplink = match opts.address {
            Some(addr) => Some(self.attach_service_if(&ns, &opts.name, addr, opts)?),
            None => None,
        };
        let cg_rel = self.cgroup_of(&opts.name);
        let cg = Cgroup::create(&cg_rel)?;
        undo.cgroup = Some(cg.clone());

        let console = self.console_path(&opts.name, opts.rootfs.as_deref())?;
        // Inside a rootfs the volume is bind-mounted at /volume (see spawn); else used in place.
        let volume_inside = opts.volume.as_ref().map(|v| if opts.rootfs.is_some() { PathBuf::from("/volume") } else { v.clone() });
        let mut env = vec![("HOTSPOT_WORKLOAD".to_string(), opts.name.clone())];
        if let Some(v) = &volume_inside {
            env.push(("HOTSPOT_VOLUME".into(), v.display().to_string()));
        }
        let pid = spawn::spawn(spawn::SpawnSpec {
            argv: &opts.command,
            netns: &netns::path(&ns),
            hostname: &opts.name,
            cgroup_procs: cg.procs_files(),
            rootfs: opts.rootfs.as_deref(),
            volume: opts.volume.as_deref().zip(volume_inside.as_deref().filter(|_| opts.rootfs.is_some())),
            volume_device: opts.volume_device.as_deref().zip(volume_inside.as_deref()),
            cwd: volume_inside.as_deref(),
            env,
            console: &console,
            volumes_dir: Some(&self.volumes_dir()),
        })
        .map_err(|source| WorkloadError::Spawn { name: opts.name.clone(), source })?;
        let rec = WorkloadRecord {
            format: record::RECORD_FORMAT,
            name: opts.name.clone(),
            kind: WorkloadKind::Native,
            pid: Some(pid),
            netns: ns,
            cgroup: cg_rel,
            address: opts.address,
            uplink,
            volume: opts.volume.clone(),
            volume_on_device: opts.volume_device.is_some(),
            volume_handle: opts.volume_handle.clone(),
            rootfs: opts.rootfs.clone(),
            command: opts.command.clone(),
            started_unix_ms: now_ms(),
        };
        self.save(&rec)?;
        undo.disarm();
        tracing::info!(pid, netns = %rec.netns, address = ?rec.address, "workload started");
        Ok(Workload { record: rec })
    }

    fn attach_service_if(&self, ns: &str, name: &str, addr: IfAddr, opts: &StartOptions) -> Result<Uplink, WorkloadError> {
        let interface = uplink_if_name(name);
        let uplink_ns = opts.uplink_netns.as_deref();
        netns::create_veth(ns, &interface, uplink_ns)?;
        let mut args: Vec<String> = uplink_ns.map(|n| vec!["-n".into(), n.into()]).unwrap_or_default();
        match opts.uplink_address {
            Some(up) => args.extend(["addr".into(), "replace".into(), up.to_string(), "dev".into(), interface.clone()]),
            // Host route to our own namespace's address only; nothing is routed out.
            None => args.extend(["route".into(), "replace".into(), format!("{}/{}", addr.ip, if addr.ip.is_ipv4() { 32 } else { 128 }), "dev".into(), interface.clone()]),
        }
        netns::ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        netns::bring_up_service(ns, addr)?;
        Ok(Uplink { interface, netns: opts.uplink_netns.clone() })
    }

    /// Stops a workload: kills its tree, removes its cgroup, namespace and record. Works on a
    /// workload that already exited too (cleans up what is left).
    #[tracing::instrument(skip_all, fields(workload = %name))]
    pub fn stop(&self, name: &str) -> Result<(), WorkloadError> {
        require_root()?;
        let w = self.get(name)?;
        if let WorkloadKind::Runc { id, .. } = &w.record.kind {
            runc::delete(id)?;
        }
        if w.is_running() {
            // SIGKILL to PID 1 of a PID namespace kills the whole namespace.
            unsafe { libc::kill(w.record.pid.unwrap_or(0), libc::SIGKILL) };
        }
        w.cgroup().destroy(Duration::from_secs(5))?;
        netns::delete(&w.record.netns)?;
        record::remove(&self.state_dir, name)?;
        tracing::info!("workload stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["web", "redis-1", "a.b_c"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "with space", &"x".repeat(33)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(uplink_if_name("a-very-long-workload-name-indeed").len() <= 15);
        assert_ne!(uplink_if_name("a"), uplink_if_name("b"));
    }

    #[test]
    fn unknown_workloads_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = Workloads::new(dir.path()).get("nope").unwrap_err();
        assert!(matches!(err, WorkloadError::Unknown(_)), "{err}");
        assert!(err.to_string().contains("workload list"));
    }
}
