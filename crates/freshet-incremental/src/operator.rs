//! Incremental operators: each turns the changes of its inputs in one epoch into the changes
//! of its output, keeping whatever state that needs.

mod aggregate;
mod hashed;
mod hop;
mod idle;
mod join;
mod map;
mod over;
mod scan;
mod shared;
mod temporal_filter;
mod top_n;
mod union;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use freshet_common::{ChangeBatch, Result};

use crate::checkpoint::SavedState;
use crate::delta::{Delta, internal};

pub(crate) use aggregate::{Aggregate, AggregateKind, AggregateSpec, WindowClosing};
pub(crate) use hop::{HopWindows, WINDOW_COLUMNS};
pub(crate) use join::{Join, JoinKind, JoinSpec, SideExpiry};
pub(crate) use map::{Constant, Filter, Project};
pub(crate) use over::{Over, OverExpiry, OverReach, OverSpec};
pub(crate) use scan::Scan;
pub(crate) use shared::{Readers, Reuse, Shared};
pub(crate) use temporal_filter::{TemporalFilter, TimeBound, TimeComparison};
pub(crate) use top_n::{TopN, TopNSpec};
pub(crate) use union::Union;

/// The input of one epoch: the changes of each source table, by name.
#[derive(Debug)]
pub struct Epoch {
    /// Tells epochs apart (unique in the process): an operator whose output several others
    /// read computes it once per epoch.
    id: u64,
    changes: HashMap<String, Vec<(ChangeBatch, bool)>>,
    /// The time the epoch is evaluated at (ns since the Unix epoch), for `now()`.
    time_ns: Option<i64>,
    /// The watermark (ms) of each source with one, at the versions whose changes the epoch
    /// holds: windows it has passed are closed.
    watermarks: HashMap<String, i64>,
    /// Sources idle for longer than their idle timeout.
    idle: std::collections::HashSet<String>,
    /// One of several epochs that build a new pipeline's state from its inputs (see
    /// [`Epoch::building`]).
    building: bool,
}

impl Default for Epoch {
    fn default() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            changes: HashMap::new(),
            time_ns: None,
            watermarks: HashMap::new(),
            idle: std::collections::HashSet::new(),
            building: false,
        }
    }
}

impl Epoch {
    /// An epoch with no changes and no time: a pipeline comparing rows with `now()` refuses it.
    pub fn new() -> Self {
        Self::default()
    }

    /// An epoch with no changes evaluated at `time_ms` (ms since the Unix epoch): the time
    /// `now()` and `current_date` read, as a batch evaluation at that time would.
    pub fn at(time_ms: i64) -> Self {
        Self {
            time_ns: Some(time_ms.saturating_mul(1_000_000)),
            ..Self::default()
        }
    }

    /// Makes this one of the epochs that feed a new pipeline its inputs' contents in parts:
    /// aggregates take its changes without any output (which the next part would change
    /// again), and the first epoch after them that is not building — with or without changes
    /// of its own — outputs each group's row once. A building epoch has no watermark (see
    /// [`Epoch::watermark`]): nothing closes or is forgotten by event time until the last.
    pub fn building(mut self) -> Self {
        self.building = true;
        self
    }

    /// Whether this is one of a state build's epochs ([`Epoch::building`]).
    pub(crate) fn is_building(&self) -> bool {
        self.building
    }

    /// Tells this epoch apart from every other of the process.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Sets the watermark (ms) of a source at the version whose changes the epoch holds.
    pub fn set_watermark(&mut self, source: &str, watermark_ms: i64) {
        self.watermarks.insert(source.to_string(), watermark_ms);
    }

    /// Marks a source idle: it has brought no rows for longer than its idle timeout, and no
    /// longer holds back the watermark combined with other sources.
    pub fn set_idle(&mut self, source: &str) {
        self.idle.insert(source.to_string());
    }

