//! What the target host does after the cloud attached a resource to it: find the block device,
//! mount it (in the workload's mount namespace), and route the moved address. Each is idempotent.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tracing::{debug, info};

use super::{MountSpec, ProviderError, RouteSpec};

/// Where an EBS volume attached as `device` may appear: the name itself, its Xen `xvd` alias, and
/// on Nitro instances the NVMe by-id link carrying the volume id (`vol-0ab` -> `vol0ab`).
pub fn ec2_device_candidates(volume: &str, device: &str) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(device)];
    if let Some(letter) = device.strip_prefix("/dev/sd") {
        out.push(PathBuf::from(format!("/dev/xvd{letter}")));
    }
    out.push(PathBuf::from(format!("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}", volume.replace('-', ""))));
    out
}

/// Waits until one of `candidates` is a block device; returns its resolved path.
pub async fn wait_for_block_device(candidates: &[PathBuf], timeout: Duration) -> Result<PathBuf, ProviderError> {
    let started = Instant::now();
    loop {
        for path in candidates {
            // metadata() follows symlinks, so the by-id link counts once its target exists.
            if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device()) {
                let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                info!(device = %resolved.display(), waited_ms = started.elapsed().as_millis() as u64, "block device present");
                return Ok(resolved);
            }
        }
        if started.elapsed() >= timeout {
            let names: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            return Err(ProviderError::Host {
                op: "wait for block device",
                detail: format!("none of {} appeared within {timeout:?}", names.join(", ")),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Mounts `device` at the spec's mount point (inside the workload's mount namespace when given).
/// Mounting what is already mounted there is a no-op.
pub async fn mount(device: &Path, spec: &MountSpec) -> Result<(), ProviderError> {
    let mountinfo_path = match spec.namespace_pid {
        Some(pid) => format!("/proc/{pid}/mountinfo"),
        None => "/proc/self/mountinfo".into(),
    };
    let mountinfo = std::fs::read_to_string(&mountinfo_path)
        .map_err(|e| ProviderError::Host { op: "mount", detail: format!("reading {mountinfo_path}: {e}") })?;
    let point = spec.mount_point.to_string_lossy().into_owned();
    if mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(point.as_str())) {
        debug!(mount_point = %point, "already mounted");
        return Ok(());
    }
    let dev = device.to_string_lossy().into_owned();
    let ns = spec.namespace_pid.map(|pid| format!("--mount=/proc/{pid}/ns/mnt"));
    let in_ns = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        if let Some(ns) = &ns {
            v.extend(["nsenter".to_string(), ns.clone(), "--".to_string()]);
        }
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    run("mount", &in_ns(&["mkdir", "-p", point.as_str()])).await?;
    run("mount", &in_ns(&["mount", "-t", spec.fstype.as_str(), dev.as_str(), point.as_str()])).await?;
    info!(device = %dev, mount_point = %point, namespace_pid = ?spec.namespace_pid, "volume mounted");
    Ok(())
}

/// Puts the address on the interface and policy-routes traffic from it through that interface
/// (its own table), so replies leave by the interface the address belongs to.
pub async fn configure_route(route: &RouteSpec) -> Result<(), ProviderError> {
    let ip = |args: &[&str]| -> Vec<String> {
        let mut v = vec!["ip".to_string()];
        if let Some(ns) = &route.netns {
            v.extend(["-n".to_string(), ns.clone()]);
        }
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    let table = route.table.to_string();
    let bare_ip = route.address.split('/').next().unwrap_or(&route.address).to_string();
    run("route", &ip(&["link", "set", route.interface.as_str(), "up"])).await?;
    run("route", &ip(&["addr", "replace", route.address.as_str(), "dev", route.interface.as_str()])).await?;
    if let Some(gw) = &route.gateway {
        run(
            "route",
            &ip(&[
                "route",
                "replace",
                "default",
                "via",
                gw.as_str(),
                "dev",
                route.interface.as_str(),
                "table",
                table.as_str(),
            ]),
        )
        .await?;
    }
    // `ip rule add` is not idempotent: drop any copies first (fails once none is left).
    for _ in 0..16 {
        if run("route", &ip(&["rule", "del", "from", bare_ip.as_str(), "table", table.as_str()])).await.is_err() {
            break;
        }
    }
    run("route", &ip(&["rule", "add", "from", bare_ip.as_str(), "table", table.as_str()])).await?;
    info!(interface = %route.interface, address = %route.address, table = route.table, netns = ?route.netns, "address routed");
    Ok(())
}

async fn run(op: &'static str, argv: &[String]) -> Result<String, ProviderError> {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .await
        .map_err(|e| ProviderError::Host { op, detail: format!("running {}: {e}", argv[0]) })?;
    if !out.status.success() {
        return Err(ProviderError::Host {
            op,
            detail: format!(
                "`{}` failed ({}): {}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
