//! The node's state and behaviour: what it advertises, how it answers reservations, and what the
//! control API can ask of it.

use crate::sys::clock::now_ms;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotspot_protocol::election::{exclusions, rank, Exclusion, HopPolicy, WorkloadProfile};
use hotspot_protocol::reservation::{DenyReason, ReservationId, ReservationMessage, ReserveRequest};
use hotspot_protocol::{Capacity, NodeAdvert, NodeId, NodeState, Resources};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::{CapacityConfig, Config};
use super::control::{self, Attempt, HeldReservation, PeerRow, ReserveOutcome, ReserveParams, Reply, Request, StatusReport};
use super::host;
use super::ledger::{LedgerError, LedgerStore, ReservationBook};
use crate::providers::price::PriceSource;
use crate::mesh::{MeshClient, MeshEvent, PeerSnapshot};

/// How often the advert is rebuilt from fresh measurements (sent only when it changed).
const MEASURE_EVERY: Duration = Duration::from_secs(1);

pub struct NodeService {
    node: NodeId,
    name: String,
    zone: String,
    arch: String,
    cpu_features: BTreeSet<String>,
    data_dir: PathBuf,
    overrides: CapacityConfig,
    started: Instant,
    mesh: MeshClient,
    book: ReservationBook,
    price: Mutex<Box<dyn PriceSource>>,
    pinned_price: Mutex<Option<f64>>,
    obtained: Mutex<Vec<HeldReservation>>,
    changed: Notify,
    /// Workloads to advertise and the transfer address peers send images to (set by the
    /// migration subsystem when it starts).
    migration_info: Mutex<(Option<crate::workload::Workloads>, Option<String>)>,
    /// Healthy, draining (`hotspot-node drain`) or leaving (spot notice): advertised, and what
    /// the ledger answers new reservations with.
    state: Mutex<NodeState>,
    /// Moves this node made by itself, newest last (bounded by [`MAX_MOVES`]).
    moves: Mutex<std::collections::VecDeque<super::api::MoveRecord>>,
    /// Node keys the transfer endpoint accepts: mesh peers, and at once every source we grant
    /// a reservation to (its offer may arrive before its advert has reached us).
    trust: hotspot_transfer::TrustSet,
}

/// Moves kept for `status`.
const MAX_MOVES: usize = 32;

