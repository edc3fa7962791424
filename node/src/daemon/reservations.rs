//! Reservations, both ways: the capacity this node promises to sources (answered from the
//! ledger, one request at a time) and the capacity it obtains on targets for its own moves.

use std::sync::Arc;

use hotspot_protocol::election::{exclusions, rank, Exclusion, HopPolicy, WorkloadProfile};
use hotspot_protocol::reservation::{DenyReason, ReservationId, ReservationMessage, ReserveRequest};
use hotspot_protocol::{NodeAdvert, NodeId, NodeState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api::{Attempt, HeldReservation, ReserveParams};
use super::service::NodeService;
use crate::mesh::{MeshError, MeshEvent, PeerSnapshot};
use crate::sys::clock::now_ms;

/// A reservation this node obtained on a target.
#[derive(Debug, Clone)]
pub struct Reserved {
    pub id: ReservationId,
    pub target: NodeId,
    pub target_name: String,
    /// As `status` shows it.
    pub held: HeldReservation,
}

/// What a reservation round came to: the grant, if any, and every target asked.
#[derive(Debug, Clone)]
pub struct ReserveResult {
    pub granted: Option<Reserved>,
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("no live peer named {0:?} (see `hotspot-node peers`)")]
    UnknownPeer(String),
    #[error("{0}")]
    OutsideVolumeZone(String),
    #[error("no randomness for a reservation id")]
    NoRandomness,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("reservation id {0}")]
    BadId(String),
    #[error("unknown peer {0:?}")]
    UnknownPeer(String),
    #[error("unexpected answer {0}")]
    Unexpected(String),
}

impl NodeService {
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

    /// Reserves capacity for `params.workload` on the named peer(s), or on the best targets by
    /// price and capacity, asking one after another until one grants.
    pub async fn reserve(&self, params: ReserveParams) -> Result<ReserveResult, ReserveError> {
        let peers = self.mesh.peers().await?;
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
                let found: Vec<&PeerSnapshot> = wanted.split(',').map(str::trim).filter_map(|w| find_peer(&peers, w)).collect();
                if found.is_empty() {
                    return Err(ReserveError::UnknownPeer(wanted.clone()));
                }
                in_volume_zone(&params, found, &mut attempts).map_err(ReserveError::OutsideVolumeZone)?
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
            getrandom::getrandom(&mut id).map_err(|_| ReserveError::NoRandomness)?;
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
                    attempts.push(Attempt { peer: node.to_string(), name: name.clone(), outcome: "granted".into() });
                    self.obtained.lock().unwrap_or_else(|p| p.into_inner()).push(held.clone());
                    return Ok(ReserveResult { granted: Some(Reserved { id, target: node, target_name: name, held }), attempts });
                }
                Ok(ReservationMessage::Denied { reason, .. }) => format!("denied: {reason}"),
                Ok(other) => format!("unexpected answer {other:?}"),
                Err(e) => e.to_string(),
            };
            attempts.push(Attempt { peer: node.to_string(), name, outcome });
        }
        Ok(ReserveResult { granted: None, attempts })
    }

    /// Gives back a reservation `id` this node holds on `target`.
    pub async fn release(&self, target: NodeId, id: ReservationId) -> Result<(), ReleaseError> {
        match self.mesh.request(target, ReservationMessage::Release { id }).await? {
            ReservationMessage::Released { .. } => {
                self.obtained.lock().unwrap_or_else(|p| p.into_inner()).retain(|r| r.id != id.to_string());
                Ok(())
            }
            other => Err(ReleaseError::Unexpected(format!("{other:?}"))),
        }
    }

    /// [`NodeService::release`] for the control API: the peer by name, id prefix or full id.
    pub(super) async fn release_named(&self, peer: &str, id: &str) -> Result<(), ReleaseError> {
        let id: ReservationId = id.parse().map_err(|e| ReleaseError::BadId(format!("{id:?}: {e}")))?;
        let target = match peer.parse::<NodeId>() {
            Ok(n) => n,
            Err(_) => {
                let peers = self.mesh.peers().await?;
                find_peer(&peers, peer).map(|p| p.advert.node).ok_or_else(|| ReleaseError::UnknownPeer(peer.to_string()))?
            }
        };
        self.release(target, id).await
    }
}

/// A peer by name, else by node id prefix.
fn find_peer<'a>(peers: &'a [PeerSnapshot], wanted: &str) -> Option<&'a PeerSnapshot> {
    peers
        .iter()
        .find(|p| p.advert.name == wanted)
        .or_else(|| peers.iter().find(|p| !wanted.is_empty() && p.advert.node.to_string().starts_with(wanted)))
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
    use hotspot_protocol::Resources;
    use std::time::Duration;
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
