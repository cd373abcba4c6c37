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
use datafusion::logical_expr::{Expr, LogicalPlan, Operator};

use crate::planner::SourceResolver;

/// The name of the function that marks a window's end (see the module's documentation).
pub const WINDOW_BOUND: &str = "window_bound";

/// The name of the function giving a bound of a row's `i`-th HOP window:
/// `window_hop(ts, slide_ms, size_ms, offset_ms, i, 'start' | 'end' | 'time')`. Each branch of a
/// HOP window table function's `UNION ALL` computes its window's bounds with it, so that an
/// aggregate over them can be recognised and computed per slide (`planner::hop`).
pub const WINDOW_HOP: &str = "window_hop";

/// The window functions giving each row the start and the end of its SESSION window:
/// `window_session_start(ts, gap_ms) OVER (PARTITION BY ... ORDER BY ts)`.
pub const SESSION_START: &str = "window_session_start";
/// See [`SESSION_START`].
pub const SESSION_END: &str = "window_session_end";

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
                // A window's end; as a time (`bound`: windows over a window aggregate's rows,
                // Flink's cascading windows), one that closes with the row time it was
                // computed from: the window aggregate's rows ending at or before an outer
                // window's end come before the watermark passes that end.
                Expr::ScalarFunction(function) if function.func.name() == WINDOW_BOUND => {
                    child(&projection.input, function.args.get(1)?, true)
                }
                Expr::ScalarFunction(function) if bound && function.func.name() == WINDOW_HOP => {
                    let bound_name = match function.args.last().map(unalias) {
                        Some(Expr::Literal(datafusion::common::ScalarValue::Utf8(Some(name)), _)) => name.as_str(),
                        _ => return None,
                    };
                    if !matches!(bound_name, "end" | "time") {
                        return None;
                    }
                    child(&projection.input, function.args.first()?, true)
                }
                // `window_time`: a window's end less a millisecond, the last instant in it.
                Expr::BinaryExpr(binary)
                    if bound && binary.op == Operator::Minus && is_one_millisecond(&binary.right) =>
                {
                    match unalias(&binary.left) {
                        Expr::ScalarFunction(function) if function.func.name() == WINDOW_BOUND => {
                            child(&projection.input, function.args.get(1)?, true)
                        }
                        end @ Expr::Column(_) => child(&projection.input, end, false),
                        _ => None,
                    }
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
        // A window function's node passes its input's columns through.
        LogicalPlan::Window(window) if index < window.input.schema().fields().len() => {
            trace(&window.input, index, resolve, event_times, bound)
        }
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
            inserts_only(join.join_type)
                && join.filter.as_ref().is_none_or(|f| !mentions_time(f))
                && below(&join.left)
                && below(&join.right)
        }
        LogicalPlan::Aggregate(aggregate) => {
            below(&aggregate.input)
                && window_end_group(&aggregate.input, &aggregate.group_expr, resolve, event_times).is_some()
        }
        // Window functions change rows from the first changed one on in their order: at or
        // above the watermark when that order is the event time. A SESSION window's rows
        // change only while their session is open (a row at or above the watermark reaches
        // only sessions ending after it).
        LogicalPlan::Window(window) => {
            below(&window.input)
                && (ordered_by_event_time(window, resolve, event_times).is_some()
                    || session_gap(&window.window_expr).is_some())
        }
        _ => false,
    }
}

/// The gap (ms) of a window node computing SESSION windows' bounds, and nothing else.
pub(crate) fn session_gap(window_expr: &[Expr]) -> Option<i64> {
    let mut gap = None;
    for expr in window_expr {
        let Expr::WindowFunction(function) = unalias(expr) else {
            return None;
        };
        if ![SESSION_START, SESSION_END].contains(&function.fun.name()) {
            return None;
        }
        let this = match function.params.args.get(1) {
            Some(Expr::Literal(value, _)) => {
                match value.cast_to(&datafusion::arrow::datatypes::DataType::Int64).ok()? {
                    datafusion::common::ScalarValue::Int64(Some(ms)) => ms,
                    _ => return None,
                }
            }
            _ => return None,
        };
        if gap.is_some_and(|g| g != this) {
            return None;
        }
        gap = Some(this);
    }
    gap
}

