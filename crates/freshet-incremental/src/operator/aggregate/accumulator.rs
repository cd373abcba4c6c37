//! Retractable accumulators: the state of one aggregate in one group.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, new_null_array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, UInt64Type};
use datafusion::arrow::row::Rows;
use datafusion::common::ScalarValue;

use freshet_common::{FreshetError, Result};

use super::AggregateSpec;
use crate::delta::internal;
use crate::rows::RowCodec;

/// The aggregates maintained incrementally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggregateKind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    CountDistinct,
    BoolAnd,
    BoolOr,
}

impl AggregateKind {
    /// The aggregate for a DataFusion function name, if it is maintained.
    pub(crate) fn of(name: &str, distinct: bool) -> Option<Self> {
        Some(match (name, distinct) {
            ("count", false) => AggregateKind::Count,
            ("count", true) => AggregateKind::CountDistinct,
            ("sum", false) => AggregateKind::Sum,
            ("avg" | "mean", false) => AggregateKind::Avg,
            ("min", _) => AggregateKind::Min,
            ("max", _) => AggregateKind::Max,
            ("bool_and", _) => AggregateKind::BoolAnd,
            ("bool_or", _) => AggregateKind::BoolOr,
            _ => return None,
        })
    }

    /// Whether the aggregate can be maintained over values of this type.
    pub(crate) fn accepts(self, data_type: &DataType) -> bool {
        match self {
            AggregateKind::Count => true,
            AggregateKind::Sum | AggregateKind::Avg => summable(data_type),
            AggregateKind::BoolAnd | AggregateKind::BoolOr => data_type == &DataType::Boolean,
            AggregateKind::Min | AggregateKind::Max | AggregateKind::CountDistinct => {
                datafusion::arrow::row::RowConverter::supports_fields(&[datafusion::arrow::row::SortField::new(
                    data_type.clone(),
                )])
            }
        }
    }

    /// Whether the state is the multiset of values.
    pub(crate) fn keeps_values(self) -> bool {
        matches!(
            self,
            AggregateKind::Min | AggregateKind::Max | AggregateKind::CountDistinct
        )
    }
}

/// The state of one aggregate in one group.
#[derive(Debug)]
pub(crate) enum Accumulator {
    /// Non-null values counted.
    Count(i64),
    /// Exact sum of integers or of decimals' unscaled values, and how many.
    Exact { sum: i128, count: i64 },
    /// Sum of floats, and how many.
    Float { sum: f64, count: i64 },
    /// The multiset of values (row-encoded, so ordered as the values are).
    Values(BTreeMap<Box<[u8]>, i64>),
    /// Trues and falses counted.
    Bools { trues: i64, falses: i64 },
}

