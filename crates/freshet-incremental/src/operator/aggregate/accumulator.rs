//! Retractable accumulators: the state of one aggregate, for every group.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array, RecordBatch, UInt64Array,
    new_null_array,
};
use datafusion::arrow::buffer::ScalarBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, UInt64Type};
use datafusion::arrow::row::Rows;

use freshet_common::{FreshetError, Result, RowKey};

use super::AggregateSpec;
use super::float_sum::FloatSums;
use crate::checkpoint::{StateReader, StateWriter};
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

/// The state of one aggregate for every group, by the group's slot: one column per aggregate,
/// so that an epoch updates it in a tight loop over the changed rows. A group's parts of one
/// aggregate (a sum and its count) are side by side: a group an epoch touches is one cache
/// line of each column.
#[derive(Debug)]
pub(crate) enum Accumulators {
    /// A COUNT whose argument is never NULL and that has no FILTER: the group's row count,
    /// which the aggregate keeps anyway, so no state of its own.
    Rows,
    /// Non-null values counted.
    Count(Vec<i64>),
    /// Exact sums of integers or of decimals' unscaled values, and how many.
    Exact(Vec<Tally<i128>>),
    /// Exact sums of floats, and how many.
    Float(FloatSums),
    /// The multiset of values (row-encoded, so ordered as the values are), and the memory the
    /// multisets hold.
    Values {
        sets: Vec<BTreeMap<RowKey, i64>>,
        bytes: usize,
    },
    /// A MIN or MAX over rows that are only ever inserted: no value can leave, so the extreme
    /// alone (row-encoded), and the memory the values hold.
    Extreme {
        max: bool,
        extremes: Vec<Option<RowKey>>,
        bytes: usize,
    },
    /// Trues and falses counted.
    Bools(Vec<Truths>),
}

/// A sum and how many values it adds. Packed to 8-byte alignment: an exact sum's `i128` would
/// otherwise pad every group's entry from 24 to 32 bytes.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, packed(8))]
pub(crate) struct Tally<T: Copy> {
    sum: T,
    count: i64,
}

/// How many of a group's values are true, and how many false.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Truths {
    trues: i64,
    falses: i64,
}

/// Memory of one entry of a MIN/MAX/COUNT(DISTINCT) multiset besides its key's heap bytes.
const VALUE_ENTRY_BYTES: usize = 56;

impl Accumulators {
    pub(crate) fn new(spec: &AggregateSpec) -> Self {
        match spec.kind {
            AggregateKind::Count if spec.counts_rows => Accumulators::Rows,
            AggregateKind::Count => Accumulators::Count(Vec::new()),
            AggregateKind::Sum | AggregateKind::Avg if is_float(&spec.arg_type) => {
                Accumulators::Float(FloatSums::new())
            }
            AggregateKind::Sum | AggregateKind::Avg => Accumulators::Exact(Vec::new()),
            AggregateKind::Min | AggregateKind::Max if spec.of_inserts => Accumulators::Extreme {
                max: spec.kind == AggregateKind::Max,
                extremes: Vec::new(),
                bytes: 0,
            },
            AggregateKind::Min | AggregateKind::Max | AggregateKind::CountDistinct => Accumulators::Values {
                sets: Vec::new(),
                bytes: 0,
            },
            AggregateKind::BoolAnd | AggregateKind::BoolOr => Accumulators::Bools(Vec::new()),
        }
    }

    /// Makes room for `more` slots beyond those held.
    pub(crate) fn reserve(&mut self, more: usize) {
        match self {
            Accumulators::Rows => {}
            Accumulators::Count(counts) => counts.reserve(more),
            Accumulators::Exact(tallies) => tallies.reserve(more),
            Accumulators::Float(sums) => sums.reserve(more),
            Accumulators::Values { sets, .. } => sets.reserve(more),
            Accumulators::Extreme { extremes, .. } => extremes.reserve(more),
            Accumulators::Bools(truths) => truths.reserve(more),
        }
    }

