//! The CRIU driver: checkpoint (dump) and restore of process trees, behind options structs.
//!
//! # Command line, not `criu swrk`
//! We drive CRIU through its command line rather than the `swrk` protobuf RPC:
//! - the flags are exactly the ones measured to work on this kernel (see the project notes), and
//!   an operator can replay a failed step by hand from the logged argv;
//! - RPC would need CRIU's .proto files compiled into the node (protobuf codegen on every cold
//!   build) for no capability we use: we need no per-step notify callbacks, because the network
//!   lock is pre-installed by us (see [`netlock`]) and the address is moved around the call;
//! - errors are the same either way: CRIU's log file, whose path and last error lines every
//!   [`CriuError::Failed`] carries.
//!
//! # Shape
//! [`Criu::detect`] finds the binary, checks the version (>= 4.2) and probes the optional
//! features once; the caller keeps the value. [`Criu::dump`] and [`Criu::restore`] are blocking
//! and bounded by the timeout in their options (async callers use `spawn_blocking`). CRIU runs
//! inside the workload's network namespace so its network lock (per-connection iptables DROP
//! rules) lands there, and so a restore recreates sockets in the namespace that holds the
//! service address.

mod driver;
mod lazy;
pub mod netlock;
mod options;
pub mod version;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use driver::{dir_bytes, DumpStats, RestoreOutcome};
pub use hotspot_criu_image::{CriuDumpStats, CriuRestoreStats};
pub use lazy::{LazyDump, LazyPagesDaemon};
pub use options::{DumpOptions, PageServer, RestoreOptions};

use crate::sys::process;

/// Oldest CRIU that can dump inet sockets on kernels >= 6.16.
pub const MIN_VERSION: (u32, u32) = version::MIN_CRIU;

#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("criu not found (looked at {looked}); run scripts/install-deps or set HOTSPOT_CRIU")]
    NotFound { looked: String },
    #[error("{path}: CRIU {found} is too old, >= {}.{} is needed (older ones cannot dump TCP sockets on kernels >= 6.16)", MIN_VERSION.0, MIN_VERSION.1)]
    TooOld { path: PathBuf, found: String },
    #[error("{path} did not report a CRIU version: {output}")]
    NoVersion { path: PathBuf, output: String },
    #[error("criu {action}: {source}")]
    Run { action: &'static str, source: process::RunError },
    #[error("criu {action} failed ({status}); log {log}:\n{last_errors}")]
    Failed { action: &'static str, status: String, log: PathBuf, last_errors: String },
    #[error("criu {action} did not finish within {after:?}; log {log}")]
    TimedOut { action: &'static str, after: Duration, log: PathBuf },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("images in {dir}: {source}")]
    Image { dir: PathBuf, source: hotspot_criu_image::ImageError },
    #[error("images in {dir} use CRIU image format {found}, newer than the {supported} this node supports; upgrade CRIU and hotspot-node on this host")]
    NewerImages { dir: PathBuf, found: u32, supported: u32 },
    #[error("{feature} is not available on this host: {hint}")]
    Unsupported { feature: &'static str, hint: String },
    #[error("network lock: {0}")]
    NetLock(#[from] netlock::NetLockError),
}

/// Post-copy (lazy pages) availability, with the reason when it is not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LazyPages {
    Available,
    PipeTooSmall { pipe_max_size: u64 },
    NoUserfaultfd,
}

impl LazyPages {
    pub fn hint(&self) -> Option<String> {
        match self {
            LazyPages::Available => None,
            LazyPages::PipeTooSmall { pipe_max_size } => Some(format!(
                "fs.pipe-max-size={pipe_max_size} < {}: enable post-copy with `sysctl -w fs.pipe-max-size={}`",
                version::LAZY_PAGES_PIPE_SIZE,
                version::LAZY_PAGES_PIPE_SIZE
            )),
            LazyPages::NoUserfaultfd => Some("the kernel lacks non-cooperative userfaultfd".into()),
        }
    }
}

/// What this host's CRIU can do, probed once by [`Criu::detect`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Capabilities {
    pub version: (u32, u32, u32),
    /// Soft-dirty memory tracking (`criu pre-dump`, `--track-mem`). Off on this project's hosts:
    /// pre-copy is a `dump --leave-running` round plus content addressing instead.
    pub memory_tracking: bool,
    pub lazy_pages: LazyPages,
}

/// A detected, usable CRIU binary.
#[derive(Debug, Clone)]
pub struct Criu {
    path: PathBuf,
    caps: Capabilities,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

impl Criu {
    /// Finds CRIU (`$HOTSPOT_CRIU`, `PATH`, `/usr/local/sbin`), checks it is >= 4.2 and probes
    /// memory tracking and lazy pages.
    pub fn detect() -> Result<Self, CriuError> {
        let path = version::criu_path().ok_or_else(|| CriuError::NotFound {
            looked: "$HOTSPOT_CRIU, PATH, /usr/local/sbin, /usr/sbin, /sbin".into(),
        })?;
        Self::at(path)
    }

    /// Uses the CRIU binary at `path`.
    pub fn at(path: PathBuf) -> Result<Self, CriuError> {
        if !path.exists() {
            return Err(CriuError::NotFound { looked: path.display().to_string() });
        }
        let out = process::run_bounded(Command::new(&path).arg("--version"), PROBE_TIMEOUT)
            .map_err(|source| CriuError::Run { action: "--version", source })?;
        let version = version::parse_criu_version(&out.stdout)
            .ok_or_else(|| CriuError::NoVersion { path: path.clone(), output: out.complaint() })?;
        if (version.0, version.1) < MIN_VERSION {
            return Err(CriuError::TooOld { path, found: format!("{}.{}.{}", version.0, version.1, version.2) });
        }
        let feature = |name: &str| {
            process::run_bounded(Command::new(&path).args(["check", "--feature", name]), PROBE_TIMEOUT)
                .is_ok_and(|o| o.status.success())
        };
        let memory_tracking = feature("mem_dirty_track");
        let lazy_pages = if !feature("uffd-noncoop") {
            LazyPages::NoUserfaultfd
        } else {
            let pipe_max_size = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if pipe_max_size >= version::LAZY_PAGES_PIPE_SIZE {
                LazyPages::Available
            } else {
                LazyPages::PipeTooSmall { pipe_max_size }
            }
        };
        tracing::debug!(path = %path.display(), ?version, memory_tracking, ?lazy_pages, "criu detected");
        Ok(Criu { path, caps: Capabilities { version, memory_tracking, lazy_pages } })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn version_string(&self) -> String {
        let (a, b, c) = self.caps.version;
        format!("{a}.{b}.{c}")
    }
}

/// The last error lines of a CRIU log (lines CRIU tags `Error`), else its last lines.
pub fn last_error_lines(log: &Path, max: usize) -> String {
    let Ok(text) = std::fs::read_to_string(log) else {
        return format!("(no log at {})", log.display());
    };
    let meaningful = |l: &&str| !l.trim().is_empty() && !l.contains("RLIMIT_NOFILE");
    let errors: Vec<&str> = text.lines().filter(meaningful).filter(|l| l.contains("Error")).collect();
    let pick = if errors.is_empty() { text.lines().filter(meaningful).collect::<Vec<_>>() } else { errors };
    pick[pick.len().saturating_sub(max)..].join("\n")
}
