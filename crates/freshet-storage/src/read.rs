//! Reading a table's files: Parquet data with deletion vectors applied and positions attached.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array, UInt64Array};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use datafusion::physical_optimizer::pruning::PruningPredicate;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use roaring::RoaringTreemap;

use freshet_common::{FreshetError, Result};

use crate::manifest::{GeneratedRows, RowGenerator};
use crate::prune::kept_row_groups;

/// Rows per read batch.
pub(crate) const READ_BATCH_ROWS: usize = 8192;

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
    /// The scan's filters, to skip row groups whose statistics rule every row out.
    pub pruning: Option<Arc<PruningPredicate>>,
    /// Set when the rows are made by the table's generator rather than read from `path`.
    pub generated: Option<GeneratedRead>,
}

/// Generated rows to read ([`GeneratedRows`]) and the generator the table has registered.
#[derive(Debug, Clone)]
pub(crate) struct GeneratedRead {
    /// The table's name, for errors.
    pub table: String,
    pub rows: GeneratedRows,
    /// How many rows.
    pub count: u64,
    pub generator: Option<Arc<dyn RowGenerator>>,
}

/// Streams the rows of one Parquet file.
pub(crate) async fn read_file(
    store: Arc<dyn ObjectStore>,
    read: FileRead,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    if let Some(generated) = &read.generated {
        return read_generated(&read, generated);
    }
    let reader = StoreFileReader {
        store,
        path: read.path.clone(),
        size: read.bytes,
    };
    let path = read.path.clone();
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| FreshetError::corrupt(&path, e))?;
    let mask = match &read.projection {
        Some(indices) => ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied()),
        None => ProjectionMask::all(),
    };
    // The row groups read, with the position of their first row and their row count.
    let row_groups = builder.metadata().row_groups();
    let mut starts = Vec::with_capacity(row_groups.len());
    let mut start = 0u64;
    for row_group in row_groups {
        let rows = u64::try_from(row_group.num_rows()).unwrap_or(0);
        starts.push((start, rows));
        start += rows;
    }
    let kept = read
        .pruning
        .as_ref()
        .and_then(|predicate| kept_row_groups(predicate, builder.metadata(), builder.schema()));
    let mut spans: std::collections::VecDeque<(u64, u64)> = match &kept {
        Some(kept) => kept.iter().filter_map(|&i| starts.get(i).copied()).collect(),
        None => starts.into_iter().collect(),
    };
    if let Some(kept) = kept {
        if kept.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        builder = builder.with_row_groups(kept);
    }
    let stream = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| FreshetError::corrupt(&path, e))?;
    let out = stream
        .map_err(move |e| FreshetError::corrupt(&path, e))
        .map(move |batch| {
            let batch = batch?;
            // A batch holds rows of one row group (the reader reads them one at a time), so
            // its first row's position is where the current row group's unread rows start.
            let rows = batch.num_rows() as u64;
            let first = loop {
                match spans.front_mut() {
                    Some((_, 0)) => {
                        spans.pop_front();
                    }
                    Some((start, left)) if *left >= rows => {
                        let first = *start;
                        *start += rows;
                        *left -= rows;
                        break first;
                    }
                    _ => {
                        return Err(FreshetError::corrupt(
                            &read.path,
                            "a batch of rows does not fit the row groups read",
                        ));
                    }
                }
            };
            shape_batch(&read, batch, first)
        })
        .try_filter(|b| futures::future::ready(b.num_rows() > 0));
    Ok(out.boxed())
}

/// Rows generated at once when generated rows are read.
const GENERATED_CHUNK_ROWS: u64 = 1 << 16;

/// Makes generated rows again, shaped as the rows of a file (projected, with deletes applied
/// and positions attached when asked), a chunk at a time.
fn read_generated(read: &FileRead, generated: &GeneratedRead) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let first = generated.rows.first;
    let error = {
        let (table, at) = (
            generated.table.clone(),
            format!("generated rows {first}..{}", first + generated.count),
        );
        move |reason: String| FreshetError::BadSourceData {
            table: table.clone(),
            at: at.clone(),
            reason,
        }
    };
    let generator = generated.generator.clone().ok_or_else(|| {
        error(
            "the table's generator is not open (its connector table was not restored), so its rows cannot be made"
                .into(),
        )
    })?;
    if generator.describe() != generated.rows.generator {
        return Err(error(format!(
            "they were generated with other options or columns ({}) than the table's generator has now ({})",
            generated.rows.generator,
            generator.describe()
        )));
    }
    let (read, rows, count) = (read.clone(), generated.rows.clone(), generated.count);
    let chunks = (0..count.div_ceil(GENERATED_CHUNK_ROWS)).map(move |chunk| {
        let position = chunk * GENERATED_CHUNK_ROWS;
        let wanted = GENERATED_CHUNK_ROWS.min(count - position);
        let at = GeneratedRows {
            first: rows.first + position,
            ..rows.clone()
        };
        let mut made = 0;
        let mut out = Vec::new();
        for batch in generator.generate(&at, wanted)? {
            let batch_rows = batch.num_rows() as u64;
            let batch = match &read.projection {
                Some(indices) => batch
                    .project(indices)
                    .map_err(|e| error(format!("the generated rows do not have the table's columns: {e}")))?,
                None => batch,
            };
            out.push(shape_batch(&read, batch, position + made)?);
            made += batch_rows;
        }
        if made != wanted {
            return Err(error(format!("the generator made {made} rows of {wanted}")));
        }
        Ok(futures::stream::iter(out.into_iter().map(Ok)))
    });
    Ok(futures::stream::iter(chunks)
        .try_flatten()
        .try_filter(|b| futures::future::ready(b.num_rows() > 0))
        .boxed())
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
