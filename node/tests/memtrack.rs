//! Dirty-page tracking (`sys::memtrack`) against real processes: children this test forks (a
//! "puppet" that writes, maps, forks and execs on command), and a python3 process adopted while
//! it runs. Needs root and Linux 6.7+ (userfaultfd WP_ASYNC, PAGEMAP_SCAN): skipped with the
//! reason elsewhere, failed under `CI=true`.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hotspot_node::sys::memtrack;

use memtrack::range::{intersect, merge, page_size};
use memtrack::{PageRange, ProcessStatus, Tracker};

/// Why this host cannot run these tests, if it cannot.
fn host_missing() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (ptrace, pidfd_getfd)".into());
    }
    match memtrack::uffd::offered_features() {
        Ok(f) if f & memtrack::uffd::FEATURE_WP_ASYNC != 0 => None,
        Ok(f) => Some(format!("userfaultfd lacks WP_ASYNC (features {f:#x}): needs Linux 6.7+")),
        Err(e) => Some(format!("no userfaultfd: {e}")),
    }
}

/// True when the test may run; false (after printing why) when it must be skipped. Panics
/// under CI, where skipping would hide a broken set-up.
fn require_host(test: &str) -> bool {
    // Checked once, before any test forks: the check opens a userfaultfd in this process, which
    // a puppet forked meanwhile would inherit (and `has_uffd_fd` would then see).
    static MISSING: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    match MISSING.get_or_init(host_missing).clone() {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => panic!("{test}: {why}; CI must run this test"),
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

fn ps() -> u64 {
    page_size()
}

/// A small deterministic generator; the seed is printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn seeded(test: &str) -> Rng {
        let seed = std::env::var("MEMTRACK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        eprintln!("{test}: MEMTRACK_SEED={seed}");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// `n` distinct page indexes below `pages`.
    fn pages(&mut self, n: usize, pages: u64) -> BTreeSet<u64> {
        let mut set = BTreeSet::new();
        while set.len() < n {
            set.insert(self.next() % pages);
        }
        set
    }
}

/// Page indexes of `region` covered by `dirty`.
fn pages_in(dirty: &[PageRange], region: PageRange) -> BTreeSet<u64> {
    intersect(dirty, &[region]).iter().flat_map(|r| (r.start - region.start) / ps()..(r.end() - region.start) / ps()).collect()
}

// ---- the puppet: a forked child that only makes raw syscalls ----

const OP_WRITE: u64 = 1; // arg: address; writes one byte there
const OP_READ_ZERO: u64 = 2; // arg: address; read(2)s one page from /dev/zero there (a kernel write)
const OP_MMAP: u64 = 3; // arg: length; maps and fills a new region, replies its address
const OP_FORK: u64 = 4; // forks a grandchild that sleeps; replies its pid
const OP_EXEC: u64 = 5; // execs `sleep 1000`; no reply
const OP_UFFD: u64 = 6; // tries userfaultfd(2) itself; replies 0 or the errno
const OP_SPIN: u64 = 7; // arg: address; replies, then increments the u64 there forever, no syscalls
const OP_SYNC: u64 = 8; // replies 0 (everything before it is done)
const OP_MMAP_THP: u64 = 9; // arg: length; maps a 2 MiB aligned region with MADV_HUGEPAGE, fills it, replies its address

struct Puppet {
    pid: i32,
    cmd: i32,
    reply: i32,
}

struct PuppetSetup {
    /// Install a seccomp filter that makes userfaultfd(2) fail with EPERM.
    block_userfaultfd: bool,
}

impl Puppet {
    fn spawn(setup: PuppetSetup) -> Puppet {
        let sleep = CString::new("/bin/sleep").unwrap();
        let arg1 = CString::new("1000").unwrap();
        let argv = [sleep.as_ptr(), arg1.as_ptr(), std::ptr::null()];
        let zero = unsafe { libc::open(c"/dev/zero".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        assert!(zero >= 0);
        let filter = seccomp_filter();
        let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut _ };
        let (mut cmd, mut reply) = ([0; 2], [0; 2]);
        unsafe {
            assert_eq!(libc::pipe2(cmd.as_mut_ptr(), libc::O_CLOEXEC), 0);
            assert_eq!(libc::pipe2(reply.as_mut_ptr(), libc::O_CLOEXEC), 0);
        }
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // Only raw syscalls from here on (fork of a threaded process).
            unsafe {
                libc::setpgid(0, 0);
                if setup.block_userfaultfd
                    && (libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                        || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const _) != 0)
                {
                    libc::_exit(3);
                }
                puppet_loop(cmd[0], reply[1], zero, argv.as_ptr())
            }
        }
        unsafe {
            libc::close(cmd[0]);
            libc::close(reply[1]);
            libc::close(zero);
        }
        Puppet { pid, cmd: cmd[1], reply: reply[0] }
    }

    fn send(&self, op: u64, arg: u64) {
        let msg = [op, arg];
        let n = unsafe { libc::write(self.cmd, msg.as_ptr().cast(), 16) };
        assert_eq!(n, 16, "puppet {} command pipe", self.pid);
    }

    fn ask(&self, op: u64, arg: u64) -> u64 {
        self.send(op, arg);
        let mut r = 0u64;
        let n = unsafe { libc::read(self.reply, (&mut r as *mut u64).cast(), 8) };
        assert_eq!(n, 8, "puppet {} did not answer op {op}", self.pid);
        r
    }

    fn write_pages(&self, region: PageRange, pages: &BTreeSet<u64>) {
        for p in pages {
            self.send(OP_WRITE, region.start + p * ps() + 17);
        }
        self.ask(OP_SYNC, 0);
    }
}

impl Drop for Puppet {
    fn drop(&mut self) {
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            libc::close(self.cmd);
            libc::close(self.reply);
        }
    }
}

