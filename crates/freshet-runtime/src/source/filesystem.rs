//! The `filesystem` source: a file, or the files of a directory, each read whole once (as in
//! Flink, a file is complete when it appears: writers place files atomically, by rename).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::compute::cast;
use datafusion::arrow::csv::ReaderBuilder as CsvReaderBuilder;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use freshet_common::{FreshetError, Result};

use super::Position;
use super::json_lines::JsonLines;
use crate::connector::{CsvOptions, FileFormat, FilesystemOptions};
use crate::partitions;

/// Bytes of whole lines decoded at once.
const CHUNK_BYTES: usize = 8 << 20;

#[derive(Debug)]
pub(super) struct FileSource {
    table: String,
    path: PathBuf,
    format: FileFormat,
    /// The columns the source gives, as the data names them.
    schema: SchemaRef,
    /// The columns in the files: `schema` without the partition columns.
    file_schema: SchemaRef,
    /// The partition columns (`PARTITIONED BY`), whose values are in the files' paths.
    partitions: SchemaRef,
    default_partition: String,
    ignore_errors: bool,
    fail_on_missing_field: bool,
}

/// The rows of one file.
pub(super) struct FileRows {
    pub batches: Vec<RecordBatch>,
    pub skipped: u64,
}

impl FileSource {
    /// The source of `table`'s files, decoding the columns of `schema`.
    pub(super) fn new(table: &str, options: &FilesystemOptions, schema: SchemaRef) -> Self {
        let (partitions, files): (Vec<_>, Vec<_>) = schema
            .fields()
            .iter()
            .cloned()
            .partition(|f| options.partition_columns.contains(f.name()));
        Self {
            table: table.to_string(),
            path: options.path.clone(),
            format: options.format.clone(),
            schema,
            file_schema: Arc::new(Schema::new(files)),
            partitions: Arc::new(Schema::new(partitions)),
            default_partition: options.default_partition.clone(),
            ignore_errors: options.ignore_parse_errors,
            fail_on_missing_field: options.fail_on_missing_field,
        }
    }

    fn bad(&self, at: String, reason: impl Into<String>) -> FreshetError {
        FreshetError::BadSourceData {
            table: self.table.clone(),
            at,
            reason: reason.into(),
        }
    }

    /// The files not read yet, in name order. Hidden files (`.name`, `_name`: files being
    /// written by most tools) are left alone.
    pub(super) async fn new_files(&self, position: &Position) -> Result<Vec<PathBuf>> {
        let metadata = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| self.bad(format!("path {}", self.path.display()), e.to_string()))?;
        let mut files = Vec::new();
        if metadata.is_dir() {
            // A partitioned table's files are in its partitions' directories, at any depth.
            let recursive = !self.partitions.fields().is_empty();
            let mut directories = vec![self.path.clone()];
            while let Some(directory) = directories.pop() {
                let listing = |e: std::io::Error| self.bad(format!("directory {}", directory.display()), e.to_string());
                let mut entries = tokio::fs::read_dir(&directory).await.map_err(listing)?;
                while let Some(entry) = entries.next_entry().await.map_err(listing)? {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with('.') || name.starts_with('_') {
                        continue;
                    }
                    match entry.file_type().await {
                        Ok(kind) if kind.is_file() => files.push(entry.path()),
                        Ok(kind) if kind.is_dir() && recursive => directories.push(entry.path()),
                        _ => {}
                    }
                }
            }
            files.sort();
        } else {
            files.push(self.path.clone());
        }
        files.retain(|f| !position.files.iter().any(|done| Path::new(done) == f));
        Ok(files)
    }

    /// Every row of a file.
    pub(super) async fn read(&self, file: &Path) -> Result<FileRows> {
        let bytes = tokio::fs::read(file)
            .await
            .map_err(|e| self.bad(format!("file {}", file.display()), e.to_string()))?;
        let mut rows = match &self.format {
            FileFormat::Json => self.read_json(file, &bytes),
            FileFormat::Csv(options) => self.read_csv(file, &bytes, options),
            FileFormat::Parquet => self.read_parquet(file, bytes),
        }?;
        if !self.partitions.fields().is_empty() {
            let most = rows.batches.iter().map(RecordBatch::num_rows).max().unwrap_or(0);
            let values = partitions::columns_of(
                &self.table,
                &self.path,
                file,
                &self.partitions,
                &self.default_partition,
                most,
            )?;
            rows.batches = rows
                .batches
                .iter()
                .map(|batch| partitions::with_partitions(&self.schema, batch, &self.partitions, &values))
                .collect::<Result<_>>()?;
        }
        Ok(rows)
    }

    fn read_json(&self, file: &Path, bytes: &[u8]) -> Result<FileRows> {
        let lines = JsonLines::new(self.file_schema.clone(), self.ignore_errors, self.fail_on_missing_field);
        let mut rows = FileRows {
            batches: Vec::new(),
            skipped: 0,
        };
        let mut rest = bytes;
        let mut line = 1u64;
        while !rest.is_empty() {
            // Whole lines, up to about CHUNK_BYTES.
            let end = if rest.len() <= CHUNK_BYTES {
                rest.len()
            } else {
                match rest[CHUNK_BYTES..].iter().position(|&b| b == b'\n') {
                    Some(i) => CHUNK_BYTES + i + 1,
                    None => rest.len(),
                }
            };
            let (chunk, after) = rest.split_at(end);
            let decoded = lines.decode(chunk, line).map_err(|bad| {
                let at = match bad.column {
                    Some(column) => format!("file {}, line {}, column {column}", file.display(), bad.line),
                    None => format!("file {}, line {}", file.display(), bad.line),
                };
                self.bad(at, bad.reason)
            })?;
            rows.batches.extend(decoded.batches);
            rows.skipped += decoded.skipped;
            line += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            rest = after;
        }
        Ok(rows)
    }
}

