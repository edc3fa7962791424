//! `hotspot-node check`: can this host checkpoint and move workloads? Like `criu check` or
//! `podman info`, but for everything a migration needs, with a hint for each problem.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::criu::version::{parse_criu_version, LAZY_PAGES_PIPE_SIZE, MIN_CRIU};
use crate::sys::program::find_program;


#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Ok,
    /// Optional feature missing; migration works without it.
    Warn,
    /// Migration cannot work until this is fixed.
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// How to fix it, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CriuInfo {
    pub path: PathBuf,
    pub version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when migration can work on this host.
    pub ok: bool,
    pub kernel: String,
    pub criu: Option<CriuInfo>,
    /// Post-copy (CRIU lazy-pages) usable.
    pub lazy_pages: bool,
    /// Kernel soft-dirty tracking (CRIU pre-dump); without it pre-copy relies on content addressing.
    pub memory_tracking: bool,
    /// Our own dirty-page tracking (`sys::memtrack`: userfaultfd WP_ASYNC + PAGEMAP_SCAN) works.
    pub dirty_page_tracking: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }
}

fn check(name: &'static str, status: Status, detail: impl Into<String>, hint: Option<&str>) -> Check {
    Check { name, status, detail: detail.into(), hint: hint.map(str::to_string) }
}

/// Runs a command, returning (success, stdout+stderr). `None` when it could not start.
fn run(program: &Path, args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new(program).args(args).output().ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), text))
}




fn last_meaningful_line(text: &str) -> String {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty() && !l.contains("RLIMIT_NOFILE")).unwrap_or("").to_string()
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn cgroup_mode() -> &'static str {
    // statfs magic of /sys/fs/cgroup tells the mode: cgroup2 = unified; tmpfs = v1 or hybrid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let path = c"/sys/fs/cgroup";
    // SAFETY: path is a valid C string and st a valid out-pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return "unknown";
    }
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    if st.f_type as i64 == CGROUP2_SUPER_MAGIC {
        "v2 (unified)"
    } else if Path::new("/sys/fs/cgroup/unified").exists() {
        "hybrid (v1 controllers + v2)"
    } else {
        "v1"
    }
}

