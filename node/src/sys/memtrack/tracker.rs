//! [`Tracker`]: dirty pages of every process of a workload's tree, round after round.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::error::{proc_error, MemtrackError};
use super::inject;
use super::maps::{self, Mapping};
use super::pagemap::Pagemap;
use super::range::{intersect, merge, subtract, total_len, PageRange};
use super::uffd::Uffd;

pub type Pid = i32;

/// How a process's dirty set in a [`Round`] came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessStatus {
    /// Tracked since an earlier round: `dirty` is what it wrote since then, plus any mapping
    /// that appeared meanwhile (wholly).
    Tracked,
    /// First seen in this round (the first round, a fork, or a new process under a reused
    /// pid): all its memory is dirty.
    New,
    /// It exec'd since the last round, so it has a new address space: all of it is dirty.
    Execed,
    /// It cannot be tracked (the reason says why): all its memory is dirty, every round.
    Untracked(String),
}

/// One process's part of a round.
#[derive(Debug, Clone)]
pub struct ProcessRound {
    pub pid: Pid,
    pub status: ProcessStatus,
    /// Everything to copy again: written pages and wholly dirty ranges; sorted and merged.
    /// Ranges may have been unmapped by the time they are read.
    pub dirty: Vec<PageRange>,
    /// The part of `dirty` reported whole because it was not registered before this round
    /// (new or changed mappings, new or exec'd processes, untracked ones); sorted and merged.
    pub wholly_dirty: Vec<PageRange>,
}

/// What one [`Tracker::round`] found.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Every live process of the tree, by pid.
    pub processes: Vec<ProcessRound>,
    /// Processes tracked before that are no longer in the tree (exited or reparented away).
    pub exited: Vec<Pid>,
    pub took: Duration,
}

impl Round {
    pub fn process(&self, pid: Pid) -> Option<&ProcessRound> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    /// Bytes to copy again, over all processes.
    pub fn dirty_bytes(&self) -> u64 {
        self.processes.iter().map(|p| total_len(&p.dirty)).sum()
    }
}

/// Tracks the dirty pages of `root` and all its descendants.
///
/// The first [`round`](Tracker::round) adopts every process (see [`super::inject`]) and reports
/// all their memory as dirty; each later round reports what was written since the round before.
/// Between rounds the processes run untouched: a write costs them one kernel fault per page
/// and round, nothing more. Dropping the tracker unregisters everything.
pub struct Tracker {
    root: Pid,
    procs: BTreeMap<Pid, Entry>,
}

enum Entry {
    Tracked(Box<Tracked>),
    Untracked { identity: Identity, reason: String, retry: bool },
}

struct Tracked {
    identity: Identity,
    uffd: Uffd,
    /// Opened before the userfaultfd was created: pins the address space it tracks.
    pagemap: Pagemap,
    /// Ranges registered with `uffd` and protected; sorted and merged.
    registered: Vec<PageRange>,
}

impl Tracker {
    /// A tracker for the tree under `root` (nothing is touched until the first round).
    pub fn new(root: Pid) -> Result<Tracker, MemtrackError> {
        Identity::read(root)?;
        Ok(Tracker { root, procs: BTreeMap::new() })
    }

    pub fn root(&self) -> Pid {
        self.root
    }

    /// The pids tracked after the last round.
    pub fn pids(&self) -> Vec<Pid> {
        self.procs.keys().copied().collect()
    }

    /// One round: for every process of the tree, the pages written since the last round
    /// (protected again in the same step), with anything not registered before reported
    /// wholly dirty and registered from now on. Run the final round with the tree frozen.
    pub fn round(&mut self) -> Round {
        let started = Instant::now();
        let pids = tree(self.root);
        let live: BTreeSet<Pid> = pids.iter().copied().collect();
        let mut round = Round::default();
        let gone: Vec<Pid> = self.procs.keys().copied().filter(|p| !live.contains(p)).collect();
        for pid in gone {
            self.procs.remove(&pid);
            round.exited.push(pid);
        }
        for pid in pids {
            let known = self.procs.contains_key(&pid);
            let (entry, result) = match self.procs.remove(&pid) {
                None => adopt(pid, ProcessStatus::New),
                Some(Entry::Tracked(mut t)) => match t.round(pid) {
                    Ok(Step::Scanned { dirty, whole }) => (Some(Entry::Tracked(t)), Some(merged(pid, ProcessStatus::Tracked, dirty, whole))),
                    Ok(Step::Replaced { new_process }) => {
                        drop(t);
                        adopt(pid, if new_process { ProcessStatus::New } else { ProcessStatus::Execed })
                    }
                    Err(e) if e.is_gone() => (None, None),
                    Err(e) => untracked(pid, Identity::read(pid).ok(), e),
                },
                Some(Entry::Untracked { identity, reason, retry }) => match Identity::read(pid) {
                    Ok(now) if now == identity && !retry => {
                        let whole = maps::read(pid).map(|m| maps::trackable(&m)).unwrap_or_default();
                        let pr = merged(pid, ProcessStatus::Untracked(reason.clone()), Vec::new(), whole);
                        (Some(Entry::Untracked { identity, reason, retry }), Some(pr))
                    }
                    Ok(now) => adopt(pid, if now.starttime == identity.starttime { ProcessStatus::Execed } else { ProcessStatus::New }),
                    Err(_) => (None, None),
                },
            };
            match (entry, result) {
                (Some(e), Some(pr)) => {
                    self.procs.insert(pid, e);
                    round.processes.push(pr);
                }
                // Gone during the round: reported as exited if it was known.
                _ if known => round.exited.push(pid),
                _ => {}
            }
        }
        round.took = started.elapsed();
        round
    }
}

