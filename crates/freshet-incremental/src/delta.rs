//! The change batches that flow between operators.

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat, concat_batches, filter, filter_record_batch, take_arrays, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::hash_utils::{RandomState, create_hashes};

use freshet_common::{ChangeBatch, FreshetError, PARALLEL_MIN_ROWS, Result, part_of_hash, run_parts};

use crate::rows::RowCodec;

/// Rows with weights, the data and the weights kept apart so that operators can evaluate
/// expressions over the data as it is. The data's schema is the schema of the plan node that
/// produced it.
#[derive(Debug, Clone)]
pub struct Delta {
    /// The rows.
    pub data: RecordBatch,
    /// One weight per row: `+n` inserts n copies, `-n` deletes n copies.
    pub weights: Int64Array,
}

impl Delta {
    /// No changes.
    pub fn empty(schema: SchemaRef) -> Self {
        Self {
            data: RecordBatch::new_empty(schema),
            weights: Int64Array::from(Vec::<i64>::new()),
        }
    }

    /// Rows and their weights, which must be as many.
    pub fn new(data: RecordBatch, weights: Int64Array) -> Result<Self> {
        if data.num_rows() != weights.len() || weights.null_count() > 0 {
            return Err(FreshetError::Internal(format!(
                "a delta of {} rows has {} weights ({} null)",
                data.num_rows(),
                weights.len(),
                weights.null_count()
            )));
        }
        Ok(Self { data, weights })
    }

