//! Support for Flink's window table functions, which `freshet-sql` rewrites into plain
//! queries (see its `window_tvf` module).
//!
//! - `window_time_column(ts)` wraps the column a window's `DESCRIPTOR` names: it checks that
//!   the column is a timestamp, so that a window over another column fails with a message about
//!   the window rather than about `date_bin`'s signatures, and becomes the column itself when
//!   the plan is simplified.
//! - `window_bound(end, ts)` is `end`, a window's end computed from the row's time `ts`. It stays
//!   in the plan (it is not simplified away) so that incremental maintenance can tell that a
//!   group keyed by the column is a window that the watermark of `ts`'s source closes.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::plan_err;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

/// The checked time column of a window.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct WindowTimeColumn {
    signature: Signature,
}

impl WindowTimeColumn {
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::new(TypeSignature::UserDefined, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for WindowTimeColumn {
    fn name(&self) -> &str {
        "window_time_column"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        Ok(args.first().cloned().unwrap_or(DataType::Null))
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        match args {
            [DataType::Timestamp(_, _)] => Ok(args.to_vec()),
            [other] => {
                plan_err!("a window's time column (DESCRIPTOR(...)) must be a TIMESTAMP column, but it is {other}")
            }
            _ => plan_err!("window_time_column takes one column"),
        }
    }

    fn simplify(&self, mut args: Vec<Expr>, _info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        match (args.pop(), args.is_empty()) {
            (Some(column), true) => Ok(ExprSimplifyResult::Simplified(column)),
            (last, _) => Ok(ExprSimplifyResult::Original(args.into_iter().chain(last).collect())),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        match args.args.into_iter().next() {
            Some(column) => Ok(column),
            None => plan_err!("window_time_column takes one column"),
        }
    }
}

/// A window's end, marked with the row time it was computed from.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct WindowBound {
    signature: Signature,
}

impl WindowBound {
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::new(TypeSignature::Any(2), Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for WindowBound {
    fn name(&self) -> &str {
        freshet_incremental::WINDOW_BOUND
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        Ok(args.first().cloned().unwrap_or(DataType::Null))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        match args.args.into_iter().next() {
            Some(end) => Ok(end),
            None => plan_err!("window_bound takes a window's end and the row's time"),
        }
    }
}