impl FileSource {
    /// CSV rows by position, without a header (Flink's CSV format has none). A bad row is an
    /// error naming its line, or with `ignore_errors` skipped: the file is then decoded again
    /// line by line to find the bad rows (quoted values spanning lines are not split then).
    fn read_csv(&self, file: &Path, bytes: &[u8], options: &CsvOptions) -> Result<FileRows> {
        // `csv.null-literal`: exactly that text reads as NULL.
        let null = match &options.null_literal {
            Some(literal) => Some(
                regex::Regex::new(&format!("^{}$", regex::escape(literal)))
                    .map_err(|e| FreshetError::Internal(format!("csv.null-literal: {e}")))?,
            ),
            None => None,
        };
        let builder = || {
            let builder = CsvReaderBuilder::new(self.file_schema.clone())
                .with_header(false)
                .with_delimiter(options.delimiter)
                .with_quote(options.quote);
            let builder = match &null {
                Some(null) => builder.with_null_regex(null.clone()),
                None => builder,
            };
            if options.allow_comments {
                builder.with_comment(b'#')
            } else {
                builder
            }
        };
        let decode = |bytes: &[u8]| -> std::result::Result<Vec<RecordBatch>, String> {
            let reader = builder().build(Cursor::new(bytes)).map_err(|e| e.to_string())?;
            reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        };
        match decode(bytes) {
            Ok(batches) => Ok(FileRows { batches, skipped: 0 }),
            Err(reason) if !self.ignore_errors => Err(self.bad(format!("file {}", file.display()), reason)),
            Err(_) => {
                let mut rows = FileRows {
                    batches: Vec::new(),
                    skipped: 0,
                };
                for line in bytes.split(|&b| b == b'\n') {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match decode(line) {
                        Ok(batches) => rows.batches.extend(batches),
                        Err(_) => rows.skipped += 1,
                    }
                }
                Ok(rows)
            }
        }
    }

    /// Parquet columns by name, cast to the table's types.
    fn read_parquet(&self, file: &Path, bytes: Vec<u8>) -> Result<FileRows> {
        let at = || format!("file {}", file.display());
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .map_err(|e| self.bad(at(), e.to_string()))?;
        let file_schema = builder.schema().clone();
        let mut indices = Vec::new();
        for field in self.file_schema.fields() {
            let index = file_schema
                .index_of(field.name())
                .map_err(|_| self.bad(at(), format!("the file has no column \"{}\"", field.name())))?;
            indices.push(index);
        }
        let mut sorted = indices.clone();
        sorted.sort_unstable();
        let mask = ProjectionMask::roots(builder.parquet_schema(), sorted.iter().copied());
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| self.bad(at(), e.to_string()))?;
        let mut batches = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| self.bad(at(), e.to_string()))?;
            let columns = self
                .file_schema
                .fields()
                .iter()
                .zip(&indices)
                .map(|(field, index)| {
                    let position = sorted.iter().position(|i| i == index).unwrap_or_default();
                    let column = batch.column(position);
                    if column.data_type() == field.data_type() {
                        Ok(column.clone())
                    } else {
                        cast(column, field.data_type())
                            .map_err(|e| self.bad(at(), format!("column \"{}\": {e}", field.name())))
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            batches.push(
                RecordBatch::try_new(self.file_schema.clone(), columns).map_err(|e| self.bad(at(), e.to_string()))?,
            );
        }
        Ok(FileRows { batches, skipped: 0 })
    }
}
