//! The one error type of dirty-page tracking. Every variant names the call that failed and the
//! process it was about, so a log line says what to look at.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MemtrackError {
    /// A syscall or ioctl made by the tracker failed (`call` is e.g. `"UFFDIO_REGISTER"`,
    /// `"PAGEMAP_SCAN"`, `"ptrace(PTRACE_SEIZE)"`).
    #[error("{call} for pid {pid} failed: {} (errno {errno})", io::Error::from_raw_os_error(*errno))]
    Syscall { call: &'static str, pid: i32, errno: i32 },
    /// A syscall injected into the tracee (`userfaultfd`, `close`) returned an error there.
    #[error("{call} injected into pid {pid} failed there: {} (errno {errno}){}", io::Error::from_raw_os_error(*errno), injected_hint(call, *errno))]
    Injected { call: &'static str, pid: i32, errno: i32 },
    /// The kernel's userfaultfd lacks what asynchronous write-protect tracking needs.
    #[error("userfaultfd for pid {pid} lacks features {missing:#x} (offered {offered:#x}): WP_ASYNC and WP_UNPOPULATED need Linux 6.7+")]
    MissingFeatures { pid: i32, offered: u64, missing: u64 },
    /// A /proc file of the process could not be read or parsed.
    #[error("{path} of pid {pid}: {source}")]
    Proc { pid: i32, path: PathBuf, source: io::Error },
    /// The tracee did not reach a ptrace stop in time (stopped by the cgroup freezer?).
    #[error("pid {pid} did not stop for ptrace within {waited_ms} ms (frozen?)")]
    StopTimeout { pid: i32, waited_ms: u64 },
    /// The tracee exited (or was killed) while the injector had it stopped.
    #[error("pid {pid} left the injection: {what}")]
    Lost { pid: i32, what: String },
    /// Single-stepping the injected syscall ended somewhere unexpected; the tracee's registers
    /// were restored.
    #[error("pid {pid}: the injected syscall at {site:#x} stepped to {rip:#x}")]
    StrayStep { pid: i32, site: u64, rip: u64 },
    /// No `syscall` instruction to borrow, and poking one is unsafe (other threads run the code).
    #[error("pid {pid}: no syscall instruction found to inject through ({threads} threads, so none is poked)")]
    NoSyscallSite { pid: i32, threads: usize },
    /// Injection is implemented for this architecture only.
    #[error("{what}: implemented for x86_64 only, this is {arch}")]
    Unsupported { what: &'static str, arch: &'static str },
}

fn injected_hint(call: &str, errno: i32) -> &'static str {
    match (call, errno) {
        ("userfaultfd", libc::EPERM) | ("userfaultfd", libc::ENOSYS) => {
            " (a seccomp filter or vm.unprivileged_userfaultfd=0 without UFFD_USER_MODE_ONLY)"
        }
        _ => "",
    }
}

impl MemtrackError {
    /// The errno of a failed call, if the error came from one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            MemtrackError::Syscall { errno, .. } | MemtrackError::Injected { errno, .. } => Some(*errno),
            MemtrackError::Proc { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the process went away (exited, or its pid is no longer there): callers treat
    /// the process as gone rather than as a tracking failure.
    pub fn is_gone(&self) -> bool {
        match self {
            MemtrackError::Lost { .. } => true,
            MemtrackError::Proc { source, .. } => {
                source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH)
            }
            MemtrackError::Syscall { errno, .. } => *errno == libc::ESRCH,
            _ => false,
        }
    }
}

/// `Err(Syscall)` with the current errno.
pub(super) fn last_errno(call: &'static str, pid: i32) -> MemtrackError {
    MemtrackError::Syscall { call, pid, errno: io::Error::last_os_error().raw_os_error().unwrap_or(0) }
}

pub(super) fn proc_error(pid: i32, path: impl Into<PathBuf>, source: io::Error) -> MemtrackError {
    MemtrackError::Proc { pid, path: path.into(), source }
}
