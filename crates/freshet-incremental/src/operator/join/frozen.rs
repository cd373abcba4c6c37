//! A join input's rows as a checkpoint saved them, looked up through an index the checkpoint
//! saved beside them, so that a restore does not index every row again.
//!
//! Restoring a join's state used to cost about what computing the join in batch does: every
//! saved row's key was encoded, hashed and inserted into its arrangement's map, and a TPC-H
//! join's state is as large as its inputs. The checkpoint now also holds, per part and side,
//! the distinct keys sorted by a hash that does not change between processes, where each key's
//! rows are among the saved ones, and those rows' places. A restored arrangement takes the saved
//! batches and this index as they are (see [`Frozen`]); the rows changed afterwards go into its
//! usual chains, which say where they override the saved rows.
//!
//! The index is two batches: `hash` (sorted), `key` and `start` per distinct key, and the rows'
//! `position`s among the saved rows, key by key. A key is found by where its hash falls among
//! the uniformly spread hashes and a short search around it.

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, UInt32Type, UInt64Type};

use freshet_common::{Key, Keys, Result};

use crate::checkpoint::mismatch;
use crate::delta::internal;
pub(super) use crate::operator::hashed::hash_check;
use crate::operator::hashed::{first_at_or_above, key_hash};

/// The metadata key of an index batch holding the hashes of fixed values, compared when read
/// (see [`hash_check`]).
pub(super) const HASH_CHECK: &str = "freshet.join.hash_check";

/// The index of saved rows: their keys, `keys[i]` the keys of the `i`-th saved batch (each
/// row one key). Returns the per-key batch and the positions batch.
pub(super) fn build_index(keys: &[Keys]) -> Result<(RecordBatch, RecordBatch)> {
    let rows: usize = keys.iter().map(Keys::len).sum();
    if u32::try_from(rows).is_err() {
        return Err(internal("a join side's part holds more than 4 billion rows"));
    }
    let mut at = Vec::with_capacity(rows);
    for (batch, keys) in keys.iter().enumerate() {
        for row in 0..keys.len() {
            at.push((batch as u32, row as u32));
        }
    }
    let key_of = |(batch, row): (u32, u32)| keys[batch as usize].key(row as usize);
    // Rows by hash, then by key where hashes collide, then by place: equal keys are adjacent.
    let mut order: Vec<(u64, u32)> = at
        .iter()
        .enumerate()
        .map(|(position, &place)| (key_hash(key_of(place)), position as u32))
        .collect();
    order.sort_unstable();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && order[end].0 == order[start].0 {
            end += 1;
        }
        if end - start > 1 {
            order[start..end]
                .sort_by(|a, b| compare(key_of(at[a.1 as usize]), key_of(at[b.1 as usize])).then(a.1.cmp(&b.1)));
        }
        start = end;
    }
    let mut hashes = Vec::new();
    let mut starts = Vec::new();
    let mut firsts = Vec::new();
    for (i, &(hash, position)) in order.iter().enumerate() {
        let key = key_of(at[position as usize]);
        if i == 0 || hash != order[i - 1].0 || key != key_of(at[order[i - 1].1 as usize]) {
            hashes.push(hash);
            starts.push(i as u32);
            firsts.push(at[position as usize]);
        }
    }
    let key_column: ArrayRef = match keys.first() {
        Some(Keys::Rows(_)) => Arc::new(BinaryArray::from_iter_values(firsts.iter().map(
            |&place| match key_of(place) {
                Key::Row(row) => row,
                Key::Int(_) => &[],
            },
        ))),
        _ => Arc::new(Int64Array::from_iter(firsts.iter().map(|&place| match key_of(place) {
            Key::Int(int) => int,
            Key::Row(_) => None,
        }))),
    };
    let per_key = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("hash", DataType::UInt64, false),
            Field::new("key", key_column.data_type().clone(), true),
            Field::new("start", DataType::UInt32, false),
        ])),
        vec![
            Arc::new(UInt64Array::from(hashes)),
            key_column,
            Arc::new(UInt32Array::from(starts)),
        ],
    )
    .map_err(internal)?;
    let positions = UInt32Array::from_iter_values(order.iter().map(|&(_, position)| position));
    let positions = RecordBatch::try_from_iter([("position", Arc::new(positions) as ArrayRef)]).map_err(internal)?;
    Ok((per_key, positions))
}

fn compare(a: Key<'_>, b: Key<'_>) -> std::cmp::Ordering {
    match (a, b) {
        (Key::Int(a), Key::Int(b)) => a.cmp(&b),
        (Key::Row(a), Key::Row(b)) => a.cmp(b),
        (Key::Int(_), Key::Row(_)) => std::cmp::Ordering::Less,
        (Key::Row(_), Key::Int(_)) => std::cmp::Ordering::Greater,
    }
}

/// The keys of an index, as saved.
enum FrozenKeys {
    Int(Int64Array),
    Rows(BinaryArray),
}

/// Saved rows' index (see the module's documentation): rows are numbered across the saved
/// batches in order, from 0.
pub(super) struct Frozen {
    hashes: UInt64Array,
    keys: FrozenKeys,
    starts: UInt32Array,
    positions: UInt32Array,
    /// Each saved batch's weights, and the number of its first row.
    weights: Vec<Int64Array>,
    batch_starts: Vec<u64>,
}

