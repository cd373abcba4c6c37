//! The batches a join input's rows are kept in: rows gathered from them by number, and their
//! view columns (strings, binaries) compacted before a join keeps or saves them.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt64Array, new_empty_array,
};
use datafusion::arrow::compute::{interleave, take_arrays};

use freshet_common::Result;

use crate::delta::internal;

/// The batch with its string and binary view columns copied into one buffer each when they
/// refer to many buffers or to buffers mostly unused: a gather (`take`) of a view column
/// copies the list of the buffers it refers to, so that gathering a few rows from a column of
/// thousands of buffers — the concatenated output of many epochs — costs thousands, and a
/// column of a few rows left referring to a whole input's buffers keeps them in memory.
pub(super) fn compact_views(batch: RecordBatch) -> Result<RecordBatch> {
    fn wasteful(buffers: &[datafusion::arrow::buffer::Buffer], used: usize) -> bool {
        let held: usize = buffers.iter().map(|b| b.capacity()).sum();
        buffers.len() > 8 || (buffers.len() > 1 && held > 2 * used + (1 << 16)) || held > 4 * used + (1 << 20)
    }
    let mut columns = batch.columns().to_vec();
    let mut changed = false;
    for column in &mut columns {
        if let Some(strings) = column.as_string_view_opt() {
            if wasteful(strings.data_buffers(), strings.total_buffer_bytes_used()) {
                *column = Arc::new(strings.gc());
                changed = true;
            }
        } else if let Some(binaries) = column.as_binary_view_opt()
            && wasteful(binaries.data_buffers(), binaries.total_buffer_bytes_used())
        {
            *column = Arc::new(binaries.gc());
            changed = true;
        }
    }
    if !changed {
        return Ok(batch);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(batch.schema(), columns, &options).map_err(internal)
}

/// Rows by global number from `batches` (whose first rows have the numbers `starts`).
pub(super) fn gather(batches: &[RecordBatch], starts: &[u64], rows: &[u64]) -> Result<Vec<ArrayRef>> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let num_columns = first.num_columns();
    if rows.is_empty() {
        return Ok(first.columns().iter().map(|c| new_empty_array(c.data_type())).collect());
    }
    let batch_of = |row: u64| starts.partition_point(|&start| start <= row) - 1;
    // Most gathers read one batch (the state built in one epoch, or a chain of one epoch).
    let first = batch_of(rows[0]);
    let (start, end) = (starts[first], starts.get(first + 1).copied().unwrap_or(u64::MAX));
    if rows.iter().all(|&r| (start..end).contains(&r)) {
        let indices = UInt64Array::from_iter_values(rows.iter().map(|&r| r - start));
        return take_arrays(batches[first].columns(), &indices, None).map_err(internal);
    }
    // Only the batches referred to are handed to `interleave`.
    let mut local = vec![usize::MAX; batches.len()];
    let mut used = Vec::new();
    let indices: Vec<(usize, usize)> = rows
        .iter()
        .map(|&r| {
            let b = batch_of(r);
            if local[b] == usize::MAX {
                local[b] = used.len();
                used.push(b);
            }
            (local[b], (r - starts[b]) as usize)
        })
        .collect();
    (0..num_columns)
        .map(|c| {
            let arrays: Vec<&dyn Array> = used.iter().map(|&b| batches[b].column(c).as_ref()).collect();
            interleave(&arrays, &indices).map_err(internal)
        })
        .collect()
}