/// Gathers the report. Runs `criu check` (a second or so).
pub fn run_checks() -> Report {
    let mut checks = Vec::new();
    let kernel = read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());

    let root = unsafe { libc::geteuid() } == 0;
    checks.push(check(
        "root",
        if root { Status::Ok } else { Status::Fail },
        if root { "running as root".to_string() } else { format!("running as uid {}", unsafe { libc::geteuid() }) },
        (!root).then_some("CRIU and namespaces need root: run with sudo"),
    ));

    let mut criu_info = None;
    let mut lazy_pages = false;
    let mut memory_tracking = false;
    match find_program("criu") {
        None => checks.push(check(
            "criu",
            Status::Fail,
            "criu not found on PATH",
            Some("run scripts/install-deps (builds CRIU 4.2 from Debian's source package), or set HOTSPOT_CRIU"),
        )),
        Some(path) => {
            let version_text = run(&path, &["--version"]).map(|(_, t)| t).unwrap_or_default();
            let version = parse_criu_version(&version_text);
            let version_str = version.map(|(a, b, c)| format!("{a}.{b}.{c}")).unwrap_or_else(|| "unknown".into());
            let new_enough = version.is_some_and(|(a, b, _)| (a, b) >= MIN_CRIU);
            checks.push(check(
                "criu version",
                if new_enough { Status::Ok } else { Status::Fail },
                format!("{} {version_str}", path.display()),
                (!new_enough).then_some("CRIU >= 4.2 is needed (older ones cannot dump TCP sockets on kernels >= 6.16): run scripts/install-deps"),
            ));
            criu_info = Some(CriuInfo { path: path.clone(), version: version_str });
            if root {
                let (passed, text) = run(&path, &["check"]).unwrap_or((false, "could not run criu".into()));
                checks.push(check(
                    "criu check",
                    if passed { Status::Ok } else { Status::Fail },
                    last_meaningful_line(&text),
                    (!passed).then_some("see `criu check` output; kernel lacks a feature CRIU needs"),
                ));
                // The same probe the CRIU driver runs before it picks dump and restore modes.
                let caps = crate::criu::Criu::at(path.clone()).ok().map(|c| c.capabilities().clone());
                memory_tracking = caps.as_ref().is_some_and(|c| c.memory_tracking);
                checks.push(check(
                    "soft-dirty tracking",
                    if memory_tracking { Status::Ok } else { Status::Warn },
                    if memory_tracking {
                        "available (criu pre-dump works)"
                    } else {
                        "off in this kernel: pre-copy uses dump --leave-running rounds and content addressing"
                    },
                    (!memory_tracking).then_some("optional: a kernel with CONFIG_MEM_SOFT_DIRTY=y"),
                ));
                let lazy = caps.map(|c| c.lazy_pages).unwrap_or(crate::criu::LazyPages::NoUserfaultfd);
                lazy_pages = lazy == crate::criu::LazyPages::Available;
                let pipe_max: u64 = read_trimmed("/proc/sys/fs/pipe-max-size").and_then(|s| s.parse().ok()).unwrap_or(0);
                let detail = match &lazy {
                    crate::criu::LazyPages::Available => format!("userfaultfd ok, fs.pipe-max-size={pipe_max}"),
                    crate::criu::LazyPages::PipeTooSmall { .. } => format!("userfaultfd ok, but fs.pipe-max-size={pipe_max} < {LAZY_PAGES_PIPE_SIZE}"),
                    crate::criu::LazyPages::NoUserfaultfd => "kernel lacks non-cooperative userfaultfd".to_string(),
                };
                let hint = lazy.hint().map(|h| format!("optional: {h}"));
                checks.push(Check { name: "lazy-pages (post-copy)", status: if lazy_pages { Status::Ok } else { Status::Warn }, detail, hint });
            }
        }
    }

    // The probe forks a child and tracks it exactly as a workload would be tracked.
    let probe = crate::sys::memtrack::probe();
    checks.push(check(
        "dirty-page tracking",
        if probe.works { Status::Ok } else { Status::Warn },
        if probe.works { format!("works: {}", probe.reason) } else { format!("does not work: {}", probe.reason) },
        (!probe.works).then_some(
            "optional: needs Linux 6.7+ (userfaultfd WP_ASYNC, PAGEMAP_SCAN), x86_64 and ptrace; pre-copy works without it",
        ),
    ));

    let missing_ns: Vec<&str> =
        ["pid", "net", "mnt", "uts", "ipc", "cgroup"].into_iter().filter(|ns| !Path::new("/proc/self/ns").join(ns).exists()).collect();
    checks.push(check(
        "namespaces",
        if missing_ns.is_empty() { Status::Ok } else { Status::Fail },
        if missing_ns.is_empty() { "pid net mnt uts ipc cgroup".to_string() } else { format!("missing: {}", missing_ns.join(" ")) },
        (!missing_ns.is_empty()).then_some("workloads need their own namespaces: enable them in the kernel"),
    ));
    let freezer = Path::new("/sys/fs/cgroup/freezer").exists() || Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    checks.push(check(
        "cgroups",
        if freezer { Status::Ok } else { Status::Warn },
        format!("{}{}", cgroup_mode(), if freezer { ", freezer available" } else { ", no freezer" }),
        (!freezer).then_some("CRIU freezes trees with ptrace instead: slower for large workloads"),
    ));

    let iptables = find_program("iptables").and_then(|p| run(&p, &["--version"])).filter(|(ok, _)| *ok);
    let nft = find_program("nft").is_some();
    checks.push(check(
        "iptables",
        if iptables.is_some() { Status::Ok } else { Status::Fail },
        match &iptables {
            Some((_, t)) => format!("{}{}", t.trim(), if nft { "; nft present" } else { "" }),
            None => "iptables not found".into(),
        },
        iptables.is_none().then_some("CRIU's network lock for live TCP needs iptables: apt-get install iptables"),
    ));
    let ip = find_program("ip").is_some();
    checks.push(check(
        "iproute2",
        if ip { Status::Ok } else { Status::Fail },
        if ip { "ip found" } else { "ip not found" },
        (!ip).then_some("network namespaces and addresses are set up with ip: apt-get install iproute2"),
    ));
    let runc = find_program("runc").and_then(|p| run(&p, &["--version"])).map(|(_, t)| t.lines().next().unwrap_or("").to_string());
    checks.push(check(
        "runc",
        if runc.is_some() { Status::Ok } else { Status::Warn },
        runc.unwrap_or_else(|| "not found".into()),
        Some("optional: only needed to adopt runc containers").filter(|_| find_program("runc").is_none()),
    ));

    let ok = checks.iter().all(|c| c.status != Status::Fail);
    Report { ok, kernel, criu: criu_info, lazy_pages, memory_tracking, dirty_page_tracking: probe.works, checks }
}

/// The human table `hotspot-node check` prints.
pub fn render_table(report: &Report) -> String {
    let width = report.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = format!("kernel {}\n", report.kernel);
    for c in &report.checks {
        let mark = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!("{mark}  {:width$}  {}\n", c.name, c.detail));
        if let Some(h) = &c.hint {
            out.push_str(&format!("      {:width$}  -> {h}\n", ""));
        }
    }
    out.push_str(if report.ok { "migration can work on this host\n" } else { "migration cannot work on this host (see FAIL above)\n" });
    out
}



#[cfg(test)]
mod tests {
    use super::*;


    #[test]
    fn report_is_consistent() {
        let r = run_checks();
        assert_eq!(r.ok, r.failures().next().is_none());
        let table = render_table(&r);
        for c in &r.checks {
            assert!(table.contains(c.name));
        }
    }
}
