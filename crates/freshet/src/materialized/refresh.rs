//! The FULL refresh: evaluate the query with DataFusion over one pinned set of input versions
//! and replace the table's contents (or one partition) as one new version, committed together
//! with the versions it read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, Volatility, cast as cast_expr, lit};
use datafusion::physical_plan::execute_stream;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use freshet_common::{FreshetError, Result};
use freshet_sql::{FreshetStatement, parse_statements};
use freshet_storage::{CatalogEntry, CommitInfo, Snapshot, SnapshotTable, Table, Transaction, delete_matching};

use super::RefreshAttempt;
use super::definition::MaterializedDefinition;
use super::incremental::Algorithm;
use crate::engine::Engine;
use crate::time_travel;

/// What started a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `CREATE MATERIALIZED TABLE` (the first contents).
    Create,
    /// The scheduler, at the table's freshness.
    Schedule,
    /// A commit of an input of a CONTINUOUS table.
    Continuous,
    /// `ALTER MATERIALIZED TABLE ... REFRESH`.
    Manual,
    /// `ALTER MATERIALIZED TABLE ... AS` (a new query).
    Alter,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Create => "create",
            Trigger::Schedule => "schedule",
            Trigger::Continuous => "continuous",
            Trigger::Manual => "manual",
            Trigger::Alter => "alter",
        })
    }
}

/// What a committed refresh read and did; stored in the manifest of the version it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshRecord {
    /// The query evaluated.
    pub query: String,
    /// Version of each table and materialized table the query read.
    pub inputs: BTreeMap<String, u64>,
    /// Version of each base table the contents reflect, through materialized inputs too.
    pub sources: BTreeMap<String, u64>,
    /// What started it.
    pub trigger: Trigger,
    /// The algorithm used: `full` or `incremental`.
    pub algorithm: String,
    /// Why that algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Input change rows processed (inserts plus deletes), for an incremental refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_changes: Option<u64>,
    /// For an incremental refresh that rebuilt the operator state: rows of the table found to
    /// differ from the query's result (beyond float rounding) and corrected by this refresh.
    /// Zero unless the table had drifted from its query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrected_rows: Option<u64>,
    /// When it started (engine clock, ms since the epoch).
    pub started_at_ms: i64,
    /// How long it took until the commit, in ms.
    pub duration_ms: i64,
    /// Rows written: inserted, plus deleted for an incremental refresh.
    pub rows: u64,
    /// The partition recomputed (`ds=2026-11-20`), when only one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

impl RefreshRecord {
    /// The record of a materialized table's snapshot, if a refresh made it.
    pub fn of(snapshot: &Snapshot) -> Option<Self> {
        let value = snapshot.manifest().refresh.as_ref()?;
        serde_json::from_value(value.clone()).ok()
    }
}

/// What a refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A new version was committed.
    Committed {
        /// The version.
        version: u64,
        /// Rows written.
        rows: u64,
    },
    /// Nothing to do: the inputs have not changed since the last refresh.
    Skipped,
}

/// A query planned over pinned input versions.
pub(crate) struct PinnedQuery {
    pub plan: LogicalPlan,
    pub inputs: BTreeMap<String, u64>,
    pub sources: BTreeMap<String, u64>,
    /// A non-deterministic function the query calls (`now()`), if any.
    pub volatile: Option<String>,
    /// Every table or materialized table named, pinned or read at a fixed version.
    pub dependencies: BTreeSet<String>,
    /// A table read that has no versions (an external table over files): its changes cannot
    /// be seen, so a refresh is never skipped.
    pub unversioned: Option<String>,
}

impl PinnedQuery {
    /// The query's output columns as a table's columns (unqualified names).
    pub fn output_schema(&self) -> SchemaRef {
        Arc::new(self.plan.schema().as_arrow().clone())
    }
}

