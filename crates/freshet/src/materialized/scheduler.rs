//! The scheduler: one task per engine that refreshes each active materialized table once per
//! freshness interval, in dependency order, on the engine's clock — and a CONTINUOUS table as
//! soon as one of its inputs commits (followed through `Table::subscribe`, no polling). A failed refresh is retried
//! with exponential backoff; after [`MAX_FAILURES`] consecutive failures the table goes to
//! FAILED until `RESUME`. The task holds the engine only while it works, so an engine that is
//! dropped stops it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use freshet_sql::{Freshness, RefreshMode};

use super::Status;
use super::refresh::{RefreshRecord, RefreshRequest, Trigger};
use crate::engine::{Engine, EngineInner};

/// Consecutive failed refreshes after which a table goes to FAILED.
pub const MAX_FAILURES: u32 = 5;
/// The `tracing` target of a failed background refresh's warning (also in the refresh history
/// and in [`Engine::refresh_attempts`]).
pub const REFRESH_FAILED_TARGET: &str = "freshet::refresh_failed";
/// The first retry comes this long after a failure; each further one waits twice as long
/// (never longer than the table's freshness).
const FIRST_RETRY_MS: i64 = 1_000;
/// One background vacuum in so many also removes orphan files (at the default interval, one a
/// day; the first one too).
const SWEEP_EVERY: u64 = 24;

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

    /// Every refresh attempt from now on (committed, skipped or failed), as it is recorded:
    /// what a shell or a service uses to report background failures as they happen. A listener
    /// that falls more than a thousand attempts behind gets `RecvError::Lagged` and continues.
    pub fn refresh_attempts(&self) -> tokio::sync::broadcast::Receiver<super::RefreshAttempt> {
        self.inner.materialized.subscribe_attempts()
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

    /// Active CONTINUOUS tables (not backing off after a failure) and their inputs.
    fn continuous_tables(&self) -> Vec<(String, Vec<String>)> {
        self.materialized_names()
            .into_iter()
            .filter_map(|name| {
                let definition = self.materialized_definition(&name).ok()?;
                let continuous = definition.status == Status::Active
                    && definition.failures == 0
                    && definition.effective.mode == RefreshMode::Continuous;
                continuous.then_some((name, definition.inputs))
            })
            .collect()
    }

    /// A commit notification of every input of a CONTINUOUS table.
    fn continuous_inputs(&self) -> Vec<tokio::sync::watch::Receiver<u64>> {
        let inputs: BTreeSet<String> = self.continuous_tables().into_iter().flat_map(|(_, i)| i).collect();
        inputs
            .iter()
            .filter_map(|input| self.inner.catalog.table(input).ok())
            .map(|table| table.subscribe())
            .collect()
    }

    /// Makes every CONTINUOUS table with an input committed since it last looked due now.
    fn mark_continuous_due(&self, now: i64) {
        let materialized = &self.inner.materialized;
        for (name, inputs) in self.continuous_tables() {
            let runtime = materialized.runtime(&name);
            let reflected = self
                .inner
                .catalog
                .table(&name)
                .ok()
                .and_then(|t| RefreshRecord::of(&t.snapshot()))
                .map(|r| r.inputs)
                .unwrap_or_default();
            let seen = super::lock(&runtime.seen_inputs).clone();
            let changed = inputs.iter().any(|input| {
                let Ok(table) = self.inner.catalog.table(input) else {
                    return false;
                };
                let looked = seen.get(input).or(reflected.get(input)).copied().unwrap_or(0);
                table.snapshot().version() > looked
            });
            if changed && materialized.next_due(&name).is_none_or(|due| due > now) {
                *super::lock(&runtime.next_due_ms) = Some(now);
            }
        }
    }

    /// Starts the refreshes due at `now` that can start: upstream tables first (a table waits
    /// while a table it reads is due or refreshing), at most `slots.total` at once, of which
    /// scheduled (not CONTINUOUS) ones take at most all but one — so that a long scheduled
    /// refresh never holds back a CONTINUOUS table.
    fn launch_due(&self, now: i64, work: &mut Work) {
        let mut due = BTreeSet::new();
        let mut inputs = HashMap::new();
        let mut continuous = BTreeSet::new();
        for name in self.materialized_names() {
            let Ok(definition) = self.materialized_definition(&name) else {
                continue;
            };
            let is_due = self.inner.materialized.next_due(&name).is_some_and(|t| t <= now);
            if definition.status == Status::Active && is_due && !work.inflight.contains_key(&name) {
                due.insert(name.clone());
            }
            if definition.effective.mode == RefreshMode::Continuous {
                continuous.insert(name.clone());
            }
            inputs.insert(name, definition.inputs);
        }
        work.waiting.retain(|name, _| due.contains(name));
        for name in &due {
            work.waiting.entry(name.clone()).or_insert(work.iteration);
        }
        let blocked = |name: &String| {
            inputs.get(name).is_some_and(|i| {
                i.iter()
                    .any(|x| x != name && (due.contains(x) || work.inflight.contains_key(x)))
            })
        };
        let mut ready: Vec<String> = due.iter().filter(|n| !blocked(n)).cloned().collect();
        if ready.is_empty() && work.inflight.is_empty() {
            // Tables reading each other in a cycle: all of them, in name order.
            ready = due.iter().cloned().collect();
        }
        // CONTINUOUS tables first: they are the ones a delay shows in.
        ready.sort_by_key(|n| !continuous.contains(n));
        for name in ready {
            let scheduled = !continuous.contains(&name);
            let scheduled_running = work.inflight.keys().filter(|n| !continuous.contains(*n)).count();
            if work.running.len() >= work.slots || (scheduled && scheduled_running + 1 >= work.slots) {
                continue;
            }
            let since = work.waiting.remove(&name).unwrap_or(work.iteration);
            work.inflight.insert(name.clone(), since);
            let engine = self.clone();
            let table = name.clone();
            let task = work.running.spawn(async move {
                engine.scheduled_refresh(&table, now).await;
            });
            work.tasks.insert(task.id(), name);
        }
    }

    /// Starts the background vacuum when `table.vacuum.interval` has passed since the last one
    /// started (or since the scheduler did), unless one is still running; the time of the next
    /// one. It runs beside the refreshes, taking none of their slots.
    fn launch_vacuum(&self, now: i64, work: &mut Work) -> Option<i64> {
        let interval = millis_of(self.inner.materialized.settings().vacuum_interval?);
        let last = *work.last_vacuum_ms.get_or_insert(now);
        let due = last.saturating_add(interval);
        if due > now {
            return Some(due);
        }
        if work.vacuum.is_some() {
            // Looked at again when it ends.
            return None;
        }
        let engine = self.clone();
        // Every run removes what expired; one in SWEEP_EVERY also looks for orphan files, which
        // reads every retained manifest.
        let sweep = work.vacuums.is_multiple_of(SWEEP_EVERY);
        work.vacuums += 1;
        let task = tokio::spawn(async move { engine.vacuum_in_background(sweep).await });
        work.vacuum = Some((task, work.iteration));
        work.last_vacuum_ms = Some(now);
        Some(now.saturating_add(interval))
    }

    async fn scheduled_refresh(&self, name: &str, now: i64) {
        let materialized = &self.inner.materialized;
        let Ok(mut definition) = self.materialized_definition(name) else {
            return;
        };
        let partition = definition
            .scheduled_partition_column()
            .and_then(|(column, pattern)| Some((column.to_string(), format_time(now, pattern)?)));
        let continuous = definition.effective.mode == RefreshMode::Continuous;
        if continuous {
            // The versions this refresh will see at least: later commits trigger the next one.
            let seen = definition
                .inputs
                .iter()
                .filter_map(|i| Some((i.clone(), self.inner.catalog.table(i).ok()?.snapshot().version())))
                .collect();
            *super::lock(&materialized.runtime(name).seen_inputs) = seen;
        }
        let request = RefreshRequest {
            trigger: if continuous {
                Trigger::Continuous
            } else {
                Trigger::Schedule
            },
            partition,
            force: false,
        };
        let freshness = millis(definition.effective.freshness);
        match self.refresh(name, request).await {
            Ok(_) => {
                // Sooner when the result changes with time alone before then.
                let by_time = (*super::lock(&materialized.runtime(name).time_change_ms)).filter(|&at| at > now);
                let next = now.saturating_add(freshness);
                materialized.set_next_due(name, Some(by_time.map_or(next, |at| at.min(next))));
                if definition.failures > 0 || definition.last_error.is_some() {
                    definition.failures = 0;
                    definition.last_error = None;
                    self.store_status(name, &definition).await;
                }
            }
            Err(e) => {
                definition.failures += 1;
                definition.last_error = Some(e.to_string());
                // A target of its own: the interactive shell reports these as notices already
                // (from `Engine::refresh_attempts`) and leaves them out of its log.
                tracing::warn!(
                    target: REFRESH_FAILED_TARGET,
                    table = %name,
                    failures = definition.failures,
                    error = %e,
                    "refresh failed"
                );
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
        if current.status != Status::Active {
            // SUSPEND (or anything else) came while the refresh ran: the user's word stands.
            return;
        }
        current.status = status.status;
        current.failures = status.failures;
        current.last_error = status.last_error.clone();
        if let Err(e) = self.store_definition(name, &current).await {
            tracing::warn!(table = %name, error = %e, "cannot store the status of a materialized table");
        }
    }
}

/// The scheduler's refreshes in flight and waiting.
struct Work {
    /// How many refreshes may run at once.
    slots: usize,
    running: tokio::task::JoinSet<()>,
    /// The table each running task refreshes.
    tasks: HashMap<tokio::task::Id, String>,
    /// Tables refreshing, with the iteration of the loop at which they came due.
    inflight: HashMap<String, u64>,
    /// Tables due but not started (an input still due or refreshing, or no slot free), with the
    /// iteration at which they came due.
    waiting: HashMap<String, u64>,
    /// The loop's iterations, counted.
    iteration: u64,
    /// Rounds asked for by `wait_for_refreshes`, with the iteration that looked at them: a
    /// round is done once nothing due at or before its iteration is waiting or refreshing.
    rounds: std::collections::VecDeque<(u64, u64)>,
    /// The background vacuum running, with the iteration that started it.
    vacuum: Option<(tokio::task::JoinHandle<()>, u64)>,
    /// When the last background vacuum started (at first, when the scheduler did).
    last_vacuum_ms: Option<i64>,
    /// Background vacuums started.
    vacuums: u64,
}

impl Work {
    /// The rounds done by now.
    fn finished_round(&mut self) -> Option<u64> {
        let vacuum = self.vacuum.as_ref().map(|(_, iteration)| iteration);
        let oldest = self
            .inflight
            .values()
            .chain(self.waiting.values())
            .chain(vacuum)
            .min()
            .copied();
        let mut done = None;
        while let Some(&(iteration, round)) = self.rounds.front() {
            if oldest.is_some_and(|o| o <= iteration) {
                break;
            }
            done = Some(round);
            self.rounds.pop_front();
        }
        done
    }
}

async fn run(engine: Weak<EngineInner>) {
    let mut work = Work {
        slots: std::thread::available_parallelism().map_or(2, |n| n.get()).max(2),
        running: tokio::task::JoinSet::new(),
        tasks: HashMap::new(),
        inflight: HashMap::new(),
        waiting: HashMap::new(),
        iteration: 0,
        rounds: std::collections::VecDeque::new(),
        vacuum: None,
        last_vacuum_ms: None,
        vacuums: 0,
    };
    loop {
        let (sleep, wake, mut closing, mut commits) = {
            let Some(inner) = engine.upgrade() else { break };
            let engine = Engine { inner };
            let materialized = &engine.inner.materialized;
            if *materialized.closing.borrow() {
                break;
            }
            work.iteration += 1;
            let round = materialized.requested.load(Ordering::SeqCst);
            let now = materialized.clock.now_ms();
            // Subscribed before looking, so that no commit falls between the two.
            let commits = engine.continuous_inputs();
            engine.mark_continuous_due(now);
            engine.launch_due(now, &mut work);
            let vacuum_due = engine.launch_vacuum(now, &mut work);
            work.rounds.push_back((work.iteration, round));
            if let Some(done) = work.finished_round() {
                materialized.processed.send_replace(done);
            }
            // Tables refreshing or waiting for one are looked at again when a refresh ends.
            let next = engine
                .materialized_names()
                .iter()
                .filter(|n| !work.inflight.contains_key(*n) && !work.waiting.contains_key(*n))
                .filter_map(|n| materialized.next_due(n))
                .chain(vacuum_due)
                .min();
            let sleep = match next {
                Some(at) => materialized.clock.sleep_until(at),
                None => Box::pin(std::future::pending()),
            };
            (
                sleep,
                materialized.wake.clone(),
                materialized.closing.subscribe(),
                commits,
            )
        };
        let committed = async {
            if commits.is_empty() {
                std::future::pending::<()>().await;
            }
            let _ = futures::future::select_all(commits.iter_mut().map(|c| Box::pin(c.changed()))).await;
        };
        let finished = async {
            match work.running.join_next_with_id().await {
                Some(result) => result,
                None => std::future::pending().await,
            }
        };
        let vacuumed = async {
            match work.vacuum.as_mut() {
                Some((task, _)) => {
                    if let Err(e) = task.await {
                        tracing::warn!(error = %e, "the background vacuum's task failed");
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = wake.notified() => {}
            _ = committed => {}
            _ = vacuumed => work.vacuum = None,
            ended = finished => {
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(e) => {
                        tracing::warn!(error = %e, "a scheduled refresh's task failed");
                        e.id()
                    }
                };
                if let Some(name) = work.tasks.remove(&id) {
                    work.inflight.remove(&name);
                }
            }
            _ = closing.wait_for(|c| *c) => break,
        }
    }
    // Closing: the refreshes under way finish (their commits land or not, never half), and
    // so does a vacuum.
    while work.running.join_next().await.is_some() {}
    if let Some((task, _)) = work.vacuum.take() {
        let _ = task.await;
    }
}

pub(crate) fn millis(freshness: Freshness) -> i64 {
    millis_of(freshness.duration())
}

fn millis_of(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A time formatted with a Java date pattern (UTC), for the partition of a schedule time.
pub(crate) fn format_time(at_ms: i64, java_pattern: &str) -> Option<String> {
    let pattern = super::definition::java_date_format(java_pattern).ok()?;
    let time = chrono::DateTime::from_timestamp_millis(at_ms)?;
    Some(time.format(&pattern).to_string())
}
