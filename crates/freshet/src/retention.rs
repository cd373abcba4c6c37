//! Retention: how long each table keeps its versions, what holds older ones back, and the
//! vacuum that removes the rest — asked for by `VACUUM`, and run by the scheduler every
//! `table.vacuum.interval`.
//!
//! A table keeps every version current within its retention period (its `'retention'` option,
//! else `table.retention`, 7 days), so time travel and change reads reach that far back. Older
//! versions stay only while something needs them: an ACTIVE materialized table (the versions
//! its contents and its checkpoint reflect: the changes since are its next refresh's input), a
//! RUNNING job (the versions it has processed), a running query (its snapshot). A SUSPENDED or
//! FAILED table holds nothing beyond the retention period: resumed later than that, it is
//! refreshed in full.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;

use freshet_common::{FreshetError, Result};
use freshet_sql::VacuumRetain;
use freshet_storage::{CatalogEntry, Retain, VacuumReport};

use crate::engine::Engine;
use crate::materialized::Status;
use crate::materialized::definition::{RETENTION_OPTION, check_options, format_duration, parse_duration_or_zero};

/// A plain table's options (`CREATE TABLE ... WITH (...)`, `ALTER TABLE ... SET (...)`),
/// checked: `'retention'` is the one a table without a connector takes.
pub(crate) fn table_options(name: &str, options: &[(String, String)]) -> Result<BTreeMap<String, String>> {
    let mut checked = BTreeMap::new();
    for (key, value) in options {
        if key != RETENTION_OPTION {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{name}\": unknown option '{key}' (a table without a 'connector' takes 'retention'; \
                 a source or sink table names its 'connector')"
            )));
        }
        parse_duration_or_zero(value)
            .map_err(|e| FreshetError::InvalidStatement(format!("table \"{name}\": option '{key}': {e}")))?;
        checked.insert(key.clone(), value.clone());
    }
    Ok(checked)
}

/// Versions of a table something holds back, from the oldest on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hold {
    /// The oldest version held.
    pub version: u64,
    /// What holds it (`materialized table m`, `job 3f2a...`).
    pub by: String,
}

impl Engine {
    /// How long a table keeps its versions: its own `'retention'` option, else the engine's
    /// `table.retention` setting.
    pub(crate) fn retention_of(&self, name: &str) -> Duration {
        self.table_retention(name)
            .unwrap_or_else(|| self.inner.materialized.settings().retention)
    }

    /// A table's own `'retention'` option: a plain table's, a source table's, or a
    /// materialized table's.
    fn table_retention(&self, name: &str) -> Option<Duration> {
        if let Some(CatalogEntry::Table { options, .. }) = self.inner.catalog.manifest().entries.get(name) {
            return parse_duration_or_zero(options.get(RETENTION_OPTION)?).ok();
        }
        if let Some(retention) = self.inner.streams.retention(name) {
            return Some(retention);
        }
        self.materialized_definition(name).ok()?.retention()
    }

    /// `ALTER TABLE name SET ('key' = 'value', ...)` / `RESET ('key', ...)`: a plain table's
    /// options, or a materialized table's (the options its `WITH` and `RESUME WITH` take).
    pub(crate) async fn alter_table_options(
        &self,
        name: &str,
        set: &[(String, String)],
        reset: &[String],
    ) -> Result<()> {
        let entry = self.inner.catalog.manifest().entries.get(name).cloned();
        match entry {
            Some(CatalogEntry::Table { options, .. }) => {
                let mut options = options;
                options.extend(table_options(name, set)?);
                for key in reset {
                    table_options(name, &[(key.clone(), "0".into())])?;
                    options.remove(key);
                }
                self.inner.catalog.set_table_options(name, options).await
            }
            Some(CatalogEntry::MaterializedTable { .. }) => {
                let mut definition = self.materialized_definition(name)?;
                check_options(name, set, &definition.partitioned_by)?;
                definition.options.extend(set.iter().cloned());
                for key in reset {
                    definition.options.remove(key);
                }
                self.store_definition(name, &definition).await
            }
            Some(CatalogEntry::ConnectorTable { sql, options, .. }) => {
                // A source's retention may change; its other options are the connector's, read
                // when its jobs start.
                let keys = set.iter().map(|(k, _)| k).chain(reset);
                if let Some(key) = keys.into_iter().find(|k| *k != RETENTION_OPTION) {
                    return Err(FreshetError::Unsupported(format!(
                        "ALTER TABLE ... SET/RESET of '{key}' on connector table \"{name}\": of a connector \
                         table's options only a source's 'retention' changes (create the table again for others)"
                    )));
                }
                if !self.inner.streams.is_source(name) {
                    return Err(FreshetError::InvalidStatement(format!(
                        "table \"{name}\" is a sink: it keeps no rows, so it has no 'retention'"
                    )));
                }
                let mut options = options;
                options.extend(set.iter().cloned());
                for key in reset {
                    options.remove(key);
                }
                // Without an override, the statement's own option applies again.
                let create = crate::streams::stored_connector_table(&sql, &options)?;
                let retention = freshet_runtime::ConnectorOptions::new(name, &create.options).retention()?;
                self.inner.catalog.set_table_options(name, options).await?;
                self.inner.streams.set_retention(name, retention);
                Ok(())
            }
            Some(CatalogEntry::Definition { object, .. }) => Err(FreshetError::InvalidStatement(format!(
                "\"{name}\" is a {}, not a table: it has no options",
                object.replace('_', " ")
            ))),
            None => Err(FreshetError::TableNotFound { name: name.into() }),
        }
    }

