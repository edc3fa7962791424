//! Checkpointing a workload into an image directory and restoring it, possibly under a new
//! name in another network namespace, with rollback to the source when the restore fails.
//!
//! The image directory's layout and metadata are in [`super::image`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;


use crate::sys::cgroup::Cgroup;
use crate::sys::mounts::is_mount_point;
use crate::sys::{clock::now_ms, netns};
use super::image::{write_meta, Checkpoint, CheckpointMeta, CheckpointOptions, RestoreSpec, ServiceNet, CHECKPOINT_FORMAT};
use super::{record, require_root, validate_name, Undo, Workload, WorkloadError, WorkloadKind, WorkloadRecord, Workloads};
use crate::criu::{netlock, Criu, DumpOptions, DumpStats, LazyDump, PageServer, RestoreOptions, RestoreOutcome};

/// Names CRIU knows the host bind mounts of a rootfs workload by (volume, /dev/null): external
/// mounts, re-bound from this host's paths on restore.
const VOLUME_EXT: &str = "hotspot-volume";
const DEV_NULL_EXT: &str = "hotspot-devnull";

impl Workloads {
    /// Dumps a running workload. A final dump (not `leave_running`) stops it: its record keeps
    /// everything but the PID until it is restored or stopped.
    #[tracing::instrument(skip_all, fields(workload = %name, dir = %opts.image_dir.display()))]
    pub fn checkpoint(&self, criu: &Criu, name: &str, opts: &CheckpointOptions) -> Result<Checkpoint, WorkloadError> {
        require_root()?;
        let w = self.get(name)?;
        if !w.is_running() {
            return Err(WorkloadError::NotRunning { name: name.into(), console: Some(self.console_log(name)) });
        }
        if let WorkloadKind::Runc { id, .. } = w.record.kind.clone() {
            let mut w = w;
            return super::runc::checkpoint(self, &mut w, id, opts, criu);
        }
        if let Some(PageServer::Lazy(_)) = opts.page_server {
            return Err(crate::criu::CriuError::Unsupported { feature: "lazy pages in a blocking checkpoint", hint: "use Workloads::checkpoint_lazy".into() }.into());
        }
        let dump = dump_options(&w, opts);
        let stats = criu.dump(&dump)?;
        self.after_dump(criu, w, opts, Some(stats))
    }

    /// Post-copy checkpoint: returns once the workload is frozen and its memory is served at
    /// `address`; restore the checkpoint (it is marked as having remote pages) with a
    /// [`Criu::lazy_pages_daemon`] running, then call [`LazyDump::finish`].
    pub fn checkpoint_lazy(&self, criu: &Criu, name: &str, image_dir: &Path, address: SocketAddr) -> Result<(Checkpoint, LazyDump), WorkloadError> {
        require_root()?;
        let w = self.get(name)?;
        if !w.is_running() {
            return Err(WorkloadError::NotRunning { name: name.into(), console: Some(self.console_log(name)) });
        }
        if let WorkloadKind::Runc { .. } = w.record.kind {
            return Err(crate::criu::CriuError::Unsupported { feature: "post-copy of runc containers", hint: "use checkpoint".into() }.into());
        }
        let mut opts = CheckpointOptions::new(image_dir);
        opts.page_server = Some(PageServer::Lazy(address));
        let lazy = criu.dump_lazy(&dump_options(&w, &opts), address)?;
        Ok((self.after_dump(criu, w, &opts, None)?, lazy))
    }

    fn after_dump(&self, criu: &Criu, mut w: Workload, opts: &CheckpointOptions, stats: Option<DumpStats>) -> Result<Checkpoint, WorkloadError> {
        let meta = CheckpointMeta {
            format: CHECKPOINT_FORMAT,
            workload: w.record.clone(),
            criu_version: criu.version_string(),
            leave_running: opts.leave_running,
            remote_pages: opts.page_server.is_some(),
            created_unix_ms: now_ms(),
        };
        write_meta(&opts.image_dir, &meta)?;
        if !opts.leave_running {
            w.record.pid = None;
            self.save(&w.record)?;
        }
        Ok(Checkpoint { dir: opts.image_dir.clone(), meta, stats })
    }

