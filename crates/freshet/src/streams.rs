//! Connector tables and jobs: the statements and catalog glue over `freshet-runtime`.
//!
//! `CREATE TABLE ... WITH ('connector' = ...)` becomes a stored table (its catalog entry keeps
//! the statement) and, for a source, a [`Source`] that ingests into it. A statement that reads
//! a source first lets it ingest what is new, so that it reads a consistent version holding
//! everything that had arrived. `INSERT INTO` a connector sink, or from a source, starts a
//! job (`streams/jobs.rs`).

mod jobs;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::{DdlStatement, ExprSchemable, LogicalPlan};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    DataType as SqlType, ExprWithAlias, Ident, ObjectName, Statement, visit_relations,
};

use freshet_common::{FreshetError, Result};
use freshet_runtime::{Connector, ConnectorOptions, EventTime, Jobs, Source, SourceColumn};
use freshet_sql::{ColumnKind, CreateConnectorTable, FreshetStatement};
use freshet_storage::CatalogEntry;

use crate::engine::Engine;

/// `SET 'table.dml-sync' = 'true'`: an INSERT job's statement waits for the job to end.
pub(crate) const DML_SYNC: &str = "table.dml-sync";
/// Flink's setting bounding the state of jobs' non-windowed aggregates.
pub(crate) const STATE_TTL: &str = "table.exec.state.ttl";

/// The engine's connector tables and jobs.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    tables: RwLock<HashMap<String, Arc<ConnectorTable>>>,
    /// The tasks ingesting unbounded sources in the background, by table.
    followers: std::sync::Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    pub jobs: Jobs,
    pub dml_sync: AtomicBool,
    /// Flink's `table.exec.state.ttl` for the jobs started from now (ms; 0: none).
    pub state_ttl_ms: std::sync::atomic::AtomicI64,
}

/// A connector table as the engine keeps it.
#[derive(Debug, Clone)]
pub(crate) struct ConnectorTable {
    connector: Connector,
    source: Option<Arc<Source>>,
    /// Its `'retention'` option.
    retention: Option<std::time::Duration>,
}

