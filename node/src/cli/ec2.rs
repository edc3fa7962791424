//! `hotspot-node ec2 ...`: what the node sees of EC2 (identity, spot price, peers), and a fake
//! metadata service for running "instances" locally (demo, tests).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use hotspot_node::providers::ec2::imds::fake_server::FakeImds;
use hotspot_node::providers::ec2::imds::{
    region_of_zone, IdentityOverrides, Imds, ImdsSettings, InstanceIdentity, INSTANCE_TYPE, ZONE,
};
use hotspot_node::providers::ec2::discovery::{discover_peers, DEFAULT_CLUSTER_TAG};
use hotspot_node::providers::ec2::price::SpotPriceSource;
use hotspot_node::providers::ec2::{build_client, Ec2ClientSettings};

#[derive(Debug, clap::Args)]
pub struct Ec2Args {
    #[command(subcommand)]
    pub command: Ec2Command,
    /// EC2 API endpoint (default: the real one for the region; e.g. http://127.0.0.1:5000 for moto).
    /// Credentials come from the standard AWS chain (environment, profile, instance role).
    #[arg(long, global = true, env = "HOTSPOT_EC2_ENDPOINT")]
    pub endpoint_url: Option<String>,
    /// Instance metadata service base URL.
    #[arg(long, global = true, env = "HOTSPOT_IMDS_ENDPOINT", default_value = "http://169.254.169.254")]
    pub imds_endpoint: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum Ec2Command {
    /// Print this instance's id, type, zone and region (IMDSv2).
    Identity,
    /// Print the current spot price of this instance's type in its zone.
    Price {
        /// Instance type (default: this instance's).
        #[arg(long)]
        instance_type: Option<String>,
        /// Availability zone (default: this instance's).
        #[arg(long)]
        zone: Option<String>,
    },
    /// List the bootstrap peers: running instances tagged with the cluster, with private IPs.
    Peers {
        /// Cluster name (the tag's value).
        #[arg(long)]
        cluster: String,
        /// Tag key naming the cluster.
        #[arg(long, default_value = DEFAULT_CLUSTER_TAG)]
        tag: String,
        /// AWS region.
        #[arg(long, default_value = "us-east-1")]
        region: String,
    },
    /// Serve a fake IMDSv2 metadata service (tokens with TTL, identity, switchable spot notice)
    /// until interrupted. For local clusters and demos, never on EC2.
    FakeMetadata {
        #[arg(long, default_value = "127.0.0.1:8169")]
        listen: SocketAddr,
        #[arg(long)]
        instance_id: String,
        #[arg(long, default_value = "t3.micro")]
        instance_type: String,
        #[arg(long, default_value = "us-east-1a")]
        zone: String,
        /// Switch the spot interruption notice on after this many seconds.
        #[arg(long)]
        spot_notice_after: Option<u64>,
    },
}

pub fn run(args: &Ec2Args) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: &Ec2Args) -> Result<i32> {
    let imds = || Imds::new(&ImdsSettings { endpoint: args.imds_endpoint.clone(), ..ImdsSettings::default() });
    match &args.command {
        Ec2Command::Identity => {
            let id = imds()?.identity(&IdentityOverrides::default()).await?;
            println!("{}", serde_json::to_string_pretty(&id)?);
        }
        Ec2Command::Price { instance_type, zone } => {
            let instance_type = match instance_type {
                Some(t) => t.clone(),
                None => imds()?.get(INSTANCE_TYPE).await?,
            };
            let zone = match zone {
                Some(z) => z.clone(),
                None => imds()?.get(ZONE).await?,
            };
            let region = region_of_zone(&zone).with_context(|| format!("{zone} is not a zone name"))?;
            let client = build_client(&settings(args, &region)).await;
            let source = SpotPriceSource::new(client, &instance_type, &zone, Duration::ZERO);
            let price = source.current_price().await?;
            println!(
                "{instance_type} {zone} {:.5} USD/h (since {})",
                price.usd_per_hour,
                price.since.unwrap_or_default()
            );
        }
        Ec2Command::Peers { cluster, tag, region } => {
            let client = build_client(&settings(args, region)).await;
            for p in discover_peers(&client, tag, cluster, None).await? {
                println!("{}\t{}\t{}", p.instance_id, p.private_ip, p.zone);
            }
        }
        Ec2Command::FakeMetadata { listen, instance_id, instance_type, zone, spot_notice_after } => {
            let region = region_of_zone(zone).with_context(|| format!("{zone} is not a zone name"))?;
            let identity = InstanceIdentity {
                instance_id: instance_id.clone(),
                instance_type: instance_type.clone(),
                zone: zone.clone(),
                region,
            };
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            let fake = FakeImds::start(listener, identity)?;
            eprintln!("fake metadata service on {} (Ctrl-C to stop)", fake.endpoint());
            if let Some(secs) = spot_notice_after {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(*secs)) => {
                        fake.set_spot_action(Some(("terminate", "2099-01-01T00:00:00Z")));
                        eprintln!("spot interruption notice switched on");
                    }
                    _ = tokio::signal::ctrl_c() => { fake.shutdown().await; return Ok(0) }
                }
            }
            tokio::signal::ctrl_c().await?;
            fake.shutdown().await;
        }
    }
    Ok(0)
}

fn settings(args: &Ec2Args, region: &str) -> Ec2ClientSettings {
    Ec2ClientSettings { region: region.into(), endpoint_url: args.endpoint_url.clone(), ..Ec2ClientSettings::default() }
}
