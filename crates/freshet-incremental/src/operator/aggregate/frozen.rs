//! An aggregate's groups as a whole checkpoint saved them, taken back as they are.
//!
//! Restoring an aggregate inserted every saved group's key into its part's map and copied its
//! accumulators into slots: for TPC-H Q18's 1.5 million groups at scale factor 1, most of a
//! command-line refresh's restore, though a 1 % round touches a few percent of them. A whole
//! checkpoint now saves the groups sorted by a fixed hash of their keys (see
//! [`crate::operator::hashed`]), with the hashes. A restore keeps that batch (mapped, as read)
//! and finds a group in it when a change first touches it, loading it into a slot then; a group
//! loaded, or replaced by a delta, is marked taken, so that it is never loaded twice. What is
//! never touched stays in the batch, and the next whole checkpoint copies it from there.

use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::UInt64Type;

use freshet_common::{Key, Result};

use super::checkpoint::SavedColumns;
use crate::checkpoint::mismatch;
use crate::delta::internal;
use crate::operator::hashed::HashDirectory;

/// The name of the column of a whole state's key hashes.
pub(super) const HASH: &str = "hash";
/// The metadata key holding the hashes of fixed values the groups were sorted under.
pub(super) const HASH_CHECK: &str = "freshet.aggregate.hash_check";

/// Saved groups sorted by key hash, and which of them have been taken.
pub(super) struct FrozenGroups {
    batch: RecordBatch,
    /// The batch's memory: its arrays' slices, which may share one buffer (the mapped file's),
    /// whose capacity each would report.
    bytes: usize,
    aggregates: usize,
    hashes: UInt64Array,
    directory: HashDirectory,
    /// A bit per saved group: loaded into a slot, or replaced. Parts take their own groups on
    /// threads of their own, so the bits are atomic (no two parts take one group).
    taken: Vec<AtomicU64>,
}

impl FrozenGroups {
    /// The groups of a whole state saved sorted (`batch`, with [`HASH`] its last column), of an
    /// aggregate of `aggregates` aggregates; `None` when the batch was not saved sorted under
    /// this build's hash.
    pub(super) fn of(batch: &RecordBatch, aggregates: usize) -> Result<Option<Self>> {
        let schema = batch.schema();
        let sorted_here = schema.metadata().get(HASH_CHECK) == Some(&crate::operator::hashed::hash_check());
        let Some(column) = batch.column_by_name(HASH).filter(|_| sorted_here) else {
            return Ok(None);
        };
        let hashes = column
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| mismatch("an aggregate's key hashes are not integers"))?
            .clone();
        if hashes.null_count() > 0 || !hashes.values().windows(2).all(|w| w[0] <= w[1]) {
            return Err(mismatch("an aggregate's groups are not sorted by their hashes"));
        }
        // Checked once here, so that taking a group cannot fail on its columns' types.
        SavedColumns::of(batch, aggregates)?;
        let taken = (0..batch.num_rows().div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        let mut bytes = 0;
        for column in batch.columns() {
            bytes += column.to_data().get_slice_memory_size().map_err(internal)?;
        }
        Ok(Some(Self {
            batch: batch.clone(),
            bytes,
            aggregates,
            directory: HashDirectory::new(hashes.values()),
            hashes,
            taken,
        }))
    }

    /// The saved columns the groups are loaded from.
    pub(super) fn columns(&self) -> Result<SavedColumns<'_>> {
        SavedColumns::of(&self.batch, self.aggregates)
    }

    /// The row of `key`'s saved group (in [`FrozenGroups::columns`]), marked taken; `None`
    /// when there is none or it was taken before.
    pub(super) fn take(&self, columns: &SavedColumns<'_>, key: Key<'_>) -> Option<usize> {
        let hash = crate::operator::hashed::key_hash(key);
        let hashes = self.hashes.values();
        let mut row = self.directory.first_at_or_above(hashes, hash);
        while row < hashes.len() && hashes[row] == hash {
            if columns.key(row) == key {
                let bit = 1u64 << (row % 64);
                let before = self.taken[row / 64].fetch_or(bit, Ordering::Relaxed);
                return (before & bit == 0).then_some(row);
            }
            row += 1;
        }
        None
    }

    /// The saved groups not taken, with their hashes, in the order saved.
    pub(super) fn remaining(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.hashes
            .values()
            .iter()
            .enumerate()
            .filter(|&(row, _)| self.taken[row / 64].load(Ordering::Relaxed) & (1 << (row % 64)) == 0)
            .map(|(row, &hash)| (row, hash))
    }

    /// How many saved groups are not taken.
    pub(super) fn remaining_count(&self) -> usize {
        let taken: u32 = self
            .taken
            .iter()
            .map(|word| word.load(Ordering::Relaxed).count_ones())
            .sum();
        self.batch.num_rows() - taken as usize
    }

    /// Memory of the saved groups.
    pub(super) fn bytes(&self) -> usize {
        self.bytes + self.taken.len() * 8 + self.directory.bytes()
    }
}
