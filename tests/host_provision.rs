//! `scripts/provision-node` run for real in a fresh Debian 12 root, as on a new VM:
//!
//! 1. **Install** — a pristine bookworm root (debootstrap'ed once, cached under
//!    /var/cache/hotspot-mesh/rootfs by `scripts/debian-root`) gets a per-run overlay, and the
//!    script runs inside it (`unshare --mount` + chroot, host network for apt, like a VM being
//!    provisioned). It must install CRIU >= 4.2 (the host's build, via `--criu-binary`), redis
//!    and the hotspot-node binary, write the config, and install and enable the unit;
//!    `systemd-analyze verify` must pass on the unit with the binary present. A second run must
//!    succeed and keep the config (idempotent).
//! 2. **Boot** — the same root, entered with its own mount namespace and a network namespace on a
//!    private bridge. There is no systemd as PID 1 in it, so the test runs the unit's own
//!    `ExecStartPre=` and `ExecStart=` command lines (read from the installed unit) with the
//!    unit's `Environment=`. The node must join a mesh with another daemon on the bridge by
//!    mDNS: both see each other in `hotspot-node peers`, the root's side run with the root's
//!    own binary inside its namespaces.
//!
//! apt downloads are kept in /var/cache/hotspot-mesh/rootfs/apt-archives between runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hotspot_mesh::local_cluster::find_node_bin;
use hotspot_node::lab::{self, Daemon, Lan};
use hotspot_testkit::host;

const TEST: &str = "host_provision_node_in_a_fresh_debian_root_joins_a_mesh";
const NODE_NAME: &str = "provisioned";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache() -> PathBuf {
    PathBuf::from(std::env::var("HOTSPOT_CACHE").unwrap_or_else(|_| "/var/cache/hotspot-mesh".into()))
}

/// Runs a bash script (with `set -euo pipefail`), failing the test with its output on error.
/// Runs `script`; returns its stdout and stderr (both shown in the panic message on failure).
fn bash_output(what: &str, script: &str) -> (String, String) {
    let out = Command::new("bash").args(["-euo", "pipefail", "-c", script]).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}{stderr}", out.status);
    (stdout, stderr)
}

/// [`bash_output`] with stdout and stderr as one text.
fn bash(what: &str, script: &str) -> String {
    let (stdout, stderr) = bash_output(what, script);
    stdout + &stderr
}

/// A per-run overlay on the cached root: `upper` holds everything this run wrote.
struct Root {
    dir: tempfile::TempDir,
    base: PathBuf,
}

