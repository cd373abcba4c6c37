//! Keys sorted by a hash that does not change between processes, and found again by it without
//! a map: what a checkpoint saves beside a state (a join's rows, an aggregate's groups) so that
//! a restore takes the state as it is rather than inserting every key into a map again.
//!
//! A run of sorted hashes is found in through a [`HashDirectory`]: where each bucket of hashes
//! (their top bits) starts, built when the run is read — two reads a lookup, whatever the
//! state's size.

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

/// Where each hash bucket starts in a sorted run of hashes, so that a hash is found with two
/// reads: its bucket's bounds, then the few hashes between them.
///
/// A lookup that guessed a place from the hash alone was off by about the square root of the
/// run's length and bracketed the place with doubling steps and a binary search: some fifteen
/// cache misses in a large mapped index, most of TPC-H Q17's reopened step. The buckets are
/// the top bits of the hash, about one per hash, built in one pass over the run.
#[derive(Debug, Clone, Default)]
pub(crate) struct HashDirectory {
    /// Bits of a hash naming its bucket.
    bits: u32,
    /// `firsts[b]`: the place of the first hash in bucket `b` or after it; one more than the
    /// buckets, the last the run's length.
    firsts: Vec<u32>,
}

impl HashDirectory {
    /// The directory of `hashes`, sorted ascending (a caller checks; an unsorted run finds
    /// wrong places, never out of bounds). At most `u32::MAX` hashes.
    pub(crate) fn new(hashes: &[u64]) -> Self {
        let n = hashes.len();
        // About one hash per bucket: the largest power of two not above n.
        let bits = n.checked_ilog2().unwrap_or(0).min(32);
        let buckets = 1usize << bits;
        let mut firsts = Vec::with_capacity(buckets + 1);
        let mut place = 0usize;
        for bucket in 0..buckets {
            while place < n && Self::bucket_of(bits, hashes[place]) < bucket {
                place += 1;
            }
            firsts.push(place as u32);
        }
        firsts.push(n as u32);
        Self { bits, firsts }
    }

    #[inline]
    fn bucket_of(bits: u32, hash: u64) -> usize {
        // `bits` is at most 32: the shift is at least 32, and a zero-bit directory has one bucket.
        hash.checked_shr(64 - bits).unwrap_or(0) as usize
    }

    /// The first place in `hashes` (the run the directory was built over) holding `hash` or
    /// more.
    #[inline]
    pub(crate) fn first_at_or_above(&self, hashes: &[u64], hash: u64) -> usize {
        let bucket = Self::bucket_of(self.bits, hash);
        let (Some(&lo), Some(&hi)) = (self.firsts.get(bucket), self.firsts.get(bucket + 1)) else {
            return hashes.len();
        };
        let (lo, hi) = (lo as usize, (hi as usize).min(hashes.len()));
        if lo >= hi {
            return lo.min(hashes.len());
        }
        lo + hashes[lo..hi].partition_point(|&h| h < hash)
    }

    /// The directory's memory.
    pub(crate) fn bytes(&self) -> usize {
        self.firsts.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_place_at_or_above_a_hash_is_found_anywhere() {
        let hashes: Vec<u64> = [0, 5, 5, 9, u64::MAX / 3, u64::MAX / 2, u64::MAX / 2, u64::MAX - 1].to_vec();
        let directory = HashDirectory::new(&hashes);
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
            assert_eq!(directory.first_at_or_above(&hashes, probe), expected, "probe {probe}");
        }
        assert_eq!(HashDirectory::new(&[]).first_at_or_above(&[], 7), 0);
        assert_eq!(HashDirectory::new(&[3]).first_at_or_above(&[3], 4), 1);
    }

    proptest::proptest! {
        #[test]
        fn a_directory_finds_what_a_binary_search_finds(
            mut hashes in proptest::collection::vec(proptest::prelude::any::<u64>(), 0..300),
            clustered in proptest::prelude::any::<bool>(),
            probes in proptest::collection::vec(proptest::prelude::any::<u64>(), 1..50),
        ) {
            if clustered {
                // Hashes not spread: all in a few buckets.
                for h in &mut hashes {
                    *h = (*h % 7) << 60 | (*h % 3);
                }
            }
            hashes.sort_unstable();
            let directory = HashDirectory::new(&hashes);
            for probe in probes.iter().copied().chain(hashes.iter().copied()).chain([0, u64::MAX]) {
                proptest::prop_assert_eq!(
                    directory.first_at_or_above(&hashes, probe),
                    hashes.partition_point(|&h| h < probe)
                );
            }
        }
    }
}
