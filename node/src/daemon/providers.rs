//! Which resource provider a daemon uses (`provider = "local" | "lan"` in its config, and EC2
//! around it when the config has `[ec2]`), as one [`NodeMover`] for the source side and one
//! [`NodeRestorer`] for the target side.

use std::path::Path;

use hotspot_protocol::migration::WorkloadSpec;
use hotspot_protocol::NodeId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::{Config, ProviderKind};
use super::service::NodeService;
use crate::migrate::checkpointer::WorkloadRestorer;
use crate::migrate::target::Restorer;
use crate::migrate::{MoveError, ResourceMover, RestoreError};
use crate::providers::ec2::mover::Ec2Mover;
use crate::providers::ec2::node::Ec2Node;
use crate::providers::ec2::restorer::Ec2Restorer;
use crate::providers::lan::restorer::LanRestorer;
use crate::providers::lan::{interface_with, LanError, LanProvider};
use crate::providers::local::{ClusterDir, LocalProvider, LocalProviderError, DEFAULT_CLUSTER_DIR};
use crate::workload::Workloads;

/// Why the configured provider could not start.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Local(#[from] LocalProviderError),
    #[error(transparent)]
    Lan(#[from] LanError),
}

/// The source side's resource mover.
#[derive(Debug, Clone)]
pub enum Mover {
    Local(LocalProvider),
    Lan(LanProvider),
}

impl ResourceMover for Mover {
    async fn move_to_target(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), MoveError> {
        match self {
            Mover::Local(p) => p.move_to_target(workload, target, state).await,
            Mover::Lan(p) => p.move_to_target(workload, target, state).await,
        }
    }

    async fn move_back(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), MoveError> {
        match self {
            Mover::Local(p) => p.move_back(workload, state).await,
            Mover::Lan(p) => p.move_back(workload, state).await,
        }
    }

    // Post-copy: the local provider shares the volume while pages stream; the LAN provider
    // moves no volume, so its address moves as in pre-copy.
    async fn move_to_target_shared(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), MoveError> {
        match self {
            Mover::Local(p) => p.move_to_target_shared(workload, target, state).await,
            Mover::Lan(p) => p.move_to_target(workload, target, state).await,
        }
    }

    async fn move_back_shared(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), MoveError> {
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
) -> Result<(Mover, SelectedRestorer), SelectError> {
    match config.provider {
        ProviderKind::Local => {
            let cluster = ClusterDir::new(std::env::var_os("HOTSPOT_LOCAL_CLUSTER").map_or_else(|| DEFAULT_CLUSTER_DIR.into(), std::path::PathBuf::from));
            let mover = LocalProvider::join(cluster, &service.node(), service.name(), Path::new(&config.workloads_dir))?;
            Ok((Mover::Local(mover), SelectedRestorer::Plain(plain)))
        }
        ProviderKind::Lan => {
            let lan = LanProvider::new(lan_interface(config)?, workloads.clone());
            tracing::info!(interface = %lan.interface, "LAN provider: service addresses move by proxy ARP on this interface");
            tasks.spawn(lan.clone().keep_published(cancel));
            Ok((Mover::Lan(lan.clone()), SelectedRestorer::Lan(LanRestorer::new(plain, lan, service.node()))))
        }
    }
}

/// The target side's restorer of the selected provider.
#[derive(Clone)]
pub enum SelectedRestorer {
    Plain(WorkloadRestorer),
    Lan(LanRestorer<WorkloadRestorer>),
}

impl Restorer for SelectedRestorer {
    async fn restore(&self, spec: &WorkloadSpec, dir: &Path) -> Result<u32, RestoreError> {
        match self {
            SelectedRestorer::Plain(r) => r.restore(spec, dir).await,
            SelectedRestorer::Lan(r) => r.restore(spec, dir).await,
        }
    }

    async fn discard(&self, workload: &str) {
        match self {
            SelectedRestorer::Plain(r) => r.discard(workload).await,
            SelectedRestorer::Lan(r) => r.discard(workload).await,
        }
    }

    async fn restore_lazy(&self, spec: &WorkloadSpec, dir: &Path, page_server: std::net::SocketAddr) -> Result<u32, RestoreError> {
        match self {
            SelectedRestorer::Plain(r) => r.restore_lazy(spec, dir, page_server).await,
            SelectedRestorer::Lan(r) => r.restore_lazy(spec, dir, page_server).await,
        }
    }
}

/// The daemon's mover: the selected provider alone, or on EC2 the cloud moves around it.
pub type NodeMover = Ec2Mover<Mover>;
/// The daemon's restorer: the selected provider's, prepared by EC2 first when on EC2.
pub type NodeRestorer = Ec2Restorer<SelectedRestorer>;

/// Wraps the selected mover for EC2 (when `ec2` is given).
pub fn node_mover(local: Mover, ec2: Option<&Ec2Node>, workloads: Workloads) -> NodeMover {
    let keep_local = ec2.is_none_or(|e| e.settings.local_data_path);
    // In an EC2 lab the local data path moves only the interface: the volume's device is found
    // and mounted by the target as on EC2 (see `providers::ec2::restorer`).
    let local = match local {
        Mover::Local(p) if ec2.is_some() => Mover::Local(p.without_volumes()),
        other => other,
    };
    Ec2Mover::new(keep_local.then_some(local), ec2.map(|e| e.cloud.clone()), workloads)
}

/// Wraps the selected restorer for EC2 (when `ec2` is given).
pub fn node_restorer(inner: SelectedRestorer, ec2: Option<&Ec2Node>, node: NodeId, workloads: Workloads) -> NodeRestorer {
    Ec2Restorer::new(inner, ec2.map(|e| e.cloud.clone()), node, workloads)
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
