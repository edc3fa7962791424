//! Accounting for workloads after a reboot (or a crash of the whole host).
//!
//! A workload record with a PID says "running here". When the daemon starts and that process
//! is gone, the workload did not stop by anyone's request: the host rebooted (or the tree was
//! killed). Such a workload is never silently forgotten. It is either
//! - **restored** from its reboot checkpoint (`STATE_DIR/checkpoints/NAME`, made before the
//!   reboot with `hotspot-node workload checkpoint NAME --leave-running --images ...`), when
//!   that checkpoint is usable: readable, of this workload, made after the workload started,
//!   pages local; its network namespace and service veth are re-created first (a reboot
//!   empties `/run/netns`), or
//! - **reported** as lost: a versioned JSON report in `STATE_DIR/lost/NAME.json`, a warning in
//!   the log with the workload's fields, and an entry in `hotspot-node status` until the
//!   workload is restored or stopped (`hotspot-node workload stop NAME` removes it).
//!
//! Workloads whose record has no PID (checkpointed, being migrated) are the migration
//! journal's business (`daemon::migration` recovers those) and are left alone here.

use crate::sys::clock::now_ms;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, info_span, warn};

use super::api::LostWorkload;
use super::config::Config;
use crate::criu::Criu;
use crate::sys::netns;
use crate::workload::{Checkpoint, RestoreSpec, ServiceNet, Workload, WorkloadRecord, Workloads};

/// Format of a lost-workload report; bump when fields change meaning.
pub const LOST_FORMAT: u32 = 1;
/// How long one restore may take before it counts as failed.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);


/// Where the checkpoint that a reboot restores workload `name` from lives.
pub fn checkpoint_dir(workloads: &Workloads, name: &str) -> PathBuf {
    workloads.state_dir().join("checkpoints").join(name)
}

fn lost_dir(workloads: &Workloads) -> PathBuf {
    workloads.state_dir().join("lost")
}


/// Wall-clock time of the current boot (`btime` in /proc/stat), in ms since the epoch.
fn boot_time_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(secs * 1000)
}

/// Accounts for every workload recorded as running whose process is gone: restores it from
/// its reboot checkpoint or reports it lost. Called once at daemon start, before the node
/// advertises its workloads. Never fails: whatever cannot be done is reported.
pub async fn account(config: &Config, node: hotspot_protocol::NodeId) {
    // Same cgroup parent as the migration subsystem's `Workloads` (daemon::migration::start).
    let workloads = Workloads::new(&config.workloads_dir).with_cgroup_parent(format!("hotspot-{}", &node.to_string()[..8]));
    let _ = tokio::task::spawn_blocking(move || account_blocking(&workloads)).await;
}

/// [`account`] without the runtime: for callers already on a blocking thread.
pub fn account_blocking(workloads: &Workloads) -> Vec<LostWorkload> {
    let span = info_span!("reboot_accounting", state_dir = %workloads.state_dir().display());
    let _enter = span.enter();
    let gone: Vec<Workload> = workloads
        .list()
        .into_iter()
        .filter_map(|r| r.map_err(|e| warn!(error = %e, "unreadable workload record; not accounted for")).ok())
        .filter(|w| w.pid().is_some() && !w.is_running())
        .collect();
    forget_stale_reports(workloads);
    if gone.is_empty() {
        return Vec::new();
    }
    let boot = boot_time_ms();
    let criu = Criu::detect().map_err(|e| e.to_string());
    let mut lost = Vec::new();
    for w in gone {
        let at_reboot = boot.is_some_and(|b| w.record.started_unix_ms < b) || !netns::exists(w.netns());
        let _w = info_span!("workload", workload = %w.name(), pid = ?w.pid(), at_reboot).entered();
        let outcome = match &criu {
            Ok(criu) => restore(workloads, criu, &w),
            Err(e) => Err(format!("CRIU unusable on this host: {e}")),
        };
        match outcome {
            Ok(pid) => {
                info!(workload = %w.name(), new_pid = pid, "workload restored from its reboot checkpoint");
                let _ = std::fs::remove_file(lost_dir(workloads).join(format!("{}.json", w.name())));
            }
            Err(reason) => {
                warn!(workload = %w.name(), pid = ?w.pid(), at_reboot, %reason, "workload lost at reboot: reported, not restored");
                let report = report_lost(workloads, &w.record, at_reboot, reason);
                lost.push(report);
            }
        }
    }
    lost
}

