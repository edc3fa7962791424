//! `hotspot-node status` and `peers`: what this node and its peers look like now.


use super::api::{HeldReservation, PeerRow, StatusReport};
use super::service::NodeService;
use crate::mesh::{MeshError, PeerSnapshot};
use crate::sys::clock::now_ms;

impl NodeService {
    pub async fn status(&self) -> Result<StatusReport, MeshError> {
        let advert = self.advert();
        let mesh = serde_json::to_value(self.mesh.stats().await?).unwrap_or_default();
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
        Ok(StatusReport {
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
        })
    }

    /// Peers as `hotspot-node peers` lists them.
    pub async fn peer_rows(&self) -> Result<Vec<PeerRow>, MeshError> {
        Ok(self.mesh.peers().await?.iter().map(peer_row).collect())
    }
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

