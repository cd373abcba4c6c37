//! What a materialized table is doing: status, mode, last refresh, next refresh and data lag,
//! for the embedding API, `DESCRIBE`/`SHOW`, and the system tables `freshet.materialized_tables`
//! and `freshet.refreshes`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::Result as DfResult;

use freshet_common::{FreshetError, Result};
use freshet_sql::{Freshness, RefreshMode};

use super::refresh::{RefreshRecord, Trigger};
use super::{HISTORY_LENGTH, RefreshAttempt, Status};
use crate::engine::{Engine, EngineInner};

/// Name of the schema holding the system tables.
pub const SYSTEM_SCHEMA: &str = "freshet";

/// The refresh that made a materialized table's current contents.
#[derive(Debug, Clone, PartialEq)]
pub struct LastRefresh {
    /// When it started (ms since the epoch, engine clock).
    pub started_at_ms: i64,
    /// When its version was committed.
    pub committed_at_ms: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// Rows written.
    pub rows: u64,
    /// What started it.
    pub trigger: Trigger,
    /// The version of each input it read.
    pub inputs: BTreeMap<String, u64>,
    /// The partition recomputed, when only one was.
    pub partition: Option<String>,
}

/// Everything about one materialized table.
#[derive(Debug, Clone, PartialEq)]
pub struct MaterializedTableInfo {
    /// Its name.
    pub name: String,
    /// The defining query.
    pub query: String,
    /// ACTIVE, SUSPENDED or FAILED.
    pub status: Status,
    /// The freshness in force.
    pub freshness: Freshness,
    /// The freshness declared, if one was.
    pub declared_freshness: Option<Freshness>,
    /// The mode in force.
    pub mode: RefreshMode,
    /// The mode declared, if one was.
    pub declared_mode: Option<RefreshMode>,
    /// Why this mode.
    pub reason: String,
    /// The table's newest version.
    pub version: u64,
    /// The refresh that made the current contents.
    pub last_refresh: Option<LastRefresh>,
    /// When the scheduler will refresh it next (ms since the epoch), if it will.
    pub next_refresh_ms: Option<i64>,
    /// Now minus the commit time of the oldest input change the table does not reflect yet;
    /// 0 when it is up to date.
    pub data_lag_ms: Option<i64>,
    /// When the query's result next changes with time alone, without any input changing (a
    /// row of `WHERE ts > now() - INTERVAL '7' DAY` leaving), as far as the table's
    /// incremental state knows (ms since the epoch).
    pub result_changes_at_ms: Option<i64>,
    /// The combined watermark (ms since the epoch; `i64::MAX` once bounded inputs ended) of
    /// the inputs with an event time, at the versions the contents reflect: windows ending at
    /// or before it are final. `None` before the first rows, or without such inputs.
    pub watermark_ms: Option<i64>,
    /// Rows of those inputs dropped as late, up to those versions.
    pub late_rows: Option<u64>,
    /// Consecutive failed refreshes.
    pub failures: u32,
    /// The last refresh error, until a refresh succeeds.
    pub last_error: Option<String>,
    /// Primary-key columns.
    pub primary_key: Vec<String>,
    /// Partition columns.
    pub partitioned_by: Vec<String>,
    /// `WITH` options.
    pub options: BTreeMap<String, String>,
    /// `COMMENT`.
    pub comment: Option<String>,
    /// The columns.
    pub schema: SchemaRef,
}

