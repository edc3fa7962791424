//! The target's restore on EC2: before CRIU restores a workload that arrived, the node waits for
//! the workload's EBS volume to show up as a block device and mounts it where the restore binds
//! it into the workload's mount namespace, and moves the ENI into the workload's network
//! namespace with policy routing for its address ([`CloudMoves::prepare_host`]). Off EC2 it is
//! the provider's restorer unchanged.

use std::net::SocketAddr;
use std::path::Path;

use hotspot_protocol::migration::WorkloadSpec;
use tracing::warn;

use super::ec2::Ec2Node;
use crate::lan_provider::SelectedRestorer;
use crate::migrate::local::target_netns;
use crate::migrate::target::Restorer;
use crate::migrate::BoxError;
use crate::provider::ec2::cloud_moves::CloudMoves;
use crate::provider::ec2::target_host::HostSetup;

#[derive(Clone)]
pub struct Ec2Restorer {
    inner: SelectedRestorer,
    cloud: Option<CloudMoves>,
}

impl Ec2Restorer {
    pub fn new(inner: SelectedRestorer, ec2: Option<&Ec2Node>) -> Self {
        Ec2Restorer { inner, cloud: ec2.map(|e| e.cloud.clone()) }
    }
}

impl Restorer for Ec2Restorer {
    async fn restore(&self, spec: &WorkloadSpec, dir: &Path) -> Result<u32, BoxError> {
        if let Some(cloud) = &self.cloud {
            let netns = target_netns(&spec.name, &self.inner.plain.node);
            let mount_dir = self.inner.plain.workloads.volume_mount_dir(&spec.name);
            let setup = HostSetup { workload: &spec.name, netns: &netns, mount_dir: &mount_dir };
            cloud.prepare_host(&setup).await.map_err(|e| format!("preparing instance {} for {}: {e}", cloud.instance_id, spec.name))?;
        }
        self.inner.restore(spec, dir).await
    }

    async fn discard(&self, workload: &str) {
        self.inner.discard(workload).await;
        if let Some(cloud) = &self.cloud {
            // The source takes the volume back: it cannot detach while this host has it mounted.
            if let Err(e) = cloud.release_host_volume(&self.inner.plain.workloads.volume_mount_dir(workload)).await {
                warn!(workload, error = %e, "could not unmount the volume after the failed restore");
            }
        }
    }

    async fn restore_lazy(&self, spec: &WorkloadSpec, dir: &Path, page_server: SocketAddr) -> Result<u32, BoxError> {
        if self.cloud.is_some() {
            return Err("post-copy cannot share an EBS volume between instances; use pre-copy on EC2".into());
        }
        self.inner.restore_lazy(spec, dir, page_server).await
    }
}
