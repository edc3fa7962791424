//! The target side of the LAN provider: before the restore it creates the workload's namespace
//! and its veth to the LAN bridge, after it publishes the service address.

use std::net::SocketAddr;
use std::path::Path;

use hotspot_protocol::migration::WorkloadSpec;
use hotspot_protocol::NodeId;

use super::LanProvider;
use crate::migrate::target::Restorer;
use crate::migrate::RestoreError;
use crate::sys::names::restore_netns;
use crate::sys::netns;

/// Wraps the restorer `R` that runs CRIU.
#[derive(Clone)]
pub struct LanRestorer<R> {
    inner: R,
    lan: LanProvider,
    node: NodeId,
}

impl<R> LanRestorer<R> {
    pub fn new(inner: R, lan: LanProvider, node: NodeId) -> Self {
        LanRestorer { inner, lan, node }
    }

    /// Creates the namespace and veth (when missing); true if this call created them.
    async fn prepare(&self, spec: &WorkloadSpec) -> Result<(String, bool), RestoreError> {
        let ns = restore_netns(&spec.name, &self.node);
        let (l, s, n) = (self.lan.clone(), spec.clone(), ns.clone());
        let prepared = tokio::task::spawn_blocking(move || l.prepare_target(&s, &n)).await?;
        let created = prepared.map_err(RestoreError::provider("lan", "preparing the workload's network namespace"))?;
        Ok((ns, created))
    }

    /// The workload runs here now: a failed publication is retried by `keep_published`.
    async fn publish(&self, spec: &WorkloadSpec) -> Result<(), RestoreError> {
        let (lan, name) = (self.lan.clone(), spec.name.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || lan.publish(&name)).await? {
            tracing::warn!(workload = %spec.name, error = %e, "restored, but publishing its address failed; retrying in the background");
        }
        Ok(())
    }
}

impl<R: Restorer> Restorer for LanRestorer<R> {
    async fn restore(&self, spec: &WorkloadSpec, dir: &Path) -> Result<u32, RestoreError> {
        let (ns, created) = self.prepare(spec).await?;
        let pid = match self.inner.restore(spec, dir).await {
            Ok(pid) => pid,
            Err(e) => {
                if created {
                    let _ = netns::delete(&ns);
                }
                return Err(e);
            }
        };
        if spec.address.is_some() {
            self.publish(spec).await?;
        }
        Ok(pid)
    }

    async fn discard(&self, workload: &str) {
        self.inner.discard(workload).await;
    }

    async fn restore_lazy(&self, spec: &WorkloadSpec, dir: &Path, page_server: SocketAddr) -> Result<u32, RestoreError> {
        self.prepare(spec).await?;
        let pid = self.inner.restore_lazy(spec, dir, page_server).await?;
        self.publish(spec).await?;
        Ok(pid)
    }
}
