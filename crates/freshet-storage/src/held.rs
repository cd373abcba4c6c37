//! Rows a statement holds in memory until its commit — an UPDATE's new rows (inserted once all
//! old rows are deleted), an upsert's input (whose keys decide what it replaces) — accounted in
//! the engine's memory pool, so that a statement too large for the engine's memory limit fails
//! with a clear error, committing nothing, instead of exhausting the process.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};

use freshet_common::{FreshetError, Result};

/// Batches held for a statement, with their memory reserved.
#[derive(Debug)]
pub struct HeldRows {
    what: String,
    reservation: MemoryReservation,
    batches: Vec<RecordBatch>,
}

impl HeldRows {
    /// Holds rows for `what` (`UPDATE of "t"`), accounted in `pool`.
    pub fn new(pool: &Arc<dyn MemoryPool>, what: impl Into<String>) -> Self {
        let what = what.into();
        let reservation = MemoryConsumer::new(what.clone()).register(pool);
        Self {
            what,
            reservation,
            batches: Vec::new(),
        }
    }

    /// Holds one more batch, and `extra` bytes kept beside it (an index of its keys); fails when
    /// the memory limit does not allow it.
    pub fn push(&mut self, batch: RecordBatch, extra: usize) -> Result<()> {
        let bytes = batch.get_array_memory_size().saturating_add(extra);
        self.reservation.try_grow(bytes).map_err(|e| {
            FreshetError::from(e).context(format!(
                "{}: the rows it holds until its commit need more than the engine's memory limit allows \
                 ({:.1} MiB held so far)",
                self.what,
                self.reservation.size() as f64 / f64::from(1u32 << 20)
            ))
        })?;
        self.batches.push(batch);
        Ok(())
    }

    /// The batches held, in order.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }
}
