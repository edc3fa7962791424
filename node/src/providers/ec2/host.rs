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
    ec2_device_candidates_in(Path::new("/dev"), volume, device)
}

/// [`ec2_device_candidates`] under device directory `dev` instead of `/dev`: the attach name
/// (`/dev/sdf` -> `DEV/sdf`), its Xen alias (`DEV/xvdf`), and the Nitro NVMe link udev makes from
/// the NVMe serial, which is the volume id without its dash
/// (`DEV/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0ab`). Tests point `dev` at a directory
/// of their own where a symlink to a loop device plays the EBS disk.
pub fn ec2_device_candidates_in(dev: &Path, volume: &str, device: &str) -> Vec<PathBuf> {
    let name = device.strip_prefix("/dev/").unwrap_or(device);
    let mut out = vec![dev.join(name)];
    if let Some(letter) = name.strip_prefix("sd") {
        out.push(dev.join(format!("xvd{letter}")));
    }
    out.push(dev.join("disk/by-id").join(format!("nvme-Amazon_Elastic_Block_Store_{}", volume.replace('-', ""))));
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

/// `ip` with `-n NETNS` when the route is configured inside a namespace.
fn ip_argv(netns: Option<&str>, args: &[&str]) -> Vec<String> {
    let mut v = vec!["ip".to_string()];
    if let Some(ns) = netns {
        v.extend(["-n".to_string(), ns.to_string()]);
    }
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// Puts the address on the interface and policy-routes traffic from it through that interface
/// (its own table), so replies leave by the interface the address belongs to.
pub async fn configure_route(route: &RouteSpec) -> Result<(), ProviderError> {
    let argv = ip_argv(route.netns.as_deref(), &["addr", "replace", route.address.as_str(), "dev", route.interface.as_str()]);
    run("route", &argv).await?;
    configure_policy_routing(route).await
}

/// What the target does before a restore: brings the interface up and policy-routes the
/// address through it (its subnet on-link and the subnet's gateway as default, in its own
/// table), without putting the address on it yet: the restore does that after CRIU's network
/// lock is in, so a client's retransmission never meets an address without its socket (a RST).
pub async fn configure_policy_routing(route: &RouteSpec) -> Result<(), ProviderError> {
    let ip = |args: &[&str]| ip_argv(route.netns.as_deref(), args);
    let table = route.table.to_string();
    let bare_ip = route.address.split('/').next().unwrap_or(&route.address).to_string();
    let dev = route.interface.as_str();
    run("route", &ip(&["link", "set", dev, "up"])).await?;
    if let Some(subnet) = subnet_of(&route.address) {
        run("route", &ip(&["route", "replace", subnet.as_str(), "dev", dev, "table", table.as_str()])).await?;
    }
    if let Some(gw) = &route.gateway {
        // The gateway resolves through the subnet route just put in the same table (the
        // interface has no address yet, so nothing else routes to it; `onlink` is refused then).
        let args = ["route", "replace", "default", "via", gw.as_str(), "dev", dev, "table", table.as_str()];
        run("route", &ip(&args)).await?;
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

/// `10.0.1.25/24` -> `10.0.1.0/24` (IPv4; `None` for anything else).
fn subnet_of(address: &str) -> Option<String> {
    let (ip, prefix) = address.split_once('/')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    Some(format!("{}/{prefix}", std::net::Ipv4Addr::from(u32::from(ip) & mask)))
}

/// Finds the interface with MAC address `mac` (an ENI once the hypervisor plugged it in) and
/// makes it the workload's service interface `eth0` in namespace `netns`: already there (a
/// repeated step, or a lab whose data path moved it), or on the host, from where it is moved
/// in and renamed. Waits up to `timeout` for it to appear. Returns its name in `netns`.
pub async fn place_interface(mac: &str, netns: &str, timeout: Duration) -> Result<String, ProviderError> {
    let mac = mac.to_ascii_lowercase();
    let started = Instant::now();
    loop {
        if std::path::Path::new(&format!("/run/netns/{netns}")).exists() {
            if let Some(name) = link_with_mac(Some(netns), &mac).await? {
                return Ok(name);
            }
        }
        if let Some(name) = link_with_mac(None, &mac).await? {
            if !std::path::Path::new(&format!("/run/netns/{netns}")).exists() {
                run("place interface", &ip_argv(None, &["netns", "add", netns])).await?;
            }
            let service_if = crate::sys::netns::SERVICE_IF;
            run("place interface", &ip_argv(None, &["link", "set", name.as_str(), "down"])).await?;
            run("place interface", &ip_argv(None, &["link", "set", name.as_str(), "netns", netns])).await?;
            run("place interface", &ip_argv(Some(netns), &["link", "set", name.as_str(), "name", service_if])).await?;
            info!(interface = %name, %mac, netns, "interface moved into the workload's namespace");
            return Ok(service_if.to_string());
        }
        if started.elapsed() >= timeout {
            return Err(ProviderError::Host {
                op: "find the network interface",
                detail: format!("no interface with MAC {mac} appeared on this host or in namespace {netns} within {timeout:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The interface with MAC `mac` in `netns` (or the host's namespace), from `ip -o link`.
async fn link_with_mac(netns: Option<&str>, mac: &str) -> Result<Option<String>, ProviderError> {
    let out = run("find the network interface", &ip_argv(netns, &["-o", "link", "show"])).await?;
    // `2: eth0@if7: <BROADCAST,...> mtu 1500 ... link/ether 0a:1b:... brd ff:...`
    Ok(out.lines().find(|l| l.contains(&format!("link/ether {mac} "))).and_then(|l| {
        let name = l.split(": ").nth(1)?;
        Some(name.split('@').next().unwrap_or(name).to_string())
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_candidates_follow_the_injected_directory() {
        let c = ec2_device_candidates_in(Path::new("/tmp/devs"), "vol-0ab12", "/dev/sdf");
        let want = ["/tmp/devs/sdf", "/tmp/devs/xvdf", "/tmp/devs/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0ab12"];
        assert_eq!(c, want.iter().map(PathBuf::from).collect::<Vec<_>>());
        assert_eq!(ec2_device_candidates("vol-1", "/dev/xvdg")[0], PathBuf::from("/dev/xvdg"));
    }

    #[test]
    fn subnet_of_masks_the_host_bits() {
        assert_eq!(subnet_of("10.77.5.101/24").as_deref(), Some("10.77.5.0/24"));
        assert_eq!(subnet_of("172.31.37.9/20").as_deref(), Some("172.31.32.0/20"));
        assert_eq!(subnet_of("10.0.0.1"), None);
        assert_eq!(subnet_of("fe80::1/64"), None);
    }
}