impl Streams {
    /// A connector table's `'retention'` option.
    pub(crate) fn retention(&self, name: &str) -> Option<std::time::Duration> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        tables.get(name)?.retention
    }

    /// Whether `name` is a connector table that is a source (its ingested rows kept).
    pub(crate) fn is_source(&self, name: &str) -> bool {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        tables.get(name).is_some_and(|t| t.source.is_some())
    }

    /// Sets a connector table's `'retention'` (`ALTER TABLE ... SET`).
    pub(crate) fn set_retention(&self, name: &str, retention: Option<std::time::Duration>) {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        if let Some(table) = tables.get_mut(name) {
            *table = Arc::new(ConnectorTable {
                retention,
                ..table.as_ref().clone()
            });
        }
    }

    /// The tables whose rows are only ever appended: source tables (their rows come from
    /// ingestion, and UPDATE and DELETE are refused).
    pub(crate) fn append_only(&self) -> std::collections::BTreeSet<String> {
        self.sources().into_iter().map(|(name, _)| name).collect()
    }

    /// The connector tables that are sources, by name.
    fn sources(&self) -> Vec<(String, Arc<Source>)> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        let mut sources: Vec<_> = tables
            .iter()
            .filter_map(|(name, table)| table.source.clone().map(|s| (name.clone(), s)))
            .collect();
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        sources
    }

    fn get(&self, name: &str) -> Option<Arc<ConnectorTable>> {
        self.tables.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    fn insert(&self, name: &str, table: ConnectorTable) {
        self.tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Arc::new(table));
    }

    pub(crate) fn forget(&self, name: &str) {
        self.tables.write().unwrap_or_else(|p| p.into_inner()).remove(name);
        if let Some(follower) = self.lock_followers().remove(name) {
            follower.abort();
        }
    }

    fn lock_followers(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::task::JoinHandle<()>>> {
        self.followers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ingests an unbounded source at its monitor interval for as long as the engine is open,
    /// so that what reads its table — continuous materialized tables, jobs, queries — sees new
    /// data within the interval. An ingestion that fails is retried at the next interval (the
    /// error is logged when it changes; statements reading the table report it themselves).
    /// An ingestion cut short by the engine closing commits nothing.
    fn follow(&self, name: &str, source: Arc<Source>, table: Arc<freshet_storage::Table>) {
        let Some(interval) = source.monitor_interval() else {
            return;
        };
        let table_name = name.to_string();
        // Weak: an engine dropped without closing takes its tables, and this task, with it.
        let table = Arc::downgrade(&table);
        let task = tokio::spawn(async move {
            let mut last_error = None;
            loop {
                let Some(table) = table.upgrade() else { return };
                let ingested = source.ingest(&table).await;
                drop(table);
                match ingested {
                    // More is there already: read on without waiting.
                    Ok(report) if report.pending => {
                        last_error = None;
                        continue;
                    }
                    Ok(_) => last_error = None,
                    Err(e) => {
                        let message = e.to_string();
                        if last_error.as_ref() != Some(&message) {
                            tracing::warn!(table = %table_name, error = %message, "source ingestion failed");
                            last_error = Some(message);
                        }
                    }
                }
                tokio::time::sleep(interval).await;
            }
        });
        if let Some(previous) = self.lock_followers().insert(name.to_string(), task) {
            previous.abort();
        }
    }

    /// Stops the background ingestion and waits until it has (the engine is closing: an
    /// ingestion in flight holds the table, and so the location's lock).
    pub(crate) async fn stop_following(&self) {
        let followers: Vec<_> = self.lock_followers().drain().map(|(_, f)| f).collect();
        for follower in &followers {
            follower.abort();
        }
        for follower in followers {
            // Cancelled is the expected end; a panic in an ingestion is not worth more than a log.
            if let Err(e) = follower.await
                && !e.is_cancelled()
            {
                tracing::warn!(error = %e, "a source's background ingestion ended abnormally");
            }
        }
    }

    /// Whether a table is a connector table, and its connector's name.
    pub(crate) fn connector_of(&self, name: &str) -> Option<&'static str> {
        self.get(name).map(|t| t.connector.name())
    }

    /// The streaming settings with their values, for `SHOW`.
    pub(crate) fn entries(&self) -> Vec<(&'static str, String)> {
        let ttl = self.state_ttl_ms.load(Ordering::Relaxed);
        vec![
            (STATE_TTL, if ttl == 0 { "0".into() } else { format!("{ttl} ms") }),
            (DML_SYNC, self.dml_sync.load(Ordering::Relaxed).to_string()),
        ]
    }

    /// Sets a streaming setting; false when the key is not one.
    pub(crate) fn set(&self, key: &str, value: &str) -> Result<bool> {
        if key == STATE_TTL {
            let ms = match value.trim() {
                "0" => 0,
                text => freshet_runtime::connector::parse_duration(text)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .map_err(|why| {
                        FreshetError::InvalidStatement(format!("setting '{STATE_TTL}' = '{value}': {why}"))
                    })?,
            };
            self.state_ttl_ms.store(ms, Ordering::Relaxed);
            return Ok(true);
        }
        if key != DML_SYNC {
            return Ok(false);
        }
        let on = match value.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            other => {
                return Err(FreshetError::InvalidStatement(format!(
                    "setting '{DML_SYNC}' is 'true' or 'false', not '{other}'"
                )));
            }
        };
        self.dml_sync.store(on, Ordering::Relaxed);
        Ok(true)
    }
}

/// A connector table's statement as stored, with the options `ALTER TABLE ... SET` set over it.
pub(crate) fn stored_connector_table(
    sql: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<CreateConnectorTable> {
    let parsed = freshet_sql::parse_statements(sql)?;
    let Some(FreshetStatement::CreateConnectorTable(create)) = parsed.into_iter().next().map(|p| p.statement) else {
        return Err(FreshetError::Internal(format!("not a connector table: {sql}")));
    };
    let mut create = *create;
    for (key, value) in options {
        match create.options.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => create.options.push((key.clone(), value.clone())),
        }
    }
    Ok(create)
}

