//! The materialized-table statements: CREATE, ALTER, DROP, SHOW, DESCRIBE, EXPLAIN, SHOW CREATE.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::Ident;

use freshet_common::{FreshetError, Result};
use freshet_sql::{AlterMaterializedTable, CreateMaterializedTable, FreshetStatement};
use freshet_storage::CatalogEntry;

use super::Status;
use super::definition::{MaterializedDefinition, check_options, choose_mode};
use super::refresh::{RefreshOutcome, RefreshRequest, Trigger, table_schema};
use super::scheduler::millis;
use super::status::{SYSTEM_SCHEMA, human_duration, versions_text};
use crate::engine::Engine;
use crate::execute::{batches_stream, check_column_names, empty_stream, result_rows};

impl Engine {
    /// Runs a materialized-table statement.
    pub(crate) async fn run_materialized(&self, statement: &FreshetStatement) -> Result<SendableRecordBatchStream> {
        match statement {
            FreshetStatement::CreateMaterializedTable(create) => {
                self.create_materialized(create).await?;
                empty_stream()
            }
            FreshetStatement::AlterMaterializedTable { name, action } => {
                self.alter_materialized(&self.resolve_name(name)?, action).await
            }
            FreshetStatement::DropMaterializedTable {
                name,
                if_exists,
                cascade,
            } => {
                let name = self.resolve_name(name)?;
                match self.inner.catalog.manifest().entries.get(&name) {
                    None if *if_exists => return empty_stream(),
                    None => return Err(not_materialized(&name, false)),
                    Some(CatalogEntry::MaterializedTable { .. }) => {}
                    Some(_) => return Err(not_materialized(&name, true)),
                }
                self.drop_with_dependents(&name, *cascade).await?;
                empty_stream()
            }
            FreshetStatement::ShowMaterializedTables => {
                let sql = format!(
                    "SELECT name, status, refresh_mode, freshness, data_lag_ms, last_refresh_at, next_refresh_at \
                     FROM {SYSTEM_SCHEMA}.materialized_tables ORDER BY name"
                );
                let frame = self.inner.ctx.sql(&sql).await?;
                Ok(frame.execute_stream().await?)
            }
            FreshetStatement::DescribeMaterializedTable { name } => {
                let name = self.resolve_name(name)?;
                self.describe_materialized(&name).await
            }
            FreshetStatement::ExplainMaterializedTable { name } => {
                let name = self.resolve_name(name)?;
                let rows = self.explain_materialized(&name).await?;
                let (types, plans): (Vec<&str>, Vec<String>) = rows.into_iter().unzip();
                result_rows(vec![
                    ("plan_type", Arc::new(StringArray::from(types))),
                    ("plan", Arc::new(StringArray::from(plans))),
                ])
            }
            FreshetStatement::ShowCreateMaterializedTable { name } => {
                let name = self.resolve_name(name)?;
                let text = self.show_create(&name)?;
                result_rows(vec![("statement", Arc::new(StringArray::from(vec![text])))])
            }
            _ => Err(FreshetError::Internal("not a materialized-table statement".into())),
        }
    }

