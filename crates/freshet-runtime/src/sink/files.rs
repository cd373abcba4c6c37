//! The `filesystem` sink: each epoch's rows become files of the table's format in its directory.
//!
//! A file is written under a hidden name (`.part-<uuid>.inprogress`, which readers of the
//! directory — Freshet's own source included — skip), synced, and renamed into place
//! (`part-<uuid>.<ext>`), then the directory is synced: a reader never sees a partial file, and
//! a file in place survives a power loss. A file is closed when it reaches
//! `sink.rolling-policy.file-size` and at the end of every epoch.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;

use freshet_common::{FreshetError, Result};

use crate::connector::{FileFormat, FilesystemOptions};
use crate::source::rename_fields;

/// Rows written to a file between checks of its size.
const SLICE_ROWS: usize = 1_024;

/// Writes a table's rows as files of its format.
#[derive(Debug)]
pub struct FileSink {
    table: String,
    dir: PathBuf,
    format: FileFormat,
    file_size: u64,
    /// The columns written, named as the data names them.
    schema: SchemaRef,
    /// Where each written column is among the table's columns.
    positions: Vec<usize>,
}

impl FileSink {
    /// A sink into the directory of a filesystem table; `schema` and `positions` are its
    /// physical columns ([`crate::Source::data_columns`]).
    pub fn new(table: &str, options: &FilesystemOptions, schema: SchemaRef, positions: Vec<usize>) -> Result<Self> {
        if options.path.is_file() {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{table}\": the filesystem sink writes files into a directory, and 'path' is a file"
            )));
        }
        Ok(Self {
            table: table.to_string(),
            dir: options.path.clone(),
            format: options.format.clone(),
            file_size: options.file_size,
            schema,
            positions,
        })
    }

    /// The filesystem table written.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> FreshetError {
        FreshetError::BadSourceData {
            table: self.table.clone(),
            at: format!("directory {}", self.dir.display()),
            reason: format!("{what}: {e}"),
        }
    }

    /// Writes rows (the table's columns), returning how many.
    pub async fn write(&self, rows: &RecordBatch) -> Result<u64> {
        let columns: Vec<ArrayRef> = self
            .positions
            .iter()
            .zip(self.schema.fields())
            .map(|(&i, field)| rename_fields(rows.column(i).clone(), field.data_type()))
            .collect::<Result<_>>()?;
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| FreshetError::Internal(format!("table \"{}\": {e}", self.table)))?;
        let count = batch.num_rows() as u64;
        let sink = FileSinkJob {
            dir: self.dir.clone(),
            format: self.format.clone(),
            file_size: self.file_size,
        };
        let result = tokio::task::spawn_blocking(move || sink.write_files(&batch))
            .await
            .map_err(|e| FreshetError::Internal(format!("file sink task: {e}")))?;
        result.map_err(|(what, e)| self.failed(&what, e))?;
        Ok(count)
    }
}

/// What the blocking task needs.
struct FileSinkJob {
    dir: PathBuf,
    format: FileFormat,
    file_size: u64,
}

type Failure = (String, std::io::Error);

fn io(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| (what.to_string(), e)
}

fn other(what: &str, e: impl std::fmt::Display) -> Failure {
    (what.to_string(), std::io::Error::other(e.to_string()))
}

impl FileSinkJob {
    fn write_files(&self, batch: &RecordBatch) -> std::result::Result<(), Failure> {
        std::fs::create_dir_all(&self.dir).map_err(io("creating the directory"))?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            offset = self.write_file(batch, offset)?;
        }
        // The renames are durable once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory"))?;
        Ok(())
    }

    /// Writes rows from `offset` into one file, until the file reaches its size or the rows
    /// end; returns where it stopped.
    fn write_file(&self, batch: &RecordBatch, mut offset: usize) -> std::result::Result<usize, Failure> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let hidden = self.dir.join(format!(".part-{id}.inprogress"));
        let extension = match self.format {
            FileFormat::Json => "json",
            FileFormat::Csv(_) => "csv",
            FileFormat::Parquet => "parquet",
        };
        let target = self.dir.join(format!("part-{id}.{extension}"));
        let file = File::create(&hidden).map_err(io("creating a file"))?;
        let written = Arc::new(AtomicU64::new(0));
        let out = Counting {
            inner: BufWriter::new(file),
            bytes: written.clone(),
        };
        let mut writer = Writer::new(&self.format, out, batch.schema())?;
        while offset < batch.num_rows() {
            let length = SLICE_ROWS.min(batch.num_rows() - offset);
            writer.write(&batch.slice(offset, length))?;
            offset += length;
            let buffered = match &writer {
                Writer::Parquet(w) => w.in_progress_size() as u64,
                _ => 0,
            };
            if written.load(Ordering::Relaxed) + buffered >= self.file_size {
                break;
            }
        }
        let file = writer.finish()?;
        file.sync_all().map_err(io("syncing a file"))?;
        drop(file);
        std::fs::rename(&hidden, &target).map_err(io("placing a file"))?;
        Ok(offset)
    }
}

/// A writer of one format.
enum Writer {
    Json(LineDelimitedWriter<Counting>),
    Csv(datafusion::arrow::csv::Writer<Counting>),
    Parquet(ArrowWriter<Counting>),
}

impl Writer {
    fn new(format: &FileFormat, out: Counting, schema: SchemaRef) -> std::result::Result<Self, Failure> {
        Ok(match format {
            FileFormat::Json => Writer::Json(LineDelimitedWriter::new(out)),
            FileFormat::Csv(options) => {
                let builder = CsvWriterBuilder::new()
                    .with_header(false)
                    .with_delimiter(options.delimiter)
                    .with_quote(options.quote);
                Writer::Csv(
                    match &options.null_literal {
                        Some(null) => builder.with_null(null.clone()),
                        None => builder,
                    }
                    .build(out),
                )
            }
            FileFormat::Parquet => {
                Writer::Parquet(ArrowWriter::try_new(out, schema, None).map_err(|e| other("starting a file", e))?)
            }
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> std::result::Result<(), Failure> {
        match self {
            Writer::Json(w) => w.write(batch).map_err(|e| other("writing", e)),
            Writer::Csv(w) => w.write(batch).map_err(|e| other("writing", e)),
            Writer::Parquet(w) => w.write(batch).map_err(|e| other("writing", e)),
        }
    }

    fn finish(self) -> std::result::Result<File, Failure> {
        let out = match self {
            Writer::Json(mut w) => {
                w.finish().map_err(|e| other("finishing a file", e))?;
                w.into_inner()
            }
            Writer::Csv(w) => w.into_inner(),
            Writer::Parquet(w) => w.into_inner().map_err(|e| other("finishing a file", e))?,
        };
        out.inner
            .into_inner()
            .map_err(|e| (String::from("flushing a file"), e.into_error()))
    }
}

/// Counts the bytes written through it.
struct Counting {
    inner: BufWriter<File>,
    bytes: Arc<AtomicU64>,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
