//! The binary's allocator: mimalloc, with freed memory given back to the system lazily.
//!
//! mimalloc rather than the system's allocator: operator state and refreshes allocate and free
//! buffers of hundreds of megabytes, which glibc hands back to the system and faults in again
//! (see the workspace's Cargo.toml).
//!
//! mimalloc in turn gives back ("purges") memory that stayed free for a second, by default with
//! `MADV_DONTNEED`: the pages are dropped at once, and the next refresh's temporaries fault
//! them in again, each one zeroed by the kernel. `perf` over TPC-H Q17's warm incremental
//! refreshes put 30 % of their samples in that zeroing (`clear_page_erms`). Purged with
//! `MADV_FREE` instead (`purge_decommits` off), the pages stay mapped and are reused as they
//! are; the kernel takes them back only when it needs memory. Over TPC-H at scale factor 1
//! (all 22 queries, the same binary with and without, docs/benchmarks.md) incremental
//! refreshes after 0.1 % changes took 0.29 s in all against 0.84 s, after 1 % 1.20 s against
//! 1.42 s, FULL refreshes 5.7 s against 7.4 s, first state builds 22 s against 35 s. The cost:
//! the process's resident size counts freed memory until the system is short of it (as with
//! jemalloc's default "muzzy" pages). `MIMALLOC_PURGE_DECOMMITS=1` in the environment restores
//! mimalloc's default; the option is only set when that variable is absent.
//!
//! Shared with the benchmarks (`#[path]`), so that their figures are the binary's.
#![allow(unsafe_code)]

/// The process's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The index of `mi_option_purge_decommits` in mimalloc's `mi_option_t`, the same in its
/// versions 2 and 3 (`libmimalloc-sys` has no constant for it).
const PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

/// Sets the allocator's options; called first thing in `main`, before any thread starts
/// (mimalloc's option setters are not thread-safe).
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DECOMMITS").is_some() {
        return;
    }
    // SAFETY: `mi_version` reads a constant. `mi_option_set` writes one option's slot; it is
    // called before any other thread exists, and only for the mimalloc versions whose option
    // at that index is `purge_decommits` (2.x and 3.x, `MI_MALLOC_VERSION` major * 10000).
    unsafe {
        let major = libmimalloc_sys::mi_version() / 10_000;
        if major == 2 || major == 3 {
            libmimalloc_sys::mi_option_set(PURGE_DECOMMITS, 0);
        }
    }
}
