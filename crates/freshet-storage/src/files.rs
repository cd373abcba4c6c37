//! Reading and writing the Parquet files of a table.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array, UInt64Array};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::object_store::buffered::BufWriter;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use datafusion::parquet::arrow::{AsyncArrowWriter, ProjectionMask};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use datafusion::parquet::file::properties::WriterProperties;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use roaring::RoaringTreemap;

use freshet_common::{FreshetError, Result};

use crate::layout::{FileKind, new_file_name, table_file};
use crate::manifest::ChangeFile;

/// Rows per read batch.
pub(crate) const READ_BATCH_ROWS: usize = 8192;

/// Writes rows into a sequence of Parquet files, starting a new file every `max_rows` rows.
pub(crate) struct RollingWriter {
    store: Arc<dyn ObjectStore>,
    table_dir: Path,
    kind: FileKind,
    schema: SchemaRef,
    properties: WriterProperties,
    max_rows: usize,
    current: Option<(String, AsyncArrowWriter<BufWriter>, usize)>,
    finished: Vec<ChangeFile>,
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
        }
    }

    /// Appends rows; the batch must have the writer's schema.
    pub(crate) async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                let name = new_file_name(self.kind);
                let path = table_file(&self.table_dir, &name);
                let sink = BufWriter::new(self.store.clone(), path.clone());
                let writer = AsyncArrowWriter::try_new(sink, self.schema.clone(), Some(self.properties.clone()))
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
                .await
                .map_err(|e| parquet_write_error(&self.table_dir, name, e))?;
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
            let mut writer = writer;
            writer
                .finish()
                .await
                .map_err(|e| parquet_write_error(&self.table_dir, &name, e))?;
            let bytes = writer.bytes_written() as u64;
            self.finished.push(ChangeFile {
                path: name,
                rows: rows as u64,
                bytes,
            });
        }
        Ok(())
    }

    /// Closes the last file and returns all files written.
    pub(crate) async fn finish(mut self) -> Result<Vec<ChangeFile>> {
        self.finish_current().await?;
        Ok(self.finished)
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

/// What to read of one file.
#[derive(Debug, Clone)]
pub(crate) struct FileRead {
    /// Absolute path in the store.
    pub path: Path,
    /// File size, saving a HEAD request.
    pub bytes: u64,
    /// Column indices of the table to read; `None` reads all.
    pub projection: Option<Vec<usize>>,
    /// The table's schema projected by `projection`: the schema of the batches returned.
    pub schema: SchemaRef,
    /// Positions to skip.
    pub deletes: Option<Arc<RoaringTreemap>>,
    /// When set, two columns are appended: this file index (UInt32) and the row position in
    /// the file (UInt64), so that a row can be deleted by position later.
    pub positions: Option<u32>,
}

/// Streams the rows of one Parquet file.
pub(crate) async fn read_file(
    store: Arc<dyn ObjectStore>,
    read: FileRead,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let reader = StoreFileReader {
        store,
        path: read.path.clone(),
        size: read.bytes,
    };
    let path = read.path.clone();
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| FreshetError::corrupt(&path, e))?;
    let mask = match &read.projection {
        Some(indices) => ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied()),
        None => ProjectionMask::all(),
    };
    let stream = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| FreshetError::corrupt(&path, e))?;
    let mut position: u64 = 0;
    let out = stream
        .map_err(move |e| FreshetError::corrupt(&path, e))
        .map(move |batch| {
            let batch = batch?;
            let first = position;
            position += batch.num_rows() as u64;
            shape_batch(&read, batch, first)
        })
        .try_filter(|b| futures::future::ready(b.num_rows() > 0));
    Ok(out.boxed())
}

/// Gives a batch read from a file the table's (projected) schema, drops deleted rows and adds
/// positions when asked.
fn shape_batch(read: &FileRead, batch: RecordBatch, first: u64) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    let data_columns = read.schema.fields().len() - if read.positions.is_some() { 2 } else { 0 };
    if columns.len() != data_columns {
        return Err(FreshetError::corrupt(
            &read.path,
            format!("expected {data_columns} columns, found {}", columns.len()),
        ));
    }
    if let Some(file_index) = read.positions {
        columns.push(Arc::new(UInt32Array::from_value(file_index, batch.num_rows())));
        columns.push(Arc::new(UInt64Array::from_iter_values(
            first..first + batch.num_rows() as u64,
        )));
    }
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    let shaped = RecordBatch::try_new_with_options(read.schema.clone(), columns, &options)
        .map_err(|e| FreshetError::corrupt(&read.path, format!("columns do not match the table: {e}")))?;
    match &read.deletes {
        Some(deletes) if deletes.range_cardinality(first..first + batch.num_rows() as u64) > 0 => {
            let keep: BooleanArray = (first..first + batch.num_rows() as u64)
                .map(|p| Some(!deletes.contains(p)))
                .collect();
            filter_record_batch(&shaped, &keep)
                .map_err(|e| FreshetError::Internal(format!("cannot filter deleted rows: {e}")))
        }
        _ => Ok(shaped),
    }
}

/// Reads a deletion vector.
pub(crate) async fn read_deletes(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<RoaringTreemap> {
    let bytes = store
        .get(path)
        .await
        .map_err(|e| FreshetError::storage(path, e))?
        .bytes()
        .await
        .map_err(|e| FreshetError::storage(path, e))?;
    RoaringTreemap::deserialize_from(bytes.as_ref()).map_err(|e| FreshetError::corrupt(path, e))
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

/// Reads a Parquet file of known size from the object store.
struct StoreFileReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

/// Bytes fetched with the footer, so that small files need one request for their metadata.
const FOOTER_PREFETCH: usize = 64 * 1024;

impl AsyncFileReader for StoreFileReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, datafusion::parquet::errors::Result<Bytes>> {
        Box::pin(async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        })
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Vec<Bytes>>> {
        Box::pin(async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, datafusion::parquet::errors::Result<Arc<ParquetMetaData>>> {
        Box::pin(async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        })
    }
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
    senders: Vec<tokio::sync::mpsc::Sender<RecordBatch>>,
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<ChangeFile>>>>,
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
            rows: 0,
            next: 0,
        }
    }

    pub(crate) async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let wanted = (self.rows / ROWS_PER_EXTRA_WRITER + 1).min(self.max_writers);
        while self.senders.len() < wanted {
            self.start_writer();
        }
        self.rows += batch.num_rows();
        let index = self.next % self.senders.len();
        self.next += 1;
        if self.senders[index].send(batch).await.is_err() {
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
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<RecordBatch>(2);
        let mut writer = RollingWriter::new(self.template.clone());
        self.tasks.push(tokio::spawn(async move {
            while let Some(batch) = receiver.recv().await {
                writer.write(&batch).await?;
            }
            writer.finish().await
        }));
        self.senders.push(sender);
    }

    /// Waits for every writer to close its last file; returns all files written.
    pub(crate) async fn finish(mut self) -> Result<Vec<ChangeFile>> {
        self.senders.clear();
        let mut files = Vec::new();
        let mut first_error = None;
        for task in self.tasks.drain(..) {
            match task.await {
                Ok(Ok(written)) => files.extend(written),
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(e) => {
                    first_error = first_error.or(Some(FreshetError::Internal(format!("a file writer failed: {e}"))))
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(files),
        }
    }
}
