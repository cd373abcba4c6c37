//! A materialized table's operator graph and how it runs.

use std::collections::{BTreeSet, HashMap};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::LogicalPlan;

use freshet_common::{ChangeBatch, Result, consolidate};

use crate::checkpoint::{PipelineState, SavedState, mismatch};
use crate::event_time::EventTimes;
use crate::operator::{Epoch, Operator, StateSize, arrow_schema};
use crate::planner::{
    BuildError, Context, SharedPlans, SourceResolver, build, read_columns, scalar_subqueries_as_joins,
};

/// The incremental operators of one query: fed the changes of its source tables epoch by epoch,
/// it returns the changes of the query's result, consolidated.
pub struct Pipeline {
    root: Box<dyn Operator>,
    sources: BTreeSet<String>,
    schema: SchemaRef,
    epochs: u64,
    parallelism: usize,
    /// The columns of each source it reads, when not all.
    read_columns: HashMap<String, Option<Vec<usize>>>,
    /// Identifies the operator tree, for checkpoints (taken before any epoch, whose counts
    /// some descriptions show).
    fingerprint: String,
    /// Its operators keep the changes since its state was last saved or restored, for a delta
    /// checkpoint.
    tracking: bool,
}

/// What a pipeline over streams knows beyond its plan.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// The event time of the sources that have one: an aggregate grouped by a window's end over
    /// such sources forgets the windows their watermark closes (the epoch's
    /// [`Epoch::set_watermark`](crate::Epoch::set_watermark)), and joins bounded by windows or
    /// time intervals forget rows that can no longer match.
    pub event_times: EventTimes,
    /// Such an aggregate's rows pass only once their window has closed, each once and final
    /// (Flink's emission of window results, what jobs write); without it, open windows' rows
    /// are in the result and change as rows arrive (materialized tables).
    pub emit_on_close: bool,
    /// Flink's `table.exec.state.ttl`: an aggregate that closes no windows forgets a group no
    /// change has touched for so long (ms of the epochs' time). Its row is then final, and a
    /// later row of the group starts it anew, as in Flink.
    pub state_ttl_ms: Option<i64>,
    /// The tables whose rows are only ever appended (streams' source tables): over them a
    /// top-N keeps only the rows at its ranks, since no row below can ever rise into them.
    pub append_only_sources: BTreeSet<String>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("sources", &self.sources)
            .field("epochs", &self.epochs)
            .finish_non_exhaustive()
    }
}

/// One operator of a pipeline, for EXPLAIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorInfo {
    /// Depth in the tree (the root is 0).
    pub depth: usize,
    /// The operator and its parameters.
    pub operator: String,
    /// What state it keeps; empty when none.
    pub state_kind: String,
    /// How much.
    pub state: StateSize,
}

impl Pipeline {
    /// Builds the operators of an optimized logical plan. `resolve` names the versioned table
    /// each scan reads; state kept by key is split into `parallelism` parts, which step on as
    /// many threads.
    pub fn build(plan: &LogicalPlan, resolve: SourceResolver<'_>, parallelism: usize) -> Result<Self, BuildError> {
        Self::build_with(plan, resolve, parallelism, &PipelineOptions::default())
    }

    /// Like [`Pipeline::build`], with what stream processing adds (see [`PipelineOptions`]).
    pub fn build_with(
        plan: &LogicalPlan,
        resolve: SourceResolver<'_>,
        parallelism: usize,
        options: &PipelineOptions,
    ) -> Result<Self, BuildError> {
        let PipelineOptions {
            event_times,
            emit_on_close,
            state_ttl_ms,
            append_only_sources,
        } = options;
        let (event_times, emit_on_close, state_ttl_ms) = (event_times, *emit_on_close, *state_ttl_ms);
        let joined = scalar_subqueries_as_joins(plan)?;
        let plan = joined.as_ref().unwrap_or(plan);
        let mut cx = Context {
            resolve,
            sources: BTreeSet::new(),
            parallelism: parallelism.max(1),
            read_columns: read_columns(plan, resolve)?,
            event_times,
            emit_on_close,
            state_ttl_ms,
            append_only_sources,
            shared: SharedPlans::find(plan, resolve),
        };
        let root = build(plan, &mut cx)?;
        let schema = arrow_schema(plan.schema());
        let fingerprint = fingerprint(root.as_ref(), &schema);
        Ok(Self {
            fingerprint,
            root,
            sources: cx.sources,
            parallelism: cx.parallelism,
            read_columns: cx.read_columns,
            schema,
            epochs: 0,
            tracking: false,
        })
    }

