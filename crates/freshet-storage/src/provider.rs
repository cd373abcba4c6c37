//! Tables as DataFusion sees them: a provider over one snapshot, its scan, and its insert sink.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array, UInt64Array};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Constraint, Constraints, DFSchema, DataFusionError, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::StatisticsArgs;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use freshet_common::{FreshetError, Result};

use crate::snapshot::Snapshot;
use crate::table::Table;
use crate::transaction::Transaction;

type DfResult<T> = datafusion::error::Result<T>;

/// A table at one version, for DataFusion. Providers of the newest version also accept inserts.
#[derive(Debug)]
pub struct SnapshotTable {
    table: Arc<Table>,
    snapshot: Arc<Snapshot>,
    with_positions: bool,
    writable: bool,
    /// Scans read the table's newest version at scan time rather than `snapshot` (a view
    /// planned long ago must still read the newest rows).
    follows_newest: bool,
    schema: SchemaRef,
    constraints: Option<Constraints>,
}

impl SnapshotTable {
    /// The newest version of `table`; inserts go to the table.
    pub fn current(table: Arc<Table>) -> Self {
        let snapshot = table.snapshot();
        let mut provider = Self::new(table, snapshot, false, true);
        provider.follows_newest = true;
        provider
    }

    /// The newest version as the target of an INSERT: every column accepts NULL here, so that
    /// NOT NULL is checked by the table's transaction, whose error names the column.
    pub fn insert_target(table: Arc<Table>) -> Self {
        let snapshot = table.snapshot();
        let mut provider = Self::new(table, snapshot, false, true);
        provider.schema = Arc::new(datafusion::arrow::datatypes::Schema::new(
            provider
                .schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        provider
    }

    /// A retained older version, read-only.
    pub fn at(table: Arc<Table>, snapshot: Arc<Snapshot>) -> Self {
        Self::new(table, snapshot, false, false)
    }

    /// A version with two more columns, each row's data-file index and position, used to
    /// find the rows an UPDATE or DELETE changes.
    pub fn with_positions(table: Arc<Table>, snapshot: Arc<Snapshot>) -> Self {
        Self::new(table, snapshot, true, false)
    }

    fn new(table: Arc<Table>, snapshot: Arc<Snapshot>, with_positions: bool, writable: bool) -> Self {
        let schema = snapshot.scan_schema(None, with_positions);
        let key = snapshot.primary_key_indices();
        let constraints = (!key.is_empty()).then(|| Constraints::new_unverified(vec![Constraint::PrimaryKey(key)]));
        Self {
            table,
            snapshot,
            with_positions,
            writable,
            follows_newest: false,
            schema,
            constraints,
        }
    }

    /// The snapshot read (for a provider of the newest version: the newest when it was made).
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The table.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// Whether this provider reads the table's newest version, whichever it is when scanned.
    pub fn follows_newest(&self) -> bool {
        self.follows_newest
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.constraints.as_ref()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters are used to skip row groups by their statistics and applied again above the
    /// scan.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let newest;
        let snapshot = if self.follows_newest && self.table.snapshot().schema() == self.snapshot.schema() {
            newest = self.table.snapshot();
            &newest
        } else {
            &self.snapshot
        };
        let data_columns = snapshot.schema().fields().len();
        let requested: Vec<usize> = match projection {
            Some(indices) => indices.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        // Files give their columns in file order and position columns come last: read the
        // requested data columns in ascending order, then arrange them as requested.
        let mut data: Vec<usize> = requested.iter().copied().filter(|&i| i < data_columns).collect();
        data.sort_unstable();
        data.dedup();
        let arrangement: Vec<usize> = requested
            .iter()
            .map(|&i| match data.binary_search(&i) {
                Ok(position) => position,
                Err(_) => data.len() + (i - data_columns),
            })
            .collect();
        let scanned_columns = data.len() + if self.with_positions { 2 } else { 0 };
        let identity = arrangement.len() == scanned_columns && arrangement.iter().enumerate().all(|(a, &b)| a == b);
        let schema = Arc::new(self.schema.project(&requested)?);
        let file_projection = (data.len() < data_columns).then_some(data);
        let pruning = pruning_predicate(state, &self.schema, filters);
        let files = snapshot.manifest().files.len();
        let partitions = state.config().target_partitions().clamp(1, files.max(1));
        let mut assignment = vec![Vec::new(); partitions];
        for index in 0..files {
            assignment[index % partitions].push(index);
        }
        Ok(Arc::new(SnapshotScanExec::new(
            snapshot.clone(),
            ScanColumns {
                files: file_projection,
                with_positions: self.with_positions,
                arrangement: (!identity).then_some(arrangement),
            },
            schema,
            assignment,
            limit,
            pruning,
        )))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !self.writable {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{}\": an older version cannot be written",
                self.table.name()
            ))
            .into());
        }
        let sink = InsertSink {
            table: self.table.clone(),
            op: insert_op,
            // NOT NULL is the transaction's to check (see `insert_target`).
            schema: self.schema.clone(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// The pruning predicate of a scan's filters over the table's columns, when they give one
/// (filters that cannot be planned or that statistics cannot decide are simply not used).
fn pruning_predicate(state: &dyn Session, schema: &SchemaRef, filters: &[Expr]) -> Option<Arc<PruningPredicate>> {
    let predicate = conjunction(filters.iter().cloned())?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).ok()?;
    let physical = state.create_physical_expr(predicate, &df_schema).ok()?;
    pruning_of(schema, physical)
}

/// The pruning predicate of a physical predicate over the table's columns, unless it keeps
/// every row group.
pub(crate) fn pruning_of(schema: &SchemaRef, predicate: Arc<dyn PhysicalExpr>) -> Option<Arc<PruningPredicate>> {
    let pruning = PruningPredicateBuilder::new()
        .with_file_schema(schema.clone())
        .try_build(predicate)
        .ok()?;
    (!pruning.always_true()).then(|| Arc::new(pruning))
}

/// Which columns a scan reads and how it returns them.
#[derive(Debug, Clone)]
struct ScanColumns {
    /// Data columns read from the files, ascending; `None` for all.
    files: Option<Vec<usize>>,
    /// Whether the file index and position columns follow the data columns.
    with_positions: bool,
    /// The order the scanned columns are returned in, when not as scanned.
    arrangement: Option<Vec<usize>>,
}

/// Scans the data files of a snapshot, a list of files per partition.
#[derive(Debug)]
pub struct SnapshotScanExec {
    snapshot: Arc<Snapshot>,
    columns: ScanColumns,
    schema: SchemaRef,
    partitions: Vec<Vec<usize>>,
    limit: Option<usize>,
    /// Skips row groups the scan's filters rule out.
    pruning: Option<Arc<PruningPredicate>>,
    properties: Arc<PlanProperties>,
    /// Rows produced, per partition: `EXPLAIN ANALYZE` and progress displays read them.
    metrics: ExecutionPlanMetricsSet,
}

impl SnapshotScanExec {
    fn new(
        snapshot: Arc<Snapshot>,
        columns: ScanColumns,
        schema: SchemaRef,
        partitions: Vec<Vec<usize>>,
        limit: Option<usize>,
        pruning: Option<Arc<PruningPredicate>>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            snapshot,
            columns,
            schema,
            partitions,
            limit,
            pruning,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for SnapshotScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "FreshetScan: table={}, version={}, files={}",
            self.snapshot.table_name(),
            self.snapshot.version(),
            self.snapshot.manifest().files.len()
        )?;
        if let Some(limit) = self.limit {
            write!(f, ", limit={limit}")?;
        }
        if let Some(pruning) = &self.pruning {
            write!(f, ", pruning={}", pruning.predicate_expr())?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SnapshotScanExec {
    fn name(&self) -> &str {
        "FreshetScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("FreshetScan has no children".into()))
        }
    }

    /// Row counts are exact (the manifest knows every file's live rows), so that DataFusion
    /// plans joins with the smaller input on the build side, as it does for Parquet files.
    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        let files: Vec<usize> = match args.partition() {
            Some(p) => self.partitions.get(p).cloned().unwrap_or_default(),
            None => self.partitions.iter().flatten().copied().collect(),
        };
        let listed = &self.snapshot.manifest().files;
        let rows: u64 = files.iter().filter_map(|&i| listed.get(i)).map(|f| f.live_rows()).sum();
        let bytes: u64 = files.iter().filter_map(|&i| listed.get(i)).map(|f| f.bytes).sum();
        let mut statistics = Statistics::new_unknown(&self.schema);
        statistics.num_rows = match self.limit {
            // Each partition stops at the limit: only an upper bound is known.
            Some(limit) => Precision::Inexact((rows as usize).min(limit.saturating_mul(self.partitions.len()))),
            None => Precision::Exact(rows as usize),
        };
        statistics.total_byte_size = Precision::Inexact(bytes as usize);
        Ok(Arc::new(statistics))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let files = self
            .partitions
            .get(partition)
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("FreshetScan has no partition {partition}")))?;
        let stream = self
            .snapshot
            .scan_files_pruned(
                files,
                self.columns.files.clone(),
                self.columns.with_positions,
                self.pruning.clone(),
            )
            .map_err(DataFusionError::from);
        let schema = self.schema.clone();
        let arrangement = self.columns.arrangement.clone();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let stream = stream.map(move |batch| {
            let batch = match &arrangement {
                Some(order) => batch?.project(order)?,
                None => batch?,
            };
            let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
            baseline.record_output(batch.num_rows());
            RecordBatch::try_new_with_options(schema.clone(), batch.columns().to_vec(), &options)
                .map_err(DataFusionError::from)
        });
        let stream: futures::stream::BoxStream<'static, DfResult<RecordBatch>> = match self.limit {
            Some(limit) => limit_rows(stream.boxed(), limit),
            None => stream.boxed(),
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream)))
    }
}

