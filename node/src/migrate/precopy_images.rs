//! The target keeps each migration's last pre-copy image on disk so the final image can be
//! rebuilt on top of it as a CRIU incremental image (`hotspot_transfer::parent`): inside the
//! freeze only the pages that changed since that round are written, not the whole memory.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hotspot_protocol::migration::MigrationId;
use hotspot_transfer::{ManifestId, ParentLookup};
use tracing::debug;

use super::wire::parse_image_label;

/// At most this many pre-copy images wait for their final round (older ones, e.g. of
/// migrations that were rolled back, are removed).
const KEPT: usize = 4;

#[derive(Clone, Default)]
pub struct PrecopyImages(Arc<Mutex<VecDeque<(MigrationId, PathBuf, ManifestId)>>>);

impl PrecopyImages {
    fn with<T>(&self, f: impl FnOnce(&mut VecDeque<(MigrationId, PathBuf, ManifestId)>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// For the receiver: the parent of a migration's final image, if a pre-copy image of it is here.
    pub fn lookup(&self) -> ParentLookup {
        let me = self.clone();
        ParentLookup(Arc::new(move |label: &str| {
            let (migration, true) = parse_image_label(label)? else { return None };
            me.with(|kept| kept.iter().rev().find(|(m, ..)| *m == migration).map(|(_, path, id)| (path.clone(), *id)))
        }))
    }

    /// Keeps a pre-copy round's image (dropping the migration's earlier round and the oldest
    /// images beyond [`KEPT`]).
    pub fn keep(&self, migration: MigrationId, path: PathBuf, manifest: ManifestId) {
        let stale = self.with(|kept| {
            let mut stale: Vec<PathBuf> = Vec::new();
            kept.retain(|(m, p, _)| {
                let keep = *m != migration;
                if !keep {
                    stale.push(p.clone());
                }
                keep
            });
            kept.push_back((migration, path, manifest));
            while kept.len() > KEPT {
                stale.extend(kept.pop_front().map(|(_, p, _)| p));
            }
            stale
        });
        stale.into_iter().for_each(remove_dir);
    }

    /// The migration's final image arrived: its pre-copy image is either inside it now (as
    /// `parent/`) or no longer needed.
    pub fn done(&self, migration: &MigrationId) {
        let gone = self.with(|kept| {
            let gone: Vec<PathBuf> = kept.iter().filter(|(m, ..)| m == migration).map(|(_, p, _)| p.clone()).collect();
            kept.retain(|(m, ..)| m != migration);
            gone
        });
        gone.into_iter().for_each(remove_dir);
    }
}

pub(super) fn remove_dir(path: PathBuf) {
    std::thread::spawn(move || {
        if path.exists() {
            debug!(path = %path.display(), "removing an image directory no longer needed");
            let _ = std::fs::remove_dir_all(path);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::wire::image_label;
    use std::path::Path;

    #[test]
    fn final_image_finds_the_last_round_of_its_own_migration() {
        let tmp = tempfile::tempdir().unwrap();
        let images = PrecopyImages::default();
        let (a, b) = (MigrationId([1; 16]), MigrationId([2; 16]));
        let dir = |n: &str| {
            let d = tmp.path().join(n);
            std::fs::create_dir(&d).unwrap();
            d
        };
        let (a0, a1, b0) = (dir("a0"), dir("a1"), dir("b0"));
        images.keep(a, a0.clone(), ManifestId([10; 32]));
        images.keep(b, b0.clone(), ManifestId([20; 32]));
        images.keep(a, a1.clone(), ManifestId([11; 32]));
        let lookup = images.lookup();
        assert_eq!((lookup.0)(&image_label(&a, Path::new("/x/final"))), Some((a1.clone(), ManifestId([11; 32]))));
        assert_eq!((lookup.0)(&image_label(&b, Path::new("/x/final"))), Some((b0.clone(), ManifestId([20; 32]))));
        assert_eq!((lookup.0)(&image_label(&a, Path::new("/x/round-1"))), None, "only final images get a parent");
        assert_eq!((lookup.0)("not a migration"), None);
        images.done(&a);
        assert_eq!((lookup.0)(&image_label(&a, Path::new("/x/final"))), None);
        // The earlier round and the finished migration's image are removed (on a thread).
        for _ in 0..200 {
            if !a0.exists() && !a1.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!a0.exists() && !a1.exists() && b0.exists());
    }
}
