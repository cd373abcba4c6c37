//! What a rebuilt operator state found wrong with the table it maintains.
//!
//! A rebuilt pipeline's output is compared with the table's rows, and the difference (the
//! correction) is applied with the next refresh, so that every later retraction finds the row
//! it retracts. Most of a correction is expected: a full refresh sums floats in DataFusion's
//! order, the pipeline sums them exactly, and the two may differ in their last bits. Anything
//! else — a row missing, a count or a text that differs — means the table had drifted from its
//! query. That part is counted (in the refresh history) and logged, never applied in silence.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::arrow::row::{RowConverter, SortField};

use freshet_common::{ChangeBatch, FreshetError, Result};

/// Difference under which two floats are the same value rounded differently: relative to the
/// larger, but never finer than this much absolute. A sum whose terms cancel is exact in the
/// pipeline and carries the rounding of its largest terms in batch evaluation (the sum of 1.5,
/// −3.0, 1.5 and 1e-300 is 1e-300 exactly and 0 in batch), so below magnitude one the bound is
/// absolute: a smaller difference between small values is not reported as drift (it is still
/// corrected).
const ROUNDING: f64 = 1e-9;

/// The rows of a correction that are not float re-roundings: a retracted and an inserted row
/// pair up when their other columns are equal and their floats agree within [`ROUNDING`];
/// what does not pair up (counting copies) drifted.
pub(crate) fn drifted_rows(correction: &ChangeBatch) -> Result<u64> {
    let data = correction.data();
    let weights = correction.weights().values();
    let float_columns: Vec<usize> = (0..data.num_columns())
        .filter(|&i| {
            matches!(
                data.column(i).data_type(),
                DataType::Float16 | DataType::Float32 | DataType::Float64
            )
        })
        .collect();
    if float_columns.is_empty() {
        // Consolidated: every row differs.
        return Ok(weights.iter().map(|w| w.unsigned_abs()).sum());
    }
    let others: Vec<usize> = (0..data.num_columns()).filter(|i| !float_columns.contains(i)).collect();
    let keys = encode(&data, &others)?;
    let floats = float_values(&data, &float_columns)?;

    // Rows grouped by their other columns; within a group, each inserted copy takes a
    // retracted copy whose floats agree.
    let mut groups: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for row in 0..data.num_rows() {
        groups.entry(key_of(&keys, row)).or_default().push(row);
    }
    let mut drifted = 0u64;
    for rows in groups.values() {
        let mut retracted: Vec<(usize, i64)> = rows
            .iter()
            .filter(|&&r| weights[r] < 0)
            .map(|&r| (r, -weights[r]))
            .collect();
        for &row in rows.iter().filter(|&&r| weights[r] > 0) {
            let mut copies = weights[row];
            for (other, left) in retracted.iter_mut().filter(|(_, left)| *left > 0) {
                if copies == 0 {
                    break;
                }
                if floats.iter().all(|column| agree(column[row], column[*other])) {
                    let paired = copies.min(*left);
                    copies -= paired;
                    *left -= paired;
                }
            }
            drifted += copies.unsigned_abs();
        }
        drifted += retracted.iter().map(|(_, left)| left.unsigned_abs()).sum::<u64>();
    }
    Ok(drifted)
}

/// Whether two float cells are one value: both NULL, both NaN, or within [`ROUNDING`].
fn agree(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= ROUNDING * a.abs().max(b.abs()).max(1.0)
        }
        _ => false,
    }
}

fn encode(data: &RecordBatch, columns: &[usize]) -> Result<Option<datafusion::arrow::row::Rows>> {
    if columns.is_empty() {
        return Ok(None);
    }
    let internal = |e: datafusion::arrow::error::ArrowError| FreshetError::Internal(format!("correction: {e}"));
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|&i| SortField::new(data.column(i).data_type().clone()))
            .collect(),
    )
    .map_err(internal)?;
    let arrays: Vec<_> = columns.iter().map(|&i| data.column(i).clone()).collect();
    converter.convert_columns(&arrays).map(Some).map_err(internal)
}

fn key_of(keys: &Option<datafusion::arrow::row::Rows>, row: usize) -> &[u8] {
    keys.as_ref().map_or(&[], |rows| rows.row(row).data())
}

fn float_values(data: &RecordBatch, columns: &[usize]) -> Result<Vec<Vec<Option<f64>>>> {
    columns
        .iter()
        .map(|&i| {
            let floats = cast(data.column(i), &DataType::Float64)
                .map_err(|e| FreshetError::Internal(format!("correction: {e}")))?;
            Ok(floats.as_primitive::<Float64Type>().iter().collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn correction(names: Vec<&str>, sums: Vec<Option<f64>>, weights: Vec<i64>) -> ChangeBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("sum", DataType::Float64, true),
        ]));
        let data = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(names)), Arc::new(Float64Array::from(sums))],
        )
        .unwrap();
        ChangeBatch::from_parts(&data, Arc::new(Int64Array::from(weights))).unwrap()
    }

    #[test]
    fn re_rounded_floats_are_not_drift() {
        let rounded = correction(
            vec!["a", "a", "b", "b", "c", "c"],
            vec![
                Some(0.30000000000000004),
                Some(0.3),
                Some(f64::NAN),
                Some(f64::NAN),
                Some(1e-300),
                Some(0.0),
            ],
            vec![1, -1, 1, -1, 1, -1],
        );
        assert_eq!(drifted_rows(&rounded).unwrap(), 0);
    }

    #[test]
    fn rows_that_differ_otherwise_are_drift() {
        // A sum that differs, a row missing from the table, a row the query no longer has.
        let drift = correction(
            vec!["a", "a", "b", "c"],
            vec![Some(1.0), Some(2.0), None, Some(3.0)],
            vec![1, -1, 2, -1],
        );
        assert_eq!(drifted_rows(&drift).unwrap(), 2 + 2 + 1);
    }
}
