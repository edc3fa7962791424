//! The daemon on EC2 (`[ec2]` in the config, or `hotspot-node run --ec2 ...`): who this node is
//! (IMDSv2), its advertised price (the spot price of its own type and zone, refreshed on a
//! schedule), its bootstrap peers (running instances with the cluster tag, looked for again on a
//! schedule so instances that boot later are found), and the
//! [`NodeMover`] that moves a workload's EBS volume and ENI in the migration's journaled
//! sequence.
//!
//! The interruption watcher is not started here: the daemon's trigger wiring builds it from
//! [`Ec2Node::imds`] and [`Ec2Node::settings`]`.notice_poll_ms`.

use std::sync::Arc;
use std::time::Duration;

use hotspot_protocol::migration::WorkloadSpec;
use hotspot_protocol::NodeId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::config::Config;
use super::control::VolumeZone;
use super::price::PriceSource;
use crate::imds::{Imds, ImdsError, InstanceIdentity};
use crate::lan_provider::Mover;
use crate::migrate::{BoxError, ResourceMover};
use crate::provider::ec2::cloud_moves::{CloudMoveState, CloudMoves};
use crate::mesh::MeshClient;
use crate::provider::ec2::discovery::{discover_peers, watch_peers, PeerInstance};
use crate::provider::ec2::price::SpotPriceSource;
use crate::provider::ec2::target_host::HostSetup;
use crate::workload::Workloads;
use crate::provider::ec2::{build_client, Ec2NodeSettings, Ec2Provider};
use crate::provider::{MoveStep, ProviderError};

/// Fault hook for tests: the daemon aborts right after the cloud detach (a crash between
/// detach and attach), before anything else is journaled.
pub const FAULT_CRASH_AFTER_DETACH: &str = "HOTSPOT_FAULT_EC2_CRASH_AFTER_DETACH";

