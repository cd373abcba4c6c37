//! Uncorrelated scalar subqueries as joins.
//!
//! DataFusion keeps an uncorrelated scalar subquery in its expression (`HAVING sum(v) >
//! (SELECT sum(v) * 0.0001 FROM ps)`) and evaluates it once, before the query. Maintained
//! incrementally, its value is one more input: when it changes, every row compared with it may
//! enter or leave the result. So the subquery becomes the right side of a join without keys,
//! and its value a column of the joined rows: an inner join when the subquery always returns
//! exactly one row (a global aggregate, whose operator always has its row), a left join when it
//! may return none (the value is then NULL, as SQL says). A change of the value costs the rows
//! it is compared with; a change of those rows costs only themselves.

use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::{self as logical, Expr, JoinType, LogicalPlan, LogicalPlanBuilder};

use super::{BuildError, not_incremental};
use crate::delta::internal;

/// `plan` with every uncorrelated scalar subquery of a filter or a projection joined in, or
/// `None` when it has none.
pub(crate) fn scalar_subqueries_as_joins(plan: &LogicalPlan) -> Result<Option<LogicalPlan>, BuildError> {
    let mut joined = 0;
    rewrite(plan, &mut joined)
}

fn rewrite(plan: &LogicalPlan, joined: &mut usize) -> Result<Option<LogicalPlan>, BuildError> {
    let inputs = plan.inputs();
    let mut new_inputs = Vec::with_capacity(inputs.len());
    let mut changed = false;
    for input in inputs {
        match rewrite(input, joined)? {
            Some(new) => {
                changed = true;
                new_inputs.push(new);
            }
            None => new_inputs.push(input.clone()),
        }
    }
    let rebuilt = match changed {
        true => Some(plan.with_new_exprs(plan.expressions(), new_inputs)?),
        false => None,
    };
    let rewritten = match rebuilt.as_ref().unwrap_or(plan) {
        LogicalPlan::Filter(filter) if has_scalar_subquery(&filter.predicate) => {
            let (input, mut predicates) =
                join_subqueries(filter.input.as_ref().clone(), vec![filter.predicate.clone()], joined)?;
            let predicate = predicates
                .pop()
                .ok_or_else(|| BuildError::Failed(internal("a filter lost its predicate")))?;
            // The subqueries' columns leave again: the filter's output is its input's rows.
            let columns: Vec<Expr> = filter.input.schema().columns().into_iter().map(Expr::Column).collect();
            Some(
                LogicalPlanBuilder::from(input)
                    .filter(predicate)?
                    .project(columns)?
                    .build()?,
            )
        }
        LogicalPlan::Projection(projection) if projection.expr.iter().any(has_scalar_subquery) => {
            let (input, exprs) = join_subqueries(projection.input.as_ref().clone(), projection.expr.clone(), joined)?;
            // Each expression keeps the name it had (the subquery's column has another).
            let exprs: Vec<Expr> = exprs
                .into_iter()
                .zip(projection.schema.iter())
                .map(|(expr, (qualifier, field))| expr.unalias().alias_qualified(qualifier.cloned(), field.name()))
                .collect();
            Some(LogicalPlan::Projection(logical::Projection::try_new(
                exprs,
                std::sync::Arc::new(input),
            )?))
        }
        _ => None,
    };
    Ok(rewritten.or(rebuilt))
}

fn has_scalar_subquery(expr: &Expr) -> bool {
    expr.exists(|e| Ok(matches!(e, Expr::ScalarSubquery(_))))
        .unwrap_or(false)
}

/// `input` joined with each scalar subquery of `exprs`, and `exprs` reading their values from
/// the joined columns.
fn join_subqueries(
    input: LogicalPlan,
    exprs: Vec<Expr>,
    joined: &mut usize,
) -> Result<(LogicalPlan, Vec<Expr>), BuildError> {
    let mut subqueries = Vec::new();
    let mut correlated = false;
    let mut exprs_out = Vec::with_capacity(exprs.len());
    for expr in exprs {
        let expr = expr
            .transform_up(|e| {
                let Expr::ScalarSubquery(subquery) = e else {
                    return Ok(Transformed::no(e));
                };
                if !subquery.outer_ref_columns.is_empty() {
                    correlated = true;
                    return Ok(Transformed::no(Expr::ScalarSubquery(subquery)));
                }
                *joined += 1;
                let alias = format!("__scalar_subquery_{joined}");
                let name = subquery.subquery.schema().field(0).name().clone();
                subqueries.push((subquery.subquery.clone(), alias.clone()));
                Ok(Transformed::yes(Expr::Column(Column::new(Some(alias), name))))
            })?
            .data;
        exprs_out.push(expr);
    }
    if correlated {
        return Err(not_incremental(
            "correlated scalar subquery",
            "cannot be maintained incrementally: DataFusion could not turn it into a join",
        ));
    }
    let mut builder = LogicalPlanBuilder::from(input);
    for (subquery, alias) in subqueries {
        let subquery = match subquery.as_ref() {
            LogicalPlan::Subquery(inner) => inner.subquery.as_ref().clone(),
            other => other.clone(),
        };
        let subquery = rewrite(&subquery, joined)?.unwrap_or(subquery);
        let join_type = if returns_one_row(&subquery) {
            JoinType::Inner
        } else if subquery.max_rows().is_some_and(|rows| rows <= 1) {
            JoinType::Left
        } else {
            return Err(not_incremental(
                "scalar subquery that may return several rows",
                "cannot be maintained incrementally: only a subquery of one row at most (an aggregate without GROUP BY) can",
            ));
        };
        let right = LogicalPlanBuilder::from(subquery).alias(alias)?.build()?;
        builder = builder.join_on(right, join_type, Vec::<Expr>::new())?;
    }
    Ok((builder.build()?, exprs_out))
}

/// Whether a plan returns exactly one row whatever its inputs: a global aggregate, projected.
fn returns_one_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(aggregate) => aggregate.group_expr.is_empty(),
        LogicalPlan::Projection(projection) => returns_one_row(&projection.input),
        LogicalPlan::SubqueryAlias(alias) => returns_one_row(&alias.input),
        _ => false,
    }
}
