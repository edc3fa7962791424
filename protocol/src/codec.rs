//! The versioned envelope every message travels in.
//!
//! Frame: `b"HM"`, protocol version (u16 big-endian), then the message as CBOR. Decoding checks
//! the size limit before parsing anything, rejects unknown versions before touching the body,
//! and validates the decoded value (sane numbers, bounded collections) before handing it out.
//! CBOR is decoded from a borrowed slice, so no allocation can exceed the (bounded) input.

use serde::{de::DeserializeOwned, Serialize};

use crate::ids::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

pub const MAGIC: [u8; 2] = *b"HM";
pub const HEADER_LEN: usize = 4;

/// Hard size limits per message kind, in bytes including the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub usize);

impl Limit {
    /// Gossiped adverts: small, they are flooded to every node.
    pub const ADVERT: Limit = Limit(16 * 1024);
    /// Control and reservation messages.
    pub const CONTROL: Limit = Limit(256 * 1024);
    /// Image manifests: ~40 bytes per chunk; 32 MiB covers > 800k chunks (> 12 GiB at 16 KiB).
    pub const MANIFEST: Limit = Limit(32 * 1024 * 1024);
}

/// A type that may travel in an envelope.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// The largest encoded size accepted for this type.
    const LIMIT: Limit;
    /// Semantic checks after decoding (ranges, lengths). Called by [`decode`].
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("message truncated: {len} bytes, need at least {HEADER_LEN}")]
    Truncated { len: usize },
    #[error("not a hotspot-mesh message (bad magic)")]
    BadMagic,
    #[error("unsupported protocol version {got} (this node speaks {min}..={max})")]
    UnsupportedVersion { got: u16, min: u16, max: u16 },
    #[error("malformed message body: {0}")]
    Malformed(String),
    #[error("invalid message: {0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding failed: {0}")]
    Cbor(#[from] serde_cbor::Error),
    #[error("encoded message of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
}

/// Encodes `msg` in a versioned envelope.
pub fn encode<T: WireMessage>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    serde_cbor::to_writer(&mut out, msg)?;
    if out.len() > T::LIMIT.0 {
        return Err(EncodeError::TooLarge { len: out.len(), limit: T::LIMIT.0 });
    }
    Ok(out)
}

/// Decodes and validates a message; never panics on any input.
pub fn decode<T: WireMessage>(bytes: &[u8]) -> Result<T, DecodeError> {
    let limit = T::LIMIT.0;
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge { len: bytes.len(), limit });
    }
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    if bytes[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16::from_be_bytes([bytes[2], bytes[3]]);
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(DecodeError::UnsupportedVersion {
            got: version,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        });
    }
    let msg: T = serde_cbor::from_slice(&bytes[HEADER_LEN..]).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    msg.validate().map_err(DecodeError::Invalid)?;
    Ok(msg)
}

/// Reads the version of an envelope without decoding its body.
pub fn peek_version(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= HEADER_LEN && bytes[..2] == MAGIC).then(|| u16::from_be_bytes([bytes[2], bytes[3]]))
}

/// Checks a string field: bounded length, no control characters.
pub(crate) fn check_str(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{field} is {} bytes, at most {max} allowed", value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} contains control characters"));
    }
    Ok(())
}

pub(crate) fn check_len<T>(field: &str, items: &[T], max: usize) -> Result<(), String> {
    if items.len() > max {
        return Err(format!("{field} has {} entries, at most {max} allowed", items.len()));
    }
    Ok(())
}
