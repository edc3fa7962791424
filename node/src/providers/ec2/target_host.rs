//! The host half of an EC2 move, on the node whose instance the workload's volume and ENI are
//! attached to: right before the restore it waits for the volume's block device, mounts it where
//! the restore binds it into the workload's mount namespace, and routes the ENI's address in the
//! workload's network namespace. A source lets go of its mount before the detach
//! ([`CloudMoves::release_host_volume`]). Every step is idempotent (a repeated restore or a
//! rollback runs it again) and reads what is attached from the cloud, never from the request.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use aws_sdk_ec2::types::{AttachmentStatus, VolumeAttachmentState};
use tracing::info;

use super::call::call;
use super::cloud_moves::CloudMoves;
use crate::providers::ec2::{host, MountSpec, Provider, ProviderError, RouteSpec, VolumePlan};

/// The workload's EBS volume as this instance holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedVolume {
    pub volume: String,
    pub device: String,
    pub zone: String,
}

/// The workload's ENI as this instance holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedInterface {
    pub interface: String,
    pub mac: String,
    /// Primary private address with the subnet's prefix, e.g. `10.0.1.25/24`.
    pub address: String,
    /// The subnet's router: its first address, as on every VPC subnet.
    pub gateway: Ipv4Addr,
}

/// Where the host steps put things for one workload.
#[derive(Debug, Clone, Copy)]
pub struct HostSetup<'a> {
    pub workload: &'a str,
    /// The network namespace the workload is restored into.
    pub netns: &'a str,
    /// Host directory the restore binds the volume from (`Workloads::volume_mount_dir`).
    pub mount_dir: &'a Path,
}

impl CloudMoves {
    /// Zone of the workload's EBS volume (`None`: it has none). A volume attaches only to
    /// instances of its zone, so the election must not pick a target elsewhere.
    pub async fn volume_zone(&self, workload: &str) -> Result<Option<(String, String)>, ProviderError> {
        let vols = self.workload_volumes(workload).await?;
        Ok(vols.first().map(|v| {
            (v.volume_id().unwrap_or_default().to_string(), v.availability_zone().unwrap_or_default().to_string())
        }))
    }

    async fn workload_volumes(&self, workload: &str) -> Result<Vec<aws_sdk_ec2::types::Volume>, ProviderError> {
        let p = &self.provider;
        let [by_name, by_cluster] = self.workload_filters(workload);
        let out = call(&p.stats, "DescribeVolumes", p.client.describe_volumes().filters(by_name).filters(by_cluster).send()).await?;
        Ok(out.volumes().to_vec())
    }

    /// The workload's volume when it is attached to this instance; an error when it has one
    /// attached elsewhere (or nowhere): the restore must not run without it.
    pub async fn attached_volume(&self, workload: &str) -> Result<Option<AttachedVolume>, ProviderError> {
        let vols = self.workload_volumes(workload).await?;
        let Some(v) = vols.first() else { return Ok(None) };
        let id = v.volume_id().unwrap_or_default().to_string();
        let mine = v
            .attachments()
            .iter()
            .find(|a| a.instance_id() == Some(self.instance_id.as_str()) && a.state() == Some(&VolumeAttachmentState::Attached));
        match mine {
            Some(a) => Ok(Some(AttachedVolume {
                volume: id,
                device: a.device().unwrap_or("/dev/sdf").to_string(),
                zone: v.availability_zone().unwrap_or_default().to_string(),
            })),
            None => Err(not_here("volume", &id, &self.instance_id, v.attachments().iter().filter_map(|a| a.instance_id()))),
        }
    }

    /// The workload's ENI when it is attached to this instance (with its subnet's prefix and
    /// router); an error when it has one attached elsewhere or nowhere.
    pub async fn attached_interface(&self, workload: &str) -> Result<Option<AttachedInterface>, ProviderError> {
        let p = &self.provider;
        let [by_name, by_cluster] = self.workload_filters(workload);
        let req = p.client.describe_network_interfaces().filters(by_name).filters(by_cluster);
        let out = call(&p.stats, "DescribeNetworkInterfaces", req.send()).await?;
        let Some(e) = out.network_interfaces().first() else { return Ok(None) };
        let id = e.network_interface_id().unwrap_or_default().to_string();
        let att = e.attachment();
        let here = att.is_some_and(|a| a.instance_id() == Some(self.instance_id.as_str()) && a.status() == Some(&AttachmentStatus::Attached));
        if !here {
            return Err(not_here("network interface", &id, &self.instance_id, att.and_then(|a| a.instance_id()).into_iter()));
        }
        let malformed = |what: &str| ProviderError::Malformed { op: "DescribeNetworkInterfaces", detail: format!("{id} has no {what}") };
        let mac = e.mac_address().ok_or_else(|| malformed("MAC address"))?.to_string();
        let ip: Ipv4Addr = e.private_ip_address().and_then(|a| a.parse().ok()).ok_or_else(|| malformed("IPv4 private address"))?;
        let subnet = e.subnet_id().ok_or_else(|| malformed("subnet"))?;
        let out = call(&p.stats, "DescribeSubnets", p.client.describe_subnets().subnet_ids(subnet).send()).await?;
        let cidr = out.subnets().first().and_then(|s| s.cidr_block()).ok_or_else(|| malformed("subnet CIDR"))?;
        let (network, prefix) = parse_cidr(cidr).ok_or_else(|| ProviderError::Malformed { op: "DescribeSubnets", detail: format!("subnet {subnet} has CIDR {cidr:?}") })?;
        let gateway = Ipv4Addr::from(u32::from(network) + 1);
        Ok(Some(AttachedInterface { interface: id, mac, address: format!("{ip}/{prefix}"), gateway }))
    }

