//! Keys sorted by a hash that does not change between processes, and found again by it without
//! a map: what a checkpoint saves beside a state (a join's rows, an aggregate's groups) so that
//! a restore takes the state as it is rather than inserting every key into a map again.
//!
//! The hashes of a saved state are spread uniformly, so a key's place is about `hash / 2^64` of
//! the way through them: a lookup starts there, brackets the place with steps doubling in
//! length, and ends with a binary search — a few cache misses, whatever the state's size.

use freshet_common::Key;

/// Seeds the hash keys are sorted by (any fixed value; [`hash_check`] guards against a hash
/// that changed between the writing and the reading process).
const SEED: u64 = 0xf0e5_4e71_dec5_0001;

/// The hash a saved key is sorted and found by.
#[inline]
pub(crate) fn key_hash(key: Key<'_>) -> u64 {
    use std::hash::BuildHasher;
    let hasher = foldhash::fast::FixedState::with_seed(SEED);
    match key {
        Key::Int(Some(int)) => hasher.hash_one(int),
        Key::Int(None) => hasher.hash_one(u64::MAX - 1) ^ 1,
        Key::Row(row) => hasher.hash_one(row),
    }
}

/// The hashes of fixed values, saved beside sorted keys: keys sorted under another hash (a
/// checkpoint of another build) are not looked up by this one.
pub(crate) fn hash_check() -> String {
    format!(
        "{:x}.{:x}",
        key_hash(Key::Int(Some(0x0123_4567_89ab_cdef))),
        key_hash(Key::Row(b"freshet join index"))
    )
}

/// The first place in `hashes` (sorted, spread uniformly) holding `hash` or more.
pub(crate) fn first_at_or_above(hashes: &[u64], hash: u64) -> usize {
    let n = hashes.len();
    if n == 0 {
        return 0;
    }
    let guess = ((u128::from(hash) * n as u128) >> 64) as usize;
    let (mut lo, mut hi);
    if hashes[guess] < hash {
        let mut step = 1;
        lo = guess;
        loop {
            let next = guess.saturating_add(step);
            if next >= n {
                hi = n;
                break;
            }
            if hashes[next] >= hash {
                hi = next;
                break;
            }
            lo = next;
            step *= 2;
        }
        lo += 1;
    } else {
        let mut step = 1;
        hi = guess;
        loop {
            let Some(next) = guess.checked_sub(step) else {
                lo = 0;
                break;
            };
            if hashes[next] < hash {
                lo = next + 1;
                break;
            }
            hi = next;
            step *= 2;
        }
    }
    lo + hashes[lo..hi].partition_point(|&h| h < hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_place_at_or_above_a_hash_is_found_anywhere() {
        let hashes: Vec<u64> = [0, 5, 5, 9, u64::MAX / 3, u64::MAX / 2, u64::MAX / 2, u64::MAX - 1].to_vec();
        for probe in [
            0,
            1,
            5,
            6,
            9,
            10,
            u64::MAX / 3,
            u64::MAX / 2 - 1,
            u64::MAX / 2,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let expected = hashes.partition_point(|&h| h < probe);
            assert_eq!(first_at_or_above(&hashes, probe), expected, "probe {probe}");
        }
        assert_eq!(first_at_or_above(&[], 7), 0);
    }
}
