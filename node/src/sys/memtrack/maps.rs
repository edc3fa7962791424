//! `/proc/PID/maps`: which mappings of a process hold memory worth tracking.
//!
//! Worth tracking are private writable mappings, i.e. the memory a checkpoint must copy:
//! anonymous ones (`[heap]`, `[stack]`, `[anon:NAME]`, nameless) and private writable file
//! mappings (a program's `.data`; their written pages are private copies). Not tracked: shared
//! mappings (their content lives in the file or shmem object, which CRIU dumps on its own),
//! read-only and execute-only mappings (a write first needs an `mprotect`, after which the
//! mapping shows up as new and is reported wholly dirty), and the kernel's `[vvar]`, `[vdso]`,
//! `[vsyscall]`.

use std::path::PathBuf;

use super::error::{proc_error, MemtrackError};
use super::range::{merge, PageRange};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub range: PageRange,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` in the permissions: a shared mapping (else private, `p`).
    pub shared: bool,
    pub offset: u64,
    /// `major:minor` of the backing file's device, as printed (hex).
    pub dev: String,
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`); `None` for a nameless anonymous mapping.
    pub name: Option<String>,
}

impl Mapping {
    /// No file behind it (nameless, `[heap]`, `[stack]`, `[anon:…]`).
    pub fn is_anonymous(&self) -> bool {
        self.inode == 0 && self.name.as_deref().is_none_or(|n| n.starts_with('['))
    }

    /// Kernel-provided pages no checkpoint copies.
    pub fn is_special(&self) -> bool {
        matches!(self.name.as_deref(), Some("[vvar]" | "[vdso]" | "[vsyscall]" | "[vvar_vclock]" | "[uprobes]"))
    }

    /// Private and writable (see the module docs for why exactly these).
    pub fn worth_tracking(&self) -> bool {
        self.write && !self.shared && !self.is_special()
    }
}

/// Parses one line: `start-end perms offset dev inode [name]`.
pub fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?.as_bytes();
    if perms.len() < 4 || end < start {
        return None;
    }
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let dev = fields.next()?.to_string();
    let inode = fields.next()?.parse().ok()?;
    let name = fields.next().map(str::trim_start).filter(|n| !n.is_empty()).map(str::to_string);
    Some(Mapping {
        range: PageRange::from_bounds(start, end),
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev,
        inode,
        name,
    })
}

/// Parses a whole maps file; lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// Reads and parses `/proc/PID/maps`.
pub fn read(pid: i32) -> Result<Vec<Mapping>, MemtrackError> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    let text = std::fs::read_to_string(&path).map_err(|e| proc_error(pid, path, e))?;
    Ok(parse(&text))
}

/// The ranges worth tracking, merged.
pub fn trackable(mappings: &[Mapping]) -> Vec<PageRange> {
    merge(mappings.iter().filter(|m| m.worth_tracking()).map(|m| m.range).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c5a00000-55d0c5a02000 r--p 00000000 fe:01 1835204                    /usr/bin/sleep
55d0c5a02000-55d0c5a06000 r-xp 00002000 fe:01 1835204                    /usr/bin/sleep
55d0c5a09000-55d0c5a0a000 rw-p 00008000 fe:01 1835204                    /usr/bin/sleep
55d0c6b8e000-55d0c6baf000 rw-p 00000000 00:00 0                          [heap]
7f1e2a400000-7f1e2a6e9000 r--p 00000000 fe:01 1836510                    /usr/lib/locale/locale-archive
7f1e2a6e9000-7f1e2a6ec000 rw-p 00000000 00:00 0 
7f1e2a800000-7f1e2a900000 rw-s 00000000 00:01 4242                       /dev/zero (deleted)
7f1e2a900000-7f1e2a901000 rw-p 00000000 00:00 0                          [anon:glibc malloc]
7f1e2a901000-7f1e2a902000 rw-p 00000000 fe:01 77                         /tmp/a file with spaces
7ffc1c9d1000-7ffc1c9f2000 rw-p 00000000 00:00 0                          [stack]
7ffc1c9f5000-7ffc1c9f9000 r--p 00000000 00:00 0                          [vvar]
7ffc1c9f9000-7ffc1c9fb000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_every_field() {
        let maps = parse(SAMPLE);
        assert_eq!(maps.len(), 13);
        let data = &maps[2];
        assert_eq!(data.range, PageRange::from_bounds(0x55d0c5a09000, 0x55d0c5a0a000));
        assert!(data.read && data.write && !data.exec && !data.shared);
        assert_eq!((data.offset, data.dev.as_str(), data.inode), (0x8000, "fe:01", 1835204));
        assert_eq!(data.name.as_deref(), Some("/usr/bin/sleep"));
        assert_eq!(maps[5].name, None, "a nameless anonymous mapping (trailing space)");
        assert!(maps[5].is_anonymous());
        assert_eq!(maps[7].name.as_deref(), Some("[anon:glibc malloc]"));
        assert_eq!(maps[8].name.as_deref(), Some("/tmp/a file with spaces"));
        assert!(maps[6].shared);
        assert!(maps[1].exec && !maps[1].write);
    }

    #[test]
    fn tracks_private_writable_only() {
        let maps = parse(SAMPLE);
        let tracked: Vec<_> = maps.iter().filter(|m| m.worth_tracking()).map(|m| m.name.clone()).collect();
        assert_eq!(
            tracked,
            vec![
                Some("/usr/bin/sleep".to_string()),
                Some("[heap]".to_string()),
                None,
                Some("[anon:glibc malloc]".to_string()),
                Some("/tmp/a file with spaces".to_string()),
                Some("[stack]".to_string()),
            ]
        );
        // Adjacent trackable mappings merge into one range.
        let t = trackable(&maps);
        assert_eq!(t.len(), 5);
        assert!(t.contains(&PageRange::from_bounds(0x7f1e2a6e9000, 0x7f1e2a6ec000)));
        assert!(t.contains(&PageRange::from_bounds(0x7f1e2a900000, 0x7f1e2a902000)));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("zzzz-1000 rw-p 0 00:00 0"), None);
        assert_eq!(parse_line("2000-1000 rw-p 00000000 00:00 0"), None);
        assert_eq!(parse_line("1000-2000 rw"), None);
    }
}
