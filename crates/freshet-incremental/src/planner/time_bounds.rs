//! Filters comparing rows with the time: each comparison with `now()` (or `current_date`),
//! shifted by day-time intervals, becomes a bound on the time for a row expression.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{self as logical, BinaryExpr, Expr, ExprSchemable, Operator as BinaryOperator};

use super::{BuildError, Context, build, check_expr_deterministic, not_incremental};
use crate::operator::{Compiled, Operator, TemporalFilter, TimeBound, TimeComparison, arrow_schema};
use crate::temporal::is_epoch_time;

/// Whether an expression reads the time.
pub(super) fn reads_time(expr: &Expr) -> bool {
    expr.exists(|e| Ok(is_epoch_time(e))).unwrap_or(false)
}

fn unsupported(conjunct: &Expr) -> BuildError {
    let shown = conjunct
        .to_string()
        .replace(&format!("{}()", crate::FRESHET_NOW), "now()");
    not_incremental(
        format!("comparison with the time {shown}"),
        "cannot be maintained incrementally; comparisons of a column or expression with now() or current_date, \
         shifted by day-time intervals (now() - INTERVAL '7' DAY), can",
    )
}

/// The temporal filter of a filter whose predicate reads the time.
pub(super) fn temporal_filter(filter: &logical::Filter, cx: &mut Context<'_>) -> Result<Box<dyn Operator>, BuildError> {
    let schema = filter.input.schema();
    let mut bounds = Vec::new();
    let mut others = Vec::new();
    for conjunct in split_conjunction(&filter.predicate) {
        let parts = match conjunct {
            Expr::Between(between) if !between.negated && reads_time(conjunct) => vec![
                Expr::BinaryExpr(BinaryExpr::new(
                    between.expr.clone(),
                    BinaryOperator::GtEq,
                    between.low.clone(),
                )),
                Expr::BinaryExpr(BinaryExpr::new(
                    between.expr.clone(),
                    BinaryOperator::LtEq,
                    between.high.clone(),
                )),
            ],
            other => vec![other.clone()],
        };
        for part in parts {
            if !reads_time(&part) {
                others.push(part);
                continue;
            }
            let (comparison, key, by_day) = time_bound(&part).ok_or_else(|| unsupported(&part))?;
            match key.get_type(schema)? {
                DataType::Date32 | DataType::Date64 => {}
                DataType::Timestamp(unit, _) if unit != TimeUnit::Second || !by_day => {}
                _ => return Err(unsupported(&part)),
            }
            check_expr_deterministic(&key)?;
            bounds.push(TimeBound {
                comparison,
                key: Compiled::new(&key, schema)?,
                by_day,
                display: part.to_string().replace(&format!("{}()", crate::FRESHET_NOW), "now()"),
            });
        }
    }
    let predicate = match conjunction(others) {
        Some(predicate) => {
            check_expr_deterministic(&predicate)?;
            Some(Compiled::new(&predicate, schema)?)
        }
        None => None,
    };
    let input = build(&filter.input, cx)?;
    Ok(Box::new(TemporalFilter::new(
        input,
        predicate,
        bounds,
        arrow_schema(schema),
    )?))
}

/// `time op key` for a comparison of the time with a row expression: the comparison as seen
/// from the time, the key (the row side with the time's shifts moved over to it), and whether
/// the time is truncated to its day.
fn time_bound(conjunct: &Expr) -> Option<(TimeComparison, Expr, bool)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conjunct else {
        return None;
    };
    let (time_side, mut key, comparison) = match (reads_time(left), reads_time(right)) {
        (true, false) => (left.as_ref(), right.as_ref().clone(), comparison(*op)?),
        (false, true) => (right.as_ref(), left.as_ref().clone(), comparison(op.swap()?)?),
        _ => return None,
    };
    let mut by_day = false;
    let mut side = time_side;
    loop {
        match side {
            e if is_epoch_time(e) => return Some((comparison, key, by_day)),
            Expr::Cast(_) | Expr::TryCast(_) => {
                let (expr, data_type) = cast_of(side)?;
                match data_type {
                    DataType::Date32 | DataType::Date64 if !by_day && is_bare_time(expr) => by_day = true,
                    // Midnight of the day, as a timestamp: the same instant.
                    DataType::Timestamp(unit, _) if *unit != TimeUnit::Second => {}
                    _ => return None,
                }
                side = expr;
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) if !by_day => {
                // time + c op k ⇔ time op k - c (day-time shifts are exact in UTC).
                let (inner, shift, inverse) = match op {
                    BinaryOperator::Plus if is_shift(right) => (left, right, BinaryOperator::Minus),
                    BinaryOperator::Plus if is_shift(left) => (right, left, BinaryOperator::Minus),
                    BinaryOperator::Minus if is_shift(right) => (left, right, BinaryOperator::Plus),
                    _ => return None,
                };
                key = Expr::BinaryExpr(BinaryExpr::new(Box::new(key), inverse, shift.clone()));
                side = inner;
            }
            _ => return None,
        }
    }
}

/// The expression cast and the type cast to.
fn cast_of(expr: &Expr) -> Option<(&Expr, &DataType)> {
    match expr {
        Expr::Cast(logical::Cast { expr, field }) | Expr::TryCast(logical::TryCast { expr, field }) => {
            Some((expr.as_ref(), field.data_type()))
        }
        _ => None,
    }
}

/// The time itself, maybe cast between timestamp units.
fn is_bare_time(expr: &Expr) -> bool {
    if is_epoch_time(expr) {
        return true;
    }
    match cast_of(expr) {
        Some((inner, DataType::Timestamp(unit, _))) if *unit != TimeUnit::Second => is_bare_time(inner),
        _ => false,
    }
}

/// A constant shift of days and time (no months: a month is not a fixed length).
fn is_shift(expr: &Expr) -> bool {
    match expr {
        Expr::Literal(value, _) => match value {
            ScalarValue::IntervalDayTime(Some(_)) | ScalarValue::DurationNanosecond(Some(_)) => true,
            ScalarValue::DurationMicrosecond(Some(_))
            | ScalarValue::DurationMillisecond(Some(_))
            | ScalarValue::DurationSecond(Some(_)) => true,
            ScalarValue::IntervalMonthDayNano(Some(v)) => v.months == 0,
            ScalarValue::IntervalYearMonth(_) => false,
            _ => false,
        },
        _ => cast_of(expr).is_some_and(|(inner, _)| is_shift(inner)),
    }
}

fn comparison(op: BinaryOperator) -> Option<TimeComparison> {
    Some(match op {
        BinaryOperator::Lt => TimeComparison::Lt,
        BinaryOperator::LtEq => TimeComparison::LtEq,
        BinaryOperator::Gt => TimeComparison::Gt,
        BinaryOperator::GtEq => TimeComparison::GtEq,
        BinaryOperator::Eq => TimeComparison::Eq,
        _ => return None,
    })
}