impl Engine {
    /// `CREATE TABLE ... WITH ('connector' = ...)`.
    pub(crate) async fn create_connector_table(&self, text: &str, create: &CreateConnectorTable) -> Result<()> {
        let name = self.resolve_name(&create.name)?;
        if self.inner.catalog.contains(&name) {
            if create.if_not_exists {
                return Ok(());
            }
            return Err(FreshetError::TableExists { name });
        }
        let (table, schema) = self.connector_table(&name, create).await?;
        let stored = self.inner.catalog.create_connector_table(&name, schema, text).await?;
        if let Some(source) = &table.source {
            self.open_source(&name, source, stored);
        }
        self.inner.streams.insert(&name, table);
        Ok(())
    }

    /// Connector tables from their stored statements (at open). One that fails is logged and
    /// reads as broken.
    pub(crate) async fn restore_connector_tables(&self) {
        let manifest = self.inner.catalog.manifest();
        for (name, entry) in &manifest.entries {
            let CatalogEntry::ConnectorTable { sql, options, .. } = entry else {
                continue;
            };
            let restored = async {
                let create = stored_connector_table(sql, options)?;
                self.connector_table(name, &create).await
            };
            match restored.await {
                Ok((table, _)) => {
                    if let (Some(source), Ok(stored)) = (&table.source, self.inner.catalog.table(name)) {
                        self.open_source(name, source, stored);
                    }
                    self.inner.streams.insert(name, table);
                }
                Err(e) => tracing::warn!(table = %name, error = %e, "connector table cannot be restored"),
            }
        }
    }

    /// Connects a source to its table: the table's generated rows are made by it, and an
    /// unbounded source is followed.
    fn open_source(&self, name: &str, source: &Arc<Source>, table: Arc<freshet_storage::Table>) {
        if source.makes_rows_on_read() {
            table.set_generator(source.clone());
        }
        self.inner.streams.follow(name, source.clone(), table);
    }