    /// Restores a checkpoint as workload `spec.name` in namespace `spec.netns`: service
    /// interface moved in, network lock installed, address up, then CRIU. On failure the
    /// interface goes back where it came from and everything created here is removed; the
    /// images are untouched.
    #[tracing::instrument(skip_all, fields(workload = %spec.name, netns = %spec.netns, dir = %cp.dir.display()))]
    pub fn restore(&self, criu: &Criu, cp: &Checkpoint, spec: &RestoreSpec) -> Result<(Workload, RestoreOutcome), WorkloadError> {
        require_root()?;
        validate_name(&spec.name)?;
        if let Ok(existing) = self.get(&spec.name) {
            // Only the checkpointed workload itself may be restored over its own record.
            if existing.is_running() || spec.name != cp.meta.workload.name {
                return Err(WorkloadError::NameTaken(spec.name.clone()));
            }
        }
        let src = &cp.meta.workload;
        if let WorkloadKind::Runc { .. } = src.kind {
            return super::runc::restore(self, cp, spec);
        }
        let rules = netlock::load(&cp.dir).map_err(crate::criu::CriuError::from)?;
        let mut undo = Undo::default();
        if !netns::exists(&spec.netns) {
            netns::create(&spec.netns)?;
            undo.netns = Some(spec.netns.clone());
        }
        let target = netns::path(&spec.netns);
        let moved_from = match (&spec.service_net, src.address) {
            (ServiceNet::MoveFrom(from), Some(_)) if from != &spec.netns => {
                netns::move_service_if(from, &spec.netns)?;
                Some(from.clone())
            }
            _ => None,
        };
        let result = (|| {
            // A namespace the dump ran in (a rollback) still holds the dump's lock rules;
            // CRIU's restore deletes one copy, so a second would keep dropping the connections.
            for _ in 0..4 {
                if netlock::remove(&target, &rules).map_err(crate::criu::CriuError::from)? == 0 {
                    break;
                }
            }
            netlock::install(&target, &rules).map_err(crate::criu::CriuError::from)?;
            if let Some(addr) = src.address {
                netns::bring_up_service(&spec.netns, addr)?;
            }
            let cg_rel = self.cgroup_of(&spec.name);
            let cg = Cgroup::create(&cg_rel)?;
            let mut opts = RestoreOptions::new(&cp.dir);
            opts.work_dir = Some(self.restore_work_dir(&spec.name));
            opts.netns = Some(target.clone());
            opts.root = src.rootfs.clone().unwrap_or_else(|| PathBuf::from("/"));
            opts.cgroup_root = Some(format!("/{cg_rel}"));
            opts.timeout = spec.timeout;
            opts.lazy_pages = cp.meta.remote_pages;
            if src.rootfs.is_some() {
                opts.external.push(format!("mnt[{DEV_NULL_EXT}]:/dev/null"));
            }
            if let Some(vol) = &src.volume {
                if src.volume_on_device {
                    // The device-backed volume was attached and mounted here by the resource
                    // provider (see crate::providers::local); CRIU binds it back into place.
                    let staged = self.volume_mount_dir(&src.name);
                    if !is_mount_point(&staged) {
                        return Err(WorkloadError::MissingPath { what: "volume (not mounted on this node; the resource provider attaches it)", path: staged });
                    }
                    opts.external.push(format!("mnt[{VOLUME_EXT}]:{}", staged.display()));
                } else if src.rootfs.is_some() {
                    opts.external.push(format!("mnt[{VOLUME_EXT}]:{}", vol.display()));
                }
            }
            match criu.restore(&opts) {
                Ok(out) => Ok((cg_rel, out)),
                Err(e) => {
                    let _ = cg.destroy(Duration::from_secs(2));
                    Err(WorkloadError::from(e))
                }
            }
        })();
        let (cg_rel, outcome) = match result {
            Ok(v) => v,
            Err(e) => {
                // The address leaves this namespace before the lock does: in between, the
                // kernel would answer the clients' retransmits with resets (no socket here).
                let moved_back = moved_from.is_some_and(|from| match netns::move_service_if(&spec.netns, &from) {
                    Ok(()) => true,
                    Err(back) => {
                        tracing::error!(error = %back, "could not move the service interface back");
                        false
                    }
                });
                if !moved_back && src.address.is_some() {
                    if let Err(down) = netns::take_down_service(&spec.netns) {
                        tracing::warn!(error = %down, "could not take the service interface down");
                    }
                }
                let _ = netlock::remove(&target, &rules);
                return Err(e);
            }
        };
        undo.disarm();
        let rec = WorkloadRecord {
            name: spec.name.clone(),
            pid: Some(outcome.pid),
            netns: spec.netns.clone(),
            cgroup: cg_rel,
            started_unix_ms: now_ms(),
            ..src.clone()
        };
        self.save(&rec)?;
        if spec.name == src.name && src.netns != spec.netns {
            // Same workload, new home: the old namespace only holds the stale network lock.
            let _ = netns::delete(&src.netns);
        }
        tracing::info!(pid = outcome.pid, elapsed_ms = outcome.elapsed.as_millis() as u64, "workload restored");
        Ok((Workload { record: rec }, outcome))
    }

