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
//! `position`s among the saved rows, key by key. A key is found through a directory of where
//! each bucket of hashes starts, built when the index is read (see [`HashDirectory`]).

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
use crate::operator::hashed::{HashDirectory, key_hash};

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
    if keys.iter().all(|k| matches!(k, Keys::Int(_))) {
        return build_int_index(keys, rows);
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
        // Equal keys' rows are in place order already (a constant key's, all of a side's).
        let first = key_of(at[order[start].1 as usize]);
        if end - start > 1 && order[start + 1..end].iter().any(|o| key_of(at[o.1 as usize]) != first) {
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
    let positions = UInt32Array::from_iter_values(order.iter().map(|&(_, position)| position));
    index_batches(
        UInt64Array::from(hashes),
        key_column,
        UInt32Array::from(starts),
        positions,
    )
}

/// An index as saved: the per-key batch (`hash`, `key`, `start`) and the positions batch.
fn index_batches(
    hashes: UInt64Array,
    keys: ArrayRef,
    starts: UInt32Array,
    positions: UInt32Array,
) -> Result<(RecordBatch, RecordBatch)> {
    let per_key = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("hash", DataType::UInt64, false),
            Field::new("key", keys.data_type().clone(), true),
            Field::new("start", DataType::UInt32, false),
        ])),
        vec![Arc::new(hashes), keys, Arc::new(starts)],
    )
    .map_err(internal)?;
    let positions = RecordBatch::try_from_iter([("position", Arc::new(positions) as ArrayRef)]).map_err(internal)?;
    Ok((per_key, positions))
}

/// [`build_index`] of integer keys: each row's key sorted with its hash and place, so that
/// finding where keys change reads no key again (a key of a row-format index is looked up at
/// its row, a cache miss per row of a large part).
fn build_int_index(keys: &[Keys], rows: usize) -> Result<(RecordBatch, RecordBatch)> {
    // (hash, key is not NULL, key, position): equal keys adjacent, each key's rows in place order.
    let mut order: Vec<(u64, bool, i64, u32)> = Vec::with_capacity(rows);
    for ints in keys {
        for row in 0..ints.len() {
            let position = order.len() as u32;
            let Key::Int(int) = ints.key(row) else {
                return Err(internal("an integer join index of row keys"));
            };
            order.push((key_hash(Key::Int(int)), int.is_some(), int.unwrap_or(0), position));
        }
    }
    order.sort_unstable();
    let mut hashes = Vec::new();
    let mut starts = Vec::new();
    let mut firsts: Vec<Option<i64>> = Vec::new();
    for (i, &(hash, valid, int, _)) in order.iter().enumerate() {
        let new_key = match i.checked_sub(1).map(|before| order[before]) {
            Some((h, v, k, _)) => (h, v, k) != (hash, valid, int),
            None => true,
        };
        if new_key {
            hashes.push(hash);
            starts.push(i as u32);
            firsts.push(valid.then_some(int));
        }
    }
    let positions = UInt32Array::from_iter_values(order.iter().map(|&(.., position)| position));
    index_batches(
        UInt64Array::from(hashes),
        Arc::new(Int64Array::from(firsts)),
        UInt32Array::from(starts),
        positions,
    )
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

/// Layers a [`Frozen`] holds at most: the whole state's index and one of the deltas saved
/// after it, merged (each layer is searched at every lookup: a layer per delta made the step
/// slower with every delta).
const LAYERS: usize = 2;

/// One index over a run of frozen rows: the whole state's, or the deltas' (see [`Frozen`]).
struct Layer {
    hashes: UInt64Array,
    keys: FrozenKeys,
    starts: UInt32Array,
    positions: UInt32Array,
    /// The number of the layer's first row among all frozen rows (its positions count from it).
    first_row: u64,
    directory: HashDirectory,
}

impl Layer {
    /// The index read back, over `rows` rows; checked so that no lookup can fall outside it.
    fn new(per_key: &RecordBatch, positions: &RecordBatch, rows: u64, first_row: u64) -> Result<Self> {
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
            || u32::try_from(positions.len()).is_err()
            || positions.values().iter().any(|&p| u64::from(p) >= rows)
        {
            return Err(mismatch("a join index does not fit its rows"));
        }
        let directory = HashDirectory::new(hashes.values());
        Ok(Self {
            hashes,
            keys,
            starts,
            positions,
            first_row,
            directory,
        })
    }

    /// The places in the layer's positions of the rows of the key hashed to `hash`.
    fn find(&self, key: Key<'_>, hash: u64) -> Range<u32> {
        let hashes = self.hashes.values();
        let mut first = self.directory.first_at_or_above(hashes, hash);
        while first < hashes.len() && hashes[first] == hash {
            if self.key_is(first, key) {
                return self.rows_of(first);
            }
            first += 1;
        }
        0..0
    }

    /// The places in the layer's positions of the rows of the `index`-th key.
    fn rows_of(&self, index: usize) -> Range<u32> {
        let start = self.starts.value(index);
        let end = self
            .starts
            .values()
            .get(index + 1)
            .map_or(self.positions.len() as u32, |&s| s);
        start..end
    }

    fn key_is(&self, index: usize, key: Key<'_>) -> bool {
        match (&self.keys, key) {
            (FrozenKeys::Int(ints), Key::Int(int)) => ints.is_valid(index).then(|| ints.value(index)) == int,
            (FrozenKeys::Rows(rows), Key::Row(row)) => rows.value(index) == row,
            _ => false,
        }
    }

    fn key(&self, index: usize) -> Key<'_> {
        match &self.keys {
            FrozenKeys::Int(ints) => Key::Int(ints.is_valid(index).then(|| ints.value(index))),
            FrozenKeys::Rows(rows) => Key::Row(rows.value(index)),
        }
    }

    fn bytes(&self) -> u64 {
        let keys = match &self.keys {
            FrozenKeys::Int(ints) => ints.to_data().get_slice_memory_size(),
            FrozenKeys::Rows(rows) => rows.to_data().get_slice_memory_size(),
        };
        (self.hashes.len() * 12 + self.positions.len() * 4 + keys.unwrap_or(0) + self.directory.bytes()) as u64
    }
}

