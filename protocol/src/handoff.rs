//! The migration state machine and its crash-recovery rules, as pure code.
//!
//! Both sides journal their phase *before* acting on it (write-ahead), so after a crash the
//! journaled phase bounds what may have happened. The one rule that makes "the workload runs
//! exactly once" hold: the target restores only after the source journaled
//! [`SourcePhase::RestoreRequested`], and the source restores locally only once it knows the
//! target did not (and will not) restore. When it cannot know — the target is unreachable after
//! the restore was requested — recovery waits instead of guessing.

use serde::{Deserialize, Serialize};

/// Source-side phases, in order. Journaled before the step they name starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourcePhase {
    /// Target chosen, nothing asked yet.
    Planned,
    /// Target granted a reservation.
    Reserved,
    /// Dump rounds with the workload still running (`criu dump --leave-running`), chunks shipped.
    PreCopy,
    /// About to freeze: the final dump stops the workload on the source.
    FinalDump,
    /// The final image is on the target; volume and address are being moved.
    MovingResources,
    /// The source asked the target to restore. From here the target may be running the workload.
    RestoreRequested,
    /// The target reported the workload running.
    Confirmed,
    /// Source resources released; the migration is over.
    CleanedUp,
    /// Aborted; the workload runs on the source again.
    RolledBack,
}

/// Target-side phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetPhase {
    /// Offer accepted; chunks arriving.
    Receiving,
    /// Restore under way.
    Restoring,
    /// Restored and running.
    Running,
    /// Restore failed or the source aborted; nothing of the workload runs here.
    Abandoned,
}

/// What the target says when asked about a migration after a reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetReport {
    /// Target has no record of it (never got the offer, or forgot it after abandoning).
    Unknown,
    Phase(TargetPhase),
}

/// What a restarted source must do for a journaled migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRecovery {
    /// The workload never stopped on the source: release the reservation, mark rolled back.
    ReleaseAndRollBack,
    /// The workload was stopped by the final dump but the target never restored it: bring the
    /// resources back if they moved, restore from the local images, mark rolled back.
    RestoreLocally { resources_moved: bool },
    /// Resources may be half-moved, the target has the image: finish moving them, then request
    /// the restore (every step is idempotent).
    ResumeForward,
    /// The target runs it: finish (clean up the source).
    Finish,
    /// The target may be running it but does not answer: do nothing until it does.
    WaitForTarget,
    /// Already over.
    Nothing,
}

/// Decides a restarted source's next action from its journaled phase and, when it could ask,
/// the target's answer (`None` = target unreachable).
pub fn recover_source(phase: SourcePhase, target: Option<TargetReport>) -> SourceRecovery {
    use SourcePhase::*;
    use TargetPhase::*;
    match phase {
        CleanedUp | RolledBack => SourceRecovery::Nothing,
        Confirmed => SourceRecovery::Finish,
        // The workload was running on the source throughout (leave-running dumps only).
        Planned | Reserved | PreCopy => SourceRecovery::ReleaseAndRollBack,
        // The final dump may have stopped the workload; the target cannot have restored, since
        // RestoreRequested was never journaled. Local images are complete if the dump finished;
        // if it did not, CRIU left the workload running and the local restore finds it alive.
        FinalDump => SourceRecovery::RestoreLocally { resources_moved: false },
        // Going forward is cheaper than back; if the target lost the image, go back.
        MovingResources => match target {
            Some(TargetReport::Phase(Receiving | Restoring)) => SourceRecovery::ResumeForward,
            _ => SourceRecovery::RestoreLocally { resources_moved: true },
        },
        RestoreRequested => match target {
            Some(TargetReport::Phase(Running)) => SourceRecovery::Finish,
            // Restoring: still going; ask again later.
            None | Some(TargetReport::Phase(Restoring)) => SourceRecovery::WaitForTarget,
            // The restore request may never have arrived: re-send it (idempotent).
            Some(TargetReport::Phase(Receiving)) => SourceRecovery::ResumeForward,
            Some(TargetReport::Phase(Abandoned) | TargetReport::Unknown) => SourceRecovery::RestoreLocally { resources_moved: true },
        },
    }
}

/// What a restarted target must do for a journaled migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRecovery {
    /// Keep the received chunks (a later attempt reuses them), drop the record, release the reservation.
    Abandon,
    /// A restore was in flight: check whether the workload came up; if not, abandon.
    CheckRestored,
    /// The workload runs here: re-adopt it.
    Adopt,
    Nothing,
}

pub fn recover_target(phase: TargetPhase) -> TargetRecovery {
    match phase {
        TargetPhase::Receiving => TargetRecovery::Abandon,
        TargetPhase::Restoring => TargetRecovery::CheckRestored,
        TargetPhase::Running => TargetRecovery::Adopt,
        TargetPhase::Abandoned => TargetRecovery::Nothing,
    }
}