fn limit_rows(
    stream: futures::stream::BoxStream<'static, DfResult<RecordBatch>>,
    limit: usize,
) -> futures::stream::BoxStream<'static, DfResult<RecordBatch>> {
    stream
        .scan(limit, |remaining, batch| {
            let out = match batch {
                Err(e) => Some(Err(e)),
                Ok(_) if *remaining == 0 => None,
                Ok(b) => {
                    let take = b.num_rows().min(*remaining);
                    *remaining -= take;
                    Some(Ok(b.slice(0, take)))
                }
            };
            futures::future::ready(out)
        })
        .boxed()
}

/// Writes the rows of an INSERT as one version.
#[derive(Debug)]
struct InsertSink {
    table: Arc<Table>,
    op: InsertOp,
    schema: SchemaRef,
}

impl DisplayAs for InsertSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "FreshetInsert: table={}, op={}", self.table.name(), self.op)
    }
}

#[async_trait]
impl DataSink for InsertSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(&self, data: SendableRecordBatchStream, context: &Arc<TaskContext>) -> DfResult<u64> {
        let operation = match self.op {
            InsertOp::Append => "INSERT",
            InsertOp::Overwrite => "INSERT OVERWRITE",
            InsertOp::Replace => "UPSERT",
        };
        let mut txn = self.table.begin(operation).await?;
        let count = match self.op {
            InsertOp::Append => append(&mut txn, data).await?,
            InsertOp::Overwrite => {
                delete_matching(&mut txn, |_| Ok(None)).await?;
                append(&mut txn, data).await?
            }
            InsertOp::Replace => replace(&mut txn, data, context.memory_pool()).await?,
        };
        txn.commit().await?;
        Ok(count)
    }
}

