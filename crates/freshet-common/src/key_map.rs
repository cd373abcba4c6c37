//! Maps keyed by the values of some columns: the groups of an aggregate, the rows of a
//! materialized table's row index.
//!
//! A key in general is a row in Arrow's row format, kept as a [`RowKey`]. A key of one integer
//! column — the commonest GROUP BY, and the commonest unique key of a table — is kept as the
//! `i64` itself: nothing to encode, a one-word hash and comparison, and a map entry of 8 bytes
//! plus the value instead of 32 plus the value, so that a map of a hundred thousand keys stays
//! in the cache that encoded keys overflow. Integer keys that fill a compact range are kept in
//! an array indexed by the key (`int_map`).

mod int_map;

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use crate::probe_order::{CACHED_BYTES, order_by_bucket};
use crate::{FreshetError, Result, RowKey};
use int_map::IntMap;

/// Encodes the key columns of batches as [`Keys`].
#[derive(Debug)]
pub struct KeyCodec {
    /// `None`: the key is one integer column, kept as `i64`.
    converter: Option<RowConverter>,
}

impl KeyCodec {
    /// A codec for keys made of columns of `types` (at least one).
    pub fn new(types: &[DataType]) -> Result<Self> {
        if let [single] = types
            && is_integer_like(single)
        {
            return Ok(Self { converter: None });
        }
        let fields = types.iter().map(|t| SortField::new(t.clone())).collect();
        let converter = RowConverter::new(fields).map_err(internal)?;
        Ok(Self {
            converter: Some(converter),
        })
    }

    /// The keys of the rows of `columns` (the key columns, in the codec's order).
    pub fn encode(&self, columns: &[ArrayRef]) -> Result<Keys> {
        match (&self.converter, columns) {
            (Some(converter), _) => Ok(Keys::Rows(converter.convert_columns(columns).map_err(internal)?)),
            (None, [column]) => {
                let ints = cast(column, &DataType::Int64).map_err(internal)?;
                Ok(Keys::Int(ints.as_primitive::<Int64Type>().clone()))
            }
            (None, _) => Err(internal(format!("a one-column key given {} columns", columns.len()))),
        }
    }

    /// The keys at `indices` of `keys` (encoded by this codec), in that order.
    pub fn take(&self, keys: &Keys, indices: &[u32]) -> Result<Keys> {
        match (&self.converter, keys) {
            (_, Keys::Int(ints)) => {
                let indices = UInt32Array::from(indices.to_vec());
                let taken = take(ints, &indices, None).map_err(internal)?;
                Ok(Keys::Int(taken.as_primitive::<Int64Type>().clone()))
            }
            (Some(converter), Keys::Rows(rows)) => {
                let bytes: usize = indices.iter().map(|&i| rows.row(i as usize).data().len()).sum();
                let mut taken = converter.empty_rows(indices.len(), bytes);
                for &i in indices {
                    taken.push(rows.row(i as usize));
                }
                Ok(Keys::Rows(taken))
            }
            (None, Keys::Rows(_)) => Err(internal("row-format keys given to an integer key codec")),
        }
    }

    /// The key columns (of `types`, the codec's) of `keys` (encoded by this codec), in order.
    pub fn decode<'k>(&self, keys: impl IntoIterator<Item = Key<'k>>, types: &[DataType]) -> Result<Vec<ArrayRef>> {
        match (&self.converter, types) {
            (Some(converter), _) => {
                let parser = converter.parser();
                let rows: Vec<_> = keys
                    .into_iter()
                    .map(|key| match key {
                        Key::Row(bytes) => Ok(parser.parse(bytes)),
                        Key::Int(_) => Err(internal("an integer key given to a row key codec")),
                    })
                    .collect::<Result<_>>()?;
                converter.convert_rows(rows).map_err(internal)
            }
            (None, [data_type]) => {
                let ints = keys
                    .into_iter()
                    .map(|key| match key {
                        Key::Int(value) => Ok(value),
                        Key::Row(_) => Err(internal("a row key given to an integer key codec")),
                    })
                    .collect::<Result<Int64Array>>()?;
                Ok(vec![cast(&ints, data_type).map_err(internal)?])
            }
            (None, _) => Err(internal(format!("a one-column key decoded as {} columns", types.len()))),
        }
    }

    /// An empty map for keys of this codec.
    pub fn map<V>(&self) -> KeyMap<V> {
        KeyMap {
            ints: IntMap::default(),
            null: None,
            rows: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            integer: self.converter.is_none(),
            heap: 0,
        }
    }
}

/// Types whose values convert to distinct `i64`s.
fn is_integer_like(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(..)
    )
}