    /// The watermark of several sources combined, as Flink combines a job's inputs: the least
    /// of theirs, leaving out idle ones unless all are; none while one of them has none, and
    /// none in a building epoch: a state built in parts must see every row before windows
    /// close or joins forget rows by the watermark, as it would in one epoch (a join that
    /// forgot a part's rows before the next part's arrived would miss their matches).
    pub(crate) fn watermark(&self, sources: &[String]) -> Option<i64> {
        if self.building {
            return None;
        }
        let active: Vec<&String> = sources.iter().filter(|s| !self.idle.contains(*s)).collect();
        let counted: Vec<&String> = if active.is_empty() {
            sources.iter().collect()
        } else {
            active
        };
        counted.iter().map(|s| self.watermarks.get(*s).copied()).min().flatten()
    }

    /// The epoch's time, in ns.
    pub(crate) fn time_ns(&self) -> Option<i64> {
        self.time_ns
    }

    /// Adds changes of a source table.
    pub fn add(&mut self, source: &str, changes: ChangeBatch) {
        self.changes
            .entry(source.to_string())
            .or_default()
            .push((changes, false));
    }

    /// Adds changes of a source table made by an UPDATE of a column the pipeline reads (see
    /// `ChangeSet::stream_read`): each row it deleted differs from the one it inserted, so
    /// the scan does not look among them for rows that cancel.
    pub fn add_updated(&mut self, source: &str, changes: ChangeBatch) {
        self.changes
            .entry(source.to_string())
            .or_default()
            .push((changes, true));
    }

    /// The changes of a source, each batch with whether it is an UPDATE's ([`Epoch::add_updated`]).
    pub(crate) fn changes(&self, source: &str) -> &[(ChangeBatch, bool)] {
        self.changes.get(source).map(Vec::as_slice).unwrap_or_default()
    }

    /// Rows changed, over all sources.
    pub fn rows(&self) -> usize {
        self.changes.values().flatten().map(|(batch, _)| batch.num_rows()).sum()
    }

    /// Adds the rows of `batch` (inserted, each weight 1) of a source in parts, for a state
    /// built from the inputs: whenever the epoch holds `max_rows` rows (at least 1), it is
    /// handed to `full` as a building epoch ([`Epoch::building`]) and an empty one at the same
    /// time takes its place. The caller steps the last epoch, not building, itself. Returns
    /// the rows added.
    pub fn add_in_parts(
        &mut self,
        source: &str,
        batch: &RecordBatch,
        max_rows: usize,
        mut full: impl FnMut(Epoch) -> Result<()>,
    ) -> Result<usize> {
        let max_rows = max_rows.max(1);
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = max_rows
                .saturating_sub(self.rows())
                .max(1)
                .min(batch.num_rows() - offset);
            self.add(source, ChangeBatch::with_weight(&batch.slice(offset, take), 1)?);
            offset += take;
            if self.rows() >= max_rows {
                let next = Epoch {
                    time_ns: self.time_ns,
                    ..Epoch::default()
                };
                full(std::mem::replace(self, next).building())?;
            }
        }
        Ok(batch.num_rows())
    }
}

/// What an operator keeps between epochs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSize {
    /// Entries kept (rows, groups or values, as the operator counts them).
    pub rows: u64,
    /// Approximate bytes.
    pub bytes: u64,
}