async fn append(txn: &mut Transaction, mut data: SendableRecordBatchStream) -> Result<u64> {
    let mut count = 0;
    while let Some(batch) = data.try_next().await? {
        count += batch.num_rows() as u64;
        txn.insert(&batch).await?;
    }
    Ok(count)
}

/// Upsert: rows whose primary key exists replace the existing rows.
async fn replace(
    txn: &mut Transaction,
    mut data: SendableRecordBatchStream,
    pool: &Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
) -> Result<u64> {
    let base = txn.base().clone();
    if base.primary_key().is_empty() {
        return Err(FreshetError::InvalidStatement(format!(
            "table \"{}\" has no primary key, so rows cannot be replaced by key",
            base.table_name()
        )));
    }
    let encoder = crate::keys::KeyEncoder::new(&base)?;
    let mut held = crate::HeldRows::new(pool, format!("upsert into \"{}\"", base.table_name()));
    let mut incoming = HashSet::new();
    while let Some(batch) = data.try_next().await? {
        let keys = encoder.encode(&batch)?;
        let mut key_bytes = 0;
        for row in keys.iter() {
            key_bytes += row.as_ref().len() + crate::keys::KEY_OVERHEAD;
            incoming.insert(row.owned());
        }
        held.push(batch, key_bytes)?;
    }
    let batches = held.batches();
    let pruning = key_range_pruning(&base, batches.iter());
    delete_matching_pruned(txn, pruning, |batch| {
        let rows = encoder.encode(batch)?;
        Ok(Some(rows.iter().map(|r| Some(incoming.contains(&r.owned()))).collect()))
    })
    .await?;
    let mut count = 0;
    for batch in batches {
        count += batch.num_rows() as u64;
        txn.insert(batch).await?;
    }
    Ok(count)
}

