//! Where an engine keeps its data: an object store, a root path in it, and (for local
//! directories) an exclusive lock that keeps a second engine out.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::object_store::ObjectStore;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::memory::InMemory;
use datafusion::object_store::path::Path;

use freshet_common::{FreshetError, Result};

use crate::synced::SyncedStore;

/// An opened location.
#[derive(Debug)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    root: Path,
    display: String,
    /// The directory of a local location, whose state files are mapped rather than read
    /// through the store ([`crate::mapped`]).
    local: Option<PathBuf>,
    /// Held for the lifetime of the location; the OS releases it if the process dies.
    _lock: Option<File>,
}

impl Location {
    /// Opens a location given as a local directory path, `file:///dir`, or `memory://`; with
    /// the `cloud` feature also `s3://bucket/path`, `gs://...` and `az://...`, configured from
    /// the environment. Other stores can be built by the caller ([`Location::from_store`]).
    pub fn open(location: &str) -> Result<Self> {
        Self::open_with(location, true)
    }

    /// As [`Location::open`]; `sync` says whether a local directory's writes are synced to disk
    /// before they return ([`crate::synced::SyncedStore`]). Without it a power loss (not a
    /// crash of the process) can lose or corrupt the last commits; it is for scratch data and
    /// measurements that exclude the disk.
    pub fn open_with(location: &str, sync: bool) -> Result<Self> {
        if let Some(rest) = location.strip_prefix("memory://") {
            if !rest.is_empty() {
                return Err(FreshetError::InvalidLocation {
                    location: location.into(),
                    reason: "an in-memory location takes no path: use \"memory://\"".into(),
                });
            }
            return Ok(Self::from_store(Arc::new(InMemory::new()), Path::default(), location));
        }
        let dir = match location.split_once("://") {
            Some(("file", path)) => path,
            Some(_) => return Self::open_url(location),
            None => location,
        };
        Self::open_local(dir, sync)
    }

    #[cfg(feature = "cloud")]
    fn open_url(location: &str) -> Result<Self> {
        let invalid = |reason: String| FreshetError::InvalidLocation {
            location: location.into(),
            reason,
        };
        let url = url::Url::parse(location).map_err(|e| invalid(e.to_string()))?;
        // Credentials and settings come from the environment, as the cloud tools read them.
        let options = std::env::vars().filter_map(|(key, value)| {
            let key = key.to_ascii_lowercase();
            ["aws_", "google_", "azure_"]
                .iter()
                .any(|prefix| key.starts_with(prefix))
                .then_some((key, value))
        });
        let (store, root) =
            datafusion::object_store::parse_url_opts(&url, options).map_err(|e| invalid(e.to_string()))?;
        Ok(Self::from_store(Arc::from(store), root, location))
    }

    #[cfg(not(feature = "cloud"))]
    fn open_url(location: &str) -> Result<Self> {
        let scheme = location.split_once("://").map_or(location, |(scheme, _)| scheme);
        Err(FreshetError::InvalidLocation {
            location: location.into(),
            reason: format!(
                "\"{scheme}://\" locations need Freshet built with the \"cloud\" feature, \
                 or an object store built by the embedding program (EngineBuilder::object_store)"
            ),
        })
    }

    fn open_local(dir: &str, sync: bool) -> Result<Self> {
        let invalid = |reason: String| FreshetError::InvalidLocation {
            location: dir.into(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| invalid(format!("cannot create the directory: {e}")))?;
        let dir_path = std::fs::canonicalize(dir).map_err(|e| invalid(e.to_string()))?;
        let lock_dir = dir_path.join("_freshet");
        std::fs::create_dir_all(&lock_dir)
            .map_err(|e| invalid(format!("cannot create {}: {e}", lock_dir.display())))?;
        let lock_path = lock_dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| invalid(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(FreshetError::Locked {
                    location: dir_path.display().to_string(),
                    detail: format!("{} is locked", lock_path.display()),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(invalid(format!("cannot lock {}: {e}", lock_path.display())));
            }
        }
        let local = LocalFileSystem::new_with_prefix(&dir_path)
            .map_err(|e| invalid(e.to_string()))?
            .with_automatic_cleanup(true);
        let store: Arc<dyn ObjectStore> = match sync {
            true => Arc::new(SyncedStore::new(local, dir_path.clone())),
            false => Arc::new(local),
        };
        Ok(Self {
            store,
            root: Path::default(),
            display: dir_path.display().to_string(),
            local: Some(dir_path),
            _lock: Some(lock),
        })
    }

    /// Uses a store built by the caller (S3, GCS, a test wrapper, ...) with `root` as the
    /// location's top directory. No lock is taken: two engines on one such location are kept
    /// from corrupting it by conditional puts, and the second to commit gets an error.
    pub fn from_store(store: Arc<dyn ObjectStore>, root: Path, display: &str) -> Self {
        Self {
            store,
            root,
            display: display.into(),
            local: None,
            _lock: None,
        }
    }

    /// Puts a layer around the store (metrics, caching, failure injection in tests). A local
    /// location's state files are mapped from the file system, not read through the layers.
    pub fn layer(mut self, layer: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>) -> Self {
        self.store = layer(self.store);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The top directory inside the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file-system path of `path` (a path in the store) when the location is a local
    /// directory.
    pub(crate) fn local_path(&self, path: &Path) -> Option<PathBuf> {
        self.local.as_deref().map(|dir| local_file(dir, path))
    }

    /// The location as the user gave it.
    pub fn display(&self) -> &str {
        &self.display
    }
}

/// The file-system path of `path` (a path in a local location's store) below the location's
/// directory `dir`.
pub(crate) fn local_file(dir: &std::path::Path, path: &Path) -> PathBuf {
    path.parts()
        .fold(dir.to_path_buf(), |file, part| file.join(part.as_ref()))
}
