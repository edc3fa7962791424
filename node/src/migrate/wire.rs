//! What travels on the migration's QUIC connections besides image chunks: length-prefixed
//! [`MigrationMessage`] frames (one request per bidirectional stream, so a lost reply costs one
//! stream), and the labels that bind a shipped image to its migration.

use std::path::Path;

use hotspot_protocol::migration::{MigrationId, MigrationMessage};
use hotspot_protocol::Limit;
use hotspot_transfer::framing;
use tokio::io::{AsyncRead, AsyncWrite};

use super::error::LinkError;

pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &MigrationMessage) -> Result<(), LinkError> {
    Ok(framing::write_frame(w, msg).await?)
}

pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> Result<MigrationMessage, LinkError> {
    framing::read_frame(r, Limit::CONTROL.0).await?.ok_or(LinkError::Closed)
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
