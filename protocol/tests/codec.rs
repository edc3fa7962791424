//! Property tests: every wire type round-trips, and no byte string makes a decoder panic or
//! accept something invalid.

use std::collections::BTreeSet;

use hotspot_protocol::advert::{Capacity, NodeAdvert, NodeId, NodeState, Resources, WorkloadSummary};
use hotspot_protocol::codec::{decode, encode, DecodeError, WireMessage, HEADER_LEN};
use hotspot_protocol::error::{ErrorCode, WireError};
use hotspot_protocol::handoff::{TargetPhase, TargetReport};
use hotspot_protocol::manifest::{ChunkHash, ChunkRef, Compression, ImageManifest, ManifestFile, TransferMessage};
use hotspot_protocol::migration::{MigrationId, MigrationMessage, MigrationMode, WorkloadSpec};
use hotspot_protocol::reservation::{DenyReason, ReservationId, ReservationMessage, ReserveRequest};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,20}"
}

fn resources() -> impl Strategy<Value = Resources> {
    (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(c, m, d)| Resources { cpu_millis: c, memory_bytes: m, disk_bytes: d })
}

fn advert() -> impl Strategy<Value = NodeAdvert> {
    (
        any::<[u8; 32]>(),
        name(),
        any::<u64>(),
        0.0f64..100.0,
        resources(),
        prop::collection::btree_set("[a-z0-9_]{1,12}", 0..20),
        prop::sample::select(vec![NodeState::Healthy, NodeState::Draining, NodeState::Leaving]),
        prop::collection::vec((name(), resources()), 0..5),
        prop::option::of("127\\.0\\.0\\.1:[0-9]{1,5}"),
    )
        .prop_map(|(id, name, seq, price, total, feats, state, wls, addr)| NodeAdvert {
            node: NodeId(id),
            name,
            seq,
            issued_at_ms: seq / 2,
            state,
            price_per_hour: price,
            capacity: Capacity { total, free: Resources { cpu_millis: total.cpu_millis / 2, memory_bytes: total.memory_bytes / 3, disk_bytes: 0 } },
            arch: "x86_64".into(),
            cpu_features: feats,
            zone: "us-east-1a".into(),
            workloads: wls.into_iter().map(|(name, needs)| WorkloadSummary { name, needs }).collect(),
            transfer_addr: addr,
            mesh_addrs: Vec::new(),
        })
}

fn manifest() -> impl Strategy<Value = ImageManifest> {
    prop::collection::vec(
        ("[a-z]{1,8}(-[0-9]{1,3})?\\.img", prop::collection::vec((any::<[u8; 32]>(), 1u32..1_000_000), 0..8)),
        0..6,
    )
    .prop_map(|files| ImageManifest {
        label: "dump".into(),
        files: files
            .into_iter()
            .map(|(path, chunks)| {
                let chunks: Vec<ChunkRef> = chunks.into_iter().map(|(h, len)| ChunkRef { hash: ChunkHash(h), len }).collect();
                ManifestFile { path, mode: 0o600, size: chunks.iter().map(|c| c.len as u64).sum(), chunks }
            })
            .collect(),
    })
}

fn wire_error() -> impl Strategy<Value = WireError> {
    (any::<u16>(), "[ -~]{0,40}").prop_map(|(c, m)| WireError { code: ErrorCode::from_u16(c), message: m })
}

fn reservation() -> impl Strategy<Value = ReservationMessage> {
    let id = any::<[u8; 16]>().prop_map(ReservationId);
    prop_oneof![
        (id.clone(), any::<[u8; 32]>(), name(), resources(), 1u64..1_000_000).prop_map(|(id, s, w, needs, ttl_ms)| {
            ReservationMessage::Request(ReserveRequest { id, source: NodeId(s), workload: w, needs, ttl_ms })
        }),
        (id.clone(), any::<u64>()).prop_map(|(id, e)| ReservationMessage::Granted { id, expires_at_ms: e }),
        (id.clone(), prop::sample::select(vec![DenyReason::NoCapacity, DenyReason::Draining, DenyReason::Leaving, DenyReason::Conflict]))
            .prop_map(|(id, reason)| ReservationMessage::Denied { id, reason }),
        id.clone().prop_map(|id| ReservationMessage::Release { id }),
        id.prop_map(|id| ReservationMessage::Released { id }),
    ]
}