/// Adopts a process and registers all of it; the result reports it wholly dirty.
fn adopt(pid: Pid, status: ProcessStatus) -> (Option<Entry>, Option<ProcessRound>) {
    let identity = match Identity::read(pid) {
        Ok(i) => i,
        Err(_) => return (None, None),
    };
    let adopted = Pagemap::open(pid).and_then(|pagemap| {
        let fd = inject::adopt(pid)?;
        let uffd = Uffd::init(fd.uffd, pid)?;
        Ok(Box::new(Tracked { identity: identity.clone(), uffd, pagemap, registered: Vec::new() }))
    });
    let mut t = match adopted {
        Ok(t) => t,
        Err(e) if e.is_gone() => return (None, None),
        Err(e) => return untracked(pid, Some(identity), e),
    };
    match t.round(pid) {
        Ok(Step::Scanned { dirty, whole }) => (Some(Entry::Tracked(t)), Some(merged(pid, status, dirty, whole))),
        // Exec'd while being adopted: the next round starts over.
        Ok(Step::Replaced { .. }) => {
            let whole = maps::read(pid).map(|m| maps::trackable(&m)).unwrap_or_default();
            let entry = Entry::Untracked { identity, reason: "exec'd while being adopted".into(), retry: true };
            (Some(entry), Some(merged(pid, status, Vec::new(), whole)))
        }
        Err(e) if e.is_gone() => (None, None),
        Err(e) => untracked(pid, Some(identity), e),
    }
}

fn untracked(pid: Pid, identity: Option<Identity>, e: MemtrackError) -> (Option<Entry>, Option<ProcessRound>) {
    let Some(identity) = identity else { return (None, None) };
    let whole = maps::read(pid).map(|m| maps::trackable(&m)).unwrap_or_default();
    // A tracee that did not stop in time (frozen?) may stop next time; other failures repeat.
    let retry = matches!(e, MemtrackError::StopTimeout { .. });
    let reason = e.to_string();
    let pr = merged(pid, ProcessStatus::Untracked(reason.clone()), Vec::new(), whole);
    (Some(Entry::Untracked { identity, reason, retry }), Some(pr))
}

fn merged(pid: Pid, status: ProcessStatus, mut dirty: Vec<PageRange>, whole: Vec<PageRange>) -> ProcessRound {
    let wholly_dirty = merge(whole);
    dirty.extend_from_slice(&wholly_dirty);
    ProcessRound { pid, status, dirty: merge(dirty), wholly_dirty }
}

enum Step {
    Scanned { dirty: Vec<PageRange>, whole: Vec<PageRange> },
    /// Not the address space the userfaultfd belongs to any more.
    Replaced { new_process: bool },
}

impl Tracked {
    fn replaced(&self, pid: Pid) -> Result<Option<Step>, MemtrackError> {
        let now = Identity::read(pid)?;
        if now.starttime != self.identity.starttime {
            return Ok(Some(Step::Replaced { new_process: true }));
        }
        if now != self.identity || !self.pagemap.mm_alive() {
            return Ok(Some(Step::Replaced { new_process: false }));
        }
        Ok(None)
    }

    /// Get-and-clear of the registered ranges, then registration of the rest.
    fn round(&mut self, pid: Pid) -> Result<Step, MemtrackError> {
        if let Some(step) = self.replaced(pid)? {
            return Ok(step);
        }
        let mappings = maps::read(pid)?;
        let trackable = maps::trackable(&mappings);
        let mut dirty = Vec::new();
        let mut whole = Vec::new();
        let mut lost = Vec::new();
        for r in intersect(&self.registered, &trackable) {
            match self.pagemap.take_written(r, &mut dirty) {
                Ok(()) => {}
                // Part of `r` is no longer registered (unmapped and mapped anew, mremap'd). Pages
                // of `r` reported before the failing VMA were protected but not returned: the
                // whole range is dirty, and registered again below.
                Err(e) if e.errno() == Some(libc::EPERM) => lost.push(r),
                Err(e) => return Err(e),
            }
        }
        whole.extend_from_slice(&lost);
        self.registered = subtract(&intersect(&self.registered, &trackable), &merge(lost));
        let fresh = subtract(&trackable, &self.registered);
        let mut added = Vec::new();
        for piece in &fresh {
            self.register(*piece, &mappings, &mut added);
        }
        whole.extend_from_slice(&fresh);
        added.extend_from_slice(&self.registered);
        self.registered = merge(added);
        // An exec during the scan leaves results about a dead address space: start over.
        if let Some(step) = self.replaced(pid)? {
            return Ok(step);
        }
        Ok(Step::Scanned { dirty, whole })
    }

