//! Sources: what a connector has made available, ingested into the connector table's versioned
//! storage together with the position it reached.
//!
//! An ingestion is one transaction: the new rows and, in the version's record, the position
//! after them (for files: the files read). It reads the position from the version it writes on
//! top of, under the table's writer lock, so two ingestions never read the same rows, and a
//! crash before the commit leaves the position where the rows it would have added begin.

mod datagen;
mod filesystem;
mod json_lines;
mod nexmark;

pub use nexmark::NexmarkOptions;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, Int64Array, StructArray};
use datafusion::arrow::compute::kernels::aggregate::max;
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, FieldRef, Fields, SchemaRef};
use datafusion::arrow::datatypes::{Int64Type, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use serde::{Deserialize, Serialize};

use freshet_common::{FreshetError, Result, SharedClock};
use freshet_storage::{GeneratedRows, RowGenerator, Table};

use crate::connector::{Connector, EventTimeOptions};
use datagen::Datagen;
use filesystem::FileSource;

/// Rows one ingestion of a generator adds at most (the next one goes on from there): for
/// Nexmark's events about the 128 MiB of decoded rows an ingestion of files takes. Each
/// ingestion is a commit (files and manifest written and synced): at 2^17 rows, Nexmark's q0
/// over the generator took 1.5–1.9 times the CPU time per event it takes at 2^19.
const MAX_GENERATED_ROWS: u64 = 1 << 19;

/// Bytes of decoded rows after which one ingestion of files stops (at the end of a file) and
/// leaves the rest to the next: what a job holds of its input at once stays bounded however far
/// behind it is.
const MAX_INGEST_BYTES: usize = 128 << 20;

/// How often a job over a generator looks for rows that have come due.
const GENERATOR_POLL: Duration = Duration::from_millis(100);

#[derive(Debug)]
enum Reader {
    Files(FileSource),
    Datagen(Datagen),
    Nexmark(nexmark::Nexmark),
}

/// Where a table's column comes from.
#[derive(Debug, Clone)]
pub enum SourceColumn {
    /// The physical column at this index of the decoded rows.
    Physical(usize),
    /// An expression over the physical columns (a computed column).
    Computed(Arc<dyn PhysicalExpr>),
}

/// A connector table's source: reads the connector and appends to the table.
#[derive(Debug)]
pub struct Source {
    table: String,
    reader: Reader,
    /// The physical columns as the data names them.
    decode: SchemaRef,
    clock: SharedClock,
    /// The physical columns with the table's names (identifiers as the engine normalized them).
    physical: SchemaRef,
    columns: Vec<SourceColumn>,
    /// The table's columns: physical and computed, in the order declared.
    schema: SchemaRef,
    monitor_interval: Option<Duration>,
    skipped: AtomicU64,
    /// Bytes of decoded rows after which an ingestion of files stops ([`MAX_INGEST_BYTES`]).
    max_ingest_bytes: AtomicUsize,
    event_time: Option<EventTime>,
    /// For a generator whose rows are a function of their position, with computed columns
    /// that are too: what its rows depend on besides their positions ([`RowGenerator`]). Its
    /// ingestions then record where their rows start instead of writing them.
    made_on_read: Option<String>,
}

/// A source table's event time: `WATERMARK FOR column AS expression`.
#[derive(Debug, Clone)]
pub struct EventTime {
    /// The event-time column, among the table's columns.
    pub column: usize,
    /// The watermark's expression over the table's columns.
    pub watermark: Arc<dyn PhysicalExpr>,
    /// What becomes of late rows.
    pub options: EventTimeOptions,
}

/// The event time of one ingestion: the watermark it started from, the largest watermark
/// value of the rows it took, and the rows it dropped as late.
#[derive(Debug, Default)]
struct EventTimeStep {
    before: Option<i64>,
    max: Option<i64>,
    late: u64,
}

/// The watermark and late rows of a source table at a version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceProgress {
    /// The watermark (ms since the Unix epoch; `i64::MAX` once a bounded generator has ended),
    /// none before the first row.
    pub watermark_ms: Option<i64>,
    /// Rows dropped for arriving below the watermark.
    pub late_rows: u64,
    /// When rows last came (engine clock, ms).
    pub rows_at_ms: Option<i64>,
}