impl NodeService {
    pub fn new(
        config: &Config,
        node: NodeId,
        mesh: MeshClient,
        store: Box<dyn LedgerStore>,
        price: Box<dyn PriceSource>,
    ) -> Result<Self, LedgerError> {
        let mut service = NodeService {
            node,
            name: config.node_name(),
            zone: config.zone.clone(),
            arch: host::arch(),
            cpu_features: host::cpu_features(),
            data_dir: config.data_dir.clone(),
            overrides: config.capacity.clone(),
            started: Instant::now(),
            mesh,
            book: ReservationBook::open(store, Resources::default())?,
            price: Mutex::new(price),
            pinned_price: Mutex::new(None),
            obtained: Mutex::new(Vec::new()),
            changed: Notify::new(),
            trust: hotspot_transfer::TrustSet::default(),
            migration_info: Mutex::new((None, None)),
            state: Mutex::new(NodeState::Healthy),
            moves: Mutex::new(Default::default()),
        };
        service.name.truncate(NodeAdvert::MAX_NAME);
        Ok(service)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The set of peers the transfer endpoint trusts (shared, so updates take effect at once).
    pub fn trust(&self) -> hotspot_transfer::TrustSet {
        self.trust.clone()
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn cpu_features(&self) -> &BTreeSet<String> {
        &self.cpu_features
    }

    pub(crate) fn book(&self) -> &ReservationBook {
        &self.book
    }

    pub fn state(&self) -> NodeState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the advertised state and gossips it at once. `Leaving` is final: once peers were
    /// told, the mesh ignores later adverts (see the event loop).
    pub fn set_state(&self, state: NodeState) -> NodeState {
        let mut current = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *current != NodeState::Leaving {
            *current = state;
        }
        let now = *current;
        drop(current);
        info!(state = %now, "node state");
        self.changed.notify_one();
        now
    }

    pub(crate) fn record_move(&self, record: super::api::MoveRecord) {
        let mut moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        if moves.len() == MAX_MOVES {
            moves.pop_front();
        }
        moves.push_back(record);
    }

    /// A workload that arrived here (its reservation committed in our ledger) has left again:
    /// the capacity it was promised is free. Returns how many reservations were released.
    pub(crate) fn release_departed(&self, workload: &str) -> usize {
        let ids: Vec<ReservationId> =
            self.book.snapshot().iter().filter(|r| r.committed && r.request.workload == workload).map(|r| r.request.id).collect();
        let released = ids.iter().filter(|id| self.book.release(id).unwrap_or_else(|e| {
            warn!(error = %e, "release not persisted");
            false
        })).count();
        if released > 0 {
            info!(workload, released, "released the reservation of a workload that left");
            self.changed.notify_one();
        }
        released
    }

    /// This node's price and total capacity as of now (for the price trigger's cost).
    pub(crate) fn price_and_total(&self) -> (f64, Resources) {
        (self.current_price(), self.offered().total)
    }

    pub(crate) fn workloads_here(&self) -> Vec<hotspot_protocol::advert::WorkloadSummary> {
        self.workload_summaries()
    }

    pub(crate) fn mesh(&self) -> &MeshClient {
        &self.mesh
    }

    pub fn set_migration_info(&self, workloads: crate::workload::Workloads, transfer_addr: Option<String>) {
        *self.migration_info.lock().unwrap_or_else(|p| p.into_inner()) = (Some(workloads), transfer_addr);
        self.changed.notify_one();
    }

    /// Running workloads, with what they need from a target (memory: their resident set).
    fn workload_summaries(&self) -> Vec<hotspot_protocol::advert::WorkloadSummary> {
        let info = self.migration_info.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
        let Some(wls) = info else { return Vec::new() };
        wls.list()
            .into_iter()
            .flatten()
            .filter(|w| w.is_running())
            .take(NodeAdvert::MAX_WORKLOADS)
            .map(|w| hotspot_protocol::advert::WorkloadSummary { name: w.name().to_string(), needs: crate::migrate::checkpointer::needs_of(&w) })
            .collect()
    }

    /// Total and offered capacity: measured, with each configured override taking precedence.
    fn offered(&self) -> Capacity {
        let m = host::measure(&self.data_dir);
        let o = &self.overrides;
        let pick = |over: Option<u64>, total: u64, free: u64| over.map_or((total, free), |v| (v, v));
        let (cpu_t, cpu_f) = pick(o.cpu_millis.map(u64::from), m.total.cpu_millis as u64, m.free.cpu_millis as u64);
        let (mem_t, mem_f) = pick(o.memory_bytes, m.total.memory_bytes, m.free.memory_bytes);
        let (disk_t, disk_f) = pick(o.disk_bytes, m.total.disk_bytes, m.free.disk_bytes);
        Capacity {
            total: Resources { cpu_millis: cpu_t as u32, memory_bytes: mem_t, disk_bytes: disk_t },
            free: Resources { cpu_millis: cpu_f as u32, memory_bytes: mem_f, disk_bytes: disk_f },
        }
    }

    fn current_price(&self) -> f64 {
        if let Some(p) = *self.pinned_price.lock().unwrap_or_else(|p| p.into_inner()) {
            return p;
        }
        let price = self.price.lock().unwrap_or_else(|p| p.into_inner()).price_at(self.started.elapsed());
        price.clamp(0.0, NodeAdvert::MAX_PRICE_PER_HOUR)
    }

    /// Our advert as of now (the mesh fills in `seq` and `issued_at_ms`). Free capacity is what
    /// the ledger can still promise.
    pub fn advert(&self) -> NodeAdvert {
        let mut capacity = self.offered();
        capacity.free = match self.book.tick(capacity.free, now_ms()) {
            Ok(available) => available,
            Err(e) => {
                warn!(error = %e, "cannot persist reservation expiry; advertising no free capacity");
                Resources::default()
            }
        };
        NodeAdvert {
            price_per_hour: self.current_price(),
            capacity,
            arch: self.arch.clone(),
            cpu_features: self.cpu_features.clone(),
            zone: self.zone.clone(),
            workloads: self.workload_summaries(),
            transfer_addr: self.migration_info.lock().unwrap_or_else(|p| p.into_inner()).1.clone(),
            mesh_addrs: Vec::new(), // the mesh layer fills in its listen addresses
            state: self.state(),
            ..NodeAdvert::blank(self.node, self.name.clone())
        }
    }

    /// Rebuilds the advert every second (or at once on a change) and hands it to the mesh when
    /// it differs from the last one; the mesh re-sends it periodically for liveness.
    pub async fn advertise(self: Arc<Self>, cancel: CancellationToken) {
        let mut last: Option<NodeAdvert> = None;
        let mut tick = tokio::time::interval(MEASURE_EVERY);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.changed.notified() => {}
            }
            let this = self.clone();
            let Ok(advert) = tokio::task::spawn_blocking(move || this.advert()).await else { return };
            if last.as_ref() != Some(&advert) {
                if self.mesh.set_advert(advert.clone()).await.is_err() {
                    return;
                }
                last = Some(advert);
            }
        }
    }

