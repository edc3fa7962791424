//! `hotspot-node run`: the daemon. Config layers: defaults < TOML file < env vars < flags.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hotspot_node::daemon::{self, config::Config};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
#[command(after_help = "Every flag can also be set with the environment variable shown, or in the TOML config \
file (see the hotspot_node::daemon::config docs for every field and its default). Stop with SIGTERM or Ctrl-C: \
the node tells its peers it is leaving before it exits.")]
pub struct RunArgs {
    /// TOML config file. Without it, built-in defaults apply.
    #[arg(long, env = "HOTSPOT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the node key and the reservation ledger [default: /var/lib/hotspot-mesh].
    #[arg(long, env = "HOTSPOT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Control socket path [default: /run/hotspot-mesh/control.sock].
    #[arg(long, env = "HOTSPOT_CONTROL_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Node name shown to peers [default: host name].
    #[arg(long, env = "HOTSPOT_NAME")]
    pub name: Option<String>,
    /// Availability zone [default: local].
    #[arg(long, env = "HOTSPOT_ZONE")]
    pub zone: Option<String>,
    /// Mesh listen multiaddrs (comma-separated) [default: QUIC and TCP on 0.0.0.0, any port].
    #[arg(long, env = "HOTSPOT_LISTEN", value_delimiter = ',')]
    pub listen: Option<Vec<String>>,
    /// Bootstrap peer multiaddrs (comma-separated), for networks without multicast.
    #[arg(long, env = "HOTSPOT_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Option<Vec<String>>,
    /// Discover peers on the LAN with mDNS [default: true].
    #[arg(long, env = "HOTSPOT_MDNS")]
    pub mdns: Option<bool>,
    /// Re-send our advert this often, ms [default: 5000].
    #[arg(long, env = "HOTSPOT_ADVERT_INTERVAL_MS")]
    pub advert_interval_ms: Option<u64>,
    /// Forget peers silent for this long, ms [default: 20000].
    #[arg(long, env = "HOTSPOT_ADVERT_TTL_MS")]
    pub advert_ttl_ms: Option<u64>,
    /// Fixed price in USD per hour [default: 0.10].
    #[arg(long, env = "HOTSPOT_PRICE")]
    pub price: Option<f64>,
    /// Replay prices from this trace file (`<seconds> <usd_per_hour>` lines) instead of a fixed price.
    #[arg(long, env = "HOTSPOT_PRICE_TRACE", conflicts_with = "price")]
    pub price_trace: Option<PathBuf>,
    /// CPU offered to incoming workloads, thousandths of a CPU [default: measured].
    #[arg(long, env = "HOTSPOT_CAPACITY_CPU_MILLIS")]
    pub cpu_millis: Option<u32>,
    /// Memory offered, bytes [default: measured MemAvailable].
    #[arg(long, env = "HOTSPOT_CAPACITY_MEMORY_BYTES")]
    pub memory_bytes: Option<u64>,
    /// Workload state directory, shared with `hotspot-node workload` [default: /var/lib/hotspot-node].
    #[arg(long, env = "HOTSPOT_STATE_DIR")]
    pub workloads_dir: Option<PathBuf>,
    /// UDP address of the QUIC endpoint for images and migration control [default: 0.0.0.0:7947].
    #[arg(long, env = "HOTSPOT_TRANSFER_LISTEN")]
    pub transfer_listen: Option<String>,
    /// Transfer address told to peers [default: --transfer-listen unless it is 0.0.0.0].
    #[arg(long, env = "HOTSPOT_TRANSFER_ADVERTISE")]
    pub transfer_advertise: Option<String>,
    /// Disk offered, bytes [default: measured free space of the data dir].
    #[arg(long, env = "HOTSPOT_CAPACITY_DISK_BYTES")]
    pub disk_bytes: Option<u64>,
    /// Move workloads to a peer cheaper by the margin after migration cost [default: true].
    #[arg(long, env = "HOTSPOT_PRICE_TRIGGER")]
    pub price_trigger: Option<bool>,
    /// Leave a workload alone this long after it arrived or was last moved, ms [default: 60000].
    #[arg(long, env = "HOTSPOT_HOP_COOLDOWN_MS")]
    pub hop_cooldown_ms: Option<u64>,
    /// Re-check the price trigger this often (and whenever a peer's advert changes), ms [default: 5000].
    #[arg(long, env = "HOTSPOT_HOP_CHECK_INTERVAL_MS")]
    pub hop_check_interval_ms: Option<u64>,
    /// Relative margin a cheaper peer must beat, e.g. 0.10 [default: 0.10].
    #[arg(long, env = "HOTSPOT_HOP_MARGIN")]
    pub hop_margin: Option<f64>,
    /// A file whose appearance is a spot interruption notice (content: optional deadline in seconds).
    #[arg(long, env = "HOTSPOT_NOTICE_FILE")]
    pub notice_file: Option<PathBuf>,
    /// Poll EC2's instance metadata service for spot interruption notices [default: false].
    #[arg(long, env = "HOTSPOT_IMDS_NOTICES")]
    pub imds_notices: Option<bool>,
    /// Metadata service base URL [default: http://169.254.169.254].
    #[arg(long, env = "HOTSPOT_IMDS_ENDPOINT")]
    pub imds_endpoint: Option<String>,
    #[command(flatten)]
    pub ec2: super::ec2_run::Ec2RunArgs,
    /// Test builds only: faults to inject, e.g. crash-after:final-dump (see sys/fault.rs).
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "PLAN")]
    pub fault: Option<hotspot_node::sys::fault::FaultPlan>,
}

