//! The node's own state: who it is, what it offers and advertises, its price and its health.
//! Reservations are in [`super::reservations`], `status` in [`super::status`], and the control
//! API's requests are routed by [`super::router`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotspot_protocol::reservation::ReservationId;
use hotspot_protocol::{Capacity, NodeAdvert, NodeId, NodeState, Resources};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api::HeldReservation;
use super::config::{CapacityConfig, Config};
use super::host;
use super::ledger::{LedgerError, LedgerStore, ReservationBook};
use crate::mesh::MeshClient;
use crate::providers::price::PriceSource;
use crate::sys::clock::now_ms;

/// How often the advert is rebuilt from fresh measurements (sent only when it changed).
const MEASURE_EVERY: Duration = Duration::from_secs(1);

pub struct NodeService {
    pub(super) node: NodeId,
    pub(super) name: String,
    pub(super) zone: String,
    pub(super) arch: String,
    pub(super) cpu_features: BTreeSet<String>,
    pub(super) data_dir: PathBuf,
    pub(super) overrides: CapacityConfig,
    pub(super) started: Instant,
    pub(super) mesh: MeshClient,
    pub(super) book: ReservationBook,
    pub(super) price: Mutex<Box<dyn PriceSource>>,
    pub(super) pinned_price: Mutex<Option<f64>>,
    pub(super) obtained: Mutex<Vec<HeldReservation>>,
    pub(super) changed: Notify,
    /// Workloads to advertise and the transfer address peers send images to (set by the
    /// migration subsystem when it starts).
    pub(super) migration_info: Mutex<(Option<crate::workload::Workloads>, Option<String>)>,
    /// Healthy, draining (`hotspot-node drain`) or leaving (spot notice): advertised, and what
    /// the ledger answers new reservations with.
    pub(super) state: Mutex<NodeState>,
    /// Moves this node made by itself, newest last (bounded by [`MAX_MOVES`]).
    pub(super) moves: Mutex<std::collections::VecDeque<super::api::MoveRecord>>,
    /// Node keys the transfer endpoint accepts: mesh peers, and at once every source we grant
    /// a reservation to (its offer may arrive before its advert has reached us).
    pub(super) trust: hotspot_transfer::TrustSet,
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

    pub(super) fn current_price(&self) -> f64 {
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


    /// Pins the advertised price (`None`: back to the configured source); returns the price now
    /// advertised.
    pub fn set_price(&self, price_per_hour: Option<f64>) -> Result<f64, String> {
        if let Some(p) = price_per_hour {
            if !(p.is_finite() && (0.0..=NodeAdvert::MAX_PRICE_PER_HOUR).contains(&p)) {
                return Err(format!("price {p} must be in 0..={}", NodeAdvert::MAX_PRICE_PER_HOUR));
            }
        }
        *self.pinned_price.lock().unwrap_or_else(|p| p.into_inner()) = price_per_hour;
        self.changed.notify_one();
        Ok(self.current_price())
    }
}