impl Engine {
    /// The status of one materialized table.
    pub async fn materialized_table(&self, name: &str) -> Result<MaterializedTableInfo> {
        let definition = self.materialized_definition(name)?;
        let table = self.inner.catalog.table(name)?;
        let snapshot = table.snapshot();
        let record = RefreshRecord::of(&snapshot);
        let data_lag_ms = match &record {
            Some(record) => Some(self.data_lag(record).await?),
            None => None,
        };
        let event_time = match &record {
            Some(record) => self.inputs_event_time(&record.inputs).await?,
            None => None,
        };
        let last_refresh = record.map(|r| LastRefresh {
            started_at_ms: r.started_at_ms,
            committed_at_ms: r.started_at_ms + r.duration_ms,
            duration_ms: r.duration_ms,
            rows: r.rows,
            trigger: r.trigger,
            inputs: r.inputs,
            partition: r.partition,
        });
        let next_refresh_ms = (definition.status == Status::Active)
            .then(|| self.inner.materialized.next_due(name))
            .flatten();
        let result_changes_at_ms = *super::lock(&self.inner.materialized.runtime(name).time_change_ms);
        Ok(MaterializedTableInfo {
            name: name.to_string(),
            query: definition.query,
            status: definition.status,
            freshness: definition.effective.freshness,
            declared_freshness: definition.freshness,
            mode: definition.effective.mode,
            declared_mode: definition.refresh_mode,
            reason: definition.effective.reason,
            version: snapshot.version(),
            last_refresh,
            next_refresh_ms,
            data_lag_ms,
            result_changes_at_ms,
            watermark_ms: event_time.and_then(|(watermark, _)| watermark),
            late_rows: event_time.map(|(_, late)| late),
            failures: definition.failures,
            last_error: definition.last_error,
            primary_key: definition.primary_key,
            partitioned_by: definition.partitioned_by,
            options: definition.options,
            comment: definition.comment,
            schema: snapshot.schema().clone(),
        })
    }

    /// The status of every materialized table, by name. A table that cannot be read is left
    /// out (using it reports why).
    pub async fn materialized_tables(&self) -> Result<Vec<MaterializedTableInfo>> {
        let mut out = Vec::new();
        for name in self.materialized_names() {
            match self.materialized_table(&name).await {
                Ok(info) => out.push(info),
                Err(e) => tracing::warn!(table = %name, error = %e, "materialized table cannot be described"),
            }
        }
        Ok(out)
    }

    /// Now minus the commit time of the oldest change to a base table that the contents do
    /// not reflect; 0 when they reflect every change.
    async fn data_lag(&self, record: &RefreshRecord) -> Result<i64> {
        let mut oldest: Option<i64> = None;
        for (source, &version) in &record.sources {
            let Ok(table) = self.inner.catalog.table(source) else {
                continue;
            };
            if let Some((_, committed)) = table.first_change_after(version).await? {
                oldest = Some(oldest.map_or(committed, |o| o.min(committed)));
            }
        }
        let now = self.inner.materialized.clock.now_ms();
        Ok(oldest.map_or(0, |o| (now - o).max(0)))
    }
}

/// A duration in words: `0 s`, `42 s`, `3 min 5 s`, `2 h 1 min`.
pub(crate) fn human_duration(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The schema `freshet` of system tables.
#[derive(Debug, Default)]
pub(crate) struct SystemSchema {
    engine: OnceLock<Weak<EngineInner>>,
}

impl SystemSchema {
    pub(crate) fn attach(&self, engine: &Arc<EngineInner>) {
        let _ = self.engine.set(Arc::downgrade(engine));
    }

    fn engine(&self) -> Option<Engine> {
        self.engine.get()?.upgrade().map(|inner| Engine { inner })
    }
}

const MATERIALIZED_TABLES: &str = "materialized_tables";
const REFRESHES: &str = "refreshes";
const JOBS: &str = "jobs";
const SOURCES: &str = "sources";
const RETENTION: &str = "retention";

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        vec![
            MATERIALIZED_TABLES.into(),
            REFRESHES.into(),
            JOBS.into(),
            SOURCES.into(),
            RETENTION.into(),
        ]
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(engine) = self.engine() else {
            return Ok(None);
        };
        let batch = match name {
            MATERIALIZED_TABLES => materialized_tables_batch(&engine.materialized_tables().await?)?,
            REFRESHES => refreshes_batch(&engine.refresh_history().await)?,
            JOBS => engine.jobs_batch(&engine.jobs()).await?,
            SOURCES => engine.sources_batch()?,
            RETENTION => engine.retention_batch()?,
            _ => return Ok(None),
        };
        // Rows computed when a query names the table.
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        [MATERIALIZED_TABLES, REFRESHES, JOBS, SOURCES, RETENTION].contains(&name)
    }
}

fn text(values: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

fn timestamps(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(values))
}

