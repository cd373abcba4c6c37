//! Work split into parts by key, run on both cores of a machine.
//!
//! An incremental refresh is a tight loop over one epoch's changes against state far larger
//! than the cache: a batch engine's full recomputation of the same query runs on every core,
//! so the incremental one must too. State kept by key (an aggregate's groups, a table's row
//! index) is split into parts by a hash of the key, independent of the hash the parts' own maps
//! use; each change goes to the part of its key, and the parts step at once on threads of
//! their own.

use std::hash::BuildHasher;

use crate::key_map::Key;

/// Changes fewer than this go through the parts one after the other on the calling thread:
/// starting a thread costs more than it saves.
pub const PARALLEL_MIN_ROWS: usize = 8_192;

/// Seeds the hash that chooses a key's part (any fixed value; it only must not change while
/// state split by it is kept).
const PART_SEED: u64 = 0x5eed_f4e5_4e70_0001;

/// The part of `key` among `parts`.
#[inline]
pub fn part_of(key: Key<'_>, parts: usize) -> usize {
    if parts <= 1 {
        return 0;
    }
    let hasher = foldhash::fast::FixedState::with_seed(PART_SEED);
    let hash = match key {
        Key::Int(Some(int)) => hasher.hash_one(int),
        Key::Int(None) => 0,
        Key::Row(row) => hasher.hash_one(row),
    };
    part_of_hash(hash, parts)
}

/// The part among `parts` of something hashed to `hash` (a hash whose low bits choose buckets
/// in maps): the high bits, scaled to the parts by a multiplication rather than a division.
#[inline]
pub fn part_of_hash(hash: u64, parts: usize) -> usize {
    (((hash >> 32) * parts as u64) >> 32) as usize
}

/// The indices of `items` items dealt into `parts` parts by the part of each one's key
/// (`key_of(index)`), each part in the items' order.
pub fn by_part<'k>(items: usize, parts: usize, key_of: impl Fn(usize) -> Key<'k>) -> Vec<Vec<u32>> {
    let parts = parts.max(1);
    // Room for a fair share and some: a part is rarely far above it.
    let mut dealt: Vec<Vec<u32>> = (0..parts)
        .map(|_| Vec::with_capacity(items / parts + items / 32 + 1))
        .collect();
    for item in 0..items {
        dealt[part_of(key_of(item), parts)].push(item as u32);
    }
    dealt
}

/// Runs `work` on every part of `parts` with the indices, in order, of the `items` items whose
/// key (`key_of(index)`) is in that part; at once (see [`run_parts`]) with at least
/// [`PARALLEL_MIN_ROWS`] items.
///
/// The items are dealt by the calling thread first. Each part picking its own items out of
/// all of them on its thread was measured slower on two cores: every part then hashes every key.
pub fn run_parts_by_key<'k, T: Send, R: Send>(
    parts: &mut [T],
    items: usize,
    key_of: impl Fn(usize) -> Key<'k>,
    work: impl Fn(usize, &mut T, &[u32]) -> R + Sync,
) -> Vec<R> {
    let dealt = by_part(items, parts.len(), key_of);
    run_parts(parts, items >= PARALLEL_MIN_ROWS, |part, state| {
        work(part, state, &dealt[part])
    })
}

/// Runs `work` on every part, the first on the calling thread and each other on a thread of
/// its own when `parallel`, else one after the other; the results come in the parts' order.
pub fn run_parts<T: Send, R: Send>(
    parts: &mut [T],
    parallel: bool,
    work: impl Fn(usize, &mut T) -> R + Sync,
) -> Vec<R> {
    let Some((first, rest)) = parts.split_first_mut().filter(|(_, rest)| parallel && !rest.is_empty()) else {
        return parts.iter_mut().enumerate().map(|(i, part)| work(i, part)).collect();
    };
    let work = &work;
    std::thread::scope(|scope| {
        let others: Vec<_> = rest
            .iter_mut()
            .enumerate()
            .map(|(i, part)| scope.spawn(move || work(i + 1, part)))
            .collect();
        let mut results = Vec::with_capacity(others.len() + 1);
        results.push(work(0, first));
        for other in others {
            // A part that panicked panics here, as it would have run on this thread.
            results.push(other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        results
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::datatypes::DataType;

    use super::*;
    use crate::KeyCodec;

    #[test]
    fn every_row_goes_to_the_one_part_of_its_key_and_parts_run_in_order() {
        let column: ArrayRef = Arc::new(Int64Array::from_iter(
            (0..10_000).map(|i| (i % 97 != 0).then_some(i % 1_000)),
        ));
        let keys = KeyCodec::new(&[DataType::Int64]).unwrap().encode(&[column]).unwrap();
        let parts = by_part(keys.len(), 2, |row| keys.key(row));
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 10_000);
        // Both parts get a fair share, and equal keys land together.
        assert!(parts.iter().all(|rows| rows.len() > 3_000));
        for (part, rows) in parts.iter().enumerate() {
            assert!(rows.windows(2).all(|w| w[0] < w[1]));
            assert!(rows.iter().all(|&row| part_of(keys.key(row as usize), 2) == part));
        }
        // Each part runs once, with its own items.
        for items in [1_000, keys.len()] {
            let mut seen = vec![Vec::new(); 2];
            let dealt = by_part(items, 2, |row| keys.key(row));
            run_parts_by_key(
                &mut seen,
                items,
                |row| keys.key(row),
                |_, seen, mine| {
                    seen.extend_from_slice(mine);
                },
            );
            assert_eq!(seen, dealt);
        }
        for parallel in [false, true] {
            let mut sums = vec![0u64; 3];
            let results = run_parts(&mut sums, parallel, |i, sum| {
                *sum = (0..=i as u64 * 10).sum();
                i
            });
            assert_eq!(results, vec![0, 1, 2]);
            assert_eq!(sums, vec![0, 55, 210]);
        }
    }
}
