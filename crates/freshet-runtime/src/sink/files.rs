//! The `filesystem` sink: each epoch's rows become files of the table's format in its directory.
//!
//! A file is written under a hidden name (`.part-<uuid>.<ext>.<job>.inprogress`, which readers
//! of the directory — Freshet's own source included — skip) and synced, and the directory
//! synced; it is closed when it reaches `sink.rolling-policy.file-size` and at the end of every
//! epoch. The files stay hidden (staged) until the job has committed the epoch that wrote them:
//! the job's progress, written atomically, names the input versions processed and the staged
//! files, and only then are they renamed into place (`part-<uuid>.<ext>`, [`FileSink::publish`])
//! and the directory synced again. A reader never sees a partial file or the output of an epoch
//! that will be written again; after a crash, a resumed job renames the files its committed
//! progress names and deletes its other hidden files ([`FileSink::recover`]), then processes
//! the inputs from the committed versions: each row reaches the directory exactly once.

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
    /// The job writing: its id marks its hidden files, so that a resumed job finds its own.
    job: String,
    /// Files written under hidden names, waiting for the epoch's commit (target names).
    staged: std::sync::Mutex<Vec<String>>,
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
            job: String::from("job"),
            staged: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Marks the sink's files as the job `job`'s.
    pub fn set_job(&mut self, job: &str) {
        self.job = job.to_string();
    }

    /// The files written since the last call, still hidden: the job commits them with its
    /// progress, then [`FileSink::publish`]es them.
    pub fn take_staged(&self) -> Vec<String> {
        std::mem::take(&mut *self.staged.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Renames staged files (target names) into place and syncs the directory. A file already
    /// in place (published before a crash) is left as it is.
    pub async fn publish(&self, files: &[String]) -> Result<()> {
        let (dir, job, files) = (self.dir.clone(), self.job.clone(), files.to_vec());
        let result = tokio::task::spawn_blocking(move || publish_files(&dir, &job, &files))
            .await
            .map_err(|e| FreshetError::Internal(format!("file sink task: {e}")))?;
        result.map_err(|(what, e)| self.failed(&what, e))
    }

    /// After a restart: publishes the files the job's committed progress names, and deletes
    /// the job's other hidden files (written by an epoch that never committed, whose rows the
    /// job writes again).
    pub async fn recover(&self, committed: &[String]) -> Result<()> {
        self.publish(committed).await?;
        let (dir, suffix) = (self.dir.clone(), format!(".{}.inprogress", self.job));
        let result = tokio::task::spawn_blocking(move || -> std::result::Result<usize, Failure> {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Ok(0);
            };
            let mut removed = 0;
            for entry in entries {
                let entry = entry.map_err(io("listing the directory"))?;
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with('.') && name.ends_with(&suffix) {
                    std::fs::remove_file(entry.path()).map_err(io("removing an uncommitted file"))?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| FreshetError::Internal(format!("file sink task: {e}")))?;
        let removed = result.map_err(|(what, e)| self.failed(&what, e))?;
        if removed > 0 {
            tracing::info!(table = %self.table, files = removed, "files of an uncommitted epoch removed");
        }
        Ok(())
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
            job: self.job.clone(),
        };
        let result = tokio::task::spawn_blocking(move || sink.write_files(&batch))
            .await
            .map_err(|e| FreshetError::Internal(format!("file sink task: {e}")))?;
        let written = result.map_err(|(what, e)| self.failed(&what, e))?;
        self.staged.lock().unwrap_or_else(|p| p.into_inner()).extend(written);
        Ok(count)
    }
}

/// What the blocking task needs.
struct FileSinkJob {
    dir: PathBuf,
    format: FileFormat,
    file_size: u64,
    job: String,
}

/// The hidden name of a staged file.
fn hidden_name(target: &str, job: &str) -> String {
    format!(".{target}.{job}.inprogress")
}

fn publish_files(dir: &std::path::Path, job: &str, files: &[String]) -> std::result::Result<(), Failure> {
    if files.is_empty() {
        return Ok(());
    }
    for target in files {
        let hidden = dir.join(hidden_name(target, job));
        if hidden.exists() {
            std::fs::rename(&hidden, dir.join(target)).map_err(io("placing a file"))?;
        } else if !dir.join(target).exists() {
            return Err(other(
                "placing a file",
                format!("{target} was staged and committed but is gone"),
            ));
        }
    }
    // The renames are durable once the directory is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the directory"))
}

type Failure = (String, std::io::Error);

fn io(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| (what.to_string(), e)
}

fn other(what: &str, e: impl std::fmt::Display) -> Failure {
    (what.to_string(), std::io::Error::other(e.to_string()))
}

impl FileSinkJob {
    /// Writes the rows into staged files; returns their target names.
    fn write_files(&self, batch: &RecordBatch) -> std::result::Result<Vec<String>, Failure> {
        std::fs::create_dir_all(&self.dir).map_err(io("creating the directory"))?;
        let mut offset = 0;
        let mut written = Vec::new();
        while offset < batch.num_rows() {
            let (end, target) = self.write_file(batch, offset)?;
            offset = end;
            written.push(target);
        }
        // The staged files' names are durable once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory"))?;
        Ok(written)
    }

    /// Writes rows from `offset` into one staged file, until the file reaches its size or the
    /// rows end; returns where it stopped and the file's target name.
    fn write_file(&self, batch: &RecordBatch, mut offset: usize) -> std::result::Result<(usize, String), Failure> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let extension = match self.format {
            FileFormat::Json => "json",
            FileFormat::Csv(_) => "csv",
            FileFormat::Parquet => "parquet",
        };
        let target = format!("part-{id}.{extension}");
        let hidden = self.dir.join(hidden_name(&target, &self.job));
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
        Ok((offset, target))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn sink(dir: &std::path::Path) -> FileSink {
        let options = FilesystemOptions {
            path: dir.to_path_buf(),
            format: FileFormat::Json,
            monitor_interval: None,
            ignore_parse_errors: false,
            fail_on_missing_field: false,
            file_size: 1 << 20,
        };
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let mut sink = FileSink::new("out", &options, schema, vec![0]).unwrap();
        sink.set_job("j1");
        sink
    }

    fn batch(ids: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(ids))]).unwrap()
    }

    /// The files a reader of the directory sees (hidden ones left out).
    fn visible(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn files_appear_only_once_their_epoch_commits_and_a_restart_settles_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path());
        sink.write(&batch(vec![1, 2])).await.unwrap();
        assert!(visible(dir.path()).is_empty(), "staged, not yet in place");
        let committed = sink.take_staged();
        assert_eq!(committed.len(), 1);
        // An epoch that commits after the crash is never told: its files are staged only.
        sink.write(&batch(vec![3])).await.unwrap();
        let uncommitted = sink.take_staged();
        // The restarted job: the committed epoch's file goes in place, the other away.
        let restarted = self::sink(dir.path());
        restarted.recover(&committed).await.unwrap();
        assert_eq!(visible(dir.path()), committed);
        let all: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(all.len(), 1, "the uncommitted {uncommitted:?} is gone: {all:?}");
        // Publishing again (a crash after the renames) changes nothing.
        restarted.recover(&committed).await.unwrap();
        assert_eq!(visible(dir.path()), committed);
        let text = std::fs::read_to_string(dir.path().join(&committed[0])).unwrap();
        assert_eq!(text.lines().count(), 2);
    }
}