    /// Answers reservation requests from peers, one at a time (the ledger is the single writer).
    pub async fn answer_reservations(self: Arc<Self>, mut events: mpsc::Receiver<MeshEvent>, cancel: CancellationToken) {
        loop {
            let event = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                e = events.recv() => match e { Some(e) => e, None => return },
            };
            let MeshEvent::Reservation { from, message, responder } = event;
            let this = self.clone();
            let answer = tokio::task::spawn_blocking(move || this.on_reservation(from, message)).await;
            match answer {
                Ok(Some(answer)) => {
                    if matches!(answer, ReservationMessage::Granted { .. } | ReservationMessage::Released { .. }) {
                        self.changed.notify_one();
                    }
                    let _ = self.mesh.respond(responder, answer).await;
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "reservation handler panicked"),
            }
        }
    }

    fn on_reservation(&self, from: NodeId, message: ReservationMessage) -> Option<ReservationMessage> {
        let now = now_ms();
        match message {
            ReservationMessage::Request(req) => {
                let refuse = match self.state() {
                    NodeState::Healthy => None,
                    NodeState::Draining => Some(DenyReason::Draining),
                    NodeState::Leaving => Some(DenyReason::Leaving),
                };
                let answer = self.book.request(&req, refuse, now);
                match &answer {
                    Ok(ReservationMessage::Granted { id, .. }) => {
                        self.trust.insert(from);
                        info!(source = %from.short(), workload = %req.workload, reservation = %id, "reservation granted")
                    }
                    Ok(ReservationMessage::Denied { reason, .. }) => {
                        info!(source = %from.short(), workload = %req.workload, %reason, "reservation denied")
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "reservation not persisted; denying"),
                }
                Some(answer.unwrap_or(ReservationMessage::Denied { id: req.id, reason: DenyReason::NoCapacity }))
            }
            ReservationMessage::Release { id } => {
                let ours = self.book.snapshot().get(&id).is_some_and(|r| r.request.source == from);
                if ours {
                    if let Err(e) = self.book.release(&id) {
                        warn!(error = %e, "release not persisted");
                    }
                }
                Some(ReservationMessage::Released { id })
            }
            _ => None,
        }
    }

    fn find_peer<'a>(peers: &'a [PeerSnapshot], wanted: &str) -> Option<&'a PeerSnapshot> {
        peers
            .iter()
            .find(|p| p.advert.name == wanted)
            .or_else(|| peers.iter().find(|p| !wanted.is_empty() && p.advert.node.to_string().starts_with(wanted)))
    }

    pub(crate) async fn reserve(&self, params: ReserveParams) -> Reply {
        let peers = match self.mesh.peers().await {
            Ok(p) => p,
            Err(e) => return Reply::Error { message: e.to_string() },
        };
        let profile = WorkloadProfile {
            needs: params.needs,
            arch: self.arch.clone(),
            cpu_features: self.cpu_features.clone(),
            volume_zone: params.volume_zone.as_ref().map(|v| v.zone.clone()),
            image_bytes: 0,
        };
        let mut attempts = Vec::new();
        let targets: Vec<(NodeId, String)> = match &params.peer {
            // A comma-separated list is an order of preference: the next is asked when one refuses.
            Some(wanted) => {
                let found: Vec<&PeerSnapshot> = wanted.split(',').map(str::trim).filter_map(|w| Self::find_peer(&peers, w)).collect();
                if found.is_empty() {
                    return Reply::Error { message: format!("no live peer named {wanted:?} (see `hotspot-node peers`)") };
                }
                match in_volume_zone(&params, found, &mut attempts) {
                    Ok(near) => near,
                    Err(message) => return Reply::Error { message },
                }
            }
            None => {
                let adverts: Vec<NodeAdvert> = peers.iter().map(|p| p.advert.clone()).collect();
                let ranked = rank(&profile, &self.node, self.current_price(), &adverts, &HopPolicy::default());
                let order: Vec<String> = ranked.iter().map(|c| format!("{} ({:.5} USD/h)", c.name, c.cost_per_hour)).collect();
                info!(workload = %params.workload, candidates = ?order, peers = adverts.len(), "elected targets, best first");
                if ranked.is_empty() {
                    // Nobody to ask: say why each peer was left out (zone, capacity, state...).
                    for (a, why) in exclusions(&profile, &self.node, &adverts) {
                        attempts.push(Attempt { peer: a.node.to_string(), name: a.name.clone(), outcome: format!("not eligible: {why}") });
                    }
                }
                ranked.into_iter().map(|c| (c.node, c.name)).collect()
            }
        };
        for (node, name) in targets {
            let mut id = [0u8; 16];
            if getrandom::getrandom(&mut id).is_err() {
                return Reply::Error { message: "no randomness for a reservation id".into() };
            }
            let req = ReserveRequest {
                id: ReservationId(id),
                source: self.node,
                workload: params.workload.clone(),
                needs: params.needs,
                ttl_ms: params.ttl_ms,
            };
            let outcome = match self.mesh.request(node, ReservationMessage::Request(req)).await {
                Ok(ReservationMessage::Granted { id, expires_at_ms }) => {
                    let held = HeldReservation {
                        id: id.to_string(),
                        peer: node.to_string(),
                        workload: params.workload.clone(),
                        needs: params.needs,
                        expires_at_ms,
                        committed: false,
                    };
                    attempts.push(Attempt { peer: node.to_string(), name, outcome: "granted".into() });
                    self.obtained.lock().unwrap_or_else(|p| p.into_inner()).push(held.clone());
                    return Reply::Reserve(ReserveOutcome { granted: Some(held), attempts });
                }
                Ok(ReservationMessage::Denied { reason, .. }) => format!("denied: {reason}"),
                Ok(other) => format!("unexpected answer {other:?}"),
                Err(e) => e.to_string(),
            };
            attempts.push(Attempt { peer: node.to_string(), name, outcome });
        }
        Reply::Reserve(ReserveOutcome { granted: None, attempts })
    }

    pub(crate) async fn release(&self, peer: &str, id: &str) -> Reply {
        let rid: ReservationId = match id.parse() {
            Ok(rid) => rid,
            Err(e) => return Reply::Error { message: format!("reservation id {id:?}: {e}") },
        };
        let node: NodeId = match peer.parse() {
            Ok(n) => n,
            Err(_) => match self.mesh.peers().await.ok().and_then(|p| Self::find_peer(&p, peer).map(|p| p.advert.node)) {
                Some(n) => n,
                None => return Reply::Error { message: format!("unknown peer {peer:?}") },
            },
        };
        match self.mesh.request(node, ReservationMessage::Release { id: rid }).await {
            Ok(ReservationMessage::Released { .. }) => {
                self.obtained.lock().unwrap_or_else(|p| p.into_inner()).retain(|r| r.id != id);
                Reply::Released { released: true }
            }
            Ok(other) => Reply::Error { message: format!("unexpected answer {other:?}") },
            Err(e) => Reply::Error { message: e.to_string() },
        }
    }

    async fn status(&self) -> Reply {
        let advert = self.advert();
        let mesh = match self.mesh.stats().await {
            Ok(s) => serde_json::to_value(s).unwrap_or_default(),
            Err(e) => return Reply::Error { message: e.to_string() },
        };
        let held = self
            .book
            .snapshot()
            .iter()
            .map(|r| HeldReservation {
                id: r.request.id.to_string(),
                peer: r.request.source.to_string(),
                workload: r.request.workload.clone(),
                needs: r.request.needs,
                expires_at_ms: r.expires_at_ms,
                committed: r.committed,
            })
            .collect();
        let now = now_ms();
        let obtained = self.obtained.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|r| r.expires_at_ms > now).cloned().collect();
        Reply::Status(Box::new(StatusReport {
            node: self.node.to_string(),
            name: self.name.clone(),
            zone: self.zone.clone(),
            arch: self.arch.clone(),
            state: advert.state,
            price_per_hour: advert.price_per_hour,
            price_source: match *self.pinned_price.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(p) => format!("pinned {p:.4} USD/h"),
                None => self.price.lock().unwrap_or_else(|p| p.into_inner()).describe(),
            },
            total: advert.capacity.total,
            free: advert.capacity.free,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            workloads: advert.workloads,
            reservations_held: held,
            reservations_obtained: obtained,
            mesh,
            lost_at_reboot: self.migration_info.lock().unwrap_or_else(|p| p.into_inner()).0.as_ref().map(super::reboot::reported).unwrap_or_default(),
            moves: self.moves.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect(),
        }))
    }
}