    /// Adds a slot holding an empty state.
    pub(crate) fn push(&mut self) {
        match self {
            Accumulators::Rows => {}
            Accumulators::Count(counts) => counts.push(0),
            Accumulators::Exact(tallies) => tallies.push(Tally::default()),
            Accumulators::Float(sums) => sums.push(),
            Accumulators::Values { sets, .. } => sets.push(BTreeMap::new()),
            Accumulators::Extreme { extremes, .. } => extremes.push(None),
            Accumulators::Bools(truths) => truths.push(Truths::default()),
        }
    }

    /// Empties the state of a slot whose group is gone, so that the slot can be reused.
    pub(crate) fn clear(&mut self, slot: usize) {
        match self {
            Accumulators::Rows => {}
            Accumulators::Count(counts) => counts[slot] = 0,
            Accumulators::Exact(tallies) => tallies[slot] = Tally::default(),
            Accumulators::Float(sums) => sums.clear(slot),
            Accumulators::Values { sets, bytes } => {
                let set = std::mem::take(&mut sets[slot]);
                *bytes = bytes.saturating_sub(set.keys().map(value_bytes).sum());
            }
            Accumulators::Extreme { extremes, bytes, .. } => {
                if let Some(value) = extremes[slot].take() {
                    *bytes = bytes.saturating_sub(value.heap_bytes());
                }
            }
            Accumulators::Bools(truths) => truths[slot] = Truths::default(),
        }
    }

    /// Writes a slot's state for a checkpoint.
    pub(crate) fn save_slot(&self, slot: usize, out: &mut StateWriter) {
        match self {
            Accumulators::Rows => {}
            Accumulators::Count(counts) => {
                out.i64(counts[slot]);
            }
            Accumulators::Exact(tallies) => {
                let Tally { sum, count } = tallies[slot];
                out.i128(sum).i64(count);
            }
            Accumulators::Float(sums) => sums.save_slot(slot as u32, out),
            Accumulators::Values { sets, .. } => {
                out.i64(sets[slot].len() as i64);
                for (value, n) in &sets[slot] {
                    out.bytes(value.as_bytes()).i64(*n);
                }
            }
            // As a multiset of the one value (so either kind reads the other's).
            Accumulators::Extreme { extremes, .. } => {
                out.i64(i64::from(extremes[slot].is_some()));
                if let Some(value) = &extremes[slot] {
                    out.bytes(value.as_bytes()).i64(1);
                }
            }
            Accumulators::Bools(truths) => {
                let Truths { trues, falses } = truths[slot];
                out.i64(trues).i64(falses);
            }
        }
    }

    /// Reads a slot's state written by [`Accumulators::save_slot`] into an empty slot.
    pub(crate) fn restore_slot(&mut self, slot: usize, input: &mut StateReader<'_>) -> Result<()> {
        match self {
            Accumulators::Rows => {}
            Accumulators::Count(counts) => counts[slot] = input.i64()?,
            Accumulators::Exact(tallies) => {
                let (sum, count) = (input.i128()?, input.i64()?);
                tallies[slot] = Tally { sum, count };
            }
            Accumulators::Float(sums) => sums.restore_slot(slot as u32, input)?,
            Accumulators::Values { sets, bytes } => {
                for _ in 0..input.i64()? {
                    let value = RowKey::from(input.bytes()?);
                    let n = input.i64()?;
                    *bytes += value_bytes(&value);
                    sets[slot].insert(value, n);
                }
            }
            Accumulators::Extreme { max, extremes, bytes } => {
                for _ in 0..input.i64()? {
                    let value = input.bytes()?;
                    input.i64()?;
                    offer(*max, &mut extremes[slot], value, bytes);
                }
            }
            Accumulators::Bools(truths) => {
                let (trues, falses) = (input.i64()?, input.i64()?);
                truths[slot] = Truths { trues, falses };
            }
        }
        Ok(())
    }

