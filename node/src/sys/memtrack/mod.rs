//! Dirty-page tracking without soft-dirty: which pages of a process tree were written since the
//! last look, for pre-copy rounds that ship only those.
//!
//! Linux 6.7+ offers what CRIU's soft-dirty tracking needed a kernel option for: register a
//! process's private writable mappings with a userfaultfd in asynchronous write-protect mode
//! (`UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED`, [`uffd`]), and the first write to a
//! protected page merely drops its protection, without blocking the writer. `ioctl(PAGEMAP_SCAN)`
//! ([`pagemap`]) then returns the pages that lost it and protects them again in the same walk.
//!
//! - [`Tracker`]: a workload's whole tree. Each [`Tracker::round`] returns, per pid, what was
//!   written since the round before as [`PageRange`]s. Anything not registered before (a new
//!   mapping, a forked or exec'd process) is registered and reported wholly dirty.
//! - [`inject`]: the userfaultfd must be created inside the tracee; it is injected with ptrace
//!   (x86_64), copied out with `pidfd_getfd` and closed in the tracee again, so CRIU can still
//!   dump it. Workloads we started and ones we adopt are tracked the same way.
//! - [`maps`]: which mappings are worth tracking (private and writable).
//! - [`probe()`]: does it work on this host (`hotspot-node check`)?
//!
//! # What is reported
//! Every page written since the last round, by the process or by the kernel on its behalf
//! (`read(2)` into a buffer): none is missed. Reads are not reported. Reported although not
//! written (the safe direction): pages a `MADV_DONTNEED` zapped, ranges that were `mremap`ed or
//! unmapped and mapped again, and a new mapping, process or address space (all of it, once).
//! A write to a transparent huge page splits it and reports the 4 KiB page written. Dirty
//! ranges may have been unmapped by the time the caller reads them. The last round must run
//! with the tree frozen: between rounds writes go on.
//!
//! # Cost
//! A round is one `/proc/PID/maps` read plus one `PAGEMAP_SCAN` per registered range for each
//! process. Measured on this machine kind (2 vCPU VM, Linux 6.18, load average 5.5 from other
//! builds, debug build), a process with 1 GiB populated and 1% of its pages (2,621 of 262,144,
//! random) written between rounds: `round()` takes 0.96-1.25 ms (medians 1.00-1.13 ms over
//! three runs of seven rounds; one outlier at 5.1 ms), a round with nothing written 0.5-0.7 ms,
//! and the first round (adopting, registering and write-protecting the 1 GiB) 53-144 ms:
//! `cargo test -p hotspot-node --test memtrack -- --ignored --nocapture round_time_1g`.
//! Adopting a process stops it for about 0.1 ms; a write to a protected page costs the writer
//! about 1 us, once per page and round.

pub mod error;
pub mod inject;
pub mod maps;
pub mod pagemap;
pub mod probe;
pub mod range;
pub mod tracker;
pub mod uffd;

pub use error::MemtrackError;
pub use probe::{probe, Probe};
pub use range::PageRange;
pub use tracker::{Pid, ProcessRound, ProcessStatus, Round, Tracker};