    /// Builds a batch of `schema` from columns (names and nullability are the schema's).
    pub fn from_columns(schema: &SchemaRef, columns: Vec<ArrayRef>, weights: Int64Array) -> Result<Self> {
        let data = if columns.is_empty() {
            let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(weights.len()));
            RecordBatch::try_new_with_options(schema.clone(), columns, &options)
        } else {
            RecordBatch::try_new(schema.clone(), columns)
        }
        .map_err(|e| FreshetError::Internal(format!("cannot build a change batch: {e}")))?;
        Self::new(data, weights)
    }

    /// The changes of change batches read from a table, as rows of `schema`.
    pub fn from_changes(schema: &SchemaRef, changes: &[ChangeBatch]) -> Result<Self> {
        let parts = changes
            .iter()
            .map(|c| {
                let data = c.data();
                Self::from_columns(schema, data.columns().to_vec(), c.weights().clone())
            })
            .collect::<Result<Vec<_>>>()?;
        Self::concat(schema, &parts)
    }

    /// Number of rows (not the sum of weights).
    pub fn len(&self) -> usize {
        self.data.num_rows()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.data.num_rows() == 0
    }

    /// The rows' schema.
    pub fn schema(&self) -> SchemaRef {
        self.data.schema()
    }

    /// The rows where `mask` is true (NULL counts as false).
    pub fn filter(&self, mask: &BooleanArray) -> Result<Self> {
        let data = filter_record_batch(&self.data, mask).map_err(internal)?;
        let weights = filter(&self.weights, mask).map_err(internal)?;
        Self::new(data, downcast_weights(&weights)?)
    }

    /// The rows at `indices`, in that order.
    pub fn take(&self, indices: &UInt32Array) -> Result<Self> {
        let data = take_record_batch(&self.data, indices).map_err(internal)?;
        let weights = datafusion::arrow::compute::take(&self.weights, indices, None).map_err(internal)?;
        Self::new(data, downcast_weights(&weights)?)
    }

    /// The same rows with the weights negated.
    pub fn negate(&self) -> Result<Self> {
        let weights = self
            .weights
            .iter()
            .map(|w| w.unwrap_or(0).checked_neg().ok_or_else(weight_overflow))
            .collect::<Result<Int64Array>>()?;
        Self::new(self.data.clone(), weights)
    }

    /// The same columns under another schema (names and nullability of a plan node).
    pub fn with_schema(self, schema: &SchemaRef) -> Result<Self> {
        Self::from_columns(schema, self.data.columns().to_vec(), self.weights)
    }

    /// All rows of `parts`, which have the columns of `schema`.
    pub fn concat(schema: &SchemaRef, parts: &[Delta]) -> Result<Self> {
        let parts: Vec<&Delta> = parts.iter().filter(|p| !p.is_empty()).collect();
        match parts.as_slice() {
            [] => Ok(Self::empty(schema.clone())),
            [one] => (*one).clone().with_schema(schema),
            _ => {
                let data = if schema.fields().is_empty() {
                    let rows = parts.iter().map(|p| p.len()).sum();
                    let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
                    RecordBatch::try_new_with_options(schema.clone(), vec![], &options).map_err(internal)?
                } else {
                    let batches: Vec<RecordBatch> = parts
                        .iter()
                        .map(|p| RecordBatch::try_new(schema.clone(), p.data.columns().to_vec()))
                        .collect::<Result<_, _>>()
                        .map_err(internal)?;
                    concat_batches(schema, &batches).map_err(internal)?
                };
                let weights: Vec<&dyn Array> = parts.iter().map(|p| &p.weights as &dyn Array).collect();
                let weights = concat(&weights).map_err(internal)?;
                Self::new(data, downcast_weights(&weights)?)
            }
        }
    }

    /// The delta without its changes that cancel: a row deleted and inserted again as it was —
    /// an UPDATE of columns the query does not read, which the scan's projection makes equal.
    /// Rows of equal hashes with weights of both signs are compared exactly (row-encoded) and
    /// an equal row's weights summed into its first place (dropped when they sum to zero);
    /// every other row stays as it is, in its order. A delta of one sign, or whose rows of
    /// opposite signs all differ, is given back as it is after one vectorized hash per row
    /// and a set of the deleted rows' hashes.
    ///
    /// Rows cancel only within equal hashes: a large delta's rows are dealt into `parts` by
    /// hash and each part searched on a thread of its own (a scan's changes pass here before
    /// any operator splits them; on one core, the search took a tenth of a TPC-H join query's
    /// refresh after 1 % changes).
    pub fn without_cancelled(self, parts: usize) -> Result<Self> {
        let all = 0..self.len();
        self.without_cancelled_within(parts, &[all])
    }

    /// [`Delta::without_cancelled`] among the rows of the ranges `searched` only: a row
    /// elsewhere stays as it is, whatever rows equal it.
    pub fn without_cancelled_within(self, parts: usize, searched: &[Range<usize>]) -> Result<Self> {
        let weights = self.weights.values();
        let searched_weights = || searched.iter().flat_map(|range| &weights[range.clone()]);
        let both_signs = searched_weights().any(|&w| w < 0) && searched_weights().any(|&w| w > 0);
        if !both_signs || self.data.num_columns() == 0 {
            return Ok(self);
        }
        let mut hashes = vec![0u64; self.len()];
        for range in searched {
            let columns: Vec<ArrayRef> = self
                .data
                .columns()
                .iter()
                .map(|c| c.slice(range.start, range.len()))
                .collect();
            create_hashes(&columns, &RandomState::default(), &mut hashes[range.clone()]).map_err(internal)?;
        }
        let rows: usize = searched.iter().map(ExactSizeIterator::len).sum();
        let parts = if rows >= PARALLEL_MIN_ROWS { parts.max(1) } else { 1 };
        let mut dealt: Vec<Vec<u32>> = vec![Vec::with_capacity(rows / parts + 1); parts];
        for i in searched.iter().cloned().flatten() {
            dealt[part_of_hash(hashes[i], parts)].push(i as u32);
        }
        let columns = self.data.columns();
        let found = run_parts(&mut dealt, parts > 1, |_, rows| {
            cancelling_among(rows, &hashes, weights, columns)
        });
        let mut summed = weights.to_vec();
        let mut keep = vec![true; self.len()];
        let mut cancelled = false;
        for part in found {
            for (i, weight) in part? {
                summed[i as usize] = weight;
                keep[i as usize] = weight != 0;
                cancelled |= weight == 0;
            }
        }
        if !cancelled {
            return Ok(self);
        }
        let mask = BooleanArray::from(keep);
        let data = filter_record_batch(&self.data, &mask).map_err(internal)?;
        let weights = filter(&Int64Array::from(summed), &mask).map_err(internal)?;
        Self::new(data, downcast_weights(&weights)?)
    }

    /// As a change batch (weight column last).
    pub fn into_change_batch(self) -> Result<ChangeBatch> {
        ChangeBatch::from_parts(&self.data, Arc::new(self.weights))
    }
}

/// Of `rows` (indices of a delta's rows, with their `hashes` and `weights`, over `columns`),
/// the rows whose hash rows of both signs share, each with its weight after cancelling: equal
/// rows' weights summed into the first of them, zero at the others. Rows of one sign, or whose
/// opposite rows all differ, are not among them.
fn cancelling_among(rows: &[u32], hashes: &[u64], weights: &[i64], columns: &[ArrayRef]) -> Result<Vec<(u32, i64)>> {
    let signed = |positive: bool| {
        rows.iter()
            .filter(move |&&i| {
                let w = weights[i as usize];
                (w > 0) == positive && w != 0
            })
            .map(|&i| hashes[i as usize])
    };
    // Sized up front: growing a set of tens of thousands of hashes rehashed it many times.
    let negatives = rows.iter().filter(|&&i| weights[i as usize] < 0).count();
    let mut deleted = foldhash::HashSet::with_capacity_and_hasher(negatives, Default::default());
    deleted.extend(signed(false));
    let mut shared = foldhash::HashSet::with_capacity_and_hasher(negatives, Default::default());
    shared.extend(signed(true).filter(|h| deleted.contains(h)));
    let candidates: Vec<u32> = rows
        .iter()
        .copied()
        .filter(|&i| shared.contains(&hashes[i as usize]))
        .collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let indices = UInt32Array::from_iter_values(candidates.iter().copied());
    let taken = take_arrays(columns, &indices, None).map_err(internal)?;
    let codec = RowCodec::new(columns.iter().map(|c| c.data_type().clone()))?;
    let encoded = codec.encode(&taken, candidates.len())?;
    // Each candidate's weight after cancelling, by its place among the candidates.
    let mut summed: Vec<i64> = candidates.iter().map(|&i| weights[i as usize]).collect();
    let mut first: foldhash::HashMap<&[u8], usize> =
        foldhash::HashMap::with_capacity_and_hasher(candidates.len(), Default::default());
    for j in 0..candidates.len() {
        let at = *first.entry(encoded.row(j).data()).or_insert(j);
        if at != j {
            summed[at] = summed[at].checked_add(summed[j]).ok_or_else(weight_overflow)?;
            summed[j] = 0;
        }
    }
    Ok(candidates.into_iter().zip(summed).collect())
}

