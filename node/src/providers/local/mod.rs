//! The local resource provider: moves a workload's disk and network identity between nodes of
//! a one-machine cluster (network namespaces on a bridge, or Vagrant boxes sharing a disk dir).
//!
//! - The volume is an ext4 image file on a loop device ([`loopdev`]), mounted inside the
//!   workload's own mount namespace (see `StartOptions::volume_device`). Moving it: the source
//!   lets go of the device (its workload is already frozen and gone after the final dump), the
//!   target attaches the image and mounts it at its `Workloads::volume_mount_dir`, from where
//!   the restore binds it back into the workload. Like an EBS volume it is attached to one node
//!   at a time: attaching waits until the source's device is really gone.
//! - The service address lives on `eth0`, one end of a veth whose other end stays on the LAN
//!   (the bridge): the stand-in for an ENI. Moving it moves `eth0` (same MAC, down, no address)
//!   from the source's workload namespace into the target's ([`restore_netns`]); the target's
//!   restore installs CRIU's network lock and brings the address up.
//!
//! Nodes find each other's state directories in a [`ClusterDir`] (one small versioned record per
//! node): the local analogue of the EC2 API knowing instance ids.
//!
//! Every step checks the world before acting, so repeating one that already happened does
//! nothing; the steps done are also kept in the caller's journaled `state` (versioned CBOR).


use crate::sys::names::restore_netns;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hotspot_protocol::migration::WorkloadSpec;
use hotspot_protocol::NodeId;
use serde::{Deserialize, Serialize};

use crate::migrate::{MoveError, ResourceMover};
use crate::sys::netns;
use crate::workload::{NetError, Workloads};
pub use crate::sys::loopdev::LoopError;
use crate::sys::loopdev;
use crate::providers::move_state::{MoveState, Step};

/// Format of a node's record in the cluster directory.
pub const NODE_ENTRY_FORMAT: u32 = 1;
/// Default cluster directory on one machine.
pub const DEFAULT_CLUSTER_DIR: &str = "/run/hotspot-mesh/local-cluster";
/// How long a detach may wait for the kernel to release a loop device.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LocalProviderError {
    #[error("node {0} is not in the local cluster directory (is it running with the local provider?)")]
    UnknownNode(String),
    #[error("cluster directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cluster record {path}: {message}")]
    BadEntry { path: PathBuf, message: String },
    #[error("workload {0} has no volume image (WorkloadSpec::volume)")]
    NoVolume(String),
    #[error("service interface of {workload} is in neither {source_ns} nor {target_ns}")]
    InterfaceLost { workload: String, source_ns: String, target_ns: String },
    #[error(transparent)]
    State(#[from] crate::providers::move_state::MoveStateError),
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Workload(#[from] crate::workload::WorkloadError),
}

/// One node as the cluster directory knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub format: u32,
    pub node_id: String,
    pub name: String,
    /// The node's workload state directory (records, volume mount points).
    pub state_dir: PathBuf,
}

impl NodeEntry {
    pub fn new(node_id: &NodeId, name: &str, state_dir: &Path) -> Self {
        NodeEntry { format: NODE_ENTRY_FORMAT, node_id: node_id.to_string(), name: name.into(), state_dir: state_dir.into() }
    }
    pub fn workloads(&self) -> Workloads {
        Workloads::new(&self.state_dir)
    }
}

/// The directory where nodes of one machine register (`<node id>.json`).
#[derive(Debug, Clone)]
pub struct ClusterDir {
    dir: PathBuf,
}

