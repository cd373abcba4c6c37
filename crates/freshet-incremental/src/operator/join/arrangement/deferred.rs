//! Rows a state build keeps without indexing them one by one: indexed all at once, by sorting,
//! when they are first looked up.
//!
//! A state build hands a join all of one input's rows before the other's (the sources are read
//! one after the other), so most of an arrangement's rows arrive before any lookup. Putting
//! each into its key's chain in the map was half of a TPC-H join's build (a cache miss and a
//! map insertion a row); sorting the rows by key hash makes the same index a checkpoint saves
//! (see [`super::super::frozen`]) in a fraction of that, and the checkpoint after the build then
//! saves it as it is.

use datafusion::arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::{concat, concat_batches, filter_record_batch};

use freshet_common::{KeyCodec, Keys, Result};

use super::{Arrangement, compact_views};
use crate::delta::{downcast_weights, internal};
use crate::operator::join::frozen::{Frozen, build_index};

/// Rows of at most this many a batch are concatenated with their neighbours when they are
/// indexed: frozen batches stay as they are for the arrangement's life.
const SMALL_BATCH_ROWS: usize = if cfg!(test) { 8 } else { 1 << 16 };

/// Rows kept in the arrangement's batches but in no index yet: all of its rows (an
/// arrangement defers rows only while it has no other).
#[derive(Default)]
pub(super) struct Deferred {
    keys: Vec<Keys>,
    weights: Vec<Int64Array>,
}

impl Arrangement {
    /// Whether [`Arrangement::defer`] can take rows: it holds no rows but deferred ones.
    pub(in crate::operator::join) fn can_defer(&self) -> bool {
        self.deferred.is_some()
            || (self.stored == 0
                && self.entries.is_empty()
                && self.chains.is_empty()
                && self.frozen.is_none()
                && self.ttl.is_none()
                && self.expiry.is_none())
    }

    /// Keeps the rows of `data` with their `weights` and `keys` (but those not `matchable`
    /// or of weight zero) without indexing them: [`Arrangement::settle`] indexes them before
    /// they are looked up. Only while [`Arrangement::can_defer`].
    pub(in crate::operator::join) fn defer(
        &mut self,
        codec: &KeyCodec,
        data: &RecordBatch,
        weights: &Int64Array,
        keys: &Keys,
        matchable: &[bool],
    ) -> Result<()> {
        if !self.can_defer() {
            return Err(internal("rows deferred by a join input that holds indexed ones"));
        }
        let kept: Vec<u32> = (0..data.num_rows() as u32)
            .filter(|&i| matchable[i as usize] && weights.value(i as usize) != 0)
            .collect();
        if kept.is_empty() {
            return Ok(());
        }
        let (data, weights, keys) = if kept.len() == data.num_rows() {
            (compact_views(data.clone())?, weights.clone(), keys.clone())
        } else {
            let mask: BooleanArray = (0..data.num_rows())
                .map(|i| Some(matchable[i] && weights.value(i) != 0))
                .collect();
            let weights = downcast_weights(&datafusion::arrow::compute::filter(weights, &mask).map_err(internal)?)?;
            (
                compact_views(filter_record_batch(data, &mask).map_err(internal)?)?,
                weights,
                codec.take(keys, &kept)?,
            )
        };
        let batch = data;
        self.starts.push(self.stored);
        self.stored += batch.num_rows() as u64;
        self.batch_bytes += batch.get_array_memory_size() as u64;
        self.batches.push(batch);
        let deferred = self.deferred.get_or_insert_with(Deferred::default);
        deferred.keys.push(keys);
        deferred.weights.push(weights);
        Ok(())
    }

