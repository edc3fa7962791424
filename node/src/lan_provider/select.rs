//! Which resource provider a daemon uses (`provider = "local" | "lan"` in its config), as one
//! [`Mover`] for the source side and one [`SelectedRestorer`] for the target side.

use std::path::Path;

use hotspot_protocol::migration::WorkloadSpec;
use hotspot_protocol::NodeId;
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{interface_with, LanError, LanProvider};
use crate::daemon::config::Config;
use crate::daemon::service::NodeService;
use crate::local_provider::{ClusterDir, LocalProvider, DEFAULT_CLUSTER_DIR};
use crate::migrate::local::{target_netns, WorkloadRestorer};
use crate::migrate::target::Restorer;
use crate::migrate::{BoxError, ResourceMover};
use crate::workload::{netns, Workloads};

/// The `provider` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Nodes of one machine (network namespaces; shared cluster directory and disk).
    #[default]
    Local,
    /// Machines on one Ethernet segment: the service address moves by proxy ARP, no volumes.
    Lan,
}

/// The source side's resource mover.
#[derive(Debug, Clone)]
pub enum Mover {
    Local(LocalProvider),
    Lan(LanProvider),
}

impl ResourceMover for Mover {
    async fn move_to_target(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), BoxError> {
        match self {
            Mover::Local(p) => p.move_to_target(workload, target, state).await,
            Mover::Lan(p) => p.move_to_target(workload, target, state).await,
        }
    }

    async fn move_back(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), BoxError> {
        match self {
            Mover::Local(p) => p.move_back(workload, state).await,
            Mover::Lan(p) => p.move_back(workload, state).await,
        }
    }

    // Post-copy: the local provider shares the volume while pages stream; the LAN provider
    // moves no volume, so its address moves as in pre-copy.
    async fn move_to_target_shared(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), BoxError> {
        match self {
            Mover::Local(p) => p.move_to_target_shared(workload, target, state).await,
            Mover::Lan(p) => p.move_to_target(workload, target, state).await,
        }
    }

    async fn move_back_shared(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), BoxError> {
        match self {
            Mover::Local(p) => p.move_back_shared(workload, state).await,
            Mover::Lan(p) => p.move_back(workload, state).await,
        }
    }
}

/// The LAN interface: `lan_interface`, else the one holding the node's advertised (or listen)
/// transfer address.
fn lan_interface(config: &Config) -> Result<String, LanError> {
    if let Some(i) = &config.lan_interface {
        return Ok(i.clone());
    }
    let addr = config.transfer_advertise.as_deref().unwrap_or(&config.transfer_listen);
    let ip = addr
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .map_err(|e| LanError::NoInterface(format!("transfer address {addr:?}: {e}")))?;
    if ip.is_unspecified() {
        return Err(LanError::NoInterface(format!("transfer address {addr} names no interface; set transfer_advertise")));
    }
    interface_with(ip)
}

/// Picks the daemon's provider from `config`: the mover (the local one joins its cluster
/// directory; the LAN one starts publishing this node's workloads, a task in `tasks`) and the
/// restorer wrapping `plain`.
pub fn select(
    config: &Config,
    service: &NodeService,
    workloads: &Workloads,
    plain: WorkloadRestorer,
    tasks: &mut JoinSet<()>,
    cancel: CancellationToken,
) -> Result<(Mover, SelectedRestorer), BoxError> {
    match config.provider {
        ProviderKind::Local => {
            let cluster = ClusterDir::new(std::env::var_os("HOTSPOT_LOCAL_CLUSTER").map_or_else(|| DEFAULT_CLUSTER_DIR.into(), std::path::PathBuf::from));
            let mover = LocalProvider::join(cluster, &service.node(), service.name(), Path::new(&config.workloads_dir))?;
            Ok((Mover::Local(mover), SelectedRestorer { plain, lan: None }))
        }
        ProviderKind::Lan => {
            let lan = LanProvider::new(lan_interface(config)?, workloads.clone());
            tracing::info!(interface = %lan.interface, "LAN provider: service addresses move by proxy ARP on this interface");
            tasks.spawn(lan.clone().keep_published(cancel));
            Ok((Mover::Lan(lan.clone()), SelectedRestorer { plain, lan: Some(lan) }))
        }
    }
}

/// The target side's restorer: with the LAN provider it creates the workload's namespace and
/// veth before the restore and publishes the address after it.
#[derive(Clone)]
pub struct SelectedRestorer {
    pub plain: WorkloadRestorer,
    pub lan: Option<LanProvider>,
}

impl Restorer for SelectedRestorer {
    async fn restore(&self, spec: &WorkloadSpec, dir: &Path) -> Result<u32, BoxError> {
        let Some(lan) = self.lan.clone() else { return self.plain.restore(spec, dir).await };
        let ns = target_netns(&spec.name, &self.plain.node);
        let (l, s, n) = (lan.clone(), spec.clone(), ns.clone());
        let created = tokio::task::spawn_blocking(move || l.prepare_target(&s, &n)).await??;
        let pid = match self.plain.restore(spec, dir).await {
            Ok(pid) => pid,
            Err(e) => {
                if created {
                    let _ = netns::delete(&ns);
                }
                return Err(e);
            }
        };
        if spec.address.is_some() {
            let name = spec.name.clone();
            // The workload runs here now: a failed publication is retried by `keep_published`.
            if let Err(e) = tokio::task::spawn_blocking(move || lan.publish(&name)).await? {
                tracing::warn!(workload = %spec.name, error = %e, "restored, but publishing its address failed; retrying in the background");
            }
        }
        Ok(pid)
    }

    async fn discard(&self, workload: &str) {
        self.plain.discard(workload).await;
    }

    async fn restore_lazy(&self, spec: &WorkloadSpec, dir: &Path, page_server: std::net::SocketAddr) -> Result<u32, BoxError> {
        let Some(lan) = self.lan.clone() else { return self.plain.restore_lazy(spec, dir, page_server).await };
        let ns = target_netns(&spec.name, &self.plain.node);
        let (l, s, n) = (lan.clone(), spec.clone(), ns.clone());
        tokio::task::spawn_blocking(move || l.prepare_target(&s, &n)).await??;
        let pid = self.plain.restore_lazy(spec, dir, page_server).await?;
        let name = spec.name.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || lan.publish(&name)).await? {
            tracing::warn!(workload = %spec.name, error = %e, "restored, but publishing its address failed; retrying in the background");
        }
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_and_interface_come_from_the_config() {
        let c = Config::from_toml("provider = \"lan\"\nlan_interface = \"eth1\"\n").unwrap();
        assert_eq!(c.provider, ProviderKind::Lan);
        assert_eq!(lan_interface(&c).unwrap(), "eth1");
        assert_eq!(Config::from_toml("").unwrap().provider, ProviderKind::Local);
        let err = Config::from_toml("provider = \"vlan\"\n").unwrap_err();
        assert!(err.contains("lan"), "{err}");
        // Listening on every address names no interface: a clear error, not a guess.
        let c = Config::from_toml("provider = \"lan\"\ntransfer_listen = \"0.0.0.0:7947\"\n").unwrap();
        assert!(lan_interface(&c).unwrap_err().to_string().contains("transfer_advertise"));
    }
}