    /// The columns of `source` the pipeline reads (table column indices, ascending), when it
    /// does not read them all: its changes need only those columns, in that order (changes of
    /// all columns are accepted too).
    pub fn source_columns(&self, source: &str) -> Option<&[usize]> {
        self.read_columns.get(source).and_then(|columns| columns.as_deref())
    }

    /// How many parts its keyed state is split into (see [`Pipeline::build`]); state kept
    /// beside the pipeline may use as many.
    pub fn parallelism(&self) -> usize {
        self.parallelism
    }

    /// The tables whose changes the pipeline reads.
    pub fn sources(&self) -> &BTreeSet<String> {
        &self.sources
    }

    /// The schema of the query's rows.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Columns of the query's result whose values identify a row of it (the GROUP BY columns
    /// of an aggregate), when the pipeline knows such columns.
    pub fn unique_key(&self) -> Option<Vec<usize>> {
        self.root.unique_key()
    }

    /// The next time (ms since the Unix epoch) at which the query's result changes with time
    /// alone (a row of a temporal filter enters or leaves), if any.
    pub fn next_change_ms(&self) -> Option<i64> {
        fn walk(operator: &dyn Operator) -> Option<i64> {
            operator
                .inputs()
                .into_iter()
                .filter_map(walk)
                .chain(operator.next_change())
                .min()
        }
        // Rounded up: at that millisecond the change has happened.
        walk(self.root.as_ref()).map(|ns| ns.div_euclid(1_000_000) + i64::from(ns.rem_euclid(1_000_000) != 0))
    }

    /// Epochs processed.
    pub fn epochs(&self) -> u64 {
        self.epochs
    }

    /// Processes one epoch: the changes of the query's result, with several changes to one row
    /// summed into one, or `None` when nothing changed — except that an output that only
    /// inserts is returned as it is (equal rows may come as several rows of weight 1: the same
    /// multiset, and nothing in it can cancel). After an error the state is undefined: drop the
    /// pipeline and build it again.
    pub fn step(&mut self, epoch: &Epoch) -> Result<Option<ChangeBatch>> {
        let delta = self.root.step(epoch)?;
        self.epochs += 1;
        if delta.is_empty() {
            return Ok(None);
        }
        let delta = delta.with_schema(&self.schema)?;
        // Consolidating row-encodes and hashes every row (a sixth of a stream job's time over
        // insert-only input); it matters only where changes may cancel.
        let only_inserts = delta.weights.values().iter().all(|&w| w > 0);
        if self.root.output_consolidated() || only_inserts {
            return Ok(Some(delta.into_change_batch()?));
        }
        consolidate(&self.schema, &[delta.into_change_batch()?])
    }

    /// The state kept by all operators.
    pub fn state_size(&self) -> StateSize {
        fn walk(operator: &dyn Operator) -> StateSize {
            operator
                .inputs()
                .into_iter()
                .fold(operator.state_size(), |sum, input| sum + walk(input))
        }
        walk(self.root.as_ref())
    }

    /// The first operator (root first, depth-first) whose output may retract rows although its
    /// inputs only insert, described: the reason the pipeline's result is an updating one.
    pub fn updating_operator(&self) -> Option<String> {
        fn walk(operator: &dyn Operator) -> Option<String> {
            if operator.updates() {
                return Some(operator.describe());
            }
            if operator.final_output() {
                return None;
            }
            operator.inputs().into_iter().find_map(walk)
        }
        walk(self.root.as_ref())
    }

    /// The first operator (root first, depth-first) that cannot save its state for a
    /// checkpoint yet, described; `None` when the pipeline can be checkpointed.
    pub fn checkpoint_blocker(&self) -> Option<String> {
        fn walk(operator: &dyn Operator) -> Option<String> {
            if !operator.can_save_state() {
                return Some(operator.describe());
            }
            operator.inputs().into_iter().find_map(walk)
        }
        walk(self.root.as_ref())
    }

    /// The state of every operator, for a checkpoint; `Ok(Err(operator))` names an operator
    /// that cannot save its state yet (the state is then rebuilt from the inputs).
    pub fn save_state(&self) -> Result<std::result::Result<PipelineState, String>> {
        self.save(false)
    }

    /// Rows of the changes the operators keep for a delta checkpoint.
    pub fn delta_rows(&self) -> u64 {
        fn walk(operator: &dyn Operator) -> u64 {
            operator.delta_rows() + operator.inputs().into_iter().map(walk).sum::<u64>()
        }
        walk(self.root.as_ref())
    }

