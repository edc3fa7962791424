//! The LAN resource provider: moves a workload's service address between machines on one
//! Ethernet segment (VMs on a private network, bare-metal hosts on a switch), where there is no
//! cloud API to re-attach an interface and no shared disk.
//!
//! The workload keeps its own network namespace with `eth0` holding the service address (say
//! 192.168.60.100/24, on the LAN's subnet), one end of a veth whose other end (the *uplink*) is
//! on the node; the node routes the address (`/32`) to the uplink and **answers ARP for it on
//! its LAN interface** (a proxy neighbour entry), and the uplink answers ARP for the LAN's
//! hosts (`proxy_arp`), so clients and workload talk through the node's forwarding.
//!
//! Moving to a target:
//! 1. the source **withdraws** its proxy entry ([`ResourceMover::move_to_target`]; its frozen
//!    copy's namespace, and with it the route, goes when the migration retires it);
//! 2. the target, when asked to restore ([`SelectedRestorer`]), creates the workload's
//!    namespace and veth with the same address *before* CRIU restores (live TCP needs it),
//!    restores, then **publishes**: route, proxy entry, and a gratuitous ARP ([`garp`]) so the
//!    clients' caches point at the target at once.
//!
//! A move back (rollback) publishes on the source again. A workload started with
//! `hotspot-node workload start --address` is published by the daemon within a second
//! ([`LanProvider::keep_published`]).
//!
//! **No volumes**: VMs share no disk, so a workload with a volume is refused with a clear error.
//! IPv4 only (proxy NDP for IPv6 is not done).

pub mod garp;
pub mod restorer;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hotspot_protocol::migration::WorkloadSpec;
use hotspot_protocol::NodeId;
use tokio_util::sync::CancellationToken;

use crate::providers::move_state::{run_blocking_step, MoveState, Step};
use crate::migrate::{MoveError, ResourceMover};
use crate::sys::netns;
use crate::workload::{IfAddr, NetError, WorkloadRecord, Workloads};
pub use garp::GarpError;

/// How often the daemon checks that its running workloads are published.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error("workload {0} has a volume: the LAN provider moves no disks (machines on a LAN share none); start it without --volume, or use the local or EC2 provider")]
    VolumeRefused(String),
    #[error("workload {workload}: service address {address} is not IPv4 (the LAN provider answers ARP, not IPv6 neighbour discovery)")]
    NotIpv4 { workload: String, address: String },
    #[error("workload {0} has no service interface on this node (start it with --address)")]
    NoUplink(String),
    #[error("cannot find the LAN interface: {0} (set lan_interface in the config)")]
    NoInterface(String),
    #[error("{path}: {source}")]
    Sysctl { path: String, source: std::io::Error },
    #[error(transparent)]
    State(#[from] crate::providers::move_state::MoveStateError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Garp(#[from] GarpError),
    #[error(transparent)]
    Workload(#[from] crate::workload::WorkloadError),
}

/// The LAN provider of one node.
#[derive(Debug, Clone)]
pub struct LanProvider {
    /// The node's interface on the LAN, where the proxy entries and gratuitous ARPs go.
    pub interface: String,
    workloads: Workloads,
    /// Held while publishing or withdrawing, so the background check never re-publishes an
    /// address a migration has just withdrawn. Holds the addresses this daemon published.
    publishing: Arc<Mutex<HashSet<Ipv4Addr>>>,
}

/// The IPv4 service address of a workload, if it has one.
fn ipv4_of(workload: &str, address: Option<&str>) -> Result<Option<Ipv4Addr>, LanError> {
    let Some(text) = address else { return Ok(None) };
    let addr: IfAddr = text.parse()?;
    match addr.ip {
        std::net::IpAddr::V4(ip) => Ok(Some(ip)),
        std::net::IpAddr::V6(_) => Err(LanError::NotIpv4 { workload: workload.into(), address: text.into() }),
    }
}

fn write_sysctl(path: &str, value: &str) -> Result<(), LanError> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(path, value).map_err(|source| LanError::Sysctl { path: path.into(), source })
}

/// The interface holding `ip` in this network namespace (`ip -o addr show to IP`).
pub fn interface_with(ip: std::net::IpAddr) -> Result<String, LanError> {
    let out = netns::ip(&["-o", "addr", "show", "to", &ip.to_string()])?;
    let name = out.split_whitespace().nth(1).map(|n| n.trim_end_matches(':').split('@').next().unwrap_or(n).to_string());
    name.filter(|n| !n.is_empty()).ok_or_else(|| LanError::NoInterface(format!("no interface holds {ip}")))
}

