//! An arrangement taken back from a checkpoint as it was saved: the whole state's rows with
//! their index, then the deltas' rows beside them (see [`super::super::frozen`]).

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;

use freshet_common::{KeyCodec, Result};

use super::Arrangement;
use crate::checkpoint::mismatch;
use crate::delta::internal;
use crate::operator::join::frozen::{Frozen, SavedIndex};

impl Arrangement {
    /// An arrangement of the rows a checkpoint saved (`batches`, without weights) and their
    /// index, taken as they are: no row is indexed again (see [`Frozen`]). `bytes` is their
    /// memory (the batches may share buffers, whose capacity arrays would each report).
    pub(in crate::operator::join) fn with_frozen(
        schema: &SchemaRef,
        keys: &KeyCodec,
        batches: Vec<RecordBatch>,
        frozen: Frozen,
        bytes: u64,
    ) -> Result<Self> {
        let mut arrangement = Self::new(schema, keys)?;
        for batch in batches.into_iter().filter(|b| b.num_rows() > 0) {
            arrangement.starts.push(arrangement.stored);
            arrangement.stored += batch.num_rows() as u64;
            arrangement.batches.push(batch);
        }
        if arrangement.stored != frozen.rows() {
            return Err(mismatch("a join index does not cover its rows"));
        }
        arrangement.batch_bytes = bytes;
        arrangement.frozen_batches = arrangement.batches.len();
        arrangement.frozen_live = frozen.rows();
        arrangement.frozen = Some(frozen);
        Ok(arrangement)
    }

    /// Delta layers [`Arrangement::freeze_more`] can still take: none unless the arrangement
    /// was restored with its index and has not changed since.
    pub(in crate::operator::join) fn layer_room(&self) -> usize {
        match &self.frozen {
            Some(frozen)
                if self.entries.is_empty()
                    && self.chains.is_empty()
                    && self.batches.len() == self.frozen_batches
                    && self.ttl.is_none()
                    && self.expiry.is_none() =>
            {
                frozen.room()
            }
            _ => 0,
        }
    }

    /// Takes the rows of the deltas saved after the whole state (each delta's batches, of this
    /// input's schema — every row matchable and of a nonzero weight — with the index it was
    /// saved with) as they are: beside the whole state's index, in one index merged from
    /// theirs, none put into the chains' map (see [`Frozen::add_layer`]). Only while
    /// [`Arrangement::layer_room`] allows.
    pub(in crate::operator::join) fn freeze_more(&mut self, deltas: Vec<(Vec<RecordBatch>, SavedIndex)>) -> Result<()> {
        if self.layer_room() == 0 {
            return Err(internal("a delta's index taken by a join input that cannot take it"));
        }
        let (batches, indexes): (Vec<Vec<RecordBatch>>, Vec<SavedIndex>) = deltas
            .into_iter()
            .filter(|(batches, _)| batches.iter().any(|b| b.num_rows() > 0))
            .unzip();
        for (batches, index) in batches.iter().zip(&indexes) {
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            if rows != index.weights.iter().map(Array::len).sum::<usize>() {
                return Err(mismatch("a join delta's rows do not fit their weights"));
            }
        }
        if indexes.is_empty() {
            return Ok(());
        }
        let frozen = self
            .frozen
            .as_mut()
            .ok_or_else(|| internal("a delta's index without the whole state's"))?;
        frozen.add_layer(indexes)?;
        for batch in batches.into_iter().flatten().filter(|b| b.num_rows() > 0) {
            self.starts.push(self.stored);
            self.stored += batch.num_rows() as u64;
            self.frozen_live += batch.num_rows() as u64;
            // Read in place, its arrays may share one buffer (the file's), which each would
            // report whole.
            for column in batch.columns() {
                self.batch_bytes += column.to_data().get_slice_memory_size().map_err(internal)? as u64;
            }
            self.batches.push(batch);
        }
        self.frozen_batches = self.batches.len();
        Ok(())
    }
}
