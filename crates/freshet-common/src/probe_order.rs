//! Probing a hash map far larger than the cache in the order of its buckets.
//!
//! A refresh looks up thousands of keys in maps of hundreds of thousands of entries (an
//! aggregate's groups, a table's row index). In the keys' own order nearly every probe misses
//! the cache; grouped by where the map keeps them, the probes sweep the map's memory in one
//! direction. A key's bucket is the low bits of its hash, as in any open-addressing table (Rust's
//! `HashMap` included); a wrong guess costs only speed.

use std::hash::{BuildHasher, Hash};

/// Ranges the buckets are grouped into: each of a large map's ranges then fits the cache.
const RANGES: u64 = 1024;

/// The number of buckets of a `HashMap` with `capacity` (which keeps 7 of 8 buckets usable).
pub fn buckets_of(capacity: usize) -> u64 {
    (capacity.max(1) as u64 * 8 / 7).next_power_of_two()
}

/// The indices of `keys` in about the order of the buckets of a map with `capacity` whose
/// hasher is `hasher`: grouped into ranges of buckets by one counting pass, stable within a
/// range.
pub fn probe_order<K: Hash + ?Sized>(
    hasher: &impl BuildHasher,
    capacity: usize,
    keys: impl ExactSizeIterator<Item = impl AsRef<K>>,
) -> Vec<u32> {
    let buckets = buckets_of(capacity);
    let shift = (buckets / RANGES).max(1).trailing_zeros();
    let ranges: Vec<u16> = keys
        .map(|key| ((hasher.hash_one(key.as_ref()) & (buckets - 1)) >> shift) as u16)
        .collect();
    let mut starts = vec![0u32; RANGES as usize + 1];
    for &range in &ranges {
        starts[range as usize + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut order = vec![0u32; ranges.len()];
    for (index, &range) in ranges.iter().enumerate() {
        let next = &mut starts[range as usize];
        order[*next as usize] = index as u32;
        *next += 1;
    }
    order
}

/// `items` in about the order of the buckets of a map with `capacity` whose hasher is
/// `hasher`, each item's key being `key(item)` (see [`probe_order`]).
pub fn in_probe_order<T>(
    hasher: &impl BuildHasher,
    capacity: usize,
    items: Vec<T>,
    key: impl Fn(&T) -> &[u8],
) -> Vec<T> {
    let order = probe_order::<[u8]>(hasher, capacity, items.iter().map(&key));
    let mut items: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| items[i as usize].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_comes_once_grouped_by_bucket_range() {
        let hasher = foldhash::fast::FixedState::with_seed(7);
        let keys: Vec<Vec<u8>> = (0..50_000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let capacity = 1 << 20;
        let order = probe_order::<[u8]>(&hasher, capacity, keys.iter());
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..50_000).collect::<Vec<u32>>());
        let buckets = buckets_of(capacity);
        let range = |i: u32| (hasher.hash_one(keys[i as usize].as_slice()) & (buckets - 1)) / (buckets / RANGES);
        assert!(order.windows(2).all(|w| range(w[0]) <= range(w[1])));
        // A small map: one range per bucket.
        let order = probe_order::<[u8]>(&hasher, 10, keys[..100].iter());
        assert_eq!(order.len(), 100);
        // Items follow the order of their keys.
        let items: Vec<(u32, &[u8])> = (0..1000).map(|i| (i, keys[i as usize].as_slice())).collect();
        let moved = in_probe_order(&hasher, capacity, items.clone(), |(_, key)| key);
        let order = probe_order::<[u8]>(&hasher, capacity, keys[..1000].iter());
        assert_eq!(moved.iter().map(|(i, _)| *i).collect::<Vec<_>>(), order);
    }
}
