//! Aggregates over HOP windows, computed per slide.
//!
//! A HOP window table function puts each row in `size / slide` windows: it is a `UNION ALL` of
//! one projection per window index, whose bounds `window_hop(ts, slide, size, offset, i, ...)`
//! gives (see `freshet-sql`'s `window_tvf`). An aggregate over it would take every row
//! `size / slide` times, into as many groups. When the aggregate's windows are final once the
//! watermark closes them (a job's window aggregate without allowed lateness), it is computed
//! instead as Flink's slicing window aggregates do:
//!
//! 1. an aggregate of each row once, grouped by the other group keys and the row's slide (its
//!    end: a window of the slide's length), which outputs each slide's rows when the watermark
//!    passes its end;
//! 2. those rows in each window holding the slide ([`HopWindows`]);
//! 3. an aggregate of them by the original keys, combining the slides' partial aggregates
//!    (COUNT's by SUM; SUM, MIN, MAX, BOOL_AND and BOOL_OR by themselves), which outputs each
//!    window's rows when the watermark passes its end — after its last slide came in.
//!
//! A row for a slide already closed (a source that was idle brings it) is still taken while a
//! window holding the slide is open: the slides' aggregate outputs its row at once, and the
//! windows' aggregate drops it for the windows already closed — as the union would.
//!
//! Anything else — an aggregate such as AVG or COUNT(DISTINCT), a filter on a window bound
//! below the union, allowed lateness — keeps the plain aggregate over the union.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, logical_plan};

use freshet_common::{HopBound, HopWindow};

use super::{
    BuildError, Context, aggregate_specs, arrow_schema, build, internal, keep_extremes_only, only_inserts, unalias,
};
use crate::event_time::{WINDOW_BOUND, WINDOW_HOP};
use crate::operator::{
    Aggregate, AggregateKind, AggregateSpec, Compiled, HopWindows, Operator, WINDOW_COLUMNS, WindowClosing,
};

/// A HOP window table function's union, recognised.
struct HopUnion<'a> {
    /// The projection giving the rows of window 0 (the windows starting in the rows' slide).
    first: &'a LogicalPlan,
    hop: HopWindow,
    /// The union's columns holding window bounds.
    bounds: Vec<(usize, HopBound)>,
}

/// A group column of the aggregate over the union.
enum Group {
    /// A key that is not a window bound.
    Key,
    Window(HopBound),
}

