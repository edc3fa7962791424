//! What a source-side migration is given: the plan decided before it starts and the parts it
//! drives.

use std::path::PathBuf;

use hotspot_protocol::handoff::SourcePhase;
use hotspot_protocol::migration::{MigrationId, MigrationMode, WorkloadSpec};
use hotspot_protocol::reservation::ReservationId;
use hotspot_protocol::NodeId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::journal::Journal;
use super::Progress;

/// Everything decided before the migration starts (target elected, reservation granted).
#[derive(Debug, Clone)]
pub struct SourcePlan {
    pub migration: MigrationId,
    pub workload: WorkloadSpec,
    pub target: NodeId,
    pub target_name: String,
    pub reservation: ReservationId,
    pub mode: MigrationMode,
    /// Dumps go to `images_root/<migration>/round-N` and `.../final`.
    pub images_root: PathBuf,
    /// Pre-copy rounds at most (0 = freeze at once).
    pub max_precopy_rounds: u32,
    /// Another round runs only while it shrinks the bytes to send by this fraction...
    pub min_shrink: f64,
    /// ...and while the last round shipped more than this fraction of the image.
    pub done_fraction: f64,
    /// The target's transfer address, journaled so a restarted source can reach it at once.
    pub target_addr: Option<String>,
}


/// The parts a migration drives; borrowed for its duration.
pub struct Parts<'a, C, L, R> {
    pub journal: &'a Journal,
    pub checkpointer: &'a C,
    pub link: &'a L,
    pub mover: &'a R,
    /// Bounded; events are dropped (never waited for) when the consumer lags, so a slow
    /// terminal can never stretch the freeze.
    pub progress: &'a mpsc::Sender<Progress>,
    /// Cancelling before the freeze rolls back; after it the migration completes or rolls back
    /// on its own, since stopping half-way would leave the workload stopped.
    pub cancel: &'a CancellationToken,
    /// Cancelled when the node must be gone soon (a spot notice): no further pre-copy round
    /// starts and one under way is cut short; the freeze comes at once. Whatever the cut round
    /// already shipped stays in the target's store, so the final image reuses it.
    pub hurry: &'a CancellationToken,
}

impl<C, L, R> Parts<'_, C, L, R> {
    pub(crate) fn report(&self, event: Progress) {
        let _ = self.progress.try_send(event);
    }
    pub(crate) fn phase(&self, phase: SourcePhase) {
        self.report(Progress::Phase { phase: format!("{phase:?}") });
    }
}

