//! Rebuilds an image directory from a manifest, verifying every chunk.
//!
//! The directory is written under `<dest>.partial` and renamed into place only when every file
//! is complete, so a crash or a full disk never leaves a half image where a restore would look.
//! During a transfer, freshly received chunks are written straight into place
//! ([`ImageWriter::write_chunk`]); [`ImageWriter::finish`] fills in the rest from the store.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use hotspot_protocol::manifest::{check_relative_path, ChunkHash, ChunkRef, ImageManifest};

use crate::buffers::write_all_vectored;
use crate::store::{Located, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("disk full writing image file {path}: {detail}; the partial image was removed")]
    DiskFull { path: PathBuf, detail: String },
    #[error("writing image file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("manifest path {0:?} is not a plain relative path")]
    BadPath(String),
    #[error("{} chunk(s) missing or corrupt in the store", .0.len())]
    Missing(Vec<ChunkHash>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> RebuildError {
    if crate::store::is_disk_full(&source) {
        RebuildError::DiskFull { path: path.into(), detail: source.to_string() }
    } else {
        RebuildError::Io { path: path.into(), source }
    }
}

/// Image files at least this large (page data) are linked into the store as packs when chunks
/// are received into them; smaller ones (a CRIU image has dozens) are copied into the store's
/// packs, which keeps the number of packs small.
pub const LINK_MIN_BYTES: u64 = 16 * 1024 * 1024;

/// Where each distinct chunk of an image goes: (file index, offset).
///
/// The first place is kept inline because almost every chunk occurs once: a `Vec` per chunk cost
/// a heap allocation each, ~300,000 per GiB of pages, on top of a map twice the size. Repeats
/// (identical pages) are rare and go to `more`.
struct Places {
    first: HashMap<ChunkHash, (u32, u64)>,
    more: HashMap<ChunkHash, Vec<(u32, u64)>>,
}

impl Places {
    fn with_capacity(chunks: usize) -> Self {
        Places { first: HashMap::with_capacity(chunks), more: HashMap::new() }
    }

    fn add(&mut self, hash: ChunkHash, place: (u32, u64)) {
        match self.first.entry(hash) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(place);
            }
            std::collections::hash_map::Entry::Occupied(_) => self.more.entry(hash).or_default().push(place),
        }
    }

    fn first(&self, hash: &ChunkHash) -> Option<(u32, u64)> {
        self.first.get(hash).copied()
    }

    fn all(&self, hash: &ChunkHash) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.first(hash).into_iter().chain(self.more.get(hash).into_iter().flatten().copied())
    }
}

/// Most bytes read from a pack at once when filling an image from the store.
pub const RUN_BYTES: u64 = 4 * 1024 * 1024;
/// Unneeded bytes between two chunks of a pack that are read over rather than split into two reads.
const RUN_GAP: u64 = 64 * 1024;

/// Splits chunks sorted by pack and offset into index ranges, each one read of a pack.
fn runs(sorted: &[Located]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=sorted.len() {
        let split = match (sorted.get(i), &sorted[start]) {
            (Some(next), first) => {
                let prev = &sorted[i - 1];
                let prev_end = prev.offset + prev.chunk.len as u64;
                next.pack != first.pack || next.offset < prev_end || next.offset - prev_end > RUN_GAP || next.offset + next.chunk.len as u64 - first.offset > RUN_BYTES
            }
            (None, _) => true,
        };
        if split && i > start {
            out.push(start..i);
            start = i;
        }
    }
    out
}

pub struct ImageWriter {
    dest: PathBuf,
    staging: PathBuf,
    files: Vec<(PathBuf, File)>,
    /// One writer per file at a time. The kernel serialises writes to a file on its inode lock
    /// anyway, but by spinning while the owner copies; parking here instead leaves the core to
    /// the threads that decompress and verify the next batches.
    write_locks: Vec<Mutex<()>>,
    places: Places,
    manifest: ImageManifest,
    /// Per file: the store pack it was linked in as, once it was (see [`Store::put_in_place`]).
    linked: Vec<OnceLock<Option<u32>>>,
    /// Chunks already written into place by this writer.
    written: Mutex<std::collections::HashSet<ChunkHash>>,
    /// Set once the staging directory was moved into place (so drop keeps it).
    done: AtomicBool,
}