    /// The runtime side of a connector table and its columns.
    async fn connector_table(&self, name: &str, create: &CreateConnectorTable) -> Result<(ConnectorTable, SchemaRef)> {
        let mut connector = ConnectorOptions::new(name, &create.options).connector()?;
        partition_columns(name, create, &mut connector)?;
        if let freshet_runtime::Connector::Filesystem(files) = &connector {
            self.inner
                .file_access
                .check("filesystem connector path", &files.path.to_string_lossy())?;
        }
        // DataFusion turns the physical columns' SQL types into Arrow types.
        let physical: Vec<_> = create
            .columns
            .iter()
            .filter_map(|c| match &c.kind {
                ColumnKind::Physical { data_type, not_null } => Some((&c.name, data_type, *not_null)),
                ColumnKind::Computed(_) => None,
            })
            .collect();
        if physical.is_empty() {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{name}\": a connector table needs at least one physical column"
            )));
        }
        // DataFusion has no MAP type: a MAP is planned as a ROW of its key and value, which
        // becomes the Arrow map type afterwards.
        let columns_sql = physical
            .iter()
            .map(|(n, t, not_null)| format!("{n} {}{}", maps_as_rows(t), if *not_null { " NOT NULL" } else { "" }))
            .collect::<Vec<_>>()
            .join(", ");
        let state = self.inner.ctx.state();
        let plan = state
            .create_logical_plan(&format!("CREATE TABLE __columns ({columns_sql})"))
            .await
            .map_err(|e| FreshetError::from(e).context(format!("table \"{name}\"")))?;
        let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(planned)) = plan else {
            return Err(FreshetError::Internal(
                "a column list did not plan as CREATE TABLE".into(),
            ));
        };
        let planned_schema = planned.input.schema().as_arrow();
        // The table names its columns as any identifier; the data (JSON keys, ROW fields) as
        // the DDL writes them.
        let declared_schema = |written: bool| {
            Arc::new(Schema::new(
                planned_schema
                    .fields()
                    .iter()
                    .zip(&physical)
                    .map(|(field, (ident, sql_type, _))| {
                        let name = if written {
                            ident.value.as_str()
                        } else {
                            field.name().as_str()
                        };
                        declared(field, name, sql_type, written)
                    })
                    .collect::<Vec<_>>(),
            ))
        };
        let physical_schema: SchemaRef = declared_schema(false);
        if let freshet_runtime::Connector::Filesystem(files) = &connector
            && matches!(files.format, freshet_runtime::FileFormat::Csv(_))
            && let Some(field) = physical_schema.fields().iter().find(|f| holds_map(f.data_type()))
        {
            return Err(FreshetError::Unsupported(format!(
                "table \"{name}\": column {} holds a MAP, which format 'csv' cannot (use 'json' or 'parquet')",
                field.name()
            )));
        }
        let decode = declared_schema(true);
        let df_physical = DFSchema::try_from(physical_schema.as_ref().clone())?;
        let mut fields = Vec::new();
        let mut sources = Vec::new();
        let mut next_physical = 0;
        let normalize = self.normalizes_identifiers();
        let mut volatile = false;
        for column in &create.columns {
            match &column.kind {
                ColumnKind::Physical { .. } => {
                    fields.push(physical_schema.field(next_physical).as_ref().clone());
                    sources.push(SourceColumn::Physical(next_physical));
                    next_physical += 1;
                }
                ColumnKind::Computed(expr) => {
                    let column_name = if normalize && column.name.quote_style.is_none() {
                        column.name.value.to_lowercase()
                    } else {
                        column.name.value.clone()
                    };
                    let logical = state
                        .create_logical_expr_from_sql_expr(
                            ExprWithAlias {
                                expr: expr.as_ref().clone(),
                                alias: None,
                            },
                            &df_physical,
                        )
                        .map_err(|e| {
                            FreshetError::from(e)
                                .context(format!("table \"{name}\": computed column \"{column_name}\""))
                        })?;
                    volatile |= logical.is_volatile();
                    let (_, field) = logical.to_field(&df_physical)?;
                    let (data_type, nullable) = (field.data_type().clone(), field.is_nullable());
                    let physical = state.create_physical_expr(logical, &df_physical)?;
                    fields.push(Field::new(column_name, data_type, nullable));
                    sources.push(SourceColumn::Computed(physical));
                }
            }
        }
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        crate::execute::check_column_names(name, &schema)?;
        for key in &create.primary_key {
            if !schema
                .fields()
                .iter()
                .any(|f| f.name().eq_ignore_ascii_case(&key.value))
            {
                return Err(FreshetError::InvalidStatement(format!(
                    "table \"{name}\": primary-key column \"{}\" is not a column",
                    key.value
                )));
            }
        }
        let options = ConnectorOptions::new(name, &create.options);
        let event_time = match &create.watermark {
            Some(watermark) => Some(self.event_time(name, watermark, &schema, options.event_time()?)?),
            None => {
                if let Some((key, _)) = create.options.iter().find(|(k, _)| k.starts_with("late-data")) {
                    return Err(FreshetError::InvalidStatement(format!(
                        "table \"{name}\": option '{key}' applies to a table with a WATERMARK"
                    )));
                }
                None
            }
        };
        let source = if connector.is_source() {
            let source = Source::new(
                name,
                &connector,
                decode,
                physical_schema,
                sources,
                schema.clone(),
                self.inner.materialized.clock.clone(),
            )?;
            let declared: Vec<String> = create
                .columns
                .iter()
                .map(|column| match &column.kind {
                    ColumnKind::Physical { data_type, not_null } => {
                        format!(
                            "{} {data_type}{}",
                            column.name,
                            if *not_null { " NOT NULL" } else { "" }
                        )
                    }
                    ColumnKind::Computed(expr) => format!("{} AS {expr}", column.name),
                })
                .collect();
            let source = source.with_rows_made_on_read((!volatile).then(|| declared.join(", ")).as_deref());
            Some(Arc::new(match event_time {
                Some(event_time) => source.with_event_time(event_time),
                None => source,
            }))
        } else {
            None
        };
        let retention = options.retention()?;
        Ok((
            ConnectorTable {
                connector,
                source,
                retention,
            },
            schema,
        ))
    }

    /// A source's event time from its `WATERMARK FOR column AS expression`: the column must be a
    /// timestamp, and so must the expression (over the table's columns).
    fn event_time(
        &self,
        name: &str,
        watermark: &freshet_sql::Watermark,
        schema: &SchemaRef,
        options: freshet_runtime::EventTimeOptions,
    ) -> Result<EventTime> {
        let in_context = |message: String| {
            FreshetError::InvalidStatement(format!(
                "table \"{name}\": WATERMARK FOR \"{}\": {message}",
                watermark.column.value
            ))
        };
        let column = schema
            .fields()
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(&watermark.column.value))
            .ok_or_else(|| in_context("no such column".into()))?;
        if !matches!(schema.field(column).data_type(), DataType::Timestamp(_, _)) {
            return Err(in_context(format!(
                "the event-time column must be a TIMESTAMP, not {}",
                schema.field(column).data_type()
            )));
        }
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let state = self.inner.ctx.state();
        let logical = state
            .create_logical_expr_from_sql_expr(
                ExprWithAlias {
                    expr: watermark.expression.clone(),
                    alias: None,
                },
                &df_schema,
            )
            .map_err(|e| in_context(e.to_string()))?;
        let (_, field) = logical.to_field(&df_schema)?;
        if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
            return Err(in_context(format!(
                "the watermark expression must be a TIMESTAMP, not {}",
                field.data_type()
            )));
        }
        // `ts - INTERVAL '4' SECOND` by an integer subtraction (the same values).
        let fast = freshet_common::intervals_as_durations(logical.clone(), &df_schema);
        let watermark = match state.create_physical_expr(fast, &df_schema) {
            Ok(watermark) => watermark,
            Err(_) => state.create_physical_expr(logical, &df_schema)?,
        };
        Ok(EventTime {
            column,
            watermark,
            options,
        })
    }

    /// Lets the sources a statement reads (directly or through views) ingest what is new, so
    /// that it reads all that has arrived.
    pub(crate) async fn ingest_sources_of(&self, statement: &DFStatement) -> Result<()> {
        // Defining a view reads nothing: what it reads is ingested when the view is read.
        if matches!(statement, DFStatement::Statement(s) if matches!(s.as_ref(), Statement::CreateView(_))) {
            return Ok(());
        }
        let mut sources = Vec::new();
        self.sources_read(statement, &mut sources, 0);
        let is_query = matches!(statement, DFStatement::Statement(s) if matches!(s.as_ref(), Statement::Query(_)));
        for name in sources {
            let Some(table) = self.inner.streams.get(&name) else {
                continue;
            };
            match &table.source {
                Some(source) => {
                    let table = self.inner.catalog.table(&name)?;
                    // Every file that has arrived; a generator's one step (one without a rate
                    // always has more).
                    while source.ingest(&table).await?.pending && source.reads_files() {}
                }
                // As in Flink: a sink-only connector has nothing to read.
                None if is_query => {
                    return Err(FreshetError::InvalidStatement(format!(
                        "table \"{name}\" is a '{}' sink: it can be written to (INSERT INTO), not read",
                        table.connector.name()
                    )));
                }
                None => {}
            }
        }
        Ok(())
    }

    /// The unbounded sources (a monitored directory, an endless generator) that a single query
    /// reads, directly or through views: a shell follows such a query as the sources bring
    /// rows. Empty for anything else.
    pub fn unbounded_sources_read(&self, sql: &str) -> Vec<String> {
        let Ok(parsed) = freshet_sql::parse_statements(sql) else {
            return Vec::new();
        };
        let [statement] = parsed.as_slice() else {
            return Vec::new();
        };
        let FreshetStatement::DataFusion(statement) = &statement.statement else {
            return Vec::new();
        };
        if !matches!(statement.as_ref(), DFStatement::Statement(s) if matches!(s.as_ref(), Statement::Query(_))) {
            return Vec::new();
        }
        let mut sources = Vec::new();
        self.sources_read(statement, &mut sources, 0);
        sources.retain(|name| {
            self.inner
                .streams
                .get(name)
                .and_then(|t| t.source.clone())
                .is_some_and(|s| !s.is_bounded())
        });
        sources
    }

    /// The connector tables a statement names, through views too.
    pub(crate) fn sources_read(&self, statement: &DFStatement, out: &mut Vec<String>, depth: usize) {
        let DFStatement::Statement(statement) = statement else {
            return;
        };
        let mut names = Vec::new();
        let _ = visit_relations(statement.as_ref(), |relation: &ObjectName| {
            names.push(relation.clone());
            ControlFlow::<()>::Continue(())
        });
        let manifest = self.inner.catalog.manifest();
        for name in names {
            let Ok(name) = self.resolve_name(&name) else { continue };
            if out.contains(&name) {
                continue;
            }
            match manifest.entries.get(&name) {
                Some(CatalogEntry::ConnectorTable { .. }) => out.push(name),
                // Views nest a few levels at most; the depth bounds a cycle's recursion.
                Some(CatalogEntry::Definition { object, sql }) if object == "view" && depth < 16 => {
                    for view in freshet_sql::parse_statements(sql).into_iter().flatten() {
                        if let FreshetStatement::DataFusion(inner) = &view.statement {
                            self.sources_read(inner, out, depth + 1);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// The SQL type with every `MAP<k, v>` (at any depth) written as `ROW<key k, value v>`, which
/// DataFusion's planner turns into Arrow types.
fn maps_as_rows(sql: &SqlType) -> SqlType {
    use datafusion::sql::sqlparser::ast::{ArrayElemTypeDef, Ident, StructBracketKind, StructField};
    match sql {
        SqlType::Map(key, value) => SqlType::Struct(
            vec![
                StructField {
                    field_name: Some(Ident::new("key")),
                    field_type: maps_as_rows(key),
                    options: None,
                },
                StructField {
                    field_name: Some(Ident::new("value")),
                    field_type: maps_as_rows(value),
                    options: None,
                },
            ],
            StructBracketKind::AngleBrackets,
        ),
        SqlType::Struct(fields, brackets) => SqlType::Struct(
            fields
                .iter()
                .map(|f| StructField {
                    field_type: maps_as_rows(&f.field_type),
                    ..f.clone()
                })
                .collect(),
            *brackets,
        ),
        SqlType::Array(ArrayElemTypeDef::AngleBracket(inner)) => {
            SqlType::Array(ArrayElemTypeDef::AngleBracket(Box::new(maps_as_rows(inner))))
        }
        SqlType::Array(ArrayElemTypeDef::SquareBracket(inner, size)) => {
            SqlType::Array(ArrayElemTypeDef::SquareBracket(Box::new(maps_as_rows(inner)), *size))
        }
        SqlType::Array(ArrayElemTypeDef::Parenthesis(inner)) => {
            SqlType::Array(ArrayElemTypeDef::Parenthesis(Box::new(maps_as_rows(inner))))
        }
        other => other.clone(),
    }
}

/// A column's field as declared: `planned` is DataFusion's field for [`maps_as_rows`]'s type,
/// whose rows that stand for maps become Arrow maps again (keys never NULL, as in Flink and
/// Arrow); with `written`, ROW fields keep the names the DDL wrote (the data's: JSON keys are
/// case-sensitive) rather than normalized ones — not yet inside arrays and maps, whose rows the
/// source does not rename (`freshet_runtime::source::rename_fields`).
fn declared(planned: &Field, name: &str, sql: &SqlType, written: bool) -> Field {
    use datafusion::sql::sqlparser::ast::ArrayElemTypeDef;
    let data_type = match (planned.data_type(), sql) {
        (DataType::Struct(fields), SqlType::Map(key, value)) if fields.len() == 2 => {
            // DataFusion's map functions compare keys with plain strings, not string views.
            let plain = |field: Field| match field.data_type() {
                DataType::Utf8View => field.with_data_type(DataType::Utf8),
                _ => field,
            };
            let entries = DataType::Struct(
                vec![
                    plain(declared(&fields[0], "key", key, false)).with_nullable(false),
                    plain(declared(&fields[1], "value", value, false)).with_nullable(true),
                ]
                .into(),
            );
            DataType::Map(Arc::new(Field::new("entries", entries, false)), false)
        }
        (DataType::Struct(fields), SqlType::Struct(sql_fields, _)) if fields.len() == sql_fields.len() => {
            DataType::Struct(
                fields
                    .iter()
                    .zip(sql_fields)
                    .map(|(f, s)| {
                        let name = match (&s.field_name, written) {
                            (Some(ident), true) => ident.value.as_str(),
                            _ => f.name().as_str(),
                        };
                        Arc::new(declared(f, name, &s.field_type, written))
                    })
                    .collect(),
            )
        }
        (
            DataType::List(item),
            SqlType::Array(
                ArrayElemTypeDef::AngleBracket(inner)
                | ArrayElemTypeDef::SquareBracket(inner, _)
                | ArrayElemTypeDef::Parenthesis(inner),
            ),
        ) => DataType::List(Arc::new(declared(item, item.name(), inner, false))),
        (data_type, _) => data_type.clone(),
    };
    Field::new(name, data_type, planned.is_nullable())
}

/// Gives a filesystem table its `PARTITIONED BY` columns (by the names the data uses); any
/// other connector takes none.
fn partition_columns(name: &str, create: &CreateConnectorTable, connector: &mut Connector) -> Result<()> {
    if create.partitioned_by.is_empty() {
        return Ok(());
    }
    let Connector::Filesystem(files) = connector else {
        return Err(FreshetError::Unsupported(format!(
            "table \"{name}\": PARTITIONED BY with the '{}' connector (the filesystem connector takes it)",
            connector.name()
        )));
    };
    let physical: Vec<&Ident> = create
        .columns
        .iter()
        .filter(|c| matches!(c.kind, ColumnKind::Physical { .. }))
        .map(|c| &c.name)
        .collect();
    for partition in &create.partitioned_by {
        let column = physical.iter().find(|c| match partition.quote_style {
            Some(_) => c.value == partition.value,
            None => c.value.eq_ignore_ascii_case(&partition.value),
        });
        let Some(column) = column else {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{name}\": partition column {partition} is not a physical column of the table"
            )));
        };
        if files.partition_columns.contains(&column.value) {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{name}\": partition column {partition} is named twice"
            )));
        }
        files.partition_columns.push(column.value.clone());
    }
    if files.partition_columns.len() == physical.len() {
        return Err(FreshetError::InvalidStatement(format!(
            "table \"{name}\": every column is a partition column, which leaves the files no column"
        )));
    }
    Ok(())
}