    /// The state for a checkpoint. `chain` describes the checkpoint the state was last saved
    /// to or restored from — its whole state's rows and its deltas — when it is still the
    /// owner's current one: while the deltas with this one stay within the whole state
    /// ([`crate::delta_fits`]), each operator gives its changes since where it keeps them and its
    /// whole state where not; otherwise every operator gives its whole state. A state whose
    /// [`PipelineState::deltas`] is empty is whole and starts a new chain. `Ok(Err(operator))`
    /// names an operator that cannot save its state yet.
    pub fn save_checkpoint(
        &self,
        chain: Option<(u64, &[crate::Layer])>,
    ) -> Result<std::result::Result<PipelineState, String>> {
        let delta =
            self.tracking && chain.is_some_and(|(rows, deltas)| crate::delta_fits(rows, deltas, self.delta_rows()));
        self.save(delta)
    }

    /// Says that the state was just saved to a checkpoint that will be committed (or the
    /// pipeline dropped): the operators keep the changes for the next delta from here.
    pub fn checkpoint_taken(&mut self) {
        fn walk(operator: &mut dyn Operator) {
            operator.track_changes();
            for input in operator.inputs_mut() {
                walk(input);
            }
        }
        walk(self.root.as_mut());
        self.tracking = true;
    }

    fn save(&self, delta: bool) -> Result<std::result::Result<PipelineState, String>> {
        fn walk(
            operator: &dyn Operator,
            delta: bool,
            out: &mut PipelineState,
        ) -> Result<std::result::Result<(), String>> {
            let saved = match delta {
                true => operator.save_delta()?,
                false => None,
            };
            match saved {
                Some(batches) => {
                    out.operators.push(batches);
                    out.deltas.push(true);
                }
                None => match operator.save_state()? {
                    SavedState::Stateless => {}
                    SavedState::Unsupported => return Ok(Err(operator.describe())),
                    SavedState::Batches(batches) => {
                        out.operators.push(batches);
                        out.deltas.push(false);
                    }
                },
            }
            for input in operator.inputs() {
                if let Err(operator) = walk(input, delta, out)? {
                    return Ok(Err(operator));
                }
            }
            Ok(Ok(()))
        }
        let mut state = PipelineState {
            fingerprint: self.fingerprint.clone(),
            operators: Vec::new(),
            deltas: Vec::new(),
        };
        if let Err(operator) = walk(self.root.as_ref(), delta, &mut state)? {
            return Ok(Err(operator));
        }
        if !state.deltas.contains(&true) {
            state.deltas.clear();
        }
        Ok(Ok(state))
    }

    /// Takes back a state [`Pipeline::save_state`] gave, into a pipeline built from the same
    /// plan that has not stepped yet. An error (a state of another operator tree, or corrupt)
    /// leaves the pipeline unusable: build it again.
    pub fn restore_state(&mut self, state: PipelineState) -> Result<()> {
        self.restore_chain(vec![state])
    }

