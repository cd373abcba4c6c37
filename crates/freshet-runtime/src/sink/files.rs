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
use crate::partitions;
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
    /// The partition columns (`PARTITIONED BY`): their indices in `schema`, and their names.
    /// Rows go to their partition's directory (`col=value/`) without those columns.
    partition_indices: Vec<usize>,
    partition_names: Vec<String>,
    default_partition: String,
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
        let partition_indices: Vec<usize> = options
            .partition_columns
            .iter()
            .filter_map(|name| schema.index_of(name).ok())
            .collect();
        Ok(Self {
            table: table.to_string(),
            dir: options.path.clone(),
            format: options.format.clone(),
            file_size: options.file_size,
            partition_names: partition_indices
                .iter()
                .map(|&i| schema.field(i).name().clone())
                .collect(),
            partition_indices,
            default_partition: options.default_partition.clone(),
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
            // The table's directory and its partitions' directories.
            let mut directories = vec![dir];
            let mut removed = 0;
            while let Some(directory) = directories.pop() {
                let Ok(entries) = std::fs::read_dir(&directory) else {
                    continue;
                };
                for entry in entries {
                    let entry = entry.map_err(io("listing the directory"))?;
                    let name = entry.file_name().to_string_lossy().to_string();
                    if name.starts_with('.') && name.ends_with(&suffix) {
                        std::fs::remove_file(entry.path()).map_err(io("removing an uncommitted file"))?;
                        removed += 1;
                    } else if !name.starts_with('.') && entry.file_type().is_ok_and(|t| t.is_dir()) {
                        directories.push(entry.path());
                    }
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
        let parts = self.by_partition(batch)?;
        let sink = FileSinkJob {
            dir: self.dir.clone(),
            format: self.format.clone(),
            file_size: self.file_size,
            job: self.job.clone(),
        };
        let result = tokio::task::spawn_blocking(move || {
            let mut written = Vec::new();
            for (directory, batch) in &parts {
                written.extend(sink.write_files(directory, batch)?);
            }
            Ok(written)
        })
        .await
        .map_err(|e| FreshetError::Internal(format!("file sink task: {e}")))?;
        let written = result.map_err(|(what, e)| self.failed(&what, e))?;
        self.staged.lock().unwrap_or_else(|p| p.into_inner()).extend(written);
        Ok(count)
    }
}

impl FileSink {
    /// The rows of each partition directory (relative; `""` when the table is not partitioned),
    /// without the partition columns.
    fn by_partition(&self, batch: RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        if self.partition_indices.is_empty() {
            return Ok(vec![(String::new(), batch)]);
        }
        let internal =
            |e: datafusion::arrow::error::ArrowError| FreshetError::Internal(format!("table \"{}\": {e}", self.table));
        let keys: Vec<ArrayRef> = self
            .partition_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let directories = partitions::directories(&self.partition_names, &keys, &self.default_partition)?;
        let kept: Vec<usize> = (0..batch.num_columns())
            .filter(|i| !self.partition_indices.contains(i))
            .collect();
        let data = batch.project(&kept).map_err(internal)?;
        let mut rows: std::collections::BTreeMap<&str, Vec<u32>> = std::collections::BTreeMap::new();
        for (row, directory) in directories.iter().enumerate() {
            rows.entry(directory.as_str()).or_default().push(row as u32);
        }
        rows.into_iter()
            .map(|(directory, rows)| {
                let indices = datafusion::arrow::array::UInt32Array::from(rows);
                let part = datafusion::arrow::compute::take_record_batch(&data, &indices).map_err(internal)?;
                Ok((directory.to_string(), part))
            })
            .collect()
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
    let mut directories = std::collections::BTreeSet::new();
    for target in files {
        // A target is a name in the table's directory, or a path in a partition's.
        let path = dir.join(target);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(other("placing a file", format!("{target} is not a file name")));
        };
        let hidden = parent.join(hidden_name(&name.to_string_lossy(), job));
        if hidden.exists() {
            std::fs::rename(&hidden, &path).map_err(io("placing a file"))?;
        } else if !path.exists() {
            return Err(other(
                "placing a file",
                format!("{target} was staged and committed but is gone"),
            ));
        }
        directories.insert(parent.to_path_buf());
    }
    // The renames are durable once the directories are.
    for directory in directories {
        File::open(&directory)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory"))?;
    }
    Ok(())
}

type Failure = (String, std::io::Error);

fn io(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| (what.to_string(), e)
}

fn other(what: &str, e: impl std::fmt::Display) -> Failure {
    (what.to_string(), std::io::Error::other(e.to_string()))
}

impl FileSinkJob {
    /// Writes the rows into staged files in `directory` (relative to the table's; `""` for
    /// itself); returns their target names (paths relative to the table's directory).
    fn write_files(&self, directory: &str, batch: &RecordBatch) -> std::result::Result<Vec<String>, Failure> {
        let dir = self.dir.join(directory);
        let created = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(io("creating the directory"))?;
        let mut offset = 0;
        let mut written = Vec::new();
        while offset < batch.num_rows() {
            let (end, name) = self.write_file(&dir, batch, offset)?;
            offset = end;
            written.push(match directory {
                "" => name,
                directory => format!("{directory}/{name}"),
            });
        }
        // The staged files' names are durable once their directory is, and a new partition's
        // directory once the directories above it are.
        let mut synced = Some(dir.as_path());
        while let Some(directory) = synced {
            File::open(directory)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing the directory"))?;
            synced = directory.parent().filter(|p| created && p.starts_with(&self.dir));
        }
        Ok(written)
    }

    /// Writes rows from `offset` into one staged file in `dir`, until the file reaches its size
    /// or the rows end; returns where it stopped and the file's target name.
    fn write_file(
        &self,
        dir: &std::path::Path,
        batch: &RecordBatch,
        mut offset: usize,
    ) -> std::result::Result<(usize, String), Failure> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let extension = match self.format {
            FileFormat::Json => "json",
            FileFormat::Csv(_) => "csv",
            FileFormat::Parquet => "parquet",
        };
        let target = format!("part-{id}.{extension}");
        let hidden = dir.join(hidden_name(&target, &self.job));
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
            partition_columns: Vec::new(),
            default_partition: crate::connector::DEFAULT_PARTITION.into(),
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

    /// Every file below `dir`, as paths relative to it.
    fn tree(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut directories = vec![dir.to_path_buf()];
        while let Some(directory) = directories.pop() {
            for entry in std::fs::read_dir(&directory).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    directories.push(path);
                } else {
                    out.push(path.strip_prefix(dir).unwrap().to_string_lossy().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_partitioned_sink_stages_and_settles_files_in_each_partition() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("day", DataType::Utf8, true),
        ]));
        let options = FilesystemOptions {
            path: dir.path().to_path_buf(),
            format: FileFormat::Json,
            monitor_interval: None,
            ignore_parse_errors: false,
            fail_on_missing_field: false,
            partition_columns: vec!["day".into()],
            default_partition: crate::connector::DEFAULT_PARTITION.into(),
            file_size: 1 << 20,
        };
        let partitioned = || {
            let mut sink = FileSink::new("out", &options, schema.clone(), vec![0, 1]).unwrap();
            sink.set_job("j1");
            sink
        };
        let rows = |ids: Vec<i64>, days: Vec<Option<&str>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(datafusion::arrow::array::StringArray::from(days)),
                ],
            )
            .unwrap()
        };
        let sink = partitioned();
        sink.write(&rows(vec![1, 2, 3], vec![Some("mon"), Some("tue"), None]))
            .await
            .unwrap();
        let committed = sink.take_staged();
        assert_eq!(committed.len(), 3);
        assert!(
            committed
                .iter()
                .any(|f| f.starts_with("day=__DEFAULT_PARTITION__/part-"))
        );
        sink.write(&rows(vec![4], vec![Some("wed")])).await.unwrap();
        let restarted = partitioned();
        restarted.recover(&committed).await.unwrap();
        // The committed files are in their partitions; the uncommitted epoch's is gone, though
        // its partition's directory stays.
        let files = tree(dir.path());
        assert_eq!(files, {
            let mut c = committed.clone();
            c.sort();
            c
        });
        let monday = committed.iter().find(|f| f.starts_with("day=mon/")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(monday)).unwrap().trim(),
            r#"{"id":1}"#
        );
    }
}
