//! Helpers for tests that need a real migration host (root, CRIU >= 4.2).
//!
//! On a developer machine without them the test is skipped with a clear reason. Under CI
//! (`CI=true`, where both are installed by the test command) a missing prerequisite fails the
//! test instead, so CI can never pass by skipping.

use hotspot_node::sys::names;
use hotspot_node::workload::Workloads;

use crate::testbed::Cleanup;

/// Why this host cannot run real-CRIU tests, if it cannot.
pub fn migration_host_missing() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CRIU, namespaces)".into());
    }
    // The driver's own detection: the same binary, version floor and probes the node uses.
    hotspot_node::criu::Criu::detect().err().map(|e| e.to_string())
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

/// The preamble every host test shares, as one fixture: the host check, a temporary state
/// directory, a [`Workloads`] registry in it and a clean-up guard that removes what the test
/// started (also when it panics).
///
/// ```ignore
/// let Some(mut t) = HostTest::new("host_something") else { return };
/// let web = t.workload("web"); // stopped, and its namespace removed, when `t` drops
/// let wls = t.workloads.clone();
/// ```
pub struct HostTest {
    // Fields drop in this order: the guard stops workloads while their records (in `tmp`) exist.
    pub guard: Cleanup,
    pub workloads: Workloads,
    pub tmp: tempfile::TempDir,
}

impl HostTest {
    /// `None` (after printing why) when the host cannot run real-CRIU tests; panics under CI.
    pub fn new(test: &str) -> Option<HostTest> {
        if !require_migration_host(test) {
            return None;
        }
        let tmp = tempfile::tempdir().expect("temporary directory");
        let workloads = Workloads::new(tmp.path().join("state"));
        let guard = Cleanup::new(workloads.clone());
        Some(HostTest { guard, workloads, tmp })
    }

    /// A workload name unique to this test process (`PREFIX-<pid>`), so parallel runs and
    /// leftovers of a crashed run never collide.
    pub fn name(&self, prefix: &str) -> String {
        format!("{prefix}-{}", std::process::id())
    }

    /// A unique workload name (see [`HostTest::name`]) that the guard stops at the end, together
    /// with the namespace the node runs it in.
    pub fn workload(&mut self, prefix: &str) -> String {
        let name = self.name(prefix);
        self.guard.names.push(name.clone());
        self.guard.netns.push(names::workload_netns(&name));
        name
    }

    /// Registers one more namespace (a client's, a restore target's) for removal at the end.
    pub fn netns(&mut self, netns: impl Into<String>) -> String {
        let netns = netns.into();
        self.guard.netns.push(netns.clone());
        netns
    }

    /// A fresh directory under the test's temporary directory.
    pub fn dir(&self, name: &str) -> std::path::PathBuf {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("test directory");
        dir
    }
}