    /// Takes back a chain of checkpoints — a whole state, then the deltas saved after it in
    /// order ([`Pipeline::save_checkpoint`]) — into a pipeline built from the same plan that has not
    /// stepped yet: each operator takes the last whole state it saved and applies its deltas
    /// since. An error leaves the pipeline unusable: build it again.
    pub fn restore_chain(&mut self, chain: Vec<PipelineState>) -> Result<()> {
        /// Each layer's batches and delta flags, by stateful operator.
        type Layers = Vec<(Vec<Option<Vec<RecordBatch>>>, Vec<bool>)>;
        fn walk(operator: &mut dyn Operator, index: &mut usize, layers: &mut Layers) -> Result<()> {
            match operator.save_state()? {
                SavedState::Stateless => {}
                SavedState::Unsupported => {
                    return Err(mismatch(format!("{} cannot take a saved state", operator.describe())));
                }
                SavedState::Batches(_) => {
                    let i = *index;
                    *index += 1;
                    let is_delta =
                        |layer: &(Vec<Option<Vec<RecordBatch>>>, Vec<bool>)| layer.1.get(i).copied().unwrap_or(false);
                    let whole = layers
                        .iter()
                        .rposition(|layer| !is_delta(layer))
                        .ok_or_else(|| mismatch("a chain without a whole state"))?;
                    let mut taken = layers.iter_mut().skip(whole).map(|layer| {
                        layer
                            .0
                            .get_mut(i)
                            .and_then(Option::take)
                            .ok_or_else(|| mismatch("fewer operator states than operators"))
                    });
                    let state = taken
                        .next()
                        .ok_or_else(|| mismatch("a chain without a whole state"))??;
                    let deltas = taken.collect::<Result<Vec<_>>>()?;
                    operator.restore_state(state)?;
                    if !deltas.is_empty() {
                        operator.apply_deltas(deltas)?;
                    }
                }
            }
            for input in operator.inputs_mut() {
                walk(input, index, layers)?;
            }
            Ok(())
        }
        if self.epochs > 0 {
            return Err(mismatch("the pipeline has stepped already"));
        }
        let mut layers: Layers = Vec::with_capacity(chain.len());
        for (n, state) in chain.into_iter().enumerate() {
            if state.fingerprint != self.fingerprint {
                return Err(mismatch("it was taken of another operator tree"));
            }
            if n == 0 && state.deltas.contains(&true) {
                return Err(mismatch("a chain starts with a delta"));
            }
            layers.push((state.operators.into_iter().map(Some).collect(), state.deltas));
        }
        let operators = layers.first().map_or(0, |layer| layer.0.len());
        if layers.iter().any(|layer| layer.0.len() != operators) {
            return Err(mismatch("checkpoints of a chain with other numbers of operators"));
        }
        let mut index = 0;
        walk(self.root.as_mut(), &mut index, &mut layers)?;
        if index != operators {
            return Err(mismatch("more operator states than operators"));
        }
        self.checkpoint_taken();
        Ok(())
    }

    /// Identifies the operator tree (see [`PipelineState::fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The operators, root first, depth-first.
    pub fn operators(&self) -> Vec<OperatorInfo> {
        fn walk(operator: &dyn Operator, depth: usize, out: &mut Vec<OperatorInfo>) {
            out.push(OperatorInfo {
                depth,
                operator: operator.describe(),
                state_kind: operator.state_kind().to_string(),
                state: operator.state_size(),
            });
            for input in operator.inputs() {
                walk(input, depth + 1, out);
            }
        }
        let mut out = Vec::new();
        walk(self.root.as_ref(), 0, &mut out);
        out
    }
}

/// A stable hash (FNV-1a, 64 bits) of every operator's description and output columns,
/// root first, depth-first, in hex.
fn fingerprint(root: &dyn Operator, schema: &SchemaRef) -> String {
    fn walk(operator: &dyn Operator, depth: usize, text: &mut String) {
        text.push_str(&format!("{depth}:{}\n", operator.describe()));
        for input in operator.inputs() {
            walk(input, depth + 1, text);
        }
    }
    let mut text = String::new();
    walk(root, 0, &mut text);
    for field in schema.fields() {
        text.push_str(&format!("{}: {}\n", field.name(), field.data_type()));
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::{LogicalPlanBuilder, LogicalTableSource, col};

    use super::*;

    fn orders() -> Arc<LogicalTableSource> {
        Arc::new(LogicalTableSource::new(Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("customer", DataType::Int64, false),
            Field::new("amount", DataType::Float64, true),
            Field::new("note", DataType::Utf8, true),
        ]))))
    }

    #[test]
    fn changes_are_read_for_the_columns_the_scans_use() {
        // A scan of two columns with a filter on a third reads those three.
        let plan = LogicalPlanBuilder::scan_with_filters(
            "orders",
            orders(),
            Some(vec![1, 2]),
            vec![col("note").is_not_null()],
        )
        .unwrap()
        .project(vec![col("amount"), col("customer")])
        .unwrap()
        .build()
        .unwrap();
        let resolve = |_: &datafusion::logical_expr::TableScan| Some("orders".to_string());
        let pipeline = Pipeline::build(&plan, &resolve, 1).unwrap();
        assert_eq!(pipeline.source_columns("orders"), Some(&[1, 2, 3][..]));
        assert!(
            pipeline
                .operators()
                .iter()
                .any(|op| op.operator.contains("columns=[customer, amount]"))
        );

        // A second scan of the same table (under another name) reading every column: all are
        // read.
        let whole = LogicalPlanBuilder::scan("again", orders(), None)
            .unwrap()
            .build()
            .unwrap();
        let plan = LogicalPlanBuilder::from(plan)
            .cross_join(whole)
            .unwrap()
            .build()
            .unwrap();
        let pipeline = Pipeline::build(&plan, &resolve, 1).unwrap();
        assert_eq!(pipeline.source_columns("orders"), None);
    }
}
