//! Network namespaces and the workload's service interface (a veth standing in for an ENI).
//!
//! Namespaces are named and bound under `/run/netns` by `ip netns add`, so they outlive their
//! processes and a restore can target them by path.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::sys::process::{self, RunError};
use crate::sys::program::find_program;

const TIMEOUT: Duration = Duration::from_secs(30);
/// The service interface's name inside a workload namespace.
pub const SERVICE_IF: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`ip` not found: apt-get install iproute2")]
    NoIp,
    #[error("ip {args}: {source}")]
    Run { args: String, source: RunError },
    #[error("ip {args}: {message}")]
    Failed { args: String, message: String },
    #[error("{0:?} is not an address with a prefix (like 10.77.0.2/24)")]
    BadAddress(String),
    #[error("network namespace {0} does not exist")]
    NoNamespace(String),
    #[error("entering network namespace {name}: {source}")]
    Enter { name: String, source: std::io::Error },
}

/// An interface address, `IP/PREFIX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IfAddr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for IfAddr {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::BadAddress(s.to_string());
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > if ip.is_ipv4() { 32 } else { 128 } {
            return Err(bad());
        }
        Ok(IfAddr { ip, prefix })
    }
}

impl std::fmt::Display for IfAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

pub fn path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Runs `ip ARGS` (in the root namespace; use `-n NAME` to act inside one).
pub fn ip(args: &[&str]) -> Result<String, NetError> {
    let joined = args.join(" ");
    let mut cmd = Command::new(find_program("ip").ok_or(NetError::NoIp)?);
    cmd.args(args);
    let out = process::run_bounded(&mut cmd, TIMEOUT).map_err(|source| NetError::Run { args: joined.clone(), source })?;
    if !out.status.success() {
        return Err(NetError::Failed { args: joined, message: out.complaint() });
    }
    Ok(out.stdout)
}

/// Creates namespace `name` with loopback up.
pub fn create(name: &str) -> Result<(), NetError> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes namespace `name` if it exists (its veth ends go with it).
pub fn delete(name: &str) -> Result<(), NetError> {
    if !exists(name) {
        return Ok(());
    }
    ip(&["netns", "delete", name]).map(|_| ())
}

/// `ip` arguments addressing namespace `ns`, or the root namespace for `None`.
fn ns_args(ns: Option<&str>) -> Vec<&str> {
    ns.map(|n| vec!["-n", n]).unwrap_or_default()
}

/// Creates a veth pair: `uplink_if` in `uplink_ns` (None = root namespace), its peer named
/// [`SERVICE_IF`] in `workload_ns`, down and without addresses.
pub fn create_veth(workload_ns: &str, uplink_if: &str, uplink_ns: Option<&str>) -> Result<(), NetError> {
    let mut args = ns_args(uplink_ns);
    args.extend(["link", "add", uplink_if, "type", "veth", "peer", "name", SERVICE_IF, "netns", workload_ns]);
    ip(&args)?;
    let mut up = ns_args(uplink_ns);
    up.extend(["link", "set", uplink_if, "up"]);
    ip(&up).map(|_| ())
}

/// Moves the service interface from one namespace to another (the local stand-in for detaching
/// an ENI from one instance and attaching it to another). It arrives down, without addresses.
pub fn move_service_if(from_ns: &str, to_ns: &str) -> Result<(), NetError> {
    ip(&["-n", from_ns, "link", "set", SERVICE_IF, "down"])?;
    ip(&["-n", from_ns, "link", "set", SERVICE_IF, "netns", to_ns]).map(|_| ())
}

/// Takes the service interface down and its addresses off: after a failed restore nothing
/// serves in `ns`, and a client retransmit reaching the address would be answered with a reset.
pub fn take_down_service(ns: &str) -> Result<(), NetError> {
    ip(&["-n", ns, "link", "set", SERVICE_IF, "down"])?;
    ip(&["-n", ns, "addr", "flush", "dev", SERVICE_IF]).map(|_| ())
}

/// Whether namespace `ns` holds the service interface.
pub fn has_service_if(ns: &str) -> bool {
    exists(ns) && ip(&["-n", ns, "link", "show", SERVICE_IF]).is_ok()
}

/// Gives the service interface its address and brings it up, with a default route through it
/// so replies reach clients on the uplink side (only our own namespaces are on that link).
pub fn bring_up_service(ns: &str, addr: IfAddr) -> Result<(), NetError> {
    let a = addr.to_string();
    ip(&["-n", ns, "addr", "replace", &a, "dev", SERVICE_IF])?;
    ip(&["-n", ns, "link", "set", SERVICE_IF, "up"])?;
    let _ = ip(&["-n", ns, "route", "replace", "default", "dev", SERVICE_IF]);
    Ok(())
}

/// Runs `f` on a fresh thread that has entered namespace `name`; sockets it creates stay
/// in that namespace. Used by clients in tests and benchmarks.
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, NetError> {
    let file = std::fs::File::open(path(name)).map_err(|_| NetError::NoNamespace(name.to_string()))?;
    let name = name.to_string();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only; the fd is valid for the call.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetError::Enter { name, source: std::io::Error::last_os_error() });
        }
        Ok(f())
    })
    .join()
    .expect("netns thread panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let a: IfAddr = "10.77.0.2/24".parse().unwrap();
        assert_eq!(a.to_string(), "10.77.0.2/24");
        assert!("10.77.0.2".parse::<IfAddr>().is_err());
        assert!("10.77.0.2/33".parse::<IfAddr>().is_err());
        assert!("fd00::1/64".parse::<IfAddr>().is_ok());
        assert!("nope/8".parse::<IfAddr>().is_err());
    }
}
