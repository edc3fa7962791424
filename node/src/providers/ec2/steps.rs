//! Moving a workload's cloud resources (its volume and its network address) between nodes.
//!
//! A migration moves resources in small **idempotent steps**. Each step takes the last persisted
//! [`MoveStep`] and returns the next one; the migration journal persists every returned step
//! ([`PersistedStep`]) before asking for the next, so after a crash the node calls the same step
//! again and the provider finds out from the cloud what already happened (it never trusts that a
//! request it sent was, or was not, carried out). When a step fails, [`drive_or_roll_back`] puts
//! the resource back on the source, which is also idempotent.
//!
//! The cloud steps (detach, attach, associate) can run on any node with the right credentials;
//! the host steps ([`Provider::prepare_volume_on_host`], [`Provider::prepare_address_on_host`])
//! run on the target, before the workload is restored there.
//!
//! The EC2 implementation is [`super::Ec2Provider`]; [`super::host`] is what the target host does
//! once the cloud is done (block device, mount, routing).

use std::future::Future;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use super::error::ProviderError;

/// Where a resource move stands. Persisted by the migration journal after every step.
///
/// The names are part of the persisted format: never rename a variant, only add new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MoveStep {
    /// Nothing changed yet; the next step validates the plan (zones, ownership) and changes nothing
    /// when it is refused.
    Planned,
    /// Validated; the next step detaches from the source (or finds it already detached).
    Detaching,
    /// Attached nowhere; the next step attaches to the target.
    Detached,
    /// Attached to the target: the cloud part is done.
    Attached,
}

impl MoveStep {
    pub fn is_done(self) -> bool {
        self == MoveStep::Attached
    }
}

/// Version of [`PersistedStep`]'s encoding.
pub const STEP_STATE_VERSION: u16 = 1;

/// A [`MoveStep`] as the journal stores it: versioned CBOR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedStep {
    pub version: u16,
    pub step: MoveStep,
}

#[derive(Debug, thiserror::Error)]
pub enum StepDecodeError {
    #[error("step state is not valid CBOR: {0}")]
    Cbor(#[from] serde_cbor::Error),
    #[error("step state has version {found}, this node reads version {STEP_STATE_VERSION}")]
    Version { found: u16 },
}

impl PersistedStep {
    pub fn encode(step: MoveStep) -> Vec<u8> {
        serde_cbor::to_vec(&PersistedStep { version: STEP_STATE_VERSION, step }).expect("a MoveStep always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<MoveStep, StepDecodeError> {
        let rec: PersistedStep = serde_cbor::from_slice(bytes)?;
        if rec.version != STEP_STATE_VERSION {
            return Err(StepDecodeError::Version { found: rec.version });
        }
        Ok(rec.step)
    }
}

/// A workload's block volume and the hosts it moves between.
///
/// On EC2 the hosts are instance ids and `volume` an EBS volume id (`vol-...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePlan {
    pub volume: String,
    pub source_host: String,
    pub target_host: String,
    /// Device name the volume is attached as (EC2: `/dev/sdf`; Nitro hosts show it as NVMe).
    pub device: String,
}

/// How a workload's network identity moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressPlan {
    /// Move a whole secondary interface (EC2: ENI `eni-...`) from one host to the other.
    Interface { interface: String, source_host: String, target_host: String, device_index: i32 },
    /// Move a secondary private IP from the source's interface to the target's (same subnet).
    SecondaryIp { ip: String, source_interface: String, target_interface: String },
    /// Re-associate a public (elastic) IP with the target's interface.
    ElasticIp { allocation: String, source_interface: String, target_interface: String },
}

/// Where the target mounts the volume, before the workload is restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub mount_point: PathBuf,
    pub fstype: String,
    /// Mount inside this process's mount namespace (the workload's), not the node's.
    pub namespace_pid: Option<u32>,
}

/// How the target routes the moved address (policy routing, so replies leave by its interface).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Interface name on the target host (EC2: the ENI shows up as e.g. `ens6`).
    pub interface: String,
    /// Address with prefix, e.g. `10.0.1.25/24`.
    pub address: String,
    /// Default gateway of the address's subnet (EC2: the subnet's first address).
    pub gateway: Option<String>,
    /// Routing table for the address's policy rule.
    pub table: u32,
    /// Configure inside this network namespace (the workload's) instead of the host's.
    pub netns: Option<String>,
}

/// Moves a workload's resources between hosts in idempotent, resumable steps.
///
/// Every method may be called again with the same arguments after a crash or an error; it then
/// finishes or confirms what the earlier call started.
pub trait Provider: Send + Sync {
    /// Performs the step after `at` and returns the new state to persist.
    fn volume_step(
        &self,
        plan: &VolumePlan,
        at: MoveStep,
    ) -> impl Future<Output = Result<MoveStep, ProviderError>> + Send;

