//! What travels on the migration's QUIC connections besides image chunks: length-prefixed
//! [`MigrationMessage`] frames (one request per bidirectional stream, so a lost reply costs one
//! stream), and the labels that bind a shipped image to its migration.

use std::path::Path;

use hotspot_protocol::codec::{decode, encode};
use hotspot_protocol::error::ErrorCode;
use hotspot_protocol::migration::{MigrationId, MigrationMessage};
use hotspot_protocol::Limit;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
