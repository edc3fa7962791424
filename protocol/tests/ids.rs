//! Every id reads back from its text, and its text is lowercase hex of all its bytes.

use hotspot_protocol::advert::NodeId;
use hotspot_protocol::hex::ParseIdError;
use hotspot_protocol::manifest::ChunkHash;
use hotspot_protocol::migration::MigrationId;
use hotspot_protocol::reservation::ReservationId;
use proptest::prelude::*;

/// `id`'s text is `digits` lowercase hex digits and parses back to `id`.
fn round_trips<T>(id: T, digits: usize) -> Result<String, TestCaseError>
where
    T: std::fmt::Display + std::str::FromStr<Err = ParseIdError> + PartialEq + std::fmt::Debug,
{
    let text = id.to_string();
    prop_assert_eq!(text.len(), digits);
    prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{}", text);
    prop_assert_eq!(text.parse::<T>(), Ok(id));
    Ok(text)
}

proptest! {
    #[test]
    fn node_ids_round_trip(bytes in any::<[u8; 32]>()) {
        let text = round_trips(NodeId(bytes), 64)?;
        prop_assert_eq!(text.to_uppercase().parse::<NodeId>(), Ok(NodeId(bytes)));
        prop_assert_eq!(NodeId(bytes).short(), text[..12].to_string());
    }

    #[test]
    fn chunk_hashes_round_trip(bytes in any::<[u8; 32]>()) {
        round_trips(ChunkHash(bytes), 64)?;
    }

    #[test]
    fn migration_ids_round_trip(bytes in any::<[u8; 16]>()) {
        round_trips(MigrationId(bytes), 32)?;
    }

    #[test]
    fn reservation_ids_round_trip(bytes in any::<[u8; 16]>()) {
        round_trips(ReservationId(bytes), 32)?;
    }

    /// No text that is not the id's exact length in hex parses, and none panics.
    #[test]
    fn other_text_is_refused(text in "\\PC{0,70}") {
        let hex_of_len = |n: usize| text.len() == n && text.bytes().all(|b| b.is_ascii_hexdigit());
        prop_assert_eq!(text.parse::<MigrationId>().is_ok(), hex_of_len(32));
        prop_assert_eq!(text.parse::<NodeId>().is_ok(), hex_of_len(64));
    }
}

#[test]
fn parse_errors_name_the_id_and_the_problem() {
    assert_eq!("abc".parse::<NodeId>(), Err(ParseIdError::Length { kind: "node id", expected: 64, found: 3 }));
    assert_eq!("g".repeat(32).parse::<ReservationId>(), Err(ParseIdError::NotHex { kind: "reservation id", at: 0, found: 'g' }));
    assert_eq!("00".repeat(32).parse::<MigrationId>().unwrap_err().to_string(), "migration id must be 32 hex digits, not 64");
    assert_eq!(format!("{:?}", MigrationId([0xab; 16])), "MigrationId(abababababababab)", "Debug stays short");
    assert_eq!(format!("{:?}", NodeId([1; 32])), "NodeId(010101010101)");
}
