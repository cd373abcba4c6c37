//! Running totals of each materialized table's refreshes since the engine opened: what a
//! monitoring system scrapes (counters only grow; the durations as a histogram), where the
//! in-memory history keeps only the last attempts.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::{RefreshAttempt, lock};
use crate::Engine;

/// Upper bounds (seconds) of the refresh-duration histogram's buckets; a last bucket holds
/// everything slower. From a continuous table's milliseconds to a large FULL refresh's minutes.
pub const REFRESH_DURATION_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

/// A materialized table's refreshes since the engine opened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RefreshStatistics {
    /// Attempts by outcome (`committed`, `skipped`, `failed`).
    pub attempts: BTreeMap<String, u64>,
    /// Committed refreshes by algorithm (`incremental`, `full`).
    pub committed: BTreeMap<String, u64>,
    /// The algorithm of the last committed refresh.
    pub last_algorithm: Option<String>,
    /// Rows written by committed refreshes (inserted, plus deleted for incremental ones).
    pub rows_written: u64,
    /// Input change rows processed by incremental refreshes.
    pub input_changes: u64,
    /// Rows corrected because the table had drifted from its query (zero unless it had).
    pub corrected_rows: u64,
    /// Committed refreshes by duration: `duration_buckets[i]` counts those that took at most
    /// [`REFRESH_DURATION_BUCKETS`]`[i]` and more than the bound before it; the last entry
    /// counts those slower than every bound.
    pub duration_buckets: [u64; REFRESH_DURATION_BUCKETS.len() + 1],
    /// Total duration of committed refreshes, in seconds.
    pub duration_sum_seconds: f64,
}

impl RefreshStatistics {
    /// Adds one attempt.
    pub(crate) fn add(&mut self, attempt: &RefreshAttempt) {
        *self.attempts.entry(attempt.outcome.clone()).or_default() += 1;
        if attempt.outcome != "committed" {
            return;
        }
        if let Some(algorithm) = &attempt.algorithm {
            *self.committed.entry(algorithm.clone()).or_default() += 1;
            self.last_algorithm = Some(algorithm.clone());
        }
        self.rows_written += attempt.rows;
        self.input_changes += attempt.input_changes.unwrap_or(0);
        self.corrected_rows += attempt.corrected_rows.unwrap_or(0);
        let seconds = attempt.duration_ms.max(0) as f64 / 1000.0;
        let bucket = REFRESH_DURATION_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(REFRESH_DURATION_BUCKETS.len());
        self.duration_buckets[bucket] += 1;
        self.duration_sum_seconds += seconds;
    }

    /// Committed refreshes in all.
    pub fn committed_total(&self) -> u64 {
        self.duration_buckets.iter().sum()
    }
}

impl Engine {
    /// Materialized table `name`'s refreshes since the engine opened (all zero for a name
    /// that has none).
    pub fn refresh_statistics(&self, name: &str) -> RefreshStatistics {
        self.inner
            .materialized
            .existing_runtime(name)
            .map(|runtime| lock(&runtime.statistics).clone())
            .unwrap_or_default()
    }

    /// Bytes of materialized table `name`'s operator state in memory (0 when it has none: a
    /// FULL table, or before its first incremental refresh). While a refresh holds the state,
    /// what it was before.
    pub fn materialized_state_bytes(&self, name: &str) -> u64 {
        let Some(runtime) = self.inner.materialized.existing_runtime(name) else {
            return 0;
        };
        if let Ok(state) = runtime.incremental.try_lock() {
            let bytes = state.as_ref().map_or(0, |state| state.memory.size() as u64);
            runtime.state_bytes.store(bytes, Ordering::Relaxed);
        }
        runtime.state_bytes.load(Ordering::Relaxed)
    }

    /// Waits until the work a refresh of materialized table `name` left for after it returned
    /// is done: its operator state kept for the next refresh (the row index brought up to
    /// date, a large state's checkpoint due written and committed).
    pub async fn wait_for_materialized_state(&self, name: &str) {
        if let Some(runtime) = self.inner.materialized.existing_runtime(name) {
            drop(runtime.incremental.lock().await);
        }
    }

    /// Bytes the engine's queries and operator states hold in its memory pool now.
    pub fn memory_reserved(&self) -> u64 {
        self.inner.ctx.runtime_env().memory_pool.reserved() as u64
    }

    /// What the engine's storage has done since it opened: commits, compactions, bytes read
    /// and written, what VACUUM removed.
    pub fn storage_statistics(&self) -> crate::StorageStatistics {
        self.inner.catalog.storage_statistics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Trigger;

    fn attempt(outcome: &str, duration_ms: i64, algorithm: Option<&str>) -> RefreshAttempt {
        RefreshAttempt {
            table: "t".into(),
            trigger: Trigger::Schedule,
            started_at_ms: 0,
            duration_ms,
            partition: None,
            outcome: outcome.into(),
            version: None,
            rows: 3,
            algorithm: algorithm.map(String::from),
            reason: None,
            input_changes: algorithm.filter(|a| *a == "incremental").map(|_| 5),
            corrected_rows: None,
            detail: None,
            watermark_ms: None,
            late_rows: None,
        }
    }

    #[test]
    fn committed_refreshes_fall_in_the_bucket_of_their_duration() {
        let mut statistics = RefreshStatistics::default();
        statistics.add(&attempt("committed", 3, Some("incremental")));
        statistics.add(&attempt("committed", 10, Some("incremental")));
        statistics.add(&attempt("committed", 70_000, Some("full")));
        statistics.add(&attempt("failed", 2, None));
        statistics.add(&attempt("skipped", 0, None));
        assert_eq!(statistics.duration_buckets[0], 1, "3 ms <= 5 ms");
        assert_eq!(statistics.duration_buckets[1], 1, "10 ms <= 10 ms");
        assert_eq!(
            statistics.duration_buckets[REFRESH_DURATION_BUCKETS.len()],
            1,
            "70 s > 60 s"
        );
        assert_eq!(statistics.committed_total(), 3);
        assert!((statistics.duration_sum_seconds - 70.013).abs() < 1e-9);
        assert_eq!(statistics.attempts["committed"], 3);
        assert_eq!(statistics.attempts["failed"], 1);
        assert_eq!(statistics.attempts["skipped"], 1);
        assert_eq!(statistics.committed["incremental"], 2);
        assert_eq!(statistics.committed["full"], 1);
        assert_eq!(statistics.last_algorithm.as_deref(), Some("full"));
        assert_eq!(statistics.rows_written, 9, "only committed refreshes write");
        assert_eq!(statistics.input_changes, 10);
    }
}
