//! The daemon's migration subsystem: the QUIC endpoint that receives images and answers
//! migration control (ALPN-dispatched), the target service, recovery of journaled migrations
//! on start, and `Migrate` requests from the control socket (progress streamed back).
//!
//! Workloads: the daemon reads the same state directory as `hotspot-node workload`
//! (`workloads_dir`, default `/var/lib/hotspot-node`, env `HOTSPOT_STATE_DIR` for both), so a
//! workload started with the CLI is advertised and migratable; restored ones are written there.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hotspot_protocol::handoff::{recover_target, TargetPhase, TargetRecovery};
use hotspot_protocol::migration::{MigrationId, MigrationMode, WorkloadSpec};
use hotspot_protocol::NodeId;
use hotspot_transfer::endpoint::EndpointError;
use hotspot_transfer::identity::NodeKey;
use hotspot_transfer::{ReceiveOptions, Store, StoreError, StoreOptions, TrustSet};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::Config;
use super::providers::{node_mover, node_restorer, select, NodeMover, SelectError};
use super::api::{Attempt, Reply, ReserveParams};
use super::reservations::{BookReservations, ReserveError};
use super::service::NodeService;
use crate::criu::Criu;
use crate::migrate::journal::{Journal, JournalError, MigrationRecord, Role};
use crate::mesh::{MeshClient, MeshError};
use crate::migrate::checkpointer::{images_root, needs_of, WorkloadCheckpointer, WorkloadRestorer};
use crate::migrate::precopy_images::PrecopyImages;
use crate::migrate::link::QuicLink;
use crate::migrate::serve;
use crate::migrate::source::{self, Parts, SourcePlan};
use crate::migrate::target::TargetService;
use crate::migrate::{recovery, LinkError, MigrateError, Progress};
use crate::providers::ec2::ProviderError;
use crate::workload::{WorkloadError, Workloads};

/// How long a reservation for a migration lives before the target may give it away.
const RESERVATION_TTL_MS: u64 = 300_000;