    async fn create_materialized(&self, create: &CreateMaterializedTable) -> Result<()> {
        let name = self.resolve_name(&create.name)?;
        if self.inner.catalog.contains(&name) {
            if create.if_not_exists {
                return Ok(());
            }
            return Err(FreshetError::TableExists { name });
        }
        let primary_key: Vec<String> = create.primary_key.iter().map(|i| self.ident_name(i)).collect();
        let partitioned_by: Vec<String> = create.partitioned_by.iter().map(|i| self.ident_name(i)).collect();
        check_options(&name, &create.options, &partitioned_by)?;
        let pinned = self.plan_pinned(&name, &create.query_text).await?;
        let output = pinned.output_schema();
        check_columns(&name, &output, &primary_key, &partitioned_by)?;
        let schema = table_schema(&output, &primary_key);
        check_column_names(&name, &schema)?;
        let blocker = self.incremental_blocker(&pinned)?;
        let effective = choose_mode(
            &name,
            create.freshness,
            create.refresh_mode,
            &self.inner.materialized.settings(),
            blocker.as_deref(),
        )?;
        let definition = MaterializedDefinition {
            query: create.query_text.clone(),
            inputs: pinned.dependencies.iter().cloned().collect(),
            freshness: create.freshness,
            refresh_mode: create.refresh_mode,
            effective,
            primary_key: primary_key.clone(),
            partitioned_by,
            options: create.options.iter().cloned().collect(),
            comment: create.comment.clone(),
            status: Status::Active,
            failures: 0,
            last_error: None,
        };
        for (column, _) in definition.options.iter().filter_map(|(k, v)| {
            k.strip_prefix("partition.fields.")
                .and_then(|r| r.strip_suffix(".date-formatter"))
                .map(|c| (c, v))
        }) {
            let data_type = schema.field_with_name(column).map(|f| f.data_type().clone());
            if !matches!(data_type, Ok(DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)) {
                return Err(FreshetError::InvalidStatement(format!(
                    "materialized table \"{name}\": option 'partition.fields.{column}.date-formatter' needs a \
                     string column, but \"{column}\" is {}",
                    data_type.map_or("missing".to_string(), |t| t.to_string())
                )));
            }
        }
        let clock = self.inner.materialized.clock.clone();
        let started = clock.now_ms();
        let json = definition.to_json()?;
        let engine = self.clone();
        let request = RefreshRequest {
            trigger: Trigger::Create,
            partition: None,
            force: true,
        };
        let request_for_history = request.clone();
        let fill_definition = definition.clone();
        let fill_name = name.clone();
        let mut outcome = None;
        let slot = &mut outcome;
        self.inner
            .catalog
            .create_table(
                &name,
                schema,
                primary_key,
                freshet_storage::NewTable::Materialized(json),
                |table| async move {
                    *slot = Some(
                        engine
                            .refresh_table(&fill_name, &table, &fill_definition, &request, started)
                            .await?,
                    );
                    Ok(())
                },
            )
            .await?;
        if let Some(outcome) = outcome {
            self.record_attempt(&name, &request_for_history, started, &Ok(outcome))
                .await;
        }
        let due = started.saturating_add(millis(definition.effective.freshness));
        self.inner.materialized.set_next_due(&name, Some(due));
        Ok(())
    }

    async fn alter_materialized(
        &self,
        name: &str,
        action: &AlterMaterializedTable,
    ) -> Result<SendableRecordBatchStream> {
        let mut definition = self.materialized_definition(name)?;
        let materialized = &self.inner.materialized;
        let now = materialized.clock.now_ms();
        match action {
            AlterMaterializedTable::Suspend => {
                definition.status = Status::Suspended;
                self.store_definition(name, &definition).await?;
                materialized.set_next_due(name, None);
            }
            AlterMaterializedTable::Resume { options } => {
                check_options(name, options, &definition.partitioned_by)?;
                definition.options.extend(options.iter().cloned());
                definition.status = Status::Active;
                definition.failures = 0;
                definition.last_error = None;
                self.store_definition(name, &definition).await?;
                // Catch up at once: the next refresh is due now.
                materialized.set_next_due(name, Some(now));
            }
            AlterMaterializedTable::Refresh { partition, full } => {
                let partition = match partition.as_slice() {
                    [] => None,
                    [(column, value)] => {
                        let column = self.ident_name(column);
                        if !definition.partitioned_by.contains(&column) {
                            return Err(FreshetError::InvalidStatement(format!(
                                "materialized table \"{name}\": \"{column}\" is not a partition column{}",
                                if definition.partitioned_by.is_empty() {
                                    " (the table is not partitioned)".to_string()
                                } else {
                                    format!(" (PARTITIONED BY ({}))", definition.partitioned_by.join(", "))
                                }
                            )));
                        }
                        Some((column, value.clone()))
                    }
                    _ => {
                        return Err(FreshetError::Unsupported(format!(
                            "materialized table \"{name}\": refreshing a partition named by more than one column"
                        )));
                    }
                };
                let force = partition.is_some() || *full;
                let outcome = self
                    .refresh(
                        name,
                        RefreshRequest {
                            trigger: Trigger::Manual,
                            partition,
                            force,
                        },
                    )
                    .await?;
                return refresh_result(outcome, self.inner.catalog.table(name)?.snapshot().version());
            }
            AlterMaterializedTable::SetFreshness(freshness) => {
                let blocker = self.incremental_blocker(&self.plan_pinned(name, &definition.query).await?)?;
                definition.effective = choose_mode(
                    name,
                    Some(*freshness),
                    definition.refresh_mode,
                    &materialized.settings(),
                    blocker.as_deref(),
                )?;
                definition.freshness = Some(*freshness);
                self.store_definition(name, &definition).await?;
                self.reschedule(name, &definition);
            }
            AlterMaterializedTable::SetRefreshMode(mode) => {
                let blocker = self.incremental_blocker(&self.plan_pinned(name, &definition.query).await?)?;
                definition.effective = choose_mode(
                    name,
                    definition.freshness,
                    Some(*mode),
                    &materialized.settings(),
                    blocker.as_deref(),
                )?;
                definition.refresh_mode = Some(*mode);
                self.store_definition(name, &definition).await?;
                self.reschedule(name, &definition);
            }
            AlterMaterializedTable::Query { text, .. } => {
                return self.alter_query(name, definition, text).await;
            }
        }
        empty_stream()
    }