/// A delta's index as saved (see [`build_index`]) and its rows' weights, batch by batch.
pub(super) struct SavedIndex {
    pub per_key: RecordBatch,
    pub positions: RecordBatch,
    pub weights: Vec<Int64Array>,
}

/// One layer indexing the rows of `layers` (numbered on from each other, from `first_row`), as
/// [`build_index`] would have made of them all: a key's rows layer by layer. Each layer is
/// sorted by hash already, so this is a merge of sorted runs, not a sort of the rows.
fn merged(layers: Vec<Layer>, first_row: u64) -> Result<Layer> {
    if let [layer] = layers.as_slice()
        && layer.first_row == first_row
    {
        return layers.into_iter().next().ok_or_else(|| internal("a layer lost"));
    }
    let mut order: Vec<(u64, u32, u32)> = Vec::with_capacity(layers.iter().map(|l| l.hashes.len()).sum());
    for (l, layer) in layers.iter().enumerate() {
        order.extend(
            layer
                .hashes
                .values()
                .iter()
                .enumerate()
                .map(|(i, &hash)| (hash, l as u32, i as u32)),
        );
    }
    // Stable and run-aware: the layers' sorted runs are merged.
    order.sort();
    let total: usize = layers.iter().map(|l| l.positions.len()).sum();
    let mut hashes = Vec::new();
    let mut starts = Vec::new();
    let mut positions: Vec<u32> = Vec::with_capacity(total);
    let mut firsts: Vec<(u32, u32)> = Vec::new();
    let mut taken = vec![false; order.len()];
    for a in 0..order.len() {
        if taken[a] {
            continue;
        }
        let (hash, l, i) = order[a];
        let key = layers[l as usize].key(i as usize);
        hashes.push(hash);
        starts.push(u32::try_from(positions.len()).map_err(internal)?);
        firsts.push((l, i));
        // The same key's entries in later layers: among those of the same hash.
        for b in a..order.len() {
            let (other_hash, m, j) = order[b];
            if other_hash != hash {
                break;
            }
            if taken[b] || layers[m as usize].key(j as usize) != key {
                continue;
            }
            taken[b] = true;
            let layer = &layers[m as usize];
            let offset = u32::try_from(layer.first_row - first_row).map_err(internal)?;
            let range = layer.rows_of(j as usize);
            for &position in &layer.positions.values()[range.start as usize..range.end as usize] {
                positions.push(
                    position
                        .checked_add(offset)
                        .ok_or_else(|| internal("a join layer past 4 billion rows"))?,
                );
            }
        }
    }
    let keys = match layers.first().map(|l| &l.keys) {
        Some(FrozenKeys::Rows(_)) => FrozenKeys::Rows(BinaryArray::from_iter_values(firsts.iter().map(|&(l, i)| {
            match layers[l as usize].key(i as usize) {
                Key::Row(row) => row,
                Key::Int(_) => &[],
            }
        }))),
        _ => FrozenKeys::Int(Int64Array::from_iter(firsts.iter().map(
            |&(l, i)| match layers[l as usize].key(i as usize) {
                Key::Int(int) => int,
                Key::Row(_) => None,
            },
        ))),
    };
    if layers
        .iter()
        .any(|l| matches!(l.keys, FrozenKeys::Rows(_)) != matches!(keys, FrozenKeys::Rows(_)))
    {
        return Err(mismatch("join indexes of other key types"));
    }
    let directory = HashDirectory::new(&hashes);
    Ok(Layer {
        hashes: UInt64Array::from(hashes),
        keys,
        starts: UInt32Array::from(starts),
        positions: UInt32Array::from(positions),
        first_row,
        directory,
    })
}

