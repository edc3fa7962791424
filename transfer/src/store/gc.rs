//! Garbage collection: a chunk is referenced by the manifests that list it; unreferenced
//! chunks leave the index, packs with no live chunk are deleted and mostly dead packs are
//! rewritten into the current pack.

use std::collections::{HashMap, HashSet};

use super::index::{ChunkMap, Segment};
use super::pack::{self, io_error, Packs};
use super::{lock, note_segments, GcReport, Store, StoreError};

impl Store {
    /// Drops chunks no manifest references, deletes packs with no live chunk and rewrites packs
    /// that are mostly dead into the current pack.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let _w = lock(&self.writer);
        let mut w = lock(&self.writes);
        self.commit_locked(&mut w)?;
        let mut live = HashSet::new();
        for r in self.manifest_records() {
            live.extend(r?.1.manifest.chunks().map(|c| c.hash));
        }
        // Drop dead entries segment by segment; tally what stays per pack.
        let mut batch = sled::Batch::default();
        let mut by_pack: HashMap<u32, Vec<Segment>> = HashMap::new();
        let mut map = self.map_mut();
        for kv in self.index.scan_prefix(b"s") {
            let (k, v) = kv?;
            let mut seg = Segment::decode(&k, &v)?;
            let before = seg.entries.len();
            seg.entries.retain(|(h, _, _)| {
                let keep = live.contains(h);
                if !keep {
                    map.at.remove(h);
                }
                keep
            });
            report.chunks_removed += (before - seg.entries.len()) as u64;
            if seg.entries.is_empty() {
                batch.remove(k);
            } else if seg.entries.len() != before {
                batch.insert(k, seg.encode());
            }
            by_pack.entry(seg.pack).or_default().push(seg);
        }
        self.index.apply_batch(batch)?;
        w.packs.rotate()?;
        for (id, len) in w.packs.list()? {
            let segs = by_pack.remove(&id).unwrap_or_default();
            let used: u64 = segs.iter().flat_map(|s| &s.entries).map(|e| e.2 as u64).sum();
            // A pack an image still links frees nothing when compacted: leave it be.
            if id == w.packs.current() || used * 2 >= len || (used > 0 && w.packs.shared(id)) {
                continue;
            }
            if used > 0 {
                self.compact(&mut w.packs, &mut map, id, segs)?;
                report.packs_compacted += 1;
            } else {
                report.packs_removed += 1;
            }
            report.bytes_freed += w.packs.remove(id)?;
        }
        Ok(report)
    }

    /// Copies the live chunks of pack `id` into the current pack and re-indexes them there.
    fn compact(&self, packs: &mut Packs, map: &mut ChunkMap, id: u32, segs: Vec<Segment>) -> Result<(), StoreError> {
        let file = packs.reader(id)?;
        let mut keep = Vec::new();
        let mut batch = sled::Batch::default();
        for seg in &segs {
            batch.remove(&seg.key()[..]);
            for &(h, offset, len) in &seg.entries {
                let bytes = pack::read_at(&file, offset, len).map_err(|e| io_error(&pack::pack_path(&self.dir, id), e))?;
                // A corrupt chunk is not copied; it becomes missing and is fetched again.
                if blake3::hash(&bytes).as_bytes() == &h.0 {
                    keep.push((h, bytes));
                } else {
                    map.at.remove(&h);
                }
            }
        }
        let data: Vec<&[u8]> = keep.iter().map(|(_, b)| &b[..]).collect();
        let locs = packs.append(&data, None, true)?;
        let mut moved = Vec::new();
        note_segments(&mut moved, &keep.iter().map(|(h, b)| (*h, b.len() as u32)).collect::<Vec<_>>(), &locs);
        for seg in &moved {
            batch.insert(&seg.key()[..], seg.encode());
            map.add(seg);
        }
        self.index.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

}
