//! What this host offers: CPUs, memory and disk (total and free), architecture and CPU flags.
//! Free amounts are quantised so the advert does not change (and get re-sent) on every tick.

use std::collections::BTreeSet;
use std::path::Path;

use hotspot_protocol::{Capacity, Resources};

const CPU_STEP: u32 = 100;
const MEMORY_STEP: u64 = 64 << 20;
const DISK_STEP: u64 = 1 << 30;

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// The machine architecture as the kernel names it (`x86_64`, `aarch64`).
pub fn arch() -> String {
    std::env::consts::ARCH.to_string()
}

/// CPU feature flags of the first CPU in `/proc/cpuinfo` (`flags` on x86, `Features` on arm).
pub fn cpu_features() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/cpuinfo").map(|t| parse_cpu_flags(&t)).unwrap_or_default()
}

pub fn parse_cpu_flags(cpuinfo: &str) -> BTreeSet<String> {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            matches!(key.trim(), "flags" | "Features").then(|| value.split_whitespace().map(str::to_string).collect())
        })
        .unwrap_or_default()
}

fn meminfo_field(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

fn disk_bytes(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

fn round_down<T: Copy + std::ops::Rem<Output = T> + std::ops::Sub<Output = T>>(v: T, step: T) -> T {
    v - v % step
}

/// Measures the host now. CPU "free" is the CPUs minus the 1-minute load average; memory free is
/// `MemAvailable`; disk is the file system holding `data_dir`.
pub fn measure(data_dir: &Path) -> Capacity {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let total_cpu = cpus * 1000;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let free_cpu = round_down(total_cpu.saturating_sub((load * 1000.0) as u32), CPU_STEP);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total_mem = meminfo_field(&meminfo, "MemTotal").unwrap_or(0);
    let free_mem = round_down(meminfo_field(&meminfo, "MemAvailable").unwrap_or(0).min(total_mem), MEMORY_STEP);
    let (total_disk, free_disk) = disk_bytes(data_dir).unwrap_or((0, 0));
    Capacity {
        total: Resources { cpu_millis: total_cpu, memory_bytes: total_mem, disk_bytes: total_disk },
        free: Resources { cpu_millis: free_cpu, memory_bytes: free_mem, disk_bytes: round_down(free_disk, DISK_STEP) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_read_from_the_first_cpu() {
        let info = "processor\t: 0\nflags\t\t: fpu sse4_2 avx2\n\nprocessor\t: 1\nflags\t\t: fpu\n";
        let flags = parse_cpu_flags(info);
        assert_eq!(flags.into_iter().collect::<Vec<_>>(), vec!["avx2", "fpu", "sse4_2"]);
        assert!(parse_cpu_flags("Features\t: fp asimd\n").contains("asimd"));
    }

    #[test]
    fn this_host_measures_sanely() {
        let c = measure(Path::new("/"));
        assert!(c.total.cpu_millis >= 1000);
        assert!(c.total.memory_bytes > 0 && c.free.memory_bytes <= c.total.memory_bytes);
        assert!(c.free.fits_in(&c.total));
        assert_eq!(c.free.memory_bytes % MEMORY_STEP, 0);
        assert!(!cpu_features().is_empty() || !Path::new("/proc/cpuinfo").exists());
        assert_eq!(meminfo_field("MemTotal:       1000 kB\n", "MemTotal"), Some(1_024_000));
    }
}