    /// Memory held: `slots` slots of fixed-size state plus the multisets' contents.
    pub(crate) fn bytes(&self, slots: usize) -> usize {
        match self {
            Accumulators::Rows => 0,
            Accumulators::Count(_) => slots * 8,
            Accumulators::Exact(_) => slots * size_of::<Tally<i128>>(),
            Accumulators::Float(sums) => sums.bytes(slots),
            Accumulators::Bools(_) => slots * 16,
            Accumulators::Values { bytes, .. } => slots * 24 + bytes,
            Accumulators::Extreme { bytes, .. } => slots * size_of::<Option<RowKey>>() + bytes,
        }
    }

    /// Adds each row of a delta, its weight times (negative: removes), to the state of its
    /// group's slot (`slots[row]`), visiting the rows in `order` (every row once; the rows of
    /// one group in their own order, so that sums add in the same order whatever `order` is).
    pub(crate) fn apply(&mut self, arguments: &Arguments, slots: &[u32], weights: &[i64], order: &[u32]) -> Result<()> {
        let valid = &arguments.valid;
        let rows = order.iter().map(|&row| row as usize).filter(|&row| valid[row]);
        match (&arguments.values, self) {
            // Kept by the aggregate as its row count.
            (_, Accumulators::Rows) => {}
            (Values::Present, Accumulators::Count(counts)) => {
                for row in rows {
                    counts[slots[row] as usize] += weights[row];
                }
            }
            (Values::Exact(values), Accumulators::Exact(tallies)) => {
                for row in rows {
                    let tally = &mut tallies[slots[row] as usize];
                    let weight = weights[row];
                    // Inserted and deleted rows (weights 1 and -1) without a 128-bit product.
                    let change = match weight {
                        1 => Some(values[row]),
                        -1 => values[row].checked_neg(),
                        _ => values[row].checked_mul(i128::from(weight)),
                    };
                    tally.sum = change
                        .and_then(|d| tally.sum.checked_add(d))
                        .ok_or_else(|| FreshetError::InvalidStatement("SUM overflowed 128 bits".into()))?;
                    tally.count += weight;
                }
            }
            (Values::Float(values), Accumulators::Float(sums)) => {
                let values = values.values();
                for row in rows {
                    sums.add(slots[row], values[row], weights[row]);
                }
            }
            (Values::Rows(values), Accumulators::Values { sets, bytes }) => {
                for row in rows {
                    let value = values.row(row);
                    let set = &mut sets[slots[row] as usize];
                    match set.get_mut(value.data()) {
                        Some(n) => {
                            *n += weights[row];
                            if *n == 0
                                && let Some((key, _)) = set.remove_entry(value.data())
                            {
                                *bytes = bytes.saturating_sub(value_bytes(&key));
                            }
                        }
                        None => {
                            let key = RowKey::from(value.data());
                            *bytes += value_bytes(&key);
                            set.insert(key, weights[row]);
                        }
                    }
                }
            }
            (Values::Rows(values), Accumulators::Extreme { max, extremes, bytes }) => {
                for row in rows {
                    if weights[row] < 0 {
                        return Err(internal("a row was retracted from a MIN/MAX of inserted rows only"));
                    }
                    offer(*max, &mut extremes[slots[row] as usize], values.row(row).data(), bytes);
                }
            }
            (Values::Bools(values), Accumulators::Bools(truths)) => {
                for row in rows {
                    let truths = &mut truths[slots[row] as usize];
                    if values.value(row) {
                        truths.trues += weights[row];
                    } else {
                        truths.falses += weights[row];
                    }
                }
            }
            _ => return Err(internal("an accumulator got values of another kind")),
        }
        Ok(())
    }