fn materialized_tables_batch(infos: &[MaterializedTableInfo]) -> Result<RecordBatch> {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("refresh_mode", DataType::Utf8, false),
        Field::new("declared_refresh_mode", DataType::Utf8, true),
        Field::new("freshness", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("last_refresh_at", ts.clone(), true),
        Field::new("last_refresh_trigger", DataType::Utf8, true),
        Field::new("last_refresh_duration_ms", DataType::Int64, true),
        Field::new("last_refresh_rows", DataType::UInt64, true),
        Field::new("input_versions", DataType::Utf8, true),
        Field::new("next_refresh_at", ts, true),
        Field::new("data_lag_ms", DataType::Int64, true),
        Field::new("failures", DataType::UInt32, false),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("query", DataType::Utf8, false),
        Field::new(
            "result_changes_at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("watermark", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("late_rows", DataType::UInt64, true),
    ]));
    let last = |f: &dyn Fn(&LastRefresh) -> Option<String>| -> ArrayRef {
        text(infos.iter().map(|i| i.last_refresh.as_ref().and_then(f)).collect())
    };
    let columns: Vec<ArrayRef> = vec![
        text(infos.iter().map(|i| Some(i.name.clone())).collect()),
        text(infos.iter().map(|i| Some(i.status.to_string())).collect()),
        text(infos.iter().map(|i| Some(i.mode.to_string())).collect()),
        text(infos.iter().map(|i| i.declared_mode.map(|m| m.to_string())).collect()),
        text(infos.iter().map(|i| Some(i.freshness.to_string())).collect()),
        text(infos.iter().map(|i| Some(i.reason.clone())).collect()),
        Arc::new(UInt64Array::from(infos.iter().map(|i| i.version).collect::<Vec<_>>())),
        timestamps(
            infos
                .iter()
                .map(|i| i.last_refresh.as_ref().map(|l| l.committed_at_ms))
                .collect(),
        ),
        last(&|l| Some(l.trigger.to_string())),
        Arc::new(Int64Array::from(
            infos
                .iter()
                .map(|i| i.last_refresh.as_ref().map(|l| l.duration_ms))
                .collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            infos
                .iter()
                .map(|i| i.last_refresh.as_ref().map(|l| l.rows))
                .collect::<Vec<_>>(),
        )),
        last(&|l| Some(versions_text(&l.inputs))),
        timestamps(infos.iter().map(|i| i.next_refresh_ms).collect()),
        Arc::new(Int64Array::from(
            infos.iter().map(|i| i.data_lag_ms).collect::<Vec<_>>(),
        )),
        Arc::new(UInt32Array::from(infos.iter().map(|i| i.failures).collect::<Vec<_>>())),
        text(infos.iter().map(|i| i.last_error.clone()).collect()),
        text(infos.iter().map(|i| Some(i.query.clone())).collect()),
        timestamps(infos.iter().map(|i| i.result_changes_at_ms).collect()),
        // +infinity (inputs ended) shows as NULL: a timestamp cannot hold it.
        timestamps(
            infos
                .iter()
                .map(|i| i.watermark_ms.filter(|&w| w != i64::MAX))
                .collect(),
        ),
        Arc::new(UInt64Array::from(infos.iter().map(|i| i.late_rows).collect::<Vec<_>>())),
    ];
    RecordBatch::try_new(schema, columns).map_err(|e| FreshetError::Internal(e.to_string()))
}

impl Engine {
    /// What `freshet.refreshes` shows: per materialized table, the attempts this engine made
    /// (kept in memory, skipped and failed ones included) and, before them, the refreshes
    /// committed before it opened — a process per statement otherwise saw only its own — up
    /// to [`HISTORY_LENGTH`] in all. Those come from the table's retained versions, whose
    /// manifests keep each refresh's record, read once per engine at the first query that
    /// wants them ([`Engine::logged_refreshes`]); their watermark and late rows are not
    /// recorded there and show as NULL. Those first, in the order they ended, then this
    /// engine's (recorded as they ended).
    pub(crate) async fn refresh_history(&self) -> Vec<RefreshAttempt> {
        let history = self.inner.materialized.history();
        let mut earlier = Vec::new();
        for name in self.materialized_names() {
            let attempts = history.iter().filter(|a| a.table == name);
            let wanted = HISTORY_LENGTH.saturating_sub(attempts.clone().count());
            if wanted == 0 {
                continue;
            }
            let mine: BTreeSet<u64> = attempts.filter_map(|a| a.version).collect();
            let runtime = self.inner.materialized.runtime(&name);
            // A table whose log cannot be read now shows this engine's attempts alone, and is
            // read again at the next query.
            let Ok(logged) = runtime.logged.get_or_try_init(|| self.logged_refreshes(&name)).await else {
                continue;
            };
            let found = logged
                .iter()
                .filter(|a| a.version.is_none_or(|v| !mine.contains(&v)))
                .take(wanted);
            earlier.extend(found.cloned());
        }
        earlier.sort_by_key(|a| (a.started_at_ms + a.duration_ms, a.version));
        earlier.extend(history);
        earlier
    }