unsafe fn puppet_loop(cmd: i32, reply: i32, zero: i32, argv: *const *const libc::c_char) -> ! {
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let answer = |v: u64| unsafe {
        libc::write(reply, (&v as *const u64).cast(), 8);
    };
    loop {
        let mut msg = [0u64; 2];
        if unsafe { libc::read(cmd, msg.as_mut_ptr().cast(), 16) } != 16 {
            unsafe { libc::_exit(0) }
        }
        let [op, arg] = msg;
        match op {
            OP_WRITE => unsafe { (arg as *mut u8).write_volatile(0x5a) },
            OP_READ_ZERO => unsafe {
                libc::read(zero, arg as *mut libc::c_void, ps);
            },
            OP_MMAP => unsafe {
                let p = libc::mmap(std::ptr::null_mut(), arg as usize, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
                libc::madvise(p, arg as usize, libc::MADV_NOHUGEPAGE);
                let mut off = 0;
                while off < arg as usize {
                    (p as *mut u8).add(off).write_volatile(1);
                    off += ps;
                }
                answer(p as u64);
            },
            OP_FORK => unsafe {
                let child = libc::fork();
                if child == 0 {
                    loop {
                        libc::pause();
                    }
                }
                answer(child as u64);
            },
            OP_EXEC => unsafe {
                libc::execv(*argv, argv);
                libc::_exit(4);
            },
            OP_UFFD => unsafe {
                let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | 1);
                if fd >= 0 {
                    libc::close(fd as i32);
                    answer(0);
                } else {
                    answer(*libc::__errno_location() as u64);
                }
            },
            OP_SPIN => unsafe {
                answer(0);
                let p = arg as *mut u64;
                loop {
                    p.write_volatile(p.read_volatile() + 1);
                }
            },
            OP_SYNC => answer(0),
            OP_MMAP_THP => unsafe {
                let huge = 2 << 20;
                let p = libc::mmap(std::ptr::null_mut(), arg as usize + huge, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
                let p = ((p as usize + huge - 1) & !(huge - 1)) as *mut u8;
                libc::madvise(p.cast(), arg as usize, libc::MADV_HUGEPAGE);
                let mut off = 0;
                while off < arg as usize {
                    p.add(off).write_volatile(1);
                    off += ps;
                }
                answer(p as u64);
            },
            _ => unsafe { libc::_exit(5) },
        }
    }
}

/// BPF: `userfaultfd` → `SECCOMP_RET_ERRNO | EPERM`, everything else allowed (x86_64 numbers).
fn seccomp_filter() -> Vec<libc::sock_filter> {
    let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt, jf, k };
    vec![
        stmt((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0), // seccomp_data.nr
        jeq(libc::SYS_userfaultfd as u32, 0, 1),
        stmt((libc::BPF_RET | libc::BPF_K) as u16, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt((libc::BPF_RET | libc::BPF_K) as u16, libc::SECCOMP_RET_ALLOW),
    ]
}

fn has_uffd_fd(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("userfaultfd")))
}

