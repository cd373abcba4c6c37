//! Incremental maintenance of queries: DataFusion plans become operators over change batches.
//!
//! A query is planned and optimized by DataFusion (name resolution, coercion, decorrelation of
//! subqueries into joins). [`Pipeline::build`] walks the optimized [`LogicalPlan`] and builds a
//! tree of incremental operators — scans, filters, projections, joins of every kind, aggregates,
//! unions, constants — or says which operator it cannot maintain ([`NotIncremental`]).
//!
//! A pipeline then runs in epochs. Each [`Epoch`] carries the changes of the source tables as
//! change batches (rows with weights, a Z-set in DBSP's terms); [`Pipeline::step`] returns the
//! changes of the query's result. Operators keep the state they need between epochs (a join
//! both of its inputs indexed by key, an aggregate one entry per group), so the work of an
//! epoch follows the size of the changes, not of the tables.
//!
//! The rule every operator obeys: if the result before an epoch equals the query evaluated over
//! the inputs before it, then the result plus the epoch's output equals the query over the
//! inputs after it. The engine's property tests check exactly that against DataFusion's batch
//! evaluation.
//!
//! [`LogicalPlan`]: datafusion::logical_expr::LogicalPlan

mod checkpoint;
mod delta;
mod event_time;
mod operator;
mod pipeline;
mod planner;
mod rows;
mod temporal;

pub use checkpoint::{
    CHECKPOINT_MAX_CHANGES_PER_ROW, Layer, MAX_DELTAS, OperatorRanges, PipelineState, checkpoint_due, delta_fits,
};
pub use delta::Delta;
pub use event_time::{EventTimeColumn, EventTimes, SESSION_END, SESSION_START, WINDOW_BOUND, WINDOW_HOP};
pub use operator::{Epoch, StateSize};
pub use pipeline::{OperatorInfo, Pipeline, PipelineOptions};
pub use planner::{BuildError, NotIncremental, SourceResolver};
pub use temporal::{FRESHET_NOW, time_as_input};