/// Why the migration subsystem could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("journal database {path}: {source}")]
    Database { path: PathBuf, #[source] source: sled::Error },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("transfer_listen {addr:?}: {source}")]
    ListenAddr { addr: String, #[source] source: std::net::AddrParseError },
    #[error("transfer endpoint on {addr}: {source} (another node on this host? choose a port with --transfer-listen)")]
    Receiver { addr: SocketAddr, #[source] source: EndpointError },
    #[error("transfer endpoint address: {0}")]
    LocalAddr(#[source] std::io::Error),
    #[error("chunk store: {0}")]
    Store(#[from] StoreError),
    #[error("sending endpoint: {0}")]
    Sender(#[source] EndpointError),
    #[error(transparent)]
    Provider(#[from] SelectError),
}

/// Why no link to a target could be made.
#[derive(Debug, thiserror::Error)]
pub enum TargetLinkError {
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("the target left the mesh")]
    TargetLeft,
    #[error("{name} advertises no transfer address")]
    NoTransferAddr { name: String },
    #[error("{name} advertises a bad transfer address: {source}")]
    BadTransferAddr { name: String, #[source] source: std::net::AddrParseError },
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Why a `Migrate` request (or the recovery of a journaled migration) failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error("workload {0} is not running on this node")]
    NotRunning(String),
    #[error("post-copy is not available on this node: {hint}")]
    NoPostCopy { hint: String },
    #[error("finding the zone of the workload's volume: {0}")]
    VolumeZone(#[source] ProviderError),
    #[error(transparent)]
    Reserve(#[from] ReserveError),
    #[error("no target granted a reservation ({})", attempts_text(.attempts))]
    NoReservation { attempts: Vec<Attempt> },
    #[error(transparent)]
    Link(#[from] TargetLinkError),
    #[error("picking a migration id: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

fn attempts_text(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return "no eligible peer".into();
    }
    attempts.iter().map(|a| format!("{}: {}", a.name, a.outcome)).collect::<Vec<_>>().join("; ")
}

pub struct Migrations {
    service: Arc<NodeService>,
    mesh: MeshClient,
    key: NodeKey,
    trust: TrustSet,
    sender: quinn::Endpoint,
    journal: Journal,
    workloads: Workloads,
    checkpointer: WorkloadCheckpointer,
    mover: NodeMover,
    images_root: PathBuf,
    busy: Mutex<HashSet<String>>,
    cancel: CancellationToken,
    /// Cancelled once the node must leave (spot notice): see [`Migrations::hurry`].
    hurry: CancellationToken,
}

/// Starts the subsystem's tasks in `tasks`. `None` (with a warning) when this host cannot
/// checkpoint (no usable CRIU): the node still meshes and answers reservations.
pub fn start(
    config: &Config,
    key: &NodeKey,
    service: Arc<NodeService>,
    mesh: MeshClient,
    ec2: Option<&crate::providers::ec2::node::Ec2Node>,
    tasks: &mut JoinSet<()>,
    cancel: CancellationToken,
) -> Result<Option<Arc<Migrations>>, StartError> {
    let criu = match Criu::detect() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            warn!(error = %e, "CRIU unusable: this node can neither send nor receive workloads");
            return Ok(None);
        }
    };
    // Own cgroup parent: several nodes may share a host (the local cluster).
    let workloads = Workloads::new(&config.workloads_dir).with_cgroup_parent(format!("hotspot-{}", &service.node().to_string()[..8]));
    let db_path = config.data_dir.join("journal");
    let db = sled::open(&db_path).map_err(|source| StartError::Database { path: db_path, source })?;
    let journal = Journal::open(&db)?;
    let trust = service.trust();
    let listen: SocketAddr =
        config.transfer_listen.parse().map_err(|source| StartError::ListenAddr { addr: config.transfer_listen.clone(), source })?;
    let receiver =
        hotspot_transfer::endpoint::receiver(key, trust.clone(), listen).map_err(|source| StartError::Receiver { addr: listen, source })?;
    let bound = receiver.local_addr().map_err(StartError::LocalAddr)?;
    let advertise = config.transfer_advertise.clone().or_else(|| (!bound.ip().is_unspecified()).then(|| bound.to_string()));
    if advertise.is_none() {
        warn!(%bound, "transfer endpoint listens on an unspecified address and transfer_advertise is unset: peers cannot send workloads here");
    }
    service.set_migration_info(workloads.clone(), advertise.clone());
    // No fsync on the migration path: an image is restored the moment it is complete, and a
    // target that crashes first is rolled back by the source (the journal decides, not the
    // image). Chunks are verified by blake3 whenever they are read back, so a torn store after
    // a power loss costs a re-fetch, not a corrupt restore. fsync of a GiB image cost seconds of
    // freeze on a loaded disk.
    let store = Arc::new(Store::open(&config.data_dir.join("chunks"), StoreOptions { sync: false, ..StoreOptions::default() })?);
    let mut receive = ReceiveOptions::new(config.data_dir.join("incoming"));
    receive.sync = false;
    let precopy_images = PrecopyImages::default();
    receive.parent = Some(precopy_images.lookup());
    let sender = hotspot_transfer::endpoint::sender(key, trust.clone(), None, bound).map_err(StartError::Sender)?;

    let restorer = WorkloadRestorer {
        workloads: workloads.clone(),
        criu: criu.clone(),
        node: service.node(),
    };
    // The resource provider (`provider` in the config): local cluster directory or LAN.
    let (mover, restorer) = select(config, &service, &workloads, restorer, tasks, cancel.clone())?;
    // On EC2 the restore first mounts the arrived volume and routes the ENI.
    let restorer = node_restorer(restorer, ec2, service.node(), workloads.clone());
    let target = Arc::new(TargetService { journal: journal.clone(), restorer, reservations: BookReservations(service.clone()) });
    recover_targets(&target.journal, &workloads, &service);

    let (done_tx, done_rx) = mpsc::channel(16);
    let (ctl_tx, ctl_rx) = mpsc::channel(16);
    tasks.spawn(hotspot_transfer::serve_dispatch(receiver, store, receive, done_tx, Some(ctl_tx), cancel.clone()));
    tasks.spawn(serve::record_images(done_rx, target.clone(), precopy_images));
    tasks.spawn(serve::serve_control(ctl_rx, target, cancel.clone()));
    tasks.spawn(sync_trust(mesh.clone(), trust.clone(), cancel.clone()));
    info!(transfer = %bound, advertised = ?advertise, workloads = %config.workloads_dir.display(), "migration endpoint up");

    // Post-copy's page relay listens on the address peers reach this node's transfers at.
    let page_relay_ip = advertise.as_deref().and_then(|a| a.parse::<SocketAddr>().ok()).map_or(bound.ip(), |a| a.ip());
    let mover = node_mover(mover, ec2, workloads.clone());
    let m = Arc::new(Migrations {
        service,
        mesh,
        key: key.clone(),
        trust,
        sender,
        journal,
        workloads: workloads.clone(),
        checkpointer: WorkloadCheckpointer::new(workloads.clone(), criu, page_relay_ip),
        mover,
        images_root: images_root(&config.data_dir),
        busy: Mutex::new(HashSet::new()),
        cancel,
        hurry: CancellationToken::new(),
    });
    tasks.spawn(m.clone().recover_sources());
    Ok(Some(m))
}

/// Peers in the mesh may open transfer and control connections to us, and we to them.
async fn sync_trust(mesh: MeshClient, trust: TrustSet, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(peers) = mesh.peers().await {
            peers.iter().for_each(|p| trust.insert(p.advert.node));
        }
    }
}

/// Target-side records left by a crash: see `hotspot_protocol::handoff::recover_target`.
fn recover_targets(journal: &Journal, workloads: &Workloads, service: &NodeService) {
    for rec in journal.unfinished().into_iter().flatten() {
        let Role::Target(phase) = rec.role else { continue };
        let running = workloads.get(&rec.workload).is_ok_and(|w| w.is_running());
        let to = match recover_target(phase) {
            TargetRecovery::Abandon => TargetPhase::Abandoned,
            TargetRecovery::CheckRestored if running => TargetPhase::Running,
            TargetRecovery::CheckRestored => TargetPhase::Abandoned,
            TargetRecovery::Adopt | TargetRecovery::Nothing => continue,
        };
        if to == TargetPhase::Abandoned {
            if let Some(r) = rec.reservation {
                let _ = service.book().release(&r);
            }
        }
        info!(migration = %rec.migration, workload = %rec.workload, ?phase, ?to, "recovered incoming migration");
        let _ = journal.set_target_phase(&rec.migration, to, crate::sys::clock::now_ms());
    }
}

impl Migrations {
    async fn link_to(&self, node: NodeId, progress: mpsc::Sender<Progress>) -> Result<QuicLink, TargetLinkError> {
        let peers = self.mesh.peers().await?;
        let advert = peers.iter().find(|p| p.advert.node == node).map(|p| &p.advert).ok_or(TargetLinkError::TargetLeft)?;
        let addr: SocketAddr = advert
            .transfer_addr
            .as_deref()
            .ok_or_else(|| TargetLinkError::NoTransferAddr { name: advert.name.clone() })?
            .parse()
            .map_err(|source| TargetLinkError::BadTransferAddr { name: advert.name.clone(), source })?;
        Ok(QuicLink::new(self.sender.clone(), &self.key, self.trust.clone(), node, addr, self.mesh.clone(), progress)?)
    }

    /// The link a restarted source recovers through: via the target's advert, or, until gossip
    /// brought it back (a fast restart can take the mesh a while), at the journaled address.
    async fn recovery_link(&self, rec: &MigrationRecord, progress: mpsc::Sender<Progress>) -> Result<QuicLink, TargetLinkError> {
        match self.link_to(rec.peer, progress.clone()).await {
            Ok(link) => Ok(link),
            Err(e) => match rec.peer_addr.as_deref().and_then(|a| a.parse::<SocketAddr>().ok()) {
                Some(addr) => Ok(QuicLink::new(self.sender.clone(), &self.key, self.trust.clone(), rec.peer, addr, self.mesh.clone(), progress)?),
                None => Err(e),
            },
        }
    }

    fn parts<'a>(&'a self, link: &'a QuicLink, progress: &'a mpsc::Sender<Progress>, cancel: &'a CancellationToken) -> Parts<'a, WorkloadCheckpointer, QuicLink, NodeMover> {
        Parts { journal: &self.journal, checkpointer: &self.checkpointer, link, mover: &self.mover, progress, cancel, hurry: &self.hurry }
    }

    /// The node must be gone soon: from now on migrations freeze at once, without pre-copy
    /// (the whole image travels once, the shortest way out), and a pre-copy round under way is
    /// cut short. There is no way back: a node that got a notice is reclaimed.
    pub fn hurry(&self) {
        if !self.hurry.is_cancelled() {
            info!("node must leave: migrations skip pre-copy from now on");
        }
        self.hurry.cancel();
    }

    /// Runs one `Migrate` request, streaming progress to `out`; the last line is the outcome.
    pub async fn migrate(&self, workload: String, to: Option<String>, out: mpsc::Sender<Reply>) {
        self.migrate_mode(workload, to, MigrationMode::PreCopy, out).await
    }

    /// [`Migrations::migrate`] in the given mode (post-copy on request only).
    pub async fn migrate_mode(&self, workload: String, to: Option<String>, mode: MigrationMode, out: mpsc::Sender<Reply>) {
        if !self.busy.lock().unwrap_or_else(|p| p.into_inner()).insert(workload.clone()) {
            let _ = out.send(Reply::Error { message: format!("{workload} is already being migrated") }).await;
            return;
        }
        let reply = match self.migrate_inner(&workload, to, mode, &out).await {
            Ok(summary) => {
                // The capacity this node promised the workload when it arrived is free again.
                self.service.release_departed(&workload);
                Reply::Migrated { summary }
            }
            Err(e) => Reply::Error { message: e.to_string() },
        };
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&workload);
        let _ = out.send(reply).await;
    }

    async fn migrate_inner(&self, name: &str, to: Option<String>, mode: MigrationMode, out: &mpsc::Sender<Reply>) -> Result<crate::migrate::Summary, RequestError> {
        let w = self.workloads.get(name)?;
        if !w.is_running() {
            return Err(RequestError::NotRunning(name.to_string()));
        }
        if mode == MigrationMode::PostCopy {
            if let Some(hint) = self.checkpointer.criu.capabilities().lazy_pages.hint() {
                return Err(RequestError::NoPostCopy { hint });
            }
        }
        let needs = needs_of(&w);
        let progress_of = |phase: &str| Reply::Progress { progress: Progress::Phase { phase: phase.into() } };
        let _ = out.try_send(progress_of("Reserving"));
        // An EBS volume attaches only within its zone: the election must stay there.
        let volume_zone = self.mover.volume_zone(name).await.map_err(RequestError::VolumeZone)?.map(|(volume, zone)| super::control::VolumeZone { volume, zone });
        let params = ReserveParams { peer: to, workload: name.to_string(), needs, ttl_ms: RESERVATION_TTL_MS, volume_zone };
        let outcome = self.service.reserve(params).await?;
        let Some(held) = outcome.granted else {
            return Err(RequestError::NoReservation { attempts: outcome.attempts });
        };
        let (target, reservation, target_name) = (held.target, held.id, held.target_name.clone());

        let (ptx, mut prx) = mpsc::channel::<Progress>(64);
        let forward = {
            let out = out.clone();
            tokio::spawn(async move {
                while let Some(p) = prx.recv().await {
                    let _ = out.try_send(Reply::Progress { progress: p });
                }
            })
        };
        let link = match self.link_to(target, ptx.clone()).await {
            Ok(l) => l,
            Err(e) => {
                let _ = self.service.release(target, reservation).await;
                return Err(e.into());
            }
        };
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).map_err(RequestError::Random)?;
        let plan = SourcePlan {
            migration: MigrationId(id),
            workload: WorkloadSpec {
                name: name.to_string(),
                needs,
                address: w.address().map(|a| a.to_string()),
                volume: w.record.volume_handle.clone(),
            },
            target,
            target_name,
            reservation,
            mode,
            images_root: self.images_root.clone(),
            // One leave-running round ships the bulk while the workload runs; the frozen final
            // dump then ships only what changed (content addressing is our dirty tracking).
            max_precopy_rounds: 1,
            min_shrink: 0.5,
            done_fraction: 0.02,
            target_addr: Some(link.addr().to_string()),
        };
        let cancel = self.cancel.child_token();
        let result = source::run(&plan, &self.parts(&link, &ptx, &cancel)).await;
        drop((link, ptx)); // both hold progress senders: the forwarder ends when they are gone
        let _ = forward.await;
        Ok(result?)
    }

    /// Source-side records left by a crash: resumed or rolled back once the target can be
    /// asked (it must be back in the mesh); retried while in doubt.
    async fn recover_sources(self: Arc<Self>) {
        let pending: Vec<MigrationRecord> =
            self.journal.unfinished().into_iter().flatten().filter(|r| matches!(r.role, Role::Source(_))).collect();
        for rec in pending {
            let spec = match self.workloads.get(&rec.workload) {
                Ok(w) => WorkloadSpec {
                    name: rec.workload.clone(),
                    needs: needs_of(&w),
                    address: w.address().map(|a| a.to_string()),
                    volume: w.record.volume_handle.clone(),
                },
                Err(_) => WorkloadSpec { name: rec.workload.clone(), needs: Default::default(), address: None, volume: None },
            };
            for attempt in 0.. {
                if self.cancel.is_cancelled() {
                    return;
                }
                let (ptx, _prx) = mpsc::channel(1);
                let outcome: Result<_, RequestError> = match self.recovery_link(&rec, ptx.clone()).await {
                    Ok(link) => recovery::recover(&rec, &spec, self.images_root.clone(), &self.parts(&link, &ptx, &self.cancel)).await.map_err(RequestError::from),
                    Err(e) => Err(e.into()),
                };
                match outcome {
                    Ok(done) => {
                        if done == recovery::Recovered::Completed {
                            self.service.release_departed(&rec.workload);
                        }
                        info!(migration = %rec.migration, workload = %rec.workload, ?done, "recovered migration");
                        break;
                    }
                    Err(e) if attempt < 30 => {
                        info!(migration = %rec.migration, error = %e, "recovery waits for the target");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(e) => {
                        warn!(migration = %rec.migration, error = %e, "recovery gave up; an operator must look");
                        break;
                    }
                }
            }
        }
    }
}