/// Restores `w` from its reboot checkpoint into a fresh network namespace; returns the new PID.
fn restore(workloads: &Workloads, criu: &Criu, w: &Workload) -> Result<i32, String> {
    let dir = checkpoint_dir(workloads, w.name());
    if !dir.exists() {
        return Err(format!("no reboot checkpoint in {}", dir.display()));
    }
    let cp = Checkpoint::open(&dir, criu).map_err(|e| format!("checkpoint unusable: {e}"))?;
    let meta = &cp.meta;
    if meta.workload.name != w.name() {
        return Err(format!("checkpoint in {} is of workload {}", dir.display(), meta.workload.name));
    }
    if meta.remote_pages {
        return Err("checkpoint's pages were on a page server that did not survive the reboot".into());
    }
    if meta.created_unix_ms < w.record.started_unix_ms {
        return Err(format!("checkpoint in {} predates this run of the workload (made before it started)", dir.display()));
    }
    let fresh_netns = !netns::exists(w.netns());
    if fresh_netns {
        recreate_network(&w.record).map_err(|e| format!("re-creating its network: {e}"))?;
    }
    let spec = RestoreSpec { name: w.name().into(), netns: w.netns().into(), service_net: ServiceNet::Present, timeout: RESTORE_TIMEOUT };
    match workloads.restore(criu, &cp, &spec) {
        Ok((restored, _)) => Ok(restored.pid().unwrap_or(0)),
        Err(e) => {
            if fresh_netns {
                let _ = netns::delete(w.netns());
            }
            Err(format!("restore failed: {e}"))
        }
    }
}

/// The namespace and service veth a reboot wiped, as `Workloads::start` made them: the uplink
/// end in its namespace (with a host route to the service address when that is the root
/// namespace), `eth0` in the workload's namespace; the restore brings the address up.
fn recreate_network(rec: &WorkloadRecord) -> Result<(), String> {
    let uplink_ns = rec.uplink.as_ref().and_then(|u| u.netns.as_deref());
    if let Some(ns) = uplink_ns.filter(|ns| !netns::exists(ns)) {
        return Err(format!("its uplink namespace {ns} is gone"));
    }
    netns::create(&rec.netns).map_err(|e| e.to_string())?;
    let (Some(uplink), Some(addr)) = (&rec.uplink, rec.address) else { return Ok(()) };
    let result = netns::create_veth(&rec.netns, &uplink.interface, uplink_ns).and_then(|()| match uplink_ns {
        None => {
            let host = format!("{}/{}", addr.ip, if addr.ip.is_ipv4() { 32 } else { 128 });
            netns::ip(&["route", "replace", &host, "dev", &uplink.interface]).map(drop)
        }
        // The uplink end's own address lived in that namespace's config, which we do not own.
        Some(_) => Ok(()),
    });
    result.map_err(|e| {
        let _ = netns::delete(&rec.netns);
        e.to_string()
    })
}

fn report_lost(workloads: &Workloads, rec: &WorkloadRecord, at_reboot: bool, reason: String) -> LostWorkload {
    let path = lost_dir(workloads).join(format!("{}.json", rec.name));
    // Keep the first detection time across daemon restarts.
    let detected = read_report(&path).map_or_else(now_ms, |old| old.detected_unix_ms);
    let report = LostWorkload {
        format: LOST_FORMAT,
        name: rec.name.clone(),
        pid: rec.pid,
        started_unix_ms: rec.started_unix_ms,
        detected_unix_ms: detected,
        at_reboot,
        reason,
    };
    let write = std::fs::create_dir_all(lost_dir(workloads)).and_then(|()| {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&report).expect("reports serialize"))?;
        std::fs::rename(&tmp, &path)
    });
    if let Err(e) = write {
        warn!(workload = %rec.name, error = %e, path = %path.display(), "cannot persist the lost-workload report (still in this status)");
    }
    report
}

