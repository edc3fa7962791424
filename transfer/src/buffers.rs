//! Reusable batch buffers and vectored writes for the data path.
//!
//! A 1 GiB transfer moves ~1000 batches of ~1 MiB through each side. Allocating each batch
//! buffer fresh cost more CPU than zstd on this class of machine: every new buffer is fresh
//! anonymous memory the kernel must fault in and zero page by page (`clear_page`), and glibc
//! hands large freed blocks back to the kernel. A small bounded pool keeps a few warm buffers;
//! vectored writes put verified chunks into packs and images straight from the batch buffer
//! instead of gathering them into yet another copy first.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// A bounded free list of byte buffers.
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Most buffers kept; the rest are freed when returned.
    keep: usize,
}

impl BufferPool {
    pub const fn new(keep: usize) -> Self {
        BufferPool { free: Mutex::new(Vec::new()), keep }
    }

    /// A buffer of exactly `len` bytes (contents unspecified: the caller overwrites them).
    /// Zero-fills only what a recycled buffer lacks, never the whole length again.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        if buf.len() > len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        buf
    }

    /// An empty buffer with room for `cap` bytes (for writers that fill spare capacity).
    pub fn take_empty(&self, cap: usize) -> Vec<u8> {
        let mut buf = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        buf.clear();
        buf.reserve(cap);
        buf
    }

    pub fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep && buf.capacity() > 0 {
            free.push(buf);
        }
    }
}

/// A pooled buffer that goes back to its pool when dropped: the owner behind a
/// [`bytes::Bytes`] handed to quinn, which keeps it until the peer acknowledged the data.
pub(crate) struct Pooled {
    pub buf: Vec<u8>,
    pub pool: &'static BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

/// Writes every byte of `slices`, in order: at `offset` with `pwritev`, or at the end of an
/// append-mode file with `writev` when `offset` is `None`. Retries partial writes.
pub(crate) fn write_all_vectored(file: &File, offset: Option<u64>, slices: &[&[u8]]) -> std::io::Result<()> {
    const IOV_MAX: usize = 1024;
    let mut iov: Vec<IoSlice<'_>> = slices.iter().filter(|s| !s.is_empty()).map(|s| IoSlice::new(s)).collect();
    let mut iov = &mut iov[..];
    let mut at = offset;
    while !iov.is_empty() {
        let n = iov.len().min(IOV_MAX);
        // SAFETY: IoSlice is ABI-compatible with iovec; the slices outlive the call.
        let written = unsafe {
            let ptr = iov.as_ptr().cast::<libc::iovec>();
            match at {
                Some(off) => libc::pwritev(file.as_raw_fd(), ptr, n as libc::c_int, off as libc::off_t),
                None => libc::writev(file.as_raw_fd(), ptr, n as libc::c_int),
            }
        };
        if written < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        at = at.map(|o| o + written as u64);
        IoSlice::advance_slices(&mut iov, written as usize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn vectored_writes_land_in_order_and_pool_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = std::fs::OpenOptions::new().create(true).read(true).write(true).open(&path).unwrap();
        let parts: Vec<Vec<u8>> = (0..3000u32).map(|i| vec![(i % 251) as u8; 1 + (i as usize % 7)]).collect();
        let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        write_all_vectored(&f, Some(5), &slices).unwrap();
        let want: Vec<u8> = parts.concat();
        let mut got = vec![0u8; want.len()];
        f.read_exact_at(&mut got, 5).unwrap();
        assert_eq!(got, want);

        let a = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("a")).unwrap();
        write_all_vectored(&a, None, &[b"ab", b"", b"cd"]).unwrap();
        write_all_vectored(&a, None, &[b"ef"]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"abcdef");

        static POOL: BufferPool = BufferPool::new(2);
        let bufs: Vec<Vec<u8>> = (0..4).map(|_| POOL.take(10)).collect();
        bufs.into_iter().for_each(|b| POOL.give(b));
        assert_eq!(POOL.free.lock().unwrap().len(), 2);
        assert_eq!(POOL.take(3).len(), 3);
        assert_eq!(POOL.take(30).len(), 30);
    }
}
