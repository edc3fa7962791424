//! CRIU's network lock, carried from the dumping namespace to the restoring one.
//!
//! A final dump with `--tcp-established` inserts, in the namespace CRIU runs in, two iptables
//! rules per connection: `INPUT`/`OUTPUT ... -m mark ! --mark 0xc114 ... -j DROP`. They keep the
//! kernel from answering the clients (with RSTs) while the sockets are gone. A restore deletes
//! the same rules when it re-creates the sockets. On the target side nothing installed them,
//! so between the address coming up and CRIU re-creating the socket (~80 ms here) a client
//! retransmit would get a reset. [`install`] puts the rules in the target namespace before the
//! address comes up; CRIU's restore then removes them as if it had locked them itself.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::sys::process::{self, RunError};
use crate::sys::program::find_program;

/// File next to the images holding the rules (one `-A CHAIN ...` line each).
pub const RULES_FILE: &str = "hotspot-netlock.rules";
/// CRIU's socket repair mark (SOCCR_MARK): packets CRIU itself sends pass the lock.
const CRIU_MARK: &str = "0xc114";
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NetLockError {
    #[error("{0} not found: apt-get install iptables")]
    Missing(&'static str),
    #[error("{tool}: {source}")]
    Run { tool: &'static str, source: RunError },
    #[error("{tool} failed: {message}")]
    Failed { tool: &'static str, message: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: line {line} is not a network-lock rule: {text:?}")]
    BadRule { path: String, line: usize, text: String },
}

fn tool(name: &'static str) -> Result<std::path::PathBuf, NetLockError> {
    find_program(name).ok_or(NetLockError::Missing(name))
}

fn run(name: &'static str, args: &[&str], netns: &Path, input: Option<&[u8]>) -> Result<String, NetLockError> {
    let mut cmd = Command::new(tool(name)?);
    cmd.args(args);
    process::in_netns(&mut cmd, netns).map_err(|source| NetLockError::Run { tool: name, source })?;
    let out = process::run_with_input(&mut cmd, input, TIMEOUT).map_err(|source| NetLockError::Run { tool: name, source })?;
    if !out.status.success() {
        return Err(NetLockError::Failed { tool: name, message: out.complaint() });
    }
    Ok(out.stdout)
}

fn is_lock_rule(line: &str) -> bool {
    (line.starts_with("-A INPUT ") || line.starts_with("-A OUTPUT "))
        && line.contains(&format!("! --mark {CRIU_MARK}"))
        && line.ends_with("-j DROP")
}

/// The connection-lock rules currently in the filter table of `netns`.
pub fn capture(netns: &Path) -> Result<Vec<String>, NetLockError> {
    let text = run("iptables-save", &["-t", "filter"], netns, None)?;
    Ok(text.lines().map(str::trim).filter(|l| is_lock_rule(l)).map(str::to_string).collect())
}

pub fn save(image_dir: &Path, rules: &[String]) -> Result<(), NetLockError> {
    let path = image_dir.join(RULES_FILE);
    let mut text = rules.join("\n");
    text.push('\n');
    std::fs::write(&path, text).map_err(|source| NetLockError::Io { path: path.display().to_string(), source })
}

/// The rules saved next to the images; none when the dump locked no connection.
pub fn load(image_dir: &Path) -> Result<Vec<String>, NetLockError> {
    let path = image_dir.join(RULES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(NetLockError::Io { path: path.display().to_string(), source }),
    };
    let mut rules = Vec::new();
    for (i, line) in text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty()) {
        // Only CRIU's own rule shape goes into iptables-restore: the file crossed the network.
        if !is_lock_rule(line) || line.contains(['\'', '"', '`', ';']) {
            return Err(NetLockError::BadRule { path: path.display().to_string(), line: i + 1, text: line.into() });
        }
        rules.push(line.to_string());
    }
    Ok(rules)
}

/// Inserts `rules` into `netns` (one iptables-restore run, existing rules kept).
pub fn install(netns: &Path, rules: &[String]) -> Result<(), NetLockError> {
    if rules.is_empty() {
        return Ok(());
    }
    let mut input = String::from("*filter\n");
    for r in rules {
        input.push_str(r);
        input.push('\n');
    }
    input.push_str("COMMIT\n");
    run("iptables-restore", &["-w", "--noflush"], netns, Some(input.as_bytes()))?;
    tracing::debug!(netns = %netns.display(), rules = rules.len(), "network lock installed");
    Ok(())
}

/// Deletes `rules` from `netns` where present (the stale lock a source keeps after a move).
pub fn remove(netns: &Path, rules: &[String]) -> Result<usize, NetLockError> {
    let mut removed = 0;
    for r in rules {
        let args: Vec<&str> = r.split_whitespace().collect();
        let mut argv = vec!["-w", "-D"];
        argv.extend(&args[1..]);
        if run("iptables", &argv, netns, None).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_only_lock_rules() {
        let dir = tempfile::tempdir().unwrap();
        let good = "-A INPUT -s 10.77.0.1/32 -d 10.77.0.2/32 -p tcp -m mark ! --mark 0xc114 -m tcp --sport 4000 --dport 6379 -j DROP";
        std::fs::write(dir.path().join(RULES_FILE), format!("{good}\n\n")).unwrap();
        assert_eq!(load(dir.path()).unwrap(), vec![good.to_string()]);
        std::fs::write(dir.path().join(RULES_FILE), "-A INPUT -j ACCEPT\n").unwrap();
        assert!(matches!(load(dir.path()), Err(NetLockError::BadRule { line: 1, .. })));
        std::fs::remove_file(dir.path().join(RULES_FILE)).unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
    }
}
