//! Rebuilds a final image as a CRIU *incremental* image on top of an earlier image of the same
//! process tree that is already on this node (the migration's last pre-copy round).
//!
//! Without soft-dirty tracking every dump holds all of the process's pages, so rebuilding the
//! final image in full copies a GiB inside the freeze although ~99 % of it equals the pre-copy
//! image page for page. CRIU's own answer for dump chains is the `parent` link: a pagemap entry
//! flagged `PE_PARENT` says "these pages are in `parent/` at the same virtual address". So the
//! final image here gets a `pages-N.img` with only the chunks the parent lacks (compared by
//! virtual address and blake3, the way the chunker cut them), a rewritten `pagemap-N.img`, and the
//! parent image moved in as `parent/`. Everything written is verified from the store as usual;
//! the parent's pages were verified when it was rebuilt.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hotspot_criu_image::{self as criu_image, Image, PageRun, Pagemap, PAGEMAP_MAGIC, PAGE_SIZE, PE_PARENT, PE_PRESENT};
use hotspot_protocol::manifest::{ChunkHash, ChunkRef, ImageManifest, ManifestFile};

use crate::rebuild::{io_err, ImageWriter, RebuildError};
use crate::store::Store;

/// Name CRIU looks for in an image directory (`CR_PARENT_LINK`).
pub const PARENT_LINK: &str = "parent";

/// What [`rebuild_on_parent`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRebuild {
    pub path: PathBuf,
    /// Page bytes left in the parent (not written again).
    pub parent_bytes: u64,
    /// Bytes written into the new image directory.
    pub written_bytes: u64,
}

/// A task pagemap (`pagemap-<pid>.img`) of the final image and what to do with its pages file.
struct PagesPlan {
    pagemap_rel: String,
    pages_rel: String,
    /// The magic words and head entry of the original pagemap, kept as they are.
    head: Vec<u8>,
    pagemap: Pagemap,
    /// Per chunk of the pages file, in file order: whether the parent holds it.
    in_parent: Vec<bool>,
}

/// Rebuilds `manifest` at `dest` on top of `parent` (an image directory rebuilt from
/// `parent_manifest`, which is moved into the new image as `parent/`). Returns `Ok(None)`,
/// leaving `parent` where it is, when the parent shares no pages with the final image.
pub fn rebuild_on_parent(store: &Store, manifest: &ImageManifest, parent: &Path, parent_manifest: &ImageManifest, dest: &Path, sync: bool) -> Result<Option<ParentRebuild>, RebuildError> {
    if manifest.files.iter().any(|f| f.path == PARENT_LINK || f.path.starts_with("parent/")) {
        return Ok(None);
    }
    let plans = plan(store, manifest, parent_manifest)?;
    let parent_bytes: u64 = plans.iter().map(|p| chunks_of(manifest, &p.pages_rel).iter().zip(&p.in_parent).filter(|(_, &inp)| inp).map(|(c, _)| c.len as u64).sum::<u64>()).sum();
    if parent_bytes == 0 {
        return Ok(None);
    }
    // The files as they are written here: pages files keep only the chunks the parent lacks;
    // the rewritten pagemaps are written below, not from chunks.
    let mut derived = manifest.clone();
    derived.files.retain(|f| !plans.iter().any(|p| p.pagemap_rel == f.path));
    for f in derived.files.iter_mut() {
        if let Some(p) = plans.iter().find(|p| p.pages_rel == f.path) {
            f.chunks = f.chunks.iter().zip(&p.in_parent).filter(|(_, &inp)| !inp).map(|(c, _)| *c).collect();
            f.size = f.chunks.iter().map(|c| c.len as u64).sum();
        }
    }
    let writer = ImageWriter::create(&derived, dest)?;
    writer.fill_from_store(store)?;
    let staging = writer.staging().to_path_buf();
    let mut written_bytes = derived.total_bytes();
    for p in &plans {
        let bytes = rewrite_pagemap(&p.head, &p.pagemap, chunks_of(manifest, &p.pages_rel), &p.in_parent);
        let path = staging.join(&p.pagemap_rel);
        std::fs::write(&path, &bytes).map_err(|e| io_err(&path, e))?;
        let mode = manifest.files.iter().find(|f| f.path == p.pagemap_rel).map_or(0o600, |f| f.mode & 0o7777);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(|e| io_err(&path, e))?;
        written_bytes += bytes.len() as u64;
    }
    // CRIU opens the parent of every task pagemap it reads; one missing there is an error, an
    // empty one means "no parent for this task" (a process that did not exist in the parent).
    for f in manifest.files.iter().filter(|f| task_pagemap(&f.path)) {
        let there = parent.join(&f.path);
        if !there.exists() {
            std::fs::write(&there, b"").map_err(|e| io_err(&there, e))?;
        }
    }
    let link = staging.join(PARENT_LINK);
    std::fs::rename(parent, &link).map_err(|e| io_err(&link, e))?;
    match writer.commit(sync) {
        Ok(path) => Ok(Some(ParentRebuild { path, parent_bytes, written_bytes })),
        Err(e) => {
            // Hand the parent back so a full rebuild (or the next attempt) still has it.
            let _ = std::fs::rename(&link, parent);
            Err(e)
        }
    }
}