    /// Indexes the deferred rows (see [`Arrangement::defer`]) as frozen ones, sorted by key
    /// hash as a checkpoint's index is: the arrangement is then as if restored from one.
    pub(in crate::operator::join) fn settle(&mut self) -> Result<()> {
        let Some(Deferred { keys, weights }) = self.deferred.take() else {
            return Ok(());
        };
        if self.frozen.is_some() || !self.entries.is_empty() || self.batches.len() != keys.len() {
            return Err(internal("a join input's deferred rows beside indexed ones"));
        }
        let (batches, weights) = self.merge_small(weights)?;
        let (per_key, positions) = build_index(&keys)?;
        drop(keys);
        let frozen = Frozen::new(&per_key, &positions, weights)?;
        self.starts = Vec::with_capacity(batches.len());
        let mut start = 0;
        for batch in &batches {
            self.starts.push(start);
            start += batch.num_rows() as u64;
        }
        self.batch_bytes = batches.iter().map(|b| b.get_array_memory_size() as u64).sum();
        self.batches = batches;
        self.frozen_batches = self.batches.len();
        self.frozen_live = frozen.rows();
        self.frozen = Some(frozen);
        Ok(())
    }

    /// The kept batches and their `weights` with runs of small neighbours concatenated, in
    /// order (so rows keep their numbers).
    fn merge_small(&mut self, weights: Vec<Int64Array>) -> Result<(Vec<RecordBatch>, Vec<Int64Array>)> {
        let batches = std::mem::take(&mut self.batches);
        if batches.iter().all(|b| b.num_rows() > SMALL_BATCH_ROWS) {
            return Ok((batches, weights));
        }
        let mut merged = Vec::new();
        let mut merged_weights = Vec::new();
        let mut run: Vec<(RecordBatch, Int64Array)> = Vec::new();
        let mut run_rows = 0;
        let flush = |run: &mut Vec<(RecordBatch, Int64Array)>,
                     merged: &mut Vec<RecordBatch>,
                     merged_weights: &mut Vec<Int64Array>|
         -> Result<()> {
            match run.len() {
                0 => {}
                1 => {
                    let (batch, weights) = run.remove(0);
                    merged.push(batch);
                    merged_weights.push(weights);
                }
                _ => {
                    let schema = run[0].0.schema();
                    let data = concat_batches(&schema, run.iter().map(|(b, _)| b)).map_err(internal)?;
                    let arrays: Vec<&dyn Array> = run.iter().map(|(_, w)| w as &dyn Array).collect();
                    let weights = downcast_weights(&concat(&arrays).map_err(internal)?)?;
                    merged.push(compact_views(data)?);
                    merged_weights.push(weights);
                    run.clear();
                }
            }
            Ok(())
        };
        for (batch, weights) in batches.into_iter().zip(weights) {
            let rows = batch.num_rows();
            if run_rows > 0 && (rows > SMALL_BATCH_ROWS || run_rows + rows > SMALL_BATCH_ROWS) {
                flush(&mut run, &mut merged, &mut merged_weights)?;
                run_rows = 0;
            }
            run_rows += rows;
            run.push((batch, weights));
        }
        flush(&mut run, &mut merged, &mut merged_weights)?;
        Ok((merged, merged_weights))
    }

    /// Rows deferred and not indexed yet.
    pub(in crate::operator::join) fn deferred_rows(&self) -> u64 {
        self.deferred
            .as_ref()
            .map_or(0, |d| d.weights.iter().map(|w| w.len() as u64).sum())
    }

    /// Memory of the deferred rows' keys.
    pub(super) fn deferred_bytes(&self) -> u64 {
        self.deferred.as_ref().map_or(0, |d| {
            d.keys
                .iter()
                .map(|k| match k {
                    Keys::Int(ints) => ints.get_array_memory_size() as u64,
                    Keys::Rows(rows) => rows.size() as u64,
                })
                .sum()
        })
    }

    /// The index of a whole state that is one frozen layer and nothing else, as a checkpoint
    /// saves it (see [`Frozen::saved`]): the rows [`Arrangement::contents`] gives are numbered as
    /// its positions are.
    pub(in crate::operator::join) fn saved_index(&self) -> Result<Option<(RecordBatch, RecordBatch)>> {
        match &self.frozen {
            Some(frozen)
                if self.deferred.is_none()
                    && self.entries.is_empty()
                    && self.chains.is_empty()
                    && self.batches.len() == self.frozen_batches
                    && self.ttl.is_none()
                    && self.expiry.is_none() =>
            {
                frozen.saved()
            }
            _ => Ok(None),
        }
    }
}
