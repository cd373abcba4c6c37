//! Windows that a watermark closes.
//!
//! A window table function's `window_end` column is `window_bound(end, ts)`, where `ts` is the
//! row's time. When `ts` is the event-time column of a source whose late rows are dropped below
//! its watermark (less an allowed lateness), no row can reach a window whose end is at or below
//! that bound any more: an aggregate grouped by such a column may forget those groups, whose
//! rows in the result are final. This module finds, through the plan, whether a column is such
//! a window end and of which source.

use std::collections::HashMap;

use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::{Expr, LogicalPlan};

use crate::planner::SourceResolver;

/// The name of the function that marks a window's end (see the module's documentation).
pub const WINDOW_BOUND: &str = "window_bound";

/// A source table's event time, as incremental maintenance needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTimeColumn {
    /// The event-time column's name.
    pub column: String,
    /// How far below the watermark (ms) rows are still taken: 0 when late rows are dropped,
    /// `None` when every late row is applied (windows then never close).
    pub allowed_lateness_ms: Option<i64>,
}

/// The event times of the sources that have one, by table.
pub type EventTimes = HashMap<String, EventTimeColumn>;

/// The source whose watermark closes the windows of output column `index` of `plan`, when the
/// column is a window's end over that source's event time (through projections, filters,
/// unions, joins and the group columns of aggregates).
pub(crate) fn window_end_source(
    plan: &LogicalPlan,
    index: usize,
    resolve: SourceResolver<'_>,
    event_times: &EventTimes,
) -> Option<String> {
    trace(plan, index, resolve, event_times, false)
}

/// `bound`: a `window_bound` was found above, and the walk now looks for the event-time
/// column its time argument names.
fn trace(
    plan: &LogicalPlan,
    index: usize,
    resolve: SourceResolver<'_>,
    event_times: &EventTimes,
    bound: bool,
) -> Option<String> {
    let child = |input: &LogicalPlan, expr: &Expr, bound: bool| -> Option<String> {
        let Expr::Column(column) = expr else {
            return None;
        };
        let at = input.schema().index_of_column(column).ok()?;
        trace(input, at, resolve, event_times, bound)
    };
    match plan {
        LogicalPlan::TableScan(scan) => {
            if !bound {
                return None;
            }
            let table = resolve(scan)?;
            let event_time = event_times.get(&table)?;
            let field = scan.projected_schema.field(index);
            (field.name().eq_ignore_ascii_case(&event_time.column) && event_time.allowed_lateness_ms.is_some())
                .then_some(table)
        }
        LogicalPlan::Projection(projection) => {
            let expr = unalias(projection.expr.get(index)?);
            match expr {
                Expr::ScalarFunction(function) if !bound && function.func.name() == WINDOW_BOUND => {
                    child(&projection.input, function.args.get(1)?, true)
                }
                _ => child(&projection.input, expr, bound),
            }
        }
        LogicalPlan::Filter(filter) => trace(&filter.input, index, resolve, event_times, bound),
        LogicalPlan::SubqueryAlias(alias) => trace(&alias.input, index, resolve, event_times, bound),
        LogicalPlan::Repartition(repartition) => trace(&repartition.input, index, resolve, event_times, bound),
        LogicalPlan::Sort(sort) if sort.fetch.is_none() => trace(&sort.input, index, resolve, event_times, bound),
        LogicalPlan::Union(union) => {
            let mut found = None;
            for input in &union.inputs {
                let source = trace(input, index, resolve, event_times, bound)?;
                if found.as_ref().is_some_and(|f| f != &source) {
                    return None;
                }
                found = Some(source);
            }
            found
        }
        LogicalPlan::Join(join) => {
            let left = join.left.schema().fields().len();
            if index < left {
                trace(&join.left, index, resolve, event_times, bound)
            } else {
                trace(&join.right, index - left, resolve, event_times, bound)
            }
        }
        LogicalPlan::Aggregate(aggregate) => child(&aggregate.input, unalias(aggregate.group_expr.get(index)?), bound),
        _ => None,
    }
}

/// Whether every change below `plan` is an insertion into an open window: its scans read
/// sources with an event time (whose rows are only appended, late ones dropped), through
/// projections, filters that do not compare with the time, unions, inner joins, and aggregates
/// that close their own windows. A group of a closed window then receives nothing more.
pub(crate) fn closes_only_open_windows(
    plan: &LogicalPlan,
    resolve: SourceResolver<'_>,
    event_times: &EventTimes,
) -> bool {
    let below = |input: &LogicalPlan| closes_only_open_windows(input, resolve, event_times);
    match plan {
        LogicalPlan::TableScan(scan) => resolve(scan).is_some_and(|table| event_times.contains_key(&table)),
        LogicalPlan::Projection(projection) => below(&projection.input),
        LogicalPlan::Filter(filter) => !mentions_time(&filter.predicate) && below(&filter.input),
        LogicalPlan::SubqueryAlias(alias) => below(&alias.input),
        LogicalPlan::Repartition(repartition) => below(&repartition.input),
        LogicalPlan::Sort(sort) if sort.fetch.is_none() => below(&sort.input),
        LogicalPlan::Union(union) => union.inputs.iter().all(|i| below(i)),
        LogicalPlan::Join(join) => {
            join.join_type == datafusion::logical_expr::JoinType::Inner
                && join.filter.as_ref().is_none_or(|f| !mentions_time(f))
                && below(&join.left)
                && below(&join.right)
        }
        LogicalPlan::Aggregate(aggregate) => {
            below(&aggregate.input)
                && aggregate.group_expr.iter().any(|expr| {
                    matches!(unalias(expr), Expr::Column(c) if aggregate.input.schema().index_of_column(c)
                        .ok()
                        .and_then(|index| window_end_source(&aggregate.input, index, resolve, event_times))
                        .is_some())
                })
        }
        _ => false,
    }
}

/// Whether an expression reads the epoch's time (a temporal filter: rows leave as time passes).
fn mentions_time(expr: &Expr) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if matches!(e, Expr::ScalarFunction(f) if f.func.name() == crate::temporal::FRESHET_NOW) {
            found = true;
        }
        Ok(if found {
            datafusion::common::tree_node::TreeNodeRecursion::Stop
        } else {
            datafusion::common::tree_node::TreeNodeRecursion::Continue
        })
    });
    found
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => unalias(&alias.expr),
        other => other,
    }
}
