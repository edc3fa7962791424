//! `ioctl(PAGEMAP_SCAN)` on `/proc/PID/pagemap` (Linux 6.7+): the written pages of a range,
//! optionally re-protecting them in the same walk (get-and-clear).
//!
//! A page is `PAGE_IS_WRITTEN` when it is present (or swapped) without its uffd write-protect
//! bit, i.e. written since it was last protected. With `PM_SCAN_WP_MATCHING` the kernel
//! protects the matching pages again as it reports them, so no write between report and
//! re-protect can be lost. `PM_SCAN_CHECK_WPASYNC` makes the ioctl fail with `EPERM` on a VMA
//! that is not registered in async write-protect mode, where "written" would mean nothing.
//!
//! The descriptor is opened once per tracked address space and pins that `mm`: after an
//! `execve` it still refers to the old one, which is how [`Pagemap::mm_alive`] notices the exec.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::error::{last_errno, proc_error, MemtrackError};
use super::range::PageRange;

pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct page_region` of `include/uapi/linux/fs.h`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` of `include/uapi/linux/fs.h`.
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

/// Regions per ioctl. Contiguous written pages come back as one region; a scan that fills the
/// buffer continues from `walk_end`.
const VEC_LEN: usize = 4096;

/// An open `/proc/PID/pagemap` with a reusable result buffer.
pub struct Pagemap {
    file: File,
    pid: i32,
    buf: Vec<PageRegion>,
}

impl Pagemap {
    pub fn open(pid: i32) -> Result<Pagemap, MemtrackError> {
        let path = format!("/proc/{pid}/pagemap");
        let file = File::open(&path).map_err(|e| proc_error(pid, path, e))?;
        Ok(Pagemap { file, pid, buf: vec![PageRegion::default(); VEC_LEN] })
    }

    /// Appends the pages of `range` written since they were last protected to `out`, and
    /// protects them again (get-and-clear). `EPERM` means part of `range` is not registered.
    pub fn take_written(&mut self, range: PageRange, out: &mut Vec<PageRange>) -> Result<(), MemtrackError> {
        self.scan(range, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, 0, out)
    }

    /// Appends the written pages of `range` to `out` without touching them (a peek).
    pub fn peek_written(&mut self, range: PageRange, out: &mut Vec<PageRange>) -> Result<(), MemtrackError> {
        self.scan(range, PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, 0, out)
    }

    /// Appends the pages of `range` that hold data (present or swapped out) to `out`.
    pub fn populated(&mut self, range: PageRange, out: &mut Vec<PageRange>) -> Result<(), MemtrackError> {
        self.scan(range, 0, 0, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, out)
    }

    fn scan(&mut self, range: PageRange, flags: u64, mask: u64, anyof: u64, out: &mut Vec<PageRange>) -> Result<(), MemtrackError> {
        let end = range.end();
        let mut cur = range.start;
        while cur < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags,
                start: cur,
                end,
                vec: self.buf.as_mut_ptr() as u64,
                vec_len: self.buf.len() as u64,
                category_mask: mask,
                category_anyof_mask: anyof,
                return_mask: mask | anyof,
                ..PmScanArg::default()
            };
            // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `self.buf`, which has
            // room for `vec_len` page_regions and outlives the call.
            let n = unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) };
            if n < 0 {
                return Err(last_errno("PAGEMAP_SCAN", self.pid));
            }
            let n = n as usize;
            out.extend(self.buf[..n].iter().map(|r| PageRange::from_bounds(r.start, r.end)));
            // Completion is decided by the count: a walk that finished with room to spare may
            // still leave `walk_end` short of `end` (seen on 6.18). Only a full buffer means
            // "stopped early, go on from walk_end".
            if n < self.buf.len() || arg.walk_end <= cur {
                break;
            }
            cur = arg.walk_end;
        }
        Ok(())
    }

    /// False once the address space this descriptor was opened on is gone (the process
    /// exec'd or exited): reads of a dead `mm`'s pagemap return nothing.
    pub fn mm_alive(&self) -> bool {
        let mut entry = [0u8; 8];
        matches!(self.file.read_at(&mut entry, 0), Ok(8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_and_layout_match_the_uapi_header() {
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(std::mem::size_of::<PageRegion>(), 24);
    }
}