impl Accumulator {
    pub(crate) fn new(spec: &AggregateSpec) -> Self {
        match spec.kind {
            AggregateKind::Count => Accumulator::Count(0),
            AggregateKind::Sum | AggregateKind::Avg if is_float(&spec.arg_type) => {
                Accumulator::Float { sum: 0.0, count: 0 }
            }
            AggregateKind::Sum | AggregateKind::Avg => Accumulator::Exact { sum: 0, count: 0 },
            AggregateKind::Min | AggregateKind::Max | AggregateKind::CountDistinct => {
                Accumulator::Values(BTreeMap::new())
            }
            AggregateKind::BoolAnd | AggregateKind::BoolOr => Accumulator::Bools { trues: 0, falses: 0 },
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        match self {
            Accumulator::Values(values) => values.keys().map(|k| k.len() + 40).sum::<usize>() + 24,
            _ => 32,
        }
    }
}

fn is_float(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

/// Whether SUM and AVG can be maintained over values of this type.
fn summable(data_type: &DataType) -> bool {
    is_float(data_type) || data_type.is_integer() || matches!(data_type, DataType::Decimal128(_, _))
}

/// An aggregate's argument values for the rows of one delta. NULL values (and rows the
/// aggregate's FILTER rejects) are skipped by every aggregate.
pub(crate) struct Arguments {
    valid: Vec<bool>,
    values: Values,
}

enum Values {
    /// Only presence matters (COUNT).
    Present,
    Exact(Vec<i128>),
    Float(Float64Array),
    Rows(Rows),
    Bools(BooleanArray),
}

impl Arguments {
    /// Evaluates the argument and the FILTER over `batch`.
    pub(crate) fn evaluate(spec: &AggregateSpec, codec: Option<&RowCodec>, batch: &RecordBatch) -> Result<Self> {
        let array = spec.arg.evaluate(batch)?;
        let keep = match &spec.filter {
            Some(filter) => Some(filter.mask(batch)?),
            None => None,
        };
        let valid = (0..array.len())
            .map(|i| array.is_valid(i) && keep.as_ref().is_none_or(|k| k.is_valid(i) && k.value(i)))
            .collect();
        let values = match spec.kind {
            AggregateKind::Count => Values::Present,
            AggregateKind::Sum | AggregateKind::Avg => match array.data_type() {
                t if is_float(t) => {
                    let floats = cast(&array, &DataType::Float64).map_err(internal)?;
                    Values::Float(floats.as_primitive::<Float64Type>().clone())
                }
                DataType::Decimal128(_, _) => Values::Exact(
                    array
                        .as_primitive::<Decimal128Type>()
                        .iter()
                        .map(|v| v.unwrap_or(0))
                        .collect(),
                ),
                t if t.is_unsigned_integer() => {
                    let wide = cast(&array, &DataType::UInt64).map_err(internal)?;
                    Values::Exact(
                        wide.as_primitive::<UInt64Type>()
                            .iter()
                            .map(|v| i128::from(v.unwrap_or(0)))
                            .collect(),
                    )
                }
                t if t.is_integer() => {
                    let wide = cast(&array, &DataType::Int64).map_err(internal)?;
                    Values::Exact(
                        wide.as_primitive::<Int64Type>()
                            .iter()
                            .map(|v| i128::from(v.unwrap_or(0)))
                            .collect(),
                    )
                }
                other => return Err(internal(format!("{} over {other}", spec.display))),
            },
            AggregateKind::Min | AggregateKind::Max | AggregateKind::CountDistinct => {
                let codec = codec.ok_or_else(|| internal("no value codec"))?;
                Values::Rows(codec.encode(std::slice::from_ref(&array), array.len())?)
            }
            AggregateKind::BoolAnd | AggregateKind::BoolOr => Values::Bools(
                array
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .cloned()
                    .ok_or_else(|| internal(format!("{} over {}", spec.display, array.data_type())))?,
            ),
        };
        Ok(Self { valid, values })
    }

    /// Adds row `row` of the delta, `weight` times (negative: removes), to `accumulator`.
    pub(crate) fn apply(&self, accumulator: &mut Accumulator, row: usize, weight: i64) -> Result<()> {
        if !self.valid[row] {
            return Ok(());
        }
        match (&self.values, accumulator) {
            (Values::Present, Accumulator::Count(n)) => *n += weight,
            (Values::Exact(values), Accumulator::Exact { sum, count }) => {
                *sum = values[row]
                    .checked_mul(i128::from(weight))
                    .and_then(|d| sum.checked_add(d))
                    .ok_or_else(|| FreshetError::InvalidStatement("SUM overflowed 128 bits".into()))?;
                *count += weight;
            }
            (Values::Float(values), Accumulator::Float { sum, count }) => {
                *count += weight;
                // Back to exactly zero when the last value leaves, so no drift survives it.
                *sum = if *count == 0 {
                    0.0
                } else {
                    *sum + values.value(row) * weight as f64
                };
            }
            (Values::Rows(rows), Accumulator::Values(multiset)) => {
                let value = rows.row(row);
                match multiset.get_mut(value.data()) {
                    Some(n) => {
                        *n += weight;
                        if *n == 0 {
                            multiset.remove(value.data());
                        }
                    }
                    None => {
                        multiset.insert(value.data().into(), weight);
                    }
                }
            }
            (Values::Bools(values), Accumulator::Bools { trues, falses }) => {
                if values.value(row) {
                    *trues += weight;
                } else {
                    *falses += weight;
                }
            }
            _ => return Err(internal("an accumulator got values of another kind")),
        }
        Ok(())
    }
}

/// The aggregate's value for each of `accumulators`, as an array of `spec.output_type` (or of
/// a type that casts to it).
pub(crate) fn evaluate(
    spec: &AggregateSpec,
    codec: Option<&RowCodec>,
    accumulators: &[&Accumulator],
) -> Result<ArrayRef> {
    if accumulators.is_empty() {
        return Ok(new_null_array(&spec.output_type, 0));
    }
    let mismatch = || internal(format!("{}: accumulator of another kind", spec.display));
    match spec.kind {
        AggregateKind::Count => {
            let counts = accumulators
                .iter()
                .map(|a| match a {
                    Accumulator::Count(n) => Ok(*n),
                    _ => Err(mismatch()),
                })
                .collect::<Result<Int64Array>>()?;
            Ok(Arc::new(counts))
        }
        AggregateKind::CountDistinct => {
            let counts = accumulators
                .iter()
                .map(|a| match a {
                    Accumulator::Values(values) => Ok(values.len() as i64),
                    _ => Err(mismatch()),
                })
                .collect::<Result<Int64Array>>()?;
            Ok(Arc::new(counts))
        }
        AggregateKind::Sum | AggregateKind::Avg => {
            let scalars = accumulators
                .iter()
                .map(|a| finish_sum(spec, a))
                .collect::<Result<Vec<_>>>()?;
            Ok(ScalarValue::iter_to_array(scalars)?)
        }
        AggregateKind::Min | AggregateKind::Max => {
            let codec = codec.ok_or_else(|| internal("no value codec"))?;
            let null_value = codec.encode(&[new_null_array(&spec.arg_type, 1)], 1)?;
            let parser = codec.parser();
            let mut rows = Vec::with_capacity(accumulators.len());
            for a in accumulators {
                let Accumulator::Values(values) = a else {
                    return Err(mismatch());
                };
                let extreme = if spec.kind == AggregateKind::Min {
                    values.keys().next()
                } else {
                    values.keys().next_back()
                };
                rows.push(extreme.map(|r| parser.parse(r)).unwrap_or_else(|| null_value.row(0)));
            }
            let mut columns = codec.decode(rows)?;
            columns.pop().ok_or_else(|| internal("no MIN/MAX column"))
        }
        AggregateKind::BoolAnd | AggregateKind::BoolOr => {
            let values = accumulators
                .iter()
                .map(|a| match a {
                    Accumulator::Bools { trues, falses } if trues + falses == 0 => Ok(None),
                    Accumulator::Bools { trues, falses } => Ok(Some(if spec.kind == AggregateKind::BoolAnd {
                        *falses == 0
                    } else {
                        *trues > 0
                    })),
                    _ => Err(mismatch()),
                })
                .collect::<Result<BooleanArray>>()?;
            Ok(Arc::new(values))
        }
    }
}

/// SUM or AVG of one group: NULL when it has no values.
fn finish_sum(spec: &AggregateSpec, accumulator: &Accumulator) -> Result<ScalarValue> {
    let overflow = || FreshetError::InvalidStatement(format!("{} overflowed {}", spec.display, spec.output_type));
    let average = spec.kind == AggregateKind::Avg;
    Ok(match (accumulator, &spec.output_type) {
        (Accumulator::Exact { count: 0, .. } | Accumulator::Float { count: 0, .. }, t) => ScalarValue::try_from(t)?,
        (Accumulator::Float { sum, count }, _) => {
            ScalarValue::Float64(Some(if average { sum / *count as f64 } else { *sum }))
        }
        (Accumulator::Exact { sum, count }, DataType::Decimal128(precision, scale)) => {
            let value = if average {
                let DataType::Decimal128(_, input_scale) = spec.arg_type else {
                    return Err(internal(format!("{} over {}", spec.display, spec.arg_type)));
                };
                let factor = 10i128
                    .checked_pow(u32::try_from(*scale - input_scale).map_err(internal)?)
                    .ok_or_else(overflow)?;
                sum.checked_mul(factor).ok_or_else(overflow)? / i128::from(*count)
            } else {
                *sum
            };
            ScalarValue::Decimal128(Some(value), *precision, *scale)
        }
        (Accumulator::Exact { sum, count }, DataType::Float64) => ScalarValue::Float64(Some(if average {
            *sum as f64 / *count as f64
        } else {
            *sum as f64
        })),
        (Accumulator::Exact { sum, .. }, DataType::UInt64) => {
            ScalarValue::UInt64(Some(u64::try_from(*sum).map_err(|_| overflow())?))
        }
        (Accumulator::Exact { sum, .. }, _) => ScalarValue::Int64(Some(i64::try_from(*sum).map_err(|_| overflow())?)),
        _ => return Err(internal(format!("{}: accumulator of another kind", spec.display))),
    })
}
