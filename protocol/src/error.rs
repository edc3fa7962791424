//! Error codes that travel on the wire. Codes are explicit numbers so they never shift; unknown
//! codes from newer peers decode as [`ErrorCode::Unknown`] instead of failing.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    UnsupportedVersion,
    UnknownWorkload,
    UnknownReservation,
    NoCapacity,
    DiskFull,
    CorruptChunk,
    Busy,
    RestoreFailed,
    Internal,
    /// A code this build does not know (sent by a newer peer).
    Unknown(u16),
}

impl ErrorCode {
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 1,
            ErrorCode::Unauthorized => 2,
            ErrorCode::UnsupportedVersion => 3,
            ErrorCode::UnknownWorkload => 4,
            ErrorCode::UnknownReservation => 5,
            ErrorCode::NoCapacity => 6,
            ErrorCode::DiskFull => 7,
            ErrorCode::CorruptChunk => 8,
            ErrorCode::Busy => 9,
            ErrorCode::RestoreFailed => 10,
            ErrorCode::Internal => 11,
            ErrorCode::Unknown(n) => n,
        }
    }

    pub fn from_u16(n: u16) -> Self {
        match n {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::Unauthorized,
            3 => ErrorCode::UnsupportedVersion,
            4 => ErrorCode::UnknownWorkload,
            5 => ErrorCode::UnknownReservation,
            6 => ErrorCode::NoCapacity,
            7 => ErrorCode::DiskFull,
            8 => ErrorCode::CorruptChunk,
            9 => ErrorCode::Busy,
            10 => ErrorCode::RestoreFailed,
            11 => ErrorCode::Internal,
            n => ErrorCode::Unknown(n),
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.as_u16())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ErrorCode::from_u16(u16::deserialize(d)?))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Unknown(n) => write!(f, "unknown error code {n}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// An error as sent to a peer: a code plus a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}
