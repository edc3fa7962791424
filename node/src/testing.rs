//! Helpers for tests that need a real migration host (root, CRIU >= 4.2).
//!
//! On a developer machine without them the test is skipped with a clear reason. Under CI
//! (`CI=true`, where both are installed by the test command) a missing prerequisite fails the
//! test instead, so CI can never pass by skipping.

/// Why this host cannot run real-CRIU tests, if it cannot.
pub fn migration_host_missing() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CRIU, namespaces)".into());
    }
    // The driver's own detection: the same binary, version floor and probes the node uses.
    crate::criu::Criu::detect().err().map(|e| e.to_string())
}

/// True when the test may run; false (after printing why) when it must be skipped.
/// Panics under CI, where skipping would hide a broken set-up.
pub fn require_migration_host(test: &str) -> bool {
    match migration_host_missing() {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("{test}: {why}; CI must run this test")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}
