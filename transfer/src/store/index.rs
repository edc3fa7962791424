//! Where chunks live: segment records in sled, loaded into an in-memory map at open.
//!
//! One sled record per run of chunks appended to a pack together (a group commit of up to
//! [`GROUP_BYTES`]), not one per chunk: sled costs ~10-30 us per record on this class of machine,
//! which at ~300k 4-KiB chunks per GiB was seconds of every transfer. The map (hash -> pack,
//! offset, length; ~50 bytes per chunk, ~15 MB per GiB stored) answers "which of these do I lack"
//! and "where is it" without touching sled; GC keeps it as small as what is stored.
//!
//! Record `s` + pack (u32 BE) + first offset (u64 BE) -> `[SEGMENT_VERSION]` then entries of
//! hash (32) + offset (u64 BE) + length (u32 BE). Entries of a segment are in its pack; a chunk
//! that goes bad or is collected is dropped by rewriting its segment.

use std::collections::HashMap;

use hotspot_protocol::manifest::ChunkHash;

use super::StoreError;

pub(crate) const SEGMENT_VERSION: u8 = 2;
/// Received bytes stored before their records are written (after one fdatasync of the pack).
pub(crate) const GROUP_BYTES: u64 = 32 * 1024 * 1024;
const ENTRY: usize = 32 + 8 + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub pack: u32,
    pub len: u32,
    pub offset: u64,
}

/// Chunks appended to one pack and not yet (or already) recorded as one segment.
#[derive(Debug, Default, Clone)]
pub(crate) struct Segment {
    pub pack: u32,
    pub start: u64,
    pub entries: Vec<(ChunkHash, u64, u32)>,
}

impl Segment {
    pub fn key(&self) -> [u8; 13] {
        segment_key(self.pack, self.start)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.entries.len() * ENTRY);
        out.push(SEGMENT_VERSION);
        for (h, offset, len) in &self.entries {
            out.extend_from_slice(&h.0);
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
        }
        out
    }

    pub fn decode(key: &[u8], value: &[u8]) -> Result<Segment, StoreError> {
        let bad = |detail: String| StoreError::Record { key: format!("{:02x?}", &key[..key.len().min(13)]), detail };
        if key.len() != 13 || key[0] != b's' {
            return Err(bad("not a segment key".into()));
        }
        let pack = u32::from_be_bytes(key[1..5].try_into().expect("4 bytes"));
        let start = u64::from_be_bytes(key[5..13].try_into().expect("8 bytes"));
        match value.first() {
            Some(&SEGMENT_VERSION) => {}
            other => return Err(bad(format!("segment record version {other:?}, this build reads {SEGMENT_VERSION}"))),
        }
        let body = &value[1..];
        if body.len() % ENTRY != 0 {
            return Err(bad(format!("segment body of {} bytes is not whole entries", body.len())));
        }
        let entries = body
            .chunks_exact(ENTRY)
            .map(|e| {
                let mut h = [0u8; 32];
                h.copy_from_slice(&e[..32]);
                (ChunkHash(h), u64::from_be_bytes(e[32..40].try_into().expect("8")), u32::from_be_bytes(e[40..44].try_into().expect("4")))
            })
            .collect();
        Ok(Segment { pack, start, entries })
    }
}

pub(crate) fn segment_key(pack: u32, start: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = b's';
    k[1..5].copy_from_slice(&pack.to_be_bytes());
    k[5..].copy_from_slice(&start.to_be_bytes());
    k
}

/// The in-memory view of every indexed chunk.
#[derive(Default)]
pub(crate) struct ChunkMap {
    pub at: HashMap<ChunkHash, Loc>,
}

impl ChunkMap {
    pub fn load(tree: &sled::Tree) -> Result<ChunkMap, StoreError> {
        let mut map = ChunkMap::default();
        for kv in tree.scan_prefix(b"s") {
            let (k, v) = kv?;
            map.add(&Segment::decode(&k, &v)?);
        }
        Ok(map)
    }

    pub fn add(&mut self, seg: &Segment) {
        self.at.reserve(seg.entries.len());
        for &(h, offset, len) in &seg.entries {
            self.at.insert(h, Loc { pack: seg.pack, len, offset });
        }
    }
}

/// Finds the segment record holding the chunk at `loc` (the last segment of its pack starting at
/// or before its offset).
pub(crate) fn segment_of(tree: &sled::Tree, loc: Loc) -> Result<Option<Segment>, StoreError> {
    let upto = segment_key(loc.pack, loc.offset);
    let from = segment_key(loc.pack, 0);
    match tree.range(from..=upto).next_back() {
        Some(kv) => {
            let (k, v) = kv?;
            Ok(Some(Segment::decode(&k, &v)?))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_garbage_is_refused() {
        let seg = Segment { pack: 7, start: 4096, entries: vec![(ChunkHash([1; 32]), 4096, 4096), (ChunkHash([2; 32]), 8192, 100)] };
        let back = Segment::decode(&seg.key(), &seg.encode()).unwrap();
        assert_eq!((back.pack, back.start, back.entries), (7, 4096, seg.entries.clone()));
        let mut bad = seg.encode();
        bad.pop();
        assert!(Segment::decode(&seg.key(), &bad).is_err());
        bad = seg.encode();
        bad[0] = 1;
        assert!(Segment::decode(&seg.key(), &bad).is_err());
        assert!(Segment::decode(b"sshort", &seg.encode()).is_err());
    }
}
