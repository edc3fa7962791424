//! The workload's own cgroup, in every hierarchy this host mounts (v1, hybrid or v2).
//!
//! Every hierarchy, cpuset included: a restore re-roots the whole dumped cgroup set with one
//! `--cgroup-root`, so the workload must sit at the same path everywhere. A new v1 cpuset
//! cgroup refuses tasks until `cpuset.cpus`/`cpuset.mems` are set, so they are copied from the
//! parent level by level.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A cgroup path (like `hotspot/web`) and the directories it has in each hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub rel: String,
    dirs: Vec<PathBuf>,
}

/// Hierarchy roots: `/sys/fs/cgroup` itself on v2, else each controller mount below it.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.procs").exists() {
        return vec![root.to_path_buf()];
    }
    let mut seen = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else { return seen };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let Ok(real) = p.canonicalize() else { continue };
        if real.join("cgroup.procs").exists() && !seen.contains(&real) {
            seen.push(real);
        }
    }
    seen
}

impl Cgroup {
    /// The cgroup at `rel` in every hierarchy, without creating anything.
    pub fn at(rel: &str) -> Self {
        Cgroup { rel: rel.to_string(), dirs: hierarchies().into_iter().map(|h| h.join(rel)).collect() }
    }

    pub fn create(rel: &str) -> Result<Self, CgroupError> {
        let cg = Self::at(rel);
        for d in &cg.dirs {
            let io = |source| CgroupError::Io { path: d.clone(), source };
            std::fs::create_dir_all(d).map_err(io)?;
            if d.starts_with("/sys/fs/cgroup/cpuset") {
                inherit_cpuset(d).map_err(io)?;
            }
        }
        Ok(cg)
    }

    /// `cgroup.procs` of every hierarchy: writing a PID there moves it in.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The freezer for `criu dump --freeze-cgroup`: v1 freezer hierarchy or the v2 cgroup.
    pub fn freezer(&self) -> Option<PathBuf> {
        self.dirs.iter().find(|d| d.starts_with("/sys/fs/cgroup/freezer") || d.join("cgroup.freeze").exists()).cloned()
    }

    /// PIDs in the cgroup (any hierarchy holds them all).
    pub fn pids(&self) -> Vec<i32> {
        self.procs_files()
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs everything in it and removes its directories (waits up to `wait` for exits).
    pub fn destroy(&self, wait: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + wait;
        loop {
            let pids = self.pids();
            for pid in &pids {
                // SAFETY: kill(2) on PIDs the cgroup reports.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for d in &self.dirs {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(CgroupError::Io { path: d.clone(), source }),
            }
        }
        Ok(())
    }
}

/// Copies empty `cpuset.cpus`/`cpuset.mems` from the parent, top-down from the hierarchy root.
fn inherit_cpuset(dir: &Path) -> std::io::Result<()> {
    let root = Path::new("/sys/fs/cgroup/cpuset");
    let mut levels: Vec<&Path> = dir.ancestors().take_while(|a| a.starts_with(root) && *a != root).collect();
    levels.reverse();
    for level in levels {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let here = level.join(file);
            if std::fs::read_to_string(&here)?.trim().is_empty() {
                let parent = std::fs::read_to_string(level.parent().unwrap_or(root).join(file))?;
                std::fs::write(&here, parent.trim())?;
            }
        }
    }
    Ok(())
}
