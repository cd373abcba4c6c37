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

    /// An empty map for keys of this codec.
    pub fn map<V>(&self) -> KeyMap<V> {
        KeyMap {
            ints: IntMap::default(),
            null: None,
            rows: foldhash::HashMap::default(),
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
#[derive(Debug)]
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
    rows: foldhash::HashMap<RowKey, V>,
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

    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: Key<'_>) -> Option<&V> {
        match key {
            Key::Int(Some(int)) => self.ints.get(int),
            Key::Int(None) => self.null.as_ref(),
            Key::Row(row) => self.rows.get(row),
        }
    }

    /// The value of `key`, to change.
    #[inline]
    pub fn get_mut(&mut self, key: Key<'_>) -> Option<&mut V> {
        match key {
            Key::Int(Some(int)) => self.ints.get_mut(int),
            Key::Int(None) => self.null.as_mut(),
            Key::Row(row) => self.rows.get_mut(row),
        }
    }

    /// Sets the value of `key`, returning the value it had.
    #[inline]
    pub fn insert(&mut self, key: Key<'_>, value: V) -> Option<V> {
        match key {
            Key::Int(Some(int)) => self.ints.insert(int, value),
            Key::Int(None) => self.null.replace(value),
            Key::Row(row) => {
                let key = RowKey::from(row);
                let heap = key.heap_bytes();
                let previous = self.rows.insert(key, value);
                if previous.is_none() {
                    self.heap += heap;
                }
                previous
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
                let (key, value) = self.rows.remove_entry(row)?;
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
            self.rows.reserve(additional);
        }
    }

    /// Every key and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Key<'_>, &V)> {
        self.ints
            .iter()
            .map(|(key, value)| (Key::Int(Some(key)), value))
            .chain(self.null.iter().map(|value| (Key::Int(None), value)))
            .chain(self.rows.iter().map(|(key, value)| (Key::Row(key.as_ref()), value)))
    }

    /// Every value, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.ints
            .values_mut()
            .chain(self.null.iter_mut())
            .chain(self.rows.values_mut())
    }

    /// Keeps the entries for whose value `keep` is true (it may change the value).
    pub fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        self.ints.retain(&mut keep);
        if self.null.as_mut().is_some_and(|value| !keep(value)) {
            self.null = None;
        }
        let mut freed = 0;
        self.rows.retain(|key, value| {
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
        let bytes = if self.integer {
            self.ints.capacity_bytes()
        } else {
            self.rows.capacity().saturating_mul(size_of::<(RowKey, V)>())
        };
        if bytes <= CACHED_BYTES {
            return (0..keys.len() as u32).collect();
        }
        if self.integer {
            let ints = keys.map(|key| match key {
                Key::Int(Some(int)) => int,
                Key::Int(None) | Key::Row(_) => 0,
            });
            let (positions, capacity) = self.ints.positions(ints);
            return order_by_bucket(capacity, positions.into_iter());
        }
        let rows = self.rows.hasher();
        let hashes = keys.map(|key| match key {
            Key::Row(row) => rows.hash_one(row),
            Key::Int(_) => 0,
        });
        order_by_bucket(self.rows.capacity(), hashes)
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
        }
    }
}
