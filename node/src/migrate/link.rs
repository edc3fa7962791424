//! The source's side of migration control over QUIC: [`MigrationMessage`]s to the target's
//! transfer endpoint, ALPN [`MIGRATE_ALPN`], on a cached connection; the target's idempotent
//! answers make a retry on a fresh connection safe. Images travel on connections of their own
//! (`hotspot_transfer::send_dir`), labelled with the migration id ([`super::wire::image_label`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hotspot_protocol::handoff::TargetReport;
use hotspot_protocol::ids::MIGRATE_ALPN;
use hotspot_protocol::migration::{MigrationId, MigrationMessage, MigrationMode, WorkloadSpec};
use hotspot_protocol::reservation::{ReservationId, ReservationMessage};
use hotspot_protocol::NodeId;
use hotspot_transfer::identity::NodeKey;
use hotspot_transfer::{tls, SendOptions, SendProgress, TrustSet};
use tokio::sync::{mpsc, watch, Mutex};

use super::error::LinkError;
use super::wire::{image_label, read_msg, write_msg};
use super::{Progress, ShipReport, TargetLink};
use crate::mesh::MeshClient;

/// Longest a control request may take (a restore of a large image included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(180);
/// The source's link to one target: control requests on a cached connection, images on
/// connections of their own, reservation release through the mesh.
pub struct QuicLink {
    endpoint: quinn::Endpoint,
    control_config: quinn::ClientConfig,
    target: NodeId,
    addr: SocketAddr,
    conn: Mutex<Option<quinn::Connection>>,
    mesh: MeshClient,
    progress: mpsc::Sender<Progress>,
    send_options: SendOptions,
}

impl QuicLink {
    /// `endpoint` is a sending endpoint whose default client config speaks image transfer.
    pub fn new(
        endpoint: quinn::Endpoint,
        key: &NodeKey,
        trust: TrustSet,
        target: NodeId,
        addr: SocketAddr,
        mesh: MeshClient,
        progress: mpsc::Sender<Progress>,
    ) -> Result<Self, LinkError> {
        trust.insert(target);
        let control_config = hotspot_transfer::endpoint::client_config_alpn(key, trust, Some(target), MIGRATE_ALPN)?;
        Ok(QuicLink { endpoint, control_config, target, addr, conn: Mutex::new(None), mesh, progress, send_options: SendOptions::default() })
    }

    /// The target's transfer address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn connection(&self) -> Result<quinn::Connection, LinkError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let addr = self.addr;
        let conn = self
            .endpoint
            .connect_with(self.control_config.clone(), addr, tls::SERVER_NAME)
            .map_err(|source| LinkError::Connect { addr, source })?
            .await
            .map_err(|source| LinkError::Handshake { addr, source })?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends one request and waits for its answer; a `Refuse` becomes [`LinkError::Refused`].
    pub async fn request(&self, msg: MigrationMessage) -> Result<MigrationMessage, LinkError> {
        let request = request_name(&msg);
        let work = async {
            let conn = self.connection().await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(LinkError::Stream)?;
            write_msg(&mut send, &msg).await?;
            let _ = send.finish();
            read_msg(&mut recv).await
        };
        let reply = match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Timeout { request, after: REQUEST_TIMEOUT }),
        };
        if reply.is_err() {
            *self.conn.lock().await = None; // reconnect on the next request
        }
        match reply? {
            MigrationMessage::Refuse { error, .. } | MigrationMessage::RestoreFailed { error, .. } => {
                Err(LinkError::Refused { code: error.code, message: error.message })
            }
            other => Ok(other),
        }
    }
}

/// What a request is called in errors.
fn request_name(msg: &MigrationMessage) -> &'static str {
    use MigrationMessage as M;
    match msg {
        M::Offer { .. } => "offer",
        M::Restore { .. } => "restore",
        M::RestoreLazy { .. } => "lazy restore",
        M::Status { .. } => "status",
        M::Commit { .. } => "commit",
        M::Abort { .. } => "abort",
        _ => "migration",
    }
}

fn unexpected(request: &'static str, answer: MigrationMessage) -> LinkError {
    LinkError::Unexpected { request, answer: Box::new(answer) }
}

impl TargetLink for QuicLink {
    async fn offer(&self, migration: MigrationId, reservation: ReservationId, workload: &WorkloadSpec, mode: MigrationMode) -> Result<(), LinkError> {
        match self.request(MigrationMessage::Offer { migration, reservation, workload: workload.clone(), mode }).await? {
            MigrationMessage::Accept { .. } => Ok(()),
            other => Err(unexpected("offer", other)),
        }
    }

    async fn ship(&self, migration: MigrationId, dir: &Path) -> Result<([u8; 16], ShipReport), LinkError> {
        let opts = SendOptions { label: image_label(&migration, dir), ..self.send_options.clone() };
        let (tx, mut rx) = watch::channel(SendProgress::default());
        let progress = self.progress.clone();
        let reporter = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                let _ = progress.try_send(Progress::Bytes { image_bytes: p.image_bytes, wanted_bytes: p.wanted_bytes, sent_bytes: p.sent_bytes });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let sent = hotspot_transfer::send_dir(&self.endpoint, self.addr, dir, opts, Some(tx)).await;
        reporter.abort();
        let report = sent?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&report.manifest_id.0[..16]);
        Ok((id, ShipReport { image_bytes: report.image_bytes, new_bytes: report.raw_bytes_sent, wire_bytes: report.wire_bytes }))
    }

    async fn restore(&self, migration: MigrationId, transfer_id: [u8; 16]) -> Result<u32, LinkError> {
        match self.request(MigrationMessage::Restore { migration, transfer_id }).await? {
            MigrationMessage::Restored { pid, .. } => Ok(pid),
            other => Err(unexpected("restore", other)),
        }
    }

    async fn restore_lazy(&self, migration: MigrationId, transfer_id: [u8; 16], page_server: SocketAddr) -> Result<u32, LinkError> {
        match self.request(MigrationMessage::RestoreLazy { migration, transfer_id, page_server: page_server.to_string() }).await? {
            MigrationMessage::Restored { pid, .. } => Ok(pid),
            other => Err(unexpected("lazy restore", other)),
        }
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        Some(self.addr.ip())
    }

    async fn status(&self, migration: MigrationId) -> Result<TargetReport, LinkError> {
        match self.request(MigrationMessage::Status { migration }).await? {
            MigrationMessage::StatusReply { report, .. } => Ok(report),
            other => Err(unexpected("status", other)),
        }
    }

    async fn commit(&self, migration: MigrationId) -> Result<(), LinkError> {
        self.request(MigrationMessage::Commit { migration }).await?;
        Ok(())
    }

    async fn abort(&self, migration: MigrationId, reason: &str) -> Result<(), LinkError> {
        self.request(MigrationMessage::Abort { migration, reason: reason.chars().take(4096).collect() }).await?;
        Ok(())
    }

    async fn release(&self, reservation: ReservationId) -> Result<(), LinkError> {
        self.mesh.request(self.target, ReservationMessage::Release { id: reservation }).await?;
        Ok(())
    }
}

