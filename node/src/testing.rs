//! Helpers for tests that need a real migration host (root, CRIU >= 4.2).
//!
//! On a developer machine without them the test is skipped with a clear reason. Under CI
//! (`CI=true`, where both are installed by the test command) a missing prerequisite fails the
//! test instead, so CI can never pass by skipping.

use crate::hostcheck;

/// Why this host cannot run real-CRIU tests, if it cannot.
pub fn migration_host_missing() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CRIU, namespaces)".into());
    }
    let Some(criu) = hostcheck::criu_path() else {
        return Some("needs criu >= 4.2 (run scripts/install-deps)".into());
    };
    let out = std::process::Command::new(&criu).arg("--version").output().ok()?;
    match hostcheck::parse_criu_version(&String::from_utf8_lossy(&out.stdout)) {
        Some((a, b, _)) if (a, b) >= hostcheck::MIN_CRIU => None,
        other => Some(format!("needs criu >= 4.2, found {other:?} at {}", criu.display())),
    }
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
