//! Running helper programs (criu, ip, iptables) with a deadline and, where needed, inside a
//! network namespace. Blocking by design: every call is bounded by its timeout, and async
//! callers run the driver on `spawn_blocking`.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stderr, else stdout, trimmed: what a failing tool said.
    pub fn complaint(&self) -> String {
        let s = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        s.trim().to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{program} did not finish within {after:?} and was killed")]
    TimedOut { program: String, after: Duration },
    #[error("cannot enter network namespace {path}: {source}")]
    Netns { path: String, source: io::Error },
}

/// Makes `cmd` start inside the network namespace bound at `netns_path` (`/run/netns/NAME`).
/// Uses setns(2) in the child rather than `ip netns exec`, which would also give the child a
/// fresh mount namespace and a remounted /sys; CRIU must see the host's mounts.
pub fn in_netns(cmd: &mut Command, netns_path: &Path) -> Result<(), RunError> {
    let file = std::fs::File::open(netns_path)
        .map_err(|source| RunError::Netns { path: netns_path.display().to_string(), source })?;
    // SAFETY: the closure only calls setns(2), which is async-signal-safe; `file` is owned by
    // the closure, so its descriptor is open in the forked child.
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd;
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs `cmd` to completion, capturing its output, killing it after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output, RunError> {
    run_with_input(cmd, None, timeout)
}

/// [`run_bounded`], feeding `input` on stdin (small inputs: written before waiting).
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output, RunError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    // Its own process group, so a timeout kills helpers it forked too.
    let mut child = cmd
        .process_group(0)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::Spawn { program: program.clone(), source })?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        // A tool that exits early closes its stdin; its exit status tells the story.
        let _ = stdin.write_all(data);
    }
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::sync_channel(1);
    // The waiter owns the child; it ends when the child does (killed below on timeout).
    let waiter = std::thread::Builder::new()
        .name("run-bounded".into())
        .spawn(move || {
            let _ = tx.send(child.wait_with_output());
        })
        .map_err(|source| RunError::Spawn { program: program.clone(), source })?;
    let result = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            // SAFETY: kill(2) of the process group of our own, not yet reaped child.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            // The waiter ends once the output pipes close. A descendant that left the group
            // (setsid) may keep them open: then the thread is left to finish on its own
            // rather than blocking the caller past its deadline.
            if rx.recv_timeout(Duration::from_secs(5)).is_ok() {
                let _ = waiter.join();
            } else {
                tracing::warn!(%program, "a descendant of a killed helper still holds its output pipes");
            }
            return Err(RunError::TimedOut { program, after: timeout });
        }
    };
    let _ = waiter.join();
    let out = result.map_err(|source| RunError::Spawn { program, source })?;
    Ok(Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_kills_on_timeout() {
        let out = run_bounded(Command::new("sh").args(["-c", "echo hi; echo oops >&2; exit 3"]), Duration::from_secs(5)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout.trim(), "hi");
        assert_eq!(out.complaint(), "oops");
        let start = std::time::Instant::now();
        let err = run_bounded(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(run_bounded(&mut Command::new("/nonexistent/x"), Duration::from_secs(1)), Err(RunError::Spawn { .. })));
    }
}
