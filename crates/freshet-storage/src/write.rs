//! Writing a table's files: Parquet files rolled at a row limit, written by one task per core
//! for large writes, and deletion vectors.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use roaring::RoaringTreemap;

use freshet_common::{FreshetError, Result};

use crate::layout::{FileKind, new_file_name, table_file};
use crate::manifest::ChangeFile;

/// Where a writer put a run of the rows it was given: rows `start..start + rows` of the stream
/// of rows written are rows `position..position + rows` of the file `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The run's first row, counted over every row the writer was given.
    pub start: u64,
    /// Rows in the run.
    pub rows: u64,
    /// The file, relative to the table directory.
    pub path: String,
    /// The run's first row in the file.
    pub position: u64,
}

/// Where the rows given to a writer went: each row of the stream is in exactly one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placements {
    /// Ordered by `start`, without gaps.
    runs: Vec<Placement>,
}

impl Placements {
    fn new(mut runs: Vec<Placement>) -> Self {
        runs.sort_unstable_by_key(|r| r.start);
        Self { runs }
    }

    /// The runs, in stream order.
    pub fn runs(&self) -> &[Placement] {
        &self.runs
    }

    /// Rows placed.
    pub fn rows(&self) -> u64 {
        self.runs.iter().map(|r| r.rows).sum()
    }

    /// The file and position of row `row` of the stream.
    pub fn locate(&self, row: u64) -> Option<(&str, u64)> {
        let (run, position) = self.locate_run(row)?;
        Some((self.runs[run].path.as_str(), position))
    }

    /// The run (index into [`Placements::runs`]) and file position of row `row` of the stream.
    pub fn locate_run(&self, row: u64) -> Option<(usize, u64)> {
        let index = self.runs.partition_point(|r| r.start + r.rows <= row);
        let run = self.runs.get(index)?;
        (run.start <= row).then(|| (index, run.position + (row - run.start)))
    }
}

/// A file's bytes as it is encoded, in blocks that are never copied to grow (a `Vec` of a
/// whole file would be copied at each doubling and its fresh pages faulted in each time: a
/// tenth of a stream's ingestion), then put as they are.
#[derive(Debug, Default)]
struct Chunks {
    full: Vec<Bytes>,
    current: Vec<u8>,
    len: usize,
}

impl Chunks {
    /// The first block's size; each next one is twice the last, up to [`Chunks::MAX_BLOCK`].
    const MIN_BLOCK: usize = 64 << 10;
    const MAX_BLOCK: usize = 8 << 20;

    fn into_payload(mut self) -> PutPayload {
        if !self.current.is_empty() {
            self.full.push(Bytes::from(self.current));
        }
        self.full.into_iter().collect()
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            if self.current.len() == self.current.capacity() {
                let next = (self.current.capacity() * 2).clamp(Self::MIN_BLOCK, Self::MAX_BLOCK);
                let full = std::mem::replace(&mut self.current, Vec::with_capacity(next));
                if !full.is_empty() {
                    self.full.push(Bytes::from(full));
                }
            }
            let take = (self.current.capacity() - self.current.len()).min(rest.len());
            self.current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        self.len += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a writer wrote: its files and where each row it was given went.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub files: Vec<ChangeFile>,
    pub placements: Placements,
}

/// Writes rows into a sequence of Parquet files, starting a new file every `max_rows` rows.
pub(crate) struct RollingWriter {
    store: Arc<dyn ObjectStore>,
    table_dir: Path,
    kind: FileKind,
    schema: SchemaRef,
    properties: WriterProperties,
    max_rows: usize,
    current: Option<(String, ArrowWriter<Chunks>, usize)>,
    finished: Vec<ChangeFile>,
    placed: Vec<Placement>,
}

impl RollingWriter {
    pub(crate) fn new(template: WriterTemplate) -> Self {
        let WriterTemplate {
            store,
            table_dir,
            kind,
            schema,
            properties,
            max_rows,
        } = template;
        Self {
            store,
            table_dir,
            kind,
            schema,
            properties,
            max_rows: max_rows.max(1),
            current: None,
            finished: Vec::new(),
            placed: Vec::new(),
        }
    }

