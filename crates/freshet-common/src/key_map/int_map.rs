//! Maps keyed by `i64`: a hash table, or — when the keys fill a compact range, as ids, codes and
//! dates usually do — an array indexed by the key itself (the "perfect hash" that DuckDB's and
//! ClickHouse's aggregates use for small integer ranges). A lookup in the array is one load,
//! without hashing, probing or comparing, and the array is no larger than the table, so that more
//! of it stays in the cache: a refresh's lookups in an aggregate's groups and in a table's row
//! index are mostly cache misses, and a miss less is what makes them faster.

use std::hash::BuildHasher;

/// Maps of fewer keys stay hashed: a small table fits the cache anyway.
const DENSE_MIN_KEYS: usize = 1024;
/// A hashed map becomes an array when its keys' range has at most this many values per key.
/// An array slot of a `u32` value is 8 bytes and a table entry 16, at a load of 44–87 %: at
/// four slots per key the array is at most about twice the table, and usually smaller.
const DENSE_SLOTS_PER_KEY: u64 = 4;
/// A hashed map becomes an array only at half that many values per key, so that keys whose
/// density sits at the limit (TPC-H's order keys use one value in four) do not switch the map
/// back and forth, copying it whole at every key they add.
const DENSE_ENTER_SLOTS_PER_KEY: u64 = DENSE_SLOTS_PER_KEY / 2;
/// An array whose keys thinned out to fewer than one per this many slots becomes a hashed map
/// again (apart from the other threshold, so that a map near one does not switch back and forth).
const SPARSE_SLOTS_PER_KEY: u64 = 16;

/// A map keyed by `i64`, hashed or dense (see the module's documentation).
#[derive(Debug, Clone)]
pub(crate) enum IntMap<V> {
    Hashed {
        map: foldhash::HashMap<i64, V>,
        /// Bounds of the keys inserted since the map was hashed (removals do not narrow them).
        low: i64,
        high: i64,
    },
    Dense(Dense<V>),
}

/// Values by key: `values[i]` is the key `base + i`'s.
#[derive(Debug, Clone)]
pub(crate) struct Dense<V> {
    base: i64,
    values: Vec<Option<V>>,
    len: usize,
}

impl<V> Dense<V> {
    /// The index of `key` in `values`, when the array covers it.
    #[inline]
    fn index(&self, key: i64) -> Option<usize> {
        // Below `base` the difference wraps to at least 2^63, past any array's length.
        let index = key.wrapping_sub(self.base) as u64;
        (index < self.values.len() as u64).then_some(index as usize)
    }
}

impl<V> Dense<V> {
    /// Drops the empty slots at both ends.
    fn trim(&mut self) {
        let lead = self.values.iter().take_while(|v| v.is_none()).count();
        if lead == self.values.len() {
            self.values.clear();
            return;
        }
        let trail = self.values.iter().rev().take_while(|v| v.is_none()).count();
        self.values.truncate(self.values.len() - trail);
        self.values.drain(..lead);
        self.base = self.base.wrapping_add(lead as i64);
    }
}

/// Values from `low` to `high`, both included (saturating at `u64::MAX`).
fn span(low: i64, high: i64) -> u64 {
    high.abs_diff(low).saturating_add(1)
}

/// Whether `keys` keys spanning `span` values are dense enough for an array.
fn dense_enough(keys: usize, span: u64) -> bool {
    keys >= DENSE_MIN_KEYS && span <= DENSE_SLOTS_PER_KEY.saturating_mul(keys as u64)
}

/// Whether a hashed map of `keys` keys spanning `span` values becomes an array.
fn dense_enough_to_switch(keys: usize, span: u64) -> bool {
    keys >= DENSE_MIN_KEYS && span <= DENSE_ENTER_SLOTS_PER_KEY.saturating_mul(keys as u64)
}

impl<V> Default for IntMap<V> {
    fn default() -> Self {
        IntMap::Hashed {
            map: foldhash::HashMap::default(),
            low: i64::MAX,
            high: i64::MIN,
        }
    }
}

impl<V> IntMap<V> {
    pub(crate) fn len(&self) -> usize {
        match self {
            IntMap::Hashed { map, .. } => map.len(),
            IntMap::Dense(dense) => dense.len,
        }
    }

    #[inline]
    pub(crate) fn get(&self, key: i64) -> Option<&V> {
        match self {
            IntMap::Hashed { map, .. } => map.get(&key),
            IntMap::Dense(dense) => dense.index(key).and_then(|i| dense.values[i].as_ref()),
        }
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, key: i64) -> Option<&mut V> {
        match self {
            IntMap::Hashed { map, .. } => map.get_mut(&key),
            IntMap::Dense(dense) => dense.index(key).and_then(|i| dense.values[i].as_mut()),
        }
    }

