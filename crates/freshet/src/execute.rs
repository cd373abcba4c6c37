//! Running one statement: Freshet's own statements and DDL are handled here; everything else is
//! planned and run by DataFusion over the engine's tables.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::{Constraint, TableReference};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::{Ident, ObjectName, ObjectType, Statement, TableObject};
use futures::TryStreamExt;

use freshet_common::{FreshetError, Result};
use freshet_sql::{FreshetStatement, ParsedStatement};
use freshet_storage::{CatalogEntry, NewTable};

use crate::engine::Engine;
use crate::schema::{CATALOG_NAME, INSERT_SUFFIX, SCHEMA_NAME};
use crate::time_travel;

impl Engine {
    /// Runs one statement.
    pub(crate) async fn run(&self, parsed: &ParsedStatement) -> Result<SendableRecordBatchStream> {
        match &parsed.statement {
            FreshetStatement::Compact { table } => {
                let name = self.resolve_name(table)?;
                let table = self.table(&name)?;
                let version = match table.compact().await? {
                    Some(v) => v,
                    None => table.snapshot().version(),
                };
                single_count("version", version)
            }
            FreshetStatement::Vacuum { table, retain } => {
                let name = table.as_ref().map(|t| self.resolve_name(t)).transpose()?;
                let report = self.vacuum(name.as_deref(), *retain).await?;
                result_rows(vec![
                    (
                        "versions_removed",
                        Arc::new(UInt64Array::from(vec![report.versions_removed])),
                    ),
                    ("files_removed", Arc::new(UInt64Array::from(vec![report.files_removed]))),
                    ("bytes_removed", Arc::new(UInt64Array::from(vec![report.bytes_removed]))),
                ])
            }
            FreshetStatement::DataFusion(statement) => self.run_datafusion(parsed, statement).await,
            FreshetStatement::CreateTable { statement, options } => {
                let plan = self.inner.ctx.state().statement_to_plan((**statement).clone()).await?;
                let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) = plan else {
                    return Err(FreshetError::Internal(format!("not a CREATE TABLE: {}", parsed.text)));
                };
                self.create_table(create, options).await?;
                empty_stream()
            }
            FreshetStatement::AlterTableOptions { table, set, reset } => {
                let name = self.resolve_name(table)?;
                self.alter_table_options(&name, set, reset).await?;
                empty_stream()
            }
            FreshetStatement::CreateConnectorTable(create) => {
                self.create_connector_table(&parsed.text, create).await?;
                empty_stream()
            }
            FreshetStatement::ShowJobs => self.show_jobs().await,
            FreshetStatement::Subscribe { table, snapshot } => {
                let name = self.resolve_name(table)?;
                self.subscribe(&name, *snapshot).await
            }
            FreshetStatement::StopJob { id } => self.stop_job(id).await,
            FreshetStatement::StatementSet { inserts } => self.start_job(inserts).await,
            FreshetStatement::SetOption { key, value } => {
                self.set_option(key, value)?;
                empty_stream()
            }
            other => self.run_materialized(other).await,
        }
    }

    async fn run_datafusion(
        &self,
        parsed: &ParsedStatement,
        statement: &DFStatement,
    ) -> Result<SendableRecordBatchStream> {
        if let Some(shown) = self.show_setting(statement).await? {
            return Ok(shown);
        }
        let mut statement = statement.clone();
        if let DFStatement::Statement(inner) = &statement {
            match inner.as_ref() {
                Statement::Update(update) => return self.update(update).await,
                Statement::Delete(delete) => return self.delete(delete).await,
                Statement::Drop {
                    object_type: ObjectType::Table | ObjectType::View,
                    if_exists,
                    names,
                    cascade,
                    ..
                } => {
                    for name in names {
                        self.drop_object(name, *if_exists, *cascade).await?;
                    }
                    return empty_stream();
                }
                _ => {}
            }
        }
        if let DFStatement::CreateExternalTable(create) = &statement {
            let name = self.resolve_name(&create.name)?;
            if self.inner.catalog.contains(&name) {
                if create.if_not_exists {
                    return empty_stream();
                }
                return Err(FreshetError::TableExists { name });
            }
            self.define(&parsed.text).await?;
            if let Err(e) = self
                .inner
                .catalog
                .create_definition(&name, "external_table", &parsed.text)
                .await
            {
                self.inner.schema.forget(&name);
                return Err(e);
            }
            return empty_stream();
        }
        if let DFStatement::CopyTo(copy) = &statement {
            self.inner.file_access.check("COPY target", &copy.target)?;
        }
        if self.is_job(&statement) {
            return self.start_job(std::slice::from_ref(parsed)).await;
        }
        if let DFStatement::Explain(explain) = &statement
            && self.is_job(&explain.statement)
        {
            return self.explain_job(&explain.statement, explain.options.analyze).await;
        }
        self.ingest_sources_of(&statement).await?;
        time_travel::rewrite(self, &mut statement).await?;
        self.target_insert(&mut statement);

        let state = self.inner.ctx.state();
        let plan = state.statement_to_plan(statement).await?;
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                self.create_table(create, &[]).await?;
                empty_stream()
            }
            LogicalPlan::Ddl(DdlStatement::CreateView(view)) => {
                let name = self.resolve_reference(view.name.clone())?;
                if self.inner.catalog.contains(&name) {
                    if view.or_replace {
                        return Err(FreshetError::Unsupported("CREATE OR REPLACE VIEW".into()));
                    }
                    return Err(FreshetError::TableExists { name });
                }
                if view.temporary {
                    return Err(FreshetError::Unsupported("temporary views".into()));
                }
                self.inner
                    .ctx
                    .execute_logical_plan(LogicalPlan::Ddl(DdlStatement::CreateView(view)))
                    .await?;
                if let Err(e) = self.inner.catalog.create_definition(&name, "view", &parsed.text).await {
                    self.inner.schema.forget(&name);
                    return Err(e);
                }
                empty_stream()
            }
            LogicalPlan::Ddl(
                DdlStatement::CreateCatalog(_)
                | DdlStatement::CreateCatalogSchema(_)
                | DdlStatement::DropCatalogSchema(_)
                | DdlStatement::CreateIndex(_)
                | DdlStatement::CreateFunction(_)
                | DdlStatement::DropFunction(_),
            ) => Err(FreshetError::Unsupported(format!(
                "{} (Freshet has one schema, \"{SCHEMA_NAME}\")",
                first_words(&parsed.text)
            ))),
            plan => {
                let frame = self.execute_plan(plan).await?;
                crate::progress::execute_tracked(frame).await
            }
        }
    }

    async fn create_table(
        &self,
        create: datafusion::logical_expr::CreateMemoryTable,
        options: &[(String, String)],
    ) -> Result<()> {
        let name = self.resolve_reference(create.name.clone())?;
        let options = crate::retention::table_options(&name, options)?;
        if create.temporary {
            return Err(FreshetError::Unsupported("temporary tables".into()));
        }
        if create.or_replace {
            return Err(FreshetError::Unsupported(
                "CREATE OR REPLACE TABLE: drop the table first".into(),
            ));
        }
        if !create.column_defaults.is_empty() {
            return Err(FreshetError::Unsupported(format!(
                "table \"{name}\": column DEFAULT values (column \"{}\")",
                create.column_defaults[0].0
            )));
        }
        if self.inner.catalog.contains(&name) {
            if create.if_not_exists {
                return Ok(());
            }
            return Err(FreshetError::TableExists { name });
        }
        let input_schema: SchemaRef = Arc::new(create.input.schema().as_arrow().clone());
        let mut key = Vec::new();
        for constraint in create.constraints.iter() {
            match constraint {
                Constraint::PrimaryKey(indices) if key.is_empty() => key = indices.clone(),
                Constraint::PrimaryKey(_) => {
                    return Err(FreshetError::InvalidStatement(format!(
                        "table \"{name}\": a table has at most one primary key"
                    )));
                }
                Constraint::Unique(_) => {
                    return Err(FreshetError::Unsupported(format!(
                        "table \"{name}\": UNIQUE constraints (use a PRIMARY KEY)"
                    )));
                }
            }
        }
        let fields: Vec<Field> = input_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let nullable = f.is_nullable() && !key.contains(&i);
                Field::new(f.name(), f.data_type().clone(), nullable)
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        check_column_names(&name, &schema)?;
        let primary_key = key.iter().map(|&i| schema.field(i).name().clone()).collect();
        let is_empty = matches!(create.input.as_ref(), LogicalPlan::EmptyRelation(e) if !e.produce_one_row);
        let ctx = self.inner.ctx.clone();
        let input = create.input.clone();
        self.inner
            .catalog
            .create_table(
                &name,
                schema.clone(),
                primary_key,
                NewTable::Plain(options),
                |table| async move {
                    if is_empty {
                        return Ok(());
                    }
                    let mut txn = table.begin("CREATE TABLE AS SELECT").await?;
                    let mut rows = ctx
                        .execute_logical_plan((*input).clone())
                        .await?
                        .execute_stream()
                        .await?;
                    while let Some(batch) = rows.try_next().await? {
                        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
                            .map_err(|e| FreshetError::InvalidStatement(format!("table \"{}\": {e}", table.name())))?;
                        txn.insert(&batch).await?;
                    }
                    txn.commit().await?;
                    Ok(())
                },
            )
            .await?;
        Ok(())
    }

    async fn drop_object(&self, name: &ObjectName, if_exists: bool, cascade: bool) -> Result<()> {
        let name = self.resolve_name(name)?;
        match self.inner.catalog.manifest().entries.get(&name) {
            None if if_exists => return Ok(()),
            None => return Err(FreshetError::TableNotFound { name }),
            Some(CatalogEntry::MaterializedTable { .. }) => {
                return Err(FreshetError::InvalidStatement(format!(
                    "\"{name}\" is a materialized table: use DROP MATERIALIZED TABLE {name}"
                )));
            }
            Some(_) => {}
        }
        self.drop_with_dependents(&name, cascade).await
    }

    /// `SET 'key' = 'value'`: a materialized-table setting, or any DataFusion option.
    fn set_option(&self, key: &str, value: &str) -> Result<()> {
        let mut settings = self
            .inner
            .materialized
            .settings
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if settings.set(key, value)? {
            return Ok(());
        }
        drop(settings);
        if self.inner.streams.set(key, value)? {
            return Ok(());
        }
        let state = self.inner.ctx.state_ref();
        let mut state = state.write();
        state.config_mut().options_mut().set(key, value)?;
        Ok(())
    }

    /// Freshet's own settings with their values (materialized tables, retention and vacuum,
    /// streams), as `SET` takes them.
    fn settings(&self) -> Vec<(&'static str, String)> {
        let mut entries = self.inner.materialized.settings().entries();
        entries.extend(self.inner.streams.entries());
        entries
    }

    /// `SHOW name` of one of Freshet's settings, and `SHOW ALL` with them after DataFusion's;
    /// `None` for anything else.
    async fn show_setting(&self, statement: &DFStatement) -> Result<Option<SendableRecordBatchStream>> {
        let DFStatement::Statement(inner) = statement else {
            return Ok(None);
        };
        let Statement::ShowVariable { variable } = inner.as_ref() else {
            return Ok(None);
        };
        let name = variable.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join(".");
        let name = name.trim().trim_matches('\'').to_ascii_lowercase();
        let ours = self.settings();
        let rows: Vec<(String, String)> = if name == "all" {
            let plan = self.inner.ctx.state().statement_to_plan(statement.clone()).await?;
            let batches = self.inner.ctx.execute_logical_plan(plan).await?.collect().await?;
            let mut rows = Vec::new();
            for batch in &batches {
                let (names, values) = (batch.column(0), batch.column(1));
                for row in 0..batch.num_rows() {
                    let text = |array: &ArrayRef| {
                        datafusion::arrow::util::display::array_value_to_string(array, row).unwrap_or_default()
                    };
                    rows.push((text(names), text(values)));
                }
            }
            rows.extend(ours.into_iter().map(|(k, v)| (k.to_string(), v)));
            rows.sort();
            rows
        } else {
            match ours.into_iter().find(|(key, _)| *key == name) {
                Some((key, value)) => vec![(key.to_string(), value)],
                None => return Ok(None),
            }
        };
        let (names, values): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
        result_rows(vec![
            ("name", Arc::new(datafusion::arrow::array::StringArray::from(names))),
            ("value", Arc::new(datafusion::arrow::array::StringArray::from(values))),
        ])
        .map(Some)
    }

    /// Points an INSERT into a Freshet table at the table's insert provider, whose columns all
    /// accept NULL: NOT NULL is then checked by the table itself, which names the column.
    fn target_insert(&self, statement: &mut DFStatement) {
        let DFStatement::Statement(inner) = statement else {
            return;
        };
        let Statement::Insert(insert) = inner.as_mut() else {
            return;
        };
        let TableObject::TableName(name) = &mut insert.table else {
            return;
        };
        let Ok(table) = self.resolve_name(name) else { return };
        if self.inner.catalog.table(&table).is_ok() {
            *name = ObjectName::from(vec![Ident::with_quote('"', format!("{table}{INSERT_SUFFIX}"))]);
            if insert.table_alias.is_none() && !insert.columns.is_empty() {
                // Qualified column names in the column list keep working.
                insert.columns = insert
                    .columns
                    .iter()
                    .map(|c| ObjectName(c.0.last().cloned().into_iter().collect()))
                    .collect();
            }
        }
    }

    /// Whether unquoted identifiers are lower-cased (DataFusion's setting).
    pub(crate) fn normalizes_identifiers(&self) -> bool {
        self.inner
            .ctx
            .state()
            .config()
            .options()
            .sql_parser
            .enable_ident_normalization
    }

    /// The catalog name of a table named in a statement.
    pub(crate) fn resolve_name(&self, name: &ObjectName) -> Result<String> {
        let normalize = self.normalizes_identifiers();
        let reference = object_name_to_table_reference(name.clone(), normalize)?;
        self.resolve_reference(reference)
    }

    pub(crate) fn resolve_reference(&self, reference: TableReference) -> Result<String> {
        let (catalog, schema) = match &reference {
            TableReference::Bare { .. } => (None, None),
            TableReference::Partial { schema, .. } => (None, Some(schema.as_ref())),
            TableReference::Full { catalog, schema, .. } => (Some(catalog.as_ref()), Some(schema.as_ref())),
        };
        if catalog.is_some_and(|c| c != CATALOG_NAME) || schema.is_some_and(|s| s != SCHEMA_NAME) {
            return Err(FreshetError::InvalidStatement(format!(
                "\"{reference}\": Freshet has one catalog and schema, \"{CATALOG_NAME}.{SCHEMA_NAME}\""
            )));
        }
        let table = reference.table();
        if table.contains('@') {
            return Err(FreshetError::InvalidStatement(format!(
                "invalid name \"{table}\": names cannot contain '@'"
            )));
        }
        Ok(table.to_string())
    }
}

