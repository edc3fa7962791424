//! A checkpoint image directory: CRIU's images, the network-lock rules
//! ([`crate::criu::netlock::RULES_FILE`]) and our metadata ([`CHECKPOINT_META`]): the source
//! workload's record, versioned, so a target knows the address, volume and rootfs to set up.
//! Also the options of a checkpoint and the spec of a restore.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{validate_name, WorkloadError, WorkloadRecord};
use crate::criu::{Criu, DumpStats, PageServer};

/// Metadata file written next to CRIU's images.
pub const CHECKPOINT_META: &str = "hotspot-checkpoint.json";
/// Current metadata format; a newer one is refused before CRIU is run.
pub const CHECKPOINT_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    pub workload: WorkloadRecord,
    pub criu_version: String,
    pub leave_running: bool,
    /// Pages went to a page server or stay behind a lazy-pages server (not in this dir).
    #[serde(default)]
    pub remote_pages: bool,
    pub created_unix_ms: u64,
}

#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub image_dir: PathBuf,
    /// Pre-copy round: keep the workload running (frozen only during the dump).
    pub leave_running: bool,
    pub page_server: Option<PageServer>,
    pub timeout: Duration,
}

impl CheckpointOptions {
    pub fn new(image_dir: impl Into<PathBuf>) -> Self {
        CheckpointOptions { image_dir: image_dir.into(), leave_running: false, page_server: None, timeout: Duration::from_secs(300) }
    }
}

/// A checkpoint on disk.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub meta: CheckpointMeta,
    /// Present when this node just made it.
    pub stats: Option<DumpStats>,
}

impl Checkpoint {
    /// Reads and checks the metadata (format, workload name) and CRIU's image format.
    pub fn open(dir: &Path, criu: &Criu) -> Result<Self, WorkloadError> {
        let bad = |reason: String| WorkloadError::BadCheckpoint { dir: dir.to_path_buf(), reason };
        let text = std::fs::read(dir.join(CHECKPOINT_META)).map_err(|e| bad(format!("no {CHECKPOINT_META}: {e}")))?;
        let format = serde_json::from_slice::<serde_json::Value>(&text)
            .map_err(|e| bad(format!("{CHECKPOINT_META} is not JSON: {e}")))?
            .get("format")
            .and_then(|f| f.as_u64())
            .ok_or_else(|| bad(format!("{CHECKPOINT_META} has no format")))?;
        if format > u64::from(CHECKPOINT_FORMAT) {
            return Err(bad(format!(
                "checkpoint format {format} is newer than {CHECKPOINT_FORMAT}; it was made by a newer hotspot-node, upgrade this one"
            )));
        }
        let meta: CheckpointMeta = serde_json::from_slice(&text).map_err(|e| bad(format!("{CHECKPOINT_META}: {e}")))?;
        validate_name(&meta.workload.name)?;
        criu.check_images(dir, !meta.remote_pages)?;
        Ok(Checkpoint { dir: dir.to_path_buf(), meta, stats: None })
    }
}

/// How the service interface reaches the target namespace before the restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceNet {
    /// Move `eth0` from this namespace (same host: the stand-in for re-attaching an ENI).
    MoveFrom(String),
    /// The caller already put `eth0` into the target namespace (down or up).
    Present,
}

/// Where and as what to restore.
#[derive(Debug, Clone)]
pub struct RestoreSpec {
    /// Name of the restored workload (may be the source's).
    pub name: String,
    /// Target network namespace; created when missing.
    pub netns: String,
    pub service_net: ServiceNet,
    pub timeout: Duration,
}

pub(super) fn write_meta(dir: &Path, meta: &CheckpointMeta) -> Result<(), WorkloadError> {
    let path = dir.join(CHECKPOINT_META);
    std::fs::write(&path, serde_json::to_vec_pretty(meta).expect("meta serializes")).map_err(|source| WorkloadError::Io { path, source })
}
