//! Checksums of checkpoint files, computed when a file is written and checked whole every
//! time a process restores it.
//!
//! The check guards against damage (a file cut short or zeroed by a crash before it reached
//! the disk, a disk's or a person's changes), not against an adversary: whoever can change a
//! state file can change the manifest that records its checksum. So it is XXH3 — memory speed
//! with AVX2 — not a cryptographic hash. BLAKE3, used before, ran at about 2.5 GB/s per core:
//! checking TPC-H Q18's 1.1 GB join state at scale factor 1 cost 0.19 s of every
//! command-line refresh on two threads, XXH3 0.04 s (docs/benchmarks.md).
//!
//! The checksum is XXH3-128 over the XXH3-128 digests of the file's [`BLOCK`]-byte blocks in
//! order (the last one shorter), so the blocks are hashed on several threads and the result
//! does not depend on how many. Files recorded with a BLAKE3 hash by earlier versions are
//! still checked against it ([`blake3`]).

use twox_hash::XxHash3_128;

/// The blocks hashed apart.
const BLOCK: usize = 16 << 20;

/// At most this many threads hash one file: past two or three, memory bandwidth is the limit.
const MAX_THREADS: usize = 4;

/// The checksum of `bytes`, as 32 hex digits.
pub(crate) fn checksum(bytes: &[u8]) -> String {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_THREADS)
    });
    format!("{:032x}", checksum_with(bytes, BLOCK, threads))
}

/// The checksum of `bytes` in blocks of `block` bytes, on up to `threads` threads.
fn checksum_with(bytes: &[u8], block: usize, threads: usize) -> u128 {
    let blocks: Vec<&[u8]> = if bytes.is_empty() {
        vec![bytes]
    } else {
        bytes.chunks(block).collect()
    };
    let threads = threads.clamp(1, blocks.len());
    let per_thread = blocks.len().div_ceil(threads);
    let digests = |blocks: &[&[u8]]| -> Vec<u8> {
        blocks
            .iter()
            .flat_map(|block| XxHash3_128::oneshot(block).to_le_bytes())
            .collect()
    };
    let digests: Vec<u8> = if threads == 1 {
        digests(&blocks)
    } else {
        std::thread::scope(|scope| {
            let mut parts = blocks.chunks(per_thread);
            let first = parts.next().unwrap_or_default();
            let others: Vec<_> = parts.map(|part| scope.spawn(move || digests(part))).collect();
            let mut all = digests(first);
            for other in others {
                all.extend(other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
            }
            all
        })
    };
    XxHash3_128::oneshot(&digests)
}

/// The BLAKE3 hash of `bytes` in hex, as earlier versions recorded a state file's.
pub(crate) fn blake3(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same checksum on any number of threads, for lengths around the block size; any
    /// changed byte, a byte more or less, changes it.
    #[test]
    fn checksums_do_not_depend_on_threads_and_see_any_change() {
        let block = 1024;
        let bytes: Vec<u8> = (0..10 * block + 17).map(|i| (i * 31 % 251) as u8).collect();
        for length in [0, 1, block - 1, block, block + 1, 3 * block, 7 * block + 5, bytes.len()] {
            let input = &bytes[..length];
            let one = checksum_with(input, block, 1);
            for threads in [2, 3, 4, 16] {
                assert_eq!(
                    checksum_with(input, block, threads),
                    one,
                    "{length} bytes, {threads} threads"
                );
            }
            if length > 0 {
                assert_ne!(checksum_with(&input[..length - 1], block, 2), one, "{length} bytes cut");
                let mut changed = input.to_vec();
                changed[length / 2] ^= 1;
                assert_ne!(checksum_with(&changed, block, 2), one, "{length} bytes, one changed");
            }
        }
        assert_eq!(checksum(&bytes).len(), 32);
    }
}
