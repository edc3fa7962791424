//! Turns a CRIU image directory into an [`ImageManifest`] of blake3-addressed chunks.
//!
//! - `pages-N.img` is cut by virtual address using its `pagemap-*.img` ([`hotspot_criu_image::vaddr_cuts`]),
//!   so unchanged pages keep their hashes between successive dumps of a process that grew.
//! - Every other file is one chunk when small, else cut at content-defined boundaries (a gear
//!   rolling hash), so an insertion shifts only the chunks around it.
//!
//! Hashing runs on a few plain threads (this is called from `spawn_blocking`, never on the async
//! runtime); page files are split into segments so both cores hash one large pages file.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use hotspot_criu_image::{self as criu_image, Pagemap};
use hotspot_protocol::manifest::{ChunkHash, ChunkRef, ImageManifest, ManifestFile};

/// Chunk size of page data: one page. On a re-dump of redis after 1 % of its data changed, 4 KiB
/// chunks leave 2.0 % of the image to send, 8 KiB 2.7 %, 16 KiB 4.0 %, 64 KiB 10.3 %; the
/// per-chunk cost (a zstd-compressed manifest entry of ~34 bytes, one index record) is smaller
/// than what larger chunks lose. Measured by `cargo bench --bench transfer`; see
/// `docs/design/chunking.md`.
pub const DEFAULT_PAGE_CHUNK_BYTES: u64 = 4 * 1024;

#[derive(Debug, Clone)]
pub struct ChunkerConfig {
    /// Page data is cut at multiples of this many bytes of virtual address (a multiple of 4 KiB).
    pub page_chunk_bytes: u64,
    /// Files up to this size are a single chunk.
    pub whole_file_max: usize,
    /// Content-defined chunking: minimum, average (a power of two) and maximum chunk size.
    pub cdc_min: usize,
    pub cdc_avg: usize,
    pub cdc_max: usize,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        ChunkerConfig {
            page_chunk_bytes: DEFAULT_PAGE_CHUNK_BYTES,
            whole_file_max: 256 * 1024,
            cdc_min: 16 * 1024,
            cdc_avg: 64 * 1024,
            cdc_max: 256 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("reading image {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("image path {0} is not valid UTF-8 or not a plain relative path")]
    BadPath(PathBuf),
    #[error("{0} is neither a regular file nor a directory (symlinks and devices are not image files)")]
    Unsupported(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ChunkError + '_ {
    move |source| ChunkError::Io { path: path.to_path_buf(), source }
}

/// How one file is cut.
enum Plan {
    /// Fixed lengths in file order (page data cut by virtual address).
    Lengths(Vec<u64>),
    /// Whole file or content-defined boundaries, found while reading.
    Content,
}

struct FileJob {
    rel: String,
    path: PathBuf,
    mode: u32,
    size: u64,
    plan: Plan,
}

/// Chunks every regular file under `dir` (sorted by path) into a manifest.
pub fn build_manifest(dir: &Path, label: &str, config: &ChunkerConfig) -> Result<ImageManifest, ChunkError> {
    let mut files = Vec::new();
    list_files(dir, dir, &mut files)?;
    files.sort_by(|a, b| a.0.cmp(&b.0));

    let pagemaps = read_pagemaps(&files);
    let mut jobs = Vec::with_capacity(files.len());
    for (rel, path) in files {
        let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
        let plan = pages_id(&rel)
            .and_then(|id| pagemaps.get(&id))
            .filter(|pm| {
                let fits = pm.present_bytes() == meta.len();
                if !fits {
                    tracing::warn!(file = %rel, "pages file size does not match its pagemap; chunking by content");
                }
                fits
            })
            .map(|pm| Plan::Lengths(criu_image::vaddr_cuts(pm, config.page_chunk_bytes)))
            .unwrap_or(Plan::Content);
        jobs.push(FileJob { rel, path, mode: meta.permissions().mode() & 0o7777, size: meta.len(), plan });
    }

    // Work items: (file index, first chunk, chunk lengths, start offset) for page data segments;
    // whole files for content-defined ones.
    const SEGMENT_CHUNKS: usize = 2048;
    let mut items: Vec<(usize, u64, Option<&[u64]>)> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        match &job.plan {
            Plan::Lengths(lens) => {
                let mut offset = 0;
                for seg in lens.chunks(SEGMENT_CHUNKS) {
                    items.push((i, offset, Some(seg)));
                    offset += seg.iter().sum::<u64>();
                }
            }
            Plan::Content => items.push((i, 0, None)),
        }
    }
    let results: Mutex<Vec<Option<Result<Vec<ChunkRef>, ChunkError>>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(file, offset, lens)) = items.get(n) else { break };
                let job = &jobs[file];
                let out = match lens {
                    Some(lens) => hash_lengths(&job.path, offset, lens),
                    None => hash_by_content(&job.path, config),
                };
                results.lock().unwrap_or_else(|e| e.into_inner())[n] = Some(out);
            });
        }
    });

    let mut per_file: Vec<Vec<ChunkRef>> = vec![Vec::new(); jobs.len()];
    for ((file, _, _), result) in items.iter().zip(results.into_inner().unwrap_or_else(|e| e.into_inner())) {
        per_file[*file].extend(result.expect("every work item ran")?);
    }
    let files = jobs
        .into_iter()
        .zip(per_file)
        .map(|(job, chunks)| ManifestFile { path: job.rel, mode: job.mode, size: job.size, chunks })
        .collect();
    Ok(ImageManifest { label: label.to_string(), files })
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), ChunkError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_dir() {
            list_files(root, &path, out)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(root).ok().and_then(|p| p.to_str()).map(str::to_string);
            let rel = rel.filter(|r| hotspot_protocol::manifest::check_relative_path(r).is_ok());
            out.push((rel.ok_or_else(|| ChunkError::BadPath(path.clone()))?, path));
        } else {
            return Err(ChunkError::Unsupported(path));
        }
    }
    Ok(())
}

