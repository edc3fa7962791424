//! The `hotspot-node run` daemon: joins the mesh, advertises this node, answers reservation
//! requests from its persisted ledger, and serves the local control socket.
//!
//! - [`config`]: TOML config, every field documented and defaulted.
//! - [`host`]: capacity, arch and CPU flags measured from the host.
//! - [`price`]: the price source trait, fixed and trace-replay sources.
//! - [`ledger`]: the reservation ledger in sled, versioned.
//! - [`control`]: the control socket protocol, server and client.
//! - [`service`]: the node's state and behaviour behind the control API and the mesh.

pub mod api;
pub mod check;
pub mod config;
pub mod ec2;
pub mod control;
pub mod evacuate;
pub mod hop;
pub mod host;
pub mod ledger;
pub mod migration;
pub mod providers;
pub mod reboot;
pub mod reservations;
pub mod router;
pub mod service;
pub mod status;
pub mod triggers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hotspot_transfer::identity::NodeKey;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::mesh::{self, MeshOptions};
use config::{Config, PriceSourceKind};
use crate::providers::price::{self, PriceSource};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot create data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("node key: {0}")]
    Key(#[from] hotspot_transfer::identity::IdentityError),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Price(#[from] price::PriceError),
    #[error(transparent)]
    Mesh(#[from] mesh::MeshError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("migration endpoint: {0}")]
    Migration(#[source] migration::StartError),
    #[error(transparent)]
    Ec2(#[from] crate::providers::ec2::node::Ec2NodeError),
    #[error("invalid multiaddr {addr:?} in {field}: {reason}")]
    Multiaddr { field: &'static str, addr: String, reason: String },
}

/// The longest a clean stop waits for the `leaving` advert to go out.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

fn multiaddrs(field: &'static str, addrs: &[String]) -> Result<Vec<libp2p::Multiaddr>, DaemonError> {
    addrs
        .iter()
        .map(|a| a.parse().map_err(|e: libp2p::multiaddr::Error| DaemonError::Multiaddr { field, addr: a.clone(), reason: e.to_string() }))
        .collect()
}

pub fn mesh_options(config: &Config, key_seed: [u8; 32]) -> Result<MeshOptions, DaemonError> {
    let m = &config.mesh;
    let mut opts = MeshOptions::new(key_seed);
    opts.listen = multiaddrs("mesh.listen", &m.listen)?;
    opts.bootstrap = multiaddrs("mesh.bootstrap", &m.bootstrap)?;
    opts.mdns = m.mdns;
    opts.mdns_query_interval = Duration::from_millis(m.mdns_query_interval_ms);
    opts.advert_interval = Duration::from_millis(m.advert_interval_ms);
    opts.advert_ttl = Duration::from_millis(m.advert_ttl_ms);
    opts.ban_after_invalid = m.ban_after_invalid;
    opts.reserve_timeout = Duration::from_millis(m.reserve_timeout_ms);
    Ok(opts)
}

fn price_source(config: &Config) -> Result<Box<dyn PriceSource>, DaemonError> {
    Ok(match (config.price.source, &config.price.trace_file) {
        (PriceSourceKind::Trace, Some(path)) => Box::new(price::TracePrice::load(path, config.price.trace_loop)?),
        _ => Box::new(price::FixedPrice(config.price.fixed_per_hour)),
    })
}

fn create_private_dir(path: &std::path::Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| DaemonError::DataDir { path: path.into(), source })
}

/// Runs the daemon until `shutdown` fires, then announces `leaving` and stops everything it
/// started. Returns once all its tasks have ended.
pub async fn run(mut config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    config.validate()?;
    create_private_dir(&config.data_dir)?;
    let key = NodeKey::load_or_create(&config.data_dir.join("node.key"))?;
    let ec2 = ec2::start_if_configured(&mut config, &key.node_id()).await?;
    if let Some(e) = &config.ec2 {
        // On EC2, spot notices come from the metadata service the [ec2] section names.
        config.triggers.imds = true;
        config.triggers.imds_endpoint.get_or_insert_with(|| e.imds.endpoint.clone());
    }
    let store = ledger::SledLedgerStore::open(&config.data_dir.join("ledger"))?;
    let opts = mesh_options(&config, key.seed())?;
    let listener = control::bind(&config.control_socket)?;
    // The mesh gets its own token: it must outlive `shutdown` long enough to say `leaving`.
    let mesh_cancel = CancellationToken::new();
    let mesh = mesh::spawn(opts, mesh_cancel.clone())?;
    let service = Arc::new(service::NodeService::new(&config, mesh.node_id, mesh.client.clone(), Box::new(store), match &ec2 {
        Some(e) => e.price_source(config.price.fixed_per_hour),
        None => price_source(&config)?,
    })?);
    info!(node = %mesh.node_id, name = %service.name(), socket = %config.control_socket.display(), "hotspot-node running");

    let tasks_cancel = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    let migrations = migration::start(&config, &key, service.clone(), mesh.client.clone(), ec2.as_deref(), &mut tasks, tasks_cancel.clone()).map_err(DaemonError::Migration)?;
    if let Some(e) = &ec2 {
        e.spawn(&mut tasks, mesh.client.clone(), tasks_cancel.clone());
    }
    reboot::account(&config, mesh.node_id).await;
    let triggers = evacuate::Triggers::new(config.triggers.clone(), service.clone(), migrations.clone());
    let handler = Arc::new(router::Router { service: service.clone(), migrations, triggers: triggers.clone() });
    tasks.spawn(triggers.clone().price_loop(tasks_cancel.clone()));
    tasks.spawn(triggers::watch_notices(triggers, tasks_cancel.clone()));
    tasks.spawn(control::serve(listener, handler, tasks_cancel.clone()));
    tasks.spawn(service.clone().advertise(tasks_cancel.clone()));
    tasks.spawn(service.clone().answer_reservations(mesh.events, tasks_cancel.clone()));

    shutdown.cancelled().await;
    info!("stopping: announcing leaving");
    match tokio::time::timeout(LEAVE_TIMEOUT, mesh.client.leave(service.advert())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "could not announce leaving"),
        Err(_) => warn!("timed out announcing leaving"),
    }
    while tasks.join_next().await.is_some() {}
    mesh_cancel.cancel();
    let _ = mesh.task.await;
    let _ = std::fs::remove_file(&config.control_socket);
    info!("stopped");
    Ok(())
}
