//! Length-prefixed framing of wire messages on byte streams (QUIC streams): a u32 big-endian
//! length, then the message in its versioned envelope ([`hotspot_protocol::codec`], CBOR). The
//! length is checked against the caller's limit before anything is allocated, so a hostile peer
//! cannot make us buffer more than that.
//!
//! Generic over the message type: image transfer streams carry `TransferMessage`s
//! ([`crate::wire`]), migration control streams `MigrationMessage`s.

use hotspot_protocol::codec::{decode, encode, DecodeError, EncodeError, WireMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

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

/// Appends `msg`, framed, to `out` (for writers that hand whole buffers to the stream).
pub fn frame_into<T: WireMessage>(out: &mut Vec<u8>, msg: &T) -> Result<(), FrameError> {
    let body = encode(msg)?;
    out.reserve(LEN_PREFIX + body.len());
    // `encode` refuses anything over the type's limit, which is far below 4 GiB.
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Writes `msg`, framed, with one write.
pub async fn write_frame<W: AsyncWrite + Unpin, T: WireMessage>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let mut frame = Vec::new();
    frame_into(&mut frame, msg)?;
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one message of at most `max_len` bytes (envelope included); `Ok(None)` on a clean end
/// of stream before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin, T: WireMessage>(r: &mut R, max_len: usize) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; LEN_PREFIX];
    // Only an end of stream exactly between frames is clean; a torn length is an error.
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..]).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max_len {
        return Err(FrameError::TooLarge { len, limit: max_len });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(decode(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotspot_protocol::manifest::TransferMessage;
    use hotspot_protocol::migration::{MigrationId, MigrationMessage};

    #[tokio::test]
    async fn frames_round_trip_and_garbage_is_refused() {
        let msg = TransferMessage::Want { missing: vec![] };
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).await.unwrap();
        assert_eq!(read_frame(&mut &buf[..], 1024).await.unwrap(), Some(msg));
        assert!(matches!(read_frame::<_, TransferMessage>(&mut &buf[..], 4).await, Err(FrameError::TooLarge { .. })));
        assert!(read_frame::<_, TransferMessage>(&mut &[][..], 1024).await.unwrap().is_none());
        for cut in 1..buf.len() {
            assert!(read_frame::<_, TransferMessage>(&mut &buf[..cut], 1024).await.is_err());
        }
        let mut bad = buf.clone();
        bad[5] ^= 0xff;
        assert!(read_frame::<_, TransferMessage>(&mut &bad[..], 1024).await.is_err());
    }

    #[tokio::test]
    async fn any_wire_message_type_and_the_sync_writer_agree() {
        let msg = MigrationMessage::Commit { migration: MigrationId([7; 16]) };
        let (mut written, mut framed) = (Vec::new(), Vec::new());
        write_frame(&mut written, &msg).await.unwrap();
        frame_into(&mut framed, &msg).unwrap();
        assert_eq!(written, framed);
        assert_eq!(&framed[LEN_PREFIX..], &encode(&msg).unwrap()[..], "the envelope follows the length");
        // Two frames back to back, then a clean end.
        framed.extend(written);
        let mut r = &framed[..];
        for _ in 0..2 {
            assert_eq!(read_frame::<_, MigrationMessage>(&mut r, 1024).await.unwrap(), Some(msg.clone()));
        }
        assert_eq!(read_frame::<_, MigrationMessage>(&mut r, 1024).await.unwrap(), None);
        // A message of another type does not decode as this one.
        let mut other = Vec::new();
        frame_into(&mut other, &TransferMessage::Want { missing: vec![] }).unwrap();
        assert!(matches!(read_frame::<_, MigrationMessage>(&mut &other[..], 1024).await, Err(FrameError::Decode(_))));
    }
}
