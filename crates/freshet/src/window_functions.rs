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
//! - `window_hop(ts, slide_ms, size_ms, offset_ms, i, 'start' | 'end' | 'time')` is a bound of
//!   the `i`-th HOP window of a row at time `ts` (0: the window starting in the row's slide): its
//!   start, its end, or its `window_time`. A HOP window table function is a `UNION ALL` of one
//!   projection per window index; the call tells incremental maintenance which, so that it can
//!   aggregate each slide once and combine slides into windows (see `freshet-incremental`).
//! - `window_session_start(ts, gap_ms)` and `window_session_end(ts, gap_ms)`, window functions over a
//!   partition ordered by `ts`, give each row the start and the end of its SESSION window: rows
//!   less than the gap apart share a session, which ends one gap after its last row.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, TimeUnit};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, PartitionEvaluator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility, WindowUDF, WindowUDFImpl,
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

/// A bound of a row's HOP window (see the module's documentation).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct WindowHop {
    signature: Signature,
}

impl WindowHop {
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::new(TypeSignature::UserDefined, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for WindowHop {
    fn name(&self) -> &str {
        freshet_incremental::WINDOW_HOP
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        Ok(args.first().cloned().unwrap_or(DataType::Null))
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        match args {
            [DataType::Timestamp(_, _), _, _, _, _, _] => Ok(vec![
                args[0].clone(),
                DataType::Int64,
                DataType::Int64,
                DataType::Int64,
                DataType::Int64,
                DataType::Utf8,
            ]),
            [other, _, _, _, _, _] => {
                plan_err!("a window's time column (DESCRIPTOR(...)) must be a TIMESTAMP column, but it is {other}")
            }
            _ => plan_err!("window_hop takes a time, the slide, size and offset (ms), an index and a bound"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let [time, slide, size, offset, index, bound] = args.args.as_slice() else {
            return plan_err!("window_hop takes a time, the slide, size and offset (ms), an index and a bound");
        };
        let int = |value: &ColumnarValue| match value {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(n))) => Ok(*n),
            _ => plan_err!("window_hop's slide, size, offset and index are integer literals"),
        };
        let hop = freshet_common::HopWindow {
            slide_ms: int(slide)?,
            size_ms: int(size)?,
            offset_ms: int(offset)?,
        };
        if hop.slide_ms <= 0 {
            return plan_err!("a HOP window's slide must be positive");
        }
        let index = int(index)?;
        let bound = match bound {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(b))) if b == "start" => freshet_common::HopBound::Start,
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(b))) if b == "end" => freshet_common::HopBound::End,
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(b))) if b == "time" => freshet_common::HopBound::Time,
            _ => return plan_err!("window_hop's bound is 'start', 'end' or 'time'"),
        };
        let times = time.to_array(rows)?;
        let DataType::Timestamp(unit, _) = times.data_type() else {
            return plan_err!("a window's time column must be a TIMESTAMP, not {}", times.data_type());
        };
        let raw = cast(&times, &DataType::Int64)?;
        let bounds: Int64Array = raw.as_primitive::<Int64Type>().try_unary(|t| {
            hop.bound(t, *unit, index, bound).ok_or_else(|| {
                datafusion::arrow::error::ArrowError::ComputeError(
                    "a HOP window's bound is out of the range of timestamps".to_string(),
                )
            })
        })?;
        let bounds: ArrayRef = Arc::new(bounds);
        Ok(ColumnarValue::Array(cast(&bounds, times.data_type())?))
    }
}

/// A bound of each row's SESSION window (see the module's documentation).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct SessionBound {
    end: bool,
    signature: Signature,
}

impl SessionBound {
    /// `session_start` or, with `end`, `session_end`.
    pub(crate) fn udwf(end: bool) -> WindowUDF {
        WindowUDF::new_from_impl(Self {
            end,
            signature: Signature::new(TypeSignature::Any(2), Volatility::Immutable),
        })
    }
}

impl WindowUDFImpl for SessionBound {
    fn name(&self) -> &str {
        if self.end {
            freshet_incremental::SESSION_END
        } else {
            freshet_incremental::SESSION_START
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn partition_evaluator(&self, _args: PartitionEvaluatorArgs) -> DfResult<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(SessionEvaluator { end: self.end }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> DfResult<FieldRef> {
        let data_type = match field_args.get_input_field(0).map(|f| f.data_type().clone()) {
            Some(t @ DataType::Timestamp(_, _)) => t,
            other => return plan_err!("{} takes a TIMESTAMP, not {other:?}", self.name()),
        };
        Ok(Arc::new(Field::new(field_args.name(), data_type, true)))
    }
}

#[derive(Debug)]
struct SessionEvaluator {
    end: bool,
}

impl PartitionEvaluator for SessionEvaluator {
    /// The partition's rows come ordered by their time (NULLs last, in sessions of their own
    /// with no bounds).
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> DfResult<ArrayRef> {
        let [times, gap] = values else {
            return plan_err!("a session bound takes a time and a gap");
        };
        let gap = match ScalarValue::try_from_array(gap, 0)?.cast_to(&DataType::Int64)? {
            ScalarValue::Int64(Some(gap)) if gap > 0 => gap,
            other => return plan_err!("a session's gap must be a positive number of milliseconds, not {other}"),
        };
        // Times in their own unit; the gap compared in nanoseconds.
        let unit_ns: i128 = match times.data_type() {
            DataType::Timestamp(TimeUnit::Second, _) => 1_000_000_000,
            DataType::Timestamp(TimeUnit::Millisecond, _) => 1_000_000,
            DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => 1,
            other => return plan_err!("a session window's time must be a TIMESTAMP, not {other}"),
        };
        let gap_ns = i128::from(gap) * 1_000_000;
        let within = |from: i64, to: i64| (i128::from(to) - i128::from(from)) * unit_ns < gap_ns;
        let gap = i64::try_from(gap_ns / unit_ns).unwrap_or(i64::MAX);
        let raw = cast(times, &DataType::Int64)?;
        let raw = raw.as_primitive::<Int64Type>();
        let mut bounds: Vec<Option<i64>> = vec![None; num_rows];
        let mut first = 0;
        while first < num_rows {
            if raw.is_null(first) {
                first += 1;
                continue;
            }
            // The session runs on while the next row is less than the gap after the last.
            let mut last = first;
            while last + 1 < num_rows && raw.is_valid(last + 1) && within(raw.value(last), raw.value(last + 1)) {
                last += 1;
            }
            let bound = if self.end {
                raw.value(last).saturating_add(gap)
            } else {
                raw.value(first)
            };
            bounds[first..=last].fill(Some(bound));
            first = last + 1;
        }
        let bounds: ArrayRef = Arc::new(Int64Array::from(bounds));
        Ok(cast(&bounds, times.data_type())?)
    }
}
