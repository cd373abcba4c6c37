//! What an engine's storage has done since it opened, counted as it happens: what its
//! monitoring reads (Prometheus counters).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by an engine's tables (through [`crate::WriteOptions`]) and its store
/// (through [`crate::instrumented::Instruments::counting_into`]). They only grow.
#[derive(Debug, Default)]
pub struct StorageCounters {
    commits: AtomicU64,
    compactions: AtomicU64,
    vacuumed_files: AtomicU64,
    vacuumed_bytes: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) reads: AtomicU64,
    bytes_written: AtomicU64,
    writes: AtomicU64,
}

/// A reading of [`StorageCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStatistics {
    /// Versions committed to tables (writes, refreshes and compactions).
    pub commits: u64,
    /// Compactions committed.
    pub compactions: u64,
    /// Files VACUUM removed.
    pub vacuumed_files: u64,
    /// Bytes those files held.
    pub vacuumed_bytes: u64,
    /// Bytes read from the store (data, manifests, checkpoints).
    pub bytes_read: u64,
    /// Read requests.
    pub reads: u64,
    /// Bytes written to the store.
    pub bytes_written: u64,
    /// Write requests (a multipart upload's parts each count).
    pub writes: u64,
}

impl StorageCounters {
    /// The counters now.
    pub fn read(&self) -> StorageStatistics {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StorageStatistics {
            commits: get(&self.commits),
            compactions: get(&self.compactions),
            vacuumed_files: get(&self.vacuumed_files),
            vacuumed_bytes: get(&self.vacuumed_bytes),
            bytes_read: get(&self.bytes_read),
            reads: get(&self.reads),
            bytes_written: get(&self.bytes_written),
            writes: get(&self.writes),
        }
    }

    pub(crate) fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn compacted(&self) {
        self.compactions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn vacuumed(&self, files: u64, bytes: u64) {
        self.vacuumed_files.fetch_add(files, Ordering::Relaxed);
        self.vacuumed_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn count_read(&self, bytes: u64) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_write(&self, bytes: u64) {
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
    }
}
