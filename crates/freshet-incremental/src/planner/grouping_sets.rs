//! GROUPING SETS, ROLLUP and CUBE as a UNION ALL of one plain aggregate per grouping set.
//!
//! Each set's rows are its own aggregate's, with NULL for the group columns it leaves out and
//! the grouping id DataFusion computes (a bit per group column, set when the column is left
//! out, the first column highest; above them the ordinal of a repeated set), so that the union
//! has the rows and the schema of the original aggregate and everything above it (`GROUPING()`,
//! window closing by a set's `window_end`) reads them unchanged.

use std::sync::Arc;

use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::logical_plan::{Aggregate, Projection, Union};
use datafusion::logical_expr::{Expr, GroupingSet, LogicalPlan};

use super::BuildError;

/// The aggregate as a union of one aggregate per grouping set, when it has grouping sets.
pub(super) fn as_union(aggregate: &Aggregate) -> Result<Option<LogicalPlan>, BuildError> {
    let [Expr::GroupingSet(grouping)] = aggregate.group_expr.as_slice() else {
        return Ok(None);
    };
    let distinct: Vec<&Expr> = grouping.distinct_expr();
    let sets: Vec<Vec<Expr>> = match grouping {
        GroupingSet::GroupingSets(sets) => sets.clone(),
        GroupingSet::Rollup(exprs) => (0..=exprs.len()).map(|i| exprs[..i].to_vec()).collect(),
        GroupingSet::Cube(exprs) => (0..1u64 << exprs.len())
            .map(|mask| {
                exprs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .collect(),
    };
    let schema = aggregate.schema.clone();
    let n = distinct.len();
    let id_type = schema.field(n).data_type().clone();
    let left_out = |set: &[Expr]| -> Vec<bool> { distinct.iter().map(|d| !set.contains(d)).collect() };
    let mut inputs = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let mask = left_out(set);
        let ordinal = sets[..i].iter().filter(|s| left_out(s) == mask).count() as u64;
        let id = mask.iter().fold(0u64, |id, &out| (id << 1) | u64::from(out)) | (ordinal << n);
        let per_set = Aggregate::try_new(aggregate.input.clone(), set.clone(), aggregate.aggr_expr.clone())?;
        let column = |index: usize| Expr::Column(Column::from(per_set.schema.qualified_field(index)));
        let mut exprs = Vec::with_capacity(schema.fields().len());
        for (j, expr) in distinct.iter().enumerate() {
            exprs.push(match set.iter().position(|e| e == *expr) {
                Some(at) => column(at),
                None => Expr::Literal(ScalarValue::try_from(schema.field(j).data_type())?, None),
            });
        }
        exprs.push(Expr::Literal(ScalarValue::UInt64(Some(id)).cast_to(&id_type)?, None));
        exprs.extend((0..aggregate.aggr_expr.len()).map(|k| column(set.len() + k)));
        let projection =
            Projection::try_new_with_schema(exprs, Arc::new(LogicalPlan::Aggregate(per_set)), schema.clone())?;
        inputs.push(Arc::new(LogicalPlan::Projection(projection)));
    }
    Ok(Some(LogicalPlan::Union(Union { inputs, schema })))
}
