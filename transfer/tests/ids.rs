//! The transfer layer's ids read back from their text (lowercase hex of all their bytes).

use hotspot_protocol::hex::ParseIdError;
use hotspot_transfer::{ManifestId, TransferId};
use proptest::prelude::*;

proptest! {
    #[test]
    fn manifest_ids_round_trip(bytes in any::<[u8; 32]>()) {
        let text = ManifestId(bytes).to_string();
        prop_assert_eq!(&text, &bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
        prop_assert_eq!(text.parse::<ManifestId>(), Ok(ManifestId(bytes)));
    }

    #[test]
    fn transfer_ids_round_trip(bytes in any::<[u8; 16]>()) {
        let text = TransferId(bytes).to_string();
        prop_assert_eq!(text.len(), 32);
        prop_assert_eq!(text.parse::<TransferId>(), Ok(TransferId(bytes)));
    }
}

#[test]
fn bad_text_and_random_ids() {
    assert_eq!("12".parse::<ManifestId>(), Err(ParseIdError::Length { kind: "manifest id", expected: 64, found: 2 }));
    assert!(matches!("z".repeat(32).parse::<TransferId>(), Err(ParseIdError::NotHex { kind: "transfer id", .. })));
    assert_ne!(TransferId::random().unwrap(), TransferId::random().unwrap());
    assert_eq!(format!("{:?}", ManifestId([0xcd; 32])), "ManifestId(cdcdcdcdcdcd)");
}