    /// `ALTER ... AS <query>`: appending nullable columns keeps the table; the new query is
    /// refreshed in full, then stored.
    async fn alter_query(
        &self,
        name: &str,
        mut definition: MaterializedDefinition,
        text: &str,
    ) -> Result<SendableRecordBatchStream> {
        let pinned = self.plan_pinned(name, text).await?;
        let reachable = self.dependents_closure(name);
        if let Some(cycle) = pinned
            .dependencies
            .iter()
            .find(|d| *d == name || reachable.contains(*d))
        {
            return Err(FreshetError::InvalidStatement(format!(
                "materialized table \"{name}\": the new query reads \"{cycle}\", which reads \"{name}\" (a cycle)"
            )));
        }
        let table = self.inner.catalog.table(name)?;
        let old = table.schema();
        let output = pinned.output_schema();
        check_columns(name, &output, &definition.primary_key, &definition.partitioned_by)?;
        let new = table_schema(&output, &definition.primary_key);
        check_evolution(name, &old, &new)?;
        check_column_names(name, &new)?;
        let blocker = self.incremental_blocker(&pinned)?;
        definition.effective = choose_mode(
            name,
            definition.freshness,
            definition.refresh_mode,
            &self.inner.materialized.settings(),
            blocker.as_deref(),
        )?;
        definition.query = text.to_string();
        definition.inputs = pinned.dependencies.into_iter().collect();
        let runtime = self.inner.materialized.runtime(name);
        let _refreshing = runtime.refreshing.lock().await;
        let started = self.inner.materialized.clock.now_ms();
        let request = RefreshRequest {
            trigger: Trigger::Alter,
            partition: None,
            force: true,
        };
        let outcome = self.refresh_table(name, &table, &definition, &request, started).await?;
        self.store_definition(name, &definition).await?;
        refresh_result(outcome, table.snapshot().version())
    }

    /// The next refresh after a change of freshness or mode: one freshness after the last.
    fn reschedule(&self, name: &str, definition: &MaterializedDefinition) {
        if definition.status != Status::Active {
            return;
        }
        let materialized = &self.inner.materialized;
        let last = self
            .inner
            .catalog
            .table(name)
            .ok()
            .and_then(|t| super::RefreshRecord::of(&t.snapshot()))
            .map_or(materialized.clock.now_ms(), |r| r.started_at_ms);
        materialized.set_next_due(name, Some(last.saturating_add(millis(definition.effective.freshness))));
    }

    /// Materialized tables that read `name` directly.
    pub(crate) fn dependents(&self, name: &str) -> Vec<String> {
        self.materialized_names()
            .into_iter()
            .filter(|mt| {
                self.materialized_definition(mt)
                    .is_ok_and(|d| d.inputs.iter().any(|i| i == name))
            })
            .collect()
    }

    /// Every materialized table that reads `name`, directly or through others.
    fn dependents_closure(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut pending = vec![name.to_string()];
        while let Some(next) = pending.pop() {
            for dependent in self.dependents(&next) {
                if out.insert(dependent.clone()) {
                    pending.push(dependent);
                }
            }
        }
        out
    }

