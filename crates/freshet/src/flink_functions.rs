//! Functions with Apache Flink's behaviour, so that statements written for Flink run unchanged.
//!
//! - `DATE_FORMAT(timestamp, 'yyyy-MM-dd')`: Flink's date formatting with Java patterns
//!   (DataFusion's `date_format` is `to_char` with chrono patterns). A pattern containing `%`
//!   is taken as a chrono pattern, so DataFusion's form keeps working. A text first argument is
//!   parsed as a timestamp, as Flink does.
//! - `PROCTIME()`: the processing time, on the engine's clock. In a connector table's computed
//!   column (`pt AS PROCTIME()`) it is the time the row was ingested.
//! - `SPLIT_INDEX(text, separator, n)`: the n-th (from 0) part of the text split at the
//!   separator; NULL when there is none or n is negative.
//! - `REGEXP_EXTRACT(text, regex [, group])`: the match of a group (0, the default: the whole
//!   match); NULL without a match. It becomes DataFusion's `regexp_match` when the plan is
//!   simplified.
//! - `MOD(a, b)`: the remainder, as `a % b` (which it becomes when the plan is simplified, so
//!   that incremental maintenance sees plain arithmetic).

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

use crate::materialized::definition::java_date_format;

/// Flink's `DATE_FORMAT`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DateFormat {
    signature: Signature,
}

impl DateFormat {
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::new(TypeSignature::UserDefined, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for DateFormat {
    fn name(&self) -> &str {
        "date_format"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        let [value, _pattern] = args else {
            return plan_err!("date_format takes a timestamp and a pattern, such as date_format(ts, 'yyyy-MM-dd')");
        };
        let value = match value {
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => {
                DataType::Timestamp(TimeUnit::Nanosecond, None)
            }
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => value.clone(),
            other => return plan_err!("date_format cannot format a value of type {other}"),
        };
        Ok(vec![value, DataType::Utf8])
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if let Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(pattern)))) = args.args.get_mut(1)
            && !pattern.contains('%')
        {
            *pattern = java_date_format(pattern).map_err(datafusion::error::DataFusionError::Plan)?;
        }
        datafusion::functions::datetime::to_char().invoke_with_args(args)
    }
}

/// Flink's `MOD`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Mod {
    signature: Signature,
}

impl Mod {
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::new(TypeSignature::UserDefined, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for Mod {
    fn name(&self) -> &str {
        "mod"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        Ok(args.first().cloned().unwrap_or(DataType::Int64))
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        let [a, b] = args else {
            return plan_err!("mod takes two numbers, such as mod(auction, 123)");
        };
        let integers = |t: &DataType| t.is_integer() || *t == DataType::Null;
        if integers(a) && integers(b) {
            Ok(vec![DataType::Int64, DataType::Int64])
        } else if a.is_numeric() && b.is_numeric() {
            Ok(vec![DataType::Float64, DataType::Float64])
        } else {
            plan_err!("mod takes two numbers, not {a} and {b}")
        }
    }

    fn simplify(
        &self,
        mut args: Vec<datafusion::logical_expr::Expr>,
        _info: &datafusion::logical_expr::simplify::SimplifyContext,
    ) -> DfResult<datafusion::logical_expr::simplify::ExprSimplifyResult> {
        use datafusion::logical_expr::simplify::ExprSimplifyResult;
        match (args.pop(), args.pop()) {
            (Some(b), Some(a)) if args.is_empty() => Ok(ExprSimplifyResult::Simplified(a % b)),
            (b, a) => Ok(ExprSimplifyResult::Original(a.into_iter().chain(b).collect())),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let [a, b] = args.args.as_slice() else {
            return plan_err!("mod takes two numbers");
        };
        let result = datafusion::arrow::compute::kernels::numeric::rem(&a.to_array(rows)?, &b.to_array(rows)?)?;
        Ok(ColumnarValue::Array(result))
    }
}

/// Flink's `PROCTIME()`.
#[derive(Debug)]
pub(crate) struct Proctime {
    signature: Signature,
    clock: freshet_common::SharedClock,
}

impl PartialEq for Proctime {
    fn eq(&self, _other: &Self) -> bool {
        // One engine registers one; any two read the time the same way.
        true
    }
}

impl Eq for Proctime {}

impl std::hash::Hash for Proctime {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "proctime".hash(state);
    }
}

impl ScalarUDFImpl for Proctime {
    fn name(&self) -> &str {
        "proctime"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Millisecond, None))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(
            Some(self.clock.now_ms()),
            None,
        )))
    }
}

