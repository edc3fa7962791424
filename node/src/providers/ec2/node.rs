//! A node running on an EC2 instance (`[ec2]` in the config, or `hotspot-node run --ec2 ...`):
//! who it is (IMDSv2), its advertised price (the spot price of its own type and zone, refreshed
//! on a schedule) and its bootstrap peers (running instances with the cluster tag, looked for
//! again on a schedule so instances that boot later are found). Volumes and interfaces move
//! through [`super::mover::Ec2Mover`].
//!
//! The interruption watcher is not started here: the daemon's trigger wiring builds it from
//! [`Ec2Node::imds`] and [`Ec2Node::settings`]`.notice_poll_ms`.

use std::sync::Arc;
use std::time::Duration;

use hotspot_protocol::NodeId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::cloud_moves::CloudMoves;
use super::discovery::{discover_peers, watch_peers, PeerInstance};
use super::imds::{Imds, ImdsError, InstanceIdentity};
use super::price::SpotPriceSource;
use super::{build_client, Ec2NodeSettings, Ec2Provider, ProviderError};
use crate::mesh::MeshClient;
use crate::providers::price::PriceSource;

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