/// The product of two weights; an overflow is an error, not a wrong answer.
pub(crate) fn multiply(a: i64, b: i64) -> Result<i64> {
    a.checked_mul(b).ok_or_else(weight_overflow)
}

pub(crate) fn weight_overflow() -> FreshetError {
    FreshetError::Internal("a row's multiplicity overflowed 64 bits".into())
}

/// A weights column as computed (filtered, concatenated) back as `Int64`.
pub(crate) fn downcast_weights(array: &ArrayRef) -> Result<Int64Array> {
    array
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| FreshetError::Internal("weights are not Int64".into()))
}

pub(crate) fn internal(e: impl std::fmt::Display) -> FreshetError {
    FreshetError::Internal(format!("incremental maintenance: {e}"))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int32Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn delta(rows: &[(i32, Option<&str>, i64)]) -> Delta {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        let data = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        Delta::new(data, Int64Array::from_iter_values(rows.iter().map(|r| r.2))).unwrap()
    }

    fn rows(delta: &Delta) -> Vec<(i32, Option<String>, i64)> {
        let keys = delta.data.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        let values = delta.data.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        (0..delta.len())
            .map(|i| {
                let value = values.is_valid(i).then(|| values.value(i).to_string());
                (keys.value(i), value, delta.weights.value(i))
            })
            .collect()
    }

    #[test]
    fn rows_deleted_and_inserted_unchanged_cancel_and_the_others_stay_in_order() {
        let changes = delta(&[
            (1, Some("a"), -1),
            (2, Some("b"), 1),
            (1, Some("a"), 1),
            (3, None, -1),
            (3, None, 2),
            (4, Some("x"), -1),
            (4, Some("y"), 1),
            (5, Some("c"), 1),
            (5, Some("c"), 1),
        ]);
        let kept = changes.without_cancelled(1).unwrap();
        let expected = vec![
            (2, Some("b".to_string()), 1),
            (3, None, 1),
            (4, Some("x".to_string()), -1),
            (4, Some("y".to_string()), 1),
            (5, Some("c".to_string()), 1),
            (5, Some("c".to_string()), 1),
        ];
        assert_eq!(rows(&kept), expected);
        // Of one sign: as it is.
        let inserts = delta(&[(1, Some("a"), 1), (1, Some("a"), 1)]);
        assert_eq!(rows(&inserts.clone().without_cancelled(2).unwrap()), rows(&inserts));
    }

    /// A delta large enough to be searched in parts gives what one part gives: the same rows,
    /// in the same order, with the same weights — and each distinct row's weight the sum of
    /// its copies' (when no row of it is left whole, as rows of one sign are).
    #[test]
    fn a_large_delta_cancels_the_same_in_parts() {
        let strings = ["a", "b", "c"];
        let input: Vec<(i32, Option<&str>, i64)> = (0..3 * PARALLEL_MIN_ROWS as i32)
            .map(|i| {
                let key = (i * 7919) % 5_003;
                let value = (key % 4 != 3).then(|| strings[(key % 3) as usize]);
                let weight = [1, -1, 2, -2, 1][(i % 5) as usize];
                (key, value, weight)
            })
            .collect();
        let changes = delta(&input);
        let one = rows(&changes.clone().without_cancelled(1).unwrap());
        let two = rows(&changes.without_cancelled(2).unwrap());
        assert_eq!(one, two);
        assert!(one.len() < input.len(), "some rows cancel");
        let mut sums: std::collections::BTreeMap<(i32, Option<String>), i64> = Default::default();
        for &(k, v, w) in &input {
            *sums.entry((k, v.map(str::to_string))).or_default() += w;
        }
        let mut kept: std::collections::BTreeMap<(i32, Option<String>), i64> = Default::default();
        for (k, v, w) in one {
            *kept.entry((k, v)).or_default() += w;
        }
        sums.retain(|_, w| *w != 0);
        kept.retain(|_, w| *w != 0);
        assert_eq!(kept, sums);
    }
}