    /// What holds each table's older versions back, by table: ACTIVE materialized tables (the
    /// input versions they and their checkpoints reflect) and RUNNING jobs (the versions their
    /// checkpoints reflect, or they have processed: what a restart reads).
    pub(crate) fn holds(&self) -> BTreeMap<String, Vec<Hold>> {
        let mut holds: BTreeMap<String, Vec<Hold>> = BTreeMap::new();
        for name in self.materialized_names() {
            let active = self
                .materialized_definition(&name)
                .is_ok_and(|d| d.status == Status::Active);
            if !active {
                continue;
            }
            for (input, version) in self.versions_reflected_by(&name) {
                holds.entry(input).or_default().push(Hold {
                    version,
                    by: format!("materialized table {name}"),
                });
            }
        }
        for job in self.jobs() {
            if job.status != freshet_runtime::JobStatus::Running {
                continue;
            }
            for (input, &version) in &job.restart_inputs {
                holds.entry(input.clone()).or_default().push(Hold {
                    version,
                    by: format!("job {}", job.id),
                });
            }
        }
        for list in holds.values_mut() {
            list.sort_by_key(|h| h.version);
        }
        holds
    }

    /// Vacuums one table, or every table and the catalog (the directories of dropped tables):
    /// removes the versions `retain` does not keep — by default what each table's retention
    /// period does not keep — unless something holds them, then the files no kept version uses.
    pub async fn vacuum(&self, table: Option<&str>, retain: Option<VacuumRetain>) -> Result<VacuumReport> {
        self.vacuum_with(table, retain, true).await
    }

    /// [`Engine::vacuum`]; with `sweep`, also the files no version names once older than
    /// `table.vacuum.orphan-grace-period` (which reads every retained manifest).
    async fn vacuum_with(
        &self,
        table: Option<&str>,
        retain: Option<VacuumRetain>,
        sweep: bool,
    ) -> Result<VacuumReport> {
        let now = self.inner.materialized.clock.now_ms();
        let since =
            |period: Duration| Retain::Since(now.saturating_sub(i64::try_from(period.as_millis()).unwrap_or(i64::MAX)));
        let rule = |name: &str| match retain {
            Some(VacuumRetain::Versions(n)) => Retain::Versions(n),
            Some(VacuumRetain::Period(period)) => since(period),
            None => since(self.retention_of(name)),
        };
        let keep_from: HashMap<String, u64> = self
            .holds()
            .into_iter()
            .filter_map(|(name, holds)| Some((name, holds.first()?.version)))
            .collect();
        let grace = sweep.then(|| self.inner.materialized.settings().vacuum_orphan_grace);
        match table {
            Some(name) => {
                self.table(name)?
                    .vacuum_keeping(rule(name), keep_from.get(name).copied(), grace)
                    .await
            }
            None => self.inner.catalog.vacuum(rule, &keep_from, grace).await,
        }
    }

    /// The scheduler's vacuum of every table by its retention, sweeping orphan files when
    /// `sweep`; failures are logged (the next run tries again).
    pub(crate) async fn vacuum_in_background(&self, sweep: bool) {
        match self.vacuum_with(None, None, sweep).await {
            Ok(report) if report.versions_removed > 0 || report.files_removed > 0 => tracing::info!(
                versions = report.versions_removed,
                files = report.files_removed,
                bytes = report.bytes_removed,
                "background vacuum"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "background vacuum failed"),
        }
    }

    /// The system table `freshet.retention`: per stored table, how long it keeps its versions
    /// (and whether the table or the engine says so), the oldest version something holds back
    /// and what holds versions, and the SUSPENDED or FAILED materialized tables reading it,
    /// which hold nothing beyond the retention period.
    pub(crate) fn retention_batch(&self) -> Result<RecordBatch> {
        let holds = self.holds();
        let mut released: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in self.materialized_names() {
            let Ok(definition) = self.materialized_definition(&name) else {
                continue;
            };
            if definition.status != Status::Active {
                for input in &definition.inputs {
                    released
                        .entry(input.clone())
                        .or_default()
                        .push(format!("materialized table {name} ({})", definition.status));
                }
            }
        }
        let tables = self.inner.catalog.tables();
        let mut names = Vec::new();
        let mut retention = Vec::new();
        let mut set_by = Vec::new();
        let mut held_from = Vec::new();
        let mut held_by = Vec::new();
        let mut not_held_by = Vec::new();
        for (name, _) in &tables {
            let own = self.table_retention(name);
            retention.push(format_duration(self.retention_of(name)));
            set_by.push(if own.is_some() { "table" } else { "engine" });
            let table_holds = holds.get(name);
            held_from.push(table_holds.and_then(|h| h.first()).map(|h| h.version));
            held_by.push(table_holds.map(|h| {
                h.iter()
                    .map(|h| format!("{} from version {}", h.by, h.version))
                    .collect::<Vec<_>>()
                    .join(", ")
            }));
            not_held_by.push(released.get(name).map(|r| r.join(", ")));
            names.push(name.clone());
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("retention", DataType::Utf8, false),
            Field::new("retention_set_by", DataType::Utf8, false),
            Field::new("held_from_version", DataType::UInt64, true),
            Field::new("held_by", DataType::Utf8, true),
            Field::new("not_held_by", DataType::Utf8, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(retention)),
            Arc::new(StringArray::from(set_by)),
            Arc::new(UInt64Array::from(held_from)),
            Arc::new(StringArray::from(held_by)),
            Arc::new(StringArray::from(not_held_by)),
        ];
        RecordBatch::try_new(schema, columns).map_err(|e| FreshetError::Internal(e.to_string()))
    }
}