fn read_report(path: &Path) -> Option<LostWorkload> {
    let r: LostWorkload = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (r.format <= LOST_FORMAT).then_some(r)
}

/// Reports of workloads that have since been restored by hand or stopped are dropped.
fn forget_stale_reports(workloads: &Workloads) {
    let Ok(entries) = std::fs::read_dir(lost_dir(workloads)) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let Some(name) = path.file_stem().and_then(|n| n.to_str()) else { continue };
        if path.extension().is_some_and(|x| x == "json") && workloads.get(name).map_or(true, |w| w.is_running()) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The lost workloads to show in `hotspot-node status`: reported and still neither restored
/// nor stopped.
pub fn reported(workloads: &Workloads) -> Vec<LostWorkload> {
    let Ok(entries) = std::fs::read_dir(lost_dir(workloads)) else { return Vec::new() };
    let mut out: Vec<LostWorkload> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| read_report(&e.path()))
        .filter(|r| workloads.get(&r.name).is_ok_and(|w| !w.is_running()))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{record, WorkloadKind};

    fn gone(name: &str, started_unix_ms: u64) -> WorkloadRecord {
        WorkloadRecord {
            format: record::RECORD_FORMAT,
            name: name.into(),
            kind: WorkloadKind::Native,
            // No such process: PIDs are below pid_max (at most 2^22).
            pid: Some(i32::MAX),
            netns: format!("hs-reboot-unit-{}", std::process::id()),
            cgroup: format!("hotspot-reboot-unit/{name}"),
            address: None,
            uplink: None,
            volume: None,
            volume_on_device: false,
            volume_handle: None,
            rootfs: None,
            command: vec!["sleep".into(), "1".into()],
            started_unix_ms,
        }
    }

    #[test]
    fn a_gone_workload_without_a_checkpoint_is_reported_and_kept_reported() {
        let dir = tempfile::tempdir().unwrap();
        let wls = Workloads::new(dir.path());
        record::store(dir.path(), &gone("web", 1)).unwrap();
        let mut checkpointed = gone("moving", 1);
        checkpointed.pid = None;
        record::store(dir.path(), &checkpointed).unwrap();

        let lost = account_blocking(&wls);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].name, "web");
        assert!(lost[0].at_reboot, "started at 1 ms after the epoch: before this boot");
        assert!(lost[0].reason.contains("no reboot checkpoint") || lost[0].reason.contains("CRIU"), "{}", lost[0].reason);
        assert_eq!(reported(&wls), lost, "status shows what was reported");

        // A second start reports it again, keeping the first detection time.
        let again = account_blocking(&wls);
        assert_eq!(again[0].detected_unix_ms, lost[0].detected_unix_ms);

        // Stopping it (the record goes) drops the report.
        record::remove(dir.path(), "web").unwrap();
        assert!(reported(&wls).is_empty());
        account_blocking(&wls);
        assert!(!lost_dir(&wls).join("web.json").exists());
    }

    #[test]
    fn an_unusable_checkpoint_is_reported_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let wls = Workloads::new(dir.path());
        record::store(dir.path(), &gone("db", 1)).unwrap();
        let cp = checkpoint_dir(&wls, "db");
        std::fs::create_dir_all(&cp).unwrap();
        std::fs::write(cp.join(crate::workload::CHECKPOINT_META), b"{ not json").unwrap();
        let lost = account_blocking(&wls);
        assert_eq!(lost.len(), 1);
        // Without CRIU on this machine the reason is CRIU itself; with it, the checkpoint.
        assert!(lost[0].reason.contains("checkpoint unusable") || lost[0].reason.contains("CRIU"), "{}", lost[0].reason);
    }
}
