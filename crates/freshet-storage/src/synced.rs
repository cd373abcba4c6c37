//! A local directory whose writes are durable when they return.
//!
//! object_store's local store writes a staging file and renames (or hard-links) it into place,
//! but syncs neither the file nor the directory: after a power loss a manifest that was
//! committed may name files that are empty, or be gone itself. [`SyncedStore`] wraps it and,
//! before a write returns, syncs the file's data and every directory whose entries the write
//! changed (the file's directory, and the directories created for it up to one known to be
//! durable). Writes return in order, so the data files of a transaction are durable before its
//! manifest is written, and the manifest before the commit is acknowledged. Files of a
//! materialized table's operator state are the exception (see `put_opts`): derived data whose
//! loss is detected and repaired.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    self, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use futures::stream::BoxStream;

/// A local store that syncs what it writes (see the module's documentation).
#[derive(Debug)]
pub struct SyncedStore {
    local: Arc<LocalFileSystem>,
    syncer: Syncer,
}

/// Syncs files and directories; remembers the directories known to be durable in their parent.
#[derive(Debug, Clone)]
struct Syncer {
    root: PathBuf,
    durable_dirs: Arc<Mutex<HashSet<PathBuf>>>,
}

impl SyncedStore {
    /// Wraps a local store rooted at `root` (the directory `local` maps paths into).
    pub fn new(local: LocalFileSystem, root: PathBuf) -> Self {
        Self {
            local: Arc::new(local),
            syncer: Syncer {
                root,
                durable_dirs: Arc::default(),
            },
        }
    }

    async fn sync(&self, location: &Path) -> object_store::Result<()> {
        let file = self.local.path_to_filesystem(location)?;
        let syncer = self.syncer.clone();
        blocking(move || syncer.sync_file(file)).await
    }
}

impl Syncer {
    /// Syncs a file's data, its directory, and each directory above it up to one already
    /// durable (or the root), so that a directory created for the file survives as well.
    fn sync_file(&self, file: PathBuf) -> std::io::Result<()> {
        std::fs::File::open(&file)?.sync_all()?;
        let mut below: Option<PathBuf> = None;
        let mut dir = file.parent().map(PathBuf::from);
        while let Some(current) = dir {
            std::fs::File::open(&current)?.sync_all()?;
            let mut durable = self.durable_dirs.lock().unwrap_or_else(|p| p.into_inner());
            // The directory below now has its entry here, synced.
            if let Some(child) = below.take() {
                durable.insert(child);
            }
            if current == self.root || !current.starts_with(&self.root) || durable.contains(&current) {
                break;
            }
            drop(durable);
            dir = current.parent().map(PathBuf::from);
            below = Some(current);
        }
        Ok(())
    }
}

/// Runs file-system work (a sync) on a blocking thread.
async fn blocking(work: impl FnOnce() -> std::io::Result<()> + Send + 'static) -> object_store::Result<()> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| generic(Box::new(e)))?
        .map_err(|e| generic(Box::new(e)))
}

fn generic(source: Box<dyn std::error::Error + Send + Sync>) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem (synced)",
        source,
    }
}

impl fmt::Display for SyncedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Synced({})", self.local)
    }
}

/// A multipart upload whose completion syncs the file it made.
#[derive(Debug)]
struct SyncedUpload {
    inner: Box<dyn MultipartUpload>,
    file: PathBuf,
    syncer: Syncer,
}

#[async_trait]
impl MultipartUpload for SyncedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.inner.complete().await?;
        let (syncer, file) = (self.syncer.clone(), self.file.clone());
        blocking(move || syncer.sync_file(file)).await?;
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for SyncedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let result = self.local.put_opts(location, payload, opts).await?;
        // A materialized table's checkpoint is not synced: after a power loss, one that did
        // not reach the disk fails its hash check and the state is rebuilt from the inputs,
        // as without a checkpoint. Syncing it cost a command-line refresh (one process per
        // statement, whose close writes a checkpoint) 25–200 ms on this machine's disk.
        if !crate::layout::is_table_state_file(location) {
            self.sync(location).await?;
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.local.put_multipart_opts(location, opts).await?;
        Ok(Box::new(SyncedUpload {
            inner,
            file: self.local.path_to_filesystem(location)?,
            syncer: self.syncer.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.local.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.local.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        // A delete that a power loss undoes leaves a file no manifest needs: VACUUM deletes it
        // again. Nothing to sync.
        self.local.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.local.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.local.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.local.copy_opts(from, to, options).await?;
        self.sync(to).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.local.rename_opts(from, to, options).await?;
        self.sync(to).await?;
        // The source's directory lost an entry: sync it too, or the rename may come back as
        // two names of one file.
        let from = self.local.path_to_filesystem(from)?;
        if let Some(dir) = from.parent().map(PathBuf::from) {
            blocking(move || std::fs::File::open(dir)?.sync_all()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::object_store::ObjectStoreExt;

    #[tokio::test]
    async fn a_write_returns_with_its_file_and_new_directories_durable() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let store = SyncedStore::new(LocalFileSystem::new_with_prefix(&root).unwrap(), root.clone());
        store
            .put(
                &Path::from("tables/a/data/f.parquet"),
                Bytes::from_static(b"rows").into(),
            )
            .await
            .unwrap();
        let known = store.syncer.durable_dirs.lock().unwrap().clone();
        let expected: HashSet<PathBuf> = [root.join("tables/a/data"), root.join("tables/a"), root.join("tables")]
            .into_iter()
            .collect();
        assert_eq!(known, expected);
        // A large write goes in parts and is synced at completion.
        let mut upload = store.put_multipart(&Path::from("tables/b/big.parquet")).await.unwrap();
        upload.put_part(Bytes::from(vec![7u8; 1 << 20]).into()).await.unwrap();
        upload.complete().await.unwrap();
        assert!(
            store
                .syncer
                .durable_dirs
                .lock()
                .unwrap()
                .contains(&root.join("tables/b"))
        );
        let read = store
            .get(&Path::from("tables/b/big.parquet"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(read.len(), 1 << 20);
        // A materialized table's checkpoint is written, not synced.
        let state = Path::from("tables/c/state/s.arrow");
        store.put(&state, Bytes::from_static(b"state").into()).await.unwrap();
        assert!(
            !store
                .syncer
                .durable_dirs
                .lock()
                .unwrap()
                .contains(&root.join("tables/c"))
        );
        assert_eq!(
            store.get(&state).await.unwrap().bytes().await.unwrap().as_ref(),
            b"state"
        );
    }
}