/// Checks a source phase transition: forward one step (pre-copy may repeat), or to RolledBack
/// from anywhere before Confirmed.
pub fn source_transition_ok(from: SourcePhase, to: SourcePhase) -> bool {
    use SourcePhase::*;
    match (from, to) {
        (PreCopy, PreCopy) => true,
        (Confirmed | CleanedUp | RolledBack, RolledBack) => false,
        (_, RolledBack) => true,
        // Pre-copy is optional (post-copy mode freezes at once).
        (Reserved, FinalDump) => true,
        (a, b) => next_source_phase(a) == Some(b),
    }
}

fn next_source_phase(p: SourcePhase) -> Option<SourcePhase> {
    use SourcePhase::*;
    Some(match p {
        Planned => Reserved,
        Reserved => PreCopy,
        PreCopy => FinalDump,
        FinalDump => MovingResources,
        MovingResources => RestoreRequested,
        RestoreRequested => Confirmed,
        Confirmed => CleanedUp,
        CleanedUp | RolledBack => return None,
    })
}

/// Whether pre-copy should run another `dump --leave-running` round. Stop when the round budget
/// is spent, when this round already shipped no more than `done_bytes` (the frozen final dump
/// will ship about as much, so another round buys nothing), or when it no longer shrinks the
/// bytes to send by `min_shrink` (the workload dirties memory as fast as we ship it).
pub fn another_precopy_round(round: u32, max_rounds: u32, prev_round_bytes: Option<u64>, this_round_bytes: u64, min_shrink: f64, done_bytes: u64) -> bool {
    if round >= max_rounds || this_round_bytes <= done_bytes {
        return false;
    }
    match prev_round_bytes {
        None => true,
        Some(prev) => (this_round_bytes as f64) < prev as f64 * (1.0 - min_shrink),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SourcePhase::*;

    const ALL_SOURCE: [SourcePhase; 9] =
        [Planned, Reserved, PreCopy, FinalDump, MovingResources, RestoreRequested, Confirmed, CleanedUp, RolledBack];
    const ALL_REPORTS: [Option<TargetReport>; 6] = [
        None,
        Some(TargetReport::Unknown),
        Some(TargetReport::Phase(TargetPhase::Receiving)),
        Some(TargetReport::Phase(TargetPhase::Restoring)),
        Some(TargetReport::Phase(TargetPhase::Running)),
        Some(TargetReport::Phase(TargetPhase::Abandoned)),
    ];

    /// Exactly once: across every (phase, answer) the source never restores locally while the
    /// target might run the workload, and never finishes unless the target runs it.
    #[test]
    fn recovery_never_runs_the_workload_twice_or_loses_it() {
        for phase in ALL_SOURCE {
            for report in ALL_REPORTS {
                let action = recover_source(phase, report);
                let target_may_run = phase >= RestoreRequested
                    && !matches!(report, Some(TargetReport::Unknown | TargetReport::Phase(TargetPhase::Abandoned | TargetPhase::Receiving)));
                if let SourceRecovery::RestoreLocally { .. } = action {
                    assert!(!target_may_run, "{phase:?}/{report:?}: local restore while the target may run it");
                }
                if action == SourceRecovery::Finish && phase != Confirmed {
                    assert_eq!(report, Some(TargetReport::Phase(TargetPhase::Running)), "{phase:?}: finished without a running target");
                }
            }
        }
    }

    #[test]
    fn unreachable_target_after_restore_request_means_wait() {
        assert_eq!(recover_source(RestoreRequested, None), SourceRecovery::WaitForTarget);
        assert_eq!(recover_source(RestoreRequested, Some(TargetReport::Unknown)), SourceRecovery::RestoreLocally { resources_moved: true });
        assert_eq!(recover_source(PreCopy, None), SourceRecovery::ReleaseAndRollBack);
        assert_eq!(recover_source(FinalDump, None), SourceRecovery::RestoreLocally { resources_moved: false });
        assert_eq!(recover_source(MovingResources, Some(TargetReport::Phase(TargetPhase::Receiving))), SourceRecovery::ResumeForward);
        assert_eq!(recover_target(TargetPhase::Restoring), TargetRecovery::CheckRestored);
    }

    #[test]
    fn transitions() {
        assert!(source_transition_ok(Planned, Reserved));
        assert!(source_transition_ok(PreCopy, PreCopy));
        assert!(source_transition_ok(Reserved, FinalDump));
        assert!(source_transition_ok(RestoreRequested, RolledBack));
        assert!(!source_transition_ok(Confirmed, RolledBack));
        assert!(!source_transition_ok(Planned, Confirmed));
        assert!(!source_transition_ok(CleanedUp, Planned));
    }

    #[test]
    fn precopy_rounds_stop_when_they_stop_shrinking() {
        assert!(another_precopy_round(1, 4, None, 1 << 30, 0.5, 1 << 20));
        assert!(another_precopy_round(2, 4, Some(1 << 30), 100 << 20, 0.5, 1 << 20));
        assert!(!another_precopy_round(3, 4, Some(100 << 20), 80 << 20, 0.5, 1 << 20), "did not shrink enough");
        assert!(!another_precopy_round(2, 4, Some(1 << 30), 1 << 20, 0.5, 1 << 20), "small enough already");
        assert!(!another_precopy_round(4, 4, Some(1 << 30), 100 << 20, 0.5, 1 << 20), "budget spent");
    }
}