    /// Drops a table or materialized table; with `cascade`, first every materialized table
    /// that reads it; without, an error naming them.
    pub(crate) async fn drop_with_dependents(&self, name: &str, cascade: bool) -> Result<()> {
        if let Some(job) = self.inner.streams.jobs.running_on(name) {
            return Err(FreshetError::InvalidStatement(format!(
                "cannot drop \"{name}\": running job {job} reads or writes it (STOP JOB '{job}' first)"
            )));
        }
        let dependents = self.dependents(name);
        if !dependents.is_empty() && !cascade {
            return Err(FreshetError::InvalidStatement(format!(
                "cannot drop \"{name}\": materialized table{} {} read{} it (drop {} first, or add CASCADE)",
                if dependents.len() == 1 { "" } else { "s" },
                dependents
                    .iter()
                    .map(|d| format!("\"{d}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                if dependents.len() == 1 { "s" } else { "" },
                if dependents.len() == 1 { "it" } else { "them" },
            )));
        }
        for dependent in dependents {
            Box::pin(self.drop_with_dependents(&dependent, true)).await?;
        }
        let is_materialized = matches!(
            self.inner.catalog.manifest().entries.get(name),
            Some(CatalogEntry::MaterializedTable { .. })
        );
        if is_materialized {
            let runtime = self.inner.materialized.runtime(name);
            let _refreshing = runtime.refreshing.lock().await;
            self.inner.catalog.drop_entry(name).await?;
            self.inner.materialized.forget(name);
            self.inner.materialized.wake.notify_one();
        } else {
            let entry = self.inner.catalog.drop_entry(name).await?;
            match entry {
                CatalogEntry::Definition { .. } => self.inner.schema.forget(name),
                CatalogEntry::ConnectorTable { .. } => self.inner.streams.forget(name),
                _ => {}
            }
        }
        Ok(())
    }

    async fn describe_materialized(&self, name: &str) -> Result<SendableRecordBatchStream> {
        let info = self.materialized_table(name).await?;
        let mut rows: Vec<(String, String)> = vec![("name".into(), info.name.clone())];
        if let Some(comment) = &info.comment {
            rows.push(("comment".into(), comment.clone()));
        }
        for field in info.schema.fields() {
            let mut text = field.data_type().to_string();
            if !field.is_nullable() {
                text.push_str(" NOT NULL");
            }
            if info.primary_key.contains(field.name()) {
                text.push_str(" (primary key)");
            }
            rows.push((format!("column {}", field.name()), text));
        }
        if !info.partitioned_by.is_empty() {
            rows.push(("partitioned by".into(), info.partitioned_by.join(", ")));
        }
        for (key, value) in &info.options {
            rows.push((format!("option {key}"), value.clone()));
        }
        rows.push(("query".into(), info.query.clone()));
        rows.push((
            "freshness".into(),
            match info.declared_freshness {
                Some(_) => info.freshness.to_string(),
                None => format!("{} (default)", info.freshness),
            },
        ));
        rows.push((
            "refresh mode".into(),
            match info.declared_mode {
                Some(m) => format!("{} (declared {m})", info.mode),
                None => info.mode.to_string(),
            },
        ));
        rows.push(("reason".into(), info.reason.clone()));
        rows.push(("status".into(), info.status.to_string()));
        rows.push(("version".into(), info.version.to_string()));
        if let Some(last) = &info.last_refresh {
            rows.push((
                "last refresh".into(),
                format!(
                    "{} ({}, {} ms, {} rows{})",
                    format_ms(last.committed_at_ms),
                    last.trigger,
                    last.duration_ms,
                    last.rows,
                    last.partition
                        .as_ref()
                        .map(|p| format!(", partition {p}"))
                        .unwrap_or_default()
                ),
            ));
            rows.push(("input versions".into(), versions_text(&last.inputs)));
        }
        rows.push((
            "next refresh".into(),
            info.next_refresh_ms.map_or("none".into(), format_ms),
        ));
        rows.push((
            "data lag".into(),
            info.data_lag_ms.map_or("unknown".into(), human_duration),
        ));
        if info.failures > 0 {
            rows.push(("failures".into(), info.failures.to_string()));
        }
        if let Some(error) = &info.last_error {
            rows.push(("last error".into(), error.clone()));
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("property", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
        ]));
        let (keys, values): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(keys)), Arc::new(StringArray::from(values))],
        )
        .map_err(|e| FreshetError::Internal(e.to_string()))?;
        batches_stream(schema, vec![batch])
    }

    fn show_create(&self, name: &str) -> Result<String> {
        let d = self.materialized_definition(name)?;
        let mut text = format!("CREATE MATERIALIZED TABLE {name}\n");
        if !d.primary_key.is_empty() {
            text.push_str(&format!("(PRIMARY KEY ({}) NOT ENFORCED)\n", d.primary_key.join(", ")));
        }
        if let Some(comment) = &d.comment {
            text.push_str(&format!("COMMENT {}\n", quote(comment)));
        }
        if !d.partitioned_by.is_empty() {
            text.push_str(&format!("PARTITIONED BY ({})\n", d.partitioned_by.join(", ")));
        }
        if !d.options.is_empty() {
            let options: Vec<String> = d
                .options
                .iter()
                .map(|(k, v)| format!("  {} = {}", quote(k), quote(v)))
                .collect();
            text.push_str(&format!("WITH (\n{}\n)\n", options.join(",\n")));
        }
        text.push_str(&format!("FRESHNESS = {}\n", d.effective.freshness));
        if let Some(mode) = d.refresh_mode {
            text.push_str(&format!("REFRESH_MODE = {mode}\n"));
        }
        text.push_str(&format!("AS {}", d.query));
        Ok(text)
    }

    /// An identifier as the catalog spells it (unquoted ones lower-cased, like DataFusion).
    fn ident_name(&self, ident: &Ident) -> String {
        if ident.quote_style.is_none() && self.normalizes_identifiers() {
            ident.value.to_lowercase()
        } else {
            ident.value.clone()
        }
    }
}

