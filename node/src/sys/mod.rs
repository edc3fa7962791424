//! The lowest layer: thin, tested wrappers around what the host offers. Nothing here knows
//! about workloads, CRIU or migrations.
//!
//! - [`process`]: running programs with captured output and clear errors.
//! - [`program`]: finding a program (`$HOTSPOT_<NAME>`, then `PATH` and the sbin directories).
//! - [`mounts`]: reading the mount table.
//! - [`netns`]: network namespaces, veth pairs, addresses.
//! - [`cgroup`]: the cgroup v2 directory of a workload.
//! - [`loopdev`]: loop devices for image-file volumes.
//! - [`clock`]: the wall clock persisted times use.
//! - [`names`]: the `hs-…` namespace names.
//! - [`fault`]: test-build fault injection (empty in release builds).
//! - [`memtrack`]: dirty-page tracking of a process tree (userfaultfd async write-protect +
//!   `PAGEMAP_SCAN`), and the host probe `check` reports.

pub mod cgroup;
pub mod clock;
pub mod loopdev;
pub mod memtrack;
pub mod mounts;
pub mod names;
pub mod netns;
pub mod process;
pub mod program;
pub mod fault;