/// The named peers a workload's volume can follow (all of them without a volume zone). Peers in
/// another zone go into `attempts` as not eligible; if that is every one, the error says why.
fn in_volume_zone(params: &ReserveParams, found: Vec<&PeerSnapshot>, attempts: &mut Vec<Attempt>) -> Result<Vec<(NodeId, String)>, String> {
    let Some(v) = &params.volume_zone else {
        return Ok(found.into_iter().map(|p| (p.advert.node, p.advert.name.clone())).collect());
    };
    let (near, far): (Vec<&PeerSnapshot>, Vec<&PeerSnapshot>) = found.into_iter().partition(|p| p.advert.zone == v.zone);
    if near.is_empty() {
        let names: Vec<String> = far.iter().map(|p| format!("{} is in zone {}", p.advert.name, p.advert.zone)).collect();
        return Err(format!(
            "cannot move {} there: {}, but its volume {} is in zone {} (an EBS volume attaches only to instances in its own zone; pick a peer in {})",
            params.workload,
            names.join(", "),
            v.volume,
            v.zone,
            v.zone
        ));
    }
    for p in far {
        let why = Exclusion::WrongZone { have: p.advert.zone.clone(), need: v.zone.clone() };
        attempts.push(Attempt { peer: p.advert.node.to_string(), name: p.advert.name.clone(), outcome: format!("not eligible: {why}") });
    }
    Ok(near.into_iter().map(|p| (p.advert.node, p.advert.name.clone())).collect())
}