impl LanProvider {
    pub fn new(interface: impl Into<String>, workloads: Workloads) -> Self {
        LanProvider { interface: interface.into(), workloads, publishing: Arc::new(Mutex::new(HashSet::new())) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Ipv4Addr>> {
        self.publishing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this node answers ARP for `ip` on the LAN.
    pub fn is_published(&self, ip: Ipv4Addr) -> bool {
        netns::ip(&["neigh", "show", "proxy", &ip.to_string(), "dev", &self.interface]).is_ok_and(|o| !o.trim().is_empty())
    }

    /// Lets the workload behind `uplink` reach the LAN through this node: forwarding on, the
    /// uplink answering the workload's ARP for LAN hosts (`proxy_arp`). Done before a restore
    /// too: a restored workload's first packets leave at once, and an ARP the uplink does not
    /// answer yet is retried only a second later (a second of stall on top of the freeze).
    /// Proxy answers to broadcast requests also wait a random 0..`proxy_delay` (default 0.8 s),
    /// on the uplink and on the LAN side, so that delay is set to 0 on both.
    fn open_uplink(&self, uplink: &str) -> Result<(), LanError> {
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{uplink}/proxy_arp"), "1")?;
        for dev in [uplink, self.interface.as_str()] {
            write_sysctl(&format!("/proc/sys/net/ipv4/neigh/{dev}/proxy_delay"), "0")?;
        }
        Ok(())
    }

    /// Makes the workload of `rec` reachable from the LAN through this node (idempotent):
    /// forwarding on, route to its uplink, ARP answered on both sides, gratuitous ARP sent.
    fn publish_locked(&self, published: &mut HashSet<Ipv4Addr>, rec: &WorkloadRecord) -> Result<(), LanError> {
        let Some(ip) = ipv4_of(&rec.name, rec.address.map(|a| a.to_string()).as_deref())? else { return Ok(()) };
        let uplink = rec.uplink.as_ref().filter(|u| u.netns.is_none()).ok_or_else(|| LanError::NoUplink(rec.name.clone()))?;
        self.open_uplink(&uplink.interface)?;
        let (host, ip_text) = (format!("{ip}/32"), ip.to_string());
        netns::ip(&["route", "replace", &host, "dev", &uplink.interface])?;
        netns::ip(&["neigh", "replace", "proxy", &ip_text, "dev", &self.interface])?;
        published.insert(ip);
        garp::announce(&self.interface, ip)?;
        tracing::info!(workload = %rec.name, address = %ip, interface = %self.interface, uplink = %uplink.interface, "service address published on the LAN");
        // Repeat the announcement: a frame can be lost, and a host may ignore an update that
        // follows another within its neighbour `locktime`.
        let interface = self.interface.clone();
        std::thread::spawn(move || {
            for delay in [300, 1000] {
                std::thread::sleep(Duration::from_millis(delay));
                let _ = garp::announce(&interface, ip);
            }
        });
        Ok(())
    }

    /// [`Self::publish_locked`] for workload `name`'s record on this node.
    pub fn publish(&self, name: &str) -> Result<(), LanError> {
        let mut published = self.lock();
        self.publish_locked(&mut published, &self.workloads.get(name)?.record)
    }

    /// Stops answering for `ip` on the LAN (idempotent).
    pub fn withdraw(&self, ip: Ipv4Addr) -> Result<(), LanError> {
        Self::withdraw_locked(&self.interface, &mut self.lock(), ip)
    }

    fn withdraw_locked(interface: &str, published: &mut HashSet<Ipv4Addr>, ip: Ipv4Addr) -> Result<(), LanError> {
        published.remove(&ip);
        let shown = netns::ip(&["neigh", "show", "proxy", &ip.to_string(), "dev", interface]).is_ok_and(|o| !o.trim().is_empty());
        if shown {
            netns::ip(&["neigh", "del", "proxy", &ip.to_string(), "dev", interface])?;
            tracing::info!(address = %ip, interface, "service address withdrawn from the LAN");
        }
        Ok(())
    }

    /// One pass of [`Self::keep_published`]: publishes every running workload not yet
    /// published, and withdraws addresses it published whose workload has no record here any
    /// more (stopped, or retired after migrating away).
    pub fn publish_running(&self) {
        let records: Vec<WorkloadRecord> = self.workloads.list().into_iter().flatten().map(|w| w.record).collect();
        for rec in records.iter().filter(|r| r.address.is_some()) {
            let mut published = self.lock();
            // Checked under the lock: a workload being migrated stops running (final dump)
            // before its address is withdrawn.
            let running = self.workloads.get(&rec.name).is_ok_and(|w| w.is_running());
            let Some(std::net::IpAddr::V4(ip)) = rec.address.map(|a| a.ip) else { continue };
            if running && !self.is_published(ip) {
                if let Err(e) = self.publish_locked(&mut published, rec) {
                    tracing::warn!(workload = %rec.name, error = %e, "cannot publish the service address on the LAN");
                }
            }
        }
        let mut published = self.lock();
        let orphans: Vec<Ipv4Addr> = published.iter().copied().filter(|ip| !records.iter().any(|r| r.address.is_some_and(|a| a.ip == *ip))).collect();
        for ip in orphans {
            if let Err(e) = Self::withdraw_locked(&self.interface, &mut published, ip) {
                tracing::warn!(address = %ip, error = %e, "cannot withdraw the address of a workload gone from this node");
            }
        }
    }

    /// Keeps workloads started on this node (`hotspot-node workload start --address`)
    /// reachable from the LAN, until `cancel`.
    pub async fn keep_published(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.publish_running()).await;
        }
    }

    fn refuse_volume(spec: &WorkloadSpec) -> Result<(), LanError> {
        match spec.volume {
            Some(_) => Err(LanError::VolumeRefused(spec.name.clone())),
            None => Ok(()),
        }
    }

    /// The blocking body of [`ResourceMover::move_to_target`]: the source's half.
    pub fn move_to_target_blocking(&self, spec: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), LanError> {
        Self::refuse_volume(spec)?;
        // A host-directory volume (`--volume DIR` without an image) is not in the spec either.
        if self.workloads.get(&spec.name).is_ok_and(|w| w.volume().is_some()) {
            return Err(LanError::VolumeRefused(spec.name.clone()));
        }
        let Some(ip) = ipv4_of(&spec.name, spec.address.as_deref())? else { return Ok(()) };
        let mut st = MoveState::decode(state)?;
        st.target = Some(target.to_string());
        self.withdraw(ip)?;
        st.mark(Step::AddressOnTarget);
        *state = st.encode();
        Ok(())
    }

    /// The blocking body of [`ResourceMover::move_back`]: answer for the address here again.
    /// (A target that restored and then failed withdraws its own entry; see
    /// [`SelectedRestorer`].)
    pub fn move_back_blocking(&self, spec: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), LanError> {
        if ipv4_of(&spec.name, spec.address.as_deref())?.is_none() {
            return Ok(());
        }
        let mut st = MoveState::decode(state)?;
        self.publish(&spec.name)?;
        st.unmark(Step::AddressOnTarget);
        *state = st.encode();
        Ok(())
    }

    /// The target's half, before the restore: the workload's namespace with `eth0` (down; the
    /// restore brings the address up after CRIU's network lock is in) and its uplink routed.
    /// Returns whether it created the namespace.
    pub fn prepare_target(&self, spec: &WorkloadSpec, ns: &str) -> Result<bool, LanError> {
        Self::refuse_volume(spec)?;
        let Some(ip) = ipv4_of(&spec.name, spec.address.as_deref())? else { return Ok(false) };
        let created = !netns::exists(ns);
        if created {
            netns::create(ns)?;
        }
        if !netns::has_service_if(ns) {
            let uplink = crate::workload::uplink_if_name(&spec.name);
            let made = netns::create_veth(ns, &uplink, None)
                .and_then(|()| netns::ip(&["route", "replace", &format!("{ip}/32"), "dev", &uplink]))
                .map_err(LanError::from)
                .and_then(|_| self.open_uplink(&uplink));
            if let Err(e) = made {
                if created {
                    let _ = netns::delete(ns);
                }
                return Err(e);
            }
        }
        Ok(created)
    }
}

impl ResourceMover for LanProvider {
    async fn move_to_target(&self, workload: &WorkloadSpec, target: &NodeId, state: &mut Vec<u8>) -> Result<(), MoveError> {
        let (spec, target) = (workload.clone(), *target);
        run_blocking_step(self, ("lan", "moving to the target"), state, move |me, st| me.move_to_target_blocking(&spec, &target, st)).await
    }