    /// Host directory where this node mounts a device-backed volume of workload `name` before
    /// restoring it (CRIU binds it into the workload's mount namespace from here).
    pub fn volume_mount_dir(&self, name: &str) -> PathBuf {
        self.volumes_dir().join(name)
    }

    /// Where this node stages every device-backed volume (one directory per workload).
    pub fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }

    /// Where CRIU's restore log and pidfile (and a lazy-pages daemon's socket) go for `name`.
    pub fn restore_work_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("criu").join(name)
    }

    /// Restores `target` as `spec`; if that fails, restores `source` (the same workload's
    /// intact images on this host) back into its own namespace and reports
    /// [`WorkloadError::RolledBack`].
    pub fn restore_or_roll_back(
        &self,
        criu: &Criu,
        target: &Checkpoint,
        spec: &RestoreSpec,
        source: &Checkpoint,
    ) -> Result<(Workload, RestoreOutcome), WorkloadError> {
        let cause = match self.restore(criu, target, spec) {
            Ok(done) => return Ok(done),
            Err(e) => e,
        };
        tracing::warn!(error = %cause, "restore failed; rolling back to the source");
        let src = &source.meta.workload;
        let back = RestoreSpec { name: src.name.clone(), netns: src.netns.clone(), service_net: ServiceNet::Present, timeout: spec.timeout };
        match self.restore(criu, source, &back) {
            Ok((w, _)) => Err(WorkloadError::RolledBack { pid: w.pid().unwrap_or(0), cause: Box::new(cause) }),
            Err(rollback) => Err(WorkloadError::RollbackFailed { cause: Box::new(cause), rollback: Box::new(rollback) }),
        }
    }

    /// Forgets a workload that was moved away: removes its record, cgroup and namespace
    /// (with its stale network lock) once its restored copy runs elsewhere.
    pub fn retire(&self, name: &str) -> Result<(), WorkloadError> {
        let w = self.get(name)?;
        if w.is_running() {
            return Err(WorkloadError::NameTaken(name.into()));
        }
        // Our copy is gone, so anything in the cgroup is the restored copy of another node on
        // this same machine (cgroup paths are per workload name, not per node): leave it be.
        let cg = w.cgroup();
        if cg.pids().is_empty() {
            cg.destroy(Duration::from_secs(2))?;
        }
        netns::delete(&w.record.netns)?;
        record::remove(&self.state_dir, name)?;
        Ok(())
    }
}

fn dump_options(w: &Workload, opts: &CheckpointOptions) -> DumpOptions {
    let mut dump = DumpOptions::new(w.pid().unwrap_or(0), &opts.image_dir);
    dump.leave_running = opts.leave_running;
    dump.netns = Some(w.netns_path());
    dump.freeze_cgroup = w.cgroup().freezer();
    dump.page_server = opts.page_server;
    dump.timeout = opts.timeout;
    if w.record.rootfs.is_some() {
        dump.external.push(format!("mnt[/dev/null]:{DEV_NULL_EXT}"));
    }
    if w.record.rootfs.is_some() || w.record.volume_on_device {
        if let Some(inside) = w.volume_inside() {
            dump.external.push(format!("mnt[{}]:{VOLUME_EXT}", inside.display()));
        }
    }
    dump
}