/// One refresh under way: the table, its definition, what was asked, and when it started.
pub(crate) struct RefreshJob<'a> {
    pub name: &'a str,
    pub table: &'a Arc<Table>,
    pub definition: &'a MaterializedDefinition,
    pub request: &'a RefreshRequest,
    pub started: i64,
}

/// What to refresh.
#[derive(Debug, Clone)]
pub(crate) struct RefreshRequest {
    pub trigger: Trigger,
    /// `(column, value)`: recompute only this partition.
    pub partition: Option<(String, String)>,
    /// Refresh even when the inputs have not changed.
    pub force: bool,
}

impl Engine {
    /// Plans a materialized table's query and pins one version of every table it reads. A base
    /// table also read through a materialized input is pinned at the version that input
    /// reflects, so that both paths see the same data.
    pub(crate) async fn plan_pinned(&self, name: &str, query: &str) -> Result<PinnedQuery> {
        let in_context = |e: FreshetError| e.context(format!("materialized table \"{name}\""));
        let mut parsed = parse_statements(query).map_err(in_context)?;
        let statement = match parsed.pop() {
            Some(p) if parsed.is_empty() => p.statement,
            _ => {
                return Err(FreshetError::InvalidStatement(format!(
                    "materialized table \"{name}\": the definition must be one query"
                )));
            }
        };
        let FreshetStatement::DataFusion(mut statement) = statement else {
            return Err(FreshetError::InvalidStatement(format!(
                "materialized table \"{name}\": the definition must be a query"
            )));
        };
        if !matches!(statement.as_ref(), DFStatement::Statement(s) if matches!(s.as_ref(), Statement::Query(_))) {
            return Err(FreshetError::InvalidStatement(format!(
                "materialized table \"{name}\": the definition must be a query"
            )));
        }
        // What has arrived from the sources it reads, ingested before the versions are pinned.
        self.ingest_sources_of(&statement).await.map_err(in_context)?;
        time_travel::rewrite(self, &mut statement).await.map_err(in_context)?;
        let plan = self
            .inner
            .ctx
            .state()
            .statement_to_plan(*statement)
            .await
            .map_err(|e| in_context(e.into()))?;

        // Every table scanned, and the newest version of those read at their newest.
        let mut newest: BTreeMap<String, Arc<Table>> = BTreeMap::new();
        let mut dependencies = BTreeSet::new();
        let mut volatile = None;
        let mut unversioned = None;
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let provider = source_as_provider(&scan.source).ok();
                match provider.as_ref().and_then(|p| p.downcast_ref::<SnapshotTable>()) {
                    Some(table) => {
                        dependencies.insert(table.table().name().to_string());
                        if table.follows_newest() {
                            newest.insert(table.table().name().to_string(), table.table().clone());
                        }
                    }
                    None => {
                        // An external table: dropping it breaks the query, so it is a dependency.
                        let name = scan.table_name.table();
                        if self.inner.catalog.contains(name) {
                            dependencies.insert(name.to_string());
                        }
                        unversioned.get_or_insert_with(|| scan.table_name.to_string());
                    }
                }
            }
            node.apply_expressions(|expr| {
                expr.apply(|e| {
                    if let Expr::ScalarFunction(f) = e
                        && f.func.signature().volatility != Volatility::Immutable
                        && volatile.is_none()
                    {
                        volatile = Some(format!("{}()", f.func.name()));
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        })?;

        let entries = self.inner.catalog.manifest();
        let is_materialized = |n: &str| matches!(entries.entries.get(n), Some(CatalogEntry::MaterializedTable { .. }));
        let mut pinned: BTreeMap<String, Arc<Snapshot>> = BTreeMap::new();
        let mut upstream: BTreeMap<String, u64> = BTreeMap::new();
        for (input, table) in &newest {
            if is_materialized(input) {
                let snapshot = table.snapshot();
                if let Some(record) = RefreshRecord::of(&snapshot) {
                    for (source, version) in record.sources {
                        let v = upstream.entry(source).or_insert(version);
                        *v = (*v).min(version);
                    }
                }
                pinned.insert(input.clone(), snapshot);
            }
        }
        let mut sources = upstream.clone();
        for (input, table) in &newest {
            if is_materialized(input) {
                continue;
            }
            let current = table.snapshot();
            let snapshot = match upstream.get(input) {
                Some(&v) if v < current.version() => table.snapshot_at(v).await.unwrap_or(current),
                _ => current,
            };
            sources.insert(input.clone(), snapshot.version());
            pinned.insert(input.clone(), snapshot);
        }
        let inputs = pinned.iter().map(|(n, s)| (n.clone(), s.version())).collect();

        let plan = plan
            .transform_up_with_subqueries(|node| {
                let LogicalPlan::TableScan(mut scan) = node else {
                    return Ok(Transformed::no(node));
                };
                let replacement = source_as_provider(&scan.source).ok().and_then(|provider| {
                    let table = provider.downcast_ref::<SnapshotTable>()?;
                    let snapshot = pinned.get(table.table().name())?;
                    table
                        .follows_newest()
                        .then(|| SnapshotTable::at(table.table().clone(), snapshot.clone()))
                });
                match replacement {
                    Some(provider) => {
                        scan.source = provider_as_source(Arc::new(provider));
                        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
                    }
                    None => Ok(Transformed::no(LogicalPlan::TableScan(scan))),
                }
            })?
            .data;
        // Analyzed (types coerced), so that the plan's schema is the schema of the rows it
        // produces: a UNION of SMALLINT and INT makes INT, not the first input's SMALLINT.
        let state = self.inner.ctx.state();
        let plan = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})
            .map_err(|e| in_context(e.into()))?;
        Ok(PinnedQuery {
            plan,
            inputs,
            sources,
            volatile,
            dependencies,
            unversioned,
        })
    }