    /// Registers and protects `piece`; when that fails as a whole, mapping by mapping, so one
    /// mapping the kernel refuses (e.g. `MAP_DROPPABLE`) leaves its neighbours tracked.
    /// Registered parts are appended to `added`; the rest stays unregistered (and is reported
    /// wholly dirty again next round).
    fn register(&self, piece: PageRange, mappings: &[Mapping], added: &mut Vec<PageRange>) {
        if self.register_one(piece) {
            added.push(piece);
            return;
        }
        for m in mappings.iter().filter(|m| m.worth_tracking()) {
            if let Some(part) = m.range.intersect(&piece) {
                if part != piece && self.register_one(part) {
                    added.push(part);
                }
            }
        }
    }

    fn register_one(&self, r: PageRange) -> bool {
        self.uffd.register(r).and_then(|()| self.uffd.write_protect(r)).is_ok()
    }
}

/// What tells an address space apart from its successor under the same pid: the start time
/// (pid reuse), the executable and the `mm` layout fields of `/proc/PID/stat` (exec). An exec
/// that keeps all of these (no ASLR, same binary) still kills the `mm` the pagemap descriptor
/// pins, which [`Pagemap::mm_alive`] sees.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    starttime: u64,
    exe: Option<(u64, u64)>,
    /// start_code, end_code, start_stack, start_data, end_data, start_brk, arg_start, arg_end,
    /// env_start, env_end.
    mm: [u64; 10],
}

impl Identity {
    fn read(pid: Pid) -> Result<Identity, MemtrackError> {
        let path = PathBuf::from(format!("/proc/{pid}/stat"));
        let text = std::fs::read_to_string(&path).map_err(|e| proc_error(pid, &path, e))?;
        let bad = || proc_error(pid, &path, std::io::Error::new(std::io::ErrorKind::InvalidData, "unparsable stat line"));
        let (state, starttime, mm) = parse_stat(&text).ok_or_else(bad)?;
        if matches!(state, 'Z' | 'X') {
            // A zombie has no address space left: as good as gone.
            return Err(proc_error(pid, &path, std::io::Error::from_raw_os_error(libc::ESRCH)));
        }
        use std::os::unix::fs::MetadataExt;
        let exe = std::fs::metadata(format!("/proc/{pid}/exe")).ok().map(|m| (m.dev(), m.ino()));
        Ok(Identity { starttime, exe, mm })
    }
}

/// `(state, starttime, mm fields)` from a `/proc/PID/stat` line (the comm may hold spaces and
/// parens).
fn parse_stat(text: &str) -> Option<(char, u64, [u64; 10])> {
    let rest = &text[text.rfind(')')? + 1..];
    let state = rest.split_whitespace().next()?.chars().next()?;
    // After the state (field 3), field n (1-based, as in proc(5)) is f[n - 4].
    let f: Vec<u64> = rest.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
    let at = |n: usize| f.get(n - 4).copied();
    let mut mm = [0; 10];
    for (slot, n) in mm.iter_mut().zip([26, 27, 28, 45, 46, 47, 48, 49, 50, 51]) {
        *slot = at(n).unwrap_or(0);
    }
    Some((state, at(22)?, mm))
}

/// `root` and its descendants, parents before children (children of every thread).
pub fn tree(root: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        if !seen.insert(pid) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        out.push(pid);
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else { continue };
            queue.extend(children.split_whitespace().filter_map(|c| c.parse::<Pid>().ok()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_comms() {
        let mut line = String::from("4242 (a) b (c) S");
        // Fields 4..=52 after the state: field n holds n, so the expected values are obvious.
        for n in 4..=52 {
            line.push_str(&format!(" {n}"));
        }
        let (state, start, mm) = parse_stat(&line).unwrap();
        assert_eq!((state, start), ('S', 22));
        assert_eq!(mm, [26, 27, 28, 45, 46, 47, 48, 49, 50, 51]);
        assert_eq!(parse_stat("no parens"), None);
    }

    #[test]
    fn own_tree_contains_self_and_identity_is_stable() {
        let me = std::process::id() as Pid;
        assert_eq!(tree(me).first(), Some(&me));
        assert_eq!(Identity::read(me).unwrap(), Identity::read(me).unwrap());
    }
}
