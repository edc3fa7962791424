//! Ids as text: lowercase hex of their bytes, for logs, tables, paths, labels and the control
//! API. The wire encoding (serde) of the ids is their bytes, not this.
//!
//! [`hex_id!`](crate::hex_id) gives an id newtype over a byte array `Display` (all bytes as
//! lowercase hex), `FromStr` (the same back, either case) and a short `Debug`.

use std::fmt;

/// Why a text is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    #[error("{kind} must be hex digits, but character {at} is {found:?}")]
    NotHex { kind: &'static str, at: usize, found: char },
    #[error("{kind} must be {expected} hex digits, not {found}")]
    Length { kind: &'static str, expected: usize, found: usize },
}

/// Writes `bytes` as lowercase hex.
pub fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// `2 * N` hex digits (either case) as `N` bytes; `kind` names the id in errors.
pub fn parse_hex<const N: usize>(kind: &'static str, s: &str) -> Result<[u8; N], ParseIdError> {
    if let Some((at, found)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(ParseIdError::NotHex { kind, at, found });
    }
    // All ASCII from here on: one byte per character.
    if s.len() != 2 * N {
        return Err(ParseIdError::Length { kind, expected: 2 * N, found: s.len() });
    }
    let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *byte = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Ok(out)
}

/// Implements `Display` (every byte as lowercase hex), `FromStr` (that text back, with a
/// [`ParseIdError`](crate::hex::ParseIdError) naming `$kind`) and `Debug` (`Name(first $debug
/// bytes as hex)`) for a newtype over a byte array: ids read the same in logs, tables and paths.
#[macro_export]
macro_rules! hex_id {
    ($ty:ident, $kind:literal, debug = $debug:expr) => {
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                $crate::hex::write_hex(f, &self.0)
            }
        }
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, concat!(stringify!($ty), "("))?;
                $crate::hex::write_hex(f, &self.0[..$debug])?;
                write!(f, ")")
            }
        }
        impl ::std::str::FromStr for $ty {
            type Err = $crate::hex::ParseIdError;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                $crate::hex::parse_hex($kind, s).map($ty)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_either_case_and_says_what_is_wrong() {
        assert_eq!(parse_hex::<2>("id", "0aFf"), Ok([0x0a, 0xff]));
        assert_eq!(parse_hex::<2>("id", "0af"), Err(ParseIdError::Length { kind: "id", expected: 4, found: 3 }));
        assert_eq!(parse_hex::<2>("id", ""), Err(ParseIdError::Length { kind: "id", expected: 4, found: 0 }));
        // `u8::from_str_radix` would take "+f" as 15.
        assert_eq!(parse_hex::<2>("id", "+f00"), Err(ParseIdError::NotHex { kind: "id", at: 0, found: '+' }));
        assert_eq!(parse_hex::<2>("id", "00é0"), Err(ParseIdError::NotHex { kind: "id", at: 2, found: 'é' }));
        assert_eq!(
            parse_hex::<16>("migration id", "xyz").unwrap_err().to_string(),
            "migration id must be hex digits, but character 0 is 'x'"
        );
        assert_eq!(parse_hex::<16>("migration id", "ab").unwrap_err().to_string(), "migration id must be 32 hex digits, not 2");
    }
}