impl SourceProgress {
    /// What the source had reached at a version of its table.
    pub fn at(snapshot: &freshet_storage::Snapshot) -> Self {
        let position: Option<Position> = snapshot
            .manifest()
            .refresh
            .as_ref()
            .and_then(|record| record.get(POSITION_KEY))
            .and_then(|p| serde_json::from_value(p.clone()).ok());
        match position {
            Some(p) => Self {
                watermark_ms: if p.ended { Some(i64::MAX) } else { p.watermark_ms },
                late_rows: p.late_rows,
                rows_at_ms: p.rows_at_ms,
            },
            None => Self::default(),
        }
    }
}

/// What one ingestion did.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    /// Rows appended.
    pub rows: u64,
    /// The version it wrote on (its rows are the changes from `base` to `version`).
    pub base: u64,
    /// The rows appended, when asked for ([`Source::ingest_keeping_rows`]).
    pub batches: Vec<RecordBatch>,
    /// The table's version after it (unchanged when nothing was new).
    pub version: u64,
    /// Malformed lines skipped (`json.ignore-parse-errors`).
    pub skipped: u64,
    /// Whether the source has ended and all of it is in the table.
    pub finished: bool,
    /// Whether more is available already: the ingestion stopped at its size limit, and the
    /// next one should follow without waiting.
    pub pending: bool,
}

/// The position of a source, kept in the record of the version that reached it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Position {
    /// Files read whole, by their path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Rows generated.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rows: u64,
    /// When a generator started (engine clock, ms): its rate counts from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    /// The source's watermark (ms): the largest value of its `WATERMARK` expression over the
    /// rows ingested so far; none before the first row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    /// Rows dropped so far for arriving below the watermark.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub late_rows: u64,
    /// A bounded generator has produced all its rows: its watermark is +infinity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
    /// When the last rows came (engine clock, ms): a source idle for longer than its
    /// `scan.watermark.idle-timeout` stops holding back a combined watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_at_ms: Option<i64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The key of the version record under which a source keeps its position.
const POSITION_KEY: &str = "source";

impl Source {
    /// The source of `table`. `decode` is the physical columns as the data names them (JSON
    /// keys as written in the DDL), `physical` the same columns as the table names them.
    pub fn new(
        table: &str,
        connector: &Connector,
        decode: SchemaRef,
        physical: SchemaRef,
        columns: Vec<SourceColumn>,
        schema: SchemaRef,
        clock: SharedClock,
    ) -> Result<Self> {
        let (reader, monitor_interval) = match connector {
            Connector::Filesystem(options) => (
                Reader::Files(FileSource::new(table, options, decode.clone())),
                options.monitor_interval,
            ),
            Connector::Datagen(options) => (
                Reader::Datagen(Datagen::new(table, decode.clone(), options.clone())?),
                None,
            ),
            Connector::Nexmark(options) => (
                Reader::Nexmark(nexmark::Nexmark::new(table, decode.clone(), options.clone())?),
                None,
            ),
            Connector::Blackhole | Connector::Print(_) => {
                return Err(FreshetError::InvalidStatement(format!(
                    "table \"{table}\": the '{}' connector is a sink: it cannot be read",
                    connector.name()
                )));
            }
        };
        Ok(Self {
            table: table.to_string(),
            reader,
            decode,
            clock,
            physical,
            columns,
            schema,
            monitor_interval,
            skipped: AtomicU64::new(0),
            max_ingest_bytes: AtomicUsize::new(MAX_INGEST_BYTES),
            event_time: None,
            made_on_read: None,
        })
    }