fn status(round: &memtrack::Round, pid: i32) -> ProcessStatus {
    round.process(pid).unwrap_or_else(|| panic!("pid {pid} missing from {round:?}")).status.clone()
}

fn dirty(round: &memtrack::Round, pid: i32) -> Vec<PageRange> {
    round.process(pid).map(|p| p.dirty.clone()).unwrap_or_default()
}

// ---- tests ----

#[test]
fn tracks_exactly_the_written_pages() {
    if !require_host("tracks_exactly_the_written_pages") {
        return;
    }
    let mut rng = Rng::seeded("tracks_exactly_the_written_pages");
    let puppet = Puppet::spawn(PuppetSetup { block_userfaultfd: false });
    let len = 64 << 20;
    let region = PageRange::new(puppet.ask(OP_MMAP, len), len);
    let pages = len / ps();
    let mut tracker = Tracker::new(puppet.pid).unwrap();

    let first = tracker.round();
    assert_eq!(status(&first, puppet.pid), ProcessStatus::New);
    assert_eq!(intersect(&first.process(puppet.pid).unwrap().wholly_dirty, &[region]), vec![region]);
    assert!(!has_uffd_fd(puppet.pid), "the tracee holds no userfaultfd");

    for round in 0..3 {
        let written = rng.pages(500, pages);
        puppet.write_pages(region, &written);
        // A kernel write too: read(2) from /dev/zero into a page of its own.
        let by_kernel = rng.next() % pages;
        puppet.send(OP_READ_ZERO, region.start + by_kernel * ps());
        puppet.ask(OP_SYNC, 0);
        let mut expected = written.clone();
        expected.insert(by_kernel);
        let r = tracker.round();
        assert_eq!(status(&r, puppet.pid), ProcessStatus::Tracked);
        let got = pages_in(&dirty(&r, puppet.pid), region);
        let missed: Vec<_> = expected.difference(&got).collect();
        let extra: Vec<_> = got.difference(&expected).collect();
        assert!(missed.is_empty() && extra.is_empty(), "round {round}: missed {missed:?}, extra {extra:?}");
        assert!(intersect(&r.process(puppet.pid).unwrap().wholly_dirty, &[region]).is_empty());
    }
    let quiet = tracker.round();
    assert_eq!(pages_in(&dirty(&quiet, puppet.pid), region), BTreeSet::new(), "a round without writes");
    // Every mapping, the program's file-backed .data and libc's included, stays registered.
    assert_eq!(quiet.process(puppet.pid).unwrap().wholly_dirty, vec![]);
}

