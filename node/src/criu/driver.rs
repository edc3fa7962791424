//! `criu dump` and `criu restore` invocations built from the options structs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hotspot_criu_image::{self as image, CriuDumpStats, CriuRestoreStats};
use super::options::{DumpOptions, PageServer, RestoreOptions};
use crate::sys::process::{self, RunError};
use super::{netlock, Criu, CriuError, LazyPages};

pub const DUMP_LOG: &str = "dump.log";
pub const RESTORE_LOG: &str = "restore.log";
const RESTORE_PIDFILE: &str = "restore.pid";

#[derive(Debug, Clone, serde::Serialize)]
pub struct DumpStats {
    /// Wall time of the whole `criu dump` (the tree is frozen for most of it).
    pub elapsed: Duration,
    /// Bytes of image files written (0 for page-server dumps beyond the metadata).
    pub image_bytes: u64,
    /// Connections CRIU locked (two DROP rules each); saved with the images for the target.
    pub locked_connections: usize,
    /// CRIU's own accounting, when it wrote `stats-dump`.
    pub criu: Option<CriuDumpStats>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreOutcome {
    /// Host PID of the restored tree's root.
    pub pid: i32,
    pub elapsed: Duration,
    pub criu: Option<CriuRestoreStats>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CriuError + 'a {
    move |source| CriuError::Io { what, path: path.to_path_buf(), source }
}

/// Total size of the regular files in `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

impl Criu {
    fn command(&self, action: &str, dir: &Path, log: &str, level: u8) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg(action).arg("-D").arg(dir).arg("-o").arg(log).arg(format!("-v{}", level.min(4)));
        cmd
    }

    fn finish(&self, action: &'static str, mut cmd: Command, log: PathBuf, timeout: Duration) -> Result<(), CriuError> {
        tracing::debug!(action, argv = ?cmd.get_args().collect::<Vec<_>>(), "running criu");
        match process::run_bounded(&mut cmd, timeout) {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => {
                let mut last_errors = super::last_error_lines(&log, 8);
                if !log.exists() {
                    last_errors = out.complaint();
                }
                Err(CriuError::Failed { action, status: out.status.to_string(), log, last_errors })
            }
            Err(RunError::TimedOut { after, .. }) => Err(CriuError::TimedOut { action, after, log }),
            Err(source) => Err(CriuError::Run { action, source }),
        }
    }

    /// Checkpoints the tree rooted at `opts.pid` into `opts.image_dir`.
    ///
    /// A final dump (not `leave_running`) with established TCP leaves the connections locked by
    /// DROP rules in the workload's network namespace and records those rules next to the
    /// images ([`netlock::RULES_FILE`]) for the restoring side.
    #[tracing::instrument(skip_all, fields(pid = opts.pid, dir = %opts.image_dir.display(), leave_running = opts.leave_running))]
    pub fn dump(&self, opts: &DumpOptions) -> Result<DumpStats, CriuError> {
        let dir = &opts.image_dir;
        std::fs::create_dir_all(dir).map_err(io_err("create image dir", dir))?;
        if let Some(PageServer::Lazy(_)) = opts.page_server {
            // A lazy dump only returns once the target fetched every page.
            return Err(CriuError::Unsupported { feature: "lazy pages in a blocking dump", hint: "use Criu::dump_lazy".into() });
        }
        let cmd = self.dump_command(opts)?;
        let start = Instant::now();
        self.finish("dump", cmd, dir.join(DUMP_LOG), opts.timeout)?;
        let elapsed = start.elapsed();
        let mut locked_connections = 0;
        if !opts.leave_running && opts.tcp_established {
            if let Some(ns) = &opts.netns {
                let rules = netlock::capture(ns)?;
                locked_connections = rules.len() / 2;
                netlock::save(dir, &rules)?;
            }
        }
        let stats = DumpStats { elapsed, image_bytes: dir_bytes(dir), locked_connections, criu: image::read_dump_stats(dir) };
        tracing::info!(elapsed_ms = elapsed.as_millis() as u64, bytes = stats.image_bytes, locked_connections, "criu dump done");
        Ok(stats)
    }

