//! Interval arithmetic on timestamps as integer arithmetic on durations.
//!
//! `ts - INTERVAL '4' SECOND` is planned by DataFusion as a timestamp minus a month-day-nano
//! interval, which Arrow evaluates by turning every value into a calendar date-time and back
//! (months and days are calendar units). An interval without months — and without days over a
//! time zone, where a day is not always 24 hours — is a fixed duration: the same values come
//! from a timestamp minus a duration of its unit, an integer subtraction. Window bounds and
//! watermarks are written this way; their intervals are seconds and minutes.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Operator};

const NANOS_PER_DAY: i128 = 86_400_000_000_000;

/// `expr` with every `timestamp ± interval` whose interval is a fixed duration written as
/// `timestamp ± duration` in the timestamp's unit (see the module's documentation). Anything
/// else is left as it is.
pub fn intervals_as_durations(expr: Expr, schema: &DFSchema) -> Expr {
    let rewritten = expr.clone().transform_up(|e| {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &e else {
            return Ok(Transformed::no(e));
        };
        if !matches!(op, Operator::Plus | Operator::Minus) {
            return Ok(Transformed::no(e));
        }
        let Ok(DataType::Timestamp(unit, zone)) = left.get_type(schema) else {
            return Ok(Transformed::no(e));
        };
        let Some(duration) = fixed_duration(right, &unit, zone.is_some()) else {
            return Ok(Transformed::no(e));
        };
        Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
            left.clone(),
            *op,
            Box::new(Expr::Literal(duration, None)),
        ))))
    });
    rewritten.map(|t| t.data).unwrap_or(expr)
}

/// An interval literal as a duration literal of `unit`, when it is a fixed length of time
/// that unit holds exactly.
fn fixed_duration(expr: &Expr, unit: &TimeUnit, zoned: bool) -> Option<ScalarValue> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    let nanos: i128 = match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 && !(zoned && v.days != 0) => {
            i128::from(v.days) * NANOS_PER_DAY + i128::from(v.nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(v)) if !(zoned && v.days != 0) => {
            i128::from(v.days) * NANOS_PER_DAY + i128::from(v.milliseconds) * 1_000_000
        }
        _ => return None,
    };
    let per: i128 = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    if nanos % per != 0 {
        return None;
    }
    let n = Some(i64::try_from(nanos / per).ok()?);
    Some(match unit {
        TimeUnit::Second => ScalarValue::DurationSecond(n),
        TimeUnit::Millisecond => ScalarValue::DurationMillisecond(n),
        TimeUnit::Microsecond => ScalarValue::DurationMicrosecond(n),
        TimeUnit::Nanosecond => ScalarValue::DurationNanosecond(n),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Field, IntervalMonthDayNano, Schema};
    use datafusion::execution::context::ExecutionProps;
    use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
    use datafusion::logical_expr::{col, lit};
    use datafusion::physical_expr::create_physical_expr;

    use super::*;

    fn evaluate(expr: &Expr, schema: &DFSchema, batch: &RecordBatch) -> ArrayRef {
        let physical = create_physical_expr(
            expr,
            schema,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .unwrap();
        physical.evaluate(batch).unwrap().into_array(batch.num_rows()).unwrap()
    }

    #[test]
    fn fixed_intervals_become_durations_with_the_same_values() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        )]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(TimestampMillisecondArray::from(vec![
                Some(1_436_918_400_123),
                None,
                Some(-5),
                Some(951_782_400_000), // 2000-02-29
            ]))],
        )
        .unwrap();
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).unwrap();
        let interval = |months, days, nanos| {
            lit(ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(
                months, days, nanos,
            ))))
        };
        for (expr, rewritten) in [
            (col("ts") - interval(0, 0, 4_000_000_000), true),
            (col("ts") + interval(0, 2, 10_000_000_000), true),
            (col("ts") - interval(0, 0, 1_500_000_000), true),
            (col("ts") - interval(0, 0, 1_500_000), false),
            // Not a whole number of milliseconds, or a calendar month: left as they are.
            (col("ts") + interval(0, 0, 1), false),
            (col("ts") + interval(1, 0, 0), false),
        ] {
            let durations = intervals_as_durations(expr.clone(), &df_schema);
            assert_eq!(durations != expr, rewritten, "{expr}");
            assert_eq!(
                evaluate(&durations, &df_schema, &batch).as_ref(),
                evaluate(&expr, &df_schema, &batch).as_ref(),
                "{expr}"
            );
        }
    }
}