/// Where a key's rows are in each layer of a [`Frozen`] (see [`Frozen::find`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Places([Range<u32>; LAYERS]);

impl Places {
    /// The key's frozen rows.
    pub(super) fn len(&self) -> usize {
        self.0.iter().map(|range| range.len()).sum()
    }
}

/// Saved rows' index (see the module's documentation): rows are numbered across the saved
/// batches in order, from 0. A first layer indexes the whole state's rows; each further one
/// the rows of a delta saved after it, with the index the delta was saved with (see
/// [`Frozen::add_layer`]).
pub(super) struct Frozen {
    layers: Vec<Layer>,
    /// Each saved batch's weights, and the number of its first row.
    weights: Vec<Int64Array>,
    batch_starts: Vec<u64>,
}

impl Frozen {
    /// The index read back, over saved batches whose weights are `weights` (a batch's each);
    /// checked so that no lookup can fall outside it.
    pub(super) fn new(per_key: &RecordBatch, positions: &RecordBatch, weights: Vec<Int64Array>) -> Result<Self> {
        let mut frozen = Self {
            layers: Vec::with_capacity(LAYERS),
            weights: Vec::new(),
            batch_starts: Vec::new(),
        };
        let rows: u64 = weights.iter().map(|w| w.len() as u64).sum();
        frozen.layers.push(Layer::new(per_key, positions, rows, 0)?);
        let mut start = 0;
        for w in weights {
            frozen.batch_starts.push(start);
            start += w.len() as u64;
            frozen.weights.push(w);
        }
        Ok(frozen)
    }

    /// Takes the rows of the deltas saved after the whole state, numbered after those indexed
    /// already, with the index each was saved with — merged into one layer, so that a restore
    /// puts no row into the chains' map and a lookup searches two layers. An error when the
    /// layers are all taken (see [`Frozen::room`]).
    pub(super) fn add_layer(&mut self, deltas: Vec<SavedIndex>) -> Result<()> {
        if self.room() == 0 {
            return Err(internal("a join index with more layers than it holds"));
        }
        let first_row = self.rows();
        let mut layers = Vec::with_capacity(deltas.len());
        let mut row = first_row;
        for delta in &deltas {
            let rows: u64 = delta.weights.iter().map(|w| w.len() as u64).sum();
            layers.push(Layer::new(&delta.per_key, &delta.positions, rows, row)?);
            row += rows;
        }
        let layer = merged(layers, first_row)?;
        let mut start = first_row;
        for w in deltas.into_iter().flat_map(|delta| delta.weights) {
            self.batch_starts.push(start);
            start += w.len() as u64;
            self.weights.push(w);
        }
        self.layers.push(layer);
        Ok(())
    }

