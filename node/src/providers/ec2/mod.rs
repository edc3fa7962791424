//! The EC2 provider: EBS volumes and ENIs / secondary IPs / Elastic IPs through aws-sdk-ec2.
//!
//! It checks states itself before acting instead of trusting the API to refuse (the emulator used
//! in tests happily attaches an in-use volume to a second instance and skips the zone check), always
//! names the instance on DetachVolume, and polls with its own short interval rather than the SDK
//! waiters' 15 s minimum delay, which alone made HotSpot's moves take tens of seconds.

mod address;
mod error;
pub mod host;
pub mod imds;
pub mod mover;
pub mod node;
pub mod restorer;
pub mod steps;
mod call;
pub mod cloud_moves;
mod describe;
pub mod discovery;
mod movable;
pub mod price;
mod resources;
mod settings;
pub mod target_host;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use call::CallStats;
pub use error::ProviderError;
pub use steps::{drive_or_roll_back, AddressPlan, MountSpec, MoveFailed, MoveStep, PersistedStep, Provider, Resource, RouteSpec, StepDecodeError, VolumePlan};
pub use settings::{build_client, Ec2ClientSettings, Ec2NodeSettings, Ec2ProviderOptions};


/// [`Provider`] over the EC2 API.
#[derive(Debug, Clone)]
pub struct Ec2Provider {
    client: aws_sdk_ec2::Client,
    options: Ec2ProviderOptions,
    stats: Arc<CallStats>,
}

impl Ec2Provider {
    pub fn new(client: aws_sdk_ec2::Client, options: Ec2ProviderOptions) -> Self {
        Ec2Provider { client, options, stats: Arc::default() }
    }

    /// Count and total latency of the API calls this provider made (for benchmarks and logs).
    pub fn call_stats(&self) -> &CallStats {
        &self.stats
    }

    pub fn client(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.options.poll_interval_ms.max(1))
    }

    fn state_timeout(&self) -> Duration {
        Duration::from_millis(self.options.state_timeout_ms)
    }
}

impl Provider for Ec2Provider {
    async fn volume_step(&self, plan: &VolumePlan, at: MoveStep) -> Result<MoveStep, ProviderError> {
        movable::step(self, plan, at).await
    }

    async fn roll_back_volume(&self, plan: &VolumePlan) -> Result<(), ProviderError> {
        movable::roll_back(self, plan).await
    }

    async fn address_step(&self, plan: &AddressPlan, at: MoveStep) -> Result<MoveStep, ProviderError> {
        address::step(self, plan, at).await
    }

    async fn roll_back_address(&self, plan: &AddressPlan) -> Result<(), ProviderError> {
        address::roll_back(self, plan).await
    }

    async fn prepare_volume_on_host(&self, plan: &VolumePlan, mount: &MountSpec) -> Result<PathBuf, ProviderError> {
        let candidates = host::ec2_device_candidates_in(&self.options.device_dir, &plan.volume, &plan.device);
        let timeout = Duration::from_millis(self.options.device_timeout_ms);
        let device = host::wait_for_block_device(&candidates, timeout).await.map_err(|e| ProviderError::Host {
            op: "wait for the EBS volume's block device",
            detail: format!(
                "volume {} is attached to this instance as {}, but {} (device_timeout_ms; on Nitro, udev makes \
                 the by-id link from the NVMe serial: check `lsblk -o NAME,SERIAL`)",
                plan.volume,
                plan.device,
                match e {
                    ProviderError::Host { detail, .. } => detail,
                    other => other.to_string(),
                }
            ),
        })?;
        host::mount(&device, mount).await?;
        Ok(device)
    }

    /// Routes the address through its interface; the restore puts the address on it (after
    /// CRIU's network lock, see [`host::configure_policy_routing`]).
    async fn prepare_address_on_host(&self, route: &RouteSpec) -> Result<(), ProviderError> {
        host::configure_policy_routing(route).await
    }
}
