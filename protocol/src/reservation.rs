//! Reservations: a source asks a target to hold capacity for a workload before moving it, so two
//! sources can never overbook one target. The [`Ledger`] is the target's side; it is pure (time
//! comes in as `now_ms`) so the node persists it in sled and the simulator runs it in memory.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::advert::{NodeId, Resources};
use crate::codec::{check_str, Limit, WireMessage};

/// Chosen by the source (random); unique per request.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReservationId(#[serde(with = "serde_bytes")] pub [u8; 16]);

crate::hex_id!(ReservationId, "reservation id", debug = 8);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRequest {
    pub id: ReservationId,
    pub source: NodeId,
    pub workload: String,
    pub needs: Resources,
    /// How long the target holds the capacity unless committed or released.
    pub ttl_ms: u64,
}

impl ReserveRequest {
    /// Targets cap the TTL so a crashed source cannot pin capacity for long.
    pub const MAX_TTL_MS: u64 = 10 * 60 * 1000;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    NoCapacity,
    Draining,
    Leaving,
    /// The same id was already used for a different request.
    Conflict,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DenyReason::NoCapacity => "not enough free capacity",
            DenyReason::Draining => "target is draining",
            DenyReason::Leaving => "target is leaving",
            DenyReason::Conflict => "reservation id reused for a different request",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationMessage {
    Request(ReserveRequest),
    Granted { id: ReservationId, expires_at_ms: u64 },
    Denied { id: ReservationId, reason: DenyReason },
    /// Source gives the capacity back (migration aborted or went elsewhere).
    Release { id: ReservationId },
    Released { id: ReservationId },
}

impl WireMessage for ReservationMessage {
    const LIMIT: Limit = Limit::CONTROL;
    fn validate(&self) -> Result<(), String> {
        if let ReservationMessage::Request(r) = self {
            check_str("workload", &r.workload, 128)?;
            if r.ttl_ms == 0 {
                return Err("ttl_ms is zero".into());
            }
        }
        Ok(())
    }
}

/// One held reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub request: ReserveRequest,
    pub expires_at_ms: u64,
    /// Committed reservations belong to a workload that arrived; they no longer expire.
    pub committed: bool,
}

/// The target-side record of capacity promised to sources.
///
/// Invariant: the sum of live reservations never exceeds `capacity` (what the node had free for
/// incoming workloads when the ledger was last told). Checked by [`Ledger::request`] under the
/// caller's single writer, so concurrent sources cannot overbook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    capacity: Resources,
    reservations: BTreeMap<ReservationId, Reservation>,
}

impl Ledger {
    pub fn new(capacity: Resources) -> Self {
        Ledger { capacity, reservations: BTreeMap::new() }
    }

    /// Updates the capacity the node can offer (e.g. after measuring the host again).
    pub fn set_capacity(&mut self, capacity: Resources) {
        self.capacity = capacity;
    }

    pub fn capacity(&self) -> Resources {
        self.capacity
    }

    /// Resources held by live (unexpired or committed) reservations.
    pub fn reserved(&self, now_ms: u64) -> Resources {
        self.reservations
            .values()
            .filter(|r| r.committed || r.expires_at_ms > now_ms)
            .fold(Resources::default(), |acc, r| acc.saturating_add(&r.request.needs))
    }

    /// What is left to promise.
    pub fn available(&self, now_ms: u64) -> Resources {
        self.capacity.saturating_sub(&self.reserved(now_ms))
    }

    /// Drops expired uncommitted reservations; returns the ids dropped.
    pub fn expire(&mut self, now_ms: u64) -> Vec<ReservationId> {
        let dead: Vec<_> = self
            .reservations
            .iter()
            .filter(|(_, r)| !r.committed && r.expires_at_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            self.reservations.remove(id);
        }
        dead
    }

    /// Grants or denies a request. `accepting` is false while the node drains or leaves.
    /// Idempotent: repeating a granted request returns the same grant.
    pub fn request(&mut self, req: &ReserveRequest, accepting: Option<DenyReason>, now_ms: u64) -> ReservationMessage {
        self.expire(now_ms);
        if let Some(existing) = self.reservations.get(&req.id) {
            return if existing.request == *req {
                ReservationMessage::Granted { id: req.id, expires_at_ms: existing.expires_at_ms }
            } else {
                ReservationMessage::Denied { id: req.id, reason: DenyReason::Conflict }
            };
        }
        if let Some(reason) = accepting {
            return ReservationMessage::Denied { id: req.id, reason };
        }
        if !req.needs.fits_in(&self.available(now_ms)) {
            return ReservationMessage::Denied { id: req.id, reason: DenyReason::NoCapacity };
        }
        let ttl = req.ttl_ms.min(ReserveRequest::MAX_TTL_MS);
        let expires_at_ms = now_ms.saturating_add(ttl);
        self.reservations.insert(req.id, Reservation { request: req.clone(), expires_at_ms, committed: false });
        ReservationMessage::Granted { id: req.id, expires_at_ms }
    }

