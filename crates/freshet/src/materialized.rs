//! Materialized tables: a query, a freshness and a refresh mode, kept fresh by the engine.
//!
//! - [`definition`]: what the catalog stores for each table, the settings, the mode choice;
//! - `ddl`: the statements (CREATE, ALTER, DROP, SHOW, DESCRIBE);
//! - `refresh`: the FULL refresh — the query evaluated by DataFusion over one pinned set of
//!   input versions, committed atomically with the versions it read;
//! - `incremental`: the incremental refresh — input changes through the table's operator
//!   pipeline (`freshet-incremental`), state kept between refreshes; and the choice between it
//!   and a full refresh;
//! - `scheduler`: one task per engine waking each table at its freshness, with backoff after
//!   failures, on the engine's injectable clock;
//! - `status`: status, data lag, and the `freshet.materialized_tables` system table.

mod checkpoint;
mod correction;
mod ddl;
pub mod definition;
mod incremental;
mod refresh;
mod row_index;
mod scheduler;
mod statistics;
pub(crate) mod status;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, broadcast, watch};

use freshet_common::SharedClock;

pub(crate) use checkpoint::checkpoint_at_close;
pub use definition::{EffectiveMode, MaterializedDefinition, MaterializedSettings, Status};
pub(crate) use incremental::{operator_lines, scan_table_name};
pub use refresh::{RefreshOutcome, RefreshRecord, Trigger};
pub use scheduler::REFRESH_FAILED_TARGET;
pub use statistics::{REFRESH_DURATION_BUCKETS, RefreshStatistics};
pub(crate) use status::SystemSchema;
pub use status::{LastRefresh, MaterializedTableInfo};

/// Attempts kept per table in memory for `freshet.refreshes`.
const HISTORY_LENGTH: usize = 100;

/// Attempts a slow [`crate::Engine::refresh_attempts`] listener may fall behind by before it
/// misses some.
const ATTEMPTS_BUFFERED: usize = 1024;

/// One refresh attempt, as kept in the in-memory history.
#[derive(Debug, Clone)]
pub struct RefreshAttempt {
    /// The materialized table.
    pub table: String,
    /// What started it.
    pub trigger: Trigger,
    /// When it started (ms since the epoch, engine clock).
    pub started_at_ms: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// The partition refreshed, if one.
    pub partition: Option<String>,
    /// What happened: `committed`, `skipped` or `failed`.
    pub outcome: String,
    /// The version committed, for a committed refresh.
    pub version: Option<u64>,
    /// Rows written.
    pub rows: u64,
    /// `incremental` or `full`, for a committed refresh.
    pub algorithm: Option<String>,
    /// Why that algorithm.
    pub reason: Option<String>,
    /// Input change rows processed by an incremental refresh.
    pub input_changes: Option<u64>,
    /// Rows corrected because the table differed from its query when the operator state was
    /// rebuilt (beyond float rounding); `None` when the refresh did not rebuild it.
    pub corrected_rows: Option<u64>,
    /// The error of a failed refresh, or why a refresh was skipped.
    pub detail: Option<String>,
    /// For a committed refresh over sources with an event time: the watermark of the input
    /// versions it reflects (the least over them; `i64::MAX` once they all ended).
    pub watermark_ms: Option<i64>,
    /// For a committed refresh over sources with an event time: the rows those sources had
    /// dropped as late by the versions it reflects.
    pub late_rows: Option<u64>,
}

/// In-memory state of one materialized table.
#[derive(Debug, Default)]
pub(crate) struct Runtime {
    /// Held while refreshing: one refresh of a table at a time.
    pub refreshing: tokio::sync::Mutex<()>,
    /// When the scheduler should refresh it next (engine clock, ms).
    pub next_due_ms: Mutex<Option<i64>>,
    /// The record of the last refresh committed, with its version (a compaction may have
    /// committed a newer version since).
    pub last_committed: Mutex<Option<(u64, RefreshRecord)>>,
    /// What full refreshes and state rebuilds of the table have cost, for AUTO's choice.
    pub costs: Mutex<RefreshCosts>,
    /// When the table's result next changes with time alone (a row of a filter comparing with
    /// `now()` enters or leaves), as its incremental state last found (engine clock, ms).
    pub time_change_ms: Mutex<Option<i64>>,
    /// Versions of the inputs a CONTINUOUS table's last refresh started from.
    pub seen_inputs: Mutex<std::collections::BTreeMap<String, u64>>,
    /// The incremental pipeline and its state, between refreshes. A committed refresh hands
    /// it to a task that brings it up to the new version (its row index learns where the
    /// inserted rows went) while holding this lock: whoever needs the state next waits for it.
    pub incremental: Arc<tokio::sync::Mutex<Option<incremental::IncrementalState>>>,
    /// Its refreshes since the engine opened.
    pub statistics: Mutex<RefreshStatistics>,
    /// The refreshes committed at the table's retained versions, newest first, as
    /// `freshet.refreshes` first read them from its log (once per engine).
    pub logged: tokio::sync::OnceCell<Vec<RefreshAttempt>>,

