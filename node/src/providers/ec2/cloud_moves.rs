//! The cloud half of a migration's resource move on EC2: which EBS volume and ENI belong to a
//! workload, which instance a mesh node is, and the resumable sequence
//! "validate → detach from the source → (host data path moves) → attach to the target".
//!
//! Nothing is configured per workload: the workload's volume and interface carry the tags
//! `hotspot-mesh:workload=<name>` and `<cluster tag>=<cluster>`, and every node tags its own
//! instance `hotspot-mesh:node=<node id>` when it starts ([`CloudMoves::tag_self`]), so a source
//! finds the target's instance id from the target's mesh identity alone.

use aws_sdk_ec2::types::{Filter, Tag};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::call::call;
use super::Ec2Provider;
use crate::providers::ec2::{AddressPlan, MoveStep, Provider, ProviderError, VolumePlan};

/// Tag key on a workload's volume and ENI naming the workload.
pub const WORKLOAD_TAG: &str = "hotspot-mesh:workload";
/// Tag key on a node's instance carrying its mesh node id.
pub const NODE_TAG: &str = "hotspot-mesh:node";
/// Device name used when a volume is found detached (nothing says where it was).
const DEFAULT_DEVICE: &str = "/dev/sdf";

/// The cloud part of one workload's move, persisted (inside the migration journal's provider
/// state) after every step. `None`: the workload has no such resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudMoveState {
    pub volume: Option<(VolumePlan, MoveStep)>,
    pub address: Option<(AddressPlan, MoveStep)>,
    /// Plans resolved (possibly to "nothing to move").
    pub resolved: bool,
}

impl CloudMoveState {
    /// CBOR, as the migration journal keeps it (inside the daemon mover's versioned record).
    pub fn encode(&self) -> Vec<u8> {
        serde_cbor::to_vec(self).expect("move state serializes")
    }
}

/// EC2 moves of this node (the source of the moves it makes).
#[derive(Debug, Clone)]
pub struct CloudMoves {
    pub provider: Ec2Provider,
    /// This node's instance.
    pub instance_id: String,
    pub cluster_tag: String,
    pub cluster: String,
}

impl CloudMoves {
    /// Tags this node's instance with its mesh node id (idempotent: CreateTags overwrites).
    pub async fn tag_self(&self, node_id: &str) -> Result<(), ProviderError> {
        let req = self
            .provider
            .client
            .create_tags()
            .resources(&self.instance_id)
            .tags(Tag::builder().key(NODE_TAG).value(node_id).build());
        call(&self.provider.stats, "CreateTags", req.send()).await.map(drop)
    }

    /// The running instance tagged with mesh node id `node_id`.
    pub async fn instance_of(&self, node_id: &str) -> Result<String, ProviderError> {
        let req = self
            .provider
            .client
            .describe_instances()
            .filters(tag_filter(NODE_TAG, node_id))
            .filters(Filter::builder().name("instance-state-name").values("running").build());
        let out = call(&self.provider.stats, "DescribeInstances", req.send()).await?;
        let ids: Vec<&str> = out.reservations().iter().flat_map(|r| r.instances()).filter_map(|i| i.instance_id()).collect();
        match ids.as_slice() {
            [one] => Ok(one.to_string()),
            [] => Err(ProviderError::NotFound { what: "instance tagged hotspot-mesh:node", id: node_id.into() }),
            many => Err(ProviderError::Malformed {
                op: "DescribeInstances",
                detail: format!("{} running instances claim node {node_id}: {}", many.len(), many.join(", ")),
            }),
        }
    }

    pub(super) fn workload_filters(&self, workload: &str) -> [Filter; 2] {
        [tag_filter(WORKLOAD_TAG, workload), tag_filter(&self.cluster_tag, &self.cluster)]
    }