    /// Refreshes a materialized table — incrementally or in full, as its mode and the changes
    /// decide — and records the attempt in the history.
    pub(crate) async fn refresh(&self, name: &str, request: RefreshRequest) -> Result<RefreshOutcome> {
        let materialized = &self.inner.materialized;
        let runtime = materialized.runtime(name);
        let _refreshing = runtime.refreshing.lock().await;
        let started = materialized.clock.now_ms();
        let result = match (self.materialized_definition(name), self.inner.catalog.table(name)) {
            (Ok(definition), Ok(table)) => self.refresh_table(name, &table, &definition, &request, started).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        self.record_attempt(name, &request, started, &result).await;
        result
    }

    /// Puts a refresh attempt into the in-memory history (`freshet.refreshes`).
    pub(crate) async fn record_attempt(
        &self,
        name: &str,
        request: &RefreshRequest,
        started: i64,
        result: &Result<RefreshOutcome>,
    ) {
        let materialized = &self.inner.materialized;
        let finished = materialized.clock.now_ms();
        let mut attempt = RefreshAttempt {
            table: name.to_string(),
            trigger: request.trigger,
            started_at_ms: started,
            duration_ms: finished - started,
            partition: request.partition.as_ref().map(|(c, v)| format!("{c}={v}")),
            outcome: String::new(),
            version: None,
            rows: 0,
            algorithm: None,
            reason: None,
            input_changes: None,
            corrected_rows: None,
            detail: None,
            watermark_ms: None,
            late_rows: None,
        };
        match result {
            Ok(RefreshOutcome::Committed { version, rows }) => {
                attempt.outcome = "committed".into();
                attempt.version = Some(*version);
                attempt.rows = *rows;
                if let Some(record) = materialized.committed_record(name, *version) {
                    if let Ok(Some((watermark, late))) = self.inputs_event_time(&record.inputs).await {
                        attempt.watermark_ms = watermark;
                        attempt.late_rows = Some(late);
                    }
                    attempt.algorithm = Some(record.algorithm);
                    attempt.reason = record.reason;
                    attempt.input_changes = record.input_changes;
                    attempt.corrected_rows = record.corrected_rows;
                }
            }
            Ok(RefreshOutcome::Skipped) => {
                attempt.outcome = "skipped".into();
                attempt.detail = Some("the inputs have not changed since the last refresh".into());
            }
            Err(e) => {
                attempt.outcome = "failed".into();
                attempt.detail = Some(e.to_string());
            }
        }
        materialized.record(attempt);
    }

    /// The refresh itself, with the given definition (ALTER ... AS refreshes with the new query
    /// before storing it); the caller holds the table's refresh lock, or the table is not yet
    /// in the catalog.
    pub(crate) async fn refresh_table(
        &self,
        name: &str,
        table: &Arc<Table>,
        definition: &MaterializedDefinition,
        request: &RefreshRequest,
        started: i64,
    ) -> Result<RefreshOutcome> {
        let pinned = self.plan_pinned(name, &definition.query).await?;
        let base = table.snapshot();
        let partition_label = request.partition.as_ref().map(|(c, v)| format!("{c}={v}"));
        let previous = RefreshRecord::of(&base);
        if !request.force
            && pinned.volatile.is_none()
            && pinned.unversioned.is_none()
            && self
                .up_to_date(previous.as_ref(), definition, &pinned, partition_label.as_deref())
                .await?
        {
            return Ok(RefreshOutcome::Skipped);
        }
        let job = RefreshJob {
            name,
            table,
            definition,
            request,
            started,
        };
        let chosen = self.choose_algorithm(&job, &pinned, previous.as_ref()).await?;
        match chosen {
            Algorithm::Incremental { state, changes, reason } => {
                match self.refresh_incremental(&job, &pinned, *state, changes, &reason).await {
                    Err(e) if e.domain() == freshet_common::ErrorDomain::Internal => {
                        // The state disagreed with the table: start again from the query.
                        let reason = format!("the incremental refresh failed ({e}), so it was recomputed in full");
                        tracing::warn!(table = name, "{reason}");
                        self.recompute(&job, pinned, previous, reason).await
                    }
                    other => other,
                }
            }
            Algorithm::Full { reason } => self.recompute(&job, pinned, previous, reason).await,
        }
    }

    /// The FULL refresh: the query evaluated by DataFusion, its rows replacing the contents
    /// (or one partition's).
    async fn recompute(
        &self,
        job: &RefreshJob<'_>,
        pinned: PinnedQuery,
        previous: Option<RefreshRecord>,
        reason: String,
    ) -> Result<RefreshOutcome> {
        let RefreshJob {
            name,
            table,
            definition,
            request,
            started,
        } = *job;
        self.inner.materialized.forget_state(name).await;
        let timer = std::time::Instant::now();
        let base = table.snapshot();
        let partition_label = request.partition.as_ref().map(|(c, v)| format!("{c}={v}"));
        let schema = table_schema(&pinned.output_schema(), &definition.primary_key);
        // `now()` is the time the refresh started, on the engine's clock.
        let mut state = self.state_at(started);
        if let Some(parallelism) = definition
            .options
            .get("sink.parallelism")
            .and_then(|p| p.parse::<usize>().ok())
        {
            state.config_mut().options_mut().execution.target_partitions = parallelism.max(1);
        }
        // A partition's refresh evaluates the query for that partition only: the predicate goes
        // on top of the plan, and DataFusion pushes it down to the scans (which skip the row
        // groups it rules out).
        let plan = match &request.partition {
            Some((column, value)) => partition_plan(&pinned.plan, column, value)?,
            None => pinned.plan.clone(),
        };
        let physical = state.create_physical_plan(&plan).await?;
        let mut rows = execute_stream(physical, state.task_ctx())?;

        let mut txn = table.begin("REFRESH").await?;
        // Rows recomputed by DataFusion, not made by the operator state: a checkpoint of that
        // state no longer describes the table (float sums, for one, differ in their last bits).
        txn.clear_state();
        let partition = match &request.partition {
            Some((column, value)) => {
                let index = schema.index_of(column).map_err(|_| {
                    FreshetError::InvalidStatement(format!(
                        "materialized table \"{name}\": partition column \"{column}\" is not a column"
                    ))
                })?;
                delete_matching(&mut txn, |batch| partition_mask(batch, index, value).map(Some)).await?;
                Some((index, value.as_str()))
            }
            None => {
                txn.remove_all()?;
                if base.schema() != &schema {
                    txn.replace_schema(schema.clone())?;
                }
                None
            }
        };
        let mut written = 0;
        while let Some(batch) = rows.try_next().await? {
            let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(|e| {
                FreshetError::InvalidStatement(format!(
                    "materialized table \"{name}\": the query's rows do not fit the table: {e}"
                ))
            })?;
            let batch = match partition {
                Some((index, value)) => filter_record_batch(&batch, &partition_mask(&batch, index, value)?)
                    .map_err(|e| FreshetError::Internal(e.to_string()))?,
                None => batch,
            };
            written += batch.num_rows() as u64;
            txn.insert(&batch).await?;
        }
        // A partition refresh brings only that partition up to date: the table as a whole still
        // reflects no newer source versions than before (so its data lag stays honest).
        let mut sources = pinned.sources;
        if let (Some(_), Some(previous)) = (&request.partition, &previous) {
            for (source, version) in sources.iter_mut() {
                if let Some(&before) = previous.sources.get(source) {
                    *version = (*version).min(before);
                }
            }
        }
        let record = RefreshRecord {
            query: definition.query.clone(),
            inputs: pinned.inputs,
            sources,
            trigger: request.trigger,
            algorithm: "full".into(),
            reason: Some(reason),
            input_changes: None,
            corrected_rows: None,
            started_at_ms: started,
            duration_ms: self.inner.materialized.clock.now_ms() - started,
            rows: written,
            partition: partition_label,
        };
        let version = self.commit_refresh(name, txn, record).await?.version;
        if request.partition.is_none() {
            let spent = u64::try_from(timer.elapsed().as_millis()).unwrap_or(u64::MAX);
            let runtime = self.inner.materialized.runtime(name);
            let mut costs = super::lock(&runtime.costs);
            costs.last_full_ms = Some(spent);
            costs.full_since_build_ms = costs.full_since_build_ms.saturating_add(spent);
        }
        Ok(RefreshOutcome::Committed { version, rows: written })
    }

    /// Commits a refresh's transaction with its record, and remembers the record for the
    /// history.
    pub(crate) async fn commit_refresh(
        &self,
        name: &str,
        mut txn: Transaction,
        record: RefreshRecord,
    ) -> Result<CommitInfo> {
        txn.set_refresh(serde_json::to_value(&record).map_err(|e| FreshetError::Internal(e.to_string()))?);
        let info = txn.commit().await?;
        self.inner.materialized.committed(name, info.version, record);
        Ok(info)
    }

    /// Whether the table (or the partition asked for) already reflects the newest data of its
    /// inputs under this query: the same query, the last refresh covered what is asked now
    /// (the whole table, or this partition), and no input changed a row since it.
    async fn up_to_date(
        &self,
        record: Option<&RefreshRecord>,
        definition: &MaterializedDefinition,
        pinned: &PinnedQuery,
        partition: Option<&str>,
    ) -> Result<bool> {
        let Some(record) = record else {
            return Ok(false);
        };
        if record.query != definition.query {
            return Ok(false);
        }
        if record.partition.is_some() && record.partition.as_deref() != partition {
            return Ok(false);
        }
        if record.inputs.keys().ne(pinned.inputs.keys()) {
            return Ok(false);
        }
        for (input, &version) in &pinned.inputs {
            let read = record.inputs.get(input).copied().unwrap_or(0);
            if read == version {
                continue;
            }
            let table = self.inner.catalog.table(input)?;
            match table.first_change_after(read).await? {
                Some((changed, _)) if changed <= version => return Ok(false),
                _ => {}
            }
        }
        Ok(true)
    }

    /// The stored definition of a materialized table.
    pub(crate) fn materialized_definition(&self, name: &str) -> Result<MaterializedDefinition> {
        match self.inner.catalog.manifest().entries.get(name) {
            Some(CatalogEntry::MaterializedTable { definition, .. }) => {
                MaterializedDefinition::from_json(name, definition)
            }
            Some(_) => Err(FreshetError::InvalidStatement(format!(
                "\"{name}\" is not a materialized table"
            ))),
            None => Err(FreshetError::MaterializedTableNotFound { name: name.into() }),
        }
    }

    /// The input versions a materialized table's contents and its checkpoint reflect: the
    /// changes since are what its next incremental refresh reads.
    pub(crate) fn versions_reflected_by(&self, name: &str) -> BTreeMap<String, u64> {
        let mut oldest = BTreeMap::new();
        let Ok(table) = self.inner.catalog.table(name) else {
            return oldest;
        };
        let Some(record) = RefreshRecord::of(&table.snapshot()) else {
            return oldest;
        };
        // A restore from the table's checkpoint reads the changes since its versions.
        let checkpointed = super::checkpoint::checkpoint_inputs(&table).unwrap_or_default();
        for (input, version) in record.inputs.into_iter().chain(checkpointed) {
            let kept = oldest.entry(input).or_insert(version);
            *kept = (*kept).min(version);
        }
        oldest
    }

    /// Names of the materialized tables, sorted.
    pub(crate) fn materialized_names(&self) -> Vec<String> {
        self.inner
            .catalog
            .manifest()
            .entries
            .iter()
            .filter(|(_, e)| matches!(e, CatalogEntry::MaterializedTable { .. }))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Stores a changed definition.
    pub(crate) async fn store_definition(&self, name: &str, definition: &MaterializedDefinition) -> Result<()> {
        self.inner.catalog.update_definition(name, definition.to_json()?).await
    }
}

/// The table's columns for a query's output: primary-key columns are NOT NULL.
pub(crate) fn table_schema(output: &Schema, primary_key: &[String]) -> SchemaRef {
    Arc::new(Schema::new(
        output
            .fields()
            .iter()
            .map(|f| {
                let nullable = f.is_nullable() && !primary_key.contains(f.name());
                Field::new(f.name(), f.data_type().clone(), nullable)
            })
            .collect::<Vec<_>>(),
    ))
}

/// Rows whose column `index`, as text, equals `value`.
/// The query's rows of one partition: `column = value`, the value typed as the column is when
/// it reads back as the same text, else compared as text (as [`partition_mask`] does).
fn partition_plan(plan: &LogicalPlan, column: &str, value: &str) -> Result<LogicalPlan> {
    let field = plan
        .schema()
        .fields()
        .iter()
        .find(|f| f.name() == column)
        .ok_or_else(|| FreshetError::InvalidStatement(format!("partition column \"{column}\" is not a column")))?;
    let reference = Expr::Column(Column::new_unqualified(column));
    let typed = ScalarValue::try_from_string(value.to_string(), field.data_type())
        .ok()
        .filter(|typed| typed.to_string() == value);
    let predicate = match typed {
        Some(typed) => reference.eq(lit(typed)),
        None => cast_expr(reference, DataType::Utf8).eq(lit(value)),
    };
    Ok(LogicalPlanBuilder::from(plan.clone()).filter(predicate)?.build()?)
}

fn partition_mask(batch: &RecordBatch, index: usize, value: &str) -> Result<BooleanArray> {
    let column = cast(batch.column(index), &DataType::Utf8).map_err(|e| FreshetError::Internal(e.to_string()))?;
    let strings = column
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| FreshetError::Internal("partition column did not cast to text".into()))?;
    Ok((0..strings.len())
        .map(|i| Some(strings.is_valid(i) && strings.value(i) == value))
        .collect())
}