    /// The newest [`HISTORY_LENGTH`] refreshes committed at table `name`'s retained versions,
    /// newest first: its log listed once, manifests read back from the newest.
    async fn logged_refreshes(&self, name: &str) -> Result<Vec<RefreshAttempt>> {
        let table = self.inner.catalog.table(name)?;
        let mut found = Vec::new();
        for version in table.versions().await?.into_iter().rev() {
            if found.len() == HISTORY_LENGTH {
                break;
            }
            // Removed by VACUUM meanwhile: so are the older ones.
            let Ok(snapshot) = table.snapshot_at(version).await else {
                break;
            };
            found.extend(logged_refresh(name, &snapshot));
        }
        Ok(found)
    }
}

/// The refresh that committed `snapshot`'s version, as an attempt of table `name`; `None` for
/// any other commit (a compaction or a checkpoint carries the last refresh's record).
fn logged_refresh(name: &str, snapshot: &freshet_storage::Snapshot) -> Option<RefreshAttempt> {
    if snapshot.manifest().operation != "REFRESH" {
        return None;
    }
    let record = RefreshRecord::of(snapshot)?;
    Some(RefreshAttempt {
        table: name.to_string(),
        trigger: record.trigger,
        started_at_ms: record.started_at_ms,
        duration_ms: record.duration_ms,
        partition: record.partition,
        outcome: "committed".into(),
        version: Some(snapshot.version()),
        rows: record.rows,
        algorithm: Some(record.algorithm),
        reason: record.reason,
        input_changes: record.input_changes,
        corrected_rows: record.corrected_rows,
        detail: None,
        watermark_ms: None,
        late_rows: None,
    })
}

fn refreshes_batch(history: &[RefreshAttempt]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("started_at", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("duration_ms", DataType::Int64, false),
        Field::new("partition", DataType::Utf8, true),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, true),
        Field::new("rows", DataType::UInt64, false),
        Field::new("algorithm", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("input_changes", DataType::UInt64, true),
        Field::new("detail", DataType::Utf8, true),
        Field::new("corrected_rows", DataType::UInt64, true),
        Field::new("watermark", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("late_rows", DataType::UInt64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        text(history.iter().map(|a| Some(a.table.clone())).collect()),
        text(history.iter().map(|a| Some(a.trigger.to_string())).collect()),
        timestamps(history.iter().map(|a| Some(a.started_at_ms)).collect()),
        Arc::new(Int64Array::from(
            history.iter().map(|a| a.duration_ms).collect::<Vec<_>>(),
        )),
        text(history.iter().map(|a| a.partition.clone()).collect()),
        text(history.iter().map(|a| Some(a.outcome.clone())).collect()),
        Arc::new(UInt64Array::from(history.iter().map(|a| a.version).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(history.iter().map(|a| a.rows).collect::<Vec<_>>())),
        text(history.iter().map(|a| a.algorithm.clone()).collect()),
        text(history.iter().map(|a| a.reason.clone()).collect()),
        Arc::new(UInt64Array::from(
            history.iter().map(|a| a.input_changes).collect::<Vec<_>>(),
        )),
        text(history.iter().map(|a| a.detail.clone()).collect()),
        Arc::new(UInt64Array::from(
            history.iter().map(|a| a.corrected_rows).collect::<Vec<_>>(),
        )),
        // +infinity (inputs ended) shows as NULL, as in `materialized_tables`.
        timestamps(
            history
                .iter()
                .map(|a| a.watermark_ms.filter(|&w| w != i64::MAX))
                .collect(),
        ),
        Arc::new(UInt64Array::from(
            history.iter().map(|a| a.late_rows).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(schema, columns).map_err(|e| FreshetError::Internal(e.to_string()))
}

/// `orders@3, customers@7`.
pub(crate) fn versions_text(versions: &BTreeMap<String, u64>) -> String {
    versions
        .iter()
        .map(|(n, v)| format!("{n}@{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
