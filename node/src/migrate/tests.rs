//! Driver logic under injected faults. The parts are scripted stand-ins that record every call,
//! so each test can assert what the driver did to the workload (the real parts are exercised by
//! the end-to-end tests); the journal is the real sled journal.

use std::path::Path;
use std::sync::Mutex;

use hotspot_protocol::handoff::{SourcePhase, TargetPhase, TargetReport};
use hotspot_protocol::migration::{MigrationId, MigrationMode, WorkloadSpec};
use hotspot_protocol::reservation::ReservationId;
use hotspot_protocol::{NodeId, Resources};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::source::{run, Parts, SourcePlan};
use super::*;
use crate::migrate::journal::{Journal, Role};

#[derive(Default)]
struct Script {
    fail_ship_call: Option<usize>,
    fail_restore: bool,
    status: Option<TargetReport>,
    fail_move: bool,
    /// Post-copy: the page stream breaks after the restore.
    fail_stream: bool,
    /// The first ship (pre-copy round 0) never finishes on its own.
    hang_first_ship: bool,
    calls: Mutex<Vec<String>>,
    ships: Mutex<usize>,
}

impl Script {
    fn log(&self, s: impl Into<String>) {
        self.calls.lock().unwrap().push(s.into());
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Checkpointer for Script {
    async fn dump(&self, _: &str, dir: &Path, leave_running: bool) -> Result<DumpReport, CheckpointError> {
        std::fs::write(dir.join("pages-1.img"), b"x").map_err(CheckpointError::io("writing", dir))?;
        self.log(format!("dump leave_running={leave_running}"));
        Ok(DumpReport { image_bytes: 100, frozen_ms: 1 })
    }
    async fn restore_local(&self, _: &str, dir: &Path) -> Result<(), CheckpointError> {
        assert!(dir.join("pages-1.img").exists(), "local restore needs the final images");
        self.log("restore_local");
        Ok(())
    }
    async fn retire(&self, _: &str) -> Result<(), CheckpointError> {
        self.log("retire");
        Ok(())
    }
    async fn dump_lazy(&self, _: &str, dir: &Path, peer: Option<std::net::IpAddr>) -> Result<(DumpReport, std::net::SocketAddr), CheckpointError> {
        std::fs::write(dir.join("core-1.img"), b"x").map_err(CheckpointError::io("writing", dir))?;
        self.log(format!("dump_lazy peer={peer:?}"));
        Ok((DumpReport { image_bytes: 10, frozen_ms: 1 }, "10.0.0.1:4000".parse().unwrap()))
    }
    async fn finish_lazy(&self, _: &str, _: std::time::Duration) -> Result<u64, CheckpointError> {
        if self.fail_stream {
            self.log("stream broke");
            return Err(LazyPagesError::Incomplete { served_bytes: 0 }.into());
        }
        self.log("finish_lazy");
        Ok(90)
    }
    async fn abort_lazy(&self, _: &str, dir: &Path) -> Result<(), CheckpointError> {
        assert!(dir.join("core-1.img").exists(), "abort gets the lazy dump's directory");
        self.log("abort_lazy");
        Ok(())
    }
}

/// The target's answer to a restore that failed there.
fn restore_refused() -> LinkError {
    LinkError::Refused { code: hotspot_protocol::error::ErrorCode::RestoreFailed, message: "criu restore failed".into() }
}

impl TargetLink for Script {
    async fn offer(&self, _: MigrationId, _: ReservationId, _: &WorkloadSpec, _: MigrationMode) -> Result<(), LinkError> {
        self.log("offer");
        Ok(())
    }
    async fn ship(&self, _: MigrationId, _: &Path) -> Result<([u8; 16], ShipReport), LinkError> {
        let n = {
            let mut s = self.ships.lock().unwrap();
            *s += 1;
            *s
        };
        if self.fail_ship_call == Some(n) {
            self.log("ship failed");
            return Err(LinkError::Transfer(hotspot_transfer::SendError::Connection("connection lost".into())));
        }
        if self.hang_first_ship && n == 1 {
            self.log("ship hangs");
            std::future::pending::<()>().await;
        }
        self.log("ship");
        // First round sends everything, later rounds 1 %.
        let new = if n == 1 { 100 } else { 1 };
        Ok(([n as u8; 16], ShipReport { image_bytes: 100, new_bytes: new, wire_bytes: new }))
    }
    async fn restore(&self, _: MigrationId, _: [u8; 16]) -> Result<u32, LinkError> {
        if self.fail_restore {
            self.log("restore failed");
            return Err(restore_refused());
        }
        self.log("restore");
        Ok(42)
    }
    async fn status(&self, _: MigrationId) -> Result<TargetReport, LinkError> {
        self.log("status");
        self.status.ok_or(LinkError::Timeout { request: "status", after: std::time::Duration::from_secs(180) })
    }
    async fn commit(&self, _: MigrationId) -> Result<(), LinkError> {
        self.log("commit");
        Ok(())
    }
    async fn abort(&self, _: MigrationId, _: &str) -> Result<(), LinkError> {
        self.log("abort");
        Ok(())
    }
    async fn release(&self, _: ReservationId) -> Result<(), LinkError> {
        self.log("release");
        Ok(())
    }
    async fn restore_lazy(&self, _: MigrationId, _: [u8; 16], page_server: std::net::SocketAddr) -> Result<u32, LinkError> {
        assert_eq!(page_server.to_string(), "10.0.0.1:4000", "the target is sent the relay's address");
        if self.fail_restore {
            self.log("restore_lazy failed");
            return Err(restore_refused());
        }
        self.log("restore_lazy");
        Ok(42)
    }
    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        Some([10, 0, 0, 2].into())
    }
}

impl ResourceMover for Script {
    async fn move_to_target(&self, _: &WorkloadSpec, _: &NodeId, state: &mut Vec<u8>) -> Result<(), MoveError> {
        state.push(1);
        if self.fail_move {
            self.log("move failed");
            return Err(MoveError::provider("test", "moving to the target")(std::io::Error::other("volume stuck")));
        }
        self.log("move");
        Ok(())
    }
    async fn move_back(&self, _: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), MoveError> {
        state.push(2);
        self.log("move_back");
        Ok(())
    }
    async fn move_to_target_shared(&self, _: &WorkloadSpec, _: &NodeId, state: &mut Vec<u8>) -> Result<(), MoveError> {
        state.push(3);
        self.log("move_shared");
        Ok(())
    }
    async fn move_back_shared(&self, _: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), MoveError> {
        state.push(4);
        self.log("move_back_shared");
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    journal: Journal,
    plan: SourcePlan,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("db")).unwrap();
    let plan = SourcePlan {
        migration: MigrationId([1; 16]),
        workload: WorkloadSpec { name: "redis".into(), needs: Resources::default(), address: None, volume: None },
        target: NodeId([2; 32]),
        target_name: "node2".into(),
        reservation: ReservationId([3; 16]),
        mode: MigrationMode::PreCopy,
        images_root: dir.path().join("images"),
        max_precopy_rounds: 3,
        min_shrink: 0.5,
        done_fraction: 0.02,
        target_addr: None,
    };
    Fixture { journal: Journal::open(&db).unwrap(), plan, _dir: dir }
}

async fn go(f: &Fixture, s: &Script) -> Result<Summary, MigrateError> {
    go_hurried(f, s, &CancellationToken::new()).await
}

async fn go_hurried(f: &Fixture, s: &Script, hurry: &CancellationToken) -> Result<Summary, MigrateError> {
    let (tx, _rx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    let parts = Parts { journal: &f.journal, checkpointer: s, link: s, mover: s, progress: &tx, cancel: &cancel, hurry };
    run(&f.plan, &parts).await
}

fn phase(f: &Fixture) -> Role {
    f.journal.get(&f.plan.migration).unwrap().unwrap().role
}

#[tokio::test]
async fn happy_path_runs_phases_in_order() {
    let f = fixture();
    let s = Script::default();
    let summary = go(&f, &s).await.unwrap();
    assert_eq!(
        s.calls(),
        ["offer", "dump leave_running=true", "ship", "dump leave_running=true", "ship", "dump leave_running=false", "ship", "move", "restore", "retire", "commit"]
    );
    // Round 2 shipped 1 % of the image (under the 2 % done fraction): 2 pre-copy rounds.
    assert_eq!(summary.precopy_rounds, 2);
    assert_eq!(summary.wire_bytes, 102);
    assert_eq!(summary.dedup_saved_bytes, 300 - 102);
    assert_eq!(phase(&f), Role::Source(SourcePhase::CleanedUp));
    let history: Vec<Role> = f.journal.get(&f.plan.migration).unwrap().unwrap().history.into_iter().map(|(r, _)| r).collect();
    assert!(history.contains(&Role::Source(SourcePhase::RestoreRequested)));
    assert!(!f.plan.images_root.join(f.plan.migration.to_string()).exists(), "images cleaned up");
}

#[tokio::test]
async fn failure_before_freeze_never_stops_the_workload() {
    let f = fixture();
    let s = Script { fail_ship_call: Some(1), ..Script::default() };
    let err = go(&f, &s).await.unwrap_err();
    assert!(matches!(err, MigrateError::RolledBack { phase: "pre-copy", cause: StepError::Link(LinkError::Transfer(_)), .. }), "{err}");
    assert_eq!(s.calls(), ["offer", "dump leave_running=true", "ship failed", "abort", "release"]);
    assert_eq!(phase(&f), Role::Source(SourcePhase::RolledBack));
}

#[tokio::test]
async fn failure_after_freeze_restores_locally() {
    let f = fixture();
    let s = Script { fail_ship_call: Some(3), ..Script::default() };
    let err = go(&f, &s).await.unwrap_err();
    assert!(matches!(err, MigrateError::RolledBack { phase: "final transfer", .. }), "{err}");
    let calls = s.calls();
    // Nothing moved, but the mover is asked to make the resources usable here (it stages the
    // dead workload's volume) before the local restore.
    assert_eq!(&calls[calls.len() - 4..], ["abort", "move_back", "restore_local", "release"]);
    assert!(!calls.contains(&"move".to_string()), "resources never moved");
}

#[tokio::test]
async fn failed_restore_on_target_moves_resources_back() {
    let f = fixture();
    let s = Script { fail_restore: true, status: Some(TargetReport::Phase(TargetPhase::Abandoned)), ..Script::default() };
    let err = go(&f, &s).await.unwrap_err();
    let refused = |c: &StepError| matches!(c, StepError::Link(LinkError::Refused { code: hotspot_protocol::error::ErrorCode::RestoreFailed, .. }));
    assert!(matches!(&err, MigrateError::RolledBack { phase: "restore on target", cause, .. } if refused(cause)), "{err}");
    let calls = s.calls();
    assert_eq!(&calls[calls.len() - 5..], ["status", "abort", "move_back", "restore_local", "release"]);
    let state = f.journal.get(&f.plan.migration).unwrap().unwrap().provider_state;
    assert_eq!(state, vec![1, 2], "provider state journaled across move and move-back");
}

#[tokio::test]
async fn lost_restore_reply_with_running_target_completes() {
    let f = fixture();
    let s = Script { fail_restore: true, status: Some(TargetReport::Phase(TargetPhase::Running)), ..Script::default() };
    go(&f, &s).await.unwrap();
    assert!(!s.calls().contains(&"restore_local".to_string()));
    assert_eq!(phase(&f), Role::Source(SourcePhase::CleanedUp));
}

#[tokio::test]
async fn unreachable_target_after_restore_request_is_in_doubt_and_touches_nothing() {
    let f = fixture();
    let s = Script { fail_restore: true, status: None, ..Script::default() };
    let err = go(&f, &s).await.unwrap_err();
    assert!(matches!(err, MigrateError::InDoubt { cause: StepError::StatusUnknown { .. }, .. }), "{err}");
    assert!(!s.calls().contains(&"restore_local".to_string()), "must not run it twice");
    assert_eq!(phase(&f), Role::Source(SourcePhase::RestoreRequested));
}

#[tokio::test]
async fn recovery_after_crash_in_final_dump_restores_locally() {
    let f = fixture();
    // Simulate a crash: a journaled final dump with images on disk, then a restart.
    let final_dir = f.plan.images_root.join("x/final");
    std::fs::create_dir_all(&final_dir).unwrap();
    std::fs::write(final_dir.join("pages-1.img"), b"x").unwrap();
    let rec = crate::migrate::journal::MigrationRecord {
        migration: f.plan.migration,
        workload: "redis".into(),
        peer: f.plan.target,
        reservation: Some(f.plan.reservation),
        role: Role::Source(SourcePhase::FinalDump),
        image_dir: Some(final_dir),
        provider_state: vec![],
        history: vec![],
        peer_addr: None,
    };
    f.journal.put(&rec).unwrap();
    let s = Script::default();
    let (tx, _rx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    let hurry = CancellationToken::new();
    let parts = Parts { journal: &f.journal, checkpointer: &s, link: &s, mover: &s, progress: &tx, cancel: &cancel, hurry: &hurry };
    let out = recovery::recover(&rec, &f.plan.workload, f.plan.images_root.clone(), &parts).await.unwrap();
    assert_eq!(out, recovery::Recovered::RolledBack);
    assert_eq!(s.calls(), ["abort", "move_back", "restore_local"]);
    assert_eq!(phase(&f), Role::Source(SourcePhase::RolledBack));
}

fn post_copy_fixture() -> Fixture {
    let mut f = fixture();
    f.plan.mode = MigrationMode::PostCopy;
    f
}

#[tokio::test]
async fn post_copy_restores_first_then_streams_pages() {
    let f = post_copy_fixture();
    let s = Script::default();
    let summary = go(&f, &s).await.unwrap();
    assert_eq!(
        s.calls(),
        ["offer", "dump_lazy peer=Some(10.0.0.2)", "ship", "move_shared", "restore_lazy", "finish_lazy", "retire", "commit"],
        "no pre-copy round, the volume shared, pages after the restore, clean-up last"
    );
    assert_eq!((summary.mode.as_str(), summary.precopy_rounds, summary.page_bytes), ("post_copy", 0, 90));
    assert_eq!(phase(&f), Role::Source(SourcePhase::CleanedUp));
}

#[tokio::test]
async fn post_copy_failed_restore_resumes_the_frozen_workload_here() {
    let f = post_copy_fixture();
    let s = Script { fail_restore: true, status: Some(TargetReport::Phase(TargetPhase::Abandoned)), ..Script::default() };
    let err = go(&f, &s).await.unwrap_err();
    assert!(matches!(err, MigrateError::RolledBack { phase: "restore on target", .. }), "{err}");
    let calls = s.calls();
    assert_eq!(&calls[calls.len() - 5..], ["status", "abort", "move_back_shared", "abort_lazy", "release"]);
    assert!(!calls.contains(&"restore_local".to_string()), "nothing is restored: the frozen tree resumes");
    assert_eq!(phase(&f), Role::Source(SourcePhase::RolledBack));
}

#[tokio::test]
async fn post_copy_failed_transfer_resumes_without_moving_anything() {
    let f = post_copy_fixture();
    let s = Script { fail_ship_call: Some(1), ..Script::default() };
    let err = go(&f, &s).await.unwrap_err();
    assert!(matches!(err, MigrateError::RolledBack { phase: "final transfer", .. }), "{err}");
    assert_eq!(s.calls(), ["offer", "dump_lazy peer=Some(10.0.0.2)", "ship failed", "abort", "abort_lazy", "release"]);
}

#[tokio::test]
async fn post_copy_stream_broken_after_restore_is_reported_lost_not_rolled_back() {
    let f = post_copy_fixture();
    let s = Script { fail_stream: true, ..Script::default() };
    let err = go(&f, &s).await.unwrap_err();
    let lost = StepError::Checkpoint(CheckpointError::LazyPages(LazyPagesError::Incomplete { served_bytes: 0 }));
    assert!(matches!(&err, MigrateError::PostCopyLost { cause: StepError::Checkpoint(CheckpointError::LazyPages(LazyPagesError::Incomplete { .. })), .. }), "{err}");
    assert!(err.to_string().contains(&lost.to_string()), "{err}");
    assert!(!s.calls().iter().any(|c| c == "abort_lazy" || c == "move_back_shared"), "after the restore there is no going back: {:?}", s.calls());
}


#[tokio::test]
async fn a_node_that_must_leave_skips_pre_copy() {
    let f = fixture();
    let s = Script::default();
    let hurry = CancellationToken::new();
    hurry.cancel();
    let summary = go_hurried(&f, &s, &hurry).await.unwrap();
    assert_eq!(summary.precopy_rounds, 0);
    assert_eq!(s.calls().iter().filter(|c| c.starts_with("dump")).count(), 1, "only the final dump: {:?}", s.calls());
    assert_eq!(phase(&f), Role::Source(SourcePhase::CleanedUp));
}

#[tokio::test]
async fn a_notice_cuts_a_pre_copy_round_short_and_freezes_at_once() {
    let f = fixture();
    let s = Script { hang_first_ship: true, ..Script::default() };
    let hurry = CancellationToken::new();
    let cut = hurry.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        cut.cancel();
    });
    let summary = tokio::time::timeout(std::time::Duration::from_secs(10), go_hurried(&f, &s, &hurry)).await.expect("not stuck in the round").unwrap();
    assert_eq!(summary.precopy_rounds, 0, "the cut round does not count");
    let calls = s.calls();
    let hang = calls.iter().position(|c| c == "ship hangs").unwrap();
    assert!(calls[hang + 1..].iter().any(|c| c == "ship"), "the final image shipped after the cut: {calls:?}");
    assert_eq!(phase(&f), Role::Source(SourcePhase::CleanedUp));
}
