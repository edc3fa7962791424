//! Helpers shared by the benches (`mod support;` in each): medians of measurements and the
//! `hotspot-node` binary built for them. Tested by `tests/bench_support.rs`.
#![allow(dead_code)] // each bench uses what it needs

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A measurement with a total order (floats by `total_cmp`, so a NaN cannot break the sort).
pub trait Measure: Copy {
    fn order(&self, other: &Self) -> Ordering;
}

impl Measure for f64 {
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

impl Measure for Duration {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
}

/// The middle value of `values` (the upper one of the two middles for an even count).
/// Panics on no values: a bench that measured nothing has nothing to report.
pub fn median<T: Measure>(mut values: Vec<T>) -> T {
    assert!(!values.is_empty(), "median of no measurements");
    values.sort_by(T::order);
    values[values.len() / 2]
}

/// Builds `hotspot-node` with the bench profile and the target selection of `cargo bench
/// --bench <bench>`, so cargo resolves the same features and reuses everything it just built;
/// returns its path.
pub fn daemon_binary(bench: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--profile", "bench", "--quiet", "--bench", bench, "--bin", "hotspot-node"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building hotspot-node failed");
    binary_beside(&std::env::current_exe().expect("bench executable path"), "hotspot-node")
}

/// The binary `name` of the profile directory a bench executable runs from
/// (`<target>/release/deps/<bench>-<hash>` -> `<target>/release/<name>`).
pub fn binary_beside(bench_exe: &Path, name: &str) -> PathBuf {
    let deps = bench_exe.parent().expect("bench executable in a deps directory");
    deps.parent().unwrap_or(deps).join(name)
}