    async fn move_back(&self, workload: &WorkloadSpec, state: &mut Vec<u8>) -> Result<(), MoveError> {
        let spec = workload.clone();
        run_blocking_step(self, ("lan", "moving back"), state, move |me, st| me.move_back_blocking(&spec, st)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(address: Option<&str>, volume: Option<&str>) -> WorkloadSpec {
        WorkloadSpec { name: "redis".into(), needs: Default::default(), address: address.map(Into::into), volume: volume.map(Into::into) }
    }

    #[test]
    fn refuses_volumes_and_ipv6_with_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let lan = LanProvider::new("eth-none", Workloads::new(tmp.path()));
        let mut state = Vec::new();
        let err = lan.move_to_target_blocking(&spec(Some("10.77.0.2/24"), Some("/srv/redis.img")), &NodeId([1; 32]), &mut state).unwrap_err();
        assert!(err.to_string().contains("moves no disks"), "{err}");
        let err = lan.prepare_target(&spec(None, Some("/srv/redis.img")), "hs-none").unwrap_err();
        assert!(matches!(err, LanError::VolumeRefused(_)));
        let err = lan.move_to_target_blocking(&spec(Some("fd00::2/64"), None), &NodeId([1; 32]), &mut state).unwrap_err();
        assert!(err.to_string().contains("not IPv4"), "{err}");
        // No address: nothing to move, nothing journaled.
        lan.move_to_target_blocking(&spec(None, None), &NodeId([1; 32]), &mut state).unwrap();
        assert!(state.is_empty());
    }
}
