//! The domain configs the policy sees: parsed once and kept while the store's files stay as
//! they were, so a policy decision does not read and parse every domain's file again.
//!
//! Staleness: every save or removal by the manager calls [`ConfigCache::changed`]; a file
//! changed behind domaind's back (an edit by hand, a restored backup) changes its stamp
//! (inode, size, modification or change time, read with one `stat` per file on each use),
//! and the configs are loaded again.

use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use bulkhead_domain::{DomainConfig, DomainStore};

use super::lock;

/// One file of the store as `stat` shows it (its target's too when it is a symlink).
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    name: OsString,
    file: FileStamp,
    target: Option<FileStamp>,
}

#[derive(Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(m: &Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

struct Cached {
    /// The value of `ConfigCache::generation` when the load began.
    generation: u64,
    stamps: Vec<Stamp>,
    good: Arc<Vec<DomainConfig>>,
}

/// The good configs of the domain store (as [`DomainStore::load_all`] gives them), cached.
#[derive(Default)]
pub(super) struct ConfigCache {
    /// Bumped by every change the manager makes; a load that began before it is not used.
    generation: AtomicU64,
    cached: StdMutex<Option<Cached>>,
}

impl ConfigCache {
    /// The manager saved or removed a domain's file.
    pub(super) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        *lock(&self.cached) = None;
    }

    /// The good configs now: the cached ones while no file changed, else loaded again.
    pub(super) fn good(&self, store: &DomainStore) -> Arc<Vec<DomainConfig>> {
        // Generation and stamps are taken before the load: a file that changes while it loads
        // gives other stamps (or a new generation) at the next use, which loads again.
        let generation = self.generation.load(Ordering::SeqCst);
        let Some(stamps) = stamps(store.dir()) else {
            return Arc::new(store.load_all().0);
        };
        if let Some(c) = &*lock(&self.cached) {
            if c.generation == generation && c.stamps == stamps {
                return c.good.clone();
            }
        }
        let good = Arc::new(store.load_all().0);
        let mut cached = lock(&self.cached);
        if self.generation.load(Ordering::SeqCst) == generation {
            *cached = Some(Cached {
                generation,
                stamps,
                good: good.clone(),
            });
        }
        good
    }
}

/// The stamps of every file in `dir`, by name; `None` if the dir cannot be read (then
/// nothing is cached).
fn stamps(dir: &Path) -> Option<Vec<Stamp>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Vec::new()),
        Err(_) => return None,
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.ok()?;
        let path = entry.path();
        let file = std::fs::symlink_metadata(&path).ok()?;
        let target = if file.file_type().is_symlink() {
            std::fs::metadata(&path).ok().map(|m| FileStamp::of(&m))
        } else {
            None
        };
        out.push(Stamp {
            name: entry.file_name(),
            file: FileStamp::of(&file),
            target,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_domain::{DomainClass, DomainName, Label};

    fn save(store: &DomainStore, name: &str, memory: u64) {
        let mut cfg = DomainConfig::new(
            DomainName::new(name).unwrap(),
            DomainClass::Template,
            Label::Red,
            None,
        )
        .unwrap();
        cfg.memory = memory;
        store.save(&cfg).unwrap();
    }

    fn memories(good: &[DomainConfig]) -> Vec<(String, u64)> {
        let mut v: Vec<_> = good
            .iter()
            .map(|c| (c.name.to_string(), c.memory))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn kept_while_unchanged_and_loaded_again_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = DomainStore::new(dir.path().join("domains"));
        let cache = ConfigCache::default();
        assert!(cache.good(&store).is_empty());
        save(&store, "a", 512);
        // a save by the manager: said at once
        cache.changed();
        let first = cache.good(&store);
        assert_eq!(memories(&first), [("a".to_owned(), 512)]);
        // unchanged: the same configs, not parsed again
        assert!(Arc::ptr_eq(&first, &cache.good(&store)));
        // a file written behind the manager's back: its stamp differs
        save(&store, "b", 1024);
        assert_eq!(
            memories(&cache.good(&store)),
            [("a".to_owned(), 512), ("b".to_owned(), 1024)]
        );
        // a file edited in place (same inode): size or times differ
        let path = store.path_for(&DomainName::new("a").unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("memory = 512", "memory = 2048")).unwrap();
        assert_eq!(
            memories(&cache.good(&store)),
            [("a".to_owned(), 2048), ("b".to_owned(), 1024)]
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(memories(&cache.good(&store)), [("b".to_owned(), 1024)]);
    }
}