impl ClusterDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ClusterDir { dir: dir.into() }
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> LocalProviderError + '_ {
        let path = path.to_path_buf();
        move |source| LocalProviderError::Io { path, source }
    }

    /// Records `entry` (atomically: write then rename), and forgets entries of nodes whose state
    /// directory is gone: such a node holds no volume or workload any more, and its entry would
    /// only litter the directory (test runs create and delete hundreds of nodes).
    pub fn register(&self, entry: &NodeEntry) -> Result<(), LocalProviderError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        self.prune_gone();
        let path = self.dir.join(format!("{}.json", entry.node_id));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(entry).expect("entry serializes")).map_err(self.io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(self.io(&path))
    }

    fn prune_gone(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return };
        for path in dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")) {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let Ok(entry) = serde_json::from_slice::<NodeEntry>(&bytes) else { continue };
            if !entry.state_dir.exists() {
                tracing::debug!(node = %entry.node_id, name = %entry.name, "forgetting cluster entry of a node whose state dir is gone");
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    pub fn lookup(&self, node: &NodeId) -> Result<NodeEntry, LocalProviderError> {
        let path = self.dir.join(format!("{node}.json"));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LocalProviderError::UnknownNode(node.to_string())),
            Err(e) => return Err(self.io(&path)(e)),
        };
        let entry: NodeEntry = serde_json::from_slice(&bytes).map_err(|e| LocalProviderError::BadEntry { path: path.clone(), message: e.to_string() })?;
        if entry.format > NODE_ENTRY_FORMAT {
            return Err(LocalProviderError::BadEntry { path, message: format!("format {} is newer than {NODE_ENTRY_FORMAT}; upgrade this node", entry.format) });
        }
        Ok(entry)
    }
}

/// The local provider of one node (the source of the moves it makes).
#[derive(Debug, Clone)]
pub struct LocalProvider {
    cluster: ClusterDir,
    me: NodeEntry,
    /// False when something else moves volumes (the EC2 provider in a lab): interfaces only.
    moves_volumes: bool,
}

impl LocalProvider {
    pub fn new(cluster: ClusterDir, me: NodeEntry) -> Self {
        LocalProvider { cluster, me, moves_volumes: true }
    }

    /// This provider moving only service interfaces: the volume is the cloud's (an EBS volume
    /// the target finds attached and mounts itself).
    pub fn without_volumes(self) -> Self {
        LocalProvider { moves_volumes: false, ..self }
    }

    /// What a daemon calls at start: registers this node in `cluster` (so sources can hand it
    /// volumes and addresses) and returns its provider.
    pub fn join(cluster: ClusterDir, node_id: &NodeId, name: &str, state_dir: &Path) -> Result<Self, LocalProviderError> {
        // The state dir must exist before the entry does: registrations prune entries without one.
        std::fs::create_dir_all(state_dir).map_err(|source| LocalProviderError::Io { path: state_dir.to_path_buf(), source })?;
        let me = NodeEntry::new(node_id, name, state_dir);
        cluster.register(&me)?;
        Ok(LocalProvider { cluster, me, moves_volumes: true })
    }

    /// Where workload `name`'s service interface is on this node: its record's namespace.
    fn source_netns(&self, name: &str) -> Result<String, LocalProviderError> {
        Ok(self.me.workloads().get(name)?.netns().to_string())
    }

    /// The volume's image, when the workload's volume is a loop device: the handle its record
    /// keeps, else the spec's. A host-directory volume stays where it is (one machine shares it).
    fn volume_image(&self, spec: &WorkloadSpec) -> Option<PathBuf> {
        if !self.moves_volumes {
            return None;
        }
        match self.me.workloads().get(&spec.name) {
            Ok(w) if !w.record.volume_on_device => None,
            Ok(w) => w.record.volume_handle.or_else(|| spec.volume.clone()).map(PathBuf::from),
            Err(_) => spec.volume.as_deref().map(PathBuf::from).filter(|p| p.is_file()),
        }
    }

    /// Lets go of the volume on `from`, then attaches and mounts it on `to`. `shared` (post-copy):
    /// the frozen workload on `from` still holds its mount until its memory was fetched, so the
    /// same loop device is mounted on `to` as well instead of waiting for its release. One
    /// device means one filesystem instance in the kernel, so the two mounts never disagree.
    fn hand_over_volume(image: &Path, name: &str, from: &NodeEntry, to: &NodeEntry, shared: bool) -> Result<(), LocalProviderError> {
        loopdev::unmount(&from.workloads().volume_mount_dir(name))?;
        let target_dir = to.workloads().volume_mount_dir(name);
        // Already attached and mounted on the target (a repeated step): nothing to release.
        if !shared && !crate::sys::mounts::is_mount_point(&target_dir) {
            loopdev::detach(image, RELEASE_WAIT)?;
        }
        let device = loopdev::attach(image)?;
        loopdev::mount(&device, &target_dir)?;
        Ok(())
    }