/// The aggregate `agg` (of `plan`) computed per slide, when it is one over a HOP window whose
/// rows are final once its window closes.
pub(super) fn sliced(
    agg: &logical_plan::Aggregate,
    plan: &LogicalPlan,
    cx: &mut Context<'_>,
) -> Result<Option<Box<dyn Operator>>, BuildError> {
    if !cx.emit_on_close || agg.group_expr.is_empty() {
        return Ok(None);
    }
    let Some(union) = hop_union(&agg.input) else {
        return Ok(None);
    };
    let Some(closing) = crate::event_time::window_closing(&agg.input, &agg.group_expr, cx.resolve, cx.event_times)
    else {
        return Ok(None);
    };
    if closing.allowed_lateness_ms != 0 {
        return Ok(None);
    }
    let input_schema = agg.input.schema();
    let bound_of = |index: usize| union.bounds.iter().find(|(at, _)| *at == index).map(|(_, b)| *b);
    let reads_bound = |expr: &Expr| {
        expr.column_refs()
            .iter()
            .any(|c| input_schema.index_of_column(c).is_ok_and(|i| bound_of(i).is_some()))
    };
    let mut groups = Vec::new();
    for expr in &agg.group_expr {
        let bound = match unalias(expr) {
            Expr::Column(c) => input_schema.index_of_column(c).ok().and_then(bound_of),
            _ => None,
        };
        groups.push(match bound {
            Some(bound) => Group::Window(bound),
            None if reads_bound(expr) || matches!(expr, Expr::GroupingSet(_)) => return Ok(None),
            None => Group::Key,
        });
    }
    if !matches!(groups.get(closing.column), Some(Group::Window(HopBound::End))) {
        return Ok(None);
    }
    let output = arrow_schema(plan.schema());
    let mut specs = aggregate_specs(&agg.aggr_expr, input_schema, &output, groups.len())?;
    if specs.iter().any(|s| combined(s.kind).is_none()) || agg.aggr_expr.iter().any(reads_bound) {
        return Ok(None);
    }
    let end_index = union
        .bounds
        .iter()
        .find(|(_, b)| *b == HopBound::End)
        .map(|(at, _)| *at)
        .ok_or_else(|| internal("a HOP window without its end"))?;
    let time_type = input_schema.field(end_index).data_type().clone();
    let unit = match &time_type {
        DataType::Timestamp(unit, _) => *unit,
        _ => return Ok(None),
    };
    // Slides shorter than a second over times in seconds do not fall on their values.
    if unit == TimeUnit::Second && union.hop.slide_ms % 1000 != 0 {
        return Ok(None);
    }
    let hop = union.hop;
    // What the windows' aggregate makes of each slides' aggregate.
    let window_aggregates: Vec<(AggregateKind, DataType, String)> = specs
        .iter()
        .map(|s| (s.kind, s.output_type.clone(), s.display.clone()))
        .collect();

    // 1. Each row once, by its keys and its slide's end (its window 0's end less the windows
    //    after its slide).
    let input = build(union.first, cx)?;
    if only_inserts(union.first, input.as_ref(), cx) {
        keep_extremes_only(&mut specs);
    }
    let keys: Vec<&Expr> = agg
        .group_expr
        .iter()
        .zip(&groups)
        .filter(|(_, g)| matches!(g, Group::Key))
        .map(|(e, _)| e)
        .collect();
    let before_end = duration(unit, hop.size_ms - hop.slide_ms)?;
    let slide_end =
        Expr::Column(Column::from(input_schema.qualified_field(end_index))) - Expr::Literal(before_end, None);
    // The slides' columns are named as the output's (a name taken twice made unique), so that
    // EXPLAIN reads as the query.
    let mut names = std::collections::HashSet::new();
    let mut field = |name: &str, data_type: DataType| {
        let mut unique = name.to_string();
        while !names.insert(unique.clone()) {
            unique.push('\'');
        }
        Field::new(unique, data_type, true)
    };
    // The windows' bounds come after the slides' columns under their own names.
    for name in WINDOW_COLUMNS {
        field(name, DataType::Null);
    }
    let mut slide_groups = Vec::new();
    let mut slide_types = Vec::new();
    let mut fields = Vec::new();
    let key_names = groups
        .iter()
        .zip(output.fields())
        .filter(|(g, _)| matches!(g, Group::Key))
        .map(|(_, f)| f.name().as_str());
    for (expr, name) in keys
        .iter()
        .copied()
        .chain([&slide_end])
        .zip(key_names.chain(["slide_end"]))
    {
        slide_groups.push(Compiled::new(expr, input_schema)?);
        let data_type = expr.get_type(input_schema)?;
        fields.push(field(name, data_type.clone()));
        slide_types.push(data_type);
    }
    for (spec, output_field) in specs.iter().zip(output.fields().iter().skip(groups.len())) {
        fields.push(field(output_field.name(), spec.output_type.clone()));
    }
    let slide_schema = Arc::new(Schema::new(fields));
    let slides = Aggregate::new(
        input,
        slide_groups,
        slide_types,
        specs,
        slide_schema.clone(),
        cx.parallelism,
    )?
    .with_window_closing(WindowClosing {
        column: keys.len(),
        sources: closing.sources.clone(),
        allowed_lateness_ms: 0,
    })
    .with_late_margin(hop.size_ms - hop.slide_ms)
    .with_final_rows();

    // 2. Each slide's rows in its windows.
    let windows = HopWindows::new(Box::new(slides), hop, keys.len(), &slide_schema)?;
    let windows_schema = DFSchema::try_from(windows.schema().as_ref().clone())?;
    let column = |index: usize| Expr::Column(Column::from(windows_schema.qualified_field(index)));

    // 3. The slides' partial aggregates combined by the original keys.
    let slide_columns = keys.len() + 1;
    let mut window_groups = Vec::new();
    let mut window_types = Vec::new();
    let mut next_key = 0;
    for (expr, group) in agg.group_expr.iter().zip(&groups) {
        let at = match group {
            Group::Key => {
                next_key += 1;
                next_key - 1
            }
            Group::Window(bound) => {
                let offset = match bound {
                    HopBound::Start => 0,
                    HopBound::End => 1,
                    HopBound::Time => 2,
                };
                slide_columns + agg.aggr_expr.len() + offset
            }
        };
        window_groups.push(Compiled::new(&column(at), &windows_schema)?);
        window_types.push(expr.get_type(input_schema)?);
    }
    let mut window_specs = window_aggregates
        .into_iter()
        .enumerate()
        .map(|(i, (kind, output_type, display))| {
            Ok(AggregateSpec {
                kind: combined(kind).ok_or_else(|| internal("an aggregate slides cannot combine"))?,
                of_inserts: false,
                counts_rows: false,
                arg: Compiled::new(&column(slide_columns + i), &windows_schema)?,
                filter: None,
                arg_type: output_type.clone(),
                output_type,
                display: format!("{display} of the slides"),
            })
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    // The slides' rows are final: each is inserted once into each of its windows.
    if only_inserts(union.first, &windows, cx) {
        keep_extremes_only(&mut window_specs);
    }
    let combined = Aggregate::new(
        Box::new(windows),
        window_groups,
        window_types,
        window_specs,
        output,
        cx.parallelism,
    )?
    .with_window_closing(closing)
    .with_final_rows();
    Ok(Some(Box::new(combined)))
}

/// The aggregate combining a slide's partial aggregates of `kind` into a window's.
fn combined(kind: AggregateKind) -> Option<AggregateKind> {
    match kind {
        AggregateKind::Count => Some(AggregateKind::Sum),
        AggregateKind::Sum
        | AggregateKind::Min
        | AggregateKind::Max
        | AggregateKind::BoolAnd
        | AggregateKind::BoolOr => Some(kind),
        AggregateKind::Avg | AggregateKind::CountDistinct => None,
    }
}

/// A duration of `ms` in the unit of a timestamp.
fn duration(unit: TimeUnit, ms: i64) -> Result<ScalarValue, BuildError> {
    let overflow = || internal("a HOP window's size is out of range");
    Ok(match unit {
        TimeUnit::Second => ScalarValue::DurationSecond(Some(ms / 1000)),
        TimeUnit::Millisecond => ScalarValue::DurationMillisecond(Some(ms)),
        TimeUnit::Microsecond => ScalarValue::DurationMicrosecond(Some(ms.checked_mul(1_000).ok_or_else(overflow)?)),
        TimeUnit::Nanosecond => ScalarValue::DurationNanosecond(Some(ms.checked_mul(1_000_000).ok_or_else(overflow)?)),
    })
}

/// `plan` as a HOP window table function's union: one branch per window index, each the same
/// projection but for the index of its `window_hop` calls, which appear nowhere else.
fn hop_union(plan: &LogicalPlan) -> Option<HopUnion<'_>> {
    let union = match plan {
        LogicalPlan::SubqueryAlias(alias) => return hop_union(&alias.input),
        LogicalPlan::Union(union) => union,
        _ => None?,
    };
    let first = union.inputs.first()?;
    let (hop, bounds) = branch_window(first, 0)?;
    if hop.windows_per_row() < 2 || union.inputs.len() as i64 != hop.windows_per_row() {
        return None;
    }
    let normal = without_index(first)?;
    for (i, branch) in union.inputs.iter().enumerate().skip(1) {
        let (branch_hop, branch_bounds) = branch_window(branch, i as i64)?;
        if branch_hop != hop || branch_bounds != bounds || without_index(branch)? != normal {
            return None;
        }
    }
    Some(HopUnion {
        first: first.as_ref(),
        hop,
        bounds,
    })
}

/// The window of a union branch that is the `index`-th window of a HOP, and its columns
/// holding the window's bounds.
fn branch_window(branch: &LogicalPlan, index: i64) -> Option<(HopWindow, Vec<(usize, HopBound)>)> {
    let projection = match branch {
        LogicalPlan::SubqueryAlias(alias) => return branch_window(&alias.input, index),
        LogicalPlan::Projection(projection) => projection,
        _ => None?,
    };
    if holds_hop(&projection.input) {
        return None;
    }
    let mut hop = None;
    let mut time = None;
    let mut bounds = Vec::new();
    for (at, expr) in projection.expr.iter().enumerate() {
        let call = match unalias(expr) {
            Expr::ScalarFunction(f) if f.func.name() == WINDOW_BOUND => match f.args.first() {
                Some(Expr::ScalarFunction(inner)) if inner.func.name() == WINDOW_HOP => inner,
                _ if expr_holds_hop(expr) => return None,
                _ => continue,
            },
            Expr::ScalarFunction(f) if f.func.name() == WINDOW_HOP => f,
            other if expr_holds_hop(other) => return None,
            _ => continue,
        };
        let (call_time, call_hop, call_index, bound) = hop_call(&call.args)?;
        let wrapped = !matches!(unalias(expr), Expr::ScalarFunction(f) if f.func.name() == WINDOW_HOP);
        if call_index != index
            || wrapped != (bound == HopBound::End)
            || hop.is_some_and(|h| h != call_hop)
            || time.is_some_and(|t: &Expr| t != call_time)
        {
            return None;
        }
        hop = Some(call_hop);
        time = Some(call_time);
        bounds.push((at, bound));
    }
    Some((hop?, bounds))
}

/// A `window_hop` call's time, window, index and bound.
fn hop_call(args: &[Expr]) -> Option<(&Expr, HopWindow, i64, HopBound)> {
    let [time, slide, size, offset, index, bound] = args else {
        return None;
    };
    let int = |e: &Expr| match e {
        Expr::Literal(ScalarValue::Int64(Some(n)), _) => Some(*n),
        _ => None,
    };
    let bound = match bound {
        Expr::Literal(ScalarValue::Utf8(Some(b)), _) => match b.as_str() {
            "start" => HopBound::Start,
            "end" => HopBound::End,
            "time" => HopBound::Time,
            _ => None?,
        },
        _ => None?,
    };
    let hop = HopWindow {
        slide_ms: int(slide)?,
        size_ms: int(size)?,
        offset_ms: int(offset)?,
    };
    (hop.slide_ms > 0 && hop.size_ms % hop.slide_ms == 0).then_some((time, hop, int(index)?, bound))
}

fn expr_holds_hop(expr: &Expr) -> bool {
    expr.exists(|e| Ok(matches!(e, Expr::ScalarFunction(f) if f.func.name() == WINDOW_HOP)))
        .unwrap_or(true)
}

/// Whether a `window_hop` call is anywhere in `plan`.
fn holds_hop(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        let _ = node.apply_expressions(|e| {
            found |= expr_holds_hop(e);
            Ok(TreeNodeRecursion::Continue)
        });
        Ok(match found {
            true => TreeNodeRecursion::Stop,
            false => TreeNodeRecursion::Continue,
        })
    });
    found
}

/// `plan` with the index of its `window_hop` calls set to 0, as text whose names DataFusion
/// generated (numbered per branch: `__datafusion_extracted_7`) are numbered from the start.
fn without_index(plan: &LogicalPlan) -> Option<String> {
    let plan = plan
        .clone()
        .transform_up(|node| {
            node.map_expressions(|e| {
                e.transform_up(|e| match e {
                    Expr::ScalarFunction(mut f) if f.func.name() == WINDOW_HOP && f.args.len() == 6 => {
                        f.args[4] = Expr::Literal(ScalarValue::Int64(Some(0)), None);
                        Ok(Transformed::yes(Expr::ScalarFunction(f)))
                    }
                    other => Ok(Transformed::no(other)),
                })
            })
        })
        .ok()?
        .data;
    Some(super::shared::generated_names_numbered(&format!("{plan:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_counts_sums_and_extremes_combine() {
        assert_eq!(combined(AggregateKind::Count), Some(AggregateKind::Sum));
        assert_eq!(combined(AggregateKind::Max), Some(AggregateKind::Max));
        assert_eq!(combined(AggregateKind::Avg), None);
        assert_eq!(combined(AggregateKind::CountDistinct), None);
    }
}