impl std::ops::Add for StateSize {
    type Output = StateSize;
    fn add(self, other: StateSize) -> StateSize {
        StateSize {
            rows: self.rows + other.rows,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// One node of an incremental operator graph.
pub(crate) trait Operator: Send {
    /// The output changes of one epoch, given the changes of the sources.
    fn step(&mut self, epoch: &Epoch) -> Result<Delta>;
    /// One line describing the operator, for EXPLAIN.
    fn describe(&self) -> String;
    /// What the state kept is, for EXPLAIN (empty for stateless operators).
    fn state_kind(&self) -> &'static str {
        ""
    }
    /// The state this operator keeps (not its inputs').
    fn state_size(&self) -> StateSize {
        StateSize::default()
    }
    /// The inputs.
    fn inputs(&self) -> Vec<&dyn Operator>;
    /// The inputs, to change (restoring a checkpoint).
    fn inputs_mut(&mut self) -> Vec<&mut dyn Operator>;
    /// Whether [`Operator::save_state`] can save the operator's own state (or it has none).
    fn can_save_state(&self) -> bool {
        self.state_kind().is_empty()
    }
    /// The operator's own state (not its inputs'), for a checkpoint.
    fn save_state(&self) -> Result<SavedState> {
        Ok(match self.state_kind() {
            "" => SavedState::Stateless,
            _ => SavedState::Unsupported,
        })
    }
    /// Takes back the state [`Operator::save_state`] gave, into an operator built from the same
    /// plan that has not stepped yet.
    fn restore_state(&mut self, _batches: Vec<RecordBatch>) -> Result<()> {
        Err(crate::checkpoint::mismatch(format!(
            "{} keeps no saved state",
            self.describe()
        )))
    }
    /// The changes to the operator's own state since [`Operator::track_changes`], for a delta
    /// checkpoint that [`Operator::apply_delta`] applies over the state saved before; `None`
    /// when it saves its whole state in every checkpoint (or is not tracking changes).
    fn save_delta(&self) -> Result<Option<Vec<RecordBatch>>> {
        Ok(None)
    }
    /// Rows a [`Operator::save_delta`] would save now (0 when it saves none).
    fn delta_rows(&self) -> u64 {
        0
    }
    /// Starts keeping (again) the changes a delta checkpoint saves: the state was just saved
    /// or restored.
    fn track_changes(&mut self) {}
    /// Applies a delta [`Operator::save_delta`] gave, over the state restored from the
    /// checkpoint it was taken after.
    fn apply_delta(&mut self, _batches: Vec<RecordBatch>) -> Result<()> {
        Err(crate::checkpoint::mismatch(format!(
            "{} takes no delta of its state",
            self.describe()
        )))
    }
    /// Applies the deltas [`Operator::save_delta`] gave since the whole state restored, in the
    /// order they were saved: each with [`Operator::apply_delta`], unless the operator can take
    /// them together.
    fn apply_deltas(&mut self, deltas: Vec<Vec<RecordBatch>>) -> Result<()> {
        for batches in deltas {
            self.apply_delta(batches)?;
        }
        Ok(())
    }
    /// Whether every output of an epoch is already consolidated: each row at most once, with a
    /// non-zero weight. The pipeline then need not consolidate it again.
    fn output_consolidated(&self) -> bool {
        false
    }
    /// Stops looking for rows that cancel in its output, because the operator above looks for
    /// them in every row of it, with fewer columns: true when this operator, or the row-wise
    /// ones between it and a scan, did (see [`crate::delta::Delta::without_cancelled`]).
    fn leave_cancelled(&mut self) -> bool {
        false
    }
    /// Whether an epoch's output deletes only rows output in earlier epochs, never one it
    /// inserts too: true of a consolidated output, and of a filter or projection of one (a row
    /// deleted maps to a row output before). A join's side that does can have a key's rows
    /// replaced whole without comparing them (see `Consolidate::DueReplacing`).
    fn deletes_only_earlier_rows(&self) -> bool {
        self.output_consolidated()
    }
    /// Output columns whose values identify an output row: no two rows the operator's output
    /// holds at one time agree on them (`None` when the operator knows no such columns).
    fn unique_key(&self) -> Option<Vec<usize>> {
        None
    }
    /// The next time (ns) at which the operator's output changes with time alone, if any.
    fn next_change(&self) -> Option<i64> {
        None
    }
    /// Whether the operator may retract rows it output even when its inputs only insert (an
    /// aggregate's group changes, an outer join's padded row is replaced): its result is an
    /// updating one, which an append-only sink cannot take.
    fn updates(&self) -> bool {
        false
    }

    /// Whether the operator's output only inserts whatever its inputs do (a window emitter
    /// passes final rows): an updating operator below it does not make the result updating.
    fn final_output(&self) -> bool {
        false
    }
}

/// An expression compiled against the columns of an input.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    expr: Arc<dyn PhysicalExpr>,
}

impl Compiled {
    pub(crate) fn new(expr: &Expr, input: &DFSchema) -> Result<Self> {
        let plan = |expr: &Expr| {
            create_physical_expr(expr, input, &ExecutionProps::new(), &PhysicalPlanningContext::default())
        };
        // Window bounds (`window_start + INTERVAL '10' SECOND`) by integer arithmetic, the same
        // values (`freshet_common::intervals_as_durations`).
        let fast = freshet_common::intervals_as_durations(expr.clone(), input);
        let expr = match &fast != expr {
            true => plan(&fast).or_else(|_| plan(expr))?,
            false => plan(expr)?,
        };
        Ok(Self { expr })
    }