    /// Whether the table's rows are made again on read rather than written, which takes a
    /// generator whose rows are a function of their position (Nexmark's) and computed columns
    /// that are too (no `now()`, no random numbers). `declared` is the table's columns as the
    /// statement declares them (names, types, computed expressions), `None` when a computed
    /// column is volatile. The engine then registers the source as the table's
    /// [`RowGenerator`].
    pub fn with_rows_made_on_read(mut self, declared: Option<&str>) -> Self {
        self.made_on_read = match (&self.reader, declared) {
            (Reader::Nexmark(generator), Some(declared)) => {
                let options = generator.options();
                // Everything the rows' values depend on but their positions and the time the
                // sequence counts from (recorded with them): not the event count or the rate
                // limit, which only say how many rows come when.
                let what = format!(
                    "nexmark {} {:?} {:?} {} {} {} {} | {declared}",
                    options.rate,
                    options.proportions,
                    options.avg_sizes,
                    options.hot_auctions,
                    options.hot_bidders,
                    options.hot_sellers,
                    options.seed,
                );
                Some(format!("nexmark:{}", &blake3::hash(what.as_bytes()).to_hex()[..16]))
            }
            _ => None,
        };
        self
    }

    /// Whether the table's rows are made again on read ([`Source::with_rows_made_on_read`]).
    pub fn makes_rows_on_read(&self) -> bool {
        self.made_on_read.is_some()
    }

    /// The source with an event time: each ingestion drops (and counts) the rows below the
    /// watermark it starts from, as its options say, and moves the watermark up to the largest
    /// value of the watermark expression over the rows it took.
    pub fn with_event_time(mut self, event_time: EventTime) -> Self {
        self.event_time = Some(event_time);
        self
    }

    /// Whether the source, with an event time, has been idle longer than its
    /// `scan.watermark.idle-timeout` at `now_ms`, as of `progress`.
    pub fn is_idle(&self, progress: &SourceProgress, now_ms: i64) -> bool {
        let Some(timeout) = self.event_time.as_ref().and_then(|e| e.options.idle_timeout) else {
            return false;
        };
        let timeout = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        progress
            .rows_at_ms
            .is_some_and(|at| now_ms.saturating_sub(at) > timeout)
    }

    /// The event time, if the table declares a watermark.
    pub fn event_time(&self) -> Option<&EventTime> {
        self.event_time.as_ref()
    }