/// The keys of a batch's rows.
#[derive(Debug, Clone)]
pub enum Keys {
    /// One integer column (NULLs included).
    Int(Int64Array),
    /// Rows in Arrow's row format.
    Rows(Rows),
}

impl Keys {
    /// Rows.
    pub fn len(&self) -> usize {
        match self {
            Keys::Int(ints) => ints.len(),
            Keys::Rows(rows) => rows.num_rows(),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of row `row`.
    #[inline]
    pub fn key(&self, row: usize) -> Key<'_> {
        match self {
            Keys::Int(ints) => Key::Int(ints.is_valid(row).then(|| ints.value(row))),
            Keys::Rows(rows) => Key::Row(rows.row(row).data()),
        }
    }
}

/// One key, borrowed from [`Keys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key<'a> {
    /// An integer key; `None` is NULL.
    Int(Option<i64>),
    /// A key in Arrow's row format.
    Row(&'a [u8]),
}

/// A hash map keyed by the [`Key`]s of one [`KeyCodec`] (made by [`KeyCodec::map`]).
#[derive(Debug, Clone)]
pub struct KeyMap<V> {
    ints: IntMap<V>,
    /// The value of the NULL integer key.
    null: Option<V>,
    /// Row keys, by the hash of their bytes under `hasher` (see [`KeyMap::probe`]).
    rows: HashTable<(RowKey, V)>,
    hasher: foldhash::fast::RandomState,
    /// Keys are integers (else rows).
    integer: bool,
    /// Bytes of the row keys held outside the map's slots.
    heap: usize,
}

impl<V> KeyMap<V> {
    /// Keys in the map.
    pub fn len(&self) -> usize {
        self.ints.len() + self.rows.len() + usize::from(self.null.is_some())
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory of the entries, approximately: each key and value, and the row keys' heap bytes.
    pub fn bytes(&self) -> usize {
        self.ints.bytes() + self.rows.len() * size_of::<(RowKey, V)>() + self.heap
    }

    /// The hash of a row key's bytes, as the map keeps them.
    #[inline]
    fn hash_row(&self, row: &[u8]) -> u64 {
        self.hasher.hash_one(row)
    }

    /// The hash the `*_hashed` methods take for `key` (integer keys need none).
    #[inline]
    fn hash_of(&self, key: Key<'_>) -> u64 {
        match key {
            Key::Row(row) => self.hash_row(row),
            Key::Int(_) => 0,
        }
    }

    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: Key<'_>) -> Option<&V> {
        let hash = self.hash_of(key);
        self.get_hashed(key, hash)
    }

    /// The value of `key`, whose hash the [`Probe`] of this map gave (any for integer keys).
    #[inline]
    pub fn get_hashed(&self, key: Key<'_>, hash: u64) -> Option<&V> {
        match key {
            Key::Int(Some(int)) => self.ints.get(int),
            Key::Int(None) => self.null.as_ref(),
            Key::Row(row) => self
                .rows
                .find(hash, |(k, _)| k.as_bytes() == row)
                .map(|(_, value)| value),
        }
    }

    /// The value of `key`, to change.
    #[inline]
    pub fn get_mut(&mut self, key: Key<'_>) -> Option<&mut V> {
        let hash = self.hash_of(key);
        self.get_mut_hashed(key, hash)
    }

    /// The value of `key`, whose hash the [`Probe`] of this map gave (any for integer keys), to
    /// change.
    #[inline]
    pub fn get_mut_hashed(&mut self, key: Key<'_>, hash: u64) -> Option<&mut V> {
        match key {
            Key::Int(Some(int)) => self.ints.get_mut(int),
            Key::Int(None) => self.null.as_mut(),
            Key::Row(row) => self
                .rows
                .find_mut(hash, |(k, _)| k.as_bytes() == row)
                .map(|(_, value)| value),
        }
    }

    /// Sets the value of `key`, returning the value it had.
    #[inline]
    pub fn insert(&mut self, key: Key<'_>, value: V) -> Option<V> {
        let hash = self.hash_of(key);
        self.insert_hashed(key, hash, value)
    }

    /// Sets the value of `key`, whose hash the [`Probe`] of this map gave (any for integer
    /// keys), returning the value it had.
    #[inline]
    pub fn insert_hashed(&mut self, key: Key<'_>, hash: u64, value: V) -> Option<V> {
        match key {
            Key::Int(Some(int)) => self.ints.insert(int, value),
            Key::Int(None) => self.null.replace(value),
            Key::Row(row) => {
                let hasher = &self.hasher;
                match self.rows.entry(
                    hash,
                    |(k, _)| k.as_bytes() == row,
                    |(k, _)| hasher.hash_one(k.as_bytes()),
                ) {
                    Entry::Occupied(mut entry) => Some(std::mem::replace(&mut entry.get_mut().1, value)),
                    Entry::Vacant(entry) => {
                        let key = RowKey::from(row);
                        self.heap += key.heap_bytes();
                        entry.insert((key, value));
                        None
                    }
                }
            }
        }
    }

