//! Migration of one workload from this node (the source) to a target.
//!
//! The driver ([`source::run`]: pre-copy rounds, then the freeze written once for both modes) is
//! written against small traits so each piece is the real thing in production and can be
//! swapped in tests that inject faults:
//! - [`Checkpointer`]: CRIU dumps and local (rollback) restores of the workload;
//! - [`TargetLink`]: the connection to the target node (offer, ship an image, restore, status);
//! - [`ResourceMover`]: the volume and service address (local loop devices and netns
//!   interfaces, or EBS and ENI on EC2).
//!
//! Every phase is journaled before it starts (see [`journal`]); a node restarted mid-way
//! runs [`recovery::recover`], which applies [`hotspot_protocol::handoff::recover_source`].

pub mod checkpointer;
pub mod error;
pub mod journal;
pub mod lazy_dump;
pub mod link;
pub mod outcome;
pub mod page_relay;
pub mod plan;
pub mod precopy_images;
pub mod recovery;
pub mod serve;
pub mod source;
pub mod target;
pub mod wire;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hotspot_protocol::handoff::TargetReport;
use hotspot_protocol::migration::{MigrationId, MigrationMode, WorkloadSpec};
use hotspot_protocol::reservation::ReservationId;
use hotspot_protocol::NodeId;

pub use error::{CheckpointError, LazyPagesError, LinkError, MoveError, RestoreError, StepError};

/// What a dump produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpReport {
    /// Size of the image directory.
    pub image_bytes: u64,
    /// How long the workload was frozen by this dump.
    pub frozen_ms: u64,
}

/// What shipping an image to the target cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShipReport {
    /// Bytes of the image (uncompressed).
    pub image_bytes: u64,
    /// Uncompressed bytes of the chunks the target lacked.
    pub new_bytes: u64,
    /// Bytes that crossed the network (compressed chunks and framing).
    pub wire_bytes: u64,
}

pub trait Checkpointer: Send + Sync {
    /// Dumps the workload into `dir`. With `leave_running` it keeps running (pre-copy round);
    /// without, the dump stops it (final dump).
    fn dump(&self, workload: &str, dir: &Path, leave_running: bool) -> impl Future<Output = Result<DumpReport, CheckpointError>> + Send;
    /// Brings the workload back on this node from `dir` (rollback after a final dump).
    fn restore_local(&self, workload: &str, dir: &Path) -> impl Future<Output = Result<(), CheckpointError>> + Send;
    /// Forgets the workload on this node after the target confirmed it runs there.
    fn retire(&self, workload: &str) -> impl Future<Output = Result<(), CheckpointError>> + Send;

    /// Post-copy: freezes the workload and writes everything but its memory into `dir`; the
    /// memory stays behind a page server that only `peer` may reach, at the returned address.
    fn dump_lazy(&self, _workload: &str, _dir: &Path, _peer: Option<IpAddr>) -> impl Future<Output = Result<(DumpReport, SocketAddr), CheckpointError>> + Send {
        async { Err(CheckpointError::Unsupported { what: "post-copy", reason: NO_POST_COPY }) }
    }
    /// Post-copy, the target runs the workload: lets the page stream end and waits (up to
    /// `timeout`) until every page was fetched and the frozen source is gone. Returns bytes served.
    fn finish_lazy(&self, _workload: &str, _timeout: Duration) -> impl Future<Output = Result<u64, CheckpointError>> + Send {
        async { Err(CheckpointError::Unsupported { what: "post-copy", reason: NO_POST_COPY }) }
    }
    /// Post-copy, before the target's restore succeeded: resumes the frozen workload here.
    /// `dir` is the lazy dump's image directory (it records how to reach an orphaned page
    /// server after a crash of this node).
    fn abort_lazy(&self, _workload: &str, _dir: &Path) -> impl Future<Output = Result<(), CheckpointError>> + Send {
        async { Err(CheckpointError::Unsupported { what: "post-copy", reason: NO_POST_COPY }) }
    }
}

const NO_POST_COPY: &str = "it has no lazy-pages support";

pub trait TargetLink: Send + Sync {
    fn offer(&self, migration: MigrationId, reservation: ReservationId, workload: &WorkloadSpec, mode: MigrationMode)
        -> impl Future<Output = Result<(), LinkError>> + Send;
    /// Ships the image in `dir`; only chunks the target lacks travel. Returns the transfer id.
    fn ship(&self, migration: MigrationId, dir: &Path) -> impl Future<Output = Result<([u8; 16], ShipReport), LinkError>> + Send;
    /// Asks the target to restore the shipped image; returns the restored PID.
    fn restore(&self, migration: MigrationId, transfer_id: [u8; 16]) -> impl Future<Output = Result<u32, LinkError>> + Send;
    fn status(&self, migration: MigrationId) -> impl Future<Output = Result<TargetReport, LinkError>> + Send;
    /// Tells the target the source has let go; the workload is the target's.
    fn commit(&self, migration: MigrationId) -> impl Future<Output = Result<(), LinkError>> + Send;
    fn abort(&self, migration: MigrationId, reason: &str) -> impl Future<Output = Result<(), LinkError>> + Send;
    /// Gives the reservation back (migration abandoned before the target took anything).
    fn release(&self, reservation: ReservationId) -> impl Future<Output = Result<(), LinkError>> + Send;
    /// Post-copy: asks the target to restore with its memory fetched from `page_server`.
    fn restore_lazy(&self, _migration: MigrationId, _transfer_id: [u8; 16], _page_server: SocketAddr) -> impl Future<Output = Result<u32, LinkError>> + Send {
        async { Err(LinkError::Unsupported { what: "post-copy", reason: NO_POST_COPY }) }
    }
    /// The target's address as this node reaches it (post-copy admits only it to the page server).
    fn peer_ip(&self) -> Option<IpAddr> {
        None
    }
}

