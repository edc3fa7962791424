//! The content-addressed chunk store: chunk bytes in append-only packs ([`pack`]), and a sled
//! index of versioned CBOR records (one tree, key prefixes, so one batch updates both kinds
//! atomically):
//! - `c` + blake3 hash -> [`ChunkRecord`]: size, reference count, location if present;
//! - `m` + manifest id -> [`ManifestRecord`]: a manifest that pins its chunks (pending or complete);
//! - `v` -> store format version.
//!
//! Invariants: a chunk is marked present only after its bytes are in a pack (synced when
//! `StoreOptions::sync`); every read re-verifies the blake3 hash, and a chunk that fails is
//! marked absent so the next transfer fetches it again. Reference counts count the manifests
//! that use a chunk; [`Store::gc`] drops unreferenced chunks and reclaims pack space.

mod pack;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hotspot_protocol::manifest::{ChunkHash, ChunkRef, ImageManifest};
use serde::{Deserialize, Serialize};

pub(crate) use pack::is_disk_full;
use pack::{io_error, Packs};

const FORMAT_VERSION: u32 = 1;
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
    #[error("chunk store at {path} has format version {found}; this build reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("chunk {0} failed verification in the store (marked missing; it will be fetched again)")]
    Corrupt(ChunkHash),
    #[error("chunk {0} is not in the store")]
    Missing(ChunkHash),
}

/// Content id of a manifest: blake3 of its canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ManifestId(pub [u8; 32]);

impl ManifestId {
    pub fn of(manifest: &ImageManifest) -> ManifestId {
        let bytes = serde_cbor::to_vec(manifest).unwrap_or_default();
        ManifestId(*blake3::hash(&bytes).as_bytes())
    }
}

impl fmt::Display for ManifestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ManifestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManifestId({})", &self.to_string()[..12])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChunkRecord {
    v: u8,
    len: u32,
    refs: u32,
    /// (pack, offset) when the bytes are present.
    loc: Option<(u32, u64)>,
}

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

pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    index: sled::Tree,
    packs: Mutex<Packs>,
    /// Serialises read-modify-write of index records (sled itself is thread-safe).
    writer: Mutex<()>,
    opts: StoreOptions,
}

