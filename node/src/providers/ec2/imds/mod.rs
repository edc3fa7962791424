//! The EC2 instance metadata service (IMDSv2): who this node is, and whether EC2 is about to take
//! the instance back.
//!
//! Requests go through aws-config's IMDS client, which fetches a session token with `PUT
//! /latest/api/token` and the `X-aws-ec2-metadata-token-ttl-seconds` header, caches it for its TTL
//! and sends it on every `GET`.
//!
//! - [`watcher`]: polls the spot interruption notice and the rebalance recommendation.
//! - [`fake_server`]: a metadata server of our own for tests and the local demo (moto's serves
//!   neither IMDSv2 token TTLs nor spot notices).

pub mod fake_server;
pub mod watcher;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the metadata service is and how patiently to ask it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImdsSettings {
    /// Base URL (default `http://169.254.169.254`, the address every EC2 instance has).
    pub endpoint: String,
    /// Session token lifetime in seconds, 1..=21600 (default 21600).
    pub token_ttl_secs: u64,
    /// Per-request timeout in milliseconds (default 1000: the service is local or absent).
    pub timeout_ms: u64,
    /// Attempts per request (default 2).
    pub max_attempts: u32,
    /// Values that win over what the service says (and stand in for it off EC2).
    pub overrides: IdentityOverrides,
}

impl Default for ImdsSettings {
    fn default() -> Self {
        ImdsSettings {
            endpoint: "http://169.254.169.254".into(),
            token_ttl_secs: 21_600,
            timeout_ms: 1_000,
            max_attempts: 2,
            overrides: IdentityOverrides::default(),
        }
    }
}

/// Configured identity values; `None` means "ask the metadata service".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityOverrides {
    pub instance_id: Option<String>,
    pub instance_type: Option<String>,
    pub zone: Option<String>,
    pub region: Option<String>,
}

/// What this node is on EC2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceIdentity {
    pub instance_id: String,
    pub instance_type: String,
    /// Availability zone, e.g. `us-east-1a`.
    pub zone: String,
    pub region: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("invalid metadata endpoint {endpoint}: {detail}")]
    BadEndpoint { endpoint: String, detail: String },
    #[error("metadata service: GET {path} failed: {detail} (not on EC2? set the identity overrides)")]
    Request { path: String, detail: String },
    #[error("metadata service: GET {path} answered HTTP {status}")]
    Status { path: String, status: u16 },
    #[error("metadata service: {path} is malformed: {detail}")]
    Malformed { path: String, detail: String },
}

pub const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
pub const INSTANCE_TYPE: &str = "/latest/meta-data/instance-type";
pub const ZONE: &str = "/latest/meta-data/placement/availability-zone";
pub const REGION: &str = "/latest/meta-data/placement/region";
pub const SPOT_ACTION: &str = "/latest/meta-data/spot/instance-action";
pub const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";

/// An IMDSv2 client.
#[derive(Debug, Clone)]
pub struct Imds {
    client: aws_config::imds::Client,
}

impl Imds {
    pub fn new(settings: &ImdsSettings) -> Result<Self, ImdsError> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let builder = aws_config::imds::Client::builder()
            .endpoint(&settings.endpoint)
            .map_err(|e| ImdsError::BadEndpoint { endpoint: settings.endpoint.clone(), detail: e.to_string() })?;
        let client = builder
            .token_ttl(Duration::from_secs(settings.token_ttl_secs.clamp(1, 21_600)))
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .max_attempts(settings.max_attempts.max(1))
            .build();
        Ok(Imds { client })
    }

    /// The value at `path`, or `None` when the service answers 404 (how it says "no notice").
    pub async fn get_optional(&self, path: &str) -> Result<Option<String>, ImdsError> {
        match self.client.get(path).await {
            Ok(v) => Ok(Some(v.into())),
            Err(aws_config::imds::client::error::ImdsError::ErrorResponse(r)) => match r.response().status().as_u16() {
                404 => Ok(None),
                status => Err(ImdsError::Status { path: path.into(), status }),
            },
            Err(e) => Err(ImdsError::Request {
                path: path.into(),
                detail: aws_sdk_ec2::error::DisplayErrorContext(&e).to_string(),
            }),
        }
    }

    pub async fn get(&self, path: &str) -> Result<String, ImdsError> {
        self.get_optional(path).await?.ok_or_else(|| ImdsError::Status { path: path.into(), status: 404 })
    }

    /// This instance's identity; configured overrides win and spare the request.
    pub async fn identity(&self, overrides: &IdentityOverrides) -> Result<InstanceIdentity, ImdsError> {
        let instance_id = self.value_or(&overrides.instance_id, INSTANCE_ID).await?;
        let instance_type = self.value_or(&overrides.instance_type, INSTANCE_TYPE).await?;
        let zone = self.value_or(&overrides.zone, ZONE).await?;
        let region = match &overrides.region {
            Some(r) => r.clone(),
            // Older instances lack placement/region; the zone minus its letter is the region.
            None => match self.get_optional(REGION).await? {
                Some(r) => r,
                None => region_of_zone(&zone).ok_or_else(|| ImdsError::Malformed {
                    path: ZONE.into(),
                    detail: format!("cannot derive a region from zone {zone:?}"),
                })?,
            },
        };
        Ok(InstanceIdentity { instance_id, instance_type, zone, region })
    }

    async fn value_or(&self, configured: &Option<String>, path: &str) -> Result<String, ImdsError> {
        match configured {
            Some(v) => Ok(v.clone()),
            None => self.get(path).await,
        }
    }
}

/// `us-east-1a` -> `us-east-1` (zones are the region plus one letter).
pub fn region_of_zone(zone: &str) -> Option<String> {
    let region = zone.strip_suffix(|c: char| c.is_ascii_lowercase())?;
    region.ends_with(|c: char| c.is_ascii_digit()).then(|| region.to_string())
}

#[cfg(test)]
mod tests {
    use super::region_of_zone;

    #[test]
    fn region_is_zone_without_letter() {
        assert_eq!(region_of_zone("us-east-1a").as_deref(), Some("us-east-1"));
        assert_eq!(region_of_zone("eu-central-2c").as_deref(), Some("eu-central-2"));
        assert_eq!(region_of_zone("us-east-1"), None);
        assert_eq!(region_of_zone(""), None);
    }
}