    /// The aggregate's value for the groups in `slots`, as an array of `spec.output_type` (or
    /// of a type that casts to it); `group_rows` gives a slot's row count.
    pub(crate) fn evaluate(
        &self,
        spec: &AggregateSpec,
        codec: Option<&RowCodec>,
        slots: &[u32],
        group_rows: impl Fn(u32) -> i64,
    ) -> Result<ArrayRef> {
        let mismatch = || internal(format!("{}: accumulator of another kind", spec.display));
        match (spec.kind, self) {
            (AggregateKind::Count, Accumulators::Rows) => Ok(Arc::new(Int64Array::from_iter_values(
                slots.iter().map(|&s| group_rows(s)),
            ))),
            (AggregateKind::Count, Accumulators::Count(counts)) => Ok(Arc::new(Int64Array::from_iter_values(
                slots.iter().map(|&s| counts[s as usize]),
            ))),
            (AggregateKind::CountDistinct, Accumulators::Values { sets, .. }) => Ok(Arc::new(
                Int64Array::from_iter_values(slots.iter().map(|&s| sets[s as usize].len() as i64)),
            )),
            (AggregateKind::Sum | AggregateKind::Avg, Accumulators::Float(sums)) => {
                let average = spec.kind == AggregateKind::Avg;
                Ok(Arc::new(
                    slots
                        .iter()
                        .map(|&s| match sums.value(s) {
                            (Some(sum), count) if average => Some(sum / count as f64),
                            (sum, _) => sum,
                        })
                        .collect::<Float64Array>(),
                ))
            }
            (AggregateKind::Sum | AggregateKind::Avg, Accumulators::Exact(tallies)) => finish_exact(
                spec,
                slots
                    .iter()
                    .map(|&s| (tallies[s as usize].sum, tallies[s as usize].count)),
            ),
            (AggregateKind::Min | AggregateKind::Max, Accumulators::Values { sets, .. }) => decode_extremes(
                spec,
                codec,
                slots.iter().map(|&s| {
                    let values = &sets[s as usize];
                    if spec.kind == AggregateKind::Min {
                        values.keys().next()
                    } else {
                        values.keys().next_back()
                    }
                }),
            ),
            (AggregateKind::Min | AggregateKind::Max, Accumulators::Extreme { extremes, .. }) => {
                decode_extremes(spec, codec, slots.iter().map(|&s| extremes[s as usize].as_ref()))
            }
            (AggregateKind::BoolAnd | AggregateKind::BoolOr, Accumulators::Bools(truths)) => {
                let and = spec.kind == AggregateKind::BoolAnd;
                Ok(Arc::new(
                    slots
                        .iter()
                        .map(|&s| {
                            let Truths { trues, falses } = truths[s as usize];
                            (trues + falses != 0).then_some(if and { falses == 0 } else { trues > 0 })
                        })
                        .collect::<BooleanArray>(),
                ))
            }
            _ => Err(mismatch()),
        }
    }
}

/// Keeps `value` (row-encoded) in `extreme` if it is beyond it: greater for a MAX, less for a
/// MIN (row encoding orders as the values do).
fn offer(max: bool, extreme: &mut Option<RowKey>, value: &[u8], bytes: &mut usize) {
    let beyond = extreme.as_ref().is_none_or(|current| {
        let current = current.as_bytes();
        if max { value > current } else { value < current }
    });
    if beyond {
        let value = RowKey::from(value);
        *bytes += value.heap_bytes();
        if let Some(old) = extreme.replace(value) {
            *bytes = bytes.saturating_sub(old.heap_bytes());
        }
    }
}

/// The values of MIN or MAX from each group's extreme (row-encoded; NULL where none).
fn decode_extremes<'a>(
    spec: &AggregateSpec,
    codec: Option<&RowCodec>,
    extremes: impl Iterator<Item = Option<&'a RowKey>>,
) -> Result<ArrayRef> {
    let codec = codec.ok_or_else(|| internal("no value codec"))?;
    let null_value = codec.encode(&[new_null_array(&spec.arg_type, 1)], 1)?;
    let parser = codec.parser();
    let rows = extremes.map(|extreme| extreme.map_or_else(|| null_value.row(0), |r| parser.parse(r.as_bytes())));
    let mut columns = codec.decode(rows)?;
    columns.pop().ok_or_else(|| internal("no MIN/MAX column"))
}

fn value_bytes(key: &RowKey) -> usize {
    VALUE_ENTRY_BYTES + key.heap_bytes()
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
    /// A NULL's place holds any value (`valid` leaves it out).
    Exact(ScalarBuffer<i128>),
    Float(Float64Array),
    Rows(Rows),
    Bools(BooleanArray),
}