    /// Sets the value of `key`, returning the value it had.
    pub(crate) fn insert(&mut self, key: i64, value: V) -> Option<V> {
        match self {
            IntMap::Hashed { map, low, high } => {
                *low = (*low).min(key);
                *high = (*high).max(key);
                let previous = map.insert(key, value);
                if previous.is_none() && dense_enough_to_switch(map.len(), span(*low, *high)) {
                    self.make_dense();
                }
                previous
            }
            IntMap::Dense(dense) => {
                if let Some(i) = dense.index(key) {
                    let previous = dense.values[i].replace(value);
                    dense.len += usize::from(previous.is_none());
                    return previous;
                }
                // Slots emptied at the ends (keys that moved on, as ids do) are dropped first.
                dense.trim();
                if dense.values.is_empty() {
                    dense.base = key;
                }
                let last = dense.base.wrapping_add((dense.values.len() as i64 - 1).max(0));
                let (low, high) = (dense.base.min(key), last.max(key));
                let needed = span(low, high);
                if !dense_enough(dense.len + 1, needed) {
                    self.make_hashed();
                    return self.insert(key, value);
                }
                // Grown with room for half as many keys again on the side it grows (within the
                // density limit), so that keys arriving in order copy the array a logarithmic
                // number of times.
                let limit = DENSE_SLOTS_PER_KEY.saturating_mul(dense.len as u64 + 1);
                let room = (dense.values.len() as u64 / 2).min(limit - needed);
                // Without room to grow by a share of its size, an array at the density limit
                // would be copied at nearly every key: a table then.
                if room < dense.values.len() as u64 / 8 {
                    self.make_hashed();
                    return self.insert(key, value);
                }
                if key < dense.base {
                    let base = low.saturating_sub_unsigned(room);
                    let mut values = Vec::with_capacity(span(base, last) as usize);
                    values.resize_with(span(base, dense.base) as usize - 1, || None);
                    values.append(&mut dense.values);
                    dense.values = values;
                    dense.base = base;
                } else {
                    let end = high.saturating_add_unsigned(room);
                    dense.values.resize_with(span(dense.base, end) as usize, || None);
                }
                match dense.index(key) {
                    Some(i) => {
                        dense.values[i] = Some(value);
                        dense.len += 1;
                        None
                    }
                    None => {
                        self.make_hashed();
                        self.insert(key, value)
                    }
                }
            }
        }
    }

    /// The value of `key`, set to `make()` first when it has none: one lookup, unless the map
    /// changes form or a dense one grows (`None` only if the map lost the key it just set).
    pub(crate) fn get_or_insert_with(&mut self, key: i64, make: impl FnOnce() -> V) -> Option<&mut V> {
        let direct = match self {
            IntMap::Hashed { map, low, high } => {
                !dense_enough_to_switch(map.len() + 1, span((*low).min(key), (*high).max(key)))
            }
            IntMap::Dense(dense) => dense.index(key).is_some(),
        };
        if !direct {
            if self.get(key).is_none() {
                self.insert(key, make());
            }
            return self.get_mut(key);
        }
        match self {
            IntMap::Hashed { map, low, high } => {
                *low = (*low).min(key);
                *high = (*high).max(key);
                Some(map.entry(key).or_insert_with(make))
            }
            IntMap::Dense(dense) => {
                let index = dense.index(key)?;
                let slot = &mut dense.values[index];
                dense.len += usize::from(slot.is_none());
                Some(slot.get_or_insert_with(make))
            }
        }
    }

    /// Removes `key`, returning its value.
    pub(crate) fn remove(&mut self, key: i64) -> Option<V> {
        match self {
            IntMap::Hashed { map, low, high } => {
                let value = map.remove(&key);
                if map.is_empty() {
                    (*low, *high) = (i64::MAX, i64::MIN);
                }
                value
            }
            IntMap::Dense(dense) => {
                let value = dense.index(key).and_then(|i| dense.values[i].take());
                if value.is_some() {
                    dense.len -= 1;
                    self.hash_if_sparse();
                }
                value
            }
        }
    }

    /// Makes room for `additional` more keys (a dense map has room for the keys of its range).
    pub(crate) fn reserve(&mut self, additional: usize) {
        if let IntMap::Hashed { map, .. } = self {
            map.reserve(additional);
        }
    }

