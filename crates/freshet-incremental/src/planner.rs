//! From DataFusion's optimized logical plan to a tree of incremental operators.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::SortField;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ExprSchema, NullEquality, ScalarValue};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    self as logical, Expr, ExprSchemable, FetchType, JoinType, LogicalPlan, SkipType, SortExpr, TableScan, Volatility,
};

use freshet_common::FreshetError;

use crate::delta::internal;
use crate::event_time::EventTimes;
use crate::operator::{
    Aggregate, AggregateKind, AggregateSpec, Compiled, Constant, Filter, Join, JoinKind, JoinSpec, Operator, Project,
    Scan, TemporalFilter, TopN, TopNSpec, Union, arrow_schema,
};

mod grouping_sets;
mod hop;
mod over;
mod scalar_subquery;
mod shared;
mod time_bounds;

pub(crate) use over::looks_backward;

pub(crate) use scalar_subquery::scalar_subqueries_as_joins;
pub(crate) use shared::SharedPlans;

/// Why a plan cannot be maintained incrementally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotIncremental {
    /// The operator (or function) that cannot be maintained, as the plan names it.
    pub operator: String,
    /// Why not.
    pub reason: String,
}

impl std::fmt::Display for NotIncremental {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.operator, self.reason)
    }
}

/// What building a pipeline can end with besides a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The plan holds something that cannot be maintained incrementally.
    #[error("{0}")]
    NotIncremental(NotIncremental),
    /// Building failed.
    #[error(transparent)]
    Failed(#[from] FreshetError),
}

impl From<datafusion::error::DataFusionError> for BuildError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        BuildError::Failed(e.into())
    }
}

fn not_incremental(operator: impl Into<String>, reason: impl Into<String>) -> BuildError {
    BuildError::NotIncremental(NotIncremental {
        operator: operator.into(),
        reason: reason.into(),
    })
}

/// Names the versioned table a scan reads, or `None` when its changes cannot be read.
pub type SourceResolver<'a> = &'a dyn Fn(&TableScan) -> Option<String>;

/// What building a pipeline needs besides the plan, and what it collects.
pub(crate) struct Context<'a> {
    /// Names the table each scan reads.
    pub resolve: SourceResolver<'a>,
    /// The tables read.
    pub sources: BTreeSet<String>,
    /// How many parts keyed state is split into, to step on as many threads.
    pub parallelism: usize,
    /// The columns of each source the pipeline reads (see [`read_columns`]).
    pub read_columns: HashMap<String, Option<Vec<usize>>>,
    /// The event time of the sources that have one.
    pub event_times: &'a EventTimes,
    /// Window aggregates emit their rows once their window closes.
    pub emit_on_close: bool,
    /// Other aggregates forget groups untouched for so long (ms).
    pub state_ttl_ms: Option<i64>,
    /// The tables whose rows are only ever appended.
    pub append_only_sources: &'a BTreeSet<String>,
    /// The subplans the plan holds more than once.
    pub shared: shared::SharedPlans,
}