fn transfer() -> impl Strategy<Value = TransferMessage> {
    let hash = any::<[u8; 32]>().prop_map(ChunkHash);
    prop_oneof![
        (any::<[u8; 16]>(), manifest()).prop_map(|(t, manifest)| TransferMessage::Offer { transfer_id: t, manifest }),
        prop::collection::vec(hash.clone(), 0..50).prop_map(|missing| TransferMessage::Want { missing }),
        (hash.clone(), 1u32..1_000_000, any::<bool>()).prop_map(|(hash, raw_len, z)| TransferMessage::Chunk {
            hash,
            raw_len,
            compressed_len: raw_len / 2,
            compression: if z { Compression::Zstd } else { Compression::None },
        }),
        (hash.clone(), "[ -~]{0,40}").prop_map(|(hash, reason)| TransferMessage::Rejected { hash, reason }),
        (any::<u32>(), any::<u64>()).prop_map(|(files, bytes)| TransferMessage::Complete { files, bytes }),
        wire_error().prop_map(TransferMessage::Error),
        (any::<[u8; 16]>(), 1u32..1_000_000, prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(transfer_id, raw_len, manifest)| TransferMessage::OfferCompressed { transfer_id, raw_len, manifest }),
        (prop::collection::vec((hash, 1u32..65_536), 1..20), any::<bool>()).prop_map(|(chunks, z)| {
            let chunks: Vec<ChunkRef> = chunks.into_iter().map(|(hash, len)| ChunkRef { hash, len }).collect();
            let raw: u32 = chunks.iter().map(|c| c.len).sum();
            TransferMessage::ChunkBatch {
                chunks,
                compressed_len: raw / 2,
                compression: if z { Compression::Zstd } else { Compression::None },
            }
        }),
    ]
}

fn migration() -> impl Strategy<Value = MigrationMessage> {
    let mid = any::<[u8; 16]>().prop_map(MigrationId);
    prop_oneof![
        (mid.clone(), any::<[u8; 16]>(), name(), resources(), prop::option::of("10\\.0\\.0\\.[0-9]{1,3}/24"), any::<bool>()).prop_map(
            |(m, r, name, needs, address, post)| MigrationMessage::Offer {
                migration: m,
                reservation: ReservationId(r),
                workload: WorkloadSpec { name, needs, address, volume: Some("/var/lib/x.img".into()) },
                mode: if post { MigrationMode::PostCopy } else { MigrationMode::PreCopy },
            }
        ),
        mid.clone().prop_map(|migration| MigrationMessage::Accept { migration }),
        (mid.clone(), wire_error()).prop_map(|(migration, error)| MigrationMessage::Refuse { migration, error }),
        (mid.clone(), any::<[u8; 16]>()).prop_map(|(migration, transfer_id)| MigrationMessage::Restore { migration, transfer_id }),
        (mid.clone(), any::<u32>()).prop_map(|(migration, pid)| MigrationMessage::Restored { migration, pid }),
        (mid.clone(), wire_error()).prop_map(|(migration, error)| MigrationMessage::RestoreFailed { migration, error }),
        mid.clone().prop_map(|migration| MigrationMessage::Commit { migration }),
        (mid.clone(), "[ -~]{0,40}").prop_map(|(migration, reason)| MigrationMessage::Abort { migration, reason }),
        mid.clone().prop_map(|migration| MigrationMessage::Status { migration }),
        mid.clone().prop_map(|migration| MigrationMessage::Ack { migration }),
        (mid, prop::sample::select(vec![
            TargetReport::Unknown,
            TargetReport::Phase(TargetPhase::Receiving),
            TargetReport::Phase(TargetPhase::Restoring),
            TargetReport::Phase(TargetPhase::Running),
            TargetReport::Phase(TargetPhase::Abandoned),
        ]))
        .prop_map(|(migration, report)| MigrationMessage::StatusReply { migration, report }),
    ]
}

fn round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(msg: &T) {
    let bytes = encode(msg).expect("encode");
    let back: T = decode(&bytes).expect("decode");
    assert_eq!(&back, msg);
}

/// Decoding arbitrary bytes (with and without a valid header) must return, never panic.
fn never_panics(body: &[u8]) {
    let mut framed = b"HM\x00\x01".to_vec();
    framed.extend_from_slice(body);
    for input in [body, &framed[..]] {
        let _ = decode::<NodeAdvert>(input);
        let _ = decode::<ReservationMessage>(input);
        let _ = decode::<TransferMessage>(input);
        let _ = decode::<MigrationMessage>(input);
        let _ = decode::<ImageManifest>(input);
    }
}

proptest! {
    #[test]
    fn adverts_round_trip(a in advert()) { round_trip(&a) }
    #[test]
    fn reservations_round_trip(m in reservation()) { round_trip(&m) }
    #[test]
    fn transfer_messages_round_trip(m in transfer()) { round_trip(&m) }
    #[test]
    fn migration_messages_round_trip(m in migration()) { round_trip(&m) }
    #[test]
    fn manifests_round_trip(m in manifest()) { round_trip(&m) }
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) { never_panics(&body) }

    /// Flip bytes of a valid encoding: the decoder returns an error or a valid message.
    #[test]
    fn mutated_encodings_never_panic(a in advert(), idx in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&a).unwrap();
        let i = idx.index(bytes.len());
        bytes[i] = byte;
        if let Ok(decoded) = decode::<NodeAdvert>(&bytes) {
            prop_assert!(decoded.validate().is_ok());
        }
    }

    #[test]
    fn error_codes_round_trip(n in any::<u16>()) {
        prop_assert_eq!(ErrorCode::from_u16(n).as_u16(), n);
    }
}