    /// The input column the expression is, if it is one.
    pub(crate) fn column_index(&self) -> Option<usize> {
        self.expr
            .downcast_ref::<datafusion::physical_expr::expressions::Column>()
            .map(datafusion::physical_expr::expressions::Column::index)
    }

    /// The expression's value for every row.
    pub(crate) fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        Ok(self.expr.evaluate(batch)?.into_array(batch.num_rows())?)
    }

    /// A predicate's value for every row.
    pub(crate) fn mask(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let array = self.evaluate(batch)?;
        array
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .ok_or_else(|| internal(format!("a predicate returned {}", array.data_type())))
    }
}

impl std::fmt::Display for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.expr)
    }
}

/// Timestamps as milliseconds since the Unix epoch.
pub(crate) fn millis(column: &datafusion::arrow::array::ArrayRef) -> Result<datafusion::arrow::array::Int64Array> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
    let millis = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))
        .and_then(|a| cast(&a, &DataType::Int64))
        .map_err(internal)?;
    Ok(millis.as_primitive::<Int64Type>().clone())
}

/// The schema of a delta's rows at a plan node.
pub(crate) fn arrow_schema(schema: &DFSchema) -> SchemaRef {
    Arc::new(schema.as_arrow().clone())
}

#[cfg(test)]
mod tests {
    use super::Epoch;

    #[test]
    fn watermarks_combine_as_the_least_leaving_idle_sources_out() {
        let sources = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut epoch = Epoch::at(0);
        epoch.set_watermark("a", 100);
        epoch.set_watermark("b", 40);
        assert_eq!(epoch.watermark(&sources(&["a"])), Some(100));
        assert_eq!(epoch.watermark(&sources(&["a", "b"])), Some(40));
        // A source without a watermark yet holds everything back.
        assert_eq!(epoch.watermark(&sources(&["a", "c"])), None);
        // An idle one does not, unless all are idle.
        epoch.set_idle("b");
        assert_eq!(epoch.watermark(&sources(&["a", "b"])), Some(100));
        assert_eq!(epoch.watermark(&sources(&["b"])), Some(40));
        // A building epoch has none.
        assert_eq!(epoch.building().watermark(&sources(&["a", "b"])), None);
    }

    /// Rows added in parts fill building epochs of at most the given size, at the same time,
    /// and leave the rest in the epoch.
    #[test]
    fn rows_added_in_parts_fill_building_epochs() {
        use datafusion::arrow::array::{ArrayRef, Int64Array};
        let batch = |n: i64| {
            datafusion::arrow::record_batch::RecordBatch::try_from_iter([(
                "v",
                std::sync::Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
            )])
            .unwrap()
        };
        let mut epoch = Epoch::at(7);
        let mut full = Vec::new();
        let mut take = |e: Epoch| {
            full.push((e.rows(), e.is_building(), e.time_ns()));
            Ok(())
        };
        assert_eq!(epoch.add_in_parts("s", &batch(10), 4, &mut take).unwrap(), 10);
        assert_eq!(epoch.add_in_parts("s", &batch(3), 4, &mut take).unwrap(), 3);
        assert_eq!(full, vec![(4, true, Some(7_000_000)); 3]);
        assert_eq!(
            (epoch.rows(), epoch.is_building(), epoch.time_ns()),
            (1, false, Some(7_000_000))
        );
    }
}
