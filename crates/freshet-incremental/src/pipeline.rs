//! A materialized table's operator graph and how it runs.

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::LogicalPlan;

use freshet_common::{ChangeBatch, Result, consolidate};

use crate::operator::{Epoch, Operator, StateSize, arrow_schema};
use crate::planner::{BuildError, Context, SourceResolver, build};

/// The incremental operators of one query: fed the changes of its source tables epoch by epoch,
/// it returns the changes of the query's result, consolidated.
pub struct Pipeline {
    root: Box<dyn Operator>,
    sources: BTreeSet<String>,
    schema: SchemaRef,
    epochs: u64,
    parallelism: usize,
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
        let mut cx = Context {
            resolve,
            sources: BTreeSet::new(),
            parallelism: parallelism.max(1),
        };
        let root = build(plan, &mut cx)?;
        Ok(Self {
            root,
            sources: cx.sources,
            parallelism: cx.parallelism,
            schema: arrow_schema(plan.schema()),
            epochs: 0,
        })
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

    /// Epochs processed.
    pub fn epochs(&self) -> u64 {
        self.epochs
    }

    /// Processes one epoch: the changes of the query's result, with several changes to one row
    /// summed into one, or `None` when nothing changed. After an error the state is undefined:
    /// drop the pipeline and build it again.
    pub fn step(&mut self, epoch: &Epoch) -> Result<Option<ChangeBatch>> {
        let delta = self.root.step(epoch)?;
        self.epochs += 1;
        if delta.is_empty() {
            return Ok(None);
        }
        let delta = delta.with_schema(&self.schema)?;
        if self.root.output_consolidated() {
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
