//! Node identity, resources and the advert each node gossips about itself.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::{check_len, check_str, Limit, WireMessage};

/// A node's identity: its ed25519 public key. The mesh (libp2p) and the transfer layer (QUIC/TLS)
/// both derive their peer identities from this one key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(#[serde(with = "serde_bytes")] pub [u8; 32]);

crate::hex_id!(NodeId, "node id", debug = 6);

impl NodeId {
    /// First 12 hex digits: enough to tell nodes apart in tables and logs.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }
}

/// An amount of host resources: what a workload needs, or what a node has free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// Thousandths of a CPU.
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

impl Resources {
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_millis <= free.cpu_millis && self.memory_bytes <= free.memory_bytes && self.disk_bytes <= free.disk_bytes
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_sub(other.disk_bytes),
        }
    }

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_add(other.disk_bytes),
        }
    }

    /// The largest fraction of `total` this amount takes in any dimension (0.0..=inf).
    /// A workload's share of a node; what it "costs" of that node's price.
    pub fn share_of(&self, total: &Resources) -> f64 {
        fn frac(a: u64, b: u64) -> f64 {
            if a == 0 {
                0.0
            } else if b == 0 {
                f64::INFINITY
            } else {
                a as f64 / b as f64
            }
        }
        frac(self.cpu_millis as u64, total.cpu_millis as u64)
            .max(frac(self.memory_bytes, total.memory_bytes))
            .max(frac(self.disk_bytes, total.disk_bytes))
    }
}

/// Total and free resources of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capacity {
    pub total: Resources,
    pub free: Resources,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Accepts workloads.
    Healthy,
    /// Moving its workloads off; refuses new reservations.
    Draining,
    /// About to disappear (spot notice, shutdown); peers forget it now.
    Leaving,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Healthy => "healthy",
            NodeState::Draining => "draining",
            NodeState::Leaving => "leaving",
        })
    }
}

/// A workload as listed in its host's advert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSummary {
    pub name: String,
    pub needs: Resources,
}

/// What a node tells the mesh about itself. Gossiped periodically and on change; the gossip layer
/// signs it with the node key, and receivers check that `node` is the key that signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeAdvert {
    pub node: NodeId,
    /// Human name (host name by default), used by `migrate --to NAME`.
    pub name: String,
    /// Increases with every advert a node sends; receivers drop older or repeated ones.
    pub seq: u64,
    /// Sender's wall clock when issued (ms since the Unix epoch); informational.
    pub issued_at_ms: u64,
    pub state: NodeState,
    /// Price of this node in USD per hour.
    pub price_per_hour: f64,
    pub capacity: Capacity,
    /// e.g. "x86_64".
    pub arch: String,
    /// CPU feature flags (from /proc/cpuinfo); a target must have every flag of the source.
    pub cpu_features: BTreeSet<String>,
    /// Availability zone; a workload with a volume can only move within its zone.
    pub zone: String,
    pub workloads: Vec<WorkloadSummary>,
    /// Address of the node's QUIC transfer endpoint ("ip:port").
    pub transfer_addr: Option<String>,
    /// The node's mesh listen addresses (multiaddrs), filled in by its mesh layer: a peer that
    /// learnt of this node only through gossip (a bootstrap-only network, no mDNS) dials them to
    /// send it reservation requests. Absent in adverts of older nodes.
    #[serde(default)]
    pub mesh_addrs: Vec<String>,
}

impl NodeAdvert {
    pub const MAX_NAME: usize = 64;
    pub const MAX_FEATURES: usize = 512;
    pub const MAX_FEATURE_LEN: usize = 64;
    pub const MAX_WORKLOADS: usize = 256;
    pub const MAX_MESH_ADDRS: usize = 16;
    /// Prices beyond this are a bug or an attack, not a market.
    pub const MAX_PRICE_PER_HOUR: f64 = 10_000.0;

    /// A healthy advert with nothing else filled in (price 0, no capacity, no features): the
    /// starting point for builders and tests, `NodeAdvert { price_per_hour: .., ..blank(..) }`.
    pub fn blank(node: NodeId, name: impl Into<String>) -> NodeAdvert {
        NodeAdvert {
            node,
            name: name.into(),
            seq: 0,
            issued_at_ms: 0,
            state: NodeState::Healthy,
            price_per_hour: 0.0,
            capacity: Capacity::default(),
            arch: String::new(),
            cpu_features: BTreeSet::new(),
            zone: String::new(),
            workloads: Vec::new(),
            transfer_addr: None,
            mesh_addrs: Vec::new(),
        }
    }

    pub fn accepts_workloads(&self) -> bool {
        self.state == NodeState::Healthy
    }
}

impl WireMessage for NodeAdvert {
    const LIMIT: Limit = Limit::ADVERT;

    fn validate(&self) -> Result<(), String> {
        check_str("name", &self.name, Self::MAX_NAME)?;
        if self.name.is_empty() {
            return Err("name is empty".into());
        }
        if !self.price_per_hour.is_finite() || self.price_per_hour < 0.0 || self.price_per_hour > Self::MAX_PRICE_PER_HOUR {
            return Err(format!("price_per_hour {} is not in 0..={}", self.price_per_hour, Self::MAX_PRICE_PER_HOUR));
        }
        if !self.capacity.free.fits_in(&self.capacity.total) {
            return Err("free capacity exceeds total capacity".into());
        }
        check_str("arch", &self.arch, 32)?;
        check_str("zone", &self.zone, 64)?;
        if self.cpu_features.len() > Self::MAX_FEATURES {
            return Err(format!("{} cpu features, at most {} allowed", self.cpu_features.len(), Self::MAX_FEATURES));
        }
        for f in &self.cpu_features {
            check_str("cpu feature", f, Self::MAX_FEATURE_LEN)?;
        }
        check_len("workloads", &self.workloads, Self::MAX_WORKLOADS)?;
        for w in &self.workloads {
            check_str("workload name", &w.name, 128)?;
        }
        if let Some(addr) = &self.transfer_addr {
            check_str("transfer_addr", addr, 128)?;
        }
        check_len("mesh_addrs", &self.mesh_addrs, Self::MAX_MESH_ADDRS)?;
        for a in &self.mesh_addrs {
            check_str("mesh address", a, 256)?;
        }
        Ok(())
    }
}
