//! The persisted description of a workload, one JSON file per workload under
//! `STATE_DIR/workloads/NAME.json`. Versioned: a file from a newer node is refused with a
//! clear error instead of being misread; older formats get a migration step here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys::netns::IfAddr;

/// Current record format. Bump it (and add a migration arm in [`load`]) when fields change
/// meaning; adding an optional field with a serde default needs no bump.
pub const RECORD_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkloadRecord {
    pub format: u32,
    pub name: String,
    /// What runs it: our own namespaced launcher or an adopted runc container.
    pub kind: WorkloadKind,
    /// Host PID of the tree's root (PID 1 inside), `None` while checkpointed.
    pub pid: Option<i32>,
    /// Network namespace name (`/run/netns/NAME`).
    pub netns: String,
    /// Cgroup path relative to each hierarchy root.
    pub cgroup: String,
    pub address: Option<IfAddr>,
    /// Host end of the service veth and the namespace it lives in (None = root namespace).
    pub uplink: Option<Uplink>,
    pub volume: Option<PathBuf>,
    /// The volume is a block-device filesystem (a loop device or an EBS disk) mounted at
    /// `volume` inside the workload's own mount namespace, not a host directory. Checkpoints
    /// treat it as an external mount; a restore binds it from [`super::Workloads::volume_mount_dir`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub volume_on_device: bool,
    /// The resource provider's handle of that volume (loop image path, EBS volume id): what
    /// a migration's `WorkloadSpec::volume` carries. Travels with the checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handle: Option<String>,
    pub rootfs: Option<PathBuf>,
    pub command: Vec<String>,
    pub started_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkloadKind {
    Native,
    Runc { id: String, bundle: PathBuf },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Uplink {
    pub interface: String,
    pub netns: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a workload record: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: record format {found} is newer than {RECORD_FORMAT}, written by a newer hotspot-node; upgrade this node")]
    Newer { path: PathBuf, found: u32 },
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("workloads")
}

pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    dir(state_dir).join(format!("{name}.json"))
}

pub fn load(file: &Path) -> Result<WorkloadRecord, RecordError> {
    let text = std::fs::read(file).map_err(|source| RecordError::Io { path: file.into(), source })?;
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let head: Format = serde_json::from_slice(&text).map_err(|source| RecordError::Parse { path: file.into(), source })?;
    if head.format > RECORD_FORMAT {
        return Err(RecordError::Newer { path: file.into(), found: head.format });
    }
    serde_json::from_slice(&text).map_err(|source| RecordError::Parse { path: file.into(), source })
}

/// Writes atomically (temp file + rename) so a crash never leaves half a record.
pub fn store(state_dir: &Path, rec: &WorkloadRecord) -> Result<(), RecordError> {
    let d = dir(state_dir);
    std::fs::create_dir_all(&d).map_err(|source| RecordError::Io { path: d.clone(), source })?;
    let file = path(state_dir, &rec.name);
    let tmp = file.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(rec).expect("records serialize");
    std::fs::write(&tmp, text).map_err(|source| RecordError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, &file).map_err(|source| RecordError::Io { path: file, source })
}

pub fn remove(state_dir: &Path, name: &str) -> Result<(), RecordError> {
    let file = path(state_dir, name);
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RecordError::Io { path: file, source: e }),
        _ => Ok(()),
    }
}

/// All records, sorted by name; unreadable ones are returned as errors, not skipped.
pub fn list(state_dir: &Path) -> Vec<Result<WorkloadRecord, RecordError>> {
    let Ok(rd) = std::fs::read_dir(dir(state_dir)) else { return Vec::new() };
    let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    files.sort();
    files.iter().map(|f| load(f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WorkloadRecord {
        WorkloadRecord {
            format: RECORD_FORMAT,
            name: "web".into(),
            kind: WorkloadKind::Native,
            pid: Some(42),
            netns: "hs-web".into(),
            cgroup: "hotspot/web".into(),
            address: Some("10.77.0.2/24".parse().unwrap()),
            uplink: Some(Uplink { interface: "hsu0".into(), netns: None }),
            volume: None,
            volume_on_device: false,
            volume_handle: None,
            rootfs: None,
            command: vec!["sleep".into(), "1".into()],
            started_unix_ms: 1,
        }
    }

    #[test]
    fn round_trips_and_refuses_newer_formats() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample()).unwrap();
        assert_eq!(load(&path(dir.path(), "web")).unwrap(), sample());
        assert_eq!(list(dir.path()).len(), 1);
        let mut newer = serde_json::to_value(sample()).unwrap();
        newer["format"] = 99.into();
        std::fs::write(path(dir.path(), "web"), newer.to_string()).unwrap();
        let err = load(&path(dir.path(), "web")).unwrap_err();
        assert!(matches!(err, RecordError::Newer { found: 99, .. }), "{err}");
        assert!(err.to_string().contains("newer"));
        remove(dir.path(), "web").unwrap();
        assert!(list(dir.path()).is_empty());
    }
}