/// Upserts by primary key: every row of the base version whose key is the key of a row of
/// `upserted` or of `deleted` is deleted, then `upserted` is inserted. Finding the rows scans
/// the base version (its key columns and positions).
pub async fn upsert_by_key(txn: &mut Transaction, upserted: &[RecordBatch], deleted: &[RecordBatch]) -> Result<u64> {
    let base = txn.base().clone();
    if base.primary_key().is_empty() {
        return Err(FreshetError::InvalidStatement(format!(
            "table \"{}\" has no primary key, so rows cannot be upserted by key",
            base.table_name()
        )));
    }
    let encoder = crate::keys::KeyEncoder::new(&base)?;
    let mut keys = HashSet::new();
    for batch in upserted.iter().chain(deleted) {
        for row in encoder.encode(batch)?.iter() {
            keys.insert(row.owned());
        }
    }
    if !keys.is_empty() && base.num_rows() > 0 {
        let pruning = key_range_pruning(&base, upserted.iter().chain(deleted));
        delete_matching_pruned(txn, pruning, |batch| {
            let rows = encoder.encode(batch)?;
            Ok(Some(rows.iter().map(|r| Some(keys.contains(&r.owned()))).collect()))
        })
        .await?;
    }
    let mut count = 0;
    for batch in upserted {
        count += batch.num_rows() as u64;
        txn.insert(batch).await?;
    }
    Ok(count)
}

/// Deletes the rows of the transaction's base version that `select` picks (`None`: all rows).
pub async fn delete_matching(
    txn: &mut Transaction,
    select: impl FnMut(&RecordBatch) -> Result<Option<BooleanArray>>,
) -> Result<u64> {
    delete_matching_pruned(txn, None, select).await
}