pub(crate) fn check_column_names(table: &str, schema: &Schema) -> Result<()> {
    let fields = schema.fields();
    for (i, field) in fields.iter().enumerate() {
        if field.name().starts_with("__freshet") || field.name() == freshet_common::WEIGHT_COLUMN {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{table}\": column name \"{}\" is reserved",
                field.name()
            )));
        }
        if fields[..i].iter().any(|f| f.name() == field.name()) {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{table}\": column \"{}\" is defined twice",
                field.name()
            )));
        }
    }
    Ok(())
}

fn first_words(text: &str) -> String {
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

/// A one-row, one-column result.
pub(crate) fn single_count(column: &str, value: u64) -> Result<SendableRecordBatchStream> {
    result_rows(vec![(column, Arc::new(UInt64Array::from(vec![value])))])
}

/// A result of named, non-null columns (arrays of one length: most such results have one row).
pub(crate) fn result_rows(columns: Vec<(&str, ArrayRef)>) -> Result<SendableRecordBatchStream> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), false))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let arrays = columns.into_iter().map(|(_, array)| array).collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| FreshetError::Internal(e.to_string()))?;
    batches_stream(schema, vec![batch])
}

pub(crate) fn batches_stream(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<SendableRecordBatchStream> {
    Ok(Box::pin(MemoryStream::try_new(batches, schema, None)?))
}

pub(crate) fn empty_stream() -> Result<SendableRecordBatchStream> {
    batches_stream(Arc::new(Schema::empty()), Vec::new())
}