    /// Moves `eth0` from `from_ns` to `to_ns` unless it is there already.
    fn hand_over_address(workload: &str, from_ns: &str, to_ns: &str) -> Result<(), LocalProviderError> {
        if netns::has_service_if(to_ns) {
            return Ok(());
        }
        if !netns::has_service_if(from_ns) {
            return Err(LocalProviderError::InterfaceLost { workload: workload.into(), source_ns: from_ns.into(), target_ns: to_ns.into() });
        }
        if !netns::exists(to_ns) {
            netns::create(to_ns)?;
        }
        netns::move_service_if(from_ns, to_ns)?;
        Ok(())
    }

    /// The blocking body of [`ResourceMover::move_to_target`].
    pub fn move_to_target_blocking(&self, spec: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), LocalProviderError> {
        self.move_to_target_with(spec, target, state, false)
    }

    fn move_to_target_with(&self, spec: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>, shared: bool) -> Result<(), LocalProviderError> {
        let mut st = MoveState::decode(state)?;
        let to = self.cluster.lookup(target)?;
        st.target = Some(to.name.clone());
        let span = tracing::info_span!("local_move", workload = %spec.name, target = %to.name);
        let _enter = span.enter();
        if let Some(image) = self.volume_image(spec) {
            Self::hand_over_volume(&image, &spec.name, &self.me, &to, shared)?;
            st.mark(Step::VolumeOnTarget);
            *state = st.encode();
            tracing::info!(image = %image.display(), "volume attached on target");
        }
        if spec.address.is_some() {
            Self::hand_over_address(&spec.name, &self.source_netns(&spec.name)?, &restore_netns(&spec.name, &to.node_id))?;
            st.mark(Step::AddressOnTarget);
            *state = st.encode();
            tracing::info!(address = ?spec.address, "service address moved to target");
        }
        Ok(())
    }

    /// The blocking body of [`ResourceMover::move_back`]: undoes whatever moved, in reverse.
    /// Works from the world, not only from `state`: a source that crashed in the middle of
    /// [`Self::move_to_target_blocking`] may have journaled an empty state.
    pub fn move_back_blocking(&self, spec: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), LocalProviderError> {
        self.move_back_with(spec, state, false)
    }

    fn move_back_with(&self, spec: &WorkloadSpec, state: &mut Vec<u8>, shared: bool) -> Result<(), LocalProviderError> {
        let mut st = MoveState::decode(state)?;
        // By name *and* by what it holds: the cluster directory may keep entries of earlier
        // nodes with the same name (a node that died without removing its entry).
        let holder = match &st.target {
            Some(name) => {
                let named: Vec<NodeEntry> = self.entries()?.into_iter().filter(|e| &e.name == name && e.node_id != self.me.node_id).collect();
                let holding = named.iter().find(|e| Self::holds(spec, e)).cloned();
                holding.or_else(|| named.into_iter().next())
            }
            None => self.find_holder(spec)?,
        };
        let Some(target) = holder else {
            if st.target.is_some() {
                return Err(LocalProviderError::UnknownNode(format!("{} (holding the resources of {})", st.target.unwrap_or_default(), spec.name)));
            }
            // Nothing ever moved, but a stopped workload's volume was mounted only inside its
            // own (now gone) mount namespace: stage it here so the local restore can bind it.
            return self.stage_volume_here(spec);
        };
        let span = tracing::info_span!("local_move_back", workload = %spec.name, target = %target.name);
        let _enter = span.enter();
        if spec.address.is_some() {
            let target_ns = restore_netns(&spec.name, &target.node_id);
            Self::hand_over_address(&spec.name, &target_ns, &self.source_netns(&spec.name)?)?;
            // The target's namespace holds nothing of ours now but maybe a stale network lock.
            netns::delete(&target_ns)?;
            st.unmark(Step::AddressOnTarget);
            *state = st.encode();
        }
        if let Some(image) = self.volume_image(spec) {
            Self::hand_over_volume(&image, &spec.name, &target, &self.me, shared)?;
            st.unmark(Step::VolumeOnTarget);
            *state = st.encode();
        }
        tracing::info!("resources back on the source");
        Ok(())
    }

