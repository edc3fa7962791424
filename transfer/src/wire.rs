//! The image-transfer protocol on QUIC streams: [`TransferMessage`]s framed by
//! [`crate::framing`], the frame limits of each stream kind, and the offer's compressed manifest.
//!
//! Streams of one transfer (ALPN [`hotspot_protocol::ids::TRANSFER_ALPN`]):
//! - one bidirectional control stream opened by the sender: `Offer` ->; <- `Want`*, `Rejected`*,
//!   then `Complete` or `Error`;
//! - several unidirectional data streams opened by the sender, each a sequence of `ChunkBatch`
//!   headers, each followed by its `compressed_len` payload bytes.

use hotspot_protocol::codec::{DecodeError, EncodeError, WireMessage};
use hotspot_protocol::error::{ErrorCode, WireError};
use hotspot_protocol::manifest::{ImageManifest, TransferMessage};

use crate::framing::FrameError;

/// Largest control message (an `Offer` carries the whole manifest).
pub const MAX_CONTROL_FRAME: usize = hotspot_protocol::Limit::MANIFEST.0;
/// Largest data-stream header (a `ChunkBatch` lists at most a few thousand chunks).
pub const MAX_DATA_HEADER: usize = 512 * 1024;

/// The id a sender gives one transfer (the `transfer_id` of its offer; random, so a resumed or
/// repeated transfer of the same image is a new transfer).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferId(pub [u8; 16]);

hotspot_protocol::hex_id!(TransferId, "transfer id", debug = 8);

impl TransferId {
    pub fn random() -> Result<TransferId, getrandom::Error> {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id)?;
        Ok(TransferId(id))
    }
}

/// An `OfferCompressed` carrying `manifest` (blocking: compresses a few MB).
pub fn compressed_offer(transfer_id: TransferId, manifest: &ImageManifest) -> Result<TransferMessage, FrameError> {
    let raw = serde_cbor::to_vec(manifest).map_err(|e| FrameError::Encode(EncodeError::Cbor(e)))?;
    let compressed = zstd::bulk::compress(&raw, 3)?;
    Ok(TransferMessage::OfferCompressed { transfer_id: transfer_id.0, raw_len: raw.len() as u32, manifest: compressed })
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