fn not_materialized(name: &str, exists: bool) -> FreshetError {
    if exists {
        FreshetError::InvalidStatement(format!(
            "\"{name}\" is not a materialized table (use DROP TABLE or DROP VIEW)"
        ))
    } else {
        FreshetError::MaterializedTableNotFound { name: name.into() }
    }
}

/// Primary-key and partition columns must be columns of the query; key columns must never be
/// NULL.
fn check_columns(name: &str, output: &Schema, primary_key: &[String], partitioned_by: &[String]) -> Result<()> {
    let columns = || {
        output
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for column in partitioned_by {
        if output.field_with_name(column).is_err() {
            return Err(FreshetError::InvalidStatement(format!(
                "materialized table \"{name}\": PARTITIONED BY column \"{column}\" is not a column of the query \
                 (its columns: {})",
                columns()
            )));
        }
    }
    for column in primary_key {
        match output.field_with_name(column) {
            Err(_) => {
                return Err(FreshetError::InvalidStatement(format!(
                    "materialized table \"{name}\": PRIMARY KEY column \"{column}\" is not a column of the query \
                     (its columns: {})",
                    columns()
                )));
            }
            Ok(field) if field.is_nullable() => {
                return Err(FreshetError::InvalidStatement(format!(
                    "materialized table \"{name}\": PRIMARY KEY column \"{column}\" may be NULL in the query's \
                     result; key columns must be NOT NULL (wrap it in COALESCE, or key on a NOT NULL column)"
                )));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Flink's rule for a new query: the old columns stay, in order and with their types; new
/// columns may be appended if they accept NULL.
fn check_evolution(name: &str, old: &SchemaRef, new: &SchemaRef) -> Result<()> {
    let refuse = |why: String| {
        FreshetError::InvalidStatement(format!(
            "materialized table \"{name}\": the new query is not compatible: {why}; only appending nullable \
             columns is supported (drop and re-create the table to change its columns)"
        ))
    };
    for (i, field) in old.fields().iter().enumerate() {
        let Some(now) = new.fields().get(i) else {
            return Err(refuse(format!("column \"{}\" is missing", field.name())));
        };
        if now.name() != field.name() {
            return Err(refuse(format!(
                "column {} is \"{}\" and would become \"{}\"",
                i + 1,
                field.name(),
                now.name()
            )));
        }
        if now.data_type() != field.data_type() {
            return Err(refuse(format!(
                "column \"{}\" is {} and would become {}",
                field.name(),
                field.data_type(),
                now.data_type()
            )));
        }
    }
    for field in new.fields().iter().skip(old.fields().len()) {
        if !field.is_nullable() {
            return Err(refuse(format!("the new column \"{}\" is NOT NULL", field.name())));
        }
    }
    Ok(())
}

fn refresh_result(outcome: RefreshOutcome, current: u64) -> Result<SendableRecordBatchStream> {
    let (label, version, rows) = match outcome {
        RefreshOutcome::Committed { version, rows } => ("refreshed", version, rows),
        RefreshOutcome::Skipped => ("up to date", current, 0),
    };
    result_rows(vec![
        ("outcome", Arc::new(StringArray::from(vec![label]))),
        ("version", Arc::new(UInt64Array::from(vec![version]))),
        ("rows", Arc::new(UInt64Array::from(vec![rows]))),
    ])
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or(ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
}