const NO_SHARED_VOLUME: &str = "it cannot hand over a volume still held by a frozen workload";

/// Moves the workload's volume and service address. Every call is idempotent: repeating a
/// step that already happened succeeds without doing it twice (a resumed migration repeats the
/// step it was in). `state` is the provider's own record, journaled between calls.
pub trait ResourceMover: Send + Sync {
    fn move_to_target(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> impl Future<Output = Result<(), MoveError>> + Send;
    /// Brings the workload's resources back to this node, or, when nothing moved, makes them
    /// usable for a local restore (a stopped workload's volume was mounted only in its own mount
    /// namespace). Called before every pre-copy rollback restore; must be idempotent.
    fn move_back(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> impl Future<Output = Result<(), MoveError>> + Send;
    /// Post-copy variants: the source's workload is frozen, not gone, and holds its volume
    /// until the target fetched every page, so the volume is shared for that time rather than
    /// released first. Providers that cannot share (an EBS volume attaches to one instance)
    /// keep the default, which refuses.
    fn move_to_target_shared(&self, _workload: &WorkloadSpec, _target: &NodeId, _state: &mut Vec<u8>) -> impl Future<Output = Result<(), MoveError>> + Send {
        async { Err(MoveError::Unsupported { what: "post-copy", reason: NO_SHARED_VOLUME }) }
    }
    fn move_back_shared(&self, _workload: &WorkloadSpec, _state: &mut Vec<u8>) -> impl Future<Output = Result<(), MoveError>> + Send {
        async { Err(MoveError::Unsupported { what: "post-copy", reason: NO_SHARED_VOLUME }) }
    }
}

/// Progress of a migration, for the CLI's progress bar and `--json` output.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    Phase { phase: String },
    /// An image is on its way: bytes the target asked for and bytes sent so far (uncompressed).
    Bytes { image_bytes: u64, wanted_bytes: u64, sent_bytes: u64 },
    Round { round: u32, image_bytes: u64, new_bytes: u64, wire_bytes: u64 },
    RolledBack { reason: String },
    Done(Summary),
}

/// What `hotspot-node migrate` prints at the end.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub migration: String,
    pub workload: String,
    pub target: String,
    pub precopy_rounds: u32,
    /// Time the workload was stopped: final dump + final ship + resource move + restore.
    /// In post-copy mode the restore comes before the memory, which then faults in over
    /// `page_stream_ms` while the workload runs.
    pub freeze_ms: u64,
    /// Where the freeze went, step by step (`dump`, `ship`, `move`, `restore`), in ms.
    #[serde(default)]
    pub freeze_steps_ms: Vec<(String, u64)>,
    /// `pre_copy` or `post_copy`.
    #[serde(default)]
    pub mode: String,
    /// Post-copy: bytes of memory served to the target after the restore, and how long that took.
    #[serde(default)]
    pub page_bytes: u64,
    #[serde(default)]
    pub page_stream_ms: u64,
    pub image_bytes: u64,
    /// Bytes on the wire over all rounds.
    pub wire_bytes: u64,
    /// Image bytes that did not travel because the target had them.
    pub dedup_saved_bytes: u64,
    pub total_ms: u64,
}

impl Summary {
    /// Records the freeze step `name` as the time since `*since`, and restarts the clock.
    pub(crate) fn lap(&mut self, name: &str, since: &mut std::time::Instant) {
        self.freeze_steps_ms.push((name.to_string(), since.elapsed().as_millis() as u64));
        *since = std::time::Instant::now();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("journal: {0}")]
    Journal(#[from] crate::migrate::journal::JournalError),
    /// The migration failed and the workload runs on the source again.
    #[error("migration of {workload} failed during {phase}, rolled back to this node: {cause}")]
    RolledBack { workload: String, phase: &'static str, cause: StepError },
    /// The migration failed and so did the rollback: an operator must look.
    #[error("migration of {workload} failed during {phase} ({cause}); rollback failed too: {rollback}")]
    RollbackFailed { workload: String, phase: &'static str, cause: StepError, rollback: StepError },
    /// Post-copy after the restore: the page stream broke, so the target's copy cannot get the
    /// rest of its memory and the source's frozen copy is gone. The documented post-copy risk.
    #[error("post-copy of {workload} failed after the restore on the target: the memory stream broke ({cause}); the workload is lost (use pre-copy where that is not acceptable)")]
    PostCopyLost { workload: String, cause: StepError },
    /// The target may run the workload but cannot be asked; nothing is done until it answers.
    #[error("migration {migration} is in doubt: the target may be running {workload} but does not answer ({cause}); retrying recovery later")]
    InDoubt { migration: MigrationId, workload: String, cause: StepError },
}
#[cfg(test)]
mod tests;
#[cfg(test)]
mod target_tests;