/// The input column of a window node whose functions all look backward over one ascending
/// order, an event time whose late rows are dropped.
fn ordered_by_event_time(
    window: &datafusion::logical_expr::logical_plan::Window,
    resolve: SourceResolver<'_>,
    event_times: &EventTimes,
) -> Option<usize> {
    let mut column = None;
    for expr in &window.window_expr {
        let Expr::WindowFunction(function) = unalias(expr) else {
            return None;
        };
        let [sort] = function.params.order_by.as_slice() else {
            return None;
        };
        let Expr::Column(c) = &sort.expr else {
            return None;
        };
        let index = window.input.schema().index_of_column(c).ok()?;
        if !sort.asc || !crate::planner::looks_backward(function) || column.is_some_and(|i| i != index) {
            return None;
        }
        column = Some(index);
    }
    let column = column?;
    rowtime_source(&window.input, column, resolve, event_times)?;
    Some(column)
}

/// How the rows of a window node ordered by input column `column` become final: when it is an
/// event time and nothing below changes rows under the watermark. The sources whose watermarks
/// combine, and the most lateness any allows (ms).
pub(crate) fn order_time_closing(
    input: &LogicalPlan,
    column: usize,
    resolve: SourceResolver<'_>,
    event_times: &EventTimes,
) -> Option<(Vec<String>, i64)> {
    if !closes_only_open_windows(input, resolve, event_times) {
        return None;
    }
    rowtime_source(input, column, resolve, event_times)?;
    let sources = scanned(input, resolve);
    let lateness = allowed_lateness(&sources, event_times)?;
    Some((sources, lateness))
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

/// How an aggregate's windows close: when one of its group columns is a window's end over a
/// source's event time, and nothing below it can change a window once closed. The watermarks of
/// every source below combine (a row of one may join an old row of another), and the most
/// lateness any allows holds.
pub(crate) fn window_closing(
    input: &LogicalPlan,
    group_expr: &[Expr],
    resolve: SourceResolver<'_>,
    event_times: &EventTimes,
) -> Option<crate::operator::WindowClosing> {
    if !closes_only_open_windows(input, resolve, event_times) {
        return None;
    }
    let column = window_end_group(input, group_expr, resolve, event_times)?;
    let sources = scanned(input, resolve);
    let allowed_lateness_ms = allowed_lateness(&sources, event_times)?;
    Some(crate::operator::WindowClosing {
        column,
        sources,
        allowed_lateness_ms,
    })
}

/// The first group column of an aggregate over `input` that is a window's end over a source's
/// event time.
fn window_end_group(
    input: &LogicalPlan,
    group_expr: &[Expr],
    resolve: SourceResolver<'_>,
    event_times: &EventTimes,
) -> Option<usize> {
    group_expr.iter().position(|expr| {
        matches!(unalias(expr), Expr::Column(c) if input
            .schema()
            .index_of_column(c)
            .ok()
            .and_then(|index| window_end_source(input, index, resolve, event_times))
            .is_some())
    })
}

/// The source whose event-time column output column `index` of `plan` is (through
/// projections, filters, unions and joins).
fn rowtime_source(
    plan: &LogicalPlan,
    index: usize,
    resolve: SourceResolver<'_>,
    event_times: &EventTimes,
) -> Option<String> {
    trace(plan, index, resolve, event_times, true)
}

/// The tables scanned below `plan`.
fn scanned(plan: &LogicalPlan, resolve: SourceResolver<'_>) -> Vec<String> {
    let mut sources = std::collections::BTreeSet::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(table) = resolve(scan)
        {
            sources.insert(table);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    sources.into_iter().collect()
}

/// The most lateness any of `sources` allows (ms); `None` when one applies every late row.
fn allowed_lateness(sources: &[String], event_times: &EventTimes) -> Option<i64> {
    sources
        .iter()
        .try_fold(0, |most, s| Some(most.max(event_times.get(s)?.allowed_lateness_ms?)))
}

/// How each side of a join over streams is dropped from its state (left, right).
///
/// In an inner (or semi) join a row is dropped once it can never match again (see
/// [`matching_expiries`]). An outer join must also keep answering whether a row it preserves
/// has a match, whenever a change at its key asks again: a preserved row is dropped once it
/// can never gain a match (its result is then final, and the inputs only append, so it never
/// loses one), and the other side's rows are kept until every preserved row they can have
/// matched is final — their bound widened by the preserved side's interval. Both sides of a
/// full join are preserved, so both are kept that long.
pub(crate) fn join_expiries(
    join: &datafusion::logical_expr::logical_plan::Join,
    resolve: SourceResolver<'_>,
    event_times: &EventTimes,
) -> [Option<crate::operator::SideExpiry>; 2] {
    use datafusion::logical_expr::JoinType;
    let preserved = match join.join_type {
        JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi => [false, false],
        JoinType::Left => [true, false],
        JoinType::Right => [false, true],
        JoinType::Full => [true, true],
        _ => return [None, None],
    };
    let Some(([left, right], lateness)) = matching_expiries(join, resolve, event_times) else {
        return [None, None];
    };
    if preserved == [false, false] {
        return [left, right];
    }
    match (left, right) {
        (Some(left), Some(right)) => {
            let both = left.offset_ms.saturating_add(right.offset_ms).saturating_sub(lateness);
            let widen = |mut expiry: crate::operator::SideExpiry| {
                expiry.offset_ms = both;
                expiry.display = format!("{} once the rows they matched are final", expiry.display);
                expiry
            };
            // A preserved side alone (left or right join) drops its rows once final; the
            // other waits for them.
            match preserved {
                [true, false] => [Some(left), Some(widen(right))],
                [false, true] => [Some(widen(left)), Some(right)],
                _ => [Some(widen(left)), Some(widen(right))],
            }
        }
        // Only the preserved side is bounded: its rows go once final, the other side's stay.
        (Some(left), None) if preserved == [true, false] => [Some(left), None],
        (None, Some(right)) if preserved == [false, true] => [None, Some(right)],
        _ => [None, None],
    }
}

/// How each side of a join over streams stops matching (left, right), and the lateness
/// allowed: by equal window ends (a window join), or by a condition bounding its time from
/// below by the other side's event time or window end (an interval join: `a.ts BETWEEN b.ts -
/// INTERVAL '10' SECOND AND b.ts`, Nexmark q7's bids against the windows' ends). The other side's future rows are no older than its watermark less its
/// lateness, so a row below that bound (plus the interval) can never match again. `None`
/// when the inputs may change other than by appending rows.
fn matching_expiries(
    join: &datafusion::logical_expr::logical_plan::Join,
    resolve: SourceResolver<'_>,
    event_times: &EventTimes,
) -> Option<([Option<crate::operator::SideExpiry>; 2], i64)> {
    let mut expiries = [None, None];
    if !closes_only_open_windows(&join.left, resolve, event_times)
        || !closes_only_open_windows(&join.right, resolve, event_times)
    {
        return None;
    }
    let inputs = [join.left.as_ref(), join.right.as_ref()];
    // Both sides' sources: a row may also still be retracted by its own side (an aggregate
    // updating an open window) until that side's watermark has passed it, so the bound is the
    // least of all.
    let mut all = scanned(&join.left, resolve);
    all.extend(scanned(&join.right, resolve));
    all.sort();
    all.dedup();
    let lateness = allowed_lateness(&all, event_times)?;
    let column_of = |side: usize, expr: &Expr| -> Option<usize> {
        let Expr::Column(column) = unalias(expr) else {
            return None;
        };
        inputs[side].schema().index_of_column(column).ok()
    };
    // `side`'s column `column` is at least the other side's event time plus `plus_ms`.
    let mut bound = |side: usize, column: usize, plus_ms: i64, display: String| {
        let expiry = crate::operator::SideExpiry {
            column,
            sources: all.clone(),
            offset_ms: lateness.saturating_sub(plus_ms),
            display,
        };
        // The tightest bound wins.
        if expiries[side]
            .as_ref()
            .is_none_or(|e: &crate::operator::SideExpiry| e.offset_ms > expiry.offset_ms)
        {
            expiries[side] = Some(expiry);
        }
    };
    // Window join: equal window ends.
    for (l, r) in &join.on {
        let (Some(li), Some(ri)) = (column_of(0, l), column_of(1, r)) else {
            continue;
        };
        if window_end_source(&join.left, li, resolve, event_times).is_some()
            && window_end_source(&join.right, ri, resolve, event_times).is_some()
        {
            // A window ending at or before the other side's bound has all its rows there.
            bound(0, li, 1, format!("of windows {l} closed on the right"));
            bound(1, ri, 1, format!("of windows {r} closed on the left"));
        }
    }
    // Interval join: `x >= y + k` (or `>`, or written the other way round).
    let Some(filter) = &join.filter else {
        return Some((expiries, lateness));
    };
    let operand = |expr: &Expr| -> Option<(usize, usize, i64)> {
        let (column, plus) = match unalias(expr) {
            Expr::BinaryExpr(b) if matches!(b.op, Operator::Plus | Operator::Minus) => {
                let ms = interval_ms(&b.right)?;
                (b.left.as_ref(), if b.op == Operator::Plus { ms } else { -ms })
            }
            other => (other, 0),
        };
        let Expr::Column(c) = column else {
            return None;
        };
        match (
            inputs[0].schema().index_of_column(c),
            inputs[1].schema().index_of_column(c),
        ) {
            (Ok(i), _) => Some((0, i, plus)),
            (_, Ok(i)) => Some((1, i, plus)),
            _ => None,
        }
    };
    for conjunct in datafusion::logical_expr::utils::split_conjunction(filter) {
        let Expr::BinaryExpr(b) = conjunct else {
            continue;
        };
        // As `low <= high`: high's column is at least low's plus (low's offset - high's).
        let (low, high) = match b.op {
            Operator::Lt | Operator::LtEq => (&b.left, &b.right),
            Operator::Gt | Operator::GtEq => (&b.right, &b.left),
            _ => continue,
        };
        let (Some((ls, lc, lplus)), Some((hs, hc, hplus))) = (operand(low), operand(high)) else {
            continue;
        };
        if ls == hs {
            continue;
        }
        // high + hplus >= low + lplus, with low the other side's event time — or a window
        // end: the windows still to come out of a window-closing aggregate end after the
        // watermark less the lateness, as rows still to come are no older than that.
        if rowtime_source(inputs[ls], lc, resolve, event_times).is_some()
            || window_end_source(inputs[ls], lc, resolve, event_times).is_some()
        {
            bound(hs, hc, lplus - hplus, format!("by {conjunct}"));
        }
    }
    Some((expiries, lateness))
}

/// Joins whose output only grows while their inputs do (an inner join's pairs, a semi join's
/// matched rows): neither pads rows with NULLs nor retracts them when a match appears.
fn inserts_only(join_type: datafusion::logical_expr::JoinType) -> bool {
    use datafusion::logical_expr::JoinType;
    matches!(join_type, JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi)
}

/// Whether `expr` is an interval of exactly one millisecond.
fn is_one_millisecond(expr: &Expr) -> bool {
    use datafusion::common::ScalarValue;
    match unalias(expr) {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) => {
            v.months == 0 && v.days == 0 && v.nanoseconds == 1_000_000
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => v.days == 0 && v.milliseconds == 1,
        _ => false,
    }
}

/// An interval literal in milliseconds (days and smaller units only).
fn interval_ms(expr: &Expr) -> Option<i64> {
    use datafusion::common::ScalarValue;
    match unalias(expr) {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => {
            Some(i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds))
        }
        _ => None,
    }
}