    /// Appends rows that are rows `start..` of a stream several writers share (the placements
    /// count in that stream).
    async fn write_at(&mut self, batch: &RecordBatch, start: u64) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                let name = new_file_name(self.kind);
                let path = table_file(&self.table_dir, &name);
                let writer =
                    ArrowWriter::try_new(Chunks::default(), self.schema.clone(), Some(self.properties.clone()))
                        .map_err(|e| FreshetError::Internal(format!("cannot start {path}: {e}")))?;
                self.current = Some((name, writer, 0));
            }
            let Some((name, writer, rows)) = self.current.as_mut() else {
                unreachable!("a file was just started");
            };
            let take = (self.max_rows - *rows).min(batch.num_rows() - offset);
            let slice = batch.slice(offset, take);
            writer
                .write(&slice)
                .map_err(|e| parquet_write_error(&self.table_dir, name, e))?;
            self.placed.push(Placement {
                start: start + offset as u64,
                rows: take as u64,
                path: name.clone(),
                position: *rows as u64,
            });
            *rows += take;
            offset += take;
            if *rows >= self.max_rows {
                self.finish_current().await?;
            }
        }
        Ok(())
    }

    async fn finish_current(&mut self) -> Result<()> {
        if let Some((name, writer, rows)) = self.current.take() {
            let chunks = writer
                .into_inner()
                .map_err(|e| parquet_write_error(&self.table_dir, &name, e))?;
            let bytes = chunks.len as u64;
            let path = table_file(&self.table_dir, &name);
            self.store
                .put(&path, chunks.into_payload())
                .await
                .map_err(|e| FreshetError::storage(&path, e))?;
            self.finished.push(ChangeFile {
                path: name,
                rows: rows as u64,
                bytes,
                generated: None,
            });
        }
        Ok(())
    }

    /// Closes the last file and returns all files written.
    pub(crate) async fn finish(mut self) -> Result<Written> {
        self.finish_current().await?;
        Ok(Written {
            files: self.finished,
            placements: Placements::new(self.placed),
        })
    }
}

fn parquet_write_error(table_dir: &Path, name: &str, e: datafusion::parquet::errors::ParquetError) -> FreshetError {
    let path = table_file(table_dir, name);
    match e {
        datafusion::parquet::errors::ParquetError::External(inner) => {
            match inner.downcast::<datafusion::object_store::Error>() {
                Ok(store_error) => FreshetError::storage(path, *store_error),
                Err(other) => FreshetError::Internal(format!("cannot write {path}: {other}")),
            }
        }
        other => FreshetError::Internal(format!("cannot write {path}: {other}")),
    }
}

/// Writes a deletion vector to a new file; returns its path relative to the table directory.
pub(crate) async fn write_deletes(
    store: &Arc<dyn ObjectStore>,
    table_dir: &Path,
    deletes: &RoaringTreemap,
) -> Result<String> {
    let name = new_file_name(FileKind::Deletes);
    let path = table_file(table_dir, &name);
    let mut buffer = Vec::with_capacity(deletes.serialized_size());
    deletes
        .serialize_into(&mut buffer)
        .map_err(|e| FreshetError::Internal(format!("cannot serialize deletion vector: {e}")))?;
    store
        .put(&path, PutPayload::from(Bytes::from(buffer)))
        .await
        .map_err(|e| FreshetError::storage(&path, e))?;
    Ok(name)
}