    /// Attaches and mounts the workload's device-backed volume at this node's staging
    /// directory unless it is mounted there already (idempotent).
    fn stage_volume_here(&self, spec: &WorkloadSpec) -> Result<(), LocalProviderError> {
        let Some(image) = self.volume_image(spec) else { return Ok(()) };
        let dir = self.me.workloads().volume_mount_dir(&spec.name);
        if crate::sys::mounts::is_mount_point(&dir) {
            return Ok(());
        }
        let device = loopdev::attach(&image)?;
        loopdev::mount(&device, &dir)?;
        tracing::info!(workload = %spec.name, image = %image.display(), device = %device.display(), "volume staged on this node for a local restore");
        Ok(())
    }

    /// Every node in the cluster directory.
    fn entries(&self) -> Result<Vec<NodeEntry>, LocalProviderError> {
        let dir = std::fs::read_dir(&self.cluster.dir).map_err(self.cluster.io(&self.cluster.dir))?;
        Ok(dir
            .flatten()
            .filter_map(|e| e.path().file_stem()?.to_str()?.parse::<NodeId>().ok())
            .filter_map(|id| self.cluster.lookup(&id).ok())
            .collect())
    }

    /// The other node holding this workload's volume or address, if any.
    fn find_holder(&self, spec: &WorkloadSpec) -> Result<Option<NodeEntry>, LocalProviderError> {
        Ok(self.entries()?.into_iter().filter(|e| e.node_id != self.me.node_id).find(|e| Self::holds(spec, e)))
    }

    /// Whether node `e` holds this workload's volume or service address.
    fn holds(spec: &WorkloadSpec, e: &NodeEntry) -> bool {
        crate::sys::mounts::is_mount_point(&e.workloads().volume_mount_dir(&spec.name)) || netns::has_service_if(&restore_netns(&spec.name, &e.node_id))
    }
}

impl LocalProvider {
    async fn move_async(&self, workload: &WorkloadSpec, target: Option<NodeId>, state: &mut Vec<u8>, shared: bool) -> Result<(), MoveError> {
        let op = match (target.is_some(), shared) {
            (true, false) => "moving to the target",
            (false, false) => "moving back",
            (true, true) => "sharing the volume with the target",
            (false, true) => "taking the shared volume back",
        };
        let (me, spec, mut st) = (self.clone(), workload.clone(), std::mem::take(state));
        let (st, result) = tokio::task::spawn_blocking(move || {
            let r = match target {
                Some(t) => me.move_to_target_with(&spec, &t, &mut st, shared),
                None => me.move_back_with(&spec, &mut st, shared),
            };
            (st, r)
        })
        .await?;
        *state = st;
        result.map_err(MoveError::provider("local", op))
    }
}

impl ResourceMover for LocalProvider {
    async fn move_to_target(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), MoveError> {
        self.move_async(workload, Some(*target), state, false).await
    }

    async fn move_back(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), MoveError> {
        self.move_async(workload, None, state, false).await
    }

    async fn move_to_target_shared(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), MoveError> {
        self.move_async(workload, Some(*target), state, true).await
    }

    async fn move_back_shared(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), MoveError> {
        self.move_async(workload, None, state, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registering_forgets_nodes_whose_state_dir_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let cluster = ClusterDir::new(tmp.path().join("cluster"));
        let alive_dir = tmp.path().join("alive");
        std::fs::create_dir_all(&alive_dir).unwrap();
        let (alive, gone, new) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
        cluster.register(&NodeEntry::new(&alive, "node1", &alive_dir)).unwrap();
        cluster.register(&NodeEntry::new(&gone, "node2", &tmp.path().join("deleted"))).unwrap();
        assert_eq!(cluster.lookup(&gone).unwrap().name, "node2", "an entry is never pruned by its own registration");
        cluster.register(&NodeEntry::new(&new, "node2", &alive_dir)).unwrap();
        assert!(matches!(cluster.lookup(&gone), Err(LocalProviderError::UnknownNode(_))));
        assert_eq!(cluster.lookup(&alive).unwrap().name, "node1");
        assert_eq!(cluster.lookup(&new).unwrap().name, "node2");
    }
}
