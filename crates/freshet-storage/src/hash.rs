//! BLAKE3 hashes of large buffers on two threads.
//!
//! A checkpoint's state file is hashed when written and checked whole every time a process
//! restores it: a gigabyte took 0.10–0.15 s on one core, every command-line refresh of a
//! large join state. BLAKE3 is a tree of 1 KiB chunks whose left subtrees are complete powers
//! of two (section 2.1 of its paper), so two subtrees can be hashed apart and their chaining
//! values merged (`blake3::hazmat`); the result is the same hash as [`blake3::hash`] (tested
//! against it).

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};

/// Below this many bytes a buffer is hashed on the calling thread alone.
const PARALLEL_BYTES: usize = 8 << 20;

/// The BLAKE3 hash of `bytes`: on two threads when it is large.
pub(crate) fn hash(bytes: &[u8]) -> blake3::Hash {
    hash_from(bytes, PARALLEL_BYTES)
}

/// [`hash`], on two threads from `parallel` bytes up.
fn hash_from(bytes: &[u8], parallel: usize) -> blake3::Hash {
    if bytes.len() < parallel.max(2 * blake3::CHUNK_LEN + 1) {
        return blake3::hash(bytes);
    }
    // The root's children: the largest power-of-two number of chunks below the length, and the
    // rest (no larger). Hashing them apart would leave one thread with up to all but a chunk of
    // the work when the rest is small: then the left child's two halves go apart, the second
    // with the rest (each thread then has between a third and two thirds of the input).
    let left = left_subtree_len(bytes.len() as u64) as usize;
    let (first, rest) = bytes.split_at(left);
    if rest.len() * 2 >= left {
        let (a, b) = std::thread::scope(|scope| {
            let b = scope.spawn(|| subtree(rest, left));
            (
                subtree(first, 0),
                b.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            )
        });
        return merge_subtrees_root(&a, &b, Mode::Hash);
    }
    let half = left / 2;
    let (a, b) = std::thread::scope(|scope| {
        let b = scope.spawn(|| subtree(&first[half..], half));
        (
            subtree(&first[..half], 0),
            b.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        )
    });
    let first = merge_subtrees_non_root(&a, &b, Mode::Hash);
    merge_subtrees_root(&first, &subtree(rest, left), Mode::Hash)
}

/// The chaining value of the subtree of `bytes` starting `offset` bytes into the input.
fn subtree(bytes: &[u8], offset: usize) -> ChainingValue {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset as u64);
    hasher.update(bytes);
    hasher.finalize_non_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal to the one-thread hash at every kind of length: around the chunk size, powers of
    /// two and a chunk either side of them (both splits), and uneven ones.
    #[test]
    fn hashes_as_one_thread_does() {
        let chunk = blake3::CHUNK_LEN;
        let bytes: Vec<u8> = (0..(1usize << 20) + 3 * chunk).map(|i| (i * 31 % 251) as u8).collect();
        let mut lengths = vec![
            0,
            1,
            chunk - 1,
            chunk,
            chunk + 1,
            2 * chunk,
            2 * chunk + 1,
            3 * chunk - 7,
        ];
        for power in 11..=20 {
            let n = 1usize << power;
            lengths.extend([n - chunk, n - 1, n, n + 1, n + chunk, n + n / 3, n + n / 2, n + n - 1]);
        }
        lengths.extend([123_457, 654_321, 999_999, bytes.len()]);
        for length in lengths.into_iter().filter(|&l| l <= bytes.len()) {
            let input = &bytes[..length];
            assert_eq!(hash_from(input, 0), blake3::hash(input), "{length} bytes");
        }
    }
}
