//! Starting a process tree in the shape CRIU can move: fresh PID, mount, UTS and IPC
//! namespaces, an existing (named) network namespace, its own cgroup, PID 1 a session leader,
//! no inherited descriptors beyond stdio, optionally pivot_root'ed into its own rootfs.
//!
//! Everything happens in `pre_exec` of one `std::process::Command`: the child joins the cgroup
//! and the network namespace, unshares the rest and forks; the grandchild is PID 1 of the new
//! PID namespace and execs the command, the child reports the grandchild's host PID through a
//! pipe and exits. The tree is thus reparented to the host's init, outliving the node (a
//! workload must survive `hotspot-node` restarts). Only async-signal-safe calls run after
//! fork; every string is prepared before.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct SpawnSpec<'a> {
    pub argv: &'a [String],
    pub netns: &'a Path,
    pub hostname: &'a str,
    pub cgroup_procs: Vec<PathBuf>,
    pub rootfs: Option<&'a Path>,
    /// (host dir, path inside the rootfs) bind-mounted before pivot_root.
    pub volume: Option<(&'a Path, &'a Path)>,
    /// (block device, mount point as seen inside) mounted as ext4 in the new mount namespace,
    /// after the root is made private (so the host never sees it) and before pivot_root.
    pub volume_device: Option<(&'a Path, &'a Path)>,
    /// Working directory inside the workload (after pivot_root when there is a rootfs).
    pub cwd: Option<&'a Path>,
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended), as seen inside the workload; stdin is /dev/null.
    /// Both are opened inside the new mount namespace: a descriptor opened in the host's
    /// would point at a mount CRIU cannot find in the workload's ("Can't lookup mount").
    pub console: &'a Path,
    /// This node's volume staging directory: other workloads' volumes mounted below it are
    /// detached from the new mount namespace (see [`foreign_volume_mounts`]).
    pub volumes_dir: Option<&'a Path>,
}