/// Whether a value of the type is or holds a map.
fn holds_map(data_type: &DataType) -> bool {
    match data_type {
        DataType::Map(..) => true,
        DataType::Struct(fields) => fields.iter().any(|f| holds_map(f.data_type())),
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            holds_map(item.data_type())
        }
        _ => false,
    }
}

impl Engine {
    /// The event time of every source table that declares a watermark: incremental pipelines
    /// close the windows over them as their watermarks pass.
    pub(crate) fn event_times(&self) -> freshet_incremental::EventTimes {
        self.inner
            .streams
            .sources()
            .into_iter()
            .filter_map(|(name, source)| {
                let event_time = source.event_time()?;
                let column = source.schema().field(event_time.column).name().clone();
                let allowed_lateness_ms = event_time.options.allowed_lateness_ms();
                Some((
                    name,
                    freshet_incremental::EventTimeColumn {
                        column,
                        allowed_lateness_ms,
                    },
                ))
            })
            .collect()
    }

    /// The progress (watermark, late rows) of each source with an event time among `versions`
    /// (table → version), as of that version.
    async fn event_time_progress(
        &self,
        versions: &std::collections::BTreeMap<String, u64>,
    ) -> Result<Vec<(String, Arc<Source>, freshet_runtime::SourceProgress)>> {
        let mut out = Vec::new();
        for (name, &version) in versions {
            let Some(source) = self.inner.streams.get(name).and_then(|t| t.source.clone()) else {
                continue;
            };
            if source.event_time().is_none() {
                continue;
            }
            let snapshot = self.inner.catalog.table(name)?.snapshot_at(version).await?;
            out.push((name.clone(), source, freshet_runtime::SourceProgress::at(&snapshot)));
        }
        Ok(out)
    }