    /// The workload's volume and ENI plans toward `target`; `None` where it has none. Without a
    /// target (planning a rollback), the target is whichever other instance holds the resource.
    pub async fn plan(&self, workload: &str, target: Option<&str>) -> Result<CloudMoveState, ProviderError> {
        let p = &self.provider;
        let [by_name, by_cluster] = self.workload_filters(workload);
        let req = p.client.describe_volumes().filters(by_name.clone()).filters(by_cluster.clone());
        let vols = call(&p.stats, "DescribeVolumes", req.send()).await?;
        let volume = match vols.volumes() {
            [] => None,
            [v] => {
                let id = v.volume_id().unwrap_or_default().to_string();
                let holder = v.attachments().iter().filter_map(|a| a.instance_id()).find(|i| *i != self.instance_id);
                let target_host = target.or(holder).unwrap_or_default().to_string();
                let device = v
                    .attachments()
                    .iter()
                    .find(|a| a.instance_id() == Some(self.instance_id.as_str()))
                    .and_then(|a| a.device())
                    .unwrap_or(DEFAULT_DEVICE)
                    .to_string();
                let plan = VolumePlan { volume: id, source_host: self.instance_id.clone(), target_host, device };
                Some((plan, MoveStep::Planned))
            }
            many => return Err(ambiguous("volumes", workload, many.iter().filter_map(|v| v.volume_id()))),
        };
        let req = p.client.describe_network_interfaces().filters(by_name).filters(by_cluster);
        let enis = call(&p.stats, "DescribeNetworkInterfaces", req.send()).await?;
        let address = match enis.network_interfaces() {
            [] => None,
            [e] => {
                let holder = e.attachment().and_then(|a| a.instance_id()).filter(|i| *i != self.instance_id);
                let target_host = target.or(holder).unwrap_or_default().to_string();
                let plan = AddressPlan::Interface {
                    interface: e.network_interface_id().unwrap_or_default().to_string(),
                    source_host: self.instance_id.clone(),
                    target_host,
                    device_index: e.attachment().and_then(|a| a.device_index()).unwrap_or(1),
                };
                Some((plan, MoveStep::Planned))
            }
            many => return Err(ambiguous("network interfaces", workload, many.iter().filter_map(|e| e.network_interface_id()))),
        };
        info!(workload, volume = ?volume.as_ref().map(|v| &v.0.volume), interface = ?address.as_ref().map(|a| &a.0), "cloud resources of the workload");
        Ok(CloudMoveState { volume, address, resolved: true })
    }

    /// Runs every resource's steps up to `until` (`Detached` or `Attached`), calling `persist`
    /// after each one. Both are validated before either is detached, so a refusal changes
    /// nothing. A failure leaves the state at the last completed step: the caller's rollback
    /// ([`CloudMoves::roll_back`]) takes it from there.
    pub async fn advance(
        &self,
        st: &mut CloudMoveState,
        until: MoveStep,
        mut persist: impl FnMut(&CloudMoveState),
    ) -> Result<(), ProviderError> {
        for stop in [MoveStep::Detaching, until] {
            while let Some((plan, at)) = st.volume.clone().filter(|(_, at)| rank(*at) < rank(stop)) {
                st.volume = Some((plan.clone(), self.provider.volume_step(&plan, at).await?));
                persist(st);
            }
            while let Some((plan, at)) = st.address.clone().filter(|(_, at)| rank(*at) < rank(stop)) {
                st.address = Some((plan.clone(), self.provider.address_step(&plan, at).await?));
                persist(st);
            }
        }
        Ok(())
    }

    /// Puts both resources back on this node's instance, from wherever they are (world-driven
    /// and idempotent). Without recorded plans (a crash before any was journaled) it plans again.
    pub async fn roll_back(&self, st: &mut CloudMoveState, workload: &str) -> Result<(), ProviderError> {
        if !st.resolved {
            // The target is whoever holds a resource now; rolling back only needs the source.
            *st = self.plan(workload, None).await?;
        }
        if let Some((plan, _)) = &st.volume {
            self.provider.roll_back_volume(plan).await?;
        }
        if let Some((plan, _)) = &st.address {
            self.provider.roll_back_address(plan).await?;
        }
        info!(workload, "cloud resources back on the source instance");
        Ok(())
    }
}

/// Order of the steps (a step never goes back).
fn rank(step: MoveStep) -> u8 {
    match step {
        MoveStep::Planned => 0,
        MoveStep::Detaching => 1,
        MoveStep::Detached => 2,
        MoveStep::Attached => 3,
    }
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder().name(format!("tag:{key}")).values(value).build()
}

fn ambiguous<'a>(what: &str, workload: &str, ids: impl Iterator<Item = &'a str>) -> ProviderError {
    ProviderError::Malformed {
        op: "resolve workload resources",
        detail: format!("several {what} are tagged {WORKLOAD_TAG}={workload}: {}", ids.collect::<Vec<_>>().join(", ")),
    }
}