#[derive(Debug, thiserror::Error)]
pub enum Ec2NodeError {
    #[error("EC2 identity: {0}")]
    Identity(#[from] ImdsError),
    #[error("EC2 start-up: {0}")]
    Provider(#[from] ProviderError),
}

/// A node running on an EC2 instance.
#[derive(Debug)]
pub struct Ec2Node {
    pub settings: Ec2NodeSettings,
    pub identity: InstanceIdentity,
    pub cloud: CloudMoves,
    pub price: Arc<SpotPriceSource>,
    imds: Imds,
    /// Mesh multiaddrs of the running instances of the cluster (at start).
    pub bootstrap: Vec<String>,
    /// This instance's private address, as EC2 reports it.
    pub private_ip: Option<std::net::IpAddr>,
}

impl Ec2Node {
    /// Learns who this node is, tags its instance with `node`, reads the spot price once and
    /// finds the cluster's running instances.
    pub async fn start(settings: &Ec2NodeSettings, node: &NodeId) -> Result<Ec2Node, Ec2NodeError> {
        let imds = Imds::new(&settings.imds)?;
        let identity = imds.identity(&settings.imds.overrides).await?;
        let mut api = settings.api.clone();
        api.region = identity.region.clone(); // the instance's own region, unless overridden
        let client = build_client(&api).await;
        let cloud = CloudMoves {
            provider: Ec2Provider::new(client.clone(), settings.moves.clone()),
            instance_id: identity.instance_id.clone(),
            cluster_tag: settings.cluster_tag.clone(),
            cluster: settings.cluster.clone(),
        };
        cloud.tag_self(&node.to_string()).await?;
        let refresh = Duration::from_secs(settings.price_refresh_secs.max(1));
        let price = Arc::new(SpotPriceSource::new(client.clone(), &identity.instance_type, &identity.zone, refresh));
        if let Err(e) = price.refresh().await {
            warn!(error = %e, "no spot price yet; advertising the on-demand (or configured) price until one arrives");
        }
        let instances = discover_peers(&client, &settings.cluster_tag, &settings.cluster, None).await?;
        let private_ip = instances.iter().find(|i| i.instance_id == identity.instance_id).map(|i| i.private_ip);
        let bootstrap: Vec<String> = instances
            .iter()
            .filter(|i| i.instance_id != identity.instance_id)
            .map(|i| mesh_addr(i.private_ip, settings.peer_port))
            .collect();
        info!(instance = %identity.instance_id, zone = %identity.zone, instance_type = %identity.instance_type,
              cluster = %settings.cluster, peers = bootstrap.len(), ?private_ip, "running on EC2");
        Ok(Ec2Node { settings: settings.clone(), identity, cloud, price, imds, bootstrap, private_ip })
    }

    /// What EC2 says about this node goes into the daemon config: the zone (unless set), the
    /// transfer address peers dial (unless set), and the bootstrap peers.
    pub fn apply_to(&self, config: &mut Config) {
        if config.zone == Config::default().zone {
            config.zone = self.identity.zone.clone();
        }
        if config.transfer_advertise.is_none() {
            let port = config.transfer_listen.rsplit(':').next().unwrap_or("7947");
            config.transfer_advertise = self.private_ip.map(|ip| std::net::SocketAddr::new(ip, port.parse().unwrap_or(7947)).to_string());
        }
        config.mesh.bootstrap.extend(self.bootstrap.iter().cloned());
    }

    /// The metadata client (for the interruption watcher).
    pub fn imds(&self) -> Imds {
        self.imds.clone()
    }

    /// The advert's price: the latest spot price; before the first answer, the on-demand price
    /// if configured, else `fallback` (the config's fixed price).
    pub fn price_source(&self, fallback: f64) -> Box<dyn PriceSource> {
        Box::new(Ec2Price {
            spot: self.price.clone(),
            on_demand: self.settings.on_demand_usd_per_hour,
            fallback,
            what: format!("{} in {}", self.identity.instance_type, self.identity.zone),
        })
    }

    /// Starts the spot price refresher and the discovery of instances that boot later (their
    /// mesh addresses go to `mesh` as bootstrap peers).
    pub fn spawn(&self, tasks: &mut JoinSet<()>, mesh: MeshClient, cancel: CancellationToken) {
        let every = Duration::from_secs(self.settings.price_refresh_secs.max(1));
        tasks.spawn(self.price.clone().run_refresher(every, cancel.clone()));
        if self.settings.discovery_refresh_secs == 0 {
            return;
        }
        let (found_tx, mut found) = mpsc::channel::<Vec<PeerInstance>>(4);
        tasks.spawn(watch_peers(
            self.cloud.provider.client().clone(),
            self.settings.cluster_tag.clone(),
            self.settings.cluster.clone(),
            Some(self.identity.instance_id.clone()),
            Duration::from_secs(self.settings.discovery_refresh_secs),
            found_tx,
            cancel,
        ));
        let port = self.settings.peer_port;
        // Ends when the watcher does (cancelled): it owns the sender.
        tasks.spawn(async move {
            while let Some(new) = found.recv().await {
                let addrs = new.iter().filter_map(|i| mesh_addr(i.private_ip, port).parse().ok()).collect();
                if mesh.add_bootstrap(addrs).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The mesh address of a cluster instance.
fn mesh_addr(ip: std::net::IpAddr, port: u16) -> String {
    format!("/{}/{ip}/tcp/{port}", if ip.is_ipv4() { "ip4" } else { "ip6" })
}

struct Ec2Price {
    spot: Arc<SpotPriceSource>,
    on_demand: Option<f64>,
    fallback: f64,
    what: String,
}

impl PriceSource for Ec2Price {
    fn price_at(&mut self, _elapsed: Duration) -> f64 {
        self.spot.latest().map(|p| p.usd_per_hour).or(self.on_demand).unwrap_or(self.fallback)
    }

    fn describe(&self) -> String {
        let on_demand = self.on_demand.map_or("not configured".to_string(), |p| format!("{p:.4} USD/h"));
        match self.spot.latest() {
            Some(p) => format!("ec2 spot {} {:.5} USD/h since {} (on-demand {on_demand})", self.what, p.usd_per_hour, p.since.unwrap_or_default()),
            None => format!("ec2 spot {}: no answer yet (on-demand {on_demand})", self.what),
        }
    }
}

/// Version of [`NodeMoveState`]'s encoding.
const MOVE_STATE_VERSION: u16 = 1;

/// What an EC2 node journals for a move: the cloud steps and the local data path's own record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct NodeMoveState {
    version: u16,
    cloud: CloudMoveState,
    local: Vec<u8>,
}

impl NodeMoveState {
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        if bytes.is_empty() {
            return Ok(NodeMoveState { version: MOVE_STATE_VERSION, ..Default::default() });
        }
        let st: NodeMoveState = serde_cbor::from_slice(bytes).map_err(|e| format!("not an EC2 move record: {e}"))?;
        if st.version != MOVE_STATE_VERSION {
            return Err(format!("EC2 move record version {} (this node reads {MOVE_STATE_VERSION})", st.version).into());
        }
        Ok(st)
    }

    fn encode(&self) -> Vec<u8> {
        serde_cbor::to_vec(self).expect("move state serializes")
    }
}

/// The daemon's [`ResourceMover`]: the local provider alone (loop devices, netns interfaces),
/// or on EC2 the cloud moves around the host data path: validate and detach the volume and
/// ENI from this instance, move the local data path (when configured: a lab whose
/// "instances" share one machine), attach both to the target's instance.
#[derive(Debug, Clone)]
pub struct NodeMover {
    local: Option<Mover>,
    cloud: Option<CloudMoves>,
    workloads: Workloads,
    crash_after_detach: bool,
}

impl NodeMover {
    pub fn new(local: Mover, ec2: Option<&Ec2Node>, workloads: Workloads) -> NodeMover {
        let keep_local = ec2.is_none_or(|e| e.settings.local_data_path);
        // In an EC2 lab the local data path moves only the interface: the volume's device is
        // found and mounted by the target as on EC2 (see `ec2_target`).
        let local = match local {
            Mover::Local(p) if ec2.is_some() => Mover::Local(p.without_volumes()),
            other => other,
        };
        NodeMover {
            local: keep_local.then_some(local),
            cloud: ec2.map(|e| e.cloud.clone()),
            workloads,
            crash_after_detach: std::env::var(FAULT_CRASH_AFTER_DETACH).is_ok_and(|v| v == "1"),
        }
    }

    /// Zone of the workload's EBS volume on EC2 (the election keeps targets in it); `None` off
    /// EC2 or when the workload has no volume.
    pub async fn volume_zone(&self, workload: &str) -> Result<Option<VolumeZone>, BoxError> {
        match &self.cloud {
            Some(cloud) => Ok(cloud.volume_zone(workload).await?.map(|(volume, zone)| VolumeZone { volume, zone })),
            None => Ok(None),
        }
    }
}

impl ResourceMover for NodeMover {
    async fn move_to_target(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), BoxError> {
        let Some(cloud) = &self.cloud else {
            // Off EC2 the local provider's record is the whole state (as before EC2 existed).
            return match &self.local {
                Some(local) => local.move_to_target(workload, target, state).await,
                None => Ok(()),
            };
        };
        let mut st = NodeMoveState::decode(state)?;
        if !st.cloud.resolved {
            let instance = cloud.instance_of(&target.to_string()).await?;
            st.cloud = cloud.plan(&workload.name, Some(&instance)).await?;
            *state = st.encode();
        }
        // The frozen workload's mount went with it; a staging mount of an earlier restore here
        // must go before EBS can detach.
        cloud.release_host_volume(&self.workloads.volume_mount_dir(&workload.name)).await?;
        let local_record = st.local.clone();
        let persist = |s: &mut Vec<u8>, c: &CloudMoveState, l: &[u8]| {
            *s = NodeMoveState { version: MOVE_STATE_VERSION, cloud: c.clone(), local: l.to_vec() }.encode();
        };
        cloud.advance(&mut st.cloud, MoveStep::Detached, |c| persist(state, c, &local_record)).await?;
        if self.crash_after_detach {
            error!(workload = %workload.name, "fault injection: crashing between the cloud detach and attach");
            std::process::abort();
        }
        if let Some(local) = &self.local {
            local.move_to_target(workload, target, &mut st.local).await?;
            *state = st.encode();
        }
        let local_record = st.local.clone();
        cloud.advance(&mut st.cloud, MoveStep::Attached, |c| persist(state, c, &local_record)).await?;
        info!(workload = %workload.name, "volume and interface attached to the target instance");
        Ok(())
    }

    async fn move_back(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), BoxError> {
        let Some(cloud) = &self.cloud else {
            return match &self.local {
                Some(local) => local.move_back(workload, state).await,
                None => Ok(()),
            };
        };
        let mut st = NodeMoveState::decode(state)?;
        if let Some(local) = &self.local {
            local.move_back(workload, &mut st.local).await?;
            *state = st.encode();
        }
        cloud.roll_back(&mut st.cloud, &workload.name).await?;
        *state = st.encode();
        // Back on this instance: the local restore needs the volume mounted and the ENI routed
        // here, as a target would have them.
        let netns = self.workloads.get(&workload.name)?.record.netns;
        let mount_dir = self.workloads.volume_mount_dir(&workload.name);
        cloud.prepare_host(&HostSetup { workload: &workload.name, netns: &netns, mount_dir: &mount_dir }).await?;
        Ok(())
    }

    // Post-copy shares the volume while pages stream: only the local provider can (an EBS volume
    // attaches to one instance), so on EC2 this keeps the refusing default.
    async fn move_to_target_shared(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), BoxError> {
        match (&self.cloud, &self.local) {
            (None, Some(local)) => local.move_to_target_shared(workload, target, state).await,
            (None, None) => Ok(()),
            (Some(_), _) => Err("post-copy cannot share an EBS volume between instances; use pre-copy on EC2".into()),
        }
    }

    async fn move_back_shared(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), BoxError> {
        match (&self.cloud, &self.local) {
            (None, Some(local)) => local.move_back_shared(workload, state).await,
            (None, None) => Ok(()),
            (Some(_), _) => Err("post-copy cannot share an EBS volume between instances; use pre-copy on EC2".into()),
        }
    }
}

/// Starts the EC2 side when the config has an `[ec2]` section, and folds what it learned into
/// `config` (zone, transfer address, bootstrap peers).
pub async fn start_if_configured(config: &mut Config, node: &NodeId) -> Result<Option<Arc<Ec2Node>>, Ec2NodeError> {
    let Some(settings) = config.ec2.clone() else { return Ok(None) };
    let ec2 = Ec2Node::start(&settings, node).await?;
    ec2.apply_to(config);
    Ok(Some(Arc::new(ec2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_section_parses_and_typos_are_refused() {
        assert_eq!(Config::from_toml("").unwrap().ec2, None, "no section: not on EC2");
        let c = Config::from_toml("[ec2]\ncluster = \"prod\"\npeer_port = 4001\n[ec2.api]\nendpoint_url = \"http://127.0.0.1:5000\"\n").unwrap();
        let s = c.ec2.unwrap();
        assert_eq!((s.cluster.as_str(), s.peer_port, s.api.endpoint_url.as_deref()), ("prod", 4001, Some("http://127.0.0.1:5000")));
        assert_eq!(Config::from_toml("[ec2]\n").unwrap().ec2, Some(Ec2NodeSettings::default()));
        assert!(Config::from_toml("[ec2]\nclustr = \"x\"\n").unwrap_err().contains("clustr"));
    }

    #[test]
    fn move_state_round_trips_and_refuses_other_versions() {
        let empty = NodeMoveState::decode(&[]).unwrap();
        assert_eq!((empty.version, empty.cloud.resolved), (MOVE_STATE_VERSION, false));
        let st = NodeMoveState { version: MOVE_STATE_VERSION, cloud: CloudMoveState { resolved: true, ..Default::default() }, local: vec![1, 2] };
        assert_eq!(NodeMoveState::decode(&st.encode()).unwrap(), st);
        let newer = NodeMoveState { version: 9, ..st };
        assert!(NodeMoveState::decode(&newer.encode()).unwrap_err().to_string().contains("version 9"));
        assert!(NodeMoveState::decode(b"\xff").is_err());
    }
}