    /// Every key and its value.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (i64, &V)> {
        let (hashed, dense) =
            match self {
                IntMap::Hashed { map, .. } => (Some(map.iter().map(|(key, value)| (*key, value))), None),
                IntMap::Dense(dense) => (
                    None,
                    Some(dense.values.iter().enumerate().filter_map(|(i, value)| {
                        value.as_ref().map(|value| (dense.base.wrapping_add(i as i64), value))
                    })),
                ),
            };
        hashed.into_iter().flatten().chain(dense.into_iter().flatten())
    }

    /// Every value, to change.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        let (hashed, dense) = match self {
            IntMap::Hashed { map, .. } => (Some(map.values_mut()), None),
            IntMap::Dense(dense) => (None, Some(dense.values.iter_mut().flatten())),
        };
        hashed.into_iter().flatten().chain(dense.into_iter().flatten())
    }

    /// Keeps the entries for whose value `keep` is true (it may change the value).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        match self {
            IntMap::Hashed { map, .. } => map.retain(|_, value| keep(value)),
            IntMap::Dense(dense) => {
                for slot in &mut dense.values {
                    if slot.as_mut().is_some_and(|value| !keep(value)) {
                        *slot = None;
                        dense.len -= 1;
                    }
                }
                self.hash_if_sparse();
            }
        }
    }

    /// Memory of the entries, approximately.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            IntMap::Hashed { map, .. } => map.len() * size_of::<(i64, V)>(),
            IntMap::Dense(dense) => dense.values.len() * size_of::<Option<V>>(),
        }
    }

    /// Where the map keeps each of `keys` (a hash table's bucket before masking, an array's
    /// index), and the capacity those positions are in: what probing in the order of the map's
    /// memory sorts by.
    pub(crate) fn positions(&self, keys: impl Iterator<Item = i64>) -> (Vec<u64>, usize) {
        match self {
            IntMap::Hashed { map, .. } => {
                let hasher = map.hasher();
                (keys.map(|key| hasher.hash_one(key)).collect(), map.capacity())
            }
            IntMap::Dense(dense) => (
                keys.map(|key| dense.index(key).unwrap_or_default() as u64).collect(),
                dense.values.len(),
            ),
        }
    }

    /// The size of the memory the map's entries are in, in bytes.
    pub(crate) fn capacity_bytes(&self) -> usize {
        match self {
            IntMap::Hashed { map, .. } => map.capacity() * size_of::<(i64, V)>(),
            IntMap::Dense(dense) => dense.values.len() * size_of::<Option<V>>(),
        }
    }

    /// Whether the keys are kept in an array.
    #[cfg(test)]
    pub(crate) fn is_dense(&self) -> bool {
        matches!(self, IntMap::Dense(_))
    }

    fn make_dense(&mut self) {
        let IntMap::Hashed { map, .. } = self else {
            return;
        };
        let map = std::mem::take(map);
        let base = map.keys().copied().min().unwrap_or_default();
        let high = map.keys().copied().max().unwrap_or_default();
        let mut values = Vec::with_capacity(span(base, high) as usize);
        values.resize_with(span(base, high) as usize, || None);
        let len = map.len();
        for (key, value) in map {
            values[key.wrapping_sub(base) as u64 as usize] = Some(value);
        }
        *self = IntMap::Dense(Dense { base, values, len });
    }

    fn hash_if_sparse(&mut self) {
        if let IntMap::Dense(dense) = self
            && (dense.len as u64).saturating_mul(SPARSE_SLOTS_PER_KEY) < dense.values.len() as u64
        {
            self.make_hashed();
        }
    }

    fn make_hashed(&mut self) {
        let IntMap::Dense(dense) = self else {
            return;
        };
        let mut map = foldhash::HashMap::with_capacity_and_hasher(dense.len, Default::default());
        let (mut low, mut high) = (i64::MAX, i64::MIN);
        let base = dense.base;
        for (i, value) in std::mem::take(&mut dense.values).into_iter().enumerate() {
            if let Some(value) = value {
                let key = base.wrapping_add(i as i64);
                (low, high) = (low.min(key), high.max(key));
                map.insert(key, value);
            }
        }
        *self = IntMap::Hashed { map, low, high };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A small generator, so that the test needs no dependency.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Random inserts (or gets-or-inserts) and removals, with keys now from a compact range and now from anywhere
    /// (both ends of `i64` included), agree with a `HashMap` throughout, and the map is an array
    /// exactly when its keys were dense when it last changed form.
    #[test]
    fn agrees_with_a_hash_map_as_it_changes_form() {
        let mut random = Random(0x2545_F491_4F6C_DD1D);
        let mut map = IntMap::<u32>::default();
        let mut model: HashMap<i64, u32> = HashMap::new();
        let (mut was_dense, mut was_hashed) = (false, false);
        for step in 0..200_000u32 {
            let phase = (step / 20_000) % 4;
            let key = match phase {
                // Ids counting up and down from a base.
                0 => 1_000_000 + (random.next() % 6_000) as i64,
                1 => 1_000_000 - (random.next() % 3_000) as i64,
                // Now and then a key from anywhere.
                2 if random.next().is_multiple_of(50) => [i64::MIN, i64::MAX, random.next() as i64][step as usize % 3],
                _ => 1_000_000 + (random.next() % 9_000) as i64 - 4_000,
            };
            let removing = match phase {
                3 => random.next() % 10 < 7,
                _ => random.next() % 10 < 3,
            };
            if removing {
                assert_eq!(map.remove(key), model.remove(&key), "remove {key}");
            } else if step % 2 == 0 {
                assert_eq!(map.insert(key, step), model.insert(key, step), "insert {key}");
            } else {
                // Kept when there, else set; then changed in place.
                let value = map.get_or_insert_with(key, || step).expect("just set");
                let expected = model.entry(key).or_insert(step);
                assert_eq!(*value, *expected, "get or insert {key}");
                *value += 1;
                *expected += 1;
            }
            assert_eq!(map.len(), model.len());
            was_dense |= map.is_dense();
            was_hashed |= !map.is_dense() && model.len() > DENSE_MIN_KEYS;
            if step % 5_000 == 0 {
                for (key, value) in &model {
                    assert_eq!(map.get(*key), Some(value));
                }
                let mut values: Vec<u32> = map.values_mut().map(|v| *v).collect();
                let mut expected: Vec<u32> = model.values().copied().collect();
                values.sort_unstable();
                expected.sort_unstable();
                assert_eq!(values, expected);
            }
        }
        assert!(was_dense && was_hashed, "both forms were exercised");
        for key in [i64::MIN, -1, 0, 999_999, 1_000_000, i64::MAX] {
            assert_eq!(map.get(key), model.get(&key));
        }
        map.retain(|value| *value % 2 == 0);
        model.retain(|_, value| *value % 2 == 0);
        assert_eq!(map.len(), model.len());
        for (key, value) in &model {
            assert_eq!(map.get(*key), Some(value));
        }
    }

    #[test]
    fn dense_keys_become_an_array_smaller_than_the_table() {
        let mut map = IntMap::<u32>::default();
        for key in (0..100_000i64).rev() {
            map.insert(key * 2, key as u32);
        }
        assert!(map.is_dense());
        assert_eq!(map.get(199_998), Some(&99_999));
        assert_eq!(map.get(199_999), None);
        // Consecutive keys take half the bytes of a table's entries.
        let mut consecutive = IntMap::<u32>::default();
        for key in 0..100_000i64 {
            consecutive.insert(key, 0);
        }
        assert!(consecutive.bytes() <= 100_000 * size_of::<(i64, u32)>() * 3 / 4);
        // A far key that would make the array too sparse turns it back into a table.
        map.insert(i64::MAX, 7);
        assert!(!map.is_dense());
        assert_eq!(map.get(i64::MAX), Some(&7));
        assert_eq!(map.get(2), Some(&1));
        // Removing most keys of an array makes it a table again.
        let mut map = IntMap::<u32>::default();
        for key in 0..10_000i64 {
            map.insert(key, 0);
        }
        assert!(map.is_dense());
        for key in 0..9_900i64 {
            map.remove(key);
        }
        assert!(!map.is_dense());
        assert_eq!(map.len(), 100);
        assert_eq!(map.get(9_950), Some(&0));
    }

    #[test]
    fn keys_at_the_density_limit_do_not_switch_the_map_back_and_forth() {
        // Keys using one value in four (and in three, and five), ascending, descending and
        // shuffled: each switch copies the map, so a map switching at every key costs
        // quadratic time.
        let mut random = Random(7);
        for (every, order) in [3, 4, 5]
            .into_iter()
            .flat_map(|every| [(every, 0), (every, 1), (every, 2)])
        {
            let mut keys: Vec<i64> = (0..50_000i64).map(|key| key * every).collect();
            if order == 1 {
                keys.reverse();
            }
            if order == 2 {
                for i in (1..keys.len()).rev() {
                    keys.swap(i, (random.next() % (i as u64 + 1)) as usize);
                }
            }
            let mut map = IntMap::<u32>::default();
            let mut switches = 0;
            let mut dense = map.is_dense();
            for key in keys {
                map.insert(key, 0);
                if map.is_dense() != dense {
                    switches += 1;
                    dense = map.is_dense();
                }
            }
            assert!(
                switches <= 2,
                "{switches} switches at one key in {every} (order {order})"
            );
        }
    }
}