impl Root {
    fn new(base: PathBuf) -> Root {
        // Not /tmp: it may be a tmpfs too small for apt, and overlay needs upper+work on one fs.
        let dir = tempfile::Builder::new().prefix("hotspot-provision-").tempdir_in("/var/tmp").unwrap();
        for d in ["upper", "work", "merged"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Root { dir, base }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Shell lines that mount the root at `merged` inside the current (private) mount
    /// namespace, as a booted host would see it.
    fn mount_script(&self) -> String {
        let archives = cache().join("rootfs/apt-archives");
        std::fs::create_dir_all(archives.join("partial")).unwrap();
        format!(
            r#"m={merged}
mount -t overlay overlay -o lowerdir={base},upperdir={upper},workdir={work} "$m"
mount -t proc proc "$m/proc"
mount --rbind /sys "$m/sys"
mount --rbind /dev "$m/dev"
mount -t tmpfs -o mode=0755 tmpfs "$m/run"
mount --bind {archives} "$m/var/cache/apt/archives"
mkdir -p "$m/opt/hotspot-mesh"
mount --bind -o ro {repo} "$m/opt/hotspot-mesh"
"#,
            merged = self.path("merged").display(),
            base = self.base.display(),
            upper = self.path("upper").display(),
            work = self.path("work").display(),
            archives = archives.display(),
            repo = repo().display(),
        )
    }
}

/// The booted node: killed (and with it its mount namespace) on drop.
struct Booted(Child);

impl Drop for Booted {
    fn drop(&mut self) {
        // Its process group: unshare, bash and the daemon.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// `KEY=` lines of the installed unit's `[Service]` section.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines().filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('='))).map(str::to_string).collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn host_provision_node_in_a_fresh_debian_root_joins_a_mesh() {
    if !host::require_migration_host(TEST) {
        return;
    }
    let Some(bin) = find_node_bin() else {
        assert!(std::env::var("CI").is_err(), "{TEST}: hotspot-node is not built next to this test (set HOTSPOT_NODE_BIN)");
        eprintln!("SKIPPED {TEST}: hotspot-node binary not built next to this test (set HOTSPOT_NODE_BIN)");
        return;
    };
    let criu = testing_criu();
    let started = Instant::now();
    lab::Lan::sweep_stale();

    // The root's path is the last line of stdout; the first run's progress goes to stderr.
    let (stdout, _) = bash_output("scripts/debian-root", &format!("{}/scripts/debian-root", repo().display()));
    let base = stdout.trim().lines().last().expect("debian-root printed the root's path").to_string();
    let base_done = started.elapsed();
    let root = Root::new(PathBuf::from(&base));
    let lan = Lan::new(2).unwrap();
    let ip = lan.node_ip(1).to_string();

    // --- 1. install, as on a VM being provisioned (host network for apt) -------------------
    let merged = root.path("merged");
    let provision = format!(
        "chroot {m} /opt/hotspot-mesh/scripts/provision-node --name {NODE_NAME} --zone test --price 0.25 --listen-ip {ip} \
         --binary /tmp/hotspot-node --criu-binary /tmp/criu --config-append /tmp/extra.toml",
        m = merged.display()
    );
    let install = format!(
        "{mount}cp {bin} \"$m/tmp/hotspot-node\"; cp {criu} \"$m/tmp/criu\"; cp /etc/resolv.conf \"$m/etc/resolv.conf\"
printf '[capacity]\\ncpu_millis = 1500\\n' >\"$m/tmp/extra.toml\"
{provision}
echo '--- verify'
chroot \"$m\" systemd-analyze verify /etc/systemd/system/hotspot-node.service
echo \"--- enabled: $(chroot \"$m\" systemctl is-enabled hotspot-node.service)\"
echo \"--- criu: $(chroot \"$m\" /usr/local/sbin/criu --version | head -n1)\"
echo \"--- redis: $(chroot \"$m\" redis-server --version)\"
echo '--- second run'
{provision}
",
        mount = root.mount_script(),
        bin = bin.display(),
        criu = criu.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "bash", "-euo", "pipefail", "-c", &install])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "provisioning failed ({}):\n{text}", out.status);
    let install_done = started.elapsed();
    let (first, second) = text.split_once("--- second run").expect("both runs happened");
    assert!(first.contains("wrote /etc/hotspot-mesh/config.toml"), "first run writes the config");
    assert!(second.contains("keeping existing /etc/hotspot-mesh/config.toml"), "second run keeps the config");
    assert!(text.contains("--- enabled: enabled"), "the unit is enabled");
    assert!(text.contains("--- criu: Version: 4.2"), "CRIU 4.2 installed in the root");
    assert!(text.contains("--- redis: Redis server"), "redis installed in the root");
    assert!(!first.split("--- verify").nth(1).unwrap_or("").lines().take_while(|l| !l.starts_with("---")).any(|l| l.contains("hotspot-node")),
        "systemd-analyze verify has no complaint about the unit");
    let upper = root.path("upper");
    let conf = std::fs::read_to_string(upper.join("etc/hotspot-mesh/config.toml")).unwrap();
    assert!(conf.contains(&format!("name = \"{NODE_NAME}\"")) && conf.contains(&format!("transfer_advertise = \"{ip}:7947\"")), "{conf}");
    let wants = upper.join("etc/systemd/system/multi-user.target.wants/hotspot-node.service");
    assert!(wants.symlink_metadata().is_ok(), "enabled for multi-user.target: {}", wants.display());
    let unit = std::fs::read_to_string(upper.join("etc/systemd/system/hotspot-node.service")).unwrap();

    // --- 2. boot: own mount + network namespace; the unit's command lines (no systemd PID 1) --
    let tmp = tempfile::tempdir().unwrap();
    let peer = Daemon::start(&bin, tmp.path(), "peer", Some(&lan.nodes[0]), &["--price", "0.40"]).unwrap();
    let env: Vec<String> = unit_values(&unit, "Environment").iter().map(|e| shell_quote(e)).collect();
    let pre = unit_values(&unit, "ExecStartPre");
    let start = unit_values(&unit, "ExecStart");
    assert_eq!(start.len(), 1, "one ExecStart in {unit}");
    let pidfile = tmp.path().join("node.pid");
    let boot = format!(
        "{mount}for pre in {pre}; do chroot \"$m\" env -i {env} ${{pre#-}} >{log}.check 2>&1 || [ \"${{pre:0:1}}\" = - ]; done
echo $$ >{pidfile}
exec chroot \"$m\" env -i {env} {start}",
        mount = root.mount_script(),
        pre = pre.iter().map(|p| shell_quote(p)).collect::<Vec<_>>().join(" "),
        env = env.join(" "),
        start = start[0],
        log = tmp.path().join("node.log").display(),
        pidfile = pidfile.display(),
    );
    let log = std::fs::File::create(tmp.path().join("node.log")).unwrap();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", lan.nodes[1]))
        .args(["--", "unshare", "--mount", "--propagation", "private", "--", "bash", "-euo", "pipefail", "-c", &boot])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let _booted = Booted(cmd.spawn().unwrap());
    let node_log = || std::fs::read_to_string(tmp.path().join("node.log")).unwrap_or_default();
    let pid = {
        lab::wait_until("the booted node's pid", Duration::from_secs(60), || pidfile.exists()).unwrap_or_else(|e| panic!("{e}\n{}", node_log()));
        std::fs::read_to_string(&pidfile).unwrap().trim().to_string()
    };
    // The root's own CLI, in the node's namespaces and root: what `hotspot-node peers` on the VM shows.
    let peers_in_root = || {
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "-n", "-r", "-w", "/usr/local/bin/hotspot-node", "peers"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let joined = lab::wait_until("the provisioned node and the peer to see each other", Duration::from_secs(60), || {
        peers_in_root().contains("peer") && peer.peer_names().is_ok_and(|n| n.iter().any(|n| n == NODE_NAME))
    });
    let peers_table = peers_in_root();
    eprintln!("hotspot-node peers (inside the provisioned root):\n{peers_table}");
    joined.unwrap_or_else(|e| panic!("{e}\nnode log:\n{}\npeer log:\n{}", node_log(), std::fs::read_to_string(&peer.log).unwrap_or_default()));
    let check = std::fs::read_to_string(tmp.path().join("node.log.check")).unwrap_or_default();
    assert!(check.contains("criu version"), "ExecStartPre `hotspot-node check` ran in the root:\n{check}");
    let seen = peer.peers().unwrap();
    let me = seen.iter().find(|p| p.name == NODE_NAME).unwrap();
    assert!((me.price_per_hour - 0.25).abs() < 1e-9 && me.zone == "test", "the peer sees the configured price and zone: {me:?}");
    assert_eq!(me.total.cpu_millis, 1500, "--config-append reached the config: {me:?}");

    eprintln!(
        "{TEST}: timings: debian root (cached) {:.1}s, provisioning twice + verify {:.1}s, boot to mesh join {:.1}s, total {:.1}s",
        base_done.as_secs_f64(),
        (install_done - base_done).as_secs_f64(),
        (started.elapsed() - install_done).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The CRIU this host runs, handed to the root as a prebuilt binary (the VM path builds it).
fn testing_criu() -> PathBuf {
    let path = Path::new("/usr/local/sbin/criu");
    if path.is_file() {
        return path.into();
    }
    let which = bash("which criu", "command -v criu");
    PathBuf::from(which.trim())
}
