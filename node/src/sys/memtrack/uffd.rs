//! A userfaultfd in asynchronous write-protect mode, held by the tracker.
//!
//! The descriptor belongs to the tracked process's address space (it was created there, see
//! [`super::inject`]) but lives only in the tracker: every ioctl here runs from outside. In
//! `WP_ASYNC` mode a write to a protected page does not fault to anyone: the kernel drops the
//! protection and the write goes on, and [`super::pagemap`] later reads (and re-protects) the
//! pages that lost it. Closing the descriptor unregisters every range.
//!
//! The uapi constants are from Linux 6.7+ `include/uapi/linux/userfaultfd.h` (the libc crate and
//! Debian 12's headers predate them).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::error::{last_errno, MemtrackError};
use super::range::PageRange;

const UFFD_API: u64 = 0xAA;
/// `userfaultfd(2)` flag: only faults from user mode are handled. Lets an unprivileged tracee
/// create the descriptor when `vm.unprivileged_userfaultfd=0`; write-protect in async mode
/// never delivers faults, so kernel-mode writes (`read(2)` into a buffer) are still tracked.
pub const UFFD_USER_MODE_ONLY: i32 = 1;
/// `UFFD_FEATURE_WP_UNPOPULATED`: write-protecting also marks pages not yet populated.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults itself.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
const REGISTER_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// `_IOWR(0xAA, nr, size)` and `_IOR(0xAA, nr, size)`.
const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

const UFFDIO_API: u64 = iowr(0x3F, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: u64 = ior(0x01, std::mem::size_of::<UffdioRange>());
const UFFDIO_WRITEPROTECT: u64 = iowr(0x06, std::mem::size_of::<UffdioWriteprotect>());

/// Creates a userfaultfd for the calling process's own address space (close-on-exec,
/// non-blocking, user-mode faults only). The tracker gets the tracee's through injection.
pub fn create_own() -> Result<OwnedFd, MemtrackError> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
    // SAFETY: userfaultfd(2) takes one integer argument and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        // SAFETY: getpid has no preconditions.
        return Err(last_errno("userfaultfd", unsafe { libc::getpid() }));
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// An initialised userfaultfd (API handshake done with `WP_ASYNC | WP_UNPOPULATED`).
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    /// The process whose address space the descriptor belongs to (for error messages).
    pid: i32,
}

impl Uffd {
    /// Runs `UFFDIO_API` on a fresh descriptor. Fails when the kernel lacks the features.
    pub fn init(fd: OwnedFd, pid: i32) -> Result<Uffd, MemtrackError> {
        let uffd = Uffd { fd, pid };
        let wanted = FEATURE_WP_ASYNC | FEATURE_WP_UNPOPULATED;
        let mut api = UffdioApi { api: UFFD_API, features: wanted, ioctls: 0 };
        if let Err(e) = uffd.ioctl("UFFDIO_API", UFFDIO_API, &mut api) {
            if e.errno() == Some(libc::EINVAL) {
                // An older kernel refuses unknown feature bits: ask what it has, for the message.
                let offered = offered_features().unwrap_or(0);
                return Err(MemtrackError::MissingFeatures { pid, offered, missing: wanted & !offered });
            }
            return Err(e);
        }
        if api.features & wanted != wanted {
            return Err(MemtrackError::MissingFeatures { pid, offered: api.features, missing: wanted & !api.features });
        }
        Ok(uffd)
    }

    /// Registers `range` for write-protect tracking. The range's pages are not protected yet:
    /// follow with [`Uffd::write_protect`].
    pub fn register(&self, range: PageRange) -> Result<(), MemtrackError> {
        let mut reg = UffdioRegister { range: to_uffd(range), mode: REGISTER_MODE_WP, ioctls: 0 };
        self.ioctl("UFFDIO_REGISTER", UFFDIO_REGISTER, &mut reg)
    }

    pub fn unregister(&self, range: PageRange) -> Result<(), MemtrackError> {
        let mut r = to_uffd(range);
        self.ioctl("UFFDIO_UNREGISTER", UFFDIO_UNREGISTER, &mut r)
    }

    /// Write-protects every page of a registered range, populated or not.
    pub fn write_protect(&self, range: PageRange) -> Result<(), MemtrackError> {
        let mut wp = UffdioWriteprotect { range: to_uffd(range), mode: WRITEPROTECT_MODE_WP };
        self.ioctl("UFFDIO_WRITEPROTECT", UFFDIO_WRITEPROTECT, &mut wp)
    }

    fn ioctl<T>(&self, call: &'static str, request: u64, arg: &mut T) -> Result<(), MemtrackError> {
        // SAFETY: `arg` is the #[repr(C)] struct this request reads and writes, and it lives
        // for the whole call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, arg as *mut T) };
        if rc < 0 {
            return Err(last_errno(call, self.pid));
        }
        Ok(())
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn to_uffd(r: PageRange) -> UffdioRange {
    UffdioRange { start: r.start, len: r.len }
}

/// The features this kernel's userfaultfd offers (a handshake with `features = 0` on a
/// throw-away descriptor of our own).
pub fn offered_features() -> Result<u64, MemtrackError> {
    let fd = create_own()?;
    let mut api = UffdioApi { api: UFFD_API, features: 0, ioctls: 0 };
    // SAFETY: as in `Uffd::ioctl`: a valid descriptor and the struct UFFDIO_API expects.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut api as *mut UffdioApi) };
    if rc < 0 {
        // SAFETY: getpid has no preconditions.
        return Err(last_errno("UFFDIO_API", unsafe { libc::getpid() }));
    }
    Ok(api.features)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        // Values printed by a C program including <linux/userfaultfd.h>.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xc018_aa06);
    }
}