fn sample_advert() -> NodeAdvert {
    NodeAdvert {
        node: NodeId([7; 32]),
        name: "node1".into(),
        seq: 1,
        issued_at_ms: 0,
        state: NodeState::Healthy,
        price_per_hour: 0.1,
        capacity: Capacity::default(),
        arch: "x86_64".into(),
        cpu_features: BTreeSet::new(),
        zone: "a".into(),
        workloads: vec![],
        transfer_addr: None,
        mesh_addrs: Vec::new(),
    }
}

#[test]
fn typed_errors_for_bad_frames() {
    let good = encode(&sample_advert()).unwrap();
    assert_eq!(decode::<NodeAdvert>(&good[..3]), Err(DecodeError::Truncated { len: 3 }));
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert_eq!(decode::<NodeAdvert>(&bad_magic), Err(DecodeError::BadMagic));
    let mut newer = good.clone();
    newer[2..4].copy_from_slice(&999u16.to_be_bytes());
    assert!(matches!(decode::<NodeAdvert>(&newer), Err(DecodeError::UnsupportedVersion { got: 999, .. })));
    let mut truncated_body = good.clone();
    truncated_body.truncate(HEADER_LEN + 5);
    assert!(matches!(decode::<NodeAdvert>(&truncated_body), Err(DecodeError::Malformed(_))));
    let huge = vec![0u8; 17 * 1024];
    assert!(matches!(decode::<NodeAdvert>(&huge), Err(DecodeError::TooLarge { .. })));
    // A manifest-typed message is not an advert.
    let manifest = encode(&ImageManifest { label: "x".into(), files: vec![] }).unwrap();
    assert!(matches!(decode::<NodeAdvert>(&manifest), Err(DecodeError::Malformed(_))));
}

#[test]
fn invalid_values_are_rejected_after_decoding() {
    let mut a = sample_advert();
    a.price_per_hour = f64::NAN;
    // encode does not validate (a node only encodes what it built); decode always does.
    let bytes = encode(&a).unwrap();
    assert!(matches!(decode::<NodeAdvert>(&bytes), Err(DecodeError::Invalid(m)) if m.contains("price")));

    let mut a = sample_advert();
    a.mesh_addrs = (0..=NodeAdvert::MAX_MESH_ADDRS).map(|i| format!("/ip4/10.0.0.{i}/tcp/1")).collect();
    assert!(matches!(decode::<NodeAdvert>(&encode(&a).unwrap()), Err(DecodeError::Invalid(m)) if m.contains("mesh_addrs")));

    let mut a = sample_advert();
    a.capacity.free.memory_bytes = 10;
    assert!(matches!(decode::<NodeAdvert>(&encode(&a).unwrap()), Err(DecodeError::Invalid(m)) if m.contains("free capacity")));

    for path in ["../etc/passwd", "/abs", "a//b", "a/./b", ""] {
        let m = ImageManifest { label: "x".into(), files: vec![ManifestFile { path: path.into(), mode: 0, size: 0, chunks: vec![] }] };
        assert!(matches!(decode::<ImageManifest>(&encode(&m).unwrap()), Err(DecodeError::Invalid(_))), "{path} accepted");
    }
    let lying = ImageManifest {
        label: "x".into(),
        files: vec![ManifestFile { path: "pages-1.img".into(), mode: 0, size: 5, chunks: vec![ChunkRef { hash: ChunkHash([0; 32]), len: 4 }] }],
    };
    assert!(matches!(decode::<ImageManifest>(&encode(&lying).unwrap()), Err(DecodeError::Invalid(_))));
}

#[test]
fn declared_huge_lengths_do_not_allocate() {
    // A CBOR array header claiming 2^32 elements, then nothing: must fail fast, not allocate.
    let mut frame = b"HM\x00\x01".to_vec();
    frame.extend_from_slice(&[0x9b, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert!(decode::<TransferMessage>(&frame).is_err());
    let mut frame = b"HM\x00\x01".to_vec();
    frame.extend_from_slice(&[0x5b, 0, 0, 0, 1, 0, 0, 0, 0]); // byte string of 2^32
    assert!(decode::<ImageManifest>(&frame).is_err());
}

#[test]
fn adverts_of_nodes_without_mesh_addrs_still_decode() {
    let mut a = sample_advert();
    a.mesh_addrs = vec!["/ip4/10.0.0.1/udp/4001/quic-v1".into()];
    let serde_cbor::Value::Map(mut fields) = serde_cbor::value::to_value(&a).unwrap() else { panic!("an advert is a map") };
    assert!(fields.remove(&serde_cbor::Value::Text("mesh_addrs".into())).is_some());
    let older: NodeAdvert = serde_cbor::value::from_value(serde_cbor::Value::Map(fields)).unwrap();
    assert!(older.mesh_addrs.is_empty());
    assert_eq!(NodeAdvert { mesh_addrs: a.mesh_addrs.clone(), ..older }, a);
}