    /// Marks a reservation as used by an arrived workload. False if unknown or expired.
    pub fn commit(&mut self, id: &ReservationId, now_ms: u64) -> bool {
        match self.reservations.get_mut(id) {
            Some(r) if r.committed || r.expires_at_ms > now_ms => {
                r.committed = true;
                true
            }
            _ => false,
        }
    }

    /// Gives capacity back (release by the source, or the workload left). True if it existed.
    pub fn release(&mut self, id: &ReservationId) -> bool {
        self.reservations.remove(id).is_some()
    }

    pub fn get(&self, id: &ReservationId) -> Option<&Reservation> {
        self.reservations.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(n: u8, mem: u64) -> ReserveRequest {
        ReserveRequest {
            id: ReservationId([n; 16]),
            source: NodeId([n; 32]),
            workload: format!("w{n}"),
            needs: Resources { cpu_millis: 100, memory_bytes: mem, disk_bytes: 0 },
            ttl_ms: 1000,
        }
    }

    fn cap() -> Resources {
        Resources { cpu_millis: 1000, memory_bytes: 3 << 30, disk_bytes: 0 }
    }

    #[test]
    fn ten_requests_for_room_of_three_grant_exactly_three() {
        let mut ledger = Ledger::new(cap());
        let granted = (0..10)
            .filter(|n| matches!(ledger.request(&req(*n, 1 << 30), None, 0), ReservationMessage::Granted { .. }))
            .count();
        assert_eq!(granted, 3);
        assert_eq!(ledger.available(0).memory_bytes, 0);
    }

    #[test]
    fn expiry_frees_capacity_but_commit_keeps_it() {
        let mut ledger = Ledger::new(cap());
        for n in 0..3 {
            ledger.request(&req(n, 1 << 30), None, 0);
        }
        assert!(ledger.commit(&ReservationId([0; 16]), 500));
        assert!(matches!(ledger.request(&req(9, 1 << 30), None, 999), ReservationMessage::Denied { .. }));
        // At t=1000 the two uncommitted ones expired; the committed one stays.
        assert!(matches!(ledger.request(&req(9, 1 << 30), None, 1000), ReservationMessage::Granted { .. }));
        assert!(matches!(ledger.request(&req(8, 1 << 30), None, 1000), ReservationMessage::Granted { .. }));
        assert!(matches!(ledger.request(&req(7, 1 << 30), None, 1000), ReservationMessage::Denied { .. }));
        assert!(!ledger.commit(&ReservationId([1; 16]), 1000), "expired reservations cannot be committed");
    }

    #[test]
    fn repeated_request_is_idempotent_and_reused_id_conflicts() {
        let mut ledger = Ledger::new(cap());
        let first = ledger.request(&req(1, 1 << 30), None, 0);
        assert_eq!(ledger.request(&req(1, 1 << 30), None, 10), first);
        let mut other = req(1, 1 << 20);
        other.workload = "other".into();
        assert_eq!(
            ledger.request(&other, None, 10),
            ReservationMessage::Denied { id: other.id, reason: DenyReason::Conflict }
        );
        assert_eq!(ledger.reserved(10).memory_bytes, 1 << 30);
    }

    #[test]
    fn draining_node_denies_and_release_frees() {
        let mut ledger = Ledger::new(cap());
        assert_eq!(
            ledger.request(&req(1, 1), Some(DenyReason::Draining), 0),
            ReservationMessage::Denied { id: ReservationId([1; 16]), reason: DenyReason::Draining }
        );
        ledger.request(&req(2, 3 << 30), None, 0);
        assert!(ledger.release(&ReservationId([2; 16])));
        assert_eq!(ledger.available(0), cap());
    }

    #[test]
    fn ttl_is_capped() {
        let mut ledger = Ledger::new(cap());
        let mut r = req(1, 1);
        r.ttl_ms = u64::MAX;
        match ledger.request(&r, None, 5) {
            ReservationMessage::Granted { expires_at_ms, .. } => assert_eq!(expires_at_ms, 5 + ReserveRequest::MAX_TTL_MS),
            other => panic!("unexpected {other:?}"),
        }
    }
}