    /// The value of `key` (whose hash the [`Probe`] of this map gave; any for integer keys),
    /// set to `make()` first when it has none — one lookup where a `get` and an `insert` take
    /// two, or three to change the value inserted. `None` only if the map lost the key it just
    /// set (a bug).
    #[inline]
    pub fn get_or_insert_hashed(&mut self, key: Key<'_>, hash: u64, make: impl FnOnce() -> V) -> Option<&mut V> {
        match key {
            Key::Int(Some(int)) => self.ints.get_or_insert_with(int, make),
            Key::Int(None) => Some(self.null.get_or_insert_with(make)),
            Key::Row(row) => {
                let hasher = &self.hasher;
                let entry = match self.rows.entry(
                    hash,
                    |(k, _)| k.as_bytes() == row,
                    |(k, _)| hasher.hash_one(k.as_bytes()),
                ) {
                    Entry::Occupied(entry) => entry,
                    Entry::Vacant(entry) => {
                        let key = RowKey::from(row);
                        self.heap += key.heap_bytes();
                        entry.insert((key, make()))
                    }
                };
                Some(&mut entry.into_mut().1)
            }
        }
    }

    /// Removes `key`, returning its value.
    #[inline]
    pub fn remove(&mut self, key: Key<'_>) -> Option<V> {
        match key {
            Key::Int(Some(int)) => self.ints.remove(int),
            Key::Int(None) => self.null.take(),
            Key::Row(row) => {
                let hash = self.hash_row(row);
                let entry = self.rows.find_entry(hash, |(k, _)| k.as_bytes() == row).ok()?;
                let ((key, value), _) = entry.remove();
                self.heap = self.heap.saturating_sub(key.heap_bytes());
                Some(value)
            }
        }
    }

    /// Makes room for `additional` more keys.
    pub fn reserve(&mut self, additional: usize) {
        if self.integer {
            self.ints.reserve(additional);
        } else {
            let hasher = &self.hasher;
            self.rows.reserve(additional, |(k, _)| hasher.hash_one(k.as_bytes()));
        }
    }

    /// Every key and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Key<'_>, &V)> {
        self.ints
            .iter()
            .map(|(key, value)| (Key::Int(Some(key)), value))
            .chain(self.null.iter().map(|value| (Key::Int(None), value)))
            .chain(self.rows.iter().map(|(key, value)| (Key::Row(key.as_bytes()), value)))
    }

    /// Every value, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.ints
            .values_mut()
            .chain(self.null.iter_mut())
            .chain(self.rows.iter_mut().map(|(_, value)| value))
    }

    /// Keeps the entries for whose value `keep` is true (it may change the value).
    pub fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        self.ints.retain(&mut keep);
        if self.null.as_mut().is_some_and(|value| !keep(value)) {
            self.null = None;
        }
        let mut freed = 0;
        self.rows.retain(|(key, value)| {
            let kept = keep(value);
            if !kept {
                freed += key.heap_bytes();
            }
            kept
        });
        self.heap = self.heap.saturating_sub(freed);
    }

    /// The indices of `keys` in about the order in which the map keeps them, so that looking
    /// them up sweeps the map's memory instead of missing the cache at each (see
    /// the `probe_order` module); in their own order when the map fits the cache.
    pub fn probe_order<'k>(&self, keys: impl ExactSizeIterator<Item = Key<'k>>) -> Vec<u32> {
        self.probe(keys).order
    }

    /// The order to look `keys` up in (as [`KeyMap::probe_order`]) and, for row keys, their
    /// hashes, which [`KeyMap::get_hashed`] and [`KeyMap::insert_hashed`] take: each key is
    /// hashed once for its lookup, insertion and place in the order.
    pub fn probe<'k>(&self, keys: impl ExactSizeIterator<Item = Key<'k>>) -> Probe {
        let count = keys.len();
        let bytes = if self.integer {
            self.ints.capacity_bytes()
        } else {
            self.rows.capacity().saturating_mul(size_of::<(RowKey, V)>())
        };
        let cached = bytes <= CACHED_BYTES;
        if self.integer {
            if cached {
                return Probe::unhashed(count);
            }
            let ints = keys.map(|key| match key {
                Key::Int(Some(int)) => int,
                Key::Int(None) | Key::Row(_) => 0,
            });
            let (positions, capacity) = self.ints.positions(ints);
            return Probe {
                order: order_by_bucket(capacity, positions.into_iter()),
                hashes: Vec::new(),
            };
        }
        let hashes: Vec<u64> = keys.map(|key| self.hash_of(key)).collect();
        let order = match cached {
            true => (0..count as u32).collect(),
            false => order_by_bucket(self.rows.capacity(), hashes.iter().copied()),
        };
        Probe { order, hashes }
    }
}

