//! Does dirty-page tracking work on this host? Forks a child, tracks it exactly as a workload
//! would be tracked (ptrace injection included), has it write a known set of pages and checks
//! that exactly those come back, then that a quiet round comes back empty.

use std::time::Instant;

use super::range::{intersect, page_size, PageRange};
use super::tracker::{ProcessStatus, Tracker};

/// The answer `hotspot-node check` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub works: bool,
    /// What was checked, or why it does not work.
    pub reason: String,
}

/// Pages of the probe's region; the first half is populated before the fork (copy-on-write
/// pages in the child), the second half is not (write-protect of unpopulated pages).
const PAGES: usize = 64;
/// The pages the child writes.
const WRITE: [u32; 7] = [1, 7, 31, 32, 33, 50, 63];
const ACK: u32 = u32::MAX;

/// Runs the probe (a few milliseconds).
pub fn probe() -> Probe {
    match run() {
        Ok(reason) => Probe { works: true, reason },
        Err(reason) => Probe { works: false, reason },
    }
}

fn run() -> Result<String, String> {
    let started = Instant::now();
    let ps = page_size() as usize;
    let child = Child::fork(PAGES * ps)?;
    let region = [PageRange::new(child.region as u64, (PAGES * ps) as u64)];
    let mut tracker = Tracker::new(child.pid).map_err(|e| e.to_string())?;

    let first = tracker.round();
    let p = first.process(child.pid).ok_or("the probe child vanished")?;
    match &p.status {
        ProcessStatus::New => {}
        ProcessStatus::Untracked(why) => return Err(why.clone()),
        other => return Err(format!("first round saw the child as {other:?}")),
    }
    if intersect(&p.wholly_dirty, &region) != region {
        return Err("the first round did not report the child's memory wholly dirty".into());
    }

    child.write_pages(&WRITE)?;
    let second = tracker.round();
    let got = pages_in(second.process(child.pid).map(|p| p.dirty.as_slice()).unwrap_or(&[]), &region, ps);
    if got != WRITE {
        return Err(format!("wrote pages {WRITE:?} of a {PAGES}-page region, PAGEMAP_SCAN reported {got:?}"));
    }
    let third = tracker.round();
    let again = pages_in(third.process(child.pid).map(|p| p.dirty.as_slice()).unwrap_or(&[]), &region, ps);
    if !again.is_empty() {
        return Err(format!("a round without writes reported pages {again:?}"));
    }
    Ok(format!(
        "userfaultfd WP_ASYNC + PAGEMAP_SCAN: {} written pages found exactly, a quiet round empty ({} ms)",
        WRITE.len(),
        started.elapsed().as_millis()
    ))
}

/// Page indexes (within `region`) covered by `dirty`.
fn pages_in(dirty: &[PageRange], region: &[PageRange; 1], ps: usize) -> Vec<u32> {
    intersect(dirty, region)
        .iter()
        .flat_map(|r| {
            let first = (r.start - region[0].start) as usize / ps;
            (first..first + r.len as usize / ps).map(|i| i as u32)
        })
        .collect()
}

/// The forked child: writes the pages it is told to over a pipe. Killed and reaped on drop.
struct Child {
    pid: i32,
    region: *mut u8,
    len: usize,
    cmd: i32,
    ack: i32,
}

impl Child {
    fn fork(len: usize) -> Result<Child, String> {
        let ps = page_size() as usize;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let region = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if region == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let region = region as *mut u8;
        for i in 0..PAGES / 2 {
            // SAFETY: inside the mapping just created.
            unsafe { region.add(i * ps).write_volatile(1) };
        }
        let (mut cmd, mut ack) = ([0; 2], [0; 2]);
        // SAFETY: pipe2 writes two descriptors into each array.
        if unsafe { libc::pipe2(cmd.as_mut_ptr(), libc::O_CLOEXEC) != 0 || libc::pipe2(ack.as_mut_ptr(), libc::O_CLOEXEC) != 0 } {
            return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the child runs only async-signal-safe code (read, write, _exit and stores to
        // its copy of the mapping) before it exits, as required after fork in a threaded process.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above; the descriptors and mapping were inherited.
            unsafe { child_loop(region, ps, cmd[0], ack[1]) }
        }
        // SAFETY: closing our copies of the child's pipe ends.
        unsafe {
            libc::close(cmd[0]);
            libc::close(ack[1]);
        }
        let child = Child { pid, region, len, cmd: cmd[1], ack: ack[0] };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        Ok(child)
    }

    fn write_pages(&self, pages: &[u32]) -> Result<(), String> {
        for &i in pages.iter().chain(&[ACK]) {
            let b = i.to_ne_bytes();
            // SAFETY: writes 4 bytes from a local buffer to our pipe end.
            if unsafe { libc::write(self.cmd, b.as_ptr().cast(), 4) } != 4 {
                return Err(format!("probe child pipe: {}", std::io::Error::last_os_error()));
            }
        }
        let mut got = [0u8; 1];
        // SAFETY: reads 1 byte into a local buffer.
        if unsafe { libc::read(self.ack, got.as_mut_ptr().cast(), 1) } != 1 {
            return Err("the probe child did not answer (killed by the injection?)".into());
        }
        Ok(())
    }
}

/// The child: `u32` page index → write to that page; [`ACK`] → answer one byte; EOF → exit.
unsafe fn child_loop(region: *mut u8, ps: usize, cmd: i32, ack: i32) -> ! {
    loop {
        let mut b = [0u8; 4];
        // SAFETY (all below): reads into a local buffer, stores inside the inherited mapping
        // (indexes come from the parent and are < PAGES), writes from a local buffer.
        if unsafe { libc::read(cmd, b.as_mut_ptr().cast(), 4) } != 4 {
            unsafe { libc::_exit(0) }
        }
        match u32::from_ne_bytes(b) {
            ACK => {
                unsafe { libc::write(ack, [1u8].as_ptr().cast(), 1) };
            }
            i if (i as usize) < PAGES => unsafe { region.add(i as usize * ps + 8).write_volatile(0x5a) },
            _ => unsafe { libc::_exit(2) },
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: the child is ours: kill and reap it, close our pipe ends, unmap our copy.
        unsafe {
            if self.pid > 0 {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
            libc::close(self.cmd);
            libc::close(self.ack);
            libc::munmap(self.region.cast(), self.len);
        }
    }
}
