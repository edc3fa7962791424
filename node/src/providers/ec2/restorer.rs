//! The target's restore on EC2: before CRIU restores a workload that arrived, the node waits for
//! the workload's EBS volume to show up as a block device and mounts it where the restore binds
//! it into the workload's mount namespace, and moves the ENI into the workload's network
//! namespace with policy routing for its address ([`CloudMoves::prepare_host`]). Off EC2 it is
//! the host data path's restorer unchanged.

use std::net::SocketAddr;
use std::path::Path;

use hotspot_protocol::migration::WorkloadSpec;
use tracing::warn;

use hotspot_protocol::NodeId;

use super::cloud_moves::CloudMoves;
use super::mover::NO_SHARED_EBS;
use super::target_host::HostSetup;
use crate::migrate::target::Restorer;
use crate::migrate::RestoreError;
use crate::sys::names::restore_netns;
use crate::workload::Workloads;

/// Wraps the restorer `R` of the host data path.
#[derive(Clone)]
pub struct Ec2Restorer<R> {
    inner: R,
    cloud: Option<CloudMoves>,
    node: NodeId,
    workloads: Workloads,
}

impl<R> Ec2Restorer<R> {
    /// `cloud`: `None` off EC2, where `inner` restores alone.
    pub fn new(inner: R, cloud: Option<CloudMoves>, node: NodeId, workloads: Workloads) -> Self {
        Ec2Restorer { inner, cloud, node, workloads }
    }
}

impl<R: Restorer> Restorer for Ec2Restorer<R> {
    async fn restore(&self, spec: &WorkloadSpec, dir: &Path) -> Result<u32, RestoreError> {
        if let Some(cloud) = &self.cloud {
            let netns = restore_netns(&spec.name, &self.node);
            let mount_dir = self.workloads.volume_mount_dir(&spec.name);
            let setup = HostSetup { workload: &spec.name, netns: &netns, mount_dir: &mount_dir };
            cloud.prepare_host(&setup).await.map_err(RestoreError::provider("ec2", "preparing the target instance"))?;
        }
        self.inner.restore(spec, dir).await
    }

    async fn discard(&self, workload: &str) {
        self.inner.discard(workload).await;
        if let Some(cloud) = &self.cloud {
            // The source takes the volume back: it cannot detach while this host has it mounted.
            if let Err(e) = cloud.release_host_volume(&self.workloads.volume_mount_dir(workload)).await {
                warn!(workload, error = %e, "could not unmount the volume after the failed restore");
            }
        }
    }

    async fn restore_lazy(&self, spec: &WorkloadSpec, dir: &Path, page_server: SocketAddr) -> Result<u32, RestoreError> {
        if self.cloud.is_some() {
            return Err(RestoreError::Unsupported { what: "post-copy", reason: NO_SHARED_EBS });
        }
        self.inner.restore_lazy(spec, dir, page_server).await
    }
}
