//! Moving a workload's EBS volume and ENI in the migration's journaled sequence, around the
//! host data path (a lab whose "instances" share one machine also moves its interface locally).

use hotspot_protocol::migration::WorkloadSpec;
use hotspot_protocol::NodeId;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::cloud_moves::{CloudMoveState, CloudMoves};
use super::error::ProviderError;
use super::target_host::HostSetup;
use super::MoveStep;
use crate::migrate::{MoveError, ResourceMover};
use crate::providers::move_state::MoveStateError;
use crate::sys::fault::{crash_point, CrashPoint};
use crate::workload::Workloads;

/// Why post-copy is refused on EC2.
pub(super) const NO_SHARED_EBS: &str = "an EBS volume attaches to one instance, it cannot be shared while pages stream; use pre-copy on EC2";

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
    fn decode(bytes: &[u8]) -> Result<Self, MoveStateError> {
        if bytes.is_empty() {
            return Ok(NodeMoveState { version: MOVE_STATE_VERSION, ..Default::default() });
        }
        let st: NodeMoveState = serde_cbor::from_slice(bytes).map_err(MoveStateError::Malformed)?;
        if st.version != MOVE_STATE_VERSION {
            return Err(MoveStateError::Version { found: st.version, reads: MOVE_STATE_VERSION });
        }
        Ok(st)
    }

    fn encode(&self) -> Vec<u8> {
        serde_cbor::to_vec(self).expect("move state serializes")
    }
}

/// Hands a cloud or move-record error to the migration as the EC2 provider's.
fn ec2<E: std::error::Error + Send + Sync + 'static>(op: &'static str) -> impl FnOnce(E) -> MoveError {
    MoveError::provider("ec2", op)
}

/// A node's [`ResourceMover`] on EC2 (or off it, the local data path `M` alone): the cloud
/// moves around the host data path: validate and detach the volume and ENI from this instance,
/// move the local data path (when configured: a lab whose "instances" share one machine),
/// attach both to the target's instance.
#[derive(Debug, Clone)]
pub struct Ec2Mover<M> {
    local: Option<M>,
    cloud: Option<CloudMoves>,
    workloads: Workloads,
}

impl<M> Ec2Mover<M> {
    /// `local`: the host data path that moves too (`None`: the cloud moves everything).
    /// `cloud`: `None` off EC2, where `local` is the whole mover.
    pub fn new(local: Option<M>, cloud: Option<CloudMoves>, workloads: Workloads) -> Self {
        Ec2Mover { local, cloud, workloads }
    }

    /// Volume id and zone of the workload's EBS volume on EC2 (the election keeps targets in
    /// that zone); `None` off EC2 or when the workload has no volume.
    pub async fn volume_zone(&self, workload: &str) -> Result<Option<(String, String)>, ProviderError> {
        match &self.cloud {
            Some(cloud) => cloud.volume_zone(workload).await,
            None => Ok(None),
        }
    }
}

impl<M: ResourceMover> ResourceMover for Ec2Mover<M> {
    async fn move_to_target(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), MoveError> {
        let Some(cloud) = &self.cloud else {
            // Off EC2 the local provider's record is the whole state (as before EC2 existed).
            return match &self.local {
                Some(local) => local.move_to_target(workload, target, state).await,
                None => Ok(()),
            };
        };
        let mut st = NodeMoveState::decode(state).map_err(ec2("reading the move record"))?;
        if !st.cloud.resolved {
            let instance = cloud.instance_of(&target.to_string()).await.map_err(ec2("looking up the target's instance"))?;
            st.cloud = cloud.plan(&workload.name, Some(&instance)).await.map_err(ec2("planning the move"))?;
            *state = st.encode();
        }
        // The frozen workload's mount went with it; a staging mount of an earlier restore here
        // must go before EBS can detach.
        cloud.release_host_volume(&self.workloads.volume_mount_dir(&workload.name)).await.map_err(ec2("releasing the volume on this host"))?;
        let local_record = st.local.clone();
        let persist = |s: &mut Vec<u8>, c: &CloudMoveState, l: &[u8]| {
            *s = NodeMoveState { version: MOVE_STATE_VERSION, cloud: c.clone(), local: l.to_vec() }.encode();
        };
        cloud.advance(&mut st.cloud, MoveStep::Detached, |c| persist(state, c, &local_record)).await.map_err(ec2("detaching from this instance"))?;
        crash_point(CrashPoint::Ec2Detach);
        if let Some(local) = &self.local {
            local.move_to_target(workload, target, &mut st.local).await?;
            *state = st.encode();
        }
        let local_record = st.local.clone();
        cloud.advance(&mut st.cloud, MoveStep::Attached, |c| persist(state, c, &local_record)).await.map_err(ec2("attaching to the target's instance"))?;
        info!(workload = %workload.name, "volume and interface attached to the target instance");
        Ok(())
    }

    async fn move_back(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), MoveError> {
        let Some(cloud) = &self.cloud else {
            return match &self.local {
                Some(local) => local.move_back(workload, state).await,
                None => Ok(()),
            };
        };
        let mut st = NodeMoveState::decode(state).map_err(ec2("reading the move record"))?;
        if let Some(local) = &self.local {
            local.move_back(workload, &mut st.local).await?;
            *state = st.encode();
        }
        cloud.roll_back(&mut st.cloud, &workload.name).await.map_err(ec2("moving back to this instance"))?;
        *state = st.encode();
        // Back on this instance: the local restore needs the volume mounted and the ENI routed
        // here, as a target would have them.
        let netns = self.workloads.get(&workload.name)?.record.netns;
        let mount_dir = self.workloads.volume_mount_dir(&workload.name);
        cloud.prepare_host(&HostSetup { workload: &workload.name, netns: &netns, mount_dir: &mount_dir }).await.map_err(ec2("preparing this instance"))?;
        Ok(())
    }

    // Post-copy shares the volume while pages stream: only the local provider can (an EBS volume
    // attaches to one instance), so on EC2 this keeps the refusing default.
    async fn move_to_target_shared(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), MoveError> {
        match (&self.cloud, &self.local) {
            (None, Some(local)) => local.move_to_target_shared(workload, target, state).await,
            (None, None) => Ok(()),
            (Some(_), _) => Err(MoveError::Unsupported { what: "post-copy", reason: NO_SHARED_EBS }),
        }
    }

    async fn move_back_shared(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), MoveError> {
        match (&self.cloud, &self.local) {
            (None, Some(local)) => local.move_back_shared(workload, state).await,
            (None, None) => Ok(()),
            (Some(_), _) => Err(MoveError::Unsupported { what: "post-copy", reason: NO_SHARED_EBS }),
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

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
