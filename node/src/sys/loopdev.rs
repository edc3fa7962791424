//! File-backed disks: an ext4 image file attached to a loop device (the local stand-in for an
//! EBS volume). Every operation is idempotent: attaching an attached image returns its device,
//! detaching a detached one succeeds, mounting a mounted directory is a no-op.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sys::process::{self, RunError};
use crate::sys::program::find_program;
use crate::sys::mounts::is_mount_point;

const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("`{0}` not found: apt-get install {1}")]
    NoProgram(&'static str, &'static str),
    #[error("{program} {args}: {source}")]
    Run { program: &'static str, args: String, source: RunError },
    #[error("{program} {args}: {message}")]
    Failed { program: &'static str, args: String, message: String },
    #[error("volume image {0} does not exist")]
    NoImage(PathBuf),
    #[error("volume image {image} is still attached to {devices:?} after {waited_ms} ms (still mounted by a live process?)")]
    StillAttached { image: PathBuf, devices: Vec<PathBuf>, waited_ms: u64 },
    #[error("volume image {image} is attached more than once ({devices:?}); detach the extra devices with `losetup -d`")]
    AttachedTwice { image: PathBuf, devices: Vec<PathBuf> },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn run(program: &'static str, package: &'static str, args: &[&str]) -> Result<String, LoopError> {
    let joined = args.join(" ");
    let mut cmd = Command::new(find_program(program).ok_or(LoopError::NoProgram(program, package))?);
    cmd.args(args);
    let out = process::run_bounded(&mut cmd, TIMEOUT).map_err(|source| LoopError::Run { program, args: joined.clone(), source })?;
    if !out.status.success() {
        return Err(LoopError::Failed { program, args: joined, message: out.complaint() });
    }
    Ok(out.stdout)
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Creates a sparse image file of `size_mib` MiB with an ext4 filesystem, unless it exists.
pub fn create_image(image: &Path, size_mib: u64) -> Result<(), LoopError> {
    if image.exists() {
        return Ok(());
    }
    if let Some(dir) = image.parent() {
        std::fs::create_dir_all(dir).map_err(|source| LoopError::Io { path: dir.to_path_buf(), source })?;
    }
    // Build under a temporary name so a crash never leaves a half-made image behind the real one.
    let partial = image.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(|source| LoopError::Io { path: partial.clone(), source })?;
    file.set_len(size_mib << 20).map_err(|source| LoopError::Io { path: partial.clone(), source })?;
    drop(file);
    // No lazy init: background zeroing threads would keep the device busy after unmount.
    run("mkfs.ext4", "e2fsprogs", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", &path_str(&partial)])?;
    std::fs::rename(&partial, image).map_err(|source| LoopError::Io { path: image.to_path_buf(), source })
}

/// Loop devices backed by `image`.
pub fn devices_of(image: &Path) -> Result<Vec<PathBuf>, LoopError> {
    if !image.exists() {
        return Err(LoopError::NoImage(image.to_path_buf()));
    }
    let out = run("losetup", "util-linux", &["--noheadings", "--output", "NAME", "--associated", &path_str(image)])?;
    Ok(out.lines().map(str::trim).filter(|l| !l.is_empty()).map(PathBuf::from).collect())
}

/// Attaches `image` to a free loop device, or returns the device it is already attached to.
pub fn attach(image: &Path) -> Result<PathBuf, LoopError> {
    let devices = devices_of(image)?;
    match devices.as_slice() {
        [one] => return Ok(one.clone()),
        [] => {}
        _ => return Err(LoopError::AttachedTwice { image: image.to_path_buf(), devices }),
    }
    let out = run("losetup", "util-linux", &["--find", "--show", &path_str(image)])?;
    Ok(PathBuf::from(out.trim()))
}

/// Detaches every loop device backed by `image` and waits until the kernel let them go (a
/// device still mounted in a dying mount namespace detaches when that namespace goes).
pub fn detach(image: &Path, wait: Duration) -> Result<(), LoopError> {
    let start = Instant::now();
    loop {
        let devices = devices_of(image)?;
        if devices.is_empty() {
            return Ok(());
        }
        for dev in &devices {
            // Fails harmlessly when another caller detached it first.
            let _ = run("losetup", "util-linux", &["--detach", &path_str(dev)]);
        }
        if start.elapsed() >= wait {
            let devices = devices_of(image)?;
            if devices.is_empty() {
                return Ok(());
            }
            return Err(LoopError::StillAttached { image: image.to_path_buf(), devices, waited_ms: start.elapsed().as_millis() as u64 });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Marks every loop device of `image` to detach itself once nothing uses it any more (a
/// detach of a mounted device sets the kernel's autoclear flag and returns at once).
pub fn detach_when_unused(image: &Path) -> Result<(), LoopError> {
    for dev in devices_of(image)? {
        run("losetup", "util-linux", &["--detach", &path_str(&dev)])?;
    }
    Ok(())
}

/// Mounts `device` (ext4) on `dir` in the caller's mount namespace unless something is mounted there.
pub fn mount(device: &Path, dir: &Path) -> Result<(), LoopError> {
    std::fs::create_dir_all(dir).map_err(|source| LoopError::Io { path: dir.to_path_buf(), source })?;
    if is_mount_point(dir) {
        return Ok(());
    }
    run("mount", "util-linux", &["-t", "ext4", &path_str(device), &path_str(dir)]).map(|_| ())
}

/// Unmounts `dir` if something is mounted there.
pub fn unmount(dir: &Path) -> Result<(), LoopError> {
    if !is_mount_point(dir) {
        return Ok(());
    }
    run("umount", "util-linux", &[&path_str(dir)]).map(|_| ())
}

/// Owns a volume image for a test or the demo: on drop, unmounts the given mount points and
/// detaches the image's loop devices (also when the owner panics or is interrupted).
#[derive(Debug)]
pub struct VolumeCleanup {
    pub image: PathBuf,
    pub mount_dirs: Vec<PathBuf>,
}

impl Drop for VolumeCleanup {
    fn drop(&mut self) {
        for d in &self.mount_dirs {
            if let Err(e) = unmount(d) {
                eprintln!("cleanup: {e}");
            }
        }
        if self.image.exists() {
            if let Err(e) = detach(&self.image, Duration::from_secs(5)) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}