    /// The table's columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The physical columns as the data names them (JSON keys as the DDL writes them), and
    /// where each is among the table's columns: what a sink of the same table writes.
    pub fn data_columns(&self) -> (SchemaRef, Vec<usize>) {
        let positions = self
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, SourceColumn::Physical(_)))
            .map(|(i, _)| i)
            .collect();
        (self.decode.clone(), positions)
    }

    /// Whether the source ends: without a monitor interval, a file source is the files there
    /// when it is read; a generator with a number of rows (or a sequence field) ends after them.
    pub fn is_bounded(&self) -> bool {
        match &self.reader {
            Reader::Files(_) => self.monitor_interval.is_none(),
            Reader::Datagen(generator) => generator.total_rows().is_some(),
            Reader::Nexmark(generator) => generator.total_events().is_some(),
        }
    }

    /// Whether the source reads files (whose backlog is finite), rather than generating rows
    /// (an unlimited generator always has more).
    pub fn reads_files(&self) -> bool {
        matches!(self.reader, Reader::Files(_))
    }

    /// How often a monitored directory is listed for new files (`source.monitor-interval`):
    /// the engine ingests it in the background at this interval.
    pub fn monitor_interval(&self) -> Option<Duration> {
        self.monitor_interval
    }

    /// How often a job reading the source looks for new data.
    pub fn poll_interval(&self) -> Option<Duration> {
        match &self.reader {
            Reader::Files(_) => self.monitor_interval,
            Reader::Datagen(_) | Reader::Nexmark(_) => Some(GENERATOR_POLL),
        }
    }

    /// Sets how many bytes of decoded rows one ingestion of files takes at most (it ends at the
    /// end of the file that reaches the limit; the default is 128 MiB): what a job reading a
    /// source that is far ahead holds at once.
    pub fn set_max_ingest_bytes(&self, bytes: usize) {
        self.max_ingest_bytes.store(bytes.max(1), Ordering::Relaxed);
    }

    /// Malformed lines skipped since the engine opened.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Appends what the connector has made available since the table's position, with the new
    /// position, as one version (none when nothing is new).
    pub async fn ingest(&self, table: &Arc<Table>) -> Result<IngestReport> {
        self.ingest_rows(table, false).await
    }

    /// Like [`Source::ingest`], and returns the rows appended too: a job that has processed the
    /// table up to the version this one writes on takes them as its changes rather than reading
    /// them back.
    pub async fn ingest_keeping_rows(&self, table: &Arc<Table>) -> Result<IngestReport> {
        self.ingest_rows(table, true).await
    }

    async fn ingest_rows(&self, table: &Arc<Table>, keep: bool) -> Result<IngestReport> {
        // The table is this stream's log.
        table.compact_for_speed();
        let mut txn = table.begin("INGEST").await?;
        let base = txn.base().version();
        let mut kept = Vec::new();
        let mut position: Position = txn
            .base()
            .manifest()
            .refresh
            .as_ref()
            .and_then(|record| record.get(POSITION_KEY))
            .map(|p| serde_json::from_value(p.clone()))
            .transpose()
            .map_err(|e| FreshetError::corrupt(table.dir().to_string(), format!("source position: {e}")))?
            .unwrap_or_default();
        let mut rows = 0;
        let mut skipped = 0;
        let mut pending = false;
        let mut event_time = EventTimeStep {
            before: position.watermark_ms.map(|w| if position.ended { i64::MAX } else { w }),
            ..EventTimeStep::default()
        };
        let finished;
        match &self.reader {
            Reader::Files(reader) => {
                let new_files = reader.new_files(&position).await?;
                finished = self.is_bounded();
                if new_files.is_empty() {
                    return Ok(IngestReport {
                        base,
                        version: base,
                        finished,
                        ..IngestReport::default()
                    });
                }
                let mut bytes = 0;
                let limit = self.max_ingest_bytes.load(Ordering::Relaxed);
                let count = new_files.len();
                for (n, file) in new_files.into_iter().enumerate() {
                    let read = reader.read(&file).await?;
                    skipped += read.skipped;
                    for batch in read.batches {
                        let batch = self.on_time(self.complete(batch)?, &mut event_time)?;
                        rows += batch.num_rows() as u64;
                        bytes += batch.get_array_memory_size();
                        txn.insert(&batch).await?;
                        if keep {
                            kept.push(batch);
                        }
                    }
                    position.files.push(file.display().to_string());
                    if bytes >= limit && n + 1 < count {
                        pending = true;
                        break;
                    }
                }
            }
            Reader::Datagen(_) | Reader::Nexmark(_) => {
                let now = self.clock.now_ms();
                // The first ingestion starts the generator's clock (or Nexmark's declared base
                // time) and records it: its rate counts from there.
                let first = position.started_at_ms.is_none();
                let (start, due, total) = match &self.reader {
                    Reader::Datagen(generator) => {
                        let start = *position.started_at_ms.get_or_insert(now);
                        (start, generator.rows_due(now - start), generator.total_rows())
                    }
                    Reader::Nexmark(generator) => {
                        let options = generator.options();
                        let start = *position
                            .started_at_ms
                            .get_or_insert(options.base_time_ms.unwrap_or(now));
                        let due = if options.rate_limited {
                            (options.rate as u128 * (now - start).max(0) as u128 / 1_000) as u64
                        } else {
                            u64::MAX
                        };
                        (start, due, generator.total_events())
                    }
                    Reader::Files(_) => return Err(FreshetError::Internal("a file source generating rows".into())),
                };
                let available = due.min(total.unwrap_or(u64::MAX));
                let due = available.min(position.rows.saturating_add(MAX_GENERATED_ROWS));
                pending = available > due;
                finished = total.is_some_and(|total| due >= total);
                if due <= position.rows && !first {
                    return Ok(IngestReport {
                        base,
                        version: base,
                        finished,
                        ..IngestReport::default()
                    });
                }
                let batches = match &self.reader {
                    // Datagen stamps rows with the time they are generated; Nexmark's event
                    // time follows the event number from the base time.
                    Reader::Datagen(generator) => generator.generate(position.rows, due, now)?,
                    Reader::Nexmark(generator) => generator.generate(position.rows, due, start)?,
                    Reader::Files(_) => Vec::new(),
                };
                let mut taken = Vec::with_capacity(batches.len());
                let mut all_on_time = true;
                for batch in batches {
                    let generated = batch.num_rows();
                    let batch = self.on_time(self.complete(batch)?, &mut event_time)?;
                    all_on_time &= batch.num_rows() == generated;
                    rows += batch.num_rows() as u64;
                    taken.push(batch);
                }
                match &self.made_on_read {
                    // The rows are exactly what the generator makes again: only where they
                    // start is recorded.
                    Some(generator) if all_on_time && rows == due - position.rows => {
                        let made = GeneratedRows {
                            first: position.rows,
                            origin_ms: start,
                            generator: generator.clone(),
                        };
                        txn.insert_generated(made, rows)?;
                    }
                    _ => {
                        for batch in &taken {
                            txn.insert(batch).await?;
                        }
                    }
                }
                if keep {
                    kept = taken;
                }
                position.rows = due;
                position.ended |= finished;
            }
        }
        if let Some(max) = event_time.max {
            position.watermark_ms = Some(position.watermark_ms.map_or(max, |w| w.max(max)));
        }
        position.late_rows += event_time.late;
        if rows > 0 {
            position.rows_at_ms = Some(self.clock.now_ms());
        }
        let record = serde_json::json!({ POSITION_KEY: position });
        txn.set_refresh(record);
        let committed = txn.commit().await?;
        self.skipped.fetch_add(skipped, Ordering::Relaxed);
        Ok(IngestReport {
            rows,
            base,
            batches: kept,
            version: committed.version,
            skipped,
            // A bounded source with more to read has not finished.
            finished: finished && !pending,
            pending,
        })
    }

    /// The rows of a batch that are not late, with the watermark values of those taken
    /// recorded in `step`.
    fn on_time(&self, batch: RecordBatch, step: &mut EventTimeStep) -> Result<RecordBatch> {
        let Some(event_time) = &self.event_time else {
            return Ok(batch);
        };
        let rows = batch.num_rows();
        let millis = |array: ArrayRef| -> Result<Int64Array> {
            let array = cast(&array, &DataType::Timestamp(TimeUnit::Millisecond, None))
                .and_then(|a| cast(&a, &DataType::Int64))
                .map_err(|e| FreshetError::Internal(format!("table \"{}\": event time: {e}", self.table)))?;
            Ok(array.as_primitive::<Int64Type>().clone())
        };
        let times = millis(batch.column(event_time.column).clone())?;
        let kept = match (step.before, event_time.options.allowed_lateness_ms()) {
            (Some(watermark), Some(lateness)) => {
                let bound = watermark.saturating_sub(lateness);
                let keep: BooleanArray = times.iter().map(|t| Some(t.is_none_or(|t| t >= bound))).collect();
                let late = rows - keep.true_count();
                if late == 0 {
                    batch
                } else {
                    step.late += late as u64;
                    filter_record_batch(&batch, &keep).map_err(|e| FreshetError::Internal(e.to_string()))?
                }
            }
            _ => batch,
        };
        let values = event_time.watermark.evaluate(&kept)?.into_array(kept.num_rows())?;
        if let Some(max) = max(&millis(values)?) {
            step.max = Some(step.max.map_or(max, |m| m.max(max)));
        }
        Ok(kept)
    }

    /// The table's row from decoded physical columns: renamed as the table names them, with
    /// the computed columns evaluated.
    fn complete(&self, decoded: RecordBatch) -> Result<RecordBatch> {
        let physical: Vec<ArrayRef> = decoded
            .columns()
            .iter()
            .zip(self.physical.fields())
            .map(|(array, field)| rename_fields(array.clone(), field.data_type()))
            .collect::<Result<_>>()?;
        let physical = RecordBatch::try_new(self.physical.clone(), physical)
            .map_err(|e| FreshetError::Internal(format!("table \"{}\": {e}", self.table)))?;
        let columns = self
            .columns
            .iter()
            .map(|column| match column {
                SourceColumn::Physical(i) => Ok(physical.column(*i).clone()),
                SourceColumn::Computed(expr) => Ok(expr.evaluate(&physical)?.into_array(physical.num_rows())?),
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| FreshetError::BadSourceData {
            table: self.table.clone(),
            at: "a computed column".into(),
            reason: e.to_string(),
        })
    }
}