/// Whether the rows `operator` (built for `plan`) outputs are only ever inserted: every table
/// below is one whose rows are only appended, and no operator below retracts what it output.
fn only_inserts(plan: &LogicalPlan, operator: &dyn Operator, cx: &Context<'_>) -> bool {
    fn updates(operator: &dyn Operator) -> bool {
        if operator.updates() {
            return true;
        }
        !operator.final_output() && operator.inputs().into_iter().any(updates)
    }
    let mut appended = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            appended &= (cx.resolve)(scan).is_some_and(|name| cx.append_only_sources.contains(&name));
        }
        Ok(if appended {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    appended && !updates(operator)
}

/// The columns of each source table that the plan's scans read — their projections and the
/// columns their filters use — ascending; `None` when a scan reads all of them. Only those
/// columns of the changes need to be decoded.
pub(crate) fn read_columns(
    plan: &LogicalPlan,
    resolve: SourceResolver<'_>,
) -> Result<HashMap<String, Option<Vec<usize>>>, BuildError> {
    let mut read: HashMap<String, Option<BTreeSet<usize>>> = HashMap::new();
    plan.apply_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = node else {
            return Ok(TreeNodeRecursion::Continue);
        };
        let Some(source) = resolve(scan) else {
            return Ok(TreeNodeRecursion::Continue);
        };
        let schema = scan.source.schema();
        let columns = scan.projection.as_ref().and_then(|projection| {
            let mut columns: BTreeSet<usize> = projection.iter().copied().collect();
            for filter in &scan.filters {
                for column in filter.column_refs() {
                    columns.insert(schema.index_of(&column.name).ok()?);
                }
            }
            (columns.len() < schema.fields().len()).then_some(columns)
        });
        let entry = read.entry(source).or_insert_with(|| Some(BTreeSet::new()));
        match (entry.as_mut(), columns) {
            (Some(all), Some(columns)) => all.extend(columns),
            _ => *entry = None,
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(read
        .into_iter()
        .map(|(source, columns)| (source, columns.map(|c| c.into_iter().collect())))
        .collect())
}

/// Builds the operators of `plan`.
pub(crate) fn build(plan: &LogicalPlan, cx: &mut Context<'_>) -> Result<Box<dyn Operator>, BuildError> {
    // A subplan the plan holds more than once is built where it is first read and shared.
    let Some(key) = cx.shared.repeated_key(plan, cx.resolve) else {
        return build_node(plan, cx);
    };
    if let Some(reuse) = cx.shared.reuse(&key, arrow_schema(plan.schema())) {
        return Ok(Box::new(reuse?));
    }
    let operator = build_node(plan, cx)?;
    Ok(cx.shared.share(key, operator))
}

/// Builds the operators of `plan`, its own copy of every subplan.
fn build_node(plan: &LogicalPlan, cx: &mut Context<'_>) -> Result<Box<dyn Operator>, BuildError> {
    if let LogicalPlan::Filter(filter) = plan
        && time_bounds::reads_time(&filter.predicate)
    {
        return time_bounds::temporal_filter(filter, cx);
    }
    check_deterministic(plan)?;
    let schema = arrow_schema(plan.schema());
    Ok(match plan {
        LogicalPlan::TableScan(scan) => {
            if scan.fetch.is_some() {
                return Err(not_incremental(
                    format!("scan of \"{}\" with a row limit", scan.table_name),
                    "cannot be maintained incrementally",
                ));
            }
            let source = (cx.resolve)(scan).ok_or_else(|| {
                not_incremental(
                    format!("scan of \"{}\"", scan.table_name),
                    "cannot be maintained incrementally: its changes cannot be read (not a Freshet table)",
                )
            })?;
            cx.sources.insert(source.clone());
            let table_schema = scan.source.schema();
            // The changes come with the columns the pipeline reads of this table only.
            let read = cx.read_columns.get(&source).cloned().flatten();
            let read_schema = match &read {
                Some(columns) => Arc::new(table_schema.project(columns).map_err(internal)?),
                None => table_schema.clone(),
            };
            let qualified = DFSchema::try_from_qualified_schema(scan.table_name.clone(), &read_schema)?;
            let filters = scan
                .filters
                .iter()
                .map(|f| Compiled::new(f, &qualified))
                .collect::<Result<_, _>>()?;
            let projection = match (&scan.projection, &read) {
                (Some(projection), Some(columns)) => Some(
                    projection
                        .iter()
                        .map(|i| {
                            columns
                                .binary_search(i)
                                .map_err(|_| internal(format!("column {i} not read")))
                        })
                        .collect::<Result<Vec<usize>, _>>()?,
                ),
                (projection, _) => projection.clone(),
            };
            Box::new(
                Scan::new(
                    source,
                    filters,
                    projection,
                    read.map(|columns| (columns, table_schema.fields().len())),
                    read_schema,
                    schema,
                )
                .with_parts(cx.parallelism),
            )
        }
        LogicalPlan::Projection(projection) => {
            let input = build(&projection.input, cx)?;
            let exprs = projection
                .expr
                .iter()
                .map(|e| Compiled::new(e, projection.input.schema()))
                .collect::<Result<_, _>>()?;
            Box::new(
                Project::new(input, exprs, projection.input.schema().fields().len(), schema).with_parts(cx.parallelism),
            )
        }
        LogicalPlan::Filter(filter) if matches!(filter.input.as_ref(), LogicalPlan::Window(_)) => {
            row_number_filter(filter, cx)?
        }
        // A rank filter above a projection that only picks columns of the window (a top-N of a
        // subquery that does not select all its columns): the same with the filter first.
        LogicalPlan::Filter(filter) if let Some(swapped) = filter_below_column_projection(filter)? => {
            build(&swapped, cx)?
        }
        LogicalPlan::Window(window) => over::window(window, cx)?,
        // The rows of a table have no order: an ORDER BY without a limit changes nothing.
        LogicalPlan::Sort(sort) if sort.fetch.is_none() => build(&sort.input, cx)?,
        LogicalPlan::Sort(sort) => {
            let input = build(&sort.input, cx)?;
            let fetch = sort.fetch.unwrap_or(usize::MAX);
            Box::new(top_n(input, &sort.input, &[], &sort.expr, 0, fetch, false, schema, cx)?)
        }
        LogicalPlan::Limit(limit) => {
            let (skip, fetch) = match (limit.get_skip_type()?, limit.get_fetch_type()?) {
                (SkipType::Literal(skip), FetchType::Literal(fetch)) => (skip, fetch.unwrap_or(usize::MAX)),
                _ => {
                    return Err(not_incremental(
                        "LIMIT with a computed count",
                        "cannot be maintained incrementally",
                    ));
                }
            };
            // Projections between the limit and the sort (an OFFSET without LIMIT is not pushed
            // into the sort, so the sort's extra columns are projected away above it) keep the
            // rows and their order: the top-N goes under them.
            let mut projections = Vec::new();
            let mut below = limit.input.as_ref();
            let sort = loop {
                match below {
                    LogicalPlan::Sort(sort) => break sort,
                    LogicalPlan::Projection(projection) => {
                        projections.push(projection);
                        below = &projection.input;
                    }
                    LogicalPlan::SubqueryAlias(alias) => below = &alias.input,
                    _ => {
                        return Err(not_incremental(
                            "LIMIT without ORDER BY",
                            "cannot be maintained incrementally: which rows it keeps is not defined",
                        ));
                    }
                }
            };
            let input = build(&sort.input, cx)?;
            let fetch = fetch.min(sort.fetch.map_or(usize::MAX, |f| f.saturating_sub(skip)));
            let mut operator: Box<dyn Operator> = Box::new(top_n(
                input,
                &sort.input,
                &[],
                &sort.expr,
                skip,
                fetch,
                false,
                arrow_schema(sort.input.schema()),
                cx,
            )?);
            for projection in projections.into_iter().rev() {
                let exprs = projection
                    .expr
                    .iter()
                    .map(|e| Compiled::new(e, projection.input.schema()))
                    .collect::<Result<_, _>>()?;
                operator = Box::new(
                    Project::new(
                        operator,
                        exprs,
                        projection.input.schema().fields().len(),
                        arrow_schema(&projection.schema),
                    )
                    .with_parts(cx.parallelism),
                );
            }
            operator
        }
        LogicalPlan::Filter(filter) => {
            let input = build(&filter.input, cx)?;
            Box::new(Filter::new(
                input,
                Compiled::new(&filter.predicate, filter.input.schema())?,
            ))
        }
        LogicalPlan::SubqueryAlias(alias) => build(&alias.input, cx)?,
        LogicalPlan::Repartition(repartition) => build(&repartition.input, cx)?,
        LogicalPlan::Union(union) => {
            let inputs = union.inputs.iter().map(|i| build(i, cx)).collect::<Result<_, _>>()?;
            Box::new(Union::new(inputs, schema))
        }
        LogicalPlan::Distinct(logical::Distinct::All(input)) => {
            let operator = build(input, cx)?;
            let groups: Vec<Expr> = input.schema().columns().into_iter().map(Expr::Column).collect();
            aggregate(operator, input, &groups, &[], plan, cx)?
        }
        LogicalPlan::Aggregate(agg) if let Some(union) = grouping_sets::as_union(agg)? => build(&union, cx)?,
        LogicalPlan::Aggregate(agg) => {
            if let Some(sliced) = hop::sliced(agg, plan, cx)? {
                return Ok(sliced);
            }
            let operator = build(&agg.input, cx)?;
            aggregate(operator, &agg.input, &agg.group_expr, &agg.aggr_expr, plan, cx)?
        }
        LogicalPlan::Join(join) => {
            let left = build(&join.left, cx)?;
            let right = build(&join.right, cx)?;
            let mut operator = Join::new(left, right, join_spec(join)?, cx.parallelism)?;
            let [left_expiry, right_expiry] = crate::event_time::join_expiries(join, cx.resolve, cx.event_times);
            // A join no watermark bounds forgets rows after the state TTL, if one is set.
            if let Some(ttl) = cx.state_ttl_ms
                && left_expiry.is_none()
                && right_expiry.is_none()
            {
                operator = operator.with_state_ttl(ttl);
            }
            if let Some(expiry) = left_expiry {
                operator = operator.with_expiry(true, expiry);
            }
            if let Some(expiry) = right_expiry {
                operator = operator.with_expiry(false, expiry);
            }
            Box::new(operator)
        }
        LogicalPlan::EmptyRelation(empty) => {
            let rows = usize::from(empty.produce_one_row);
            let options = RecordBatchOptions::new().with_row_count(Some(rows));
            let columns = schema
                .fields()
                .iter()
                .map(|f| datafusion::arrow::array::new_null_array(f.data_type(), rows))
                .collect();
            let batch = RecordBatch::try_new_with_options(schema, columns, &options).map_err(internal)?;
            Box::new(Constant::new(batch))
        }
        LogicalPlan::Values(values) => Box::new(Constant::new(constant_rows(values)?)),
        other => return Err(unsupported_node(other)),
    })
}

/// `ORDER BY ... LIMIT` or `ROW_NUMBER() ... <= n`: the top rows of each group.
#[allow(clippy::too_many_arguments)]
fn top_n(
    input: Box<dyn Operator>,
    input_plan: &LogicalPlan,
    partition_by: &[Expr],
    order_by: &[SortExpr],
    skip: usize,
    fetch: usize,
    row_number: bool,
    schema: SchemaRef,
    cx: &Context<'_>,
) -> Result<TopN, BuildError> {
    // Over rows that are only inserted, a row below the kept ranks never rises into them.
    let top_only = only_inserts(input_plan, input.as_ref(), cx);
    let input_schema = input_plan.schema();
    let (partition, partition_types, order) = partition_and_order(partition_by, order_by, input_schema)?;
    let sorted: Vec<String> = order_by.iter().map(ToString::to_string).collect();
    let groups: Vec<String> = partition_by.iter().map(ToString::to_string).collect();
    let limit = if fetch == usize::MAX {
        "all".to_string()
    } else {
        fetch.to_string()
    };
    let mut display = if row_number {
        format!(
            "TopN per group: group=[{}] order=[{}] ranks 1..={limit}",
            groups.join(", "),
            sorted.join(", ")
        )
    } else {
        format!("TopN: order=[{}] offset={skip} limit={limit}", sorted.join(", "))
    };
    let top_only = top_only && fetch != usize::MAX;
    if top_only {
        display.push_str(" keeping the top rows only (its input only inserts)");
    }
    Ok(TopN::new(
        input,
        TopNSpec {
            partition,
            partition_types,
            order,
            skip,
            fetch,
            row_number,
            top_only,
            input_schema: arrow_schema(input_schema),
            schema,
            display,
        },
    )?)
}

/// The compiled PARTITION BY expressions, their types, and the ORDER BY expressions with the
/// row-format fields that order as they do.
#[allow(clippy::type_complexity)]
fn partition_and_order(
    partition_by: &[Expr],
    order_by: &[SortExpr],
    input_schema: &DFSchema,
) -> Result<(Vec<Compiled>, Vec<DataType>, Vec<(Compiled, SortField)>), BuildError> {
    let partition = partition_by
        .iter()
        .map(|e| Compiled::new(e, input_schema))
        .collect::<Result<_, _>>()?;
    let partition_types = partition_by
        .iter()
        .map(|e| e.get_type(input_schema))
        .collect::<Result<_, _>>()?;
    let order = order_by
        .iter()
        .map(|s| {
            let options = SortOptions {
                descending: !s.asc,
                nulls_first: s.nulls_first,
            };
            Ok((
                Compiled::new(&s.expr, input_schema)?,
                SortField::new_with_options(s.expr.get_type(input_schema)?, options),
            ))
        })
        .collect::<Result<_, BuildError>>()?;
    Ok((partition, partition_types, order))
}

/// The top-N-per-group pattern: a filter keeping `ROW_NUMBER() OVER (PARTITION BY ... ORDER BY
/// ...) <= n` (or `< n`, or `= 1`) over the window; other conditions of the filter apply after.
fn row_number_filter(filter: &logical::Filter, cx: &mut Context<'_>) -> Result<Box<dyn Operator>, BuildError> {
    let LogicalPlan::Window(window) = filter.input.as_ref() else {
        return Err(internal("a rank filter over something but a window").into());
    };
    let [expr] = window.window_expr.as_slice() else {
        return filtered_window(filter, window, cx);
    };
    let Expr::WindowFunction(function) = unalias(expr) else {
        return filtered_window(filter, window, cx);
    };
    if function.fun.name() != "row_number" || function.params.order_by.is_empty() {
        return filtered_window(filter, window, cx);
    }
    let rank_field = window.schema.field(window.schema.fields().len() - 1).name().clone();
    let is_rank = |e: &Expr| matches!(e, Expr::Column(c) if c.name == rank_field);
    let literal = |e: &Expr| match e {
        Expr::Literal(value, _) => value.cast_to(&DataType::Int64).ok().and_then(|v| match v {
            ScalarValue::Int64(Some(n)) => Some(n),
            _ => None,
        }),
        _ => None,
    };
    let mut limit = None;
    let mut rest = Vec::new();
    for conjunct in split_conjunction(&filter.predicate) {
        let bound = match conjunct {
            Expr::BinaryExpr(b) if is_rank(&b.left) => literal(&b.right).and_then(|n| match b.op {
                logical::Operator::LtEq => Some(n),
                logical::Operator::Lt => Some(n - 1),
                logical::Operator::Eq if n == 1 => Some(1),
                _ => None,
            }),
            Expr::BinaryExpr(b) if is_rank(&b.right) => literal(&b.left).and_then(|n| match b.op {
                logical::Operator::GtEq => Some(n),
                logical::Operator::Gt => Some(n - 1),
                logical::Operator::Eq if n == 1 => Some(1),
                _ => None,
            }),
            _ => None,
        };
        match (bound, limit) {
            (Some(n), None) => limit = Some(n),
            (Some(n), Some(m)) => limit = Some(n.min(m)),
            (None, _) => rest.push(conjunct.clone()),
        }
    }
    let Some(limit) = limit else {
        return filtered_window(filter, window, cx);
    };
    let input = build(&window.input, cx)?;
    let top = top_n(
        input,
        &window.input,
        &function.params.partition_by,
        &function.params.order_by,
        0,
        usize::try_from(limit.max(0)).unwrap_or(0),
        true,
        arrow_schema(&window.schema),
        cx,
    )?;
    // A window top-N (partitioned by a window's end over an event time) forgets the windows
    // the watermark closes; a job emits their rows then.
    let closing =
        crate::event_time::window_closing(&window.input, &function.params.partition_by, cx.resolve, cx.event_times);
    let operator: Box<dyn Operator> = match closing {
        None => match cx.state_ttl_ms {
            Some(ttl) => Box::new(top.with_state_ttl(ttl)),
            None => Box::new(top),
        },
        Some(closing) => {
            let emitter = cx.emit_on_close.then(|| (closing.column, closing.sources.clone()));
            let top = Box::new(top.with_window_closing(closing));
            match emitter {
                Some((column, sources)) => {
                    let end = Compiled::new(&function.params.partition_by[column], &window.schema)?;
                    Box::new(TemporalFilter::window_emitter(
                        top,
                        end,
                        &sources,
                        arrow_schema(&window.schema),
                    )?)
                }
                None => top,
            }
        }
    };
    Ok(match conjunction(rest) {
        Some(predicate) => Box::new(Filter::new(operator, Compiled::new(&predicate, &window.schema)?)),
        None => operator,
    })
}

/// Any other filter over window functions: the functions' values, then the filter.
fn filtered_window(
    filter: &logical::Filter,
    window: &logical::Window,
    cx: &mut Context<'_>,
) -> Result<Box<dyn Operator>, BuildError> {
    let input = over::window(window, cx)?;
    Ok(Box::new(Filter::new(
        input,
        Compiled::new(&filter.predicate, &window.schema)?,
    )))
}

/// `Filter(Projection(columns, Window))` as `Projection(columns, Filter(Window))`, when every
/// projected expression is a column (aliased or not) of the window, so that the top-N pattern
/// sees its filter directly over the window.
fn filter_below_column_projection(filter: &logical::Filter) -> Result<Option<LogicalPlan>, BuildError> {
    let LogicalPlan::Projection(projection) = filter.input.as_ref() else {
        return Ok(None);
    };
    if !matches!(projection.input.as_ref(), LogicalPlan::Window(_)) {
        return Ok(None);
    }
    let mut columns = HashMap::new();
    for (expr, (qualifier, field)) in projection.expr.iter().zip(projection.schema.iter()) {
        if !matches!(unalias(expr), Expr::Column(_)) {
            return Ok(None);
        }
        let name = datafusion::common::Column::new(qualifier.cloned(), field.name()).flat_name();
        columns.insert(name, unalias(expr).clone());
    }
    let failed = |e: datafusion::error::DataFusionError| BuildError::Failed(e.into());
    let predicate = datafusion::optimizer::push_down_filter::replace_cols_by_name(filter.predicate.clone(), &columns)
        .map_err(failed)?;
    let below = logical::Filter::try_new(predicate, projection.input.clone()).map_err(failed)?;
    let above = logical::Projection::try_new_with_schema(
        projection.expr.clone(),
        std::sync::Arc::new(LogicalPlan::Filter(below)),
        projection.schema.clone(),
    )
    .map_err(failed)?;
    Ok(Some(LogicalPlan::Projection(above)))
}

/// The error for a plan node that has no incremental operator.
fn unsupported_node(plan: &LogicalPlan) -> BuildError {
    let operator = match plan {
        LogicalPlan::Sort(_) => "ORDER BY ... LIMIT (top-N)".to_string(),
        LogicalPlan::Limit(_) => "LIMIT".to_string(),
        LogicalPlan::Distinct(logical::Distinct::On(_)) => "DISTINCT ON".to_string(),
        LogicalPlan::Unnest(_) => "UNNEST".to_string(),
        LogicalPlan::RecursiveQuery(_) => "recursive query (WITH RECURSIVE)".to_string(),
        LogicalPlan::Subquery(_) => "subquery".to_string(),
        other => format!("plan node {}", other.display()),
    };
    not_incremental(operator, "cannot be maintained incrementally")
}

/// Rejects non-deterministic functions (`now()`, `random()`): their results change without
/// any input changing.
fn check_deterministic(plan: &LogicalPlan) -> Result<(), BuildError> {
    let mut result = Ok(());
    plan.apply_expressions(|expr| {
        result = check_expr_deterministic(expr);
        Ok(if result.is_ok() {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    })?;
    result
}

/// Rejects an expression calling a non-deterministic function or holding a subquery.
pub(crate) fn check_expr_deterministic(expr: &Expr) -> Result<(), BuildError> {
    let mut found = None;
    expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e
            && f.func.signature().volatility != Volatility::Immutable
        {
            found = Some(f.func.name().to_string());
            return Ok(TreeNodeRecursion::Stop);
        }
        if matches!(e, Expr::Exists(_) | Expr::InSubquery(_) | Expr::ScalarSubquery(_)) {
            found = Some("subquery".into());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match found.as_deref() {
        Some("subquery") => Err(not_incremental(
            "subquery",
            "cannot be maintained incrementally: DataFusion could not turn it into a join",
        )),
        Some(crate::FRESHET_NOW) => Err(not_incremental(
            "time read as a value (now(), current_date)",
            "cannot be maintained incrementally: it changes at every instant; filters comparing rows with it \
             (WHERE ts > now() - INTERVAL '7' DAY) can",
        )),
        Some(function) => Err(not_incremental(
            format!("non-deterministic function {function}()"),
            "cannot be maintained incrementally: its result changes without any input changing",
        )),
        None => Ok(()),
    }
}

fn aggregate(
    input: Box<dyn Operator>,
    input_plan: &LogicalPlan,
    group_expr: &[Expr],
    aggr_expr: &[Expr],
    plan: &LogicalPlan,
    cx: &Context<'_>,
) -> Result<Box<dyn Operator>, BuildError> {
    let parallelism = cx.parallelism;
    let input_schema = input_plan.schema();
    let mut groups = Vec::new();
    let mut group_types = Vec::new();
    for expr in group_expr {
        if matches!(expr, Expr::GroupingSet(_)) {
            return Err(internal("grouping sets reach an aggregate operator").into());
        }
        groups.push(Compiled::new(expr, input_schema)?);
        group_types.push(expr.get_type(input_schema)?);
    }
    let output = arrow_schema(plan.schema());
    let mut specs = aggregate_specs(aggr_expr, input_schema, &output, group_expr.len())?;
    if only_inserts(input_plan, input.as_ref(), cx) {
        keep_extremes_only(&mut specs);
    }
    let aggregate = Aggregate::new(input, groups, group_types, specs, output.clone(), parallelism)?;
    let Some(closing) = crate::event_time::window_closing(input_plan, group_expr, cx.resolve, cx.event_times) else {
        return Ok(Box::new(match cx.state_ttl_ms {
            Some(ttl) if !group_expr.is_empty() => aggregate.with_state_ttl(ttl),
            _ => aggregate,
        }));
    };
    // Without allowed lateness, the aggregate emits a window's rows itself when it closes (and
    // forgets them): an emitter above would keep every open window's row a second time.
    if cx.emit_on_close && closing.allowed_lateness_ms == 0 && !group_expr.is_empty() {
        return Ok(Box::new(aggregate.with_window_closing(closing).with_final_rows()));
    }
    let emitter = cx.emit_on_close.then(|| (closing.column, closing.sources.clone()));
    let aggregate: Box<dyn Operator> = Box::new(aggregate.with_window_closing(closing));
    Ok(match emitter {
        Some((column, sources)) => {
            let end = Compiled::new(&Expr::Column(plan.schema().columns()[column].clone()), plan.schema())?;
            Box::new(TemporalFilter::window_emitter(aggregate, end, &sources, output)?)
        }
        None => aggregate,
    })
}

/// Marks the MIN and MAX of `specs` as taking inserted rows only (the caller knows that its
/// input never retracts a row): they keep the extreme alone instead of every value.
pub(super) fn keep_extremes_only(specs: &mut [AggregateSpec]) {
    for spec in specs
        .iter_mut()
        .filter(|s| matches!(s.kind, AggregateKind::Min | AggregateKind::Max))
    {
        spec.of_inserts = true;
        spec.display.push_str(" of inserts");
    }
}

/// The aggregates `aggr_expr` over rows of `input_schema`, as the output columns after `groups`
/// group columns of `output`.
pub(super) fn aggregate_specs(
    aggr_expr: &[Expr],
    input_schema: &DFSchema,
    output: &SchemaRef,
    groups: usize,
) -> Result<Vec<AggregateSpec>, BuildError> {
    let mut specs = Vec::new();
    for (i, expr) in aggr_expr.iter().enumerate() {
        let display = expr.schema_name().to_string();
        let Expr::AggregateFunction(function) = unalias(expr) else {
            return Err(not_incremental(display, "is not an aggregate function"));
        };
        let params = &function.params;
        let name = function.func.name();
        let kind = AggregateKind::of(name, params.distinct).ok_or_else(|| {
            not_incremental(
                format!("aggregate {}", display),
                "cannot be maintained incrementally (COUNT, SUM, AVG, MIN, MAX, COUNT(DISTINCT), BOOL_AND and \
                 BOOL_OR can)",
            )
        })?;
        let [arg] = params.args.as_slice() else {
            return Err(not_incremental(
                format!("aggregate {display}"),
                "cannot be maintained incrementally: it takes more than one argument",
            ));
        };
        let arg_type = arg.get_type(input_schema)?;
        if !kind.accepts(&arg_type) {
            return Err(not_incremental(
                format!("aggregate {display}"),
                format!("cannot be maintained incrementally over {arg_type}"),
            ));
        }
        let filter = params
            .filter
            .as_ref()
            .map(|f| Compiled::new(f, input_schema))
            .transpose()?;
        specs.push(AggregateSpec {
            kind,
            of_inserts: false,
            counts_rows: kind == AggregateKind::Count && filter.is_none() && never_null(arg, input_schema)?,
            arg: Compiled::new(arg, input_schema)?,
            filter,
            arg_type,
            output_type: output.field(groups + i).data_type().clone(),
            display,
        });
    }
    Ok(specs)
}

/// Whether `expr` is a non-null literal (`count(*)` counts one) or a column declared NOT NULL.
fn never_null(expr: &Expr, schema: &DFSchema) -> Result<bool, BuildError> {
    Ok(match expr {
        Expr::Literal(value, _) => !value.is_null(),
        Expr::Column(column) => !schema.field_from_column(column).map_err(internal)?.is_nullable(),
        _ => false,
    })
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => unalias(&alias.expr),
        other => other,
    }
}

fn join_spec(join: &logical::Join) -> Result<JoinSpec, BuildError> {
    let kind = match join.join_type {
        JoinType::Inner => JoinKind::Inner,
        JoinType::Left => JoinKind::Left,
        JoinType::Right => JoinKind::Right,
        JoinType::Full => JoinKind::Full,
        JoinType::LeftSemi => JoinKind::LeftSemi,
        JoinType::RightSemi => JoinKind::RightSemi,
        JoinType::LeftAnti if join.null_aware && (join.filter.is_some() || join.on.len() != 1) => {
            return Err(not_incremental(
                "NOT IN subquery with a correlated condition (null-aware anti join)",
                "cannot be maintained incrementally yet; NOT EXISTS can",
            ));
        }
        JoinType::LeftAnti => JoinKind::LeftAnti,
        JoinType::RightAnti => JoinKind::RightAnti,
        other => {
            return Err(not_incremental(
                format!("{other} join"),
                "cannot be maintained incrementally",
            ));
        }
    };
    let left = join.left.schema();
    let right = join.right.schema();
    let pair = left.join(right)?;
    let mut left_keys = Vec::new();
    let mut right_keys = Vec::new();
    let mut key_types = Vec::new();
    for (l, r) in &join.on {
        let (lt, rt) = (l.get_type(left)?, r.get_type(right)?);
        if lt != rt {
            return Err(BuildError::Failed(internal(format!(
                "join keys {l} ({lt}) and {r} ({rt}) have different types"
            ))));
        }
        left_keys.push(Compiled::new(l, left)?);
        right_keys.push(Compiled::new(r, right)?);
        key_types.push(lt);
    }
    let filter = join.filter.as_ref().map(|f| Compiled::new(f, &pair)).transpose()?;
    let on: Vec<String> = join.on.iter().map(|(l, r)| format!("{l} = {r}")).collect();
    let mut display = format!("Join: {} on [{}]", join.join_type, on.join(", "));
    if let Some(filter) = &join.filter {
        display.push_str(&format!(" filter={filter}"));
    }
    Ok(JoinSpec {
        kind,
        left_keys,
        right_keys,
        key_types,
        nulls_equal: join.null_equality == NullEquality::NullEqualsNull,
        null_aware: join.null_aware,
        filter,
        left_schema: arrow_schema(left),
        right_schema: arrow_schema(right),
        pair_schema: arrow_schema(&pair),
        schema: arrow_schema(&join.schema),
        display,
    })
}

/// The rows of a `VALUES` list, whose expressions the optimizer has folded into literals.
fn constant_rows(values: &logical::Values) -> Result<RecordBatch, BuildError> {
    let schema = arrow_schema(&values.schema);
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        let mut scalars = Vec::new();
        for row in &values.values {
            let Some(Expr::Literal(value, _)) = row.get(i).map(unalias) else {
                return Err(not_incremental(
                    "VALUES with computed expressions",
                    "cannot be maintained incrementally",
                ));
            };
            scalars.push(cast_scalar(value, field.data_type())?);
        }
        columns.push(if scalars.is_empty() {
            datafusion::arrow::array::new_empty_array(field.data_type())
        } else {
            ScalarValue::iter_to_array(scalars)?
        });
    }
    let options = RecordBatchOptions::new().with_row_count(Some(values.values.len()));
    Ok(RecordBatch::try_new_with_options(Arc::new(schema.as_ref().clone()), columns, &options).map_err(internal)?)
}

fn cast_scalar(value: &ScalarValue, data_type: &DataType) -> Result<ScalarValue, BuildError> {
    if &value.data_type() == data_type {
        return Ok(value.clone());
    }
    Ok(value.cast_to(data_type)?)
}