    /// Before a restore on this node: the volume's block device mounted at `mount_dir` and the
    /// ENI in the workload's namespace as `eth0`, policy-routed. Idempotent.
    pub async fn prepare_host(&self, setup: &HostSetup<'_>) -> Result<(), ProviderError> {
        let opts = &self.provider.options;
        if let Some(v) = self.attached_volume(setup.workload).await? {
            let plan = VolumePlan { volume: v.volume.clone(), source_host: String::new(), target_host: self.instance_id.clone(), device: v.device };
            let mount = MountSpec { mount_point: setup.mount_dir.to_path_buf(), fstype: opts.volume_fstype.clone(), namespace_pid: None };
            let device = self.provider.prepare_volume_on_host(&plan, &mount).await?;
            info!(workload = setup.workload, volume = %v.volume, device = %device.display(), mount_dir = %setup.mount_dir.display(), "EBS volume mounted for the restore");
        }
        if let Some(e) = self.attached_interface(setup.workload).await? {
            let timeout = Duration::from_millis(opts.device_timeout_ms);
            let interface = host::place_interface(&e.mac, setup.netns, timeout).await.map_err(|err| ProviderError::Host {
                op: "find the ENI's interface",
                detail: format!("{} ({}) is attached to this instance, but {err}", e.interface, e.mac),
            })?;
            let route = RouteSpec {
                interface,
                address: e.address.clone(),
                gateway: Some(e.gateway.to_string()),
                table: opts.route_table,
                netns: Some(setup.netns.to_string()),
            };
            self.provider.prepare_address_on_host(&route).await?;
            info!(workload = setup.workload, eni = %e.interface, address = %e.address, netns = setup.netns, "ENI routed for the restore");
        }
        Ok(())
    }

    /// On the source, before the detach: unmounts the volume's staging mount here (left by an
    /// earlier restore on this node; the frozen workload's own mount went with it). EBS would
    /// otherwise hang in `detaching` until forced, with the file system's last writes lost.
    pub async fn release_host_volume(&self, mount_dir: &Path) -> Result<(), ProviderError> {
        let dir = mount_dir.to_path_buf();
        let unmounted = tokio::task::spawn_blocking(move || crate::sys::loopdev::unmount(&dir)).await;
        match unmounted {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ProviderError::Host { op: "unmount the volume before the detach", detail: e.to_string() }),
            Err(e) => Err(ProviderError::Host { op: "unmount the volume before the detach", detail: e.to_string() }),
        }
    }
}

fn not_here<'a>(what: &'static str, id: &str, me: &str, holders: impl Iterator<Item = &'a str>) -> ProviderError {
    let holders: Vec<&str> = holders.collect();
    ProviderError::BadState {
        what,
        id: id.into(),
        state: if holders.is_empty() { "attached nowhere".into() } else { format!("attached to {}, not to this instance {me}", holders.join(", ")) },
        why: "the source attaches it to this instance before asking for the restore (tagged hotspot-mesh:workload)",
    }
}

/// `10.0.1.0/24` -> (10.0.1.0, 24).
fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = cidr.split_once('/')?;
    Some((ip.parse().ok()?, prefix.parse().ok().filter(|p| *p <= 32)?))
}

#[cfg(test)]
mod tests {
    use super::super::cloud_moves::WORKLOAD_TAG; // tests sit in target_host::tests
    use super::*;

    #[test]
    fn cidr_parses_and_names_the_workload_tag() {
        assert_eq!(parse_cidr("10.77.5.0/24"), Some((Ipv4Addr::new(10, 77, 5, 0), 24)));
        assert_eq!(parse_cidr("10.77.5.0"), None);
        assert_eq!(parse_cidr("10.77.5.0/40"), None);
        let err = not_here("volume", "vol-1", "i-me", ["i-other"].into_iter());
        assert!(err.to_string().contains("attached to i-other, not to this instance i-me"), "{err}");
        assert!(err.to_string().contains(WORKLOAD_TAG), "{err}");
    }
}