impl RunArgs {
    /// The effective configuration.
    pub fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *slot = v.clone();
            }
        }
        set(&mut c.data_dir, &self.data_dir);
        set(&mut c.control_socket, &self.socket);
        if self.name.is_some() {
            c.name = self.name.clone();
        }
        set(&mut c.zone, &self.zone);
        set(&mut c.workloads_dir, &self.workloads_dir);
        set(&mut c.transfer_listen, &self.transfer_listen);
        if self.transfer_advertise.is_some() {
            c.transfer_advertise = self.transfer_advertise.clone();
        }
        set(&mut c.mesh.listen, &self.listen);
        set(&mut c.mesh.bootstrap, &self.bootstrap);
        set(&mut c.mesh.mdns, &self.mdns);
        set(&mut c.mesh.advert_interval_ms, &self.advert_interval_ms);
        set(&mut c.mesh.advert_ttl_ms, &self.advert_ttl_ms);
        if let Some(p) = self.price {
            c.price.source = daemon::config::PriceSourceKind::Fixed;
            c.price.fixed_per_hour = p;
        }
        if let Some(t) = &self.price_trace {
            c.price.source = daemon::config::PriceSourceKind::Trace;
            c.price.trace_file = Some(t.clone());
        }
        c.capacity.cpu_millis = self.cpu_millis.or(c.capacity.cpu_millis);
        c.capacity.memory_bytes = self.memory_bytes.or(c.capacity.memory_bytes);
        c.capacity.disk_bytes = self.disk_bytes.or(c.capacity.disk_bytes);
        let t = &mut c.triggers;
        set(&mut t.price, &self.price_trigger);
        set(&mut t.cooldown_ms, &self.hop_cooldown_ms);
        set(&mut t.check_interval_ms, &self.hop_check_interval_ms);
        set(&mut t.margin, &self.hop_margin);
        set(&mut t.imds, &self.imds_notices);
        if self.notice_file.is_some() {
            t.notice_file = self.notice_file.clone();
        }
        if self.imds_endpoint.is_some() {
            t.imds_endpoint = self.imds_endpoint.clone();
        }
        self.ec2.apply(&mut c);
        c.validate()?;
        Ok(c)
    }
}

pub fn run(args: &RunArgs) -> Result<i32> {
    let config = args.config()?;
    #[cfg(feature = "fault-injection")]
    hotspot_node::sys::fault::install(args.fault.clone().unwrap_or_default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            signals.cancel();
        });
        daemon::run(config, shutdown).await.context("hotspot-node daemon failed")
    })?;
    Ok(0)
}
