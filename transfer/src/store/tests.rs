use hotspot_protocol::manifest::{ChunkHash, ChunkRef, ImageManifest, ManifestFile};
use serde::Serialize;

use super::*;

fn chunk(i: u32) -> (ChunkHash, Vec<u8>) {
    let data: Vec<u8> = (0..4096u32).map(|b| (b.wrapping_mul(i + 7) >> 3) as u8).collect();
    (ChunkHash(*blake3::hash(&data).as_bytes()), data)
}

fn manifest(chunks: &[(ChunkHash, Vec<u8>)]) -> ImageManifest {
    let refs: Vec<ChunkRef> = chunks.iter().map(|(h, d)| ChunkRef { hash: *h, len: d.len() as u32 }).collect();
    ImageManifest { label: "t".into(), files: vec![ManifestFile { path: "pages-1.img".into(), mode: 0o600, size: refs.iter().map(|c| c.len as u64).sum(), chunks: refs }] }
}

fn opts() -> StoreOptions {
    StoreOptions { sync: false, ..Default::default() }
}

/// Opens the store, retrying while sled's flusher of a just-dropped handle still holds its lock.
fn reopen(dir: &std::path::Path) -> Result<Store, StoreError> {
    for _ in 0..50 {
        match Store::open(dir, opts()) {
            Err(StoreError::Index(_)) => std::thread::sleep(std::time::Duration::from_millis(100)),
            other => return other,
        }
    }
    Store::open(dir, opts())
}

#[test]
fn stored_chunks_are_present_only_once_their_group_is_committed_and_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (0..10).map(chunk).collect();
    let m = manifest(&chunks);
    {
        let store = Store::open(tmp.path(), opts()).unwrap();
        let (_, missing) = store.register(&m).unwrap();
        assert_eq!(missing.len(), 10);
        let batch: Vec<(ChunkHash, &[u8])> = chunks[..4].iter().map(|(h, d)| (*h, &d[..])).collect();
        store.put_verified(&batch).unwrap();
        assert!(!store.has(&chunks[0].0).unwrap(), "not indexed before its group commits");
        store.commit_pending().unwrap();
        assert!(store.has(&chunks[0].0).unwrap());
        assert_eq!(store.register(&m).unwrap().1.len(), 6);
        let more: Vec<(ChunkHash, &[u8])> = chunks[4..6].iter().map(|(h, d)| (*h, &d[..])).collect();
        store.put_verified(&more).unwrap();
        // Dropped without an explicit commit: the store indexes what it wrote on the way out.
    }
    let store = reopen(tmp.path()).unwrap();
    assert_eq!(store.register(&m).unwrap().1, chunks[6..].iter().map(|c| c.0).collect::<Vec<_>>());
    for (h, d) in &chunks[..6] {
        assert_eq!(&store.read(&ChunkRef { hash: *h, len: 4096 }).unwrap(), d);
    }
}

#[test]
fn corrupt_chunk_inside_a_segment_is_dropped_and_its_neighbours_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (0..3).map(chunk).collect();
    let store = Store::open(tmp.path(), opts()).unwrap();
    store.register(&manifest(&chunks)).unwrap();
    store.put_verified(&chunks.iter().map(|(h, d)| (*h, &d[..])).collect::<Vec<_>>()).unwrap();
    store.commit_pending().unwrap();
    drop(store);
    let pack = std::fs::read_dir(tmp.path().join("packs")).unwrap().map(|e| e.unwrap().path()).find(|p| p.metadata().unwrap().len() > 0).unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[4096 + 10] ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    let store = reopen(tmp.path()).unwrap();
    assert!(matches!(store.read(&ChunkRef { hash: chunks[1].0, len: 4096 }), Err(StoreError::Corrupt(_))));
    drop(store);
    let store = reopen(tmp.path()).unwrap();
    assert!(!store.has(&chunks[1].0).unwrap());
    assert!(store.has(&chunks[0].0).unwrap() && store.has(&chunks[2].0).unwrap());
    assert_eq!(store.verify_all().unwrap(), (2, 0));
}

#[derive(Serialize)]
struct ChunkRecordV1 {
    v: u8,
    len: u32,
    refs: u32,
    loc: Option<(u32, u64)>,
}

#[test]
fn version_1_store_is_migrated_and_newer_versions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (0..3).map(chunk).collect();
    let m = manifest(&chunks);
    let id = ManifestId::of(&m);
    {
        // A version-1 store: CBOR chunk records in tree "chunks/1", chunk 0 and 1 present in pack 1.
        let db = sled::Config::new().path(tmp.path().join("index")).open().unwrap();
        let old = db.open_tree("chunks/1").unwrap();
        old.insert(b"v", &1u32.to_be_bytes()).unwrap();
        for (i, (h, _)) in chunks.iter().enumerate() {
            let loc = (i < 2).then_some((1u32, i as u64 * 4096));
            let mut key = vec![b'c'];
            key.extend_from_slice(&h.0);
            old.insert(key, serde_cbor::to_vec(&ChunkRecordV1 { v: 1, len: 4096, refs: 1, loc }).unwrap()).unwrap();
        }
        let rec = ManifestRecord { v: 1, complete: false, manifest: m.clone() };
        old.insert(manifest_key(&id), serde_cbor::to_vec(&rec).unwrap()).unwrap();
        db.flush().unwrap();
        std::fs::create_dir_all(tmp.path().join("packs")).unwrap();
        std::fs::write(tmp.path().join("packs/00000001.pack"), [&chunks[0].1[..], &chunks[1].1[..]].concat()).unwrap();
    }
    let store = reopen(tmp.path()).unwrap();
    assert_eq!(store.manifest(&id).unwrap(), Some(m.clone()));
    assert_eq!(store.register(&m).unwrap().1, vec![chunks[2].0]);
    assert_eq!(store.read(&ChunkRef { hash: chunks[1].0, len: 4096 }).unwrap(), chunks[1].1);
    let index = store.index.clone();
    drop(store);
    index.insert(b"v", &9u32.to_be_bytes()).unwrap();
    index.flush().unwrap();
    drop(index);
    let err = reopen(tmp.path()).err().expect("version 9 is refused");
    assert!(matches!(err, StoreError::Version { found: 9, .. }), "{err}");
}