/// Flink's `SPLIT_INDEX`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct SplitIndex {
    signature: Signature,
}

impl ScalarUDFImpl for SplitIndex {
    fn name(&self) -> &str {
        "split_index"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        if args.len() != 3 {
            return plan_err!("split_index takes a text, a separator and an index, such as split_index(url, '/', 3)");
        }
        Ok(vec![DataType::Utf8, DataType::Utf8, DataType::Int64])
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        use datafusion::arrow::array::{Array, AsArray, StringBuilder};
        use datafusion::arrow::datatypes::Int64Type;
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<DfResult<Vec<_>>>()?;
        let [text, separator, index] = arrays.as_slice() else {
            return plan_err!("split_index takes three arguments");
        };
        let (text, separator, index) = (
            text.as_string::<i32>(),
            separator.as_string::<i32>(),
            index.as_primitive::<Int64Type>(),
        );
        let mut out = StringBuilder::with_capacity(rows, 0);
        for row in 0..rows {
            if text.is_null(row) || separator.is_null(row) || index.is_null(row) || index.value(row) < 0 {
                out.append_null();
                continue;
            }
            let separator = separator.value(row);
            let part = if separator.is_empty() {
                None
            } else {
                usize::try_from(index.value(row))
                    .ok()
                    .and_then(|n| text.value(row).split(separator).nth(n))
            };
            out.append_option(part);
        }
        Ok(ColumnarValue::Array(std::sync::Arc::new(out.finish())))
    }
}

/// Flink's `REGEXP_EXTRACT`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct RegexpExtract {
    signature: Signature,
}

impl ScalarUDFImpl for RegexpExtract {
    fn name(&self) -> &str {
        "regexp_extract"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        match args.len() {
            2 => Ok(vec![DataType::Utf8, DataType::Utf8]),
            3 => Ok(vec![DataType::Utf8, DataType::Utf8, DataType::Int64]),
            _ => plan_err!("regexp_extract takes a text, a regular expression and maybe a group number"),
        }
    }

    fn simplify(
        &self,
        mut args: Vec<datafusion::logical_expr::Expr>,
        _info: &datafusion::logical_expr::simplify::SimplifyContext,
    ) -> DfResult<datafusion::logical_expr::simplify::ExprSimplifyResult> {
        use datafusion::logical_expr::simplify::ExprSimplifyResult;
        use datafusion::logical_expr::{Expr, lit};
        if !(2..=3).contains(&args.len()) {
            return Ok(ExprSimplifyResult::Original(args));
        }
        let group = if args.len() == 3 {
            args.pop().unwrap_or_else(|| lit(0i64))
        } else {
            lit(0i64)
        };
        let (Some(regex), Some(text)) = (args.pop(), args.pop()) else {
            return Ok(ExprSimplifyResult::Original(args));
        };
        // The whole expression as group 1, so that group n is capture n + 1 (1-based).
        let wrapped = datafusion::functions::expr_fn::concat(vec![lit("("), regex, lit(")")]);
        let captures = datafusion::functions::expr_fn::regexp_match(text, wrapped, None);
        let element: Expr = datafusion::functions_nested::expr_fn::array_element(captures, group + lit(1i64));
        Ok(ExprSimplifyResult::Simplified(Expr::Cast(
            datafusion::logical_expr::Cast::new(Box::new(element), DataType::Utf8),
        )))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        plan_err!("regexp_extract is evaluated as regexp_match once the plan is simplified")
    }
}

/// Registers the Flink functions on the engine's session.
pub(crate) fn register(ctx: &datafusion::prelude::SessionContext, clock: freshet_common::SharedClock) {
    ctx.register_udf(DateFormat::udf());
    ctx.register_udf(Mod::udf());
    ctx.register_udf(crate::window_functions::WindowTimeColumn::udf());
    ctx.register_udf(crate::window_functions::WindowBound::udf());
    ctx.register_udf(crate::window_functions::WindowHop::udf());
    ctx.register_udwf(crate::window_functions::SessionBound::udwf(false));
    ctx.register_udwf(crate::window_functions::SessionBound::udwf(true));
    ctx.register_udf(ScalarUDF::new_from_impl(SplitIndex {
        signature: Signature::new(TypeSignature::UserDefined, Volatility::Immutable),
    }));
    ctx.register_udf(ScalarUDF::new_from_impl(RegexpExtract {
        signature: Signature::new(TypeSignature::UserDefined, Volatility::Immutable),
    }));
    ctx.register_udf(ScalarUDF::new_from_impl(Proctime {
        signature: Signature::nullary(Volatility::Volatile),
        clock,
    }));
}
