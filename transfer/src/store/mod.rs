//! The content-addressed chunk store: chunk bytes in append-only packs ([`pack`]), and a sled
//! index of versioned records (one tree, key prefixes):
//! - `s` + pack + offset -> a segment: the chunks (hash, offset, length) one group commit
//!   appended to that pack ([`index`]); loaded into an in-memory map at open;
//! - `m` + manifest id -> [`ManifestRecord`]: a manifest that pins its chunks (pending or complete);
//! - `v` -> store format version (2; a version-1 store is migrated at open).
//!
//! Invariants: a chunk is marked present (indexed) only after its bytes are in a pack, synced
//! when `StoreOptions::sync`; received chunks are indexed in groups of [`index::GROUP_BYTES`]
//! (one fdatasync and one sled record per group), so a crash loses at most the last group, which
//! is then simply missing and fetched again. Every read re-verifies the blake3 hash, and a chunk
//! that fails is dropped from the index so the next transfer fetches it again. A chunk is
//! referenced by the manifests that list it; [`Store::gc`] counts those references, drops
//! unreferenced chunks and reclaims pack space.

mod index;
mod pack;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use hotspot_protocol::manifest::{ChunkHash, ChunkRef, ImageManifest};
use serde::{Deserialize, Serialize};

use index::{ChunkMap, Segment, GROUP_BYTES};
pub(crate) use pack::is_disk_full;
use pack::{io_error, Packs};

const FORMAT_VERSION: u32 = 2;
const TREE: &str = "chunks/2";
const RECORD_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("disk full: {detail} (at {path}); free space or raise the store limit, nothing half-written was kept")]
    DiskFull { path: PathBuf, detail: String },
    #[error("chunk store I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("chunk store index: {0}")]
    Index(#[from] sled::Error),
    #[error("chunk store record {key}: {detail}")]
    Record { key: String, detail: String },
    #[error("chunk store at {path} has format version {found}; this build reads versions 1 (migrated) and {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("chunk {0} failed verification in the store (marked missing; it will be fetched again)")]
    Corrupt(ChunkHash),
    #[error("chunk {0} is not in the store")]
    Missing(ChunkHash),
    #[error("manifest {0} is not in the store")]
    UnknownManifest(ManifestId),
}

/// Content id of a manifest: blake3 of its canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ManifestId(pub [u8; 32]);

impl ManifestId {
    /// blake3 of the manifest's CBOR encoding, hashed as it is encoded (a 1 GiB image's
    /// manifest is ~14 MB; building it in memory first only to hash it cost that much memory).
    pub fn of(manifest: &ImageManifest) -> ManifestId {
        let mut hasher = blake3::Hasher::new();
        {
            // Buffered: CBOR writes a few bytes at a time, the hasher is fastest fed in bulk.
            // Writing into a hasher cannot fail, and a manifest always encodes.
            let mut buffered = std::io::BufWriter::with_capacity(64 * 1024, &mut hasher);
            let _ = serde_cbor::to_writer(&mut buffered, manifest);
            let _ = std::io::Write::flush(&mut buffered);
        }
        ManifestId(*hasher.finalize().as_bytes())
    }
}

hotspot_protocol::hex_id!(ManifestId, "manifest id", debug = 6);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ManifestRecord {
    v: u8,
    complete: bool,
    manifest: ImageManifest,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most bytes the packs may use; `None` means until the filesystem is full.
    pub max_bytes: Option<u64>,
    /// Size at which a new pack file is started.
    pub pack_bytes: u64,
    /// fdatasync packs before their chunks are marked present.
    pub sync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_bytes: None, pack_bytes: 256 * 1024 * 1024, sync: true }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub packs_removed: u64,
    pub packs_compacted: u64,
    pub bytes_freed: u64,
}

/// A manifest the store holds, as listed by [`Store::manifests`].
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub id: ManifestId,
    pub label: String,
    pub complete: bool,
    pub bytes: u64,
}

/// Pack appends and the segments not indexed yet (one lock: they change together).
struct Writes {
    packs: Packs,
    pending: Vec<Segment>,
    pending_bytes: u64,
}

/// Adds appended chunks to `segments`, extending the last one when contiguous; returns their bytes.
fn note_segments(segments: &mut Vec<Segment>, chunks: &[(ChunkHash, u32)], locs: &[(u32, u64)]) -> u64 {
    let mut bytes = 0;
    for (&(h, len), &(pack, offset)) in chunks.iter().zip(locs) {
        let extend = segments.last().is_some_and(|s| s.pack == pack && s.entries.last().is_some_and(|&(_, o, l)| o + l as u64 == offset));
        if !extend {
            segments.push(Segment { pack, start: offset, entries: Vec::new() });
        }
        segments.last_mut().expect("pushed above").entries.push((h, offset, len));
        bytes += len as u64;
    }
    bytes
}

pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    index: sled::Tree,
    writes: Mutex<Writes>,
    chunks: RwLock<ChunkMap>,
    /// Serialises manifest read-modify-write and GC.
    writer: Mutex<()>,
    opts: StoreOptions,
}

fn manifest_key(id: &ManifestId) -> [u8; 33] {
    let mut k = [b'm'; 33];
    k[1..].copy_from_slice(&id.0);
    k
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_cbor::from_slice(bytes).map_err(|e| StoreError::Record { key: format!("{:02x?}", &key[..key.len().min(7)]), detail: e.to_string() })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_cbor::to_vec(value).expect("store records always encode")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A located chunk, ready to be read (see [`Store::locate`]).
#[derive(Debug, Clone, Copy)]
pub struct Located {
    pub chunk: ChunkRef,
    pub(crate) pack: u32,
    pub(crate) offset: u64,
}

impl Store {
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let db = sled::Config::new().path(dir.join("index")).open()?;
        let index = db.open_tree(TREE)?;
        match index.get(b"v")? {
            Some(v) if v.len() == 4 => {
                let found = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                if found != FORMAT_VERSION {
                    return Err(StoreError::Version { path: dir.into(), found });
                }
            }
            Some(_) => return Err(StoreError::Version { path: dir.into(), found: 0 }),
            None => {
                if db.tree_names().iter().any(|n| n.as_ref() == migrate::V1_TREE.as_bytes()) {
                    migrate::from_v1(dir, &db, &index)?;
                }
                index.insert(b"v", &FORMAT_VERSION.to_be_bytes())?;
            }
        }
        let chunks = ChunkMap::load(&index)?;
        let packs = Packs::open(dir.join("packs"), opts.pack_bytes)?;
        tracing::debug!(dir = %dir.display(), chunks = chunks.at.len(), "chunk store open");
        let writes = Mutex::new(Writes { packs, pending: Vec::new(), pending_bytes: 0 });
        Ok(Store { dir: dir.into(), db, index, writes, chunks: RwLock::new(chunks), writer: Mutex::new(()), opts })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, ChunkMap> {
        self.chunks.read().unwrap_or_else(|e| e.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, ChunkMap> {
        self.chunks.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the chunk is stored and indexed.
    pub fn has(&self, h: &ChunkHash) -> Result<bool, StoreError> {
        Ok(self.map().at.contains_key(h))
    }

    /// Pins `manifest` (once per distinct manifest: re-registering is a no-op, which is what
    /// makes a resumed transfer cheap) and returns its id and the distinct chunks not present.
    pub fn register(&self, manifest: &ImageManifest) -> Result<(ManifestId, Vec<ChunkHash>), StoreError> {
        self.register_as(manifest, ManifestId::of(manifest))
    }

    /// [`Store::register`] with the manifest's id already computed (`ManifestId::of(manifest)`).
    pub fn register_as(&self, manifest: &ImageManifest, id: ManifestId) -> Result<(ManifestId, Vec<ChunkHash>), StoreError> {
        let _w = lock(&self.writer);
        if !self.index.contains_key(manifest_key(&id))? {
            let rec = ManifestRecord { v: RECORD_VERSION, complete: false, manifest: manifest.clone() };
            self.index.insert(manifest_key(&id), encode(&rec)).map_err(|e| self.sled_error(e))?;
        }
        let missing: Vec<ChunkHash> = {
            let map = self.map();
            let mut seen = HashSet::with_capacity(manifest.files.iter().map(|f| f.chunks.len()).sum());
            manifest.chunks().filter(|c| !map.at.contains_key(&c.hash) && seen.insert(c.hash)).map(|c| c.hash).collect()
        };
        // Room for every chunk about to arrive, allocated once: growing the index by doubling
        // while they arrive touches twice the memory (and rehashes every entry each time).
        self.map_mut().at.reserve(missing.len());
        Ok((id, missing))
    }

    /// Stores chunks whose bytes the caller has verified against their hashes. Chunks already
    /// present are skipped. On error (disk full) none of the batch is marked present. Chunks
    /// become present (indexed) when their group is committed: every [`index::GROUP_BYTES`],
    /// on [`Store::commit_pending`] and on [`Store::mark_complete`].
    pub fn put_verified(&self, chunks: &[(ChunkHash, &[u8])]) -> Result<(), StoreError> {
        let mut w = lock(&self.writes);
        let (mut meta, mut data) = (Vec::with_capacity(chunks.len()), Vec::with_capacity(chunks.len()));
        {
            let map = self.map();
            let mut seen = HashSet::with_capacity(chunks.len());
            for (h, bytes) in chunks {
                if !map.at.contains_key(h) && seen.insert(*h) {
                    meta.push((*h, bytes.len() as u32));
                    data.push(*bytes);
                }
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        let locs = w.packs.append(&data, self.opts.max_bytes, false)?;
        w.pending_bytes += note_segments(&mut w.pending, &meta, &locs);
        if w.pending_bytes >= GROUP_BYTES {
            self.commit_locked(&mut w)?;
        }
        Ok(())
    }

    /// Stores chunks the caller verified and wrote into `file` (at `path`: a large file of an
    /// image being rebuilt, on the store's filesystem) by indexing them where they lie: the file
    /// is hard-linked in as a pack on first use, its id kept in `pack`. Returns false when the
    /// file cannot become a pack (store limit, another filesystem); the caller then copies the
    /// chunks in with [`Store::put_verified`]. Indexed in groups like `put_verified`.
    pub fn put_in_place(&self, path: &Path, file: &File, pack: &OnceLock<Option<u32>>, chunks: &[(ChunkHash, u64, u32)]) -> Result<bool, StoreError> {
        let mut w = lock(&self.writes);
        // Linking and the first index entries happen under one lock, so GC never sees the new
        // pack empty and removes it.
        let id = match pack.get() {
            Some(id) => *id,
            None => {
                let id = w.packs.link(path, file, self.opts.max_bytes)?;
                let _ = pack.set(id);
                id
            }
        };
        let Some(id) = id else { return Ok(false) };
        let (mut meta, mut locs) = (Vec::with_capacity(chunks.len()), Vec::with_capacity(chunks.len()));
        {
            let map = self.map();
            let mut seen = HashSet::with_capacity(chunks.len());
            for &(h, offset, len) in chunks {
                if !map.at.contains_key(&h) && seen.insert(h) {
                    meta.push((h, len));
                    locs.push((id, offset));
                }
            }
        }
        w.pending_bytes += note_segments(&mut w.pending, &meta, &locs);
        if w.pending_bytes >= GROUP_BYTES {
            self.commit_locked(&mut w)?;
        }
        Ok(true)
    }

    /// Indexes every stored chunk not indexed yet (after syncing the pack when `sync`). Called
    /// by a receiver whose transfer fails, so a resumed transfer does not fetch them again.
    pub fn commit_pending(&self) -> Result<(), StoreError> {
        let mut w = lock(&self.writes);
        self.commit_locked(&mut w)
    }

    fn commit_locked(&self, w: &mut Writes) -> Result<(), StoreError> {
        if w.pending.is_empty() {
            return Ok(());
        }
        if self.opts.sync {
            // Rotated packs were synced when they were closed; the current one and linked image
            // files can lag.
            w.packs.sync()?;
            let current = w.packs.current();
            let linked: HashSet<u32> = w.pending.iter().map(|s| s.pack).filter(|&p| p != current).collect();
            for id in linked {
                w.packs.reader(id)?.sync_data().map_err(|e| io_error(&pack::pack_path(&self.dir, id), e))?;
            }
        }
        let pending = std::mem::take(&mut w.pending);
        w.pending_bytes = 0;
        let mut batch = sled::Batch::default();
        pending.iter().for_each(|s| batch.insert(&s.key()[..], s.encode()));
        self.index.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        let mut map = self.map_mut();
        pending.iter().for_each(|s| map.add(s));
        Ok(())
    }

    fn sled_error(&self, e: sled::Error) -> StoreError {
        match e {
            sled::Error::Io(io) => io_error(&self.dir.join("index"), io),
            other => StoreError::Index(other),
        }
    }

    /// Where each of `chunks` is stored (`None`: not present), for bulk reads.
    pub fn locate(&self, chunks: &[ChunkRef]) -> Vec<Option<Located>> {
        let map = self.map();
        chunks.iter().map(|c| map.at.get(&c.hash).filter(|l| l.len == c.len).map(|l| Located { chunk: *c, pack: l.pack, offset: l.offset })).collect()
    }

    /// Reads `buf.len()` bytes of pack `pack` at `offset` (a run of located chunks, unverified).
    pub(crate) fn read_pack(&self, pack: u32, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let file: Arc<File> = lock(&self.writes).packs.reader(pack)?;
        file.read_exact_at(buf, offset).map_err(|e| io_error(&pack::pack_path(&self.dir, pack), e))
    }

    /// Reads and verifies one chunk. A chunk whose bytes no longer match is marked absent.
    pub fn read(&self, c: &ChunkRef) -> Result<Vec<u8>, StoreError> {
        let at = self.locate(std::slice::from_ref(c))[0].ok_or(StoreError::Missing(c.hash))?;
        let mut bytes = vec![0u8; c.len as usize];
        self.read_pack(at.pack, at.offset, &mut bytes)?;
        if blake3::hash(&bytes).as_bytes() == &c.hash.0 {
            Ok(bytes)
        } else {
            self.mark_corrupt(&c.hash)?;
            Err(StoreError::Corrupt(c.hash))
        }
    }

    /// Drops a chunk whose stored bytes failed verification from the index (it will be fetched
    /// again by the next transfer that needs it).
    pub fn mark_corrupt(&self, h: &ChunkHash) -> Result<(), StoreError> {
        tracing::warn!(chunk = %h, "stored chunk failed verification; marking it missing");
        let _w = lock(&self.writes);
        let Some(loc) = self.map_mut().at.remove(h) else { return Ok(()) };
        if let Some(mut seg) = index::segment_of(&self.index, loc)? {
            seg.entries.retain(|(e, _, _)| e != h);
            if seg.entries.is_empty() {
                self.index.remove(seg.key())?;
            } else {
                self.index.insert(seg.key(), seg.encode())?;
            }
        }
        Ok(())
    }

    /// Records that a manifest's image was rebuilt completely (its chunks indexed and synced first).
    pub fn mark_complete(&self, id: &ManifestId) -> Result<(), StoreError> {
        {
            let mut w = lock(&self.writes);
            self.commit_locked(&mut w)?;
            w.packs.sync()?;
        }
        let _w = lock(&self.writer);
        let key = manifest_key(id);
        if let Some(v) = self.index.get(key)? {
            let mut rec: ManifestRecord = decode(&key, &v)?;
            rec.complete = true;
            self.index.insert(key, encode(&rec))?;
        }
        self.db.flush()?;
        Ok(())
    }

    pub fn manifest(&self, id: &ManifestId) -> Result<Option<ImageManifest>, StoreError> {
        let key = manifest_key(id);
        Ok(self.index.get(key)?.map(|v| decode::<ManifestRecord>(&key, &v)).transpose()?.map(|r| r.manifest))
    }

    fn manifest_records(&self) -> impl Iterator<Item = Result<(ManifestId, ManifestRecord), StoreError>> + '_ {
        self.index.scan_prefix(b"m").map(|kv| {
            let (k, v) = kv?;
            let mut id = [0u8; 32];
            id.copy_from_slice(&k[1..]);
            Ok((ManifestId(id), decode(&k, &v)?))
        })
    }

    pub fn manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
        self.manifest_records()
            .map(|r| r.map(|(id, rec)| StoredManifest { id, label: rec.manifest.label.clone(), complete: rec.complete, bytes: rec.manifest.total_bytes() }))
            .collect()
    }

    /// Unpins a manifest: its chunks lose that reference (GC reclaims the unreferenced).
    pub fn release(&self, id: &ManifestId) -> Result<bool, StoreError> {
        let _w = lock(&self.writer);
        Ok(self.index.remove(manifest_key(id))?.is_some())
    }

    /// Bytes used by pack files.
    pub fn disk_bytes(&self) -> u64 {
        lock(&self.writes).packs.total_bytes
    }

    /// Re-reads every present chunk and checks its hash: (chunks checked, chunks corrupt).
    pub fn verify_all(&self) -> Result<(u64, u64), StoreError> {
        let refs: Vec<ChunkRef> = self.map().at.iter().map(|(h, l)| ChunkRef { hash: *h, len: l.len }).collect();
        let mut corrupt = 0;
        for c in &refs {
            match self.read(c) {
                Ok(_) => {}
                Err(StoreError::Corrupt(_)) => corrupt += 1,
                Err(e) => return Err(e),
            }
        }
        Ok((refs.len() as u64, corrupt))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort: index what was stored so a restarted receiver does not fetch it again.
        if let Err(e) = self.commit_pending() {
            tracing::warn!(error = %e, "could not index the last stored chunks");
        }
    }
}

mod gc;
mod migrate;

#[cfg(test)]
mod tests;
