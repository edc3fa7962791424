//! What a dump or a restore should do. Defaults are the shape that moves a namespaced
//! workload with live TCP clients: established TCP, file locks, cgroups managed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where page data goes (dump) or comes from (restore) instead of local `pages-*.img`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageServer {
    /// `criu page-server` listening there receives the pages during the dump.
    Push(SocketAddr),
    /// Post-copy: the dump leaves pages behind a lazy-pages server at this address.
    Lazy(SocketAddr),
}

#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Host PID of the tree's root (the workload's PID 1).
    pub pid: i32,
    pub image_dir: PathBuf,
    /// Pre-copy round: the tree keeps running after the dump (and is frozen while it runs).
    /// Unsafe as a *final* dump with live TCP: the source would keep answering clients.
    pub leave_running: bool,
    /// Network namespace (`/run/netns/NAME`) CRIU runs in: the workload's, so that the
    /// network lock's DROP rules land there and the namespace is treated as external.
    pub netns: Option<PathBuf>,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub manage_cgroups: bool,
    /// A freezer cgroup holding exactly the tree: freezing it is faster than ptrace-seizing.
    pub freeze_cgroup: Option<PathBuf>,
    pub page_server: Option<PageServer>,
    /// Extra `--external` specs (e.g. `mnt[/volume]:volume`).
    pub external: Vec<String>,
    /// CRIU log verbosity (0-4); 4 makes failures diagnosable at little cost.
    pub log_level: u8,
    pub timeout: Duration,
}

impl DumpOptions {
    pub fn new(pid: i32, image_dir: impl Into<PathBuf>) -> Self {
        DumpOptions {
            pid,
            image_dir: image_dir.into(),
            leave_running: false,
            netns: None,
            tcp_established: true,
            file_locks: true,
            manage_cgroups: true,
            freeze_cgroup: None,
            page_server: None,
            external: Vec::new(),
            log_level: 4,
            timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub image_dir: PathBuf,
    /// Where CRIU writes its log and pidfile; the image dir is only read. Defaults to the image dir.
    pub work_dir: Option<PathBuf>,
    /// Network namespace to restore into; it must already hold the service address, and the
    /// network-lock rules must be in it before that address comes up (see `netlock`).
    pub netns: Option<PathBuf>,
    /// `--root`: `/` for workloads sharing the host's root, or their rootfs.
    pub root: PathBuf,
    /// `--cgroup-root`: put the restored tree under this cgroup path instead of the dumped one.
    pub cgroup_root: Option<String>,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub manage_cgroups: bool,
    /// Post-copy: fetch pages from a `criu lazy-pages` daemon.
    pub lazy_pages: bool,
    pub external: Vec<String>,
    pub log_level: u8,
    pub timeout: Duration,
}

impl RestoreOptions {
    pub fn new(image_dir: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            image_dir: image_dir.into(),
            work_dir: None,
            netns: None,
            root: PathBuf::from("/"),
            cgroup_root: None,
            tcp_established: true,
            file_locks: true,
            manage_cgroups: true,
            lazy_pages: false,
            external: Vec::new(),
            log_level: 4,
            timeout: Duration::from_secs(300),
        }
    }
}
