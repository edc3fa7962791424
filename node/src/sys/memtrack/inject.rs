//! Getting a userfaultfd for a process we did not start (or did, the path is the same).
//!
//! A userfaultfd belongs to the address space of the process that called `userfaultfd(2)`, so
//! the call has to run inside the tracee. With ptrace (x86_64):
//!
//! 1. `PTRACE_SEIZE` (with `PTRACE_O_SUSPEND_SECCOMP` when `/proc/PID/status` shows a seccomp
//!    mode, since e.g. Docker's default profile blocks `userfaultfd`) and `PTRACE_INTERRUPT`;
//!    the thread stops wherever it was, usually blocked in a syscall.
//! 2. Save its registers. Borrow a `syscall` instruction: the one at `rip - 2` when the thread
//!    sat in a syscall, else one found in the `[vdso]` or another executable mapping; poke
//!    one at `rip` (and restore the word afterwards) only when the process has a single thread,
//!    because another thread could run the poked code.
//! 3. Run `userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)` by setting `rip`, `rax`
//!    and the arguments and single-stepping; `orig_rax = -1` keeps the kernel's syscall-restart
//!    logic away from the injected registers.
//! 4. Copy the new descriptor out with `pidfd_open` + `pidfd_getfd`, then inject `close(fd)`:
//!    the tracee must not hold a userfaultfd, or CRIU refuses to dump it.
//! 5. Restore the saved registers (an interrupted syscall then restarts as after any signal)
//!    and detach. Signals that arrived meanwhile were held back and are sent again.
//!
//! The tracee is stopped for about 0.1 ms. If the tracker dies between steps 3 and 5 the kernel
//! detaches and the tracee resumes with the injected registers; that window is two syscalls.
//! The waits use `waitpid(pid, __WALL)`: should the tracee be the caller's own child and die
//! during the injection, its exit status is consumed here.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::error::MemtrackError;

/// Where the injected syscalls ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallSite {
    /// The thread was stopped right after a `syscall` instruction (`rip - 2`).
    AfterSyscall,
    /// A `syscall` instruction found in an executable mapping (`[vdso]` first).
    Borrowed { addr: u64 },
    /// Written over the code at `rip` and restored afterwards (single-threaded tracee only).
    Poked,
}

/// A userfaultfd of the tracee's address space, now held by the tracker only.
#[derive(Debug)]
pub struct Adopted {
    pub uffd: OwnedFd,
    /// The descriptor number it had in the tracee (closed there again).
    pub tracee_fd: i32,
    pub site: SyscallSite,
    /// From `PTRACE_SEIZE` to `PTRACE_DETACH`.
    pub stopped_for: Duration,
    /// The tracee had a seccomp filter; it was suspended while the syscalls ran.
    pub seccomp_suspended: bool,
}

/// Gives the tracker a userfaultfd for `pid`'s address space (see the module docs).
pub fn adopt(pid: i32) -> Result<Adopted, MemtrackError> {
    imp::adopt(pid)
}

