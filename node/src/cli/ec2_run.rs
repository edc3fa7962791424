//! `hotspot-node run` flags of the EC2 side (`[ec2]` in the config file). Any of them turns the
//! EC2 side on; `--ec2` alone turns it on with every default (on an instance, all it needs).

use hotspot_node::daemon::config::Config;
use hotspot_node::providers::ec2::Ec2NodeSettings;

#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "EC2 (identity from IMDSv2, spot price in the advert, peers by tag, EBS/ENI moves)")]
pub struct Ec2RunArgs {
    /// Run as an EC2 instance with the `[ec2]` defaults (implied by every other --ec2-* flag).
    #[arg(long, env = "HOTSPOT_EC2")]
    pub ec2: bool,
    /// AWS region [default: the instance's, from the metadata service].
    #[arg(long, env = "HOTSPOT_EC2_REGION")]
    pub ec2_region: Option<String>,
    /// EC2 API endpoint, e.g. http://127.0.0.1:5000 for the moto emulator [default: EC2's own].
    /// Credentials come from the standard AWS chain (environment, profile, instance role).
    #[arg(long, env = "HOTSPOT_EC2_ENDPOINT")]
    pub ec2_endpoint_url: Option<String>,
    /// Instance metadata service base URL [default: http://169.254.169.254].
    #[arg(long, env = "HOTSPOT_IMDS_ENDPOINT")]
    pub ec2_imds_endpoint: Option<String>,
    /// Cluster name: peers are running instances tagged `<cluster tag>=<cluster>` [default: default].
    #[arg(long, env = "HOTSPOT_EC2_CLUSTER")]
    pub ec2_cluster: Option<String>,
    /// Tag key naming the cluster [default: hotspot-mesh:cluster].
    #[arg(long, env = "HOTSPOT_EC2_CLUSTER_TAG")]
    pub ec2_cluster_tag: Option<String>,
    /// On-demand price of this instance type, USD per hour (advertised until a spot price arrives).
    #[arg(long, env = "HOTSPOT_EC2_ON_DEMAND_PRICE")]
    pub ec2_on_demand_price: Option<f64>,
    /// Seconds between spot price refreshes (DescribeSpotPriceHistory) [default: 300].
    #[arg(long, env = "HOTSPOT_EC2_PRICE_REFRESH_SECS")]
    pub ec2_price_refresh_secs: Option<u64>,
    /// TCP port of the peers' mesh listeners, for bootstrap addresses [default: 7946].
    #[arg(long, env = "HOTSPOT_EC2_PEER_PORT")]
    pub ec2_peer_port: Option<u16>,
    /// Seconds between looks for cluster instances that booted after this node [default: 60].
    #[arg(long, env = "HOTSPOT_EC2_DISCOVERY_REFRESH_SECS")]
    pub ec2_discovery_refresh_secs: Option<u64>,
    /// Directory attached EBS volumes appear in (`sdf`, `xvdf`, `disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…`)
    /// [default: /dev]. For labs where a loop device plays the volume.
    #[arg(long, env = "HOTSPOT_EC2_DEVICE_DIR")]
    pub ec2_device_dir: Option<std::path::PathBuf>,
    /// Also move netns interfaces (the ENI stand-in) between nodes of this machine: an
    /// emulated-EC2 lab where all "instances" share one host [default: false]. Volumes are found
    /// under --ec2-device-dir as on EC2.
    #[arg(long, env = "HOTSPOT_EC2_LOCAL_DATA_PATH")]
    pub ec2_local_data_path: bool,
}

impl Ec2RunArgs {
    /// Layers the flags over the config's `[ec2]` section (creating it when any flag is given).
    pub fn apply(&self, config: &mut Config) {
        let any = self.ec2
            || self.ec2_local_data_path
            || self.ec2_region.is_some()
            || self.ec2_endpoint_url.is_some()
            || self.ec2_imds_endpoint.is_some()
            || self.ec2_cluster.is_some()
            || self.ec2_cluster_tag.is_some()
            || self.ec2_on_demand_price.is_some()
            || self.ec2_price_refresh_secs.is_some()
            || self.ec2_peer_port.is_some()
            || self.ec2_discovery_refresh_secs.is_some()
            || self.ec2_device_dir.is_some();
        if !any {
            return;
        }
        let s = config.ec2.get_or_insert_with(Ec2NodeSettings::default);
        if let Some(r) = &self.ec2_region {
            s.api.region = r.clone();
            s.imds.overrides.region = Some(r.clone());
        }
        if self.ec2_endpoint_url.is_some() {
            s.api.endpoint_url = self.ec2_endpoint_url.clone();
        }
        if let Some(e) = &self.ec2_imds_endpoint {
            s.imds.endpoint = e.clone();
        }
        if let Some(c) = &self.ec2_cluster {
            s.cluster = c.clone();
        }
        if let Some(t) = &self.ec2_cluster_tag {
            s.cluster_tag = t.clone();
        }
        if self.ec2_on_demand_price.is_some() {
            s.on_demand_usd_per_hour = self.ec2_on_demand_price;
        }
        if let Some(secs) = self.ec2_price_refresh_secs {
            s.price_refresh_secs = secs;
        }
        if let Some(p) = self.ec2_peer_port {
            s.peer_port = p;
        }
        if let Some(secs) = self.ec2_discovery_refresh_secs {
            s.discovery_refresh_secs = secs;
        }
        if let Some(dir) = &self.ec2_device_dir {
            s.moves.device_dir = dir.clone();
        }
        s.local_data_path |= self.ec2_local_data_path;
    }
}
