//! Failure injection for tests of crash safety: an object store that fails chosen writes.
//!
//! Wrap a store in [`FaultInjectingStore`], then arm a [`FaultInjector`] with a path fragment;
//! the next put of a path containing the fragment fails as if the storage had gone away — the
//! state a crash between writing data files and committing a manifest leaves behind.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    self, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use futures::stream::BoxStream;

/// Arms failures of a [`FaultInjectingStore`]; cheap to clone, shared with the store.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    armed: Arc<Mutex<Vec<String>>>,
}

impl FaultInjector {
    /// A new injector with nothing armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next write of a path containing `fragment` fail (once).
    pub fn fail_next_write(&self, fragment: &str) {
        self.lock().push(fragment.to_string());
    }

    /// Whether an armed failure is still waiting for its write.
    pub fn pending(&self) -> bool {
        !self.lock().is_empty()
    }

    fn take(&self, path: &Path) -> bool {
        let mut armed = self.lock();
        match armed
            .iter()
            .position(|fragment| path.as_ref().contains(fragment.as_str()))
        {
            Some(index) => {
                armed.remove(index);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.armed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An object store that fails the writes its [`FaultInjector`] is armed for.
#[derive(Debug)]
pub struct FaultInjectingStore {
    inner: Arc<dyn ObjectStore>,
    injector: FaultInjector,
}

impl FaultInjectingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, injector: FaultInjector) -> Self {
        Self { inner, injector }
    }

    fn check(&self, location: &Path) -> object_store::Result<()> {
        if self.injector.take(location) {
            return Err(object_store::Error::Generic {
                store: "fault-injection",
                source: format!("injected failure writing {location}").into(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for FaultInjectingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultInjectingStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultInjectingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}