fn chunk_key(h: &ChunkHash) -> [u8; 33] {
    let mut k = [b'c'; 33];
    k[1..].copy_from_slice(&h.0);
    k
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

impl Store {
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let db = sled::Config::new().path(dir.join("index")).open()?;
        let index = db.open_tree("chunks/1")?;
        match index.get(b"v")? {
            Some(v) if v.len() == 4 => {
                let found = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                if found != FORMAT_VERSION {
                    return Err(StoreError::Version { path: dir.into(), found });
                }
            }
            Some(_) => return Err(StoreError::Version { path: dir.into(), found: 0 }),
            None => {
                index.insert(b"v", &FORMAT_VERSION.to_be_bytes())?;
            }
        }
        let packs = Packs::open(dir.join("packs"), opts.pack_bytes)?;
        Ok(Store { dir: dir.into(), db, index, packs: Mutex::new(packs), writer: Mutex::new(()), opts })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn chunk(&self, h: &ChunkHash) -> Result<Option<ChunkRecord>, StoreError> {
        let key = chunk_key(h);
        self.index.get(key)?.map(|v| decode(&key, &v)).transpose()
    }

    pub fn has(&self, h: &ChunkHash) -> Result<bool, StoreError> {
        Ok(self.chunk(h)?.is_some_and(|r| r.loc.is_some()))
    }

    /// Pins `manifest` (once per distinct manifest: re-registering is a no-op, which is what
    /// makes a resumed transfer cheap) and returns its id and the distinct chunks not present.
    pub fn register(&self, manifest: &ImageManifest) -> Result<(ManifestId, Vec<ChunkHash>), StoreError> {
        let id = ManifestId::of(manifest);
        let _w = lock(&self.writer);
        let known = self.index.contains_key(manifest_key(&id))?;
        let mut seen = HashSet::new();
        let mut missing = Vec::new();
        let mut batch = sled::Batch::default();
        for c in manifest.chunks() {
            if !seen.insert(c.hash) {
                continue;
            }
            let mut rec = self.chunk(&c.hash)?.unwrap_or(ChunkRecord { v: RECORD_VERSION, len: c.len, refs: 0, loc: None });
            if rec.loc.is_none() {
                missing.push(c.hash);
            }
            if !known {
                rec.refs = rec.refs.saturating_add(1);
                batch.insert(&chunk_key(&c.hash)[..], encode(&rec));
            }
        }
        if !known {
            let rec = ManifestRecord { v: RECORD_VERSION, complete: false, manifest: manifest.clone() };
            batch.insert(&manifest_key(&id)[..], encode(&rec));
            self.index.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        }
        Ok((id, missing))
    }

    /// Stores chunks whose bytes the caller has verified against their hashes. Chunks already
    /// present are skipped. On error (disk full) none of the batch is marked present.
    pub fn put_verified(&self, chunks: &[(ChunkHash, &[u8])]) -> Result<(), StoreError> {
        let _w = lock(&self.writer);
        let mut records = Vec::with_capacity(chunks.len());
        let mut data = Vec::with_capacity(chunks.len());
        let mut seen = HashSet::new();
        for (h, bytes) in chunks {
            let rec = self.chunk(h)?;
            if rec.as_ref().is_some_and(|r| r.loc.is_some()) || !seen.insert(*h) {
                continue;
            }
            let rec = rec.unwrap_or(ChunkRecord { v: RECORD_VERSION, len: bytes.len() as u32, refs: 0, loc: None });
            records.push((*h, rec));
            data.push(*bytes);
        }
        if data.is_empty() {
            return Ok(());
        }
        let locs = lock(&self.packs).append(&data, self.opts.max_bytes, self.opts.sync)?;
        let mut batch = sled::Batch::default();
        for ((h, mut rec), loc) in records.into_iter().zip(locs) {
            rec.loc = Some(loc);
            batch.insert(&chunk_key(&h)[..], encode(&rec));
        }
        self.index.apply_batch(batch).map_err(|e| self.sled_error(e))
    }

    fn sled_error(&self, e: sled::Error) -> StoreError {
        match e {
            sled::Error::Io(io) => io_error(&self.dir.join("index"), io),
            other => StoreError::Index(other),
        }
    }

    /// Reads and verifies one chunk. A chunk whose bytes no longer match is marked absent.
    pub fn read(&self, c: &ChunkRef) -> Result<Vec<u8>, StoreError> {
        let rec = self.chunk(&c.hash)?.ok_or(StoreError::Missing(c.hash))?;
        let (pack, offset) = rec.loc.ok_or(StoreError::Missing(c.hash))?;
        let file = lock(&self.packs).reader(pack);
        let bytes = file.and_then(|f| pack::read_at(&f, offset, c.len).map_err(|e| io_error(&pack::pack_path(&self.dir, pack), e)));
        match bytes {
            Ok(b) if blake3::hash(&b).as_bytes() == &c.hash.0 => Ok(b),
            other => {
                tracing::warn!(chunk = %c.hash, error = ?other.err(), "stored chunk failed verification; marking it missing");
                self.mark_missing(&c.hash)?;
                Err(StoreError::Corrupt(c.hash))
            }
        }
    }

    fn mark_missing(&self, h: &ChunkHash) -> Result<(), StoreError> {
        let _w = lock(&self.writer);
        if let Some(mut rec) = self.chunk(h)? {
            rec.loc = None;
            self.index.insert(chunk_key(h), encode(&rec))?;
        }
        Ok(())
    }

    /// Records that a manifest's image was rebuilt completely (packs synced first).
    pub fn mark_complete(&self, id: &ManifestId) -> Result<(), StoreError> {
        lock(&self.packs).sync()?;
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

    pub fn manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
        let mut out = Vec::new();
        for kv in self.index.scan_prefix(b"m") {
            let (k, v) = kv?;
            let rec: ManifestRecord = decode(&k, &v)?;
            let mut id = [0u8; 32];
            id.copy_from_slice(&k[1..]);
            out.push(StoredManifest { id: ManifestId(id), label: rec.manifest.label.clone(), complete: rec.complete, bytes: rec.manifest.total_bytes() });
        }
        Ok(out)
    }

    /// Unpins a manifest: its chunks lose one reference each (GC reclaims the unreferenced).
    pub fn release(&self, id: &ManifestId) -> Result<bool, StoreError> {
        let _w = lock(&self.writer);
        let key = manifest_key(id);
        let Some(v) = self.index.get(key)? else { return Ok(false) };
        let rec: ManifestRecord = decode(&key, &v)?;
        let mut batch = sled::Batch::default();
        let mut seen = HashSet::new();
        for c in rec.manifest.chunks().filter(|c| seen.insert(c.hash)) {
            if let Some(mut r) = self.chunk(&c.hash)? {
                r.refs = r.refs.saturating_sub(1);
                batch.insert(&chunk_key(&c.hash)[..], encode(&r));
            }
        }
        batch.remove(&key[..]);
        self.index.apply_batch(batch)?;
        Ok(true)
    }

    /// Bytes used by pack files.
    pub fn disk_bytes(&self) -> u64 {
        lock(&self.packs).total_bytes
    }

    /// Drops unreferenced chunks, deletes packs with no live chunk and rewrites packs that are
    /// mostly dead into the current pack.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let _w = lock(&self.writer);
        let mut batch = sled::Batch::default();
        let mut live: HashMap<u32, u64> = HashMap::new();
        let mut by_pack: HashMap<u32, Vec<(ChunkHash, ChunkRecord)>> = HashMap::new();
        for kv in self.index.scan_prefix(b"c") {
            let (k, v) = kv?;
            let rec: ChunkRecord = decode(&k, &v)?;
            let mut h = [0u8; 32];
            h.copy_from_slice(&k[1..]);
            if rec.refs == 0 {
                batch.remove(k);
                report.chunks_removed += 1;
            } else if let Some((pack, _)) = rec.loc {
                *live.entry(pack).or_default() += rec.len as u64;
                by_pack.entry(pack).or_default().push((ChunkHash(h), rec));
            }
        }
        self.index.apply_batch(batch)?;
        let mut packs = lock(&self.packs);
        packs.rotate()?;
        for (id, len) in packs.list()? {
            let used = live.get(&id).copied().unwrap_or(0);
            if id == packs.current() || used * 2 >= len {
                continue;
            }
            let moved = by_pack.remove(&id).unwrap_or_default();
            if !moved.is_empty() {
                let file = packs.reader(id)?;
                let mut data = Vec::with_capacity(moved.len());
                for (h, rec) in &moved {
                    let (_, offset) = rec.loc.expect("listed by location");
                    let bytes = pack::read_at(&file, offset, rec.len).map_err(|e| io_error(&pack::pack_path(&self.dir, id), e))?;
                    // A corrupt chunk is not copied; it becomes missing and is fetched again.
                    data.push((*h, rec.clone(), (blake3::hash(&bytes).as_bytes() == &h.0).then_some(bytes)));
                }
                let keep: Vec<&[u8]> = data.iter().filter_map(|(_, _, b)| b.as_deref()).collect();
                let mut locs = packs.append(&keep, None, true)?.into_iter();
                let mut batch = sled::Batch::default();
                for (h, mut rec, bytes) in data {
                    rec.loc = bytes.map(|_| locs.next().expect("one location per kept chunk"));
                    batch.insert(&chunk_key(&h)[..], encode(&rec));
                }
                self.index.apply_batch(batch)?;
                self.db.flush()?;
                report.packs_compacted += 1;
            } else {
                report.packs_removed += 1;
            }
            report.bytes_freed += packs.remove(id)?;
        }
        Ok(report)
    }

    /// Re-reads every present chunk and checks its hash: (chunks checked, chunks corrupt).
    pub fn verify_all(&self) -> Result<(u64, u64), StoreError> {
        let mut checked = 0;
        let mut corrupt = 0;
        let mut refs = Vec::new();
        for kv in self.index.scan_prefix(b"c") {
            let (k, v) = kv?;
            let rec: ChunkRecord = decode(&k, &v)?;
            if rec.loc.is_some() {
                let mut h = [0u8; 32];
                h.copy_from_slice(&k[1..]);
                refs.push(ChunkRef { hash: ChunkHash(h), len: rec.len });
            }
        }
        for c in refs {
            checked += 1;
            match self.read(&c) {
                Ok(_) => {}
                Err(StoreError::Corrupt(_)) => corrupt += 1,
                Err(e) => return Err(e),
            }
        }
        Ok((checked, corrupt))
    }
}
