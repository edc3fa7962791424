//! Test-only crash points for the fault tests: with `HOTSPOT_FAULT=exit-after:<point>` in its
//! environment, the daemon SIGKILLs itself (as `kill -9` would: no destructor, no flush) right
//! after the named step of a source-side migration. Never set it in production.
//!
//! Points: `final-dump` (the final dump stopped the workload; journal says `FinalDump`),
//! `resources-moved` (volume and address are on the target; journal says `MovingResources`).

/// Crashes the process here if `HOTSPOT_FAULT` names this point.
pub fn point(name: &str) {
    let wanted = std::env::var("HOTSPOT_FAULT").ok();
    if wanted.as_deref().and_then(|v| v.strip_prefix("exit-after:")) == Some(name) {
        tracing::warn!(point = name, "HOTSPOT_FAULT: killing this process (test hook)");
        // SAFETY: kill(2) on ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
