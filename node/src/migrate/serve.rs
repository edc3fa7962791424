//! The target's side of migration control over QUIC: answers the control connections the
//! transfer receiver hands over, and records finished image transfers with the target service.

use std::sync::Arc;
use std::time::Duration;

use hotspot_protocol::error::ErrorCode;
use hotspot_protocol::migration::{MigrationId, MigrationMessage};
use hotspot_transfer::tls;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::precopy_images::PrecopyImages;
use super::target::{Reservations, Restorer, TargetService};
use super::wire::{parse_image_label, read_msg, write_msg};

/// How long a `Restore` waits for the final image's receipt to be recorded: the sender sees
/// `Complete` a moment before the receiver's task reports the transfer.
const IMAGE_WAIT: Duration = Duration::from_secs(30);

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