pub fn peer_row(p: &PeerSnapshot) -> PeerRow {
    let a = &p.advert;
    PeerRow {
        node: a.node.to_string(),
        name: a.name.clone(),
        price_per_hour: a.price_per_hour,
        free: a.capacity.free,
        total: a.capacity.total,
        state: a.state,
        zone: a.zone.clone(),
        arch: a.arch.clone(),
        workloads: a.workloads.len(),
        seq: a.seq,
        age_ms: p.age.as_millis() as u64,
        received_at_ms: p.received_at_ms,
    }
}

impl control::Handler for NodeService {
    async fn handle(&self, request: Request) -> Reply {
        match request {
            Request::Status => self.status().await,
            Request::Peers => match self.mesh.peers().await {
                Ok(peers) => Reply::Peers { peers: peers.iter().map(peer_row).collect() },
                Err(e) => Reply::Error { message: e.to_string() },
            },
            Request::Reserve(params) => self.reserve(params).await,
            Request::Release { peer, id } => self.release(&peer, &id).await,
            Request::Drain { .. } | Request::Notice { .. } => Reply::Error { message: "drain and notice are answered by the daemon's trigger handler".into() },
            Request::Migrate { .. } => Reply::Error { message: "migration is not available on this node (see the daemon log: CRIU missing?)".into() },
            Request::SetPrice { price_per_hour } => {
                if let Some(p) = price_per_hour {
                    if !(p.is_finite() && (0.0..=NodeAdvert::MAX_PRICE_PER_HOUR).contains(&p)) {
                        return Reply::Error { message: format!("price {p} must be in 0..={}", NodeAdvert::MAX_PRICE_PER_HOUR) };
                    }
                }
                *self.pinned_price.lock().unwrap_or_else(|p| p.into_inner()) = price_per_hour;
                self.changed.notify_one();
                Reply::PriceSet { price_per_hour: self.current_price() }
            }
        }
    }
}

