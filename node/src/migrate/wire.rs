//! What travels on the migration's QUIC connections besides image chunks: length-prefixed
//! [`MigrationMessage`] frames (one request per bidirectional stream, so a lost reply costs one
//! stream), and the labels that bind a shipped image to its migration.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hotspot_protocol::error::ErrorCode;
use hotspot_protocol::migration::{MigrationId, MigrationMessage};
use hotspot_protocol::Limit;
use hotspot_transfer::framing::{self, FrameError};
use tokio::io::{AsyncRead, AsyncWrite};

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
pub(super) fn stream_error(e: &(dyn std::error::Error + 'static)) -> LinkError {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    LinkError::Stream(text)
}

fn frame_error(e: FrameError) -> LinkError {
    match e {
        FrameError::Io(e) => stream_error(&e),
        other => LinkError::Frame(other.to_string()),
    }
}

pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &MigrationMessage) -> Result<(), LinkError> {
    framing::write_frame(w, msg).await.map_err(frame_error)
}

pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> Result<MigrationMessage, LinkError> {
    framing::read_frame(r, Limit::CONTROL.0)
        .await
        .map_err(frame_error)?
        .ok_or_else(|| LinkError::Stream("stream ended before a message".into()))
}

/// Label of a shipped image: `migrate/<32 hex migration id>/<final|round-N>`.
pub fn image_label(migration: &MigrationId, dir: &Path) -> String {
    let which = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!("migrate/{migration}/{which}")
}

/// The migration and whether it is the final image, from a label made by [`image_label`].
pub fn parse_image_label(label: &str) -> Option<(MigrationId, bool)> {
    let mut parts = label.split('/');
    if parts.next()? != "migrate" {
        return None;
    }
    let id: MigrationId = parts.next()?.parse().ok()?;
    Some((id, parts.next()? == "final"))
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
