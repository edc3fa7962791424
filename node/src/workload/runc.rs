//! Adopting an existing runc container, so the node can checkpoint and move it too.
//!
//! runc drives CRIU itself (runc 1.1.5 works with CRIU 4.2 first on PATH); we only put our
//! CRIU first on its PATH, pass the same flags (established TCP, file locks) and record the
//! container like any workload. Its network namespace is bound under `/run/netns` with
//! `ip netns attach` so tools and the network lock can reach it by name.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::image::{write_meta, Checkpoint, CheckpointMeta, CheckpointOptions, RestoreSpec, CHECKPOINT_FORMAT};
use crate::sys::{clock::now_ms, netns};
use super::{record, require_root, validate_name, Workload, WorkloadError, WorkloadKind, WorkloadRecord, Workloads};
use crate::sys::process;
use crate::criu::{Criu, RestoreOutcome};
use crate::sys::program::find_program;

const TIMEOUT: Duration = Duration::from_secs(300);

/// Runs runc with our CRIU first on its PATH.
fn runc(args: &[&str], criu: Option<&Criu>) -> Result<String, WorkloadError> {
    let bin = find_program("runc").ok_or_else(|| WorkloadError::Runc("runc not found: apt-get install runc".into()))?;
    let mut cmd = Command::new(bin);
    cmd.args(args);
    if let Some(dir) = criu.and_then(|c| c.path().parent()) {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", dir.display()));
    }
    let out = process::run_bounded(&mut cmd, TIMEOUT).map_err(|e| WorkloadError::Runc(e.to_string()))?;
    if !out.status.success() {
        return Err(WorkloadError::Runc(format!("runc {}: {}", args.join(" "), out.complaint())));
    }
    Ok(out.stdout)
}

#[derive(serde::Deserialize)]
struct RuncState {
    pid: i32,
    status: String,
    bundle: std::path::PathBuf,
}

fn state(id: &str) -> Result<RuncState, WorkloadError> {
    let text = runc(&["state", id], None)?;
    serde_json::from_str(&text).map_err(|e| WorkloadError::Runc(format!("runc state {id}: {e}")))
}

/// The container's cgroup path (from its freezer or unified line in /proc/PID/cgroup).
fn cgroup_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let line = text.lines().find(|l| l.split(':').nth(1) == Some("freezer")).or_else(|| text.lines().find(|l| l.starts_with("0::")))?;
    Some(line.rsplit(':').next()?.trim_start_matches('/').to_string())
}

pub(super) fn delete(id: &str) -> Result<(), WorkloadError> {
    match runc(&["delete", "--force", id], None) {
        Err(WorkloadError::Runc(m)) if m.contains("does not exist") => Ok(()),
        other => other.map(|_| ()),
    }
}

impl Workloads {
    /// Records the running runc container `id` as workload `name`.
    pub fn adopt_runc(&self, id: &str, name: &str) -> Result<Workload, WorkloadError> {
        require_root()?;
        validate_name(name)?;
        if record::path(&self.state_dir, name).exists() {
            return Err(WorkloadError::NameTaken(name.into()));
        }
        let st = state(id)?;
        if st.status != "running" {
            return Err(WorkloadError::Runc(format!("container {id} is {}, not running", st.status)));
        }
        let ns = crate::sys::names::workload_netns(name);
        attach_netns(&ns, st.pid)?;
        let rec = WorkloadRecord {
            format: record::RECORD_FORMAT,
            name: name.into(),
            kind: WorkloadKind::Runc { id: id.into(), bundle: st.bundle.clone() },
            pid: Some(st.pid),
            netns: ns,
            cgroup: cgroup_of(st.pid).unwrap_or_default(),
            address: None,
            uplink: None,
            volume: None,
            volume_on_device: false,
            volume_handle: None,
            rootfs: Some(st.bundle.join("rootfs")),
            command: Vec::new(),
            started_unix_ms: now_ms(),
        };
        self.save(&rec)?;
        Ok(Workload { record: rec })
    }
}

fn attach_netns(ns: &str, pid: i32) -> Result<(), WorkloadError> {
    let _ = netns::delete(ns);
    netns::ip(&["netns", "attach", ns, &pid.to_string()])?;
    Ok(())
}

pub(super) fn checkpoint(
    wls: &Workloads,
    w: &mut Workload,
    id: String,
    opts: &CheckpointOptions,
    criu: &Criu,
) -> Result<Checkpoint, WorkloadError> {
    let dir = &opts.image_dir;
    let work = dir.join("runc-work");
    std::fs::create_dir_all(&work).map_err(|source| WorkloadError::Io { path: work.clone(), source })?;
    let (img, wrk) = (dir.display().to_string(), work.display().to_string());
    let mut args = vec!["checkpoint", "--image-path", &img, "--work-path", &wrk, "--tcp-established", "--file-locks"];
    if opts.leave_running {
        args.push("--leave-running");
    }
    args.push(&id);
    runc(&args, Some(criu))?;
    let meta = CheckpointMeta {
        format: CHECKPOINT_FORMAT,
        workload: w.record.clone(),
        criu_version: criu.version_string(),
        leave_running: opts.leave_running,
        remote_pages: false,
        created_unix_ms: now_ms(),
    };
    write_meta(dir, &meta)?;
    if !opts.leave_running {
        w.record.pid = None;
        // runc deleted the container; the namespace binding is all that is left of it.
        let _ = netns::delete(&w.record.netns);
        wls.save(&w.record)?;
    }
    Ok(Checkpoint { dir: dir.clone(), meta, stats: None })
}

pub(super) fn restore(wls: &Workloads, cp: &Checkpoint, spec: &RestoreSpec) -> Result<(Workload, RestoreOutcome), WorkloadError> {
    let WorkloadKind::Runc { id, bundle } = &cp.meta.workload.kind else { unreachable!("runc restore of a native checkpoint") };
    let work = wls.state_dir.join("criu").join(&spec.name);
    std::fs::create_dir_all(&work).map_err(|source| WorkloadError::Io { path: work.clone(), source })?;
    let criu = Criu::detect()?;
    let start = std::time::Instant::now();
    let (img, wrk, b) = (cp.dir.display().to_string(), work.display().to_string(), bundle.display().to_string());
    runc(&["restore", "-d", "--image-path", &img, "--work-path", &wrk, "--tcp-established", "--file-locks", "-b", &b, id], Some(&criu))?;
    let elapsed = start.elapsed();
    let st = state(id)?;
    attach_netns(&spec.netns, st.pid)?;
    let rec = WorkloadRecord {
        name: spec.name.clone(),
        pid: Some(st.pid),
        netns: spec.netns.clone(),
        cgroup: cgroup_of(st.pid).unwrap_or_default(),
        started_unix_ms: now_ms(),
        ..cp.meta.workload.clone()
    };
    wls.save(&rec)?;
    Ok((Workload { record: rec }, RestoreOutcome { pid: st.pid, elapsed, criu: None }))
}

/// Whether `path` looks like a runc bundle (for CLI errors).
pub fn is_bundle(path: &Path) -> bool {
    path.join("config.json").is_file()
}