/// Mounts the new workload must not inherit from the host: other workloads' volumes (mounted
/// below `volumes_dir`) and any loop-device mount (volumes of other nodes sharing this host).
/// CRIU cannot dump a mount it cannot trace back to something the restore recreates ("FS mnt
/// ... unsupported"), so one inherited volume would make this workload unmovable.
fn foreign_volume_mounts(volumes_dir: Option<&Path>) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let mount_point = PathBuf::from(crate::sys::mounts::unescape_mountinfo(line.split(' ').nth(4)?));
            let source = line.split(" - ").nth(1)?.split(' ').nth(1)?;
            let foreign = source.starts_with("/dev/loop") || volumes_dir.is_some_and(|d| mount_point.starts_with(d) && mount_point != d);
            foreign.then_some(mount_point)
        })
        .collect();
    // Deepest first, so a parent never goes before a mount stacked below it.
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn cstr(p: impl AsRef<std::ffi::OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Starts the workload and returns the host PID of its PID 1.
pub fn spawn(spec: SpawnSpec<'_>) -> io::Result<i32> {
    let netns = std::fs::File::open(spec.netns)?;
    let cgroup_procs: Vec<CString> = spec.cgroup_procs.iter().map(cstr).collect::<io::Result<_>>()?;
    let hostname = spec.hostname.as_bytes().to_vec();
    let rootfs = spec.rootfs.map(cstr).transpose()?;
    let cwd = spec.cwd.map(cstr).transpose()?;
    let volume = match (spec.rootfs, spec.volume) {
        (Some(root), Some((host, inside))) => {
            let target = root.join(inside.strip_prefix("/").unwrap_or(inside));
            std::fs::create_dir_all(&target)?;
            Some((cstr(host)?, cstr(target)?))
        }
        _ => None,
    };
    // A device volume is mounted at its in-workload path; with a rootfs, that path lives
    // under the rootfs until pivot_root.
    let volume_device = match spec.volume_device {
        Some((dev, inside)) => {
            let target = match spec.rootfs {
                Some(root) => root.join(inside.strip_prefix("/").unwrap_or(inside)),
                None => inside.to_path_buf(),
            };
            std::fs::create_dir_all(&target)?;
            Some((cstr(dev)?, cstr(target)?, cstr("ext4")?))
        }
        None => None,
    };
    let (proc_src, proc_dir, root, dot, run_netns) = (cstr("proc")?, cstr("/proc")?, cstr("/")?, cstr(".")?, cstr("/run/netns")?);
    let (tmpfs, dev_shm, shm_opts) = (cstr("tmpfs")?, cstr("/dev/shm")?, cstr("mode=1777")?);
    let (console, dev_null) = (cstr(spec.console)?, cstr("/dev/null")?);
    // Never a mount the workload itself uses (its data directory or console may sit on one).
    let own: Vec<&Path> = [spec.volume.map(|v| v.0), spec.cwd.filter(|_| spec.rootfs.is_none()), Some(spec.console), spec.rootfs].into_iter().flatten().collect();
    let foreign: Vec<CString> = foreign_volume_mounts(spec.volumes_dir)
        .iter()
        .filter(|m| !own.iter().any(|p| p.starts_with(m)))
        .map(cstr)
        .collect::<io::Result<_>>()?;
    // A rootfs gets the host's /dev/null bind-mounted over a placeholder.
    let rootfs_dev_null = match spec.rootfs {
        Some(root) => {
            let p = root.join("dev/null");
            if !p.exists() {
                std::fs::create_dir_all(root.join("dev"))?;
                std::fs::File::create(&p)?;
            }
            Some(cstr(p)?)
        }
        None => None,
    };

    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    let (report_r, report_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let report_w_raw = report_w.as_raw_fd();

    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]).envs(spec.env.iter().map(|(k, v)| (k, v)));
    cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    // SAFETY: the closure runs in the forked child and uses only async-signal-safe syscalls on
    // data prepared above (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            for p in &cgroup_procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd)?;
                let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                check(rc as libc::c_int)?;
            }
            check(libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC))?;
            let pid = libc::fork();
            check(pid)?;
            if pid > 0 {
                let bytes = pid.to_ne_bytes();
                libc::write(report_w_raw, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0);
            }
            // PID 1 of the new namespace from here on.
            libc::close(report_w_raw);
            check(libc::setsid())?;
            check(libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            // The host's /run/netns bind mounts (nsfs) would make the mount tree undumpable.
            libc::umount2(run_netns.as_ptr(), libc::MNT_DETACH);
            for m in &foreign {
                libc::umount2(m.as_ptr(), libc::MNT_DETACH);
            }
            // Its own /dev/shm, as a container has: CRIU archives every tmpfs in the workload's
            // mount namespace into the image, so a shared one would carry the host's (and every
            // other workload's) shared-memory files to the target with each migration.
            if rootfs.is_none() {
                // The host's mounts there go first (there may be several stacked): a mount
                // merely covered by ours would still be archived.
                for _ in 0..8 {
                    if libc::umount2(dev_shm.as_ptr(), libc::MNT_DETACH) != 0 {
                        break;
                    }
                }
                check(libc::mount(tmpfs.as_ptr(), dev_shm.as_ptr(), tmpfs.as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, shm_opts.as_ptr().cast()))?;
            }
            check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
            if let Some((dev, target, fstype)) = &volume_device {
                check(libc::mount(dev.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()))?;
            }
            if let Some(rootfs) = &rootfs {
                check(libc::mount(rootfs.as_ptr(), rootfs.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
                if let Some(null) = &rootfs_dev_null {
                    check(libc::mount(dev_null.as_ptr(), null.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
                }
                if let (Some((host, target)), None) = (&volume, &volume_device) {
                    check(libc::mount(host.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
                }
                check(libc::chdir(rootfs.as_ptr()))?;
                // pivot_root(".", "."): the old root ends up stacked on "/", then detached.
                check(libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int)?;
                check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH))?;
                check(libc::chdir(root.as_ptr()))?;
            }
            check(libc::mount(proc_src.as_ptr(), proc_dir.as_ptr(), proc_src.as_ptr(), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, std::ptr::null()))?;
            if let Some(cwd) = &cwd {
                check(libc::chdir(cwd.as_ptr()))?;
            }
            let null = libc::open(dev_null.as_ptr(), libc::O_RDONLY);
            check(null)?;
            check(libc::dup2(null, 0))?;
            libc::close(null);
            let out = libc::open(console.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND, 0o640);
            check(out)?;
            check(libc::dup2(out, 1))?;
            check(libc::dup2(out, 2))?;
            libc::close(out);
            // No host descriptor may survive exec (CRIU cannot dump fds of foreign mounts).
            check(libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) as libc::c_int)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(report_w);
    let status = child.wait()?;
    let mut buf = [0u8; 4];
    let mut reader = std::fs::File::from(report_r);
    reader.read_exact(&mut buf).map_err(|e| io::Error::new(e.kind(), format!("workload did not report its pid ({status}): {e}")))?;
    Ok(i32::from_ne_bytes(buf))
}
