//! The target-side reservation ledger, persisted so a restart cannot forget promised capacity.
//!
//! The decision logic is `hotspot_protocol::reservation::Ledger` (pure). [`ReservationBook`] puts
//! it behind one mutex (the single writer that makes overbooking impossible) and writes every
//! change through a [`LedgerStore`] before the answer leaves the node. The store is a small trait
//! so sled can be swapped out (garage dropped sled for its disk growth).

use std::path::Path;
use std::sync::Mutex;

use hotspot_protocol::reservation::{DenyReason, Ledger, ReservationId, ReservationMessage, ReserveRequest};
use hotspot_protocol::Resources;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("reservation store: {0}")]
    Store(#[from] sled::Error),
    #[error("reservation record: {0}")]
    Codec(#[from] serde_cbor::Error),
    #[error("reservation record has version {found}; this build reads version {LEDGER_VERSION} (newer daemon's data dir?)")]
    Version { found: u16 },
}

/// Version of the persisted record; bump with a migration in [`SledLedgerStore::load`].
pub const LEDGER_VERSION: u16 = 1;
const LEDGER_KEY: &[u8] = b"reservation-ledger";

#[derive(Serialize, Deserialize)]
struct LedgerRecord {
    version: u16,
    ledger: Ledger,
}

/// Durable storage of the ledger.
pub trait LedgerStore: Send + Sync {
    fn load(&self) -> Result<Option<Ledger>, LedgerError>;
    /// Must be durable when it returns.
    fn save(&self, ledger: &Ledger) -> Result<(), LedgerError>;
}

pub struct SledLedgerStore {
    db: sled::Db,
}

impl SledLedgerStore {
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        Ok(SledLedgerStore { db: sled::open(dir)? })
    }
}

impl LedgerStore for SledLedgerStore {
    fn load(&self) -> Result<Option<Ledger>, LedgerError> {
        let Some(bytes) = self.db.get(LEDGER_KEY)? else { return Ok(None) };
        // Read the version alone first, so a newer record is reported rather than misparsed.
        #[derive(Deserialize)]
        struct Version {
            version: u16,
        }
        let Version { version } = serde_cbor::from_slice(&bytes)?;
        if version != LEDGER_VERSION {
            return Err(LedgerError::Version { found: version });
        }
        let record: LedgerRecord = serde_cbor::from_slice(&bytes)?;
        Ok(Some(record.ledger))
    }

    fn save(&self, ledger: &Ledger) -> Result<(), LedgerError> {
        let bytes = serde_cbor::to_vec(&LedgerRecord { version: LEDGER_VERSION, ledger: ledger.clone() })?;
        self.db.insert(LEDGER_KEY, bytes)?;
        self.db.flush()?;
        Ok(())
    }
}

/// The ledger with its single writer and its store.
pub struct ReservationBook {
    ledger: Mutex<Ledger>,
    store: Box<dyn LedgerStore>,
}

impl ReservationBook {
    pub fn open(store: Box<dyn LedgerStore>, capacity: Resources) -> Result<Self, LedgerError> {
        let mut ledger = store.load()?.unwrap_or_default();
        ledger.set_capacity(capacity);
        Ok(ReservationBook { ledger: Mutex::new(ledger), store })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants or denies; a grant is on disk before this returns. Blocking: call off the runtime.
    pub fn request(&self, req: &ReserveRequest, refuse: Option<DenyReason>, now_ms: u64) -> Result<ReservationMessage, LedgerError> {
        let mut ledger = self.lock();
        let before = ledger.clone();
        let answer = ledger.request(req, refuse, now_ms);
        if *ledger != before {
            if let Err(e) = self.store.save(&ledger) {
                *ledger = before;
                return Err(e);
            }
        }
        Ok(answer)
    }

    pub fn release(&self, id: &ReservationId) -> Result<bool, LedgerError> {
        let mut ledger = self.lock();
        let released = ledger.release(id);
        if released {
            self.store.save(&ledger)?;
        }
        Ok(released)
    }

    /// The workload arrived: the reservation stops expiring. Persisted before it returns.
    pub fn commit(&self, id: &ReservationId, now_ms: u64) -> Result<bool, LedgerError> {
        let mut ledger = self.lock();
        let committed = ledger.commit(id, now_ms);
        if committed {
            self.store.save(&ledger)?;
        }
        Ok(committed)
    }

    /// Drops expired reservations (persisting if any) and returns what is left to offer.
    pub fn tick(&self, capacity: Resources, now_ms: u64) -> Result<Resources, LedgerError> {
        let mut ledger = self.lock();
        ledger.set_capacity(capacity);
        if !ledger.expire(now_ms).is_empty() {
            self.store.save(&ledger)?;
        }
        Ok(ledger.available(now_ms))
    }

    pub fn snapshot(&self) -> Ledger {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotspot_protocol::NodeId;

    fn req(n: u8) -> ReserveRequest {
        ReserveRequest {
            id: ReservationId([n; 16]),
            source: NodeId([n; 32]),
            workload: "w".into(),
            needs: Resources { cpu_millis: 1000, memory_bytes: 0, disk_bytes: 0 },
            ttl_ms: 60_000,
        }
    }

    /// sled's flusher thread holds the file lock for a moment after the last handle drops; a
    /// restarted daemon is a new process and never sees this, an in-process reopen can.
    fn reopen<T, E: std::fmt::Debug>(mut open: impl FnMut() -> Result<T, E>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match open() {
                Ok(v) => return v,
                Err(e) if std::time::Instant::now() < deadline && format!("{e:?}").contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("reopen failed: {e:?}"),
            }
        }
    }

    #[test]
    fn grants_survive_a_restart_and_versions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let cap = Resources { cpu_millis: 2000, memory_bytes: 0, disk_bytes: 0 };
        {
            let book = ReservationBook::open(Box::new(SledLedgerStore::open(dir.path()).unwrap()), cap).unwrap();
            assert!(matches!(book.request(&req(1), None, 0).unwrap(), ReservationMessage::Granted { .. }));
            assert!(matches!(book.request(&req(2), None, 0).unwrap(), ReservationMessage::Granted { .. }));
        }
        let store = reopen(|| SledLedgerStore::open(dir.path()));
        let book = ReservationBook::open(Box::new(store), cap).unwrap();
        assert!(matches!(book.request(&req(3), None, 10).unwrap(), ReservationMessage::Denied { .. }));
        assert_eq!(book.tick(cap, 60_001).unwrap(), cap, "both expired after their TTL");
        drop(book);
        let db = reopen(|| sled::open(dir.path()));
        db.insert(LEDGER_KEY, serde_cbor::to_vec(&LedgerRecord { version: 9, ledger: Ledger::default() }).unwrap()).unwrap();
        drop(db);
        let err = reopen(|| SledLedgerStore::open(dir.path())).load().unwrap_err();
        assert!(matches!(err, LedgerError::Version { found: 9 }), "{err}");
    }
}
