//! Version 1 of the store index (tree `chunks/1`: one CBOR record per chunk with a reference
//! count) is converted to version 2 (segment records) the first time a new build opens it.

use std::collections::HashMap;
use std::path::Path;

use hotspot_protocol::manifest::ChunkHash;
use serde::Deserialize;

use super::index::Segment;
use super::{decode, StoreError};

pub(super) const V1_TREE: &str = "chunks/1";

#[derive(Deserialize)]
struct ChunkRecordV1 {
    len: u32,
    /// (pack, offset) when the bytes are present.
    loc: Option<(u32, u64)>,
}

/// Copies manifests and the locations of present chunks from the v1 tree into `into`, then
/// drops the v1 tree. Reference counts are not copied: v2 derives them from the manifests.
pub(super) fn from_v1(dir: &Path, db: &sled::Db, into: &sled::Tree) -> Result<(), StoreError> {
    let old = db.open_tree(V1_TREE)?;
    match old.get(b"v")? {
        Some(v) if v.as_ref() == 1u32.to_be_bytes() => {}
        Some(v) => {
            let found = v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0);
            return Err(StoreError::Version { path: dir.into(), found });
        }
        None => {}
    }
    let mut by_pack: HashMap<u32, Vec<(ChunkHash, u64, u32)>> = HashMap::new();
    let mut batch = sled::Batch::default();
    let (mut chunks, mut manifests) = (0u64, 0u64);
    for kv in old.iter() {
        let (k, v) = kv?;
        match k.first() {
            Some(b'c') if k.len() == 33 => {
                let rec: ChunkRecordV1 = decode(&k, &v)?;
                if let Some((pack, offset)) = rec.loc {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(&k[1..]);
                    by_pack.entry(pack).or_default().push((ChunkHash(h), offset, rec.len));
                    chunks += 1;
                }
            }
            Some(b'm') => {
                batch.insert(k, v);
                manifests += 1;
            }
            _ => {}
        }
    }
    for (pack, mut entries) in by_pack {
        entries.sort_by_key(|e| e.1);
        let seg = Segment { pack, start: entries[0].1, entries };
        batch.insert(&seg.key()[..], seg.encode());
    }
    into.apply_batch(batch)?;
    into.insert(b"v", &super::FORMAT_VERSION.to_be_bytes())?;
    db.flush()?;
    db.drop_tree(V1_TREE)?;
    tracing::info!(dir = %dir.display(), chunks, manifests, "migrated chunk store index from version 1 to 2");
    Ok(())
}
