//! Migration control over QUIC: [`MigrationMessage`]s on the node's transfer endpoint, ALPN
//! [`MIGRATE_ALPN`]. One request per bidirectional stream (length-prefixed codec envelope each
//! way), so a lost reply costs one stream, and the target's idempotent answers make a retry on
//! a fresh connection safe. Images travel on their own connections (`hotspot_transfer::send_dir`),
//! labelled with the migration id so the target knows which migration an image belongs to.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hotspot_protocol::codec::{decode, encode};
use hotspot_protocol::error::ErrorCode;
use hotspot_protocol::handoff::TargetReport;
use hotspot_protocol::ids::MIGRATE_ALPN;
use hotspot_protocol::migration::{MigrationId, MigrationMessage, MigrationMode, WorkloadSpec};
use hotspot_protocol::reservation::{ReservationId, ReservationMessage};
use hotspot_protocol::{Limit, NodeId};
use hotspot_transfer::identity::NodeKey;
use hotspot_transfer::{tls, SendOptions, SendProgress, TrustSet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Mutex};
use tracing::{debug, warn};

use super::precopy_images::PrecopyImages;
use super::target::{Reservations, Restorer, TargetService};
use super::{BoxError, Progress, ShipReport, TargetLink};
use crate::mesh::MeshClient;

/// Longest a control request may take (a restore of a large image included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a `Restore` waits for the final image's receipt to be recorded: the sender sees
/// `Complete` a moment before the receiver's task reports the transfer.
const IMAGE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connecting to {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error("migration control stream: {0}")]
    Stream(String),
    #[error("{0}")]
    Frame(String),
    #[error("target refused ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("target answered {0}")]
    Unexpected(String),
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
}

/// A stream error with its causes: quinn says only "connection lost" and keeps the reason
/// (timed out, closed by the peer with a code, handshake refused) in the source chain.
fn stream_error(e: &(dyn std::error::Error + 'static)) -> LinkError {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    LinkError::Stream(text)
}

pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &MigrationMessage) -> Result<(), LinkError> {
    let body = encode(msg).map_err(|e| LinkError::Frame(e.to_string()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await.map_err(|e| stream_error(&e))
}

pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> Result<MigrationMessage, LinkError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(|e| stream_error(&e))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > Limit::CONTROL.0 {
        return Err(LinkError::Frame(format!("{len}-byte control frame exceeds the limit")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| stream_error(&e))?;
    decode(&body).map_err(|e| LinkError::Frame(e.to_string()))
}

/// Label of a shipped image: `migrate/<32 hex migration id>/<final|round-N>`.
pub fn image_label(migration: &MigrationId, dir: &Path) -> String {
    let which = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!("migrate/{}/{which}", hex(&migration.0))
}

/// The migration and whether it is the final image, from a label made by [`image_label`].
pub fn parse_image_label(label: &str) -> Option<(MigrationId, bool)> {
    let mut parts = label.split('/');
    if parts.next()? != "migrate" {
        return None;
    }
    let id = unhex16(parts.next()?)?;
    Some((MigrationId(id), parts.next()? == "final"))
}

/// 16 bytes from 32 hex digits (migration and reservation ids).
pub fn unhex16(s: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    if s.len() != 32 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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

/// Target side: answers migration control connections handed over by the transfer receiver.
pub async fn serve_control<R: Restorer + 'static, B: Reservations + 'static>(
    mut conns: mpsc::Receiver<quinn::Connection>,
    service: Arc<TargetService<R, B>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let conn = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            c = conns.recv() => match c { Some(c) => c, None => break },
        };
        let Some(peer) = tls::peer_node_id(&conn) else {
            conn.close(ErrorCode::Unauthorized.as_u16().into(), b"no node key");
            continue;
        };
        let service = service.clone();
        tasks.spawn(async move {
            let mut streams = tokio::task::JoinSet::new();
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let service = service.clone();
                streams.spawn(async move {
                    let msg = match read_msg(&mut recv).await {
                        Ok(m) => m,
                        Err(e) => {
                            warn!(peer = %peer.short(), error = %e, "bad migration request");
                            return;
                        }
                    };
                    if let MigrationMessage::Restore { migration, .. } | MigrationMessage::RestoreLazy { migration, .. } = &msg {
                        wait_for_image(&service, migration).await;
                    }
                    debug!(peer = %peer.short(), ?msg, "migration request");
                    let reply = service.handle(&peer, msg).await;
                    if write_msg(&mut send, &reply).await.is_ok() {
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    }
                });
                while streams.try_join_next().is_some() {}
            }
            streams.shutdown().await;
        });
    }
    tasks.shutdown().await;
}

async fn wait_for_image<R: Restorer, B: Reservations>(service: &TargetService<R, B>, migration: &MigrationId) {
    let deadline = tokio::time::Instant::now() + IMAGE_WAIT;
    while tokio::time::Instant::now() < deadline {
        match service.journal.get(migration) {
            Ok(Some(rec)) if rec.image_dir.is_none() => tokio::time::sleep(Duration::from_millis(5)).await,
            _ => return,
        }
    }
}

/// Records finished transfers with the target service: final images become restorable;
/// pre-copy rounds leave their chunks in the store and their image, until the final round, as
/// the parent of the final image (see [`PrecopyImages`]).
pub async fn record_images<R: Restorer, B: Reservations>(
    mut done: mpsc::Receiver<Result<hotspot_transfer::Received, hotspot_transfer::ReceiveError>>,
    service: Arc<TargetService<R, B>>,
    precopy: PrecopyImages,
) {
    while let Some(result) = done.recv().await {
        let received = match result {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "incoming transfer failed");
                continue;
            }
        };
        match parse_image_label(&received.label) {
            Some((migration, true)) => {
                precopy.done(&migration);
                match service.image_received(&migration, received.path.clone()) {
                    Ok(()) => debug!(migration = %migration, path = %received.path.display(), "final image received"),
                    Err(e) => warn!(migration = %migration, error = %e, "image of an unknown migration"),
                }
            }
            Some((migration, false)) => precopy.keep(migration, received.path, received.manifest_id),
            None => debug!(label = %received.label, "image without a migration label kept"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        let id = MigrationId([0xab; 16]);
        let label = image_label(&id, Path::new("/x/final"));
        assert_eq!(parse_image_label(&label), Some((id, true)));
        assert_eq!(parse_image_label(&image_label(&id, Path::new("/x/round-0"))), Some((id, false)));
        assert_eq!(parse_image_label("redis round 1"), None);
        assert_eq!(parse_image_label("migrate/zz/final"), None);
    }
}