#[test]
fn a_write_to_a_huge_page_reports_the_page_written() {
    if !require_host("a_write_to_a_huge_page_reports_the_page_written") {
        return;
    }
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[never]") || thp.is_empty() {
        eprintln!("SKIPPED a_write_to_a_huge_page_reports_the_page_written: transparent huge pages are off");
        return;
    }
    let puppet = Puppet::spawn(PuppetSetup { block_userfaultfd: false });
    let len = 16 << 20;
    let region = PageRange::new(puppet.ask(OP_MMAP_THP, len), len);
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", puppet.pid)).unwrap();
    let huge_kb: u64 = smaps.lines().find_map(|l| l.strip_prefix("AnonHugePages:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap();
    eprintln!("AnonHugePages {huge_kb} kB");
    let mut tracker = Tracker::new(puppet.pid).unwrap();
    tracker.round();
    tracker.round();
    let written = BTreeSet::from([0, 513, 1200, 4095]);
    puppet.write_pages(region, &written);
    let r = tracker.round();
    assert_eq!(pages_in(&dirty(&r, puppet.pid), region), written, "{huge_kb} kB in huge pages");
}

#[test]
fn a_new_mapping_is_reported_wholly_dirty_then_tracked() {
    if !require_host("a_new_mapping_is_reported_wholly_dirty_then_tracked") {
        return;
    }
    let puppet = Puppet::spawn(PuppetSetup { block_userfaultfd: false });
    let mut tracker = Tracker::new(puppet.pid).unwrap();
    tracker.round();
    tracker.round();
    let len = 4 << 20;
    let fresh = PageRange::new(puppet.ask(OP_MMAP, len), len);
    let r = tracker.round();
    assert_eq!(status(&r, puppet.pid), ProcessStatus::Tracked);
    let p = r.process(puppet.pid).unwrap();
    assert_eq!(intersect(&p.wholly_dirty, &[fresh]), vec![fresh], "new mapping reported whole: {:?}", p.wholly_dirty);
    // From now on it is tracked page by page.
    puppet.write_pages(fresh, &BTreeSet::from([3, 700]));
    let r = tracker.round();
    assert_eq!(pages_in(&dirty(&r, puppet.pid), fresh), BTreeSet::from([3, 700]));
    assert!(intersect(&r.process(puppet.pid).unwrap().wholly_dirty, &[fresh]).is_empty());
}

#[test]
fn a_forked_grandchild_is_a_new_process_and_its_exit_is_reported() {
    if !require_host("a_forked_grandchild_is_a_new_process_and_its_exit_is_reported") {
        return;
    }
    let puppet = Puppet::spawn(PuppetSetup { block_userfaultfd: false });
    let len = 1 << 20;
    let region = PageRange::new(puppet.ask(OP_MMAP, len), len);
    let mut tracker = Tracker::new(puppet.pid).unwrap();
    tracker.round();
    let grandchild = puppet.ask(OP_FORK, 0) as i32;
    let r = tracker.round();
    assert_eq!(status(&r, puppet.pid), ProcessStatus::Tracked);
    assert_eq!(status(&r, grandchild), ProcessStatus::New);
    let g = r.process(grandchild).unwrap();
    assert_eq!(intersect(&g.wholly_dirty, &[region]), vec![region], "the grandchild's copy of the region is wholly dirty");
    assert!(!has_uffd_fd(grandchild));
    let r = tracker.round();
    assert_eq!(status(&r, grandchild), ProcessStatus::Tracked);
    assert!(pages_in(&dirty(&r, grandchild), region).is_empty());
    assert_eq!(tracker.pids(), vec![puppet.pid, grandchild]);

    unsafe { libc::kill(grandchild, libc::SIGKILL) };
    // The puppet does not reap it: wait until it is a zombie, whose /proc/PID/task is empty... or gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{grandchild}/stat")).is_ok_and(|s| !s.contains(") Z")) {
        assert!(Instant::now() < deadline, "grandchild did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = tracker.round();
    assert!(r.exited.contains(&grandchild), "a zombie counts as exited: {r:?}");
    assert!(r.process(grandchild).is_none());
    assert_eq!(tracker.pids(), vec![puppet.pid]);
}

#[test]
fn an_exec_is_reported_as_a_new_address_space() {
    if !require_host("an_exec_is_reported_as_a_new_address_space") {
        return;
    }
    let puppet = Puppet::spawn(PuppetSetup { block_userfaultfd: false });
    let mut tracker = Tracker::new(puppet.pid).unwrap();
    tracker.round();
    tracker.round();
    let exe_before = std::fs::read_link(format!("/proc/{}/exe", puppet.pid)).unwrap();
    puppet.send(OP_EXEC, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_link(format!("/proc/{}/exe", puppet.pid)).unwrap() == exe_before {
        assert!(Instant::now() < deadline, "exec did not happen");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(50)); // let sleep(1) reach its nanosleep
    let r = tracker.round();
    assert_eq!(status(&r, puppet.pid), ProcessStatus::Execed);
    let p = r.process(puppet.pid).unwrap();
    let stack = memtrack::maps::read(puppet.pid).unwrap().into_iter().find(|m| m.name.as_deref() == Some("[stack]")).unwrap();
    assert_eq!(intersect(&p.wholly_dirty, &[stack.range]), vec![stack.range], "all of the new image is dirty");
    let r = tracker.round();
    assert_eq!(status(&r, puppet.pid), ProcessStatus::Tracked);
    assert!(!has_uffd_fd(puppet.pid));
}

#[test]
fn a_busy_looping_process_is_adopted_through_a_borrowed_syscall() {
    if !require_host("a_busy_looping_process_is_adopted_through_a_borrowed_syscall") {
        return;
    }
    let puppet = Puppet::spawn(PuppetSetup { block_userfaultfd: false });
    let len = 1 << 20;
    let region = PageRange::new(puppet.ask(OP_MMAP, len), len);
    let counter = region.start + 5 * ps();
    puppet.ask(OP_SPIN, counter);
    std::thread::sleep(Duration::from_millis(20));
    let adopted = memtrack::inject::adopt(puppet.pid).unwrap();
    assert!(matches!(adopted.site, memtrack::inject::SyscallSite::Borrowed { .. }), "{adopted:?}");
    drop(adopted);
    let mut tracker = Tracker::new(puppet.pid).unwrap();
    let first = tracker.round();
    assert_eq!(status(&first, puppet.pid), ProcessStatus::New);
    assert!(!has_uffd_fd(puppet.pid));
    std::thread::sleep(Duration::from_millis(20));
    let r = tracker.round();
    assert_eq!(pages_in(&dirty(&r, puppet.pid), region), BTreeSet::from([5]), "only the counter's page is written");
    // Still spinning: the counter keeps moving (read from outside).
    let read = |_: ()| {
        let mut v = 0u64;
        let local = libc::iovec { iov_base: (&mut v as *mut u64).cast(), iov_len: 8 };
        let remote = libc::iovec { iov_base: counter as *mut libc::c_void, iov_len: 8 };
        assert_eq!(unsafe { libc::process_vm_readv(puppet.pid, &local, 1, &remote, 1, 0) }, 8);
        v
    };
    let a = read(());
    std::thread::sleep(Duration::from_millis(20));
    assert!(read(()) > a, "the tracee still runs after the injection");
}

#[test]
fn a_seccomp_filter_blocking_userfaultfd_is_suspended_for_the_injection() {
    if !require_host("a_seccomp_filter_blocking_userfaultfd_is_suspended_for_the_injection") {
        return;
    }
    let puppet = Puppet::spawn(PuppetSetup { block_userfaultfd: true });
    assert_eq!(puppet.ask(OP_UFFD, 0), libc::EPERM as u64, "the filter blocks userfaultfd in the tracee");
    let len = 1 << 20;
    let region = PageRange::new(puppet.ask(OP_MMAP, len), len);
    let mut tracker = Tracker::new(puppet.pid).unwrap();
    let first = tracker.round();
    assert_eq!(status(&first, puppet.pid), ProcessStatus::New);
    puppet.write_pages(region, &BTreeSet::from([0, 9]));
    let r = tracker.round();
    assert_eq!(pages_in(&dirty(&r, puppet.pid), region), BTreeSet::from([0, 9]));
    assert_eq!(puppet.ask(OP_UFFD, 0), libc::EPERM as u64, "the filter is back after the detach");
}

/// Maps 256 private anonymous pages and 64 pages of a file, privately; prints both addresses;
/// then for each line `a|f PAGE...` writes those pages of the anonymous or the file mapping.
const PY_WORKLOAD: &str = r#"
import ctypes, mmap, sys, tempfile
PS = mmap.PAGESIZE
anon = mmap.mmap(-1, 256 * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
f = tempfile.TemporaryFile()
f.truncate(64 * PS)
filemap = mmap.mmap(f.fileno(), 64 * PS, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
filemap[0:PS] = b"x" * PS  # one page copied-on-write before tracking starts
addr = lambda m: ctypes.addressof(ctypes.c_char.from_buffer(m))
print(addr(anon), addr(filemap), flush=True)
for line in sys.stdin:
    kind, *pages = line.split() or ["a"]
    for i in pages:
        (anon if kind == "a" else filemap)[int(i) * PS + 1] = 7
    print("ok", flush=True)
"#;

#[test]
fn adopts_a_running_python_process_and_leaves_it_no_userfaultfd() {
    if !require_host("adopts_a_running_python_process_and_leaves_it_no_userfaultfd") {
        return;
    }
    let mut py = Command::new("python3").args(["-c", PY_WORKLOAD]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python3");
    let mut stdin = py.stdin.take().unwrap();
    let mut stdout = BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addrs: Vec<u64> = line.split_whitespace().map(|a| a.parse().unwrap()).collect();
    let anon = PageRange::new(addrs[0], 256 * ps());
    let file = PageRange::new(addrs[1], 64 * ps());
    let pid = py.id() as i32;
    std::thread::sleep(Duration::from_millis(50)); // blocked in read(2) on stdin by now

    let mut tracker = Tracker::new(pid).unwrap();
    let first = tracker.round();
    assert_eq!(status(&first, pid), ProcessStatus::New);
    assert!(!has_uffd_fd(pid), "the injected userfaultfd is closed in the tracee");
    let whole = &first.process(pid).unwrap().wholly_dirty;
    let both = merge(vec![anon, file]);
    assert_eq!(intersect(whole, &both), both);

    let mut ask = |cmd: &str| {
        writeln!(stdin, "{cmd}").unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok", "python still answers after the injection");
    };
    ask("a 2 3 100 255");
    ask("f 0 5 63");
    let r = tracker.round();
    assert_eq!(pages_in(&dirty(&r, pid), anon), BTreeSet::from([2, 3, 100, 255]));
    assert_eq!(pages_in(&dirty(&r, pid), file), BTreeSet::from([0, 5, 63]), "a private file mapping is tracked too");
    ask("a");
    let r = tracker.round();
    assert_eq!(pages_in(&dirty(&r, pid), anon), BTreeSet::new());
    assert_eq!(pages_in(&dirty(&r, pid), file), BTreeSet::new());
    drop(tracker);
    ask("a 1");
    let _ = py.kill();
    let _ = py.wait();
}

/// Not a timed test: prints how long a round takes for 1 GiB with 1% of the pages written.
/// `cargo test -p hotspot-node --test memtrack -- --ignored --nocapture round_time_1g`
#[test]
#[ignore]
fn round_time_1g() {
    if !require_host("round_time_1g") {
        return;
    }
    let mut rng = Rng::seeded("round_time_1g");
    let puppet = Puppet::spawn(PuppetSetup { block_userfaultfd: false });
    let len = 1 << 30;
    let region = PageRange::new(puppet.ask(OP_MMAP, len), len);
    let pages = len / ps();
    let mut tracker = Tracker::new(puppet.pid).unwrap();
    let t = Instant::now();
    tracker.round();
    let adopt_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut times = Vec::new();
    for _ in 0..7 {
        let written = rng.pages((pages / 100) as usize, pages);
        puppet.write_pages(region, &written);
        let r = tracker.round();
        assert_eq!(pages_in(&dirty(&r, puppet.pid), region), written);
        times.push(r.took.as_secs_f64() * 1e3);
    }
    let quiet = tracker.round().took.as_secs_f64() * 1e3;
    times.sort_by(f64::total_cmp);
    println!(
        "memtrack round_1g_1pct_ms min={:.2} median={:.2} max={:.2} quiet_round_ms={quiet:.2} first_round_ms={adopt_ms:.1} pages_written={}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        pages / 100
    );
}

#[test]
fn check_reports_dirty_page_tracking_works() {
    if !require_host("check_reports_dirty_page_tracking_works") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_hotspot-node")).args(["check", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json prints JSON");
    let c = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "dirty-page tracking").expect("the check is listed");
    assert_eq!(c["status"], "ok", "{c}");
    assert!(c["detail"].as_str().unwrap().starts_with("works: "), "{c}");
    assert_eq!(report["dirty_page_tracking"], true);
}
