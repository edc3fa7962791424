//! Daemon configuration: a TOML file where every field is optional and documented with its
//! default, then environment variables and command-line flags on top (`hotspot-node run --help`).
//!
//! ```toml
//! # Where the node key and the reservation ledger live.
//! data_dir = "/var/lib/hotspot-mesh"          # default
//! # Unix socket of the control API (CLI <-> daemon), mode 0600.
//! control_socket = "/run/hotspot-mesh/control.sock"   # default
//! name = "web-3"                              # default: the host name
//! zone = "local"                              # default; on EC2 the availability zone
//! # Workload records: the same directory `hotspot-node workload --state-dir` uses, so workloads
//! # started with the CLI are the daemon's to advertise and migrate.
//! workloads_dir = "/var/lib/hotspot-node"     # default
//! # QUIC endpoint for images and migration control, and the address peers are told to use
//! # (needed when listening on 0.0.0.0; without it the node cannot receive workloads).
//! transfer_listen = "0.0.0.0:7947"            # default
//! transfer_advertise = "10.0.0.5:7947"        # default: transfer_listen unless unspecified
//! # How a workload's service address (and volume) move: "local" (nodes of one machine) or
//! # "lan" (machines on one Ethernet segment: proxy ARP + gratuitous ARP; no volumes).
//! provider = "local"                          # default
//! lan_interface = "eth1"                      # default: the interface holding transfer_advertise
//!
//! [mesh]
//! listen = ["/ip4/0.0.0.0/udp/0/quic-v1", "/ip4/0.0.0.0/tcp/0"]   # default
//! bootstrap = []                  # default; multiaddrs of peers for networks without multicast
//! mdns = true                     # default; discover peers on the LAN
//! mdns_query_interval_ms = 30000  # default
//! advert_interval_ms = 5000       # default; re-send our advert this often even unchanged
//! advert_ttl_ms = 20000           # default; forget a peer not heard from for this long
//! ban_after_invalid = 3           # default; invalid adverts before a peer is banned
//! reserve_timeout_ms = 5000       # default; how long a reservation request may take
//!
//! [price]
//! source = "fixed"                # default; or "trace"
//! fixed_per_hour = 0.10           # default; USD per hour when source = "fixed"
//! trace_file = "/etc/hotspot/prices.txt"  # lines "<seconds> <usd_per_hour>", replayed from start
//! trace_loop = true               # default; start over after the last point
//!
//! [triggers]                      # price trigger, notices: see hotspot_node::daemon::triggers
//! price = true                    # default
//!
//! [capacity]                      # what this node offers; each default: measured from the host
//! cpu_millis = 4000
//! memory_bytes = 8589934592
//! disk_bytes = 107374182400
//!
//! # Present only on EC2 (or against an emulator): identity from IMDSv2, spot price in the advert,
//! # bootstrap peers by cluster tag, EBS/ENI moves. Every field: provider::ec2::Ec2NodeSettings.
//! [ec2]
//! cluster = "default"             # default; peers are running instances tagged hotspot-mesh:cluster=<cluster>
//! on_demand_usd_per_hour = 0.0416 # default none; advertised until the first spot price arrives
//! price_refresh_secs = 300        # default
//! [ec2.api]
//! endpoint_url = "http://127.0.0.1:5000"   # default: the real EC2 endpoint of the region
//! [ec2.imds]
//! endpoint = "http://169.254.169.254"      # default
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::mesh::MeshOptions;

mod triggers;
pub use triggers::TriggerConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub control_socket: PathBuf,
    /// Default: the host name.
    pub name: Option<String>,
    pub zone: String,
    pub workloads_dir: PathBuf,
    pub transfer_listen: String,
    pub transfer_advertise: Option<String>,
    pub provider: ProviderKind,
    pub lan_interface: Option<String>,
    pub mesh: MeshConfig,
    pub price: PriceConfig,
    pub capacity: CapacityConfig,
    pub triggers: TriggerConfig,
    /// `[ec2]`: run as an EC2 instance (see [`super::ec2`]). Absent: not on EC2.
    pub ec2: Option<crate::providers::ec2::Ec2NodeSettings>,
}

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/hotspot-mesh/control.sock";

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/hotspot-mesh"),
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            name: None,
            zone: "local".into(),
            workloads_dir: PathBuf::from(crate::workload::DEFAULT_STATE_DIR),
            transfer_listen: "0.0.0.0:7947".into(),
            transfer_advertise: None,
            provider: Default::default(),
            lan_interface: None,
            mesh: MeshConfig::default(),
            price: PriceConfig::default(),
            capacity: CapacityConfig::default(),
            triggers: Default::default(),
            ec2: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshConfig {
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub mdns: bool,
    pub mdns_query_interval_ms: u64,
    pub advert_interval_ms: u64,
    pub advert_ttl_ms: u64,
    pub ban_after_invalid: u32,
    pub reserve_timeout_ms: u64,
}

