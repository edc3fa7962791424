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

use super::wire::{image_label, read_msg, stream_error, write_msg, LinkError};
use super::{BoxError, Progress, ShipReport, TargetLink};
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
    ) -> Result<Self, BoxError> {
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
        let connect = |detail: String| LinkError::Connect { addr: self.addr, detail };
        let conn = self
            .endpoint
            .connect_with(self.control_config.clone(), self.addr, tls::SERVER_NAME)
            .map_err(|e| connect(e.to_string()))?
            .await
            .map_err(|e| connect(e.to_string()))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends one request and waits for its answer; a `Refuse` becomes [`LinkError::Refused`].
    pub async fn request(&self, msg: MigrationMessage) -> Result<MigrationMessage, LinkError> {
        let work = async {
            let conn = self.connection().await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream_error(&e))?;
            write_msg(&mut send, &msg).await?;
            let _ = send.finish();
            read_msg(&mut recv).await
        };
        let reply = match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Timeout(REQUEST_TIMEOUT)),
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

impl TargetLink for QuicLink {
    async fn offer(&self, migration: MigrationId, reservation: ReservationId, workload: &WorkloadSpec, mode: MigrationMode) -> Result<(), BoxError> {
        match self.request(MigrationMessage::Offer { migration, reservation, workload: workload.clone(), mode }).await? {
            MigrationMessage::Accept { .. } => Ok(()),
            other => Err(LinkError::Unexpected(format!("{other:?}")).into()),
        }
    }

    async fn ship(&self, migration: MigrationId, dir: &Path) -> Result<([u8; 16], ShipReport), BoxError> {
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

    async fn restore(&self, migration: MigrationId, transfer_id: [u8; 16]) -> Result<u32, BoxError> {
        match self.request(MigrationMessage::Restore { migration, transfer_id }).await? {
            MigrationMessage::Restored { pid, .. } => Ok(pid),
            other => Err(LinkError::Unexpected(format!("{other:?}")).into()),
        }
    }

    async fn restore_lazy(&self, migration: MigrationId, transfer_id: [u8; 16], page_server: SocketAddr) -> Result<u32, BoxError> {
        match self.request(MigrationMessage::RestoreLazy { migration, transfer_id, page_server: page_server.to_string() }).await? {
            MigrationMessage::Restored { pid, .. } => Ok(pid),
            other => Err(LinkError::Unexpected(format!("{other:?}")).into()),
        }
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        Some(self.addr.ip())
    }

    async fn status(&self, migration: MigrationId) -> Result<TargetReport, BoxError> {
        match self.request(MigrationMessage::Status { migration }).await? {
            MigrationMessage::StatusReply { report, .. } => Ok(report),
            other => Err(LinkError::Unexpected(format!("{other:?}")).into()),
        }
    }

    async fn commit(&self, migration: MigrationId) -> Result<(), BoxError> {
        self.request(MigrationMessage::Commit { migration }).await?;
        Ok(())
    }

    async fn abort(&self, migration: MigrationId, reason: &str) -> Result<(), BoxError> {
        self.request(MigrationMessage::Abort { migration, reason: reason.chars().take(4096).collect() }).await?;
        Ok(())
    }

    async fn release(&self, reservation: ReservationId) -> Result<(), BoxError> {
        self.mesh.request(self.target, ReservationMessage::Release { id: reservation }).await?;
        Ok(())
    }
}

