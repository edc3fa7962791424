//! Shared harness for the EC2 tests: a moto server per test on a free loopback port, a client for
//! it, and a small "cluster" of instances, a volume and an ENI to move.
#![allow(dead_code)] // each test binary uses a different part

pub mod fault_proxy;

#[allow(unused_imports)] // not every test binary seeds every kind
pub use hotspot_testkit::moto::{interface, run_instance, subnet_in, volume};
use hotspot_node::providers::ec2::{build_client, Ec2ClientSettings, Ec2Provider, Ec2ProviderOptions};

pub const ZONE_A: &str = "us-east-1a";
pub const ZONE_B: &str = "us-east-1b";

pub use hotspot_testkit::moto::MotoServer;

pub fn settings(endpoint: &str) -> Ec2ClientSettings {
    Ec2ClientSettings {
        endpoint_url: Some(endpoint.to_string()),
        static_credentials: Some(("testing".into(), "testing".into())),
        initial_backoff_ms: 10,
        operation_timeout_ms: 20_000,
        ..Ec2ClientSettings::default()
    }
}

pub fn fast_options() -> Ec2ProviderOptions {
    Ec2ProviderOptions { poll_interval_ms: 20, state_timeout_ms: 10_000, device_timeout_ms: 1_000, ..Ec2ProviderOptions::default() }
}

pub async fn provider(endpoint: &str) -> Ec2Provider {
    Ec2Provider::new(build_client(&settings(endpoint)).await, fast_options())
}

/// Instances, a volume and an ENI in the emulator.
pub struct Cluster {
    pub source: String,
    pub target: String,
    /// A running instance in another zone.
    pub far: String,
    pub subnet_a: String,
}

pub async fn cluster(c: &aws_sdk_ec2::Client) -> Cluster {
    Cluster {
        source: run_instance(c, ZONE_A, None).await,
        target: run_instance(c, ZONE_A, None).await,
        far: run_instance(c, ZONE_B, None).await,
        subnet_a: subnet_in(c, ZONE_A).await,
    }
}

/// (instance, state) of every attachment of the volume, and the volume state.
pub async fn volume_state(c: &aws_sdk_ec2::Client, id: &str) -> (String, Vec<String>) {
    let out = c.describe_volumes().volume_ids(id).send().await.unwrap();
    let v = &out.volumes()[0];
    let atts = v
        .attachments()
        .iter()
        .filter(|a| a.state().map(|s| s.as_str()) != Some("detached"))
        .map(|a| a.instance_id().unwrap().to_string())
        .collect();
    (v.state().unwrap().as_str().to_string(), atts)
}

/// The instance an ENI is attached to, if any.
pub async fn interface_holder(c: &aws_sdk_ec2::Client, id: &str) -> Option<String> {
    let out = c.describe_network_interfaces().network_interface_ids(id).send().await.unwrap();
    out.network_interfaces()[0].attachment().and_then(|a| a.instance_id()).map(str::to_string)
}