/// The reservation ledger as the target side of a migration sees it.
#[derive(Clone)]
pub struct BookReservations(pub Arc<NodeService>);

impl crate::migrate::target::Reservations for BookReservations {
    fn held_by(&self, id: &ReservationId, source: &NodeId) -> bool {
        let now = crate::sys::clock::now_ms();
        self.0.book().snapshot().get(id).is_some_and(|r| r.request.source == *source && (r.committed || r.expires_at_ms > now))
    }
    fn commit(&self, id: &ReservationId) -> bool {
        self.0.book().commit(id, crate::sys::clock::now_ms()).unwrap_or_else(|e| {
            warn!(error = %e, "reservation commit not persisted");
            false
        })
    }
    fn release(&self, id: &ReservationId) {
        if let Err(e) = self.0.book().release(id) {
            warn!(error = %e, "reservation release not persisted");
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::control::VolumeZone;

    fn peer(n: u8, zone: &str) -> PeerSnapshot {
        let advert = NodeAdvert { zone: zone.into(), ..NodeAdvert::blank(NodeId([n; 32]), format!("node{n}")) };
        PeerSnapshot { advert, age: Duration::ZERO, received_at_ms: 0 }
    }

    #[test]
    fn named_peers_outside_the_volume_zone_are_refused_with_the_reason() {
        let (a, b) = (peer(1, "us-east-1a"), peer(2, "us-east-1b"));
        let mut params = ReserveParams { peer: None, workload: "db".into(), needs: Resources::default(), ttl_ms: 1, volume_zone: None };
        let mut attempts = Vec::new();
        // No volume: any zone will do.
        assert_eq!(in_volume_zone(&params, vec![&b, &a], &mut attempts).unwrap().len(), 2);
        params.volume_zone = Some(VolumeZone { volume: "vol-1".into(), zone: "us-east-1a".into() });
        // A list: the far one is skipped (and said so), the near one asked.
        let near = in_volume_zone(&params, vec![&b, &a], &mut attempts).unwrap();
        assert_eq!(near, vec![(a.advert.node, "node1".to_string())]);
        assert_eq!(attempts[0].outcome, "not eligible: zone us-east-1b, the volume is in us-east-1a");
        // Only far ones: refused, naming both zones and the volume.
        let err = in_volume_zone(&params, vec![&b], &mut attempts).unwrap_err();
        assert!(err.starts_with("cannot move db there: node2 is in zone us-east-1b, but its volume vol-1 is in zone us-east-1a"), "{err}");
    }
}
