//! The scheduler: one task per engine that refreshes each active materialized table once per
//! freshness interval, in dependency order, on the engine's clock. A failed refresh is retried
//! with exponential backoff; after [`MAX_FAILURES`] consecutive failures the table goes to
//! FAILED until `RESUME`. The task holds the engine only while it works, so an engine that is
//! dropped stops it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use freshet_sql::Freshness;

use super::Status;
use super::refresh::{RefreshRecord, RefreshRequest, Trigger};
use crate::engine::{Engine, EngineInner};

/// Consecutive failed refreshes after which a table goes to FAILED.
pub const MAX_FAILURES: u32 = 5;
/// The first retry comes this long after a failure; each further one waits twice as long
/// (never longer than the table's freshness).
const FIRST_RETRY_MS: i64 = 1_000;

impl Engine {
    /// Sets every active table's first refresh from its last one, and starts the task.
    pub(crate) fn start_scheduler(&self) {
        let now = self.inner.materialized.clock.now_ms();
        for name in self.materialized_names() {
            let Ok(definition) = self.materialized_definition(&name) else {
                continue;
            };
            if definition.status != Status::Active {
                continue;
            }
            let last = self
                .inner
                .catalog
                .table(&name)
                .ok()
                .and_then(|t| RefreshRecord::of(&t.snapshot()))
                .map(|r| r.started_at_ms);
            let due = last.map_or(now, |l| l.saturating_add(millis(definition.effective.freshness)));
            self.inner.materialized.set_next_due(&name, Some(due));
        }
        let task = tokio::spawn(run(Arc::downgrade(&self.inner)));
        *super::lock(&self.inner.materialized.task) = Some(task);
    }

    /// Stops the scheduler after the refresh it is running, if any.
    pub(crate) async fn stop_scheduler(&self) {
        self.inner.materialized.closing.send_replace(true);
        let task = super::lock(&self.inner.materialized.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Waits until the scheduler has looked at its schedules after this call and run every
    /// refresh due by then. With a manual clock: advance it, then wait here, instead of
    /// sleeping.
    pub async fn wait_for_refreshes(&self) {
        let materialized = &self.inner.materialized;
        if *materialized.closing.borrow() {
            return;
        }
        let round = materialized.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut processed = materialized.processed.subscribe();
        materialized.wake.notify_one();
        let mut closing = materialized.closing.subscribe();
        tokio::select! {
            _ = processed.wait_for(|p| *p >= round) => {}
            _ = closing.wait_for(|c| *c) => {}
        }
    }

    /// Runs the refreshes due at `now`, upstream tables first.
    async fn run_due(&self, now: i64) {
        let mut due = BTreeSet::new();
        let mut inputs = HashMap::new();
        for name in self.materialized_names() {
            let Ok(definition) = self.materialized_definition(&name) else {
                continue;
            };
            let is_due = self.inner.materialized.next_due(&name).is_some_and(|t| t <= now);
            if definition.status == Status::Active && is_due {
                due.insert(name.clone());
            }
            inputs.insert(name, definition.inputs);
        }
        while !due.is_empty() {
            // A table runs once no table it reads is still waiting to run.
            let ready: Vec<String> = due
                .iter()
                .filter(|n| {
                    !inputs
                        .get(*n)
                        .is_some_and(|i| i.iter().any(|x| due.contains(x) && x != *n))
                })
                .cloned()
                .collect();
            let batch = if ready.is_empty() {
                due.iter().cloned().collect()
            } else {
                ready
            };
            for name in batch {
                due.remove(&name);
                self.scheduled_refresh(&name, now).await;
            }
        }
    }

    async fn scheduled_refresh(&self, name: &str, now: i64) {
        let materialized = &self.inner.materialized;
        let Ok(mut definition) = self.materialized_definition(name) else {
            return;
        };
        let partition = definition
            .scheduled_partition_column()
            .and_then(|(column, pattern)| Some((column.to_string(), format_time(now, pattern)?)));
        let request = RefreshRequest {
            trigger: Trigger::Schedule,
            partition,
            force: false,
        };
        let freshness = millis(definition.effective.freshness);
        match self.refresh(name, request).await {
            Ok(_) => {
                materialized.set_next_due(name, Some(now.saturating_add(freshness)));
                if definition.failures > 0 || definition.last_error.is_some() {
                    definition.failures = 0;
                    definition.last_error = None;
                    self.store_status(name, &definition).await;
                }
            }
            Err(e) => {
                definition.failures += 1;
                definition.last_error = Some(e.to_string());
                tracing::warn!(table = %name, failures = definition.failures, error = %e, "refresh failed");
                if definition.failures >= MAX_FAILURES {
                    definition.status = Status::Failed;
                    materialized.set_next_due(name, None);
                } else {
                    let backoff = FIRST_RETRY_MS.saturating_mul(1 << (definition.failures - 1).min(30));
                    materialized.set_next_due(name, Some(now.saturating_add(backoff.min(freshness))));
                }
                self.store_status(name, &definition).await;
            }
        }
    }

    /// Stores a status change made by the scheduler; the table may have been dropped or
    /// altered meanwhile, in which case the newer definition wins.
    async fn store_status(&self, name: &str, status: &super::MaterializedDefinition) {
        let Ok(mut current) = self.materialized_definition(name) else {
            return;
        };
        current.status = status.status;
        current.failures = status.failures;
        current.last_error = status.last_error.clone();
        if let Err(e) = self.store_definition(name, &current).await {
            tracing::warn!(table = %name, error = %e, "cannot store the status of a materialized table");
        }
    }
}

async fn run(engine: Weak<EngineInner>) {
    loop {
        let (sleep, wake, mut closing) = {
            let Some(inner) = engine.upgrade() else { return };
            let engine = Engine { inner };
            let materialized = &engine.inner.materialized;
            if *materialized.closing.borrow() {
                return;
            }
            let round = materialized.requested.load(Ordering::SeqCst);
            let now = materialized.clock.now_ms();
            engine.run_due(now).await;
            materialized.processed.send_replace(round);
            let next = engine
                .materialized_names()
                .iter()
                .filter_map(|n| materialized.next_due(n))
                .min();
            let sleep = match next {
                Some(at) => materialized.clock.sleep_until(at),
                None => Box::pin(std::future::pending()),
            };
            (sleep, materialized.wake.clone(), materialized.closing.subscribe())
        };
        tokio::select! {
            _ = sleep => {}
            _ = wake.notified() => {}
            _ = closing.wait_for(|c| *c) => return,
        }
    }
}

pub(crate) fn millis(freshness: Freshness) -> i64 {
    i64::try_from(freshness.duration().as_millis()).unwrap_or(i64::MAX)
}

/// A time formatted with a Java date pattern (UTC), for the partition of a schedule time.
pub(crate) fn format_time(at_ms: i64, java_pattern: &str) -> Option<String> {
    let pattern = super::definition::java_date_format(java_pattern).ok()?;
    let time = chrono::DateTime::from_timestamp_millis(at_ms)?;
    Some(time.format(&pattern).to_string())
}