/// `Seccomp:` of `/proc/PID/status`: 0 none, 1 strict, 2 filter.
fn seccomp_mode(pid: i32) -> Result<u32, MemtrackError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| super::error::proc_error(pid, path, e))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::*;

    pub fn adopt(_pid: i32) -> Result<Adopted, MemtrackError> {
        let _ = seccomp_mode;
        Err(MemtrackError::Unsupported { what: "ptrace injection of userfaultfd", arch: std::env::consts::ARCH })
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::fs::File;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    use super::super::error::{last_errno, MemtrackError};
    use super::super::maps;
    use super::super::uffd::UFFD_USER_MODE_ONLY;
    use super::{seccomp_mode, Adopted, SyscallSite};

    /// How long the tracee may take to reach a ptrace stop.
    const STOP_TIMEOUT: Duration = Duration::from_secs(2);
    const SYSCALL_INSN: u16 = 0x050f; // 0f 05, little-endian

    pub fn adopt(pid: i32) -> Result<Adopted, MemtrackError> {
        let seccomp = seccomp_mode(pid)? != 0;
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(1);
        let started = Instant::now();
        let mut s = Seized::attach(pid, seccomp)?;
        let result = inject_and_take(&mut s, pid, threads);
        let detached = s.finish();
        let (uffd, tracee_fd) = result?;
        detached?;
        Ok(Adopted { uffd, tracee_fd, site: s.site, stopped_for: started.elapsed(), seccomp_suspended: seccomp })
    }

    fn inject_and_take(s: &mut Seized, pid: i32, threads: usize) -> Result<(OwnedFd, i32), MemtrackError> {
        s.choose_site(threads)?;
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY) as u64;
        let fd = s.call(libc::SYS_userfaultfd as u64, [flags, 0, 0])?;
        if fd < 0 {
            return Err(MemtrackError::Injected { call: "userfaultfd", pid, errno: -fd as i32 });
        }
        let fd = fd as i32;
        let taken = take_fd(pid, fd);
        let closed = s.call(libc::SYS_close as u64, [fd as u64, 0, 0]);
        let uffd = taken?;
        match closed? {
            0 => Ok((uffd, fd)),
            e => Err(MemtrackError::Injected { call: "close", pid, errno: -e as i32 }),
        }
    }

    /// `pidfd_getfd(pidfd_open(pid), fd)`: a duplicate of the tracee's descriptor (close-on-exec).
    fn take_fd(pid: i32, fd: i32) -> Result<OwnedFd, MemtrackError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            return Err(last_errno("pidfd_open", pid));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags; returns a new fd or -1.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if got < 0 {
            return Err(last_errno("pidfd_getfd", pid));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
    }

    /// A seized, stopped thread. `finish` (or drop) restores it and detaches.
    struct Seized {
        pid: i32,
        saved: libc::user_regs_struct,
        site: SyscallSite,
        site_addr: u64,
        /// The original word under a poked `syscall`.
        poked: Option<u64>,
        /// Signals that arrived while the tracee was ours; sent again after the detach.
        held_signals: Vec<i32>,
        attached: bool,
        /// `saved` holds the registers of the interrupt stop (never write back zeros).
        regs_saved: bool,
    }

    fn ptrace(req: libc::c_uint, pid: i32, addr: u64, data: u64) -> libc::c_long {
        // SAFETY: every request used here takes (pid, addr, data) integers or a pointer to a
        // user_regs_struct we own (GETREGS/SETREGS), valid for the call.
        unsafe { libc::ptrace(req, pid, addr as *mut libc::c_void, data as *mut libc::c_void) }
    }

    fn check(rc: libc::c_long, call: &'static str, pid: i32) -> Result<(), MemtrackError> {
        if rc < 0 {
            return Err(last_errno(call, pid));
        }
        Ok(())
    }

    impl Seized {
        fn attach(pid: i32, suspend_seccomp: bool) -> Result<Seized, MemtrackError> {
            let options = if suspend_seccomp { libc::PTRACE_O_SUSPEND_SECCOMP as u64 } else { 0 };
            check(ptrace(libc::PTRACE_SEIZE, pid, 0, options), "ptrace(PTRACE_SEIZE)", pid)?;
            let mut s = Seized {
                pid,
                // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
                saved: unsafe { std::mem::zeroed() },
                site: SyscallSite::AfterSyscall,
                site_addr: 0,
                poked: None,
                held_signals: Vec::new(),
                attached: true,
                regs_saved: false,
            };
            check(ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0), "ptrace(PTRACE_INTERRUPT)", pid)?;
            // Wait for the interrupt's stop; a signal arriving first is held back.
            loop {
                let status = s.wait_stop()?;
                let event = (status >> 16) & 0xff;
                if event == libc::PTRACE_EVENT_STOP {
                    break;
                }
                if event == 0 {
                    s.held_signals.push(libc::WSTOPSIG(status));
                }
                check(ptrace(libc::PTRACE_CONT, pid, 0, 0), "ptrace(PTRACE_CONT)", pid)?;
            }
            s.saved = s.get_regs()?;
            s.regs_saved = true;
            Ok(s)
        }

        fn wait_stop(&mut self) -> Result<i32, MemtrackError> {
            let deadline = Instant::now() + STOP_TIMEOUT;
            let mut pause = Duration::from_micros(5);
            loop {
                let mut status = 0;
                // SAFETY: waitpid writes the status to a local.
                let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL | libc::WNOHANG) };
                if rc < 0 {
                    return Err(last_errno("waitpid", self.pid));
                }
                if rc == self.pid {
                    if libc::WIFSTOPPED(status) {
                        return Ok(status);
                    }
                    self.attached = false;
                    return Err(MemtrackError::Lost { pid: self.pid, what: format!("exited (wait status {status:#x})") });
                }
                if Instant::now() >= deadline {
                    return Err(MemtrackError::StopTimeout { pid: self.pid, waited_ms: STOP_TIMEOUT.as_millis() as u64 });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(1));
            }
        }

        fn get_regs(&self) -> Result<libc::user_regs_struct, MemtrackError> {
            // SAFETY: plain integers; overwritten by GETREGS.
            let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
            check(ptrace(libc::PTRACE_GETREGS, self.pid, 0, &mut regs as *mut _ as u64), "ptrace(PTRACE_GETREGS)", self.pid)?;
            Ok(regs)
        }

        fn set_regs(&self, regs: &libc::user_regs_struct) -> Result<(), MemtrackError> {
            check(ptrace(libc::PTRACE_SETREGS, self.pid, 0, regs as *const _ as u64), "ptrace(PTRACE_SETREGS)", self.pid)
        }

        fn peek(&self, addr: u64) -> Option<u64> {
            // PEEKTEXT returns the word; -1 is also a valid word, so errno tells failures apart.
            // SAFETY: __errno_location returns this thread's errno.
            unsafe { *libc::__errno_location() = 0 };
            let w = ptrace(libc::PTRACE_PEEKTEXT, self.pid, addr, 0);
            // SAFETY: as above.
            (w != -1 || unsafe { *libc::__errno_location() } == 0).then_some(w as u64)
        }

        fn choose_site(&mut self, threads: usize) -> Result<(), MemtrackError> {
            let rip = self.saved.rip;
            if self.peek(rip.wrapping_sub(2)).is_some_and(|w| w as u16 == SYSCALL_INSN) {
                self.site = SyscallSite::AfterSyscall;
                self.site_addr = rip - 2;
                return Ok(());
            }
            if let Some(addr) = find_syscall_insn(self.pid) {
                self.site = SyscallSite::Borrowed { addr };
                self.site_addr = addr;
                return Ok(());
            }
            if threads > 1 {
                return Err(MemtrackError::NoSyscallSite { pid: self.pid, threads });
            }
            let word = self.peek(rip).ok_or_else(|| last_errno("ptrace(PTRACE_PEEKTEXT)", self.pid))?;
            let patched = (word & !0xffff) | SYSCALL_INSN as u64;
            check(ptrace(libc::PTRACE_POKETEXT, self.pid, rip, patched), "ptrace(PTRACE_POKETEXT)", self.pid)?;
            self.poked = Some(word);
            self.site = SyscallSite::Poked;
            self.site_addr = rip;
            Ok(())
        }

        /// Runs one syscall in the tracee; returns its raw result (`-errno` on failure).
        fn call(&mut self, nr: u64, args: [u64; 3]) -> Result<i64, MemtrackError> {
            let mut regs = self.saved;
            regs.rip = self.site_addr;
            regs.rax = nr;
            regs.orig_rax = u64::MAX; // -1: not in a syscall, so nothing gets "restarted"
            regs.rdi = args[0];
            regs.rsi = args[1];
            regs.rdx = args[2];
            self.set_regs(&regs)?;
            loop {
                check(ptrace(libc::PTRACE_SINGLESTEP, self.pid, 0, 0), "ptrace(PTRACE_SINGLESTEP)", self.pid)?;
                let status = self.wait_stop()?;
                let after = self.get_regs()?;
                let sig = libc::WSTOPSIG(status);
                let event = (status >> 16) & 0xff;
                if after.rip == self.site_addr + 2 && sig == libc::SIGTRAP && event == 0 {
                    return Ok(after.rax as i64);
                }
                if after.rip != self.site_addr {
                    return Err(MemtrackError::StrayStep { pid: self.pid, site: self.site_addr, rip: after.rip });
                }
                // Stopped before the instruction ran: a signal (held back) or a group stop.
                if event == 0 && sig != libc::SIGTRAP {
                    self.held_signals.push(sig);
                }
            }
        }

        /// Restores code and registers, detaches, re-sends held signals.
        fn finish(&mut self) -> Result<(), MemtrackError> {
            if !self.attached {
                return Ok(());
            }
            self.attached = false;
            let mut result = Ok(());
            if let Some(word) = self.poked.take() {
                result = check(ptrace(libc::PTRACE_POKETEXT, self.pid, self.saved.rip, word), "ptrace(PTRACE_POKETEXT)", self.pid);
            }
            let regs = if self.regs_saved { self.set_regs(&self.saved) } else { Ok(()) };
            let detach = check(ptrace(libc::PTRACE_DETACH, self.pid, 0, 0), "ptrace(PTRACE_DETACH)", self.pid);
            for sig in self.held_signals.drain(..) {
                // SAFETY: tgkill takes integers; sends the signal the tracee missed.
                unsafe { libc::syscall(libc::SYS_tgkill, self.pid, self.pid, sig) };
            }
            result.and(regs).and(detach)
        }
    }

    impl Drop for Seized {
        fn drop(&mut self) {
            let _ = self.finish();
        }
    }

    /// The address of a `syscall` instruction in the tracee's `[vdso]`, else in any other
    /// executable mapping, read through `/proc/PID/mem`.
    fn find_syscall_insn(pid: i32) -> Option<u64> {
        let mappings = maps::read(pid).ok()?;
        let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
        let mut candidates: Vec<_> = mappings.iter().filter(|m| m.exec && m.read && m.name.as_deref() != Some("[vsyscall]")).collect();
        candidates.sort_by_key(|m| m.name.as_deref() != Some("[vdso]"));
        let mut buf = vec![0u8; 64 * 1024];
        for m in candidates {
            let mut off = m.range.start;
            while off < m.range.end() {
                let n = ((m.range.end() - off) as usize).min(buf.len());
                let Ok(got) = mem.read_at(&mut buf[..n], off) else { break };
                if got < 2 {
                    break;
                }
                if let Some(i) = buf[..got].windows(2).position(|w| w == [0x0f, 0x05]) {
                    return Some(off + i as u64);
                }
                // Step back one byte so an instruction split across reads is seen.
                off += got as u64 - 1;
            }
        }
        None
    }
}
