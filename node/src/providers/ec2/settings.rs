//! Configuration of the EC2 side of a node. Every field has a documented default, so an empty
//! `[ec2]` table is a working configuration on an EC2 instance.

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use serde::Deserialize;

use super::discovery::DEFAULT_CLUSTER_TAG;
use crate::providers::ec2::imds::ImdsSettings;

/// Everything a node on EC2 is configured with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ec2NodeSettings {
    pub api: Ec2ClientSettings,
    pub imds: ImdsSettings,
    pub moves: Ec2ProviderOptions,
    /// Tag key naming the cluster (default `hotspot-mesh:cluster`).
    pub cluster_tag: String,
    /// This node's cluster: peers are running instances with `cluster_tag=cluster` (default `default`).
    pub cluster: String,
    /// Seconds between spot price refreshes (default 300; EC2 changes prices at most a few times an hour).
    pub price_refresh_secs: u64,
    /// On-demand price of this instance type, USD per hour, for the hop policy's comparison
    /// (default none: EC2 has no cheap API for it, so it is configured).
    pub on_demand_usd_per_hour: Option<f64>,
    /// Milliseconds between interruption-notice polls (default 5000, as AWS recommends).
    pub notice_poll_ms: u64,
    /// Seconds between DescribeInstances rounds looking for cluster instances that booted after
    /// this node (default 60; 0 looks only at start).
    pub discovery_refresh_secs: u64,
    /// TCP port peers' meshes listen on (default 7946): bootstrap addresses are
    /// `/ip4/<private ip>/tcp/<peer_port>`, so run every node with `--listen /ip4/0.0.0.0/tcp/7946`.
    pub peer_port: u16,
    /// Also move the workload's netns interface (the ENI stand-in) between the nodes of this
    /// machine (the local provider) around the cloud calls: for a lab where EC2 is emulated and
    /// every "instance" shares one host. The volume is not moved by it: as on EC2, the target
    /// finds the attached volume's device under `moves.device_dir` (where the lab links a loop
    /// device) and mounts it. Default false (on EC2 the ENI follows the cloud attach).
    pub local_data_path: bool,
}

impl Default for Ec2NodeSettings {
    fn default() -> Self {
        Ec2NodeSettings {
            api: Ec2ClientSettings::default(),
            imds: ImdsSettings::default(),
            moves: Ec2ProviderOptions::default(),
            cluster_tag: DEFAULT_CLUSTER_TAG.into(),
            cluster: "default".into(),
            price_refresh_secs: 300,
            on_demand_usd_per_hour: None,
            notice_poll_ms: 5_000,
            discovery_refresh_secs: 60,
            peer_port: 7946,
            local_data_path: false,
        }
    }
}

/// How to reach the EC2 API. Every field has a default; `endpoint_url` points it at an emulator.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ec2ClientSettings {
    /// AWS region (default: from the instance metadata, else `us-east-1`).
    pub region: String,
    /// API endpoint override, e.g. `http://127.0.0.1:5000` for moto. Default: the real EC2 endpoint.
    pub endpoint_url: Option<String>,
    /// Static access key id and secret (tests, emulators). Default: the standard AWS credential
    /// chain (environment, profile, the instance role through IMDS).
    pub static_credentials: Option<(String, String)>,
    /// Attempts per API call, including throttled ones (default 3).
    pub max_attempts: u32,
    /// First retry backoff in milliseconds (default 200); grows exponentially with jitter.
    pub initial_backoff_ms: u64,
    /// Deadline per API call including retries, in milliseconds (default 30000).
    pub operation_timeout_ms: u64,
}

impl Default for Ec2ClientSettings {
    fn default() -> Self {
        Ec2ClientSettings {
            region: "us-east-1".into(),
            endpoint_url: None,
            static_credentials: None,
            max_attempts: 3,
            initial_backoff_ms: 200,
            operation_timeout_ms: 30_000,
        }
    }
}

/// Builds an EC2 client from the settings.
pub async fn build_client(settings: &Ec2ClientSettings) -> aws_sdk_ec2::Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(settings.max_attempts.max(1))
                .with_initial_backoff(Duration::from_millis(settings.initial_backoff_ms)),
        )
        .timeout_config(
            TimeoutConfig::builder().operation_timeout(Duration::from_millis(settings.operation_timeout_ms)).build(),
        );
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some((id, secret)) = &settings.static_credentials {
        loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "hotspot-static"));
    }
    aws_sdk_ec2::Client::new(&loader.load().await)
}

/// Timing of the provider's own waits. Defaults suit real EC2; tests shorten them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ec2ProviderOptions {
    /// Delay between state polls while waiting for a detach/attach (default 500 ms).
    pub poll_interval_ms: u64,
    /// Longest wait for one state change (default 120 s; EBS detach is usually 5-20 s).
    pub state_timeout_ms: u64,
    /// Longest wait for the attached volume's block device (and the ENI's interface) to appear
    /// on the target (default 60 s).
    pub device_timeout_ms: u64,
    /// Where attached volumes show up (default `/dev`): `sdf`/`xvdf` on Xen instances,
    /// `disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…` on Nitro ones. Tests point it at a
    /// directory of their own.
    pub device_dir: PathBuf,
    /// File system of workload volumes, for mounting them on the target (default `ext4`).
    pub volume_fstype: String,
    /// Policy routing table for a moved ENI's address in the workload's namespace (default 100).
    pub route_table: u32,
}

impl Default for Ec2ProviderOptions {
    fn default() -> Self {
        Ec2ProviderOptions {
            poll_interval_ms: 500,
            state_timeout_ms: 120_000,
            device_timeout_ms: 60_000,
            device_dir: PathBuf::from("/dev"),
            volume_fstype: "ext4".into(),
            route_table: 100,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults_and_typos_are_refused() {
        let s: Ec2NodeSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, Ec2NodeSettings::default());
        assert_eq!((s.notice_poll_ms, s.api.max_attempts, s.cluster_tag.as_str()), (5_000, 3, DEFAULT_CLUSTER_TAG));
        let s: Ec2NodeSettings = serde_json::from_str(
            r#"{"api":{"endpoint_url":"http://127.0.0.1:5000"},"imds":{"overrides":{"zone":"us-east-1b"}}}"#,
        )
        .unwrap();
        assert_eq!(s.api.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(s.api.region, "us-east-1");
        assert_eq!(s.imds.overrides.zone.as_deref(), Some("us-east-1b"));
        let err = serde_json::from_str::<Ec2NodeSettings>(r#"{"clustr":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("clustr"), "{err}");
    }
}
