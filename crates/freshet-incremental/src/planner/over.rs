//! Window functions (`OVER`) as the [`Over`] operator, with the window emitter above it in
//! jobs when its rows are ordered by an event time.

use datafusion::common::ScalarValue;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::logical_plan::Window;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, ExprSchemable, WindowFrameBound, WindowFrameUnits, WindowFunctionDefinition};
use datafusion::physical_planner::create_window_expr;

use super::{BuildError, Context, build, not_incremental};
use crate::operator::{Compiled, Operator, Over, OverExpiry, OverReach, OverSpec, TemporalFilter, arrow_schema};

/// Builds the operator of a `Window` node: every function must share one PARTITION BY and
/// ORDER BY (DataFusion stacks a node per distinct pair, so they do).
pub(super) fn window(window: &Window, cx: &mut Context<'_>) -> Result<Box<dyn Operator>, BuildError> {
    let functions: Vec<&WindowFunction> = window
        .window_expr
        .iter()
        .map(|e| match super::unalias(e) {
            Expr::WindowFunction(f) => Ok(f.as_ref()),
            other => Err(not_incremental(
                format!("window expression {other}"),
                "cannot be maintained incrementally",
            )),
        })
        .collect::<Result<_, _>>()?;
    let Some(first) = functions.first() else {
        return build(&window.input, cx);
    };
    let (partition_by, order_by) = (&first.params.partition_by, &first.params.order_by);
    if functions
        .iter()
        .any(|f| &f.params.partition_by != partition_by || &f.params.order_by != order_by)
    {
        return Err(not_incremental(
            "window functions over different windows in one node",
            "cannot be maintained incrementally",
        ));
    }
    if let Some(f) = functions
        .iter()
        .find(|f| f.params.distinct || f.params.filter.is_some())
    {
        return Err(not_incremental(
            format!("window function {} with DISTINCT or FILTER", f.fun.name()),
            "cannot be maintained incrementally",
        ));
    }
    let input_schema = window.input.schema();
    let input = build(&window.input, cx)?;
    let props = ExecutionProps::new();
    let compiled = window
        .window_expr
        .iter()
        .map(|e| create_window_expr(e, input_schema, &props, &PhysicalPlanningContext::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let (partition, partition_types, order) = super::partition_and_order(partition_by, order_by, input_schema)?;
    let backward = functions.iter().all(|f| looks_backward(f));

    // Ordered by an event time alone, ascending, over inputs that only insert rows at or above
    // the watermark (less the lateness allowed): the rows no row to come can reach are
    // forgotten, and those below the watermark are final when every function looks backward.
    let sessions = crate::event_time::session_gap(&window.window_expr);
    let time = match order_by.as_slice() {
        [sort] if sort.asc && (backward || sessions.is_some()) => match &sort.expr {
            Expr::Column(c) => input_schema.index_of_column(c).ok(),
            _ => None,
        },
        _ => None,
    };
    let closing = time
        .and_then(|column| crate::event_time::order_time_closing(&window.input, column, cx.resolve, cx.event_times));
    let expiry = closing.as_ref().and_then(|(sources, lateness)| {
        let reach = match sessions {
            Some(gap_ms) => OverReach::Sessions { gap_ms },
            None => {
                let (range_ms, rows) = functions.iter().try_fold((0i64, 0usize), |(range, rows), f| {
                    let (r, n) = frame_reach(f)?;
                    Some((range.max(r), rows.max(n)))
                })?;
                OverReach::Frames { range_ms, rows }
            }
        };
        Some(OverExpiry {
            sources: sources.clone(),
            time_type: order_by[0].expr.get_type(input_schema).ok()?,
            lateness_ms: *lateness,
            reach,
        })
    });

    let describe = |exprs: &[Expr]| exprs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let display = format!(
        "Window: [{}] partition=[{}] order=[{}]",
        functions.iter().map(|f| f.fun.name()).collect::<Vec<_>>().join(", "),
        describe(partition_by),
        order_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    );
    let schema = arrow_schema(&window.schema);
    let no_expiry = expiry.is_none();
    let over = Over::new(
        input,
        OverSpec {
            partition,
            partition_types,
            order,
            functions: compiled,
            backward,
            expiry,
            input_schema: arrow_schema(input_schema),
            schema: schema.clone(),
            display,
        },
    )?;
    // Over a stream that no watermark bounds here, the state TTL (if set) bounds it.
    let operator: Box<dyn Operator> = match cx.state_ttl_ms {
        Some(ttl) if no_expiry => Box::new(over.with_state_ttl(ttl)),
        _ => Box::new(over),
    };
    // A job emits a row once the watermark has passed its time: no row to come is ordered
    // before it or among its peers.
    match (closing, cx.emit_on_close && backward) {
        (Some((sources, lateness)), true) => {
            let time = order_by[0].expr.clone();
            let final_at = time + Expr::Literal(ScalarValue::new_interval_mdn(0, 0, (lateness + 1) * 1_000_000), None);
            let end = Compiled::new(&final_at, &window.schema)?;
            Ok(Box::new(TemporalFilter::window_emitter(
                operator, end, &sources, schema,
            )?))
        }
        _ => Ok(operator),
    }
}

/// Whether a function's value for a row depends only on the rows ordered at or before it (its
/// peers included).
pub(crate) fn looks_backward(function: &WindowFunction) -> bool {
    match &function.fun {
        WindowFunctionDefinition::WindowUDF(udf) => match udf.name() {
            "row_number" | "rank" | "dense_rank" | "lag" => true,
            "first_value" | "last_value" | "nth_value" => frame_ends_at_or_before_current(function),
            _ => false,
        },
        WindowFunctionDefinition::AggregateUDF(_) => frame_ends_at_or_before_current(function),
    }
}

fn frame_ends_at_or_before_current(function: &WindowFunction) -> bool {
    matches!(
        function.params.window_frame.end_bound,
        WindowFrameBound::CurrentRow | WindowFrameBound::Preceding(_)
    )
}

/// How far back a backward function reaches from a row: (ms of a RANGE frame over the time,
/// rows of a ROWS frame or LAG); `None` when it reaches every earlier row.
fn frame_reach(function: &WindowFunction) -> Option<(i64, usize)> {
    if let WindowFunctionDefinition::WindowUDF(udf) = &function.fun {
        match udf.name() {
            "lag" => {
                let offset = match function.params.args.get(1) {
                    None => 1,
                    Some(Expr::Literal(value, _)) => value
                        .cast_to(&datafusion::arrow::datatypes::DataType::Int64)
                        .ok()
                        .and_then(|v| match v {
                            ScalarValue::Int64(Some(n)) => usize::try_from(n).ok(),
                            _ => None,
                        })?,
                    Some(_) => return None,
                };
                return Some((0, offset));
            }
            "row_number" | "rank" | "dense_rank" => return None,
            _ => {}
        }
    }
    let frame = &function.params.window_frame;
    match (&frame.units, &frame.start_bound) {
        (_, WindowFrameBound::Preceding(value)) if value.is_null() => None,
        (WindowFrameUnits::Range, WindowFrameBound::Preceding(value)) => Some((interval_ms(value)?, 0)),
        (WindowFrameUnits::Range, WindowFrameBound::CurrentRow) => Some((0, 0)),
        (WindowFrameUnits::Rows, WindowFrameBound::Preceding(value)) => {
            match value.cast_to(&datafusion::arrow::datatypes::DataType::UInt64).ok()? {
                ScalarValue::UInt64(Some(n)) => Some((0, usize::try_from(n).ok()?)),
                _ => None,
            }
        }
        (WindowFrameUnits::Rows, WindowFrameBound::CurrentRow) => Some((0, 0)),
        _ => None,
    }
}

/// An interval (days and smaller units) in milliseconds, rounded up.
fn interval_ms(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000 + (v.nanoseconds + 999_999) / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => Some(i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds)),
        _ => None,
    }
}