/// How to look a batch's keys up in a [`KeyMap`] ([`KeyMap::probe`]).
#[derive(Debug)]
pub struct Probe {
    /// The indices of the keys, in the order to look them up in.
    pub order: Vec<u32>,
    /// The hash of each row key, by index (empty for integer keys).
    hashes: Vec<u64>,
}

impl Probe {
    fn unhashed(count: usize) -> Self {
        Self {
            order: (0..count as u32).collect(),
            hashes: Vec::new(),
        }
    }

    /// The hash of the key at `index` (0 for integer keys, which need none).
    #[inline]
    pub fn hash(&self, index: usize) -> u64 {
        self.hashes.get(index).copied().unwrap_or(0)
    }
}

fn internal(e: impl std::fmt::Display) -> FreshetError {
    FreshetError::Internal(format!("keys: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int32Array, StringArray};

    use super::*;

    #[test]
    fn keys_decode_to_the_columns_they_were_encoded_from() {
        use datafusion::arrow::array::{Date32Array, TimestampMillisecondArray};
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(vec![Some(3), None, Some(-7)])),
            Arc::new(Date32Array::from(vec![Some(19_000), Some(0), None])),
            Arc::new(
                TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), None, Some(-5)]).with_timezone("UTC"),
            ),
            Arc::new(UInt32Array::from(vec![Some(u32::MAX), Some(0), None])),
            Arc::new(StringArray::from(vec![Some("a"), None, Some("")])),
        ];
        let one_at_a_time = columns.iter().map(|c| vec![c.clone()]);
        for columns in one_at_a_time.chain([columns.clone()]) {
            let types: Vec<DataType> = columns.iter().map(|c| c.data_type().clone()).collect();
            let codec = KeyCodec::new(&types).unwrap();
            let keys = codec.encode(&columns).unwrap();
            let decoded = codec
                .decode((0..keys.len()).rev().map(|i| keys.key(i)), &types)
                .unwrap();
            let reversed: Vec<ArrayRef> = columns
                .iter()
                .map(|c| take(c, &UInt32Array::from(vec![2, 1, 0]), None).unwrap())
                .collect();
            assert_eq!(decoded, reversed, "{:?}", types);
        }
    }

    #[test]
    fn integer_keys_and_row_keys_find_what_was_put() {
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![Some(3), None, Some(-7), Some(3)]));
        let texts: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None, Some("bb"), Some("a")]));
        for columns in [vec![ints.clone()], vec![ints, texts]] {
            let types: Vec<DataType> = columns.iter().map(|c| c.data_type().clone()).collect();
            let codec = KeyCodec::new(&types).unwrap();
            let keys = codec.encode(&columns).unwrap();
            assert_eq!(matches!(keys, Keys::Int(_)), columns.len() == 1);
            let mut map = codec.map::<usize>();
            for row in 0..3 {
                assert_eq!(map.insert(keys.key(row), row), None);
            }
            // Row 3 repeats row 0; NULL is a key like any other.
            assert_eq!(map.get(keys.key(3)), Some(&0));
            assert_eq!(map.get(keys.key(1)), Some(&1));
            assert_eq!(map.len(), 3);
            let order = map.probe_order((0..4).map(|row| keys.key(row)));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
            assert_eq!(map.remove(keys.key(1)), Some(1));
            map.retain(|row| *row != 2);
            assert_eq!(map.len(), 1);
            assert_eq!(map.get(keys.key(2)), None);
            for value in map.values_mut() {
                *value += 10;
            }
            let all: Vec<(Key<'_>, &usize)> = map.iter().collect();
            assert_eq!(all, vec![(keys.key(0), &10)]);
            assert_eq!(map.get(keys.key(0)), Some(&10));
            // Got where kept, set where not (the NULL key too), by the probe's hashes.
            let probe = map.probe((0..4).map(|row| keys.key(row)));
            for row in [3, 1, 2] {
                let value = map.get_or_insert_hashed(keys.key(row), probe.hash(row), || 20 + row);
                *value.unwrap() += 1;
            }
            assert_eq!(map.get(keys.key(0)), Some(&11));
            assert_eq!(map.get(keys.key(1)), Some(&22));
            assert_eq!(map.get(keys.key(2)), Some(&23));
            assert_eq!(map.len(), 3);
        }
    }
}
