//! View columns (strings, binaries) compacted before a join keeps or saves them.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch, RecordBatchOptions};

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
