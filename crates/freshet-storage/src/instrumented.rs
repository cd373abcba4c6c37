//! An instrumented object store: counts what is read and written, and fails chosen writes.
//!
//! Wrap a store in [`InstrumentedStore`] with a shared [`Instruments`]. Counting bytes read
//! shows what an operation costs (a change read must not read the table). Arming a failure
//! with a path fragment makes the next write of such a path fail as if the storage had gone
//! away — the state a crash between writing data files and committing a manifest leaves
//! behind, for tests of crash safety. A write can also be made to land and then report an
//! error (the store took it, its answer was lost: an ambiguous commit), or be held until the
//! test releases it, running on a task of its own as the local store's writes do (so that a
//! caller that stops waiting does not stop the write).

use std::fmt;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    self, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use futures::stream::BoxStream;

use crate::StorageCounters;

/// What an [`InstrumentedStore`] counts and which writes it fails; cheap to clone, shared with
/// the store.
#[derive(Debug, Clone, Default)]
pub struct Instruments {
    armed: Arc<Mutex<Vec<(String, Fault)>>>,
    counters: Arc<StorageCounters>,
}

impl Instruments {
    /// New instruments: nothing counted, nothing armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Instruments that count reads and writes into `counters` (an engine's, which it reports).
    pub fn counting_into(counters: Arc<StorageCounters>) -> Self {
        Self {
            armed: Arc::default(),
            counters,
        }
    }

    /// Bytes read since the last reset.
    pub fn bytes_read(&self) -> u64 {
        self.counters.read().bytes_read
    }

    /// Read requests since the last reset.
    pub fn reads(&self) -> u64 {
        self.counters.read().reads
    }

    /// Sets the read counters to zero.
    pub fn reset_counters(&self) {
        self.counters.bytes_read.store(0, Ordering::Relaxed);
        self.counters.reads.store(0, Ordering::Relaxed);
    }

    /// Makes the next write of a path containing `fragment` fail (once).
    pub fn fail_next_write(&self, fragment: &str) {
        self.lock().push((fragment.to_string(), Fault::Fail));
    }

    /// Makes the next write of a path containing `fragment` land and then report an error
    /// (once), as a store does whose answer was lost after it took the write.
    pub fn land_then_fail_next_write(&self, fragment: &str) {
        self.lock().push((fragment.to_string(), Fault::LandThenFail));
    }

    /// Holds the next write of a path containing `fragment` until the returned hold is
    /// released; the write then runs to its end whether or not its caller still waits.
    pub fn hold_next_write(&self, fragment: &str) -> WriteHold {
        let hold = WriteHold::default();
        self.lock().push((fragment.to_string(), Fault::Hold(hold.clone())));
        hold
    }

    /// Whether an armed failure is still waiting for its write.
    pub fn pending(&self) -> bool {
        !self.lock().is_empty()
    }

    fn take(&self, path: &Path) -> Option<Fault> {
        let mut armed = self.lock();
        let index = armed
            .iter()
            .position(|(fragment, _)| path.as_ref().contains(fragment.as_str()))?;
        Some(armed.remove(index).1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Fault)>> {
        self.armed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What happens to an armed write.
#[derive(Debug, Clone)]
enum Fault {
    Fail,
    LandThenFail,
    Hold(WriteHold),
}

/// A write held by [`Instruments::hold_next_write`].
#[derive(Debug, Clone, Default)]
pub struct WriteHold {
    reached: Arc<tokio::sync::Notify>,
    released: Arc<tokio::sync::Notify>,
}

impl WriteHold {
    /// Waits until the held write has been asked for.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held write go on.
    pub fn release(&self) {
        self.released.notify_one();
    }
}

/// An object store that counts reads and fails the writes its [`Instruments`] are armed for.
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn ObjectStore>,
    instruments: Instruments,
}

impl InstrumentedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, instruments: Instruments) -> Self {
        Self { inner, instruments }
    }

    fn check(&self, location: &Path) -> object_store::Result<()> {
        match self.instruments.take(location) {
            Some(_) => Err(injected(location)),
            None => Ok(()),
        }
    }
}

fn injected(location: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "fault-injection",
        source: format!("injected failure writing {location}").into(),
    }
}

impl fmt::Display for InstrumentedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstrumentedStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.instruments.counters.count_write(payload.content_length() as u64);
        match self.instruments.take(location) {
            None => self.inner.put_opts(location, payload, opts).await,
            Some(Fault::Fail) => Err(injected(location)),
            Some(Fault::LandThenFail) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected(location))
            }
            Some(Fault::Hold(hold)) => {
                let (inner, location) = (self.inner.clone(), location.clone());
                let write = tokio::spawn(async move {
                    hold.reached.notify_one();
                    hold.released.notified().await;
                    inner.put_opts(&location, payload, opts).await
                });
                write.await.map_err(|e| object_store::Error::Generic {
                    store: "fault-injection",
                    source: Box::new(e),
                })?
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountedUpload {
            inner: upload,
            counters: self.instruments.counters.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let result = self.inner.get_opts(location, options).await?;
        self.instruments
            .counters
            .count_read(result.range.end - result.range.start);
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        let parts = self.inner.get_ranges(location, ranges).await?;
        for part in &parts {
            self.instruments.counters.count_read(part.len() as u64);
        }
        Ok(parts)
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

/// A multipart upload whose parts are counted as writes.
#[derive(Debug)]
struct CountedUpload {
    inner: Box<dyn MultipartUpload>,
    counters: Arc<StorageCounters>,
}

#[async_trait]
impl MultipartUpload for CountedUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        self.counters.count_write(data.content_length() as u64);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}
