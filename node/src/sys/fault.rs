//! Fault injection for the fault tests: a typed plan given to a test daemon with
//! `hotspot-node run --fault PLAN`. It exists only in builds with the cargo feature
//! `fault-injection` (test builds enable it through the testkit crate); in a release build the
//! hooks below are empty functions and the `--fault` flag does not exist.
//!
//! PLAN is a comma-separated list of:
//! - `crash-after:final-dump`: SIGKILL (no destructor, no flush, as `kill -9`) right after the
//!   final dump stopped the workload (journal says `FinalDump`);
//! - `crash-after:resources-moved`: likewise once volume and address are on the target;
//! - `crash-after:ec2-detach`: likewise between the EC2 detach and attach;
//! - `corrupt-received-images`: the target truncates every received image before restoring it,
//!   as a disk or transfer bug would, so the real restore fails.

/// Where a source-side crash can be planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    FinalDump,
    ResourcesMoved,
    Ec2Detach,
}

#[cfg(feature = "fault-injection")]
pub use plan::{install, FaultPlan, FaultPlanError};

#[cfg(feature = "fault-injection")]
mod plan {
    use std::str::FromStr;
    use std::sync::OnceLock;

    use super::CrashPoint;

    /// What a test daemon is told to break.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct FaultPlan {
        pub crash_after: Option<CrashPoint>,
        pub corrupt_received_images: bool,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("unknown fault {0:?} (known: crash-after:final-dump, crash-after:resources-moved, crash-after:ec2-detach, corrupt-received-images)")]
    pub struct FaultPlanError(String);

    impl FromStr for FaultPlan {
        type Err = FaultPlanError;
        fn from_str(s: &str) -> Result<Self, Self::Err> {
            let mut plan = FaultPlan::default();
            for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                match item {
                    "crash-after:final-dump" => plan.crash_after = Some(CrashPoint::FinalDump),
                    "crash-after:resources-moved" => plan.crash_after = Some(CrashPoint::ResourcesMoved),
                    "crash-after:ec2-detach" => plan.crash_after = Some(CrashPoint::Ec2Detach),
                    "corrupt-received-images" => plan.corrupt_received_images = true,
                    other => return Err(FaultPlanError(other.to_string())),
                }
            }
            Ok(plan)
        }
    }

    static PLAN: OnceLock<FaultPlan> = OnceLock::new();

    /// Sets this process's plan (once, at daemon start).
    pub fn install(plan: FaultPlan) {
        if plan != FaultPlan::default() {
            tracing::warn!(?plan, "fault injection planned (test build)");
        }
        let _ = PLAN.set(plan);
    }

    pub(super) fn get() -> Option<&'static FaultPlan> {
        PLAN.get()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn plans_parse_and_unknown_faults_are_named() {
            let p: FaultPlan = "crash-after:final-dump, corrupt-received-images".parse().unwrap();
            assert_eq!(p, FaultPlan { crash_after: Some(CrashPoint::FinalDump), corrupt_received_images: true });
            assert_eq!("".parse::<FaultPlan>().unwrap(), FaultPlan::default());
            assert!("crash-after:lunch".parse::<FaultPlan>().unwrap_err().to_string().contains("lunch"));
        }
    }
}

/// Crashes this process here if the plan names `point`.
#[inline]
pub fn crash_point(point: CrashPoint) {
    #[cfg(feature = "fault-injection")]
    if plan::get().and_then(|p| p.crash_after) == Some(point) {
        tracing::warn!(?point, "fault injection: killing this process");
        // SAFETY: kill(2) on ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = point;
}

/// Whether the target must corrupt received images before restoring them.
#[inline]
pub fn corrupt_received_images() -> bool {
    #[cfg(feature = "fault-injection")]
    return plan::get().is_some_and(|p| p.corrupt_received_images);
    #[cfg(not(feature = "fault-injection"))]
    false
}
