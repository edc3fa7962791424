//! Framing of [`TransferMessage`]s on QUIC streams: a u32 big-endian length, then the versioned
//! envelope ([`hotspot_protocol::codec`]). The length is checked against the caller's limit
//! before anything is allocated, so a hostile peer cannot make us buffer more than that.
//!
//! Streams of one transfer (ALPN [`hotspot_protocol::ids::TRANSFER_ALPN`]):
//! - one bidirectional control stream opened by the sender: `Offer` ->; <- `Want`*, `Rejected`*,
//!   then `Complete` or `Error`;
//! - several unidirectional data streams opened by the sender, each a sequence of `ChunkBatch`
//!   headers, each followed by its `compressed_len` payload bytes.

use hotspot_protocol::codec::{decode, encode, DecodeError, EncodeError, WireMessage};
use hotspot_protocol::error::{ErrorCode, WireError};
use hotspot_protocol::manifest::{ImageManifest, TransferMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest control message (an `Offer` carries the whole manifest).
pub const MAX_CONTROL_FRAME: usize = hotspot_protocol::Limit::MANIFEST.0;
/// Largest data-stream header (a `ChunkBatch` lists at most a few thousand chunks).
pub const MAX_DATA_HEADER: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer sent a {len}-byte frame, limit {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("peer sent a malformed message: {0}")]
    Decode(#[from] DecodeError),
    #[error("encoding message: {0}")]
    Encode(#[from] EncodeError),
}

pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &TransferMessage) -> Result<(), FrameError> {
    let body = encode(msg)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one message; `Ok(None)` on a clean end of stream before a frame starts.
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<Option<TransferMessage>, FrameError> {
    let mut len = [0u8; 4];
    // Only an end of stream exactly between frames is clean; a torn length is an error.
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..]).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(decode(&body)?))
}

/// An `OfferCompressed` carrying `manifest` (blocking: compresses a few MB).
pub fn compressed_offer(transfer_id: [u8; 16], manifest: &ImageManifest) -> Result<TransferMessage, FrameError> {
    let raw = serde_cbor::to_vec(manifest).map_err(|e| FrameError::Encode(EncodeError::Cbor(e)))?;
    let compressed = zstd::bulk::compress(&raw, 3)?;
    Ok(TransferMessage::OfferCompressed { transfer_id, raw_len: raw.len() as u32, manifest: compressed })
}

/// The manifest of an `Offer` or `OfferCompressed`, decompressed within its declared size and
/// validated like any wire message (blocking).
pub fn offered_manifest(msg: TransferMessage) -> Result<ImageManifest, FrameError> {
    let manifest = match msg {
        TransferMessage::Offer { manifest, .. } => return Ok(manifest),
        TransferMessage::OfferCompressed { raw_len, manifest, .. } => {
            let raw = zstd::bulk::decompress(&manifest, raw_len as usize).map_err(|e| FrameError::Decode(DecodeError::Malformed(format!("manifest does not decompress: {e}"))))?;
            if raw.len() != raw_len as usize {
                return Err(FrameError::Decode(DecodeError::Malformed(format!("manifest is {} bytes, header said {raw_len}", raw.len()))));
            }
            serde_cbor::from_slice::<ImageManifest>(&raw).map_err(|e| FrameError::Decode(DecodeError::Malformed(e.to_string())))?
        }
        other => return Err(FrameError::Decode(DecodeError::Invalid(format!("expected an offer, got {other:?}")))),
    };
    manifest.validate().map_err(|e| FrameError::Decode(DecodeError::Invalid(e)))?;
    Ok(manifest)
}

pub fn error_msg(code: ErrorCode, message: impl Into<String>) -> TransferMessage {
    let mut message: String = message.into();
    message.truncate(60 * 1024);
    TransferMessage::Error(WireError { code, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_garbage_is_refused() {
        let msg = TransferMessage::Want { missing: vec![] };
        let mut buf = Vec::new();
        write_msg(&mut buf, &msg).await.unwrap();
        assert_eq!(read_msg(&mut &buf[..], 1024).await.unwrap(), Some(msg));
        assert!(matches!(read_msg(&mut &buf[..], 4).await, Err(FrameError::TooLarge { .. })));
        assert!(read_msg(&mut &[][..], 1024).await.unwrap().is_none());
        for cut in 1..buf.len() {
            assert!(read_msg(&mut &buf[..cut], 1024).await.is_err());
        }
        let mut bad = buf.clone();
        bad[5] ^= 0xff;
        assert!(read_msg(&mut &bad[..], 1024).await.is_err());
    }
}