impl ImageWriter {
    /// Creates `<dest>.partial` with every file of `manifest` at its final size.
    pub fn create(manifest: &ImageManifest, dest: &Path) -> Result<ImageWriter, RebuildError> {
        let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".partial");
        let staging = dest.with_file_name(name);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| io_err(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| io_err(&staging, e))?;
        let chunks: usize = manifest.files.iter().map(|f| f.chunks.len()).sum();
        let mut writer = ImageWriter {
            dest: dest.into(),
            staging: staging.clone(),
            files: Vec::with_capacity(manifest.files.len()),
            write_locks: (0..manifest.files.len()).map(|_| Mutex::new(())).collect(),
            places: Places::with_capacity(chunks),
            manifest: manifest.clone(),
            linked: (0..manifest.files.len()).map(|_| OnceLock::new()).collect(),
            // Sized once for every chunk: growing by doubling touched twice the memory.
            written: Mutex::new(std::collections::HashSet::with_capacity(chunks)),
            done: AtomicBool::new(false),
        };
        for (i, f) in manifest.files.iter().enumerate() {
            check_relative_path(&f.path).map_err(|_| RebuildError::BadPath(f.path.clone()))?;
            let path = staging.join(&f.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
            }
            let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|e| io_err(&path, e))?;
            file.set_len(f.size).map_err(|e| io_err(&path, e))?;
            preallocate(&file, f.size).map_err(|e| io_err(&path, e))?;
            let mut offset = 0;
            for c in &f.chunks {
                writer.places.add(c.hash, (i as u32, offset));
                offset += c.len as u64;
            }
            writer.files.push((path, file));
        }
        Ok(writer)
    }

    /// The `<dest>.partial` directory the image is written in until [`Self::commit`].
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Whether `hash` belongs to this image.
    pub fn wants(&self, hash: &ChunkHash) -> bool {
        self.places.first.contains_key(hash)
    }

    /// Writes verified chunk bytes into every place the chunk occurs.
    pub fn write_chunk(&self, hash: &ChunkHash, data: &[u8]) -> Result<(), RebuildError> {
        self.write_chunks(&[(*hash, data)])
    }

    /// Writes several verified chunks, merging neighbours into one write each (a batch of
    /// 4 KiB pages is mostly one contiguous run of a pages file).
    pub fn write_chunks(&self, chunks: &[(ChunkHash, &[u8])]) -> Result<(), RebuildError> {
        let mut places: Vec<(u32, u64, &[u8])> = Vec::with_capacity(chunks.len());
        for (hash, data) in chunks {
            for (file, offset) in self.places.all(hash) {
                places.push((file, offset, data));
            }
        }
        places.sort_unstable_by_key(|&(file, offset, _)| (file, offset));
        // One vectored write per run of neighbouring places, straight from the callers' buffers.
        let mut run: Vec<&[u8]> = Vec::new();
        let mut i = 0;
        while i < places.len() {
            let (file, start, first) = places[i];
            let mut end = start + first.len() as u64;
            run.clear();
            run.push(first);
            let mut j = i + 1;
            while j < places.len() && places[j].0 == file && places[j].1 == end {
                end += places[j].2.len() as u64;
                run.push(places[j].2);
                j += 1;
            }
            let (path, f) = &self.files[file as usize];
            let _one_writer = self.write_locks[file as usize].lock().unwrap_or_else(|e| e.into_inner());
            write_all_vectored(f, Some(start), &run).map_err(|e| io_err(path, e))?;
            i = j;
        }
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.extend(chunks.iter().map(|(h, _)| *h));
        Ok(())
    }

    /// Stores verified chunks this writer already wrote (see [`Self::write_chunks`]): those of
    /// large files are indexed where they lie in the image (written once, not also copied into
    /// a pack), the rest are copied into the store's packs.
    pub fn store_written(&self, store: &Store, chunks: &[(ChunkHash, &[u8])]) -> Result<(), StoreError> {
        let mut in_place: BTreeMap<u32, Vec<(ChunkHash, u64, &[u8])>> = BTreeMap::new();
        let mut copy = Vec::new();
        for &(hash, data) in chunks {
            match self.places.first(&hash) {
                Some((file, offset)) if self.manifest.files[file as usize].size >= LINK_MIN_BYTES => in_place.entry(file).or_default().push((hash, offset, data)),
                _ => copy.push((hash, data)),
            }
        }
        for (file, placed) in in_place {
            let (path, f) = &self.files[file as usize];
            let at: Vec<(ChunkHash, u64, u32)> = placed.iter().map(|&(h, offset, data)| (h, offset, data.len() as u32)).collect();
            if !store.put_in_place(path, f, &self.linked[file as usize], &at)? {
                copy.extend(placed.iter().map(|&(h, _, data)| (h, data)));
            }
        }
        store.put_verified(&copy)
    }

    /// Writes every chunk not written yet from `store` (verifying each). Chunks missing or
    /// corrupt in the store are returned as [`RebuildError::Missing`]; the writer stays usable so
    /// the caller can fetch them and retry.
    ///
    /// This runs inside a migration's freeze on the target, so it reads the store in pack order,
    /// neighbours in one read of up to [`RUN_BYTES`], and verifies and writes on every core.
    pub fn fill_from_store(&self, store: &Store) -> Result<(), RebuildError> {
        let todo: Vec<ChunkRef> = {
            let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let mut seen = std::collections::HashSet::new();
            self.manifest.chunks().filter(|c| !written.contains(&c.hash) && seen.insert(c.hash)).copied().collect()
        };
        let mut missing = Vec::new();
        let mut located = Vec::with_capacity(todo.len());
        for (c, at) in todo.iter().zip(store.locate(&todo)) {
            match at {
                Some(at) => located.push(at),
                None => missing.push(c.hash),
            }
        }
        located.sort_unstable_by_key(|l| (l.pack, l.offset));
        let runs = runs(&located);
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Result<Vec<ChunkHash>, RebuildError>>> = Mutex::new(Vec::new());
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    let mut buf = Vec::new();
                    let mut bad = Vec::new();
                    while let Some(run) = runs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if let Err(e) = self.copy_run(store, &located[run.clone()], &mut buf, &mut bad) {
                            results.lock().unwrap_or_else(|e| e.into_inner()).push(Err(e));
                            return;
                        }
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner()).push(Ok(bad));
                });
            }
        });
        for r in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
            missing.extend(r?);
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(RebuildError::Missing(missing))
        }
    }

    /// Reads one run of neighbouring chunks from a pack, verifies each and writes the good ones
    /// into place; bad ones are dropped from the store's index and added to `bad`.
    fn copy_run(&self, store: &Store, run: &[Located], buf: &mut Vec<u8>, bad: &mut Vec<ChunkHash>) -> Result<(), RebuildError> {
        let (first, last) = (&run[0], &run[run.len() - 1]);
        let span = (last.offset + last.chunk.len as u64 - first.offset) as usize;
        buf.resize(span, 0);
        store.read_pack(first.pack, first.offset, buf)?;
        let mut good = Vec::with_capacity(run.len());
        for l in run {
            let at = (l.offset - first.offset) as usize;
            let data = &buf[at..at + l.chunk.len as usize];
            if blake3::hash(data).as_bytes() == &l.chunk.hash.0 {
                good.push((l.chunk.hash, data));
            } else {
                store.mark_corrupt(&l.chunk.hash)?;
                bad.push(l.chunk.hash);
            }
        }
        self.write_chunks(&good)
    }

    /// Sets modes, syncs and renames the staging directory to `dest` (replacing an old copy).
    pub fn commit(&self, sync: bool) -> Result<PathBuf, RebuildError> {
        for ((path, file), f) in self.files.iter().zip(&self.manifest.files) {
            if sync {
                file.sync_data().map_err(|e| io_err(path, e))?;
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(f.mode & 0o7777)).map_err(|e| io_err(path, e))?;
        }
        if self.dest.exists() {
            std::fs::remove_dir_all(&self.dest).map_err(|e| io_err(&self.dest, e))?;
        }
        std::fs::rename(&self.staging, &self.dest).map_err(|e| io_err(&self.dest, e))?;
        self.done.store(true, Ordering::SeqCst);
        Ok(self.dest.clone())
    }
}

impl ImageWriter {
    /// Removes the staging directory unless the image was committed. Called when a transfer
    /// fails, before tasks that still share the writer have wound down.
    pub fn discard(&self) {
        if !self.done.load(Ordering::SeqCst) {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        self.discard();
    }
}

/// Reserves the file's blocks up front: a full disk shows now, not halfway through a transfer,
/// and the file is laid out in few extents. Filesystems without fallocate just skip it.
fn preallocate(file: &File, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if size == 0 {
        return Ok(());
    }
    // SAFETY: plain syscall on an open fd; no memory is passed.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(e),
    }
}

/// Rebuilds the image of `manifest` at `dest` from `store` alone.
pub fn rebuild(store: &Store, manifest: &ImageManifest, dest: &Path) -> Result<PathBuf, RebuildError> {
    let writer = ImageWriter::create(manifest, dest)?;
    writer.fill_from_store(store)?;
    writer.commit(true)
}
