//! The change batches that flow between operators.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat, concat_batches, filter, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;

use freshet_common::{ChangeBatch, FreshetError, Result};

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

    /// As a change batch (weight column last).
    pub fn into_change_batch(self) -> Result<ChangeBatch> {
        ChangeBatch::from_parts(&self.data, Arc::new(self.weights))
    }
}

/// The product of two weights; an overflow is an error, not a wrong answer.
pub(crate) fn multiply(a: i64, b: i64) -> Result<i64> {
    a.checked_mul(b).ok_or_else(weight_overflow)
}

pub(crate) fn weight_overflow() -> FreshetError {
    FreshetError::Internal("a row's multiplicity overflowed 64 bits".into())
}

fn downcast_weights(array: &ArrayRef) -> Result<Int64Array> {
    array
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| FreshetError::Internal("weights are not Int64".into()))
}

pub(crate) fn internal(e: impl std::fmt::Display) -> FreshetError {
    FreshetError::Internal(format!("incremental maintenance: {e}"))
}
