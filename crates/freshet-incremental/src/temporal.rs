//! The time a query is evaluated at, as an input of incremental maintenance.
//!
//! `WHERE ts > now() - INTERVAL '7' DAY` keeps a row from the moment it is inserted until its
//! `ts` is seven days old: the result changes with time alone. Batch evaluation folds `now()`
//! into a constant; a pipeline cannot (the constant would be wrong at the next epoch). So before
//! a plan is optimized for a pipeline, [`time_as_input`] replaces `now()`, `current_timestamp`
//! and `current_date` by [`FRESHET_NOW`], a volatile function that the optimizer leaves in place,
//! and the temporal filter operator turns each comparison with it into the span of time during
//! which a row passes: the row enters the result when the epoch's time reaches the span's
//! start and leaves it at its end (Materialize's temporal filters work the same way).

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, cast,
};

/// The name of the function standing for the epoch's time in a pipeline's plan.
pub const FRESHET_NOW: &str = "freshet_now";

/// The type of `now()` and of [`FRESHET_NOW`]: nanoseconds in UTC.
fn now_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
}

/// The epoch's time. Never evaluated: the temporal filter reads comparisons with it, and any
/// other use is refused before a pipeline runs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct EpochTime {
    signature: Signature,
}

impl ScalarUDFImpl for EpochTime {
    fn name(&self) -> &str {
        FRESHET_NOW
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(now_type())
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Err(DataFusionError::Internal(format!(
            "{FRESHET_NOW}() stands for the time of an incremental epoch and is not evaluated"
        )))
    }
}

fn epoch_time() -> Expr {
    ScalarUDF::new_from_impl(EpochTime {
        signature: Signature::exact(vec![], Volatility::Volatile),
    })
    .call(vec![])
}

/// Whether an expression is the epoch's time.
pub(crate) fn is_epoch_time(expr: &Expr) -> bool {
    matches!(expr, Expr::ScalarFunction(f) if f.func.name() == FRESHET_NOW)
}

/// `plan` with `now()`, `current_timestamp` and `current_date` read from the epoch's time, or
/// `None` when it calls none of them.
pub fn time_as_input(plan: &LogicalPlan) -> DfResult<Option<LogicalPlan>> {
    let rewritten = plan.clone().transform_up_with_subqueries(|node| {
        node.map_expressions(|expr| {
            expr.transform_up(|e| {
                let Expr::ScalarFunction(function) = &e else {
                    return Ok(Transformed::no(e));
                };
                let time = match function.func.name() {
                    "now" | "current_timestamp" => epoch_time(),
                    "current_date" | "today" => cast(epoch_time(), DataType::Date32),
                    _ => return Ok(Transformed::no(e)),
                };
                // The original's type (a session time zone may give now() another one).
                let original = function.func.return_type(&[]).ok();
                Ok(Transformed::yes(match original {
                    Some(t) if t != now_type() && t != DataType::Date32 => cast(time, t),
                    _ => time,
                }))
            })
        })
    })?;
    Ok(rewritten.transformed.then_some(rewritten.data))
}
