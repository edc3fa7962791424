//! The migration journal: one record per migration, on both source and target, in sled.
//!
//! Write-ahead: a phase is journaled (and flushed) before the step it names starts, so after a
//! crash [`hotspot_protocol::handoff::recover_source`] / `recover_target` can decide from the
//! record alone what may have happened. Records carry a format version; a record from a newer
//! build is reported, never silently misread.

use std::path::PathBuf;

use hotspot_protocol::handoff::{SourcePhase, TargetPhase};
use hotspot_protocol::migration::MigrationId;
use hotspot_protocol::reservation::ReservationId;
use hotspot_protocol::NodeId;
use serde::{Deserialize, Serialize};

/// Bump on an incompatible change of [`MigrationRecord`]; add a migration path in `decode`.
pub const RECORD_VERSION: u16 = 1;
const TREE: &str = "migrations/v1";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("journal record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("journal record {key} has format version {found}, this build reads up to {RECORD_VERSION}; upgrade hotspot-node")]
    NewerFormat { key: String, found: u16 },
    #[error("illegal phase change {from:?} -> {to:?} for migration {migration}")]
    IllegalTransition { migration: MigrationId, from: SourcePhase, to: SourcePhase },
    #[error("no journal record for migration {0}")]
    Missing(MigrationId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Source(SourcePhase),
    Target(TargetPhase),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRecord {
    pub migration: MigrationId,
    pub workload: String,
    /// The other side: the target when we are the source, and vice versa.
    pub peer: NodeId,
    pub reservation: Option<ReservationId>,
    pub role: Role,
    /// Local image directory of the latest dump (what a local restore uses).
    pub image_dir: Option<PathBuf>,
    /// Opaque, provider-owned state of the resource moves (volume, address), so a resumed
    /// migration continues each idempotent step where it stopped.
    #[serde(with = "serde_bytes")]
    pub provider_state: Vec<u8>,
    /// (phase, ms since epoch) of every change, for `status` and post-mortems.
    pub history: Vec<(Role, u64)>,
    /// The peer's transfer address ("ip:port") when the migration started: a restarted source
    /// asks its target there at once, without waiting for gossip to bring the target's advert
    /// back. Absent in records of older versions.
    #[serde(default)]
    pub peer_addr: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u16,
    record: MigrationRecord,
}

#[derive(Clone)]
pub struct Journal {
    tree: sled::Tree,
}

impl Journal {
    pub fn open(db: &sled::Db) -> Result<Self, JournalError> {
        Ok(Journal { tree: db.open_tree(TREE)? })
    }

    fn encode(record: &MigrationRecord) -> Vec<u8> {
        serde_cbor::to_vec(&Stored { version: RECORD_VERSION, record: record.clone() }).expect("records always encode")
    }

    fn decode(key: &[u8], bytes: &[u8]) -> Result<MigrationRecord, JournalError> {
        let key = <[u8; 16]>::try_from(key).map_or_else(|_| format!("{key:02x?}"), |k| MigrationId(k).to_string());
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u16,
        }
        let v: VersionOnly =
            serde_cbor::from_slice(bytes).map_err(|e| JournalError::Corrupt { key: key.clone(), reason: e.to_string() })?;
        if v.version > RECORD_VERSION {
            return Err(JournalError::NewerFormat { key, found: v.version });
        }
        let stored: Stored = serde_cbor::from_slice(bytes).map_err(|e| JournalError::Corrupt { key, reason: e.to_string() })?;
        Ok(stored.record)
    }

    /// Writes a record and waits until it is on disk.
    pub fn put(&self, record: &MigrationRecord) -> Result<(), JournalError> {
        self.tree.insert(record.migration.0, Self::encode(record))?;
        self.tree.flush()?;
        Ok(())
    }

    pub fn get(&self, id: &MigrationId) -> Result<Option<MigrationRecord>, JournalError> {
        self.tree.get(id.0)?.map(|v| Self::decode(&id.0, &v)).transpose()
    }

    /// Moves a source-side record to `to`, refusing illegal transitions; journaled and flushed
    /// before returning, so the caller may then perform the step.
    pub fn advance_source(&self, id: &MigrationId, to: SourcePhase, now_ms: u64) -> Result<MigrationRecord, JournalError> {
        let mut rec = self.get(id)?.ok_or(JournalError::Missing(*id))?;
        if let Role::Source(from) = rec.role {
            if from != to && !hotspot_protocol::handoff::source_transition_ok(from, to) {
                return Err(JournalError::IllegalTransition { migration: *id, from, to });
            }
        }
        rec.role = Role::Source(to);
        rec.history.push((rec.role, now_ms));
        self.put(&rec)?;
        Ok(rec)
    }

    pub fn set_target_phase(&self, id: &MigrationId, to: TargetPhase, now_ms: u64) -> Result<MigrationRecord, JournalError> {
        let mut rec = self.get(id)?.ok_or(JournalError::Missing(*id))?;
        rec.role = Role::Target(to);
        rec.history.push((rec.role, now_ms));
        self.put(&rec)?;
        Ok(rec)
    }

    /// Every record, oldest key first; corrupt or newer records are returned as errors in place
    /// so one bad record does not hide the others.
    pub fn all(&self) -> Vec<Result<MigrationRecord, JournalError>> {
        self.tree
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Self::decode(&k, &v)
            })
            .collect()
    }

    /// Records whose migration is not over (what a restarted node must recover).
    pub fn unfinished(&self) -> Vec<Result<MigrationRecord, JournalError>> {
        self.all()
            .into_iter()
            .filter(|r| {
                !matches!(
                    r,
                    Ok(MigrationRecord {
                        role: Role::Source(SourcePhase::CleanedUp | SourcePhase::RolledBack) | Role::Target(TargetPhase::Abandoned),
                        ..
                    })
                )
            })
            .collect()
    }

    pub fn remove(&self, id: &MigrationId) -> Result<(), JournalError> {
        self.tree.remove(id.0)?;
        self.tree.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> MigrationRecord {
        MigrationRecord {
            migration: MigrationId([n; 16]),
            workload: "redis".into(),
            peer: NodeId([9; 32]),
            reservation: Some(ReservationId([n; 16])),
            role: Role::Source(SourcePhase::Planned),
            image_dir: Some("/var/lib/hotspot-node/images/x".into()),
            provider_state: vec![1, 2, 3],
            history: vec![],
            peer_addr: None,
        }
    }

    #[test]
    fn records_survive_reopen_and_transitions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let j = Journal::open(&db).unwrap();
            j.put(&record(1)).unwrap();
            j.advance_source(&MigrationId([1; 16]), SourcePhase::Reserved, 10).unwrap();
            j.advance_source(&MigrationId([1; 16]), SourcePhase::PreCopy, 20).unwrap();
            let err = j.advance_source(&MigrationId([1; 16]), SourcePhase::Confirmed, 30).unwrap_err();
            assert!(matches!(err, JournalError::IllegalTransition { .. }), "{err}");
            j.put(&record(2)).unwrap();
            j.advance_source(&MigrationId([2; 16]), SourcePhase::RolledBack, 5).unwrap();
        }
        // sled's flusher thread holds the file lock for a moment after the last handle drops
        // (a restarted node is a new process and never sees this).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match sled::open(dir.path()) {
                Ok(db) => break db,
                Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let j = Journal::open(&db).unwrap();
        let rec = j.get(&MigrationId([1; 16])).unwrap().unwrap();
        assert_eq!(rec.role, Role::Source(SourcePhase::PreCopy));
        assert_eq!(rec.history.len(), 2);
        let open: Vec<_> = j.unfinished().into_iter().map(|r| r.unwrap().migration).collect();
        assert_eq!(open, vec![MigrationId([1; 16])]);
    }

    #[test]
    fn newer_and_corrupt_records_are_reported_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let j = Journal::open(&db).unwrap();
        let newer = serde_cbor::to_vec(&Stored { version: RECORD_VERSION + 1, record: record(3) }).unwrap();
        j.tree.insert([3u8; 16], newer).unwrap();
        j.tree.insert([4u8; 16], b"garbage".to_vec()).unwrap();
        assert!(matches!(j.get(&MigrationId([3; 16])), Err(JournalError::NewerFormat { found: 2, .. })));
        assert!(matches!(j.get(&MigrationId([4; 16])), Err(JournalError::Corrupt { .. })));
        assert_eq!(j.all().len(), 2);
    }
}