    /// Puts the volume back on the source host, from wherever it is.
    fn roll_back_volume(&self, plan: &VolumePlan) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Performs the step after `at` and returns the new state to persist.
    fn address_step(
        &self,
        plan: &AddressPlan,
        at: MoveStep,
    ) -> impl Future<Output = Result<MoveStep, ProviderError>> + Send;

    /// Puts the address back on the source host, from wherever it is.
    fn roll_back_address(&self, plan: &AddressPlan) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// On the target, after [`MoveStep::Attached`]: waits for the block device and mounts it.
    /// Returns the device path it mounted.
    fn prepare_volume_on_host(
        &self,
        plan: &VolumePlan,
        mount: &MountSpec,
    ) -> impl Future<Output = Result<PathBuf, ProviderError>> + Send;

    /// On the target, after [`MoveStep::Attached`]: brings the interface up and routes the
    /// address through it; the restore puts the address on it.
    fn prepare_address_on_host(&self, route: &RouteSpec) -> impl Future<Output = Result<(), ProviderError>> + Send;
}

/// Which resource a driver call moves.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    Volume(&'a VolumePlan),
    Address(&'a AddressPlan),
}

impl Resource<'_> {
    async fn step<P: Provider>(&self, provider: &P, at: MoveStep) -> Result<MoveStep, ProviderError> {
        match self {
            Resource::Volume(plan) => provider.volume_step(plan, at).await,
            Resource::Address(plan) => provider.address_step(plan, at).await,
        }
    }

    async fn roll_back<P: Provider>(&self, provider: &P) -> Result<(), ProviderError> {
        match self {
            Resource::Volume(plan) => provider.roll_back_volume(plan).await,
            Resource::Address(plan) => provider.roll_back_address(plan).await,
        }
    }
}

/// A move that stopped before [`MoveStep::Attached`].
#[derive(Debug, thiserror::Error)]
#[error("resource move stopped after step {at:?}: {cause}{}", rollback_note(.rolled_back, .rollback_error))]
pub struct MoveFailed {
    /// The last step that completed (and was persisted).
    pub at: MoveStep,
    pub cause: ProviderError,
    /// True when the resource is back on the source.
    pub rolled_back: bool,
    pub rollback_error: Option<ProviderError>,
}

fn rollback_note(rolled_back: &bool, err: &Option<ProviderError>) -> String {
    match (rolled_back, err) {
        (true, _) => "; rolled back to the source".into(),
        (false, Some(e)) => format!("; ROLLBACK FAILED, resource left where it is: {e}"),
        (false, None) => "; nothing to roll back".into(),
    }
}

/// Runs steps from `from` until the resource is attached to the target, calling `persist` with
/// every new state before the next step. On a step error it rolls the resource back to the source
/// (unless nothing had changed yet) and reports what happened.
pub async fn drive_or_roll_back<P, F>(
    provider: &P,
    resource: Resource<'_>,
    from: MoveStep,
    mut persist: F,
) -> Result<(), MoveFailed>
where
    P: Provider,
    F: FnMut(MoveStep),
{
    let mut at = from;
    while !at.is_done() {
        match resource.step(provider, at).await {
            Ok(next) => {
                persist(next);
                at = next;
            }
            Err(cause) => {
                warn!(step = ?at, error = %cause, "resource move step failed");
                // Validation refusals change nothing: there is nothing to roll back.
                if at == MoveStep::Planned {
                    return Err(MoveFailed { at, cause, rolled_back: false, rollback_error: None });
                }
                let rollback = resource.roll_back(provider).await;
                info!(rolled_back = rollback.is_ok(), "resource move rolled back");
                return Err(MoveFailed { at, cause, rolled_back: rollback.is_ok(), rollback_error: rollback.err() });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_step_round_trips_and_rejects_other_versions() {
        for step in [MoveStep::Planned, MoveStep::Detaching, MoveStep::Detached, MoveStep::Attached] {
            assert_eq!(PersistedStep::decode(&PersistedStep::encode(step)).unwrap(), step);
        }
        let future = serde_cbor::to_vec(&PersistedStep { version: 99, step: MoveStep::Planned }).unwrap();
        assert!(matches!(PersistedStep::decode(&future), Err(StepDecodeError::Version { found: 99 })));
        assert!(matches!(PersistedStep::decode(b"\xff\x00"), Err(StepDecodeError::Cbor(_))));
    }
}