    /// Sets on an epoch the watermark of each source with an event time among `versions`
    /// (table → version), as of that version, and which are idle.
    pub(crate) async fn set_watermarks(
        &self,
        epoch: &mut freshet_incremental::Epoch,
        versions: &std::collections::BTreeMap<String, u64>,
    ) -> Result<()> {
        let now = self.inner.materialized.clock.now_ms();
        for (name, source, progress) in self.event_time_progress(versions).await? {
            if let Some(watermark) = progress.watermark_ms {
                epoch.set_watermark(&name, watermark);
            }
            if source.is_idle(&progress, now) {
                epoch.set_idle(&name);
            }
        }
        Ok(())
    }

    /// The combined watermark (the least; none while an input has none) and the late rows of
    /// the inputs with an event time among `versions` (table → version), as of those versions;
    /// `None` when no input has an event time.
    pub(crate) async fn inputs_event_time(
        &self,
        versions: &std::collections::BTreeMap<String, u64>,
    ) -> Result<Option<(Option<i64>, u64)>> {
        let mut combined: Option<(Option<i64>, u64)> = None;
        for (_, _, progress) in self.event_time_progress(versions).await? {
            combined = Some(match combined {
                None => (progress.watermark_ms, progress.late_rows),
                Some((watermark, late)) => (
                    watermark.zip(progress.watermark_ms).map(|(a, b)| a.min(b)),
                    late + progress.late_rows,
                ),
            });
        }
        Ok(combined)
    }