/// `pagemap-<digits>.img`: a task's private memory (shmem pagemaps are left whole).
fn task_pagemap(rel: &str) -> bool {
    rel.strip_prefix("pagemap-").and_then(|r| r.strip_suffix(".img")).is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

fn chunks_of<'a>(manifest: &'a ImageManifest, rel: &str) -> &'a [ChunkRef] {
    manifest.files.iter().find(|f| f.path == rel).map_or(&[], |f| f.chunks.as_slice())
}

fn file_bytes(store: &Store, file: &ManifestFile) -> Result<Vec<u8>, RebuildError> {
    let mut out = Vec::with_capacity(file.size as usize);
    for c in &file.chunks {
        out.extend(store.read(c)?);
    }
    Ok(out)
}

/// The virtual address of each chunk of a pages file, when the chunk lies inside one pagemap run.
fn chunk_vaddrs(pagemap: &Pagemap, chunks: &[ChunkRef]) -> Vec<Option<u64>> {
    let mut runs = pagemap.runs.iter().filter(|r| r.in_pages_file()).map(|r| (r.vaddr, r.nr_pages.saturating_mul(PAGE_SIZE)));
    let mut run = runs.next();
    let mut used = 0u64; // bytes of `run` already covered by earlier chunks
    let mut out = Vec::with_capacity(chunks.len());
    for c in chunks {
        let mut left = c.len as u64;
        let mut first = None;
        let mut pieces = 0;
        while left > 0 {
            let Some((vaddr, len)) = run else { break };
            let take = left.min(len - used);
            if pieces == 0 {
                first = Some(vaddr + used);
            }
            pieces += 1;
            left -= take;
            used += take;
            if used == len {
                run = runs.next();
                used = 0;
            }
        }
        out.push(if pieces == 1 && left == 0 { first } else { None });
    }
    out
}

fn plan(store: &Store, manifest: &ImageManifest, parent_manifest: &ImageManifest) -> Result<Vec<PagesPlan>, RebuildError> {
    let mut plans = Vec::new();
    for f in manifest.files.iter().filter(|f| task_pagemap(&f.path)) {
        let Some(pf) = parent_manifest.files.iter().find(|p| p.path == f.path) else { continue };
        let (original, parent_original) = (file_bytes(store, f)?, file_bytes(store, pf)?);
        let Ok(image) = Image::parse(&original, PAGEMAP_MAGIC) else { continue };
        let (Ok(pagemap), Ok(head), Ok(parent_map)) = (Pagemap::from_image(&image), image.leading(1), criu_image::parse_pagemap(&parent_original)) else { continue };
        let pages_rel = format!("pages-{}.img", pagemap.pages_id);
        let parent_pages_rel = format!("pages-{}.img", parent_map.pages_id);
        let (chunks, parent_chunks) = (chunks_of(manifest, &pages_rel), chunks_of(parent_manifest, &parent_pages_rel));
        if chunks.iter().map(|c| c.len as u64).sum::<u64>() != pagemap.present_bytes() {
            continue;
        }
        let parent_at: HashMap<u64, (ChunkHash, u32)> = chunk_vaddrs(&parent_map, parent_chunks).into_iter().zip(parent_chunks).filter_map(|(v, c)| Some((v?, (c.hash, c.len)))).collect();
        let in_parent = chunk_vaddrs(&pagemap, chunks).into_iter().zip(chunks).map(|(v, c)| v.is_some_and(|v| parent_at.get(&v) == Some(&(c.hash, c.len)))).collect();
        plans.push(PagesPlan { pagemap_rel: f.path.clone(), pages_rel, head: head.to_vec(), pagemap, in_parent });
    }
    Ok(plans)
}