/// Checks that every column of `schema` can be written to Parquet, by writing one row of NULLs
/// per column to memory; names the first column that cannot.
pub(crate) fn check_storable(table: &str, schema: &datafusion::arrow::datatypes::Schema) -> Result<()> {
    use datafusion::arrow::array::new_null_array;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::parquet::arrow::ArrowWriter;

    for field in schema.fields() {
        let probe = Arc::new(Schema::new(vec![Field::new(
            field.name(),
            field.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(probe.clone(), vec![new_null_array(field.data_type(), 1)])
            .map_err(|e| FreshetError::Internal(e.to_string()))?;
        let written = ArrowWriter::try_new(Vec::new(), probe, None).and_then(|mut writer| {
            writer.write(&batch)?;
            writer.close()
        });
        if let Err(e) = written {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{table}\": column \"{}\" has type {}, which a table cannot store ({e})",
                field.name(),
                field.data_type()
            )));
        }
    }
    Ok(())
}

/// Rows a writer receives before the next parallel writer is started: small inserts stay in
/// one file, large ones are encoded on every core.
const ROWS_PER_EXTRA_WRITER: usize = 128 * 1024;

/// A [`RollingWriter`] per core, each encoding in its own task; batches are dealt round-robin
/// among the writers started so far. Row order across files is not kept (tables are unordered).
pub(crate) struct ParallelWriter {
    template: WriterTemplate,
    max_writers: usize,
    senders: Vec<tokio::sync::mpsc::Sender<(u64, RecordBatch)>>,
    tasks: Vec<tokio::task::JoinHandle<Result<Written>>>,
    /// Writers whose input ended (see [`ParallelWriter::seal`]), finishing their files.
    sealed: Vec<tokio::task::JoinHandle<Result<Written>>>,
    rows: usize,
    next: usize,
}

/// What a writer writes: where, which kind of file, which columns, how.
#[derive(Clone)]
pub(crate) struct WriterTemplate {
    pub store: Arc<dyn ObjectStore>,
    pub table_dir: Path,
    pub kind: FileKind,
    pub schema: SchemaRef,
    pub properties: WriterProperties,
    pub max_rows: usize,
}

impl ParallelWriter {
    pub(crate) fn new(template: WriterTemplate, max_writers: usize) -> Self {
        Self {
            template,
            max_writers: max_writers.max(1),
            senders: Vec::new(),
            tasks: Vec::new(),
            sealed: Vec::new(),
            rows: 0,
            next: 0,
        }
    }

    pub(crate) async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let wanted = (self.rows / ROWS_PER_EXTRA_WRITER + 1).min(self.max_writers);
        while self.senders.len() < wanted {
            self.start_writer();
        }
        let start = self.rows as u64;
        self.rows += batch.num_rows();
        let index = self.next % self.senders.len();
        self.next += 1;
        if self.senders[index].send((start, batch)).await.is_err() {
            // The writer stopped: its task holds the error.
            let task = self.tasks.swap_remove(index);
            self.senders.swap_remove(index);
            return match task.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(FreshetError::Internal("a file writer stopped early".into())),
                Err(e) => Err(FreshetError::Internal(format!("a file writer failed: {e}"))),
            };
        }
        Ok(())
    }

    fn start_writer(&mut self) {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<(u64, RecordBatch)>(2);
        let mut writer = RollingWriter::new(self.template.clone());
        self.tasks.push(tokio::spawn(async move {
            while let Some((start, batch)) = receiver.recv().await {
                writer.write_at(&batch, start).await?;
            }
            writer.finish().await
        }));
        self.senders.push(sender);
    }

    /// Ends the input of the writers started so far, which finish their files while the
    /// caller goes on; later rows start new writers.
    pub(crate) fn seal(&mut self) {
        self.senders.clear();
        self.sealed.append(&mut self.tasks);
    }

    /// Waits for every writer to close its last file; returns all files written and where
    /// each row went.
    pub(crate) async fn finish(mut self) -> Result<Written> {
        self.seal();
        let mut files = Vec::new();
        let mut placed = Vec::new();
        let mut first_error = None;
        for task in self.sealed.drain(..) {
            match task.await {
                Ok(Ok(written)) => {
                    files.extend(written.files);
                    placed.extend(written.placements.runs);
                }
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(e) => {
                    first_error = first_error.or(Some(FreshetError::Internal(format!("a file writer failed: {e}"))))
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(Written {
                files,
                placements: Placements::new(placed),
            }),
        }
    }
}