impl Arguments {
    /// Evaluates the argument and the FILTER over `batch`.
    pub(crate) fn evaluate(spec: &AggregateSpec, codec: Option<&RowCodec>, batch: &RecordBatch) -> Result<Self> {
        if spec.counts_rows {
            // Counted by the group's row count.
            return Ok(Self {
                valid: Vec::new(),
                values: Values::Present,
            });
        }
        let array = spec.arg.evaluate(batch)?;
        let keep = match &spec.filter {
            Some(filter) => Some(filter.mask(batch)?),
            None => None,
        };
        // From the null bitmaps: asking the array row by row goes through its vtable.
        let mut valid: Vec<bool> = match array.logical_nulls() {
            Some(nulls) => nulls.iter().collect(),
            None => vec![true; array.len()],
        };
        if let Some(keep) = &keep {
            for (i, valid) in valid.iter_mut().enumerate() {
                *valid &= keep.is_valid(i) && keep.value(i);
            }
        }
        let values = match spec.kind {
            AggregateKind::Count => Values::Present,
            AggregateKind::Sum | AggregateKind::Avg => match array.data_type() {
                t if is_float(t) => {
                    let floats = cast(&array, &DataType::Float64).map_err(internal)?;
                    Values::Float(floats.as_primitive::<Float64Type>().clone())
                }
                // The values as they are, without a look at each one's validity.
                DataType::Decimal128(_, _) => Values::Exact(array.as_primitive::<Decimal128Type>().values().clone()),
                t if t.is_unsigned_integer() => {
                    let wide = cast(&array, &DataType::UInt64).map_err(internal)?;
                    Values::Exact(
                        wide.as_primitive::<UInt64Type>()
                            .values()
                            .iter()
                            .map(|&v| i128::from(v))
                            .collect(),
                    )
                }
                t if t.is_integer() => {
                    let wide = cast(&array, &DataType::Int64).map_err(internal)?;
                    Values::Exact(
                        wide.as_primitive::<Int64Type>()
                            .values()
                            .iter()
                            .map(|&v| i128::from(v))
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
}

/// SUM or AVG of exact sums, one per (sum, count): NULL where the count is 0.
fn finish_exact(spec: &AggregateSpec, groups: impl Iterator<Item = (i128, i64)>) -> Result<ArrayRef> {
    let overflow = || FreshetError::InvalidStatement(format!("{} overflowed {}", spec.display, spec.output_type));
    let average = spec.kind == AggregateKind::Avg;
    Ok(match &spec.output_type {
        DataType::Decimal128(precision, scale) => {
            let factor = if average {
                let DataType::Decimal128(_, input_scale) = spec.arg_type else {
                    return Err(internal(format!("{} over {}", spec.display, spec.arg_type)));
                };
                10i128
                    .checked_pow(u32::try_from(*scale - input_scale).map_err(internal)?)
                    .ok_or_else(overflow)?
            } else {
                1
            };
            let values = groups
                .map(|(sum, count)| match count {
                    0 => Ok(None),
                    _ if average => Ok(Some(sum.checked_mul(factor).ok_or_else(overflow)? / i128::from(count))),
                    _ => Ok(Some(sum)),
                })
                .collect::<Result<Decimal128Array>>()?;
            Arc::new(values.with_precision_and_scale(*precision, *scale).map_err(internal)?)
        }
        DataType::Float64 => Arc::new(
            groups
                .map(|(sum, count)| (count != 0).then(|| if average { sum as f64 / count as f64 } else { sum as f64 }))
                .collect::<Float64Array>(),
        ),
        DataType::UInt64 => Arc::new(
            groups
                .map(|(sum, count)| match count {
                    0 => Ok(None),
                    _ => u64::try_from(sum).map(Some).map_err(|_| overflow()),
                })
                .collect::<Result<UInt64Array>>()?,
        ),
        _ => Arc::new(
            groups
                .map(|(sum, count)| match count {
                    0 => Ok(None),
                    _ => i64::try_from(sum).map(Some).map_err(|_| overflow()),
                })
                .collect::<Result<Int64Array>>()?,
        ),
    })
}