/// The pagemap with every run split where chunks switch between "in the parent" and "here",
/// after `head` (the original's magic words and head entry).
fn rewrite_pagemap(head: &[u8], pagemap: &Pagemap, chunks: &[ChunkRef], in_parent: &[bool]) -> Vec<u8> {
    let mut out = head.to_vec();
    // Pieces of present runs, in file order: (bytes, in parent).
    let mut pieces = chunks.iter().zip(in_parent).map(|(c, &p)| (c.len as u64, p));
    let mut piece = pieces.next();
    for run in &pagemap.runs {
        if !run.in_pages_file() {
            criu_image::push_pagemap_entry(&mut out, run);
            continue;
        }
        let (mut vaddr, end) = (run.vaddr, run.vaddr + run.nr_pages * PAGE_SIZE);
        let mut open: Option<PageRun> = None;
        while vaddr < end {
            let Some((left, parent)) = piece.as_mut() else { break };
            let take = (*left).min(end - vaddr);
            let flags = if *parent { (run.flags & !PE_PRESENT) | PE_PARENT } else { run.flags };
            match open.as_mut() {
                Some(o) if o.flags == flags => o.nr_pages += take / PAGE_SIZE,
                _ => {
                    if let Some(o) = open.take() {
                        criu_image::push_pagemap_entry(&mut out, &o);
                    }
                    open = Some(PageRun { vaddr, nr_pages: take / PAGE_SIZE, flags });
                }
            }
            vaddr += take;
            *left -= take;
            if *left == 0 {
                piece = pieces.next();
            }
        }
        if let Some(o) = open.take() {
            criu_image::push_pagemap_entry(&mut out, &o);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(runs: &[(u64, u64)]) -> Pagemap {
        Pagemap { pages_id: 1, runs: runs.iter().map(|&(vaddr, nr_pages)| PageRun { vaddr, nr_pages, flags: PE_PRESENT }).collect() }
    }

    fn c(len: u64, tag: u8) -> ChunkRef {
        ChunkRef { hash: ChunkHash([tag; 32]), len: len as u32 }
    }

    #[test]
    fn chunk_vaddrs_follow_runs() {
        let map = pm(&[(0x10000, 2), (0x40000, 3)]);
        let chunks = [c(4096, 1), c(4096, 2), c(8192, 3), c(4096, 4)];
        assert_eq!(chunk_vaddrs(&map, &chunks), vec![Some(0x10000), Some(0x11000), Some(0x40000), Some(0x42000)]);
        // A chunk spanning two runs has no single address.
        assert_eq!(chunk_vaddrs(&map, &[c(4096, 1), c(8192, 2), c(8192, 3)]), vec![Some(0x10000), None, Some(0x41000)]);
    }

    #[test]
    fn pagemap_is_split_where_parent_and_present_alternate() {
        let map = pm(&[(0x10000, 4), (0x40000, 1)]);
        let mut head = criu_image::IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        head.extend(PAGEMAP_MAGIC.to_le_bytes());
        criu_image::push_entry(&mut head, &[(1, 1)]); // head { pages_id: 1 }
        let chunks = [c(4096, 1), c(4096, 2), c(8192, 3), c(4096, 4)];
        let bytes = rewrite_pagemap(&head, &map, &chunks, &[true, true, false, true]);
        let back = criu_image::parse_pagemap(&bytes).unwrap();
        assert_eq!(back.pages_id, 1);
        let runs: Vec<(u64, u64, u32)> = back.runs.iter().map(|r| (r.vaddr, r.nr_pages, r.flags)).collect();
        assert_eq!(runs, vec![(0x10000, 2, PE_PARENT), (0x12000, 2, PE_PRESENT), (0x40000, 1, PE_PARENT)]);
        assert_eq!(back.present_bytes(), 8192, "only the changed chunk stays in the pages file");
    }

    #[test]
    fn only_task_pagemaps_are_rewritten() {
        assert!(task_pagemap("pagemap-1.img") && task_pagemap("pagemap-4242.img"));
        assert!(!task_pagemap("pagemap-shmem-77.img") && !task_pagemap("pagemap-.img") && !task_pagemap("pages-1.img"));
    }
}