impl Frozen {
    /// The index read back, over saved batches of `rows` rows whose weights are `weights` (a
    /// batch's each); checked so that no lookup can fall outside it.
    pub(super) fn new(per_key: &RecordBatch, positions: &RecordBatch, weights: Vec<Int64Array>) -> Result<Self> {
        let column = |batch: &RecordBatch, name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| mismatch(format!("a join index without {name}")))
        };
        let hashes = column(per_key, "hash")?
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| mismatch("a join index's hashes are not integers"))?
            .clone();
        let starts = column(per_key, "start")?
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| mismatch("a join index's starts are not integers"))?
            .clone();
        let key = column(per_key, "key")?;
        let keys = match key.data_type() {
            DataType::Int64 => FrozenKeys::Int(key.as_primitive().clone()),
            DataType::Binary => FrozenKeys::Rows(key.as_binary::<i32>().clone()),
            other => return Err(mismatch(format!("a join index's keys of type {other}"))),
        };
        let positions = column(positions, "position")?
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| mismatch("a join index's positions are not integers"))?
            .clone();
        let mut batch_starts = Vec::with_capacity(weights.len());
        let mut rows = 0u64;
        for w in &weights {
            batch_starts.push(rows);
            rows += w.len() as u64;
        }
        let sorted = hashes.values().windows(2).all(|w| w[0] <= w[1]);
        let starts_fit = starts.values().first().is_none_or(|&s| s == 0)
            && starts.values().windows(2).all(|w| w[0] < w[1])
            && starts.values().last().is_none_or(|&s| (s as usize) < positions.len());
        if !sorted
            || !starts_fit
            || hashes.null_count() + starts.null_count() + positions.null_count() > 0
            || starts.len() != hashes.len()
            || key.len() != hashes.len()
            || positions.len() as u64 != rows
            || positions.values().iter().any(|&p| u64::from(p) >= rows)
        {
            return Err(mismatch("a join index does not fit its rows"));
        }
        Ok(Self {
            hashes,
            keys,
            starts,
            positions,
            weights,
            batch_starts,
        })
    }

    /// Rows indexed.
    pub(super) fn rows(&self) -> u64 {
        self.positions.len() as u64
    }

    /// Memory of the index (not of the rows).
    pub(super) fn bytes(&self) -> u64 {
        let keys = match &self.keys {
            FrozenKeys::Int(ints) => ints.to_data().get_slice_memory_size(),
            FrozenKeys::Rows(rows) => rows.to_data().get_slice_memory_size(),
        };
        (self.hashes.len() * 12 + self.positions.len() * 4 + keys.unwrap_or(0)) as u64
    }

    /// The weight of saved row `row`.
    pub(super) fn weight(&self, row: u64) -> i64 {
        let batch = self
            .batch_starts
            .partition_point(|&start| start <= row)
            .saturating_sub(1);
        self.weights
            .get(batch)
            .and_then(|w| w.values().get((row - self.batch_starts[batch]) as usize).copied())
            .unwrap_or(0)
    }

    /// Every saved row's weight, in order.
    pub(super) fn all_weights(&self) -> impl Iterator<Item = i64> + '_ {
        self.weights.iter().flat_map(|w| w.values().iter().copied())
    }

    /// The places in [`Frozen::positions`] of `key`'s rows (empty when it has none): what
    /// [`Frozen::rows_at`] takes, for a caller that looks at a key's rows more than once.
    pub(super) fn find(&self, key: Key<'_>) -> Range<usize> {
        let hash = key_hash(key);
        let hashes = self.hashes.values();
        let mut first = first_at_or_above(hashes, hash);
        while first < hashes.len() && hashes[first] == hash {
            if self.key_is(first, key) {
                return self.rows_of(first);
            }
            first += 1;
        }
        0..0
    }

    /// The places in [`Frozen::positions`] of the rows of the `index`-th key.
    fn rows_of(&self, index: usize) -> Range<usize> {
        let start = self.starts.value(index) as usize;
        let end = self
            .starts
            .values()
            .get(index + 1)
            .map_or(self.positions.len(), |&s| s as usize);
        start..end
    }

    fn key_is(&self, index: usize, key: Key<'_>) -> bool {
        match (&self.keys, key) {
            (FrozenKeys::Int(ints), Key::Int(int)) => ints.is_valid(index).then(|| ints.value(index)) == int,
            (FrozenKeys::Rows(rows), Key::Row(row)) => rows.value(index) == row,
            _ => false,
        }
    }

    /// `key`'s saved rows: their numbers and weights.
    pub(super) fn entries<'a>(&'a self, key: Key<'_>) -> impl Iterator<Item = (u64, i64)> + use<'a> {
        self.rows_at(self.find(key))
    }

    /// The saved rows at `places` (a key's, as [`Frozen::find`] gave them): their numbers and
    /// weights.
    pub(super) fn rows_at(&self, places: Range<usize>) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.positions.values()[places].iter().map(move |&row| {
            let row = u64::from(row);
            (row, self.weight(row))
        })
    }

    /// Every key with saved rows, and their numbers.
    pub(super) fn keys(&self) -> impl Iterator<Item = (Key<'_>, &[u32])> + '_ {
        (0..self.hashes.len()).map(move |i| {
            let key = match &self.keys {
                FrozenKeys::Int(ints) => Key::Int(ints.is_valid(i).then(|| ints.value(i))),
                FrozenKeys::Rows(rows) => Key::Row(rows.value(i)),
            };
            (key, &self.positions.values()[self.rows_of(i)])
        })
    }
}
