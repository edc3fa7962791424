//! Append-only pack files holding chunk bytes. One file per chunk would mean ~100k files per GiB
//! of image; packs keep that to a handful. The index (sled) is the only authority on what a pack
//! holds: bytes appended but never indexed (a crash, a full disk) are dead space that GC reclaims,
//! and a new pack is started on every open so nothing is ever appended after torn bytes.
//!
//! A pack may also be a hard link to a large file of an image being rebuilt ([`Packs::link`]):
//! chunks received straight into the image are indexed where they lie, so a received page is
//! written once, not once into a pack and again into the image. Such a pack is never appended
//! to; while the image still links it (`nlink > 1`) compacting it would free nothing, so GC
//! leaves it alone until the image is gone.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::StoreError;

pub(crate) struct Packs {
    dir: PathBuf,
    current: u32,
    /// Id the next new pack (rotation or link) gets.
    next_id: u32,
    current_file: File,
    current_len: u64,
    /// Bytes of all pack files (the store's disk use).
    pub total_bytes: u64,
    readers: HashMap<u32, Arc<File>>,
    pack_bytes: u64,
}

pub(crate) fn pack_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.pack"))
}

/// ENOSPC and friends, whether the error carries the errno (our writes) or only its kind (sled).
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG))
        || matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge)
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    if is_disk_full(&source) {
        StoreError::DiskFull { path: path.to_path_buf(), detail: source.to_string() }
    } else {
        StoreError::Io { path: path.to_path_buf(), source }
    }
}

impl Packs {
    pub fn open(dir: PathBuf, pack_bytes: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let mut max_id = 0;
        let mut total_bytes = 0;
        for (id, len) in Self::list_in(&dir)? {
            max_id = max_id.max(id);
            total_bytes += len;
        }
        let current = max_id + 1;
        let path = pack_path(&dir, current);
        let current_file = OpenOptions::new().create_new(true).append(true).read(true).open(&path).map_err(|e| io_error(&path, e))?;
        Ok(Packs { dir, current, next_id: current + 1, current_file, current_len: 0, total_bytes, readers: HashMap::new(), pack_bytes })
    }

    fn list_in(dir: &Path) -> Result<Vec<(u32, u64)>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".pack")).and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            out.push((id, entry.metadata().map_err(|e| io_error(&entry.path(), e))?.len()));
        }
        Ok(out)
    }

    /// (id, file length) of every pack.
    pub fn list(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        Self::list_in(&self.dir)
    }

    pub fn current(&self) -> u32 {
        self.current
    }

    /// Appends `chunks` back to back; returns each one's (pack, offset). On any error the pack
    /// is cut back to where it was, so a failed batch leaves no bytes behind.
    pub fn append(&mut self, chunks: &[&[u8]], max_bytes: Option<u64>, sync: bool) -> Result<Vec<(u32, u64)>, StoreError> {
        let need: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if let Some(limit) = max_bytes {
            if self.total_bytes + need > limit {
                return Err(StoreError::DiskFull {
                    path: self.dir.clone(),
                    detail: format!("store limit of {limit} bytes reached ({} used, {need} more needed)", self.total_bytes),
                });
            }
        }
        if self.current_len > 0 && self.current_len + need > self.pack_bytes {
            self.rotate()?;
        }
        let start = self.current_len;
        let path = pack_path(&self.dir, self.current);
        let mut out = Vec::with_capacity(chunks.len());
        let mut at = start;
        let result = (|| {
            // One vectored write per batch: syscalls, not bytes, dominate at 4 KiB per chunk,
            // and the chunks go straight from the caller's buffer.
            for c in chunks {
                out.push((self.current, at));
                at += c.len() as u64;
            }
            crate::buffers::write_all_vectored(&self.current_file, None, chunks)?;
            if sync {
                self.current_file.sync_data()?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Cut the torn tail off; if even that fails, the bytes are dead space (never indexed).
            let _ = self.current_file.set_len(start);
            return Err(io_error(&path, e));
        }
        self.current_len = at;
        self.total_bytes += need;
        Ok(out)
    }

    /// Starts a new pack, so the current one can be compacted or deleted by GC.
    pub fn rotate(&mut self) -> Result<(), StoreError> {
        if self.current_len == 0 {
            return Ok(());
        }
        let next = self.next_id;
        let path = pack_path(&self.dir, next);
        let file = OpenOptions::new().create_new(true).append(true).read(true).open(&path).map_err(|e| io_error(&path, e))?;
        self.current_file.sync_data().map_err(|e| io_error(&path, e))?;
        self.current = next;
        self.next_id = next + 1;
        self.current_file = file;
        self.current_len = 0;
        Ok(())
    }

    /// Makes `file` (at `path`, on the store's filesystem) a pack by hard-linking it in;
    /// returns its id. Fails with `EXDEV` across filesystems: the caller then copies instead.
    pub fn link(&mut self, path: &Path, file: &File, max_bytes: Option<u64>) -> Result<Option<u32>, StoreError> {
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        if max_bytes.is_some_and(|limit| self.total_bytes + len > limit) {
            return Ok(None);
        }
        let id = self.next_id;
        let target = pack_path(&self.dir, id);
        if let Err(e) = std::fs::hard_link(path, &target) {
            tracing::debug!(file = %path.display(), error = %e, "cannot link image file into the store; copying its chunks");
            return Ok(None);
        }
        self.next_id += 1;
        self.total_bytes += len;
        // The index will point into this name: make the name itself durable first.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io_error(&self.dir, e))?;
        Ok(Some(id))
    }

    /// Whether pack `id` is also linked from elsewhere (an image it was received into).
    pub fn shared(&self, id: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(pack_path(&self.dir, id)).is_ok_and(|m| m.nlink() > 1)
    }

    pub fn reader(&mut self, id: u32) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self.readers.get(&id) {
            return Ok(f.clone());
        }
        let path = pack_path(&self.dir, id);
        let f = Arc::new(File::open(&path).map_err(|e| io_error(&path, e))?);
        self.readers.insert(id, f.clone());
        Ok(f)
    }

    pub fn sync(&self) -> Result<(), StoreError> {
        self.current_file.sync_data().map_err(|e| io_error(&pack_path(&self.dir, self.current), e))
    }

    /// Deletes a pack that holds no live chunk (never the one being appended to).
    pub fn remove(&mut self, id: u32) -> Result<u64, StoreError> {
        if id == self.current {
            return Ok(0);
        }
        self.readers.remove(&id);
        let path = pack_path(&self.dir, id);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        self.total_bytes = self.total_bytes.saturating_sub(len);
        Ok(len)
    }
}

/// Reads `len` bytes at `offset` of an open pack.
pub(crate) fn read_at(file: &File, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}