    /// Bytes of the operator state when last looked at (while a refresh holds the state, this
    /// is what it was before).
    pub state_bytes: AtomicU64,
}

/// Measured costs (wall time, ms) of a table's refreshes in this process: what AUTO weighs
/// when the operator state is not in memory.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RefreshCosts {
    /// The last full refresh of the whole table.
    pub last_full_ms: Option<u64>,
    /// The last rebuild of the operator state.
    pub last_build_ms: Option<u64>,
    /// Full refreshes since the state was last built (or since the engine opened).
    pub full_since_build_ms: u64,
}

/// The engine's materialized-table machinery.
#[derive(Debug)]
pub(crate) struct Materialized {
    pub clock: SharedClock,
    pub settings: RwLock<MaterializedSettings>,
    runtimes: Mutex<HashMap<String, Arc<Runtime>>>,
    history: Mutex<VecDeque<RefreshAttempt>>,
    /// Every attempt as it is recorded, for [`crate::Engine::refresh_attempts`].
    attempts: broadcast::Sender<RefreshAttempt>,
    /// Wakes the scheduler to look at its schedules again.
    pub wake: Arc<Notify>,
    /// Rounds of the scheduler asked for by [`crate::Engine::wait_for_refreshes`].
    pub requested: AtomicU64,
    /// The last requested round the scheduler has completed (every refresh due then run).
    pub processed: watch::Sender<u64>,
    /// Set when the engine closes; the scheduler stops.
    pub closing: watch::Sender<bool>,
    pub task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Materialized {
    pub(crate) fn new(clock: SharedClock, settings: MaterializedSettings) -> Self {
        Self {
            clock,
            settings: RwLock::new(settings),
            runtimes: Mutex::new(HashMap::new()),
            history: Mutex::new(VecDeque::new()),
            attempts: broadcast::channel(ATTEMPTS_BUFFERED).0,
            wake: Arc::new(Notify::new()),
            requested: AtomicU64::new(0),
            processed: watch::channel(0).0,
            closing: watch::channel(false).0,
            task: Mutex::new(None),
        }
    }

    pub(crate) fn runtime(&self, name: &str) -> Arc<Runtime> {
        lock(&self.runtimes).entry(name.to_string()).or_default().clone()
    }

    /// A table's runtime state, without making one for a name that has none.
    pub(crate) fn existing_runtime(&self, name: &str) -> Option<Arc<Runtime>> {
        lock(&self.runtimes).get(name).cloned()
    }

    pub(crate) fn committed(&self, name: &str, version: u64, record: RefreshRecord) {
        *lock(&self.runtime(name).last_committed) = Some((version, record));
    }

    /// The record of a refresh committed as `version`, if it is the last one.
    pub(crate) fn committed_record(&self, name: &str, version: u64) -> Option<RefreshRecord> {
        lock(&self.runtime(name).last_committed)
            .as_ref()
            .filter(|(v, _)| *v == version)
            .map(|(_, r)| r.clone())
    }

    /// Drops a table's incremental state (it no longer matches the table's contents).
    pub(crate) async fn forget_state(&self, name: &str) {
        let runtime = self.runtime(name);
        runtime.incremental.lock().await.take();
        *lock(&runtime.time_change_ms) = None;
    }

    pub(crate) fn forget(&self, name: &str) {
        lock(&self.runtimes).remove(name);
    }

    pub(crate) fn settings(&self) -> MaterializedSettings {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn record(&self, attempt: RefreshAttempt) {
        let mut history = lock(&self.history);
        let of_table = history.iter().filter(|a| a.table == attempt.table).count();
        if of_table >= HISTORY_LENGTH
            && let Some(oldest) = history.iter().position(|a| a.table == attempt.table)
        {
            history.remove(oldest);
        }
        history.push_back(attempt.clone());
        drop(history);
        lock(&self.runtime(&attempt.table).statistics).add(&attempt);
        // Nobody listening is normal.
        let _ = self.attempts.send(attempt);
    }

    pub(crate) fn subscribe_attempts(&self) -> broadcast::Receiver<RefreshAttempt> {
        self.attempts.subscribe()
    }

    pub(crate) fn history(&self) -> Vec<RefreshAttempt> {
        lock(&self.history).iter().cloned().collect()
    }

    pub(crate) fn set_next_due(&self, name: &str, at_ms: Option<i64>) {
        *lock(&self.runtime(name).next_due_ms) = at_ms;
        self.wake.notify_one();
    }

    pub(crate) fn next_due(&self, name: &str) -> Option<i64> {
        *lock(&self.runtime(name).next_due_ms)
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