/// `pages-N.img` -> N.
fn pages_id(rel: &str) -> Option<u32> {
    rel.strip_prefix("pages-")?.strip_suffix(".img")?.parse().ok()
}

/// Parses every `pagemap*.img`, keyed by the pages file id they describe. Unreadable or
/// malformed pagemaps only cost dedup (their pages file is chunked by content), so they are
/// logged, not fatal: the manifest still rebuilds the directory byte for byte.
fn read_pagemaps(files: &[(String, PathBuf)]) -> HashMap<u32, Pagemap> {
    let mut out = HashMap::new();
    for (rel, path) in files.iter().filter(|(r, _)| r.starts_with("pagemap") && r.ends_with(".img")) {
        match std::fs::read(path).map_err(|e| e.to_string()).and_then(|b| criu_image::parse_pagemap(&b).map_err(|e| e.to_string())) {
            Ok(pm) => {
                out.insert(pm.pages_id, pm);
            }
            Err(e) => tracing::warn!(file = %rel, error = %e, "cannot parse pagemap"),
        }
    }
    out
}

fn chunk_ref(data: &[u8]) -> ChunkRef {
    ChunkRef { hash: ChunkHash(*blake3::hash(data).as_bytes()), len: data.len() as u32 }
}

fn hash_lengths(path: &Path, offset: u64, lens: &[u64]) -> Result<Vec<ChunkRef>, ChunkError> {
    let file = File::open(path).map_err(io_err(path))?;
    let total: u64 = lens.iter().sum();
    let mut buf = vec![0u8; total as usize];
    file.read_exact_at(&mut buf, offset).map_err(io_err(path))?;
    let mut out = Vec::with_capacity(lens.len());
    let mut at = 0usize;
    for &len in lens {
        out.push(chunk_ref(&buf[at..at + len as usize]));
        at += len as usize;
    }
    Ok(out)
}

fn hash_by_content(path: &Path, config: &ChunkerConfig) -> Result<Vec<ChunkRef>, ChunkError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(config.cdc_max * 2);
    let mut eof = false;
    loop {
        while !eof && buf.len() < config.cdc_max.max(config.whole_file_max + 1) {
            let start = buf.len();
            buf.resize(start + 1024 * 1024, 0);
            let n = file.read(&mut buf[start..]).map_err(io_err(path))?;
            buf.truncate(start + n);
            eof = n == 0;
        }
        if buf.is_empty() {
            return Ok(out);
        }
        if eof && out.is_empty() && buf.len() <= config.whole_file_max {
            out.push(chunk_ref(&buf));
            return Ok(out);
        }
        let cut = cdc_cut(&buf, config.cdc_min, config.cdc_avg, config.cdc_max);
        out.push(chunk_ref(&buf[..cut]));
        buf.drain(..cut);
    }
}

/// Gear table: 256 pseudo-random u64s (splitmix64), fixed forever so cut points are stable.
const GEAR: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
};

/// Length of the next content-defined chunk of `data` (all of it when shorter than `min`).
pub fn cdc_cut(data: &[u8], min: usize, avg: usize, max: usize) -> usize {
    if data.len() <= min {
        return data.len();
    }
    let mask = (avg.next_power_of_two() as u64 - 1) << (64 - avg.next_power_of_two().trailing_zeros());
    let end = data.len().min(max);
    let mut hash = 0u64;
    for (i, &b) in data.iter().enumerate().take(end).skip(min) {
        hash = (hash << 1).wrapping_add(GEAR[b as usize]);
        if hash & mask == 0 {
            return i + 1;
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_cuts_survive_an_insertion() {
        let mut data = vec![0u8; 2 * 1024 * 1024];
        let mut x = 1u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let cuts = |d: &[u8]| {
            let mut out = Vec::new();
            let mut at = 0;
            while at < d.len() {
                let n = cdc_cut(&d[at..], 16384, 65536, 262144);
                out.push(blake3::hash(&d[at..at + n]));
                at += n;
            }
            out
        };
        let before = cuts(&data);
        data.splice(100_000..100_000, [1, 2, 3]);
        let after = cuts(&data);
        let shared = after.iter().filter(|h| before.contains(h)).count();
        assert!(before.len() > 10 && shared + 3 >= before.len(), "{shared} of {} chunks shared", before.len());
    }
}
