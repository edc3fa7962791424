//! The target's answers: idempotent, peer-checked, journaled. The restorer and reservation book
//! are scripted stand-ins that record calls; the journal is the real sled journal.

use std::path::Path;
use std::sync::Mutex;

use hotspot_protocol::error::ErrorCode;
use hotspot_protocol::handoff::{TargetPhase, TargetReport};
use hotspot_protocol::migration::{MigrationId, MigrationMessage as M, MigrationMode, WorkloadSpec};
use hotspot_protocol::reservation::ReservationId;
use hotspot_protocol::{NodeId, Resources};

use super::target::{Reservations, Restorer, TargetService};
use super::RestoreError;
use crate::criu::CriuError;
use crate::migrate::CheckpointError;
use crate::migrate::journal::{Journal, Role};

#[derive(Default)]
struct Book {
    log: Mutex<Vec<String>>,
    fail_restore: bool,
}

impl Book {
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Restorer for &Book {
    async fn restore(&self, spec: &WorkloadSpec, dir: &Path) -> Result<u32, RestoreError> {
        self.log.lock().unwrap().push(format!("restore {} from {}", spec.name, dir.display()));
        if self.fail_restore {
            let log = dir.join("restore.log");
            Err(CheckpointError::from(CriuError::Failed { action: "restore", status: "exit status: 1".into(), log, last_errors: "corrupted image".into() }).into())
        } else {
            Ok(4242)
        }
    }
    async fn discard(&self, workload: &str) {
        self.log.lock().unwrap().push(format!("discard {workload}"));
    }
}

impl Reservations for &Book {
    fn held_by(&self, id: &ReservationId, source: &NodeId) -> bool {
        *id == ReservationId([3; 16]) && *source == SOURCE
    }
    fn commit(&self, _: &ReservationId) -> bool {
        self.log.lock().unwrap().push("commit reservation".into());
        true
    }
    fn release(&self, _: &ReservationId) {
        self.log.lock().unwrap().push("release reservation".into());
    }
}

const SOURCE: NodeId = NodeId([1; 32]);
const MID: MigrationId = MigrationId([7; 16]);

fn offer() -> M {
    M::Offer {
        migration: MID,
        reservation: ReservationId([3; 16]),
        workload: WorkloadSpec { name: "redis".into(), needs: Resources::default(), address: Some("10.77.1.10/24".into()), volume: None },
        mode: MigrationMode::PreCopy,
    }
}

fn service(book: &Book) -> (tempfile::TempDir, TargetService<&Book, &Book>) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("db")).unwrap();
    (dir, TargetService { journal: Journal::open(&db).unwrap(), restorer: book, reservations: book })
}

#[tokio::test]
async fn full_handoff_is_idempotent() {
    let book = Book::default();
    let (d, svc) = service(&book);
    let image = d.path().join("images").join("x");
    std::fs::create_dir_all(&image).unwrap();
    assert_eq!(svc.handle(&SOURCE, offer()).await, M::Accept { migration: MID });
    assert_eq!(svc.handle(&SOURCE, offer()).await, M::Accept { migration: MID }, "repeated offer");
    // Restore before the image arrived is refused, not attempted.
    assert!(matches!(svc.handle(&SOURCE, M::Restore { migration: MID, transfer_id: [0; 16] }).await, M::Refuse { .. }));
    svc.image_received(&MID, image.clone()).unwrap();
    assert_eq!(svc.handle(&SOURCE, M::Restore { migration: MID, transfer_id: [0; 16] }).await, M::Restored { migration: MID, pid: 4242 });
    // A lost reply: asking again does not restore twice.
    assert!(matches!(svc.handle(&SOURCE, M::Restore { migration: MID, transfer_id: [0; 16] }).await, M::Restored { .. }));
    assert_eq!(book.log(), [format!("restore redis from {}", image.display()), "commit reservation".to_string()]);
    assert_eq!(
        svc.handle(&SOURCE, M::Status { migration: MID }).await,
        M::StatusReply { migration: MID, report: TargetReport::Phase(TargetPhase::Running) }
    );
    assert!(matches!(svc.handle(&SOURCE, M::Abort { migration: MID, reason: "x".into() }).await, M::Refuse { .. }), "no abort once running");
    assert_eq!(svc.handle(&SOURCE, M::Commit { migration: MID }).await, M::Ack { migration: MID });
    assert_eq!(svc.handle(&SOURCE, M::Status { migration: MID }).await, M::StatusReply { migration: MID, report: TargetReport::Unknown });
    // The committed image is removed (on a thread): it would only pin its chunks in the store.
    for _ in 0..200 {
        if !image.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!image.exists(), "the restored image was removed after the commit");
}

#[tokio::test]
async fn strangers_and_bad_reservations_are_refused() {
    let book = Book::default();
    let (_d, svc) = service(&book);
    let stranger = NodeId([9; 32]);
    match svc.handle(&stranger, offer()).await {
        M::Refuse { error, .. } => assert_eq!(error.code, ErrorCode::UnknownReservation),
        other => panic!("{other:?}"),
    }
    svc.handle(&SOURCE, offer()).await;
    match svc.handle(&stranger, M::Restore { migration: MID, transfer_id: [0; 16] }).await {
        M::Refuse { error, .. } => assert_eq!(error.code, ErrorCode::Unauthorized),
        other => panic!("{other:?}"),
    }
    assert!(matches!(svc.handle(&SOURCE, M::Accept { migration: MID }).await, M::Refuse { .. }));
}

#[tokio::test]
async fn failed_restore_abandons_and_frees_the_reservation() {
    let book = Book { fail_restore: true, ..Book::default() };
    let (_d, svc) = service(&book);
    svc.handle(&SOURCE, offer()).await;
    svc.image_received(&MID, "/images/x".into()).unwrap();
    match svc.handle(&SOURCE, M::Restore { migration: MID, transfer_id: [0; 16] }).await {
        M::RestoreFailed { error, .. } => assert!(error.message.contains("corrupted image")),
        other => panic!("{other:?}"),
    }
    assert_eq!(book.log(), ["restore redis from /images/x", "discard redis", "release reservation"]);
    assert_eq!(svc.journal.get(&MID).unwrap().unwrap().role, Role::Target(TargetPhase::Abandoned));
    // The source then asks: a clear "abandoned" lets it restore locally.
    assert_eq!(
        svc.handle(&SOURCE, M::Status { migration: MID }).await,
        M::StatusReply { migration: MID, report: TargetReport::Phase(TargetPhase::Abandoned) }
    );
}