/// The row groups that may hold rows with the primary keys of `batches` (rows of the table's
/// columns): each key column between the least and the greatest of its values there. Upserting
/// a stream's latest results — windows that just closed, keys in a recent range — then reads
/// the row groups of those keys, not the whole table. `None` when statistics cannot tell.
fn key_range_pruning<'b>(
    base: &Snapshot,
    batches: impl Iterator<Item = &'b RecordBatch> + Clone,
) -> Option<Arc<PruningPredicate>> {
    use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
    use datafusion::logical_expr::{Accumulator, lit};
    let schema = base.schema();
    let mut bounds = Vec::new();
    for column in base.primary_key_indices() {
        let field = schema.field(column);
        let mut least = MinAccumulator::try_new(field.data_type()).ok()?;
        let mut greatest = MaxAccumulator::try_new(field.data_type()).ok()?;
        for batch in batches.clone() {
            let values = batch.columns().get(column)?.clone();
            least.update_batch(std::slice::from_ref(&values)).ok()?;
            greatest.update_batch(&[values]).ok()?;
        }
        let (least, greatest) = (least.evaluate().ok()?, greatest.evaluate().ok()?);
        if least.is_null() || greatest.is_null() {
            continue;
        }
        let key = Expr::Column(datafusion::common::Column::new_unqualified(field.name()));
        bounds.push(key.clone().gt_eq(lit(least)).and(key.lt_eq(lit(greatest))));
    }
    let predicate = conjunction(bounds)?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).ok()?;
    let physical = datafusion::physical_expr::create_physical_expr(
        &predicate,
        &df_schema,
        &datafusion::execution::context::ExecutionProps::new(),
        &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext::default(),
    )
    .ok()?;
    pruning_of(schema, physical)
}

/// Like [`delete_matching`], reading only the row groups `pruning` keeps (rows elsewhere are
/// never picked).
pub async fn delete_matching_pruned(
    txn: &mut Transaction,
    pruning: Option<Arc<PruningPredicate>>,
    mut select: impl FnMut(&RecordBatch) -> Result<Option<BooleanArray>>,
) -> Result<u64> {
    let base = txn.base().clone();
    let columns = base.schema().fields().len();
    let files = (0..base.manifest().files.len()).collect();
    let mut rows = base.scan_files_pruned(files, None, true, pruning);
    let mut deleted = 0;
    while let Some(batch) = rows.try_next().await? {
        let data = batch.project(&(0..columns).collect::<Vec<_>>()).map_err(internal)?;
        let picked = match select(&data)? {
            Some(mask) => filter_record_batch(&batch, &mask).map_err(internal)?,
            None => batch,
        };
        deleted += delete_positioned(txn, &picked, columns).await?;
    }
    Ok(deleted)
}

/// Deletes the rows of a position-scan batch: the table's columns followed by the file index
/// and position columns at `columns` and `columns + 1`.
pub async fn delete_positioned(txn: &mut Transaction, batch: &RecordBatch, columns: usize) -> Result<u64> {
    if batch.num_rows() == 0 {
        return Ok(0);
    }
    let files = batch
        .column(columns)
        .as_any()
        .downcast_ref::<UInt32Array>()
        .ok_or_else(|| FreshetError::Internal("file index column is not UInt32".into()))?;
    let positions = batch
        .column(columns + 1)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| FreshetError::Internal("position column is not UInt64".into()))?;
    let data = batch.project(&(0..columns).collect::<Vec<_>>()).map_err(internal)?;
    let mut distinct: Vec<u32> = files.values().to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for file in distinct {
        let mask: BooleanArray = files.values().iter().map(|&f| Some(f == file)).collect();
        let rows = filter_record_batch(&data, &mask).map_err(internal)?;
        let positions = datafusion::arrow::compute::filter(positions, &mask).map_err(internal)?;
        let positions = positions
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| FreshetError::Internal("position column is not UInt64".into()))?;
        txn.delete(file as usize, positions, &rows).await?;
    }
    Ok(batch.num_rows() as u64)
}

fn internal(e: impl fmt::Display) -> FreshetError {
    FreshetError::Internal(e.to_string())
}
