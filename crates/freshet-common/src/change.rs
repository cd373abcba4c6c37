//! Change batches: rows with weights.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{Row, RowConverter, SortField};

use crate::error::{FreshetError, Result};

/// Name of the weight column that ends every change batch.
pub const WEIGHT_COLUMN: &str = "_weight";

/// A batch of changes: the data columns followed by a non-null Int64 column named
/// [`WEIGHT_COLUMN`]. A weight of `+n` inserts n copies of the row, `-n` deletes n copies.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    batch: RecordBatch,
}

impl ChangeBatch {
    /// Wraps a batch whose last column is the weight column.
    pub fn try_new(batch: RecordBatch) -> Result<Self> {
        let schema = batch.schema();
        let last = schema
            .fields()
            .last()
            .ok_or_else(|| FreshetError::Internal("a change batch needs a weight column".into()))?;
        if last.name() != WEIGHT_COLUMN
            || last.data_type() != &DataType::Int64
            || batch.column(batch.num_columns() - 1).null_count() > 0
        {
            return Err(FreshetError::Internal(format!(
                "the last column of a change batch must be a non-null Int64 \"{WEIGHT_COLUMN}\", found {last}"
            )));
        }
        Ok(Self { batch })
    }

    /// Every row of `data` with the same `weight`: `+1` for inserted rows, `-1` for deleted ones.
    pub fn with_weight(data: &RecordBatch, weight: i64) -> Result<Self> {
        let weights = Int64Array::from_value(weight, data.num_rows());
        Self::from_parts(data, Arc::new(weights))
    }

    /// Data columns plus an explicit weight per row.
    pub fn from_parts(data: &RecordBatch, weights: ArrayRef) -> Result<Self> {
        let schema = Self::schema_for(data.schema_ref());
        let mut columns = data.columns().to_vec();
        columns.push(weights);
        let batch = RecordBatch::try_new(schema, columns)
            .map_err(|e| FreshetError::Internal(format!("cannot build change batch: {e}")))?;
        Self::try_new(batch)
    }

    /// The schema of change batches over rows of `data`: its fields plus the weight.
    pub fn schema_for(data: &SchemaRef) -> SchemaRef {
        let mut fields: Vec<Arc<Field>> = data.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(WEIGHT_COLUMN, DataType::Int64, false)));
        Arc::new(Schema::new_with_metadata(fields, data.metadata().clone()))
    }

    /// The whole batch, weight column last.
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// The batch without the weight column.
    pub fn data(&self) -> RecordBatch {
        self.batch
            .project(&(0..self.batch.num_columns() - 1).collect::<Vec<_>>())
            .unwrap_or_else(|_| RecordBatch::new_empty(self.batch.schema()))
    }

    /// The weights.
    pub fn weights(&self) -> &Int64Array {
        self.batch
            .column(self.batch.num_columns() - 1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap_or_else(|| unreachable!("checked in try_new"))
    }

    /// Number of rows (not the sum of weights).
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// Unwraps the batch.
    pub fn into_batch(self) -> RecordBatch {
        self.batch
    }
}

/// Sums the weights of equal rows and drops rows whose weight sums to zero, so that several
/// changes to one row become one. Rows come out in the order they first appeared.
pub fn consolidate(data_schema: &SchemaRef, changes: &[ChangeBatch]) -> Result<Option<ChangeBatch>> {
    let fields = data_schema
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect::<Vec<_>>();
    let converter =
        RowConverter::new(fields).map_err(|e| FreshetError::Internal(format!("cannot consolidate changes: {e}")))?;
    let encoded = changes
        .iter()
        .map(|change| converter.convert_columns(change.data().columns()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| FreshetError::Internal(format!("cannot consolidate changes: {e}")))?;
    // Each distinct row once, in first-seen order, with its summed weight.
    let mut distinct: Vec<(Row<'_>, i64)> = Vec::new();
    let mut index: foldhash::HashMap<&[u8], usize> = foldhash::HashMap::default();
    for (rows, change) in encoded.iter().zip(changes) {
        for (row, weight) in rows.iter().zip(change.weights().values().iter()) {
            match index.get(row.data()) {
                Some(&i) => distinct[i].1 += weight,
                None => {
                    index.insert(row.data(), distinct.len());
                    distinct.push((row, *weight));
                }
            }
        }
    }
    let kept: Vec<(Row<'_>, i64)> = distinct.into_iter().filter(|(_, w)| *w != 0).collect();
    if kept.is_empty() {
        return Ok(None);
    }
    let columns = converter
        .convert_rows(kept.iter().map(|(row, _)| *row))
        .map_err(|e| FreshetError::Internal(format!("cannot consolidate changes: {e}")))?;
    let data = RecordBatch::try_new(data_schema.clone(), columns)
        .map_err(|e| FreshetError::Internal(format!("cannot consolidate changes: {e}")))?;
    let weights = Int64Array::from_iter_values(kept.iter().map(|(_, w)| *w));
    ChangeBatch::from_parts(&data, Arc::new(weights)).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, StringArray};

    fn batch(ids: Vec<i32>, names: Vec<Option<&str>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int32Array::from(ids)), Arc::new(StringArray::from(names))],
        )
        .unwrap()
    }

    #[test]
    fn consolidation_cancels_and_merges() {
        let inserted = ChangeBatch::with_weight(&batch(vec![1, 2, 2], vec![Some("a"), None, None]), 1).unwrap();
        let deleted = ChangeBatch::with_weight(&batch(vec![1], vec![Some("a")]), -1).unwrap();
        let schema = inserted.data().schema();
        let out = consolidate(&schema, &[inserted, deleted]).unwrap().unwrap();
        assert_eq!(out.num_rows(), 1);
        assert_eq!(out.weights().value(0), 2);
        let ids = out.batch().column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(ids.value(0), 2);
    }

    #[test]
    fn consolidation_of_nothing_is_nothing() {
        let inserted = ChangeBatch::with_weight(&batch(vec![1], vec![Some("a")]), 1).unwrap();
        let deleted = ChangeBatch::with_weight(&batch(vec![1], vec![Some("a")]), -1).unwrap();
        let schema = inserted.data().schema();
        assert!(consolidate(&schema, &[inserted, deleted]).unwrap().is_none());
    }
}