    /// `criu dump` argv for `opts`, set to run in the workload's network namespace.
    pub(super) fn dump_command(&self, opts: &DumpOptions) -> Result<Command, CriuError> {
        let dir = &opts.image_dir;
        let mut cmd = self.command("dump", dir, DUMP_LOG, opts.log_level);
        cmd.arg("-t").arg(opts.pid.to_string()).args(["--network-lock", "iptables"]);
        flag(&mut cmd, opts.leave_running, "--leave-running");
        flag(&mut cmd, opts.tcp_established, "--tcp-established");
        flag(&mut cmd, opts.file_locks, "--file-locks");
        flag(&mut cmd, opts.manage_cgroups, "--manage-cgroups");
        if let Some(fc) = &opts.freeze_cgroup {
            cmd.arg("--freeze-cgroup").arg(fc);
        }
        match opts.page_server {
            Some(PageServer::Push(addr)) => {
                cmd.arg("--page-server").args(["--address", &addr.ip().to_string(), "--port", &addr.port().to_string()]);
            }
            Some(PageServer::Lazy(addr)) => {
                cmd.arg("--lazy-pages").args(["--address", &addr.ip().to_string(), "--port", &addr.port().to_string()]);
            }
            None => {}
        }
        for ext in &opts.external {
            cmd.arg("--external").arg(ext);
        }
        if let Some(ns) = &opts.netns {
            process::in_netns(&mut cmd, ns).map_err(|source| CriuError::Run { action: "dump", source })?;
        }
        Ok(cmd)
    }

    pub(super) fn require_lazy_pages(&self) -> Result<(), CriuError> {
        match &self.caps.lazy_pages {
            LazyPages::Available => Ok(()),
            other => Err(CriuError::Unsupported { feature: "lazy-pages (post-copy)", hint: other.hint().unwrap_or_default() }),
        }
    }

    /// Checks that `dir` holds images this CRIU can read, before anything is changed;
    /// with `local_pages`, also that the page files hold every page the maps list.
    pub fn check_images(&self, dir: &Path, local_pages: bool) -> Result<(), CriuError> {
        let found = image::inventory_version(dir).map_err(|source| CriuError::Image { dir: dir.to_path_buf(), source })?;
        if found > image::SUPPORTED_IMG_VERSION {
            return Err(CriuError::NewerImages { dir: dir.to_path_buf(), found, supported: image::SUPPORTED_IMG_VERSION });
        }
        if local_pages {
            image::verify_pages(dir).map_err(|source| CriuError::Image { dir: dir.to_path_buf(), source })?;
        }
        Ok(())
    }

    /// Restores the images in `opts.image_dir`, detached (`-d`), and returns the new root PID.
    /// Only reads the image dir: a failed restore leaves the images as they were, so the
    /// source can restore them again (rollback).
    #[tracing::instrument(skip_all, fields(dir = %opts.image_dir.display()))]
    pub fn restore(&self, opts: &RestoreOptions) -> Result<RestoreOutcome, CriuError> {
        self.check_images(&opts.image_dir, !opts.lazy_pages)?;
        if opts.lazy_pages {
            self.require_lazy_pages()?;
        }
        let work = opts.work_dir.clone().unwrap_or_else(|| opts.image_dir.clone());
        std::fs::create_dir_all(&work).map_err(io_err("create work dir", &work))?;
        let pidfile = work.join(RESTORE_PIDFILE);
        let _ = std::fs::remove_file(&pidfile);
        let mut cmd = self.command("restore", &opts.image_dir, RESTORE_LOG, opts.log_level);
        cmd.arg("-W").arg(&work).arg("-d").arg("--pidfile").arg(&pidfile).arg("--root").arg(&opts.root);
        flag(&mut cmd, opts.tcp_established, "--tcp-established");
        flag(&mut cmd, opts.file_locks, "--file-locks");
        flag(&mut cmd, opts.manage_cgroups, "--manage-cgroups=soft");
        flag(&mut cmd, opts.lazy_pages, "--lazy-pages");
        if let Some(cg) = &opts.cgroup_root {
            cmd.arg("--cgroup-root").arg(cg);
        }
        for ext in &opts.external {
            cmd.arg("--external").arg(ext);
        }
        if let Some(ns) = &opts.netns {
            process::in_netns(&mut cmd, ns).map_err(|source| CriuError::Run { action: "restore", source })?;
        }
        let start = Instant::now();
        self.finish("restore", cmd, work.join(RESTORE_LOG), opts.timeout)?;
        let elapsed = start.elapsed();
        let text = std::fs::read_to_string(&pidfile).map_err(io_err("read restore pidfile", &pidfile))?;
        let pid = text.trim().parse().map_err(|_| CriuError::Failed {
            action: "restore",
            status: "no pid".into(),
            log: work.join(RESTORE_LOG),
            last_errors: format!("pidfile {} holds {text:?}", pidfile.display()),
        })?;
        tracing::info!(pid, elapsed_ms = elapsed.as_millis() as u64, "criu restore done");
        Ok(RestoreOutcome { pid, elapsed, criu: image::read_restore_stats(&opts.image_dir) })
    }
}

fn flag(cmd: &mut Command, on: bool, name: &str) {
    if on {
        cmd.arg(name);
    }
}