impl RowGenerator for Source {
    fn describe(&self) -> &str {
        self.made_on_read.as_deref().unwrap_or("none")
    }

    fn generate(&self, rows: &GeneratedRows, count: u64) -> Result<Vec<RecordBatch>> {
        let Reader::Nexmark(generator) = &self.reader else {
            return Err(FreshetError::Internal(format!(
                "table \"{}\": rows made on read by a source that is not a generator",
                self.table
            )));
        };
        let end = rows.first.saturating_add(count);
        generator
            .generate(rows.first, end, rows.origin_ms)?
            .into_iter()
            .map(|batch| self.complete(batch))
            .collect()
    }
}

/// The same values with the struct field names of `target` (the data names fields as written,
/// the table as normalized).
pub(crate) fn rename_fields(array: ArrayRef, target: &DataType) -> Result<ArrayRef> {
    match (array.data_type(), target) {
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let Some(structs) = array.as_any().downcast_ref::<StructArray>() else {
                return Ok(array);
            };
            let (_, columns, nulls) = structs.clone().into_parts();
            let columns = columns
                .into_iter()
                .zip(fields.iter())
                .map(|(c, f)| rename_fields(c, f.data_type()))
                .collect::<Result<Vec<_>>>()?;
            let fields: Fields = fields
                .iter()
                .zip(&columns)
                .map(|(f, c)| -> FieldRef { Arc::new(f.as_ref().clone().with_data_type(c.data_type().clone())) })
                .collect();
            Ok(Arc::new(
                StructArray::try_new(fields, columns, nulls).map_err(|e| FreshetError::Internal(e.to_string()))?,
            ))
        }
        _ => Ok(array),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::ConnectorOptions;
    use datafusion::arrow::datatypes::{Field, Schema};
    use freshet_storage::{Catalog, Location, WriteOptions};

    #[tokio::test]
    async fn a_backlog_of_files_is_ingested_in_bounded_steps() {
        let dir = tempfile::tempdir().unwrap();
        for n in 0..5 {
            let lines: String = (0..100).map(|i| format!("{{\"v\": {}}}\n", n * 100 + i)).collect();
            std::fs::write(dir.path().join(format!("part-{n}.json")), lines).unwrap();
        }
        let options = vec![
            ("connector".to_string(), "filesystem".to_string()),
            ("path".to_string(), dir.path().display().to_string()),
            ("format".to_string(), "json".to_string()),
        ];
        let connector = ConnectorOptions::new("t", &options).connector().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let clock: SharedClock = Arc::new(freshet_common::SystemClock);
        let source = Source::new(
            "t",
            &connector,
            schema.clone(),
            schema.clone(),
            vec![SourceColumn::Physical(0)],
            schema.clone(),
            clock,
        )
        .unwrap();
        let location = Arc::new(Location::open("memory://").unwrap());
        let catalog = Catalog::open(location, WriteOptions::default()).await.unwrap();
        let table = catalog
            .create_connector_table("t", schema, "CREATE TABLE t ...")
            .await
            .unwrap();
        // Every file's rows reach the limit: each ingestion takes one file and says more is there.
        source.set_max_ingest_bytes(1);
        let created = table.snapshot().version();
        let mut steps = Vec::new();
        loop {
            let report = source.ingest(&table).await.unwrap();
            steps.push((report.rows, report.pending, report.finished));
            if !report.pending {
                break;
            }
        }
        assert_eq!(
            steps,
            vec![
                (100, true, false),
                (100, true, false),
                (100, true, false),
                (100, true, false),
                (100, false, true)
            ]
        );
        assert_eq!(table.snapshot().version(), created + 5);
    }
}