    /// The index of rows numbered from 0 in one layer, as [`build_index`] makes it; `None`
    /// when there are more layers.
    pub(super) fn saved(&self) -> Result<Option<(RecordBatch, RecordBatch)>> {
        let [layer] = self.layers.as_slice() else {
            return Ok(None);
        };
        if layer.first_row != 0 {
            return Ok(None);
        }
        let keys: ArrayRef = match &layer.keys {
            FrozenKeys::Int(ints) => Arc::new(ints.clone()),
            FrozenKeys::Rows(rows) => Arc::new(rows.clone()),
        };
        index_batches(
            layer.hashes.clone(),
            keys,
            layer.starts.clone(),
            layer.positions.clone(),
        )
        .map(Some)
    }

    /// Layers that can still be added.
    pub(super) fn room(&self) -> usize {
        LAYERS - self.layers.len()
    }

    /// Rows indexed.
    pub(super) fn rows(&self) -> u64 {
        self.layers.iter().map(|l| l.positions.len() as u64).sum()
    }

    /// Memory of the index (not of the rows).
    pub(super) fn bytes(&self) -> u64 {
        self.layers.iter().map(Layer::bytes).sum()
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

    /// Where `key`'s rows are (none when it has none): what [`Frozen::rows_at`] takes, for a
    /// caller that looks at a key's rows more than once.
    pub(super) fn find(&self, key: Key<'_>) -> Places {
        let hash = key_hash(key);
        let mut places = Places::default();
        for (layer, range) in self.layers.iter().zip(&mut places.0) {
            *range = layer.find(key, hash);
        }
        places
    }

    /// `key`'s saved rows: their numbers and weights.
    pub(super) fn entries<'a>(&'a self, key: Key<'_>) -> impl Iterator<Item = (u64, i64)> + use<'a> {
        self.rows_at(self.find(key))
    }

    /// The saved rows at `places` (a key's, as [`Frozen::find`] gave them): their numbers and
    /// weights.
    pub(super) fn rows_at(&self, places: Places) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.layers.iter().zip(places.0).flat_map(move |(layer, range)| {
            layer.positions.values()[range.start as usize..range.end as usize]
                .iter()
                .map(move |&position| {
                    let row = layer.first_row + u64::from(position);
                    (row, self.weight(row))
                })
        })
    }

    /// Every key with saved rows and their numbers, layer by layer: a key with rows in two
    /// layers comes twice.
    pub(super) fn keys(&self) -> impl Iterator<Item = (Key<'_>, impl Iterator<Item = u64> + '_)> + '_ {
        self.layers.iter().flat_map(|layer| {
            (0..layer.hashes.len()).map(move |i| {
                let range = layer.rows_of(i);
                let rows = layer.positions.values()[range.start as usize..range.end as usize]
                    .iter()
                    .map(move |&position| layer.first_row + u64::from(position));
                (layer.key(i), rows)
            })
        })
    }

    /// Whether `key` has rows in a layer before the `layer`-th.
    fn in_layer_before(&self, key: Key<'_>, layer: usize) -> bool {
        let hash = key_hash(key);
        self.layers[..layer.min(self.layers.len())]
            .iter()
            .any(|l| !l.find(key, hash).is_empty())
    }

    /// Every key with saved rows, once.
    pub(super) fn distinct_keys(&self) -> impl Iterator<Item = Key<'_>> + '_ {
        self.layers.iter().enumerate().flat_map(move |(n, layer)| {
            (0..layer.hashes.len())
                .map(move |i| layer.key(i))
                .filter(move |&key| !self.in_layer_before(key, n))
        })
    }
}