/// The mesh's own defaults ([`MeshOptions::new`]) are the single source of these values.
impl Default for MeshConfig {
    fn default() -> Self {
        let d = MeshOptions::new([0; 32]);
        let ms = |t: std::time::Duration| t.as_millis() as u64;
        MeshConfig {
            listen: d.listen.iter().map(|a| a.to_string()).collect(),
            bootstrap: d.bootstrap.iter().map(|a| a.to_string()).collect(),
            mdns: d.mdns,
            mdns_query_interval_ms: ms(d.mdns_query_interval),
            advert_interval_ms: ms(d.advert_interval),
            advert_ttl_ms: ms(d.advert_ttl),
            ban_after_invalid: d.ban_after_invalid,
            reserve_timeout_ms: ms(d.reserve_timeout),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PriceSourceKind {
    Fixed,
    Trace,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceConfig {
    pub source: PriceSourceKind,
    pub fixed_per_hour: f64,
    pub trace_file: Option<PathBuf>,
    pub trace_loop: bool,
}

impl Default for PriceConfig {
    fn default() -> Self {
        PriceConfig { source: PriceSourceKind::Fixed, fixed_per_hour: 0.10, trace_file: None, trace_loop: true }
    }
}

/// Overrides of the measured capacity; `None` means "measure it".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapacityConfig {
    pub cpu_millis: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
}

impl Config {
    /// Reads a TOML file; a missing file is an error (the caller decides whether to pass one).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let m = &self.mesh;
        if m.advert_interval_ms == 0 || m.advert_ttl_ms <= m.advert_interval_ms {
            return Err(ConfigError::Invalid(format!(
                "mesh.advert_ttl_ms ({}) must exceed mesh.advert_interval_ms ({}), which must be > 0",
                m.advert_ttl_ms, m.advert_interval_ms
            )));
        }
        if m.ban_after_invalid == 0 || m.reserve_timeout_ms == 0 || m.mdns_query_interval_ms == 0 {
            return Err(ConfigError::Invalid("mesh.ban_after_invalid, reserve_timeout_ms and mdns_query_interval_ms must be > 0".into()));
        }
        if m.listen.is_empty() {
            return Err(ConfigError::Invalid("mesh.listen is empty: the node could not be reached".into()));
        }
        let p = &self.price;
        if !(p.fixed_per_hour.is_finite() && p.fixed_per_hour >= 0.0) {
            return Err(ConfigError::Invalid(format!("price.fixed_per_hour {} must be >= 0", p.fixed_per_hour)));
        }
        if p.source == PriceSourceKind::Trace && p.trace_file.is_none() {
            return Err(ConfigError::Invalid("price.source = \"trace\" needs price.trace_file".into()));
        }
        self.triggers.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    pub fn node_name(&self) -> String {
        self.name.clone().unwrap_or_else(super::host::hostname)
    }
}

/// The `provider` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Nodes of one machine (network namespaces; shared cluster directory and disk).
    #[default]
    Local,
    /// Machines on one Ethernet segment: the service address moves by proxy ARP, no volumes.
    Lan,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn fields_override_and_unknown_fields_are_errors() {
        let c = Config::from_toml("zone = \"b\"\n[mesh]\nmdns = false\nadvert_ttl_ms = 9000\n[capacity]\ncpu_millis = 3000\n").unwrap();
        assert_eq!(c.zone, "b");
        assert!(!c.mesh.mdns);
        assert_eq!(c.mesh.advert_ttl_ms, 9000);
        assert_eq!(c.mesh.advert_interval_ms, 5000);
        assert_eq!(c.capacity.cpu_millis, Some(3000));
        let err = Config::from_toml("[mesh]\nmdsn = true\n").unwrap_err();
        assert!(err.contains("mdsn"), "{err}");
    }

    #[test]
    fn nonsense_is_rejected() {
        let mut c = Config::default();
        c.mesh.advert_ttl_ms = 1000;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.price.source = PriceSourceKind::Trace;
        assert!(c.validate().unwrap_err().to_string().contains("trace_file"));
    }
}