    /// Each source table's ingestion: its connector, the version and rows ingested so far, its
    /// watermark and the rows it dropped as late or skipped as malformed.
    pub fn sources(&self) -> Vec<SourceInfo> {
        let mut out = Vec::new();
        for (name, source) in self.inner.streams.sources() {
            let Ok(table) = self.inner.catalog.table(&name) else {
                continue;
            };
            let snapshot = table.snapshot();
            let progress = freshet_runtime::SourceProgress::at(&snapshot);
            let connector = self.inner.streams.get(&name).map(|t| t.connector.name()).unwrap_or("");
            out.push(SourceInfo {
                connector: connector.to_string(),
                version: snapshot.version(),
                ingested_at_ms: snapshot.manifest().committed_at_ms,
                rows: snapshot.num_rows(),
                watermark_ms: progress.watermark_ms,
                late_rows: progress.late_rows,
                skipped_rows: source.skipped(),
                bounded: source.is_bounded(),
                name,
            });
        }
        out
    }

    /// The system table `freshet.sources`: [`Engine::sources`].
    pub(crate) fn sources_batch(&self) -> Result<datafusion::arrow::record_batch::RecordBatch> {
        use datafusion::arrow::array::{ArrayRef, BooleanArray, StringArray, TimestampMillisecondArray, UInt64Array};
        let sources = self.sources();
        let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        let connectors: Vec<&str> = sources.iter().map(|s| s.connector.as_str()).collect();
        let versions: Vec<u64> = sources.iter().map(|s| s.version).collect();
        // +infinity (an ended generator) shows as NULL with `bounded`: a timestamp cannot hold it.
        let watermarks: Vec<Option<i64>> = sources
            .iter()
            .map(|s| s.watermark_ms.filter(|&w| w != i64::MAX))
            .collect();
        let late: Vec<u64> = sources.iter().map(|s| s.late_rows).collect();
        let skipped: Vec<u64> = sources.iter().map(|s| s.skipped_rows).collect();
        let bounded: Vec<bool> = sources.iter().map(|s| s.bounded).collect();
        let ts = DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None);
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("connector", DataType::Utf8, false),
            Field::new("version", DataType::UInt64, false),
            Field::new("watermark", ts, true),
            Field::new("late_rows", DataType::UInt64, false),
            Field::new("skipped_rows", DataType::UInt64, false),
            Field::new("bounded", DataType::Boolean, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(connectors)),
            Arc::new(UInt64Array::from(versions)),
            Arc::new(TimestampMillisecondArray::from(watermarks)),
            Arc::new(UInt64Array::from(late)),
            Arc::new(UInt64Array::from(skipped)),
            Arc::new(BooleanArray::from(bounded)),
        ];
        datafusion::arrow::record_batch::RecordBatch::try_new(schema, columns)
            .map_err(|e| FreshetError::Internal(e.to_string()))
    }
}

/// One source table's ingestion (see [`Engine::sources`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The source table.
    pub name: String,
    /// Its connector (`filesystem`, `datagen`, `nexmark` ...).
    pub connector: String,
    /// The table's version: each ingestion commits one.
    pub version: u64,
    /// When the newest version was committed (engine clock, ms since the epoch).
    pub ingested_at_ms: i64,
    /// Rows the table holds (ingested, less what retention removed).
    pub rows: u64,
    /// The event-time watermark, for a source with one (`i64::MAX` once a bounded source has
    /// ended).
    pub watermark_ms: Option<i64>,
    /// Rows dropped as later than the watermark.
    pub late_rows: u64,
    /// Rows skipped as malformed.
    pub skipped_rows: u64,
    /// Whether the source ends.
    pub bounded: bool,
}
