//! The incremental refresh: the changes of the inputs since the versions the table reflects go
//! through the table's operator pipeline (`freshet-incremental`), and the changes it outputs
//! are applied to the table — committed together with the input versions they reflect.
//!
//! The pipeline's state lives in memory, in the table's runtime, between refreshes. When it is
//! missing (after the engine opened, after a full refresh, after a failure) it is rebuilt from
//! the input versions the table reflects: those versions are read whole, once, and their rows
//! go through the pipeline as insertions whose output is dropped (the table already holds it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::datasource::source_as_provider;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::TableScan;
use futures::TryStreamExt;

use freshet_common::{ChangeBatch, FreshetError, Keys, Result, consolidate};
use freshet_incremental::{BuildError, Epoch, NotIncremental, Pipeline, time_as_input};
use freshet_sql::RefreshMode;
use freshet_storage::{ChangeSet, MovesListener, SnapshotTable, StateCheckpoint, Table, Transaction, delete_matching};

use super::RefreshCosts;
use super::checkpoint::{checkpoint_after_refresh, checkpoint_due, write_checkpoint};
use super::correction::drifted_rows;
use super::definition::MaterializedDefinition;
use super::refresh::{PinnedQuery, RefreshJob, RefreshOutcome, RefreshRecord, Trigger, table_schema};
use super::row_index::{Inserted, RowIndex, Untaken};
use crate::engine::Engine;

/// AUTO refreshes incrementally when the changed input rows are at most this share of the
/// input rows and the operator state is in memory; otherwise it recomputes.
pub const AUTO_MAX_CHANGE_RATIO: f64 = 0.5;
/// The same share when the state must first be rebuilt (which reads every input once).
pub const AUTO_MAX_CHANGE_RATIO_COLD: f64 = 0.1;

/// A table's pipeline and the input versions its state reflects.
#[derive(Debug)]
pub(crate) struct IncrementalState {
    pub(super) pipeline: Pipeline,
    pub(super) query: String,
    pub(super) inputs: BTreeMap<String, u64>,
    /// Changes that bring the table to the pipeline's output, found when the state was
    /// rebuilt; applied with the next refresh.
    pub(super) correction: Option<ChangeBatch>,
    /// Of those, the rows that are not float re-roundings (`None`: the state was not rebuilt
    /// for the next refresh).
    pub(super) drifted: Option<u64>,
    /// Where the table's rows are, for retractions without a scan (`None`: not built yet, or
    /// the table is too large to index).
    pub(super) index: Option<RowIndex>,
    /// The state's memory, in the engine's memory pool.
    pub(super) memory: MemoryReservation,
    /// Input change rows the state processed since the table's checkpoint of it, and when that
    /// checkpoint was taken (`None`: the table has no checkpoint of this state).
    pub(super) since_checkpoint: Option<(u64, i64)>,
    /// The table's checkpoint this state was restored from or last wrote, over which the
    /// pipeline keeps the changes for a delta (`None`: the state was rebuilt from the inputs).
    pub(super) checkpoint: Option<StateCheckpoint>,
    /// A checkpoint due at this refresh (its time, ms), left to be written once the refresh
    /// returned: any of a large state's ([`super::definition::CHECKPOINT_BACKGROUND_ROWS`]), a
    /// delta when it fits, else the whole state.
    pub(super) checkpoint_after: Option<i64>,
}

impl IncrementalState {
    /// Accounts the state's current size in the memory pool; fails when the engine's memory
    /// limit does not allow it.
    pub(super) fn account(&mut self, name: &str) -> Result<()> {
        let operators = usize::try_from(self.pipeline.state_size().bytes).unwrap_or(usize::MAX);
        let index = self.index.as_ref().map_or(0, RowIndex::bytes);
        if index > 0 && self.memory.try_resize(operators.saturating_add(index)).is_ok() {
            return Ok(());
        }
        // The row index only saves scans: without room for it, retractions scan the table.
        self.index = None;
        self.memory.try_resize(operators).map_err(|e| {
            FreshetError::from(e).context(format!(
                "materialized table \"{name}\": its operator state needs {} of memory",
                human_bytes(operators as u64)
            ))
        })
    }
}

/// How a refresh will be done, and why.
pub(crate) enum Algorithm {
    Full {
        reason: String,
    },
    Incremental {
        state: Box<IncrementalState>,
        /// The changes of each input to process, found while deciding.
        changes: BTreeMap<String, ChangeSet>,
        reason: String,
    },
}

/// Why AUTO recomputes rather than rebuilding a table's operator state now, if it should.
///
/// Rebuilding reads every input, about what a full refresh costs, and pays off only over the
/// refreshes that follow; a process that refreshes once (a command-line statement) never gets
/// it back. So AUTO rents before it buys: it refreshes in full until the full refreshes since
/// the state was lost have cost as much as a rebuild (the last one measured, else the last
/// full refresh), then rebuilds, which is never more than twice the better of the two choices.
fn rebuild_not_yet(costs: RefreshCosts) -> Option<String> {
    let spent = costs.full_since_build_ms;
    match costs.last_build_ms.or(costs.last_full_ms) {
        None => Some(
            "the operator state is not in memory and what rebuilding it costs is not measured yet: recomputed \
             in full (a later refresh rebuilds it once full refreshes have cost as much)"
                .into(),
        ),
        Some(build) if spent < build => Some(format!(
            "the operator state is not in memory: rebuilding it costs about {build} ms, more than the {spent} ms \
             of full refreshes since it was lost, so recomputed in full"
        )),
        Some(_) => None,
    }
}

/// The scan's table, when it is a Freshet table whose changes can be read.
pub(crate) fn scan_table_name(scan: &TableScan) -> Option<String> {
    let provider = source_as_provider(&scan.source).ok()?;
    let table = provider.downcast_ref::<SnapshotTable>()?;
    Some(table.table().name().to_string())
}

impl Engine {
    /// The incremental pipeline of a planned query, or why it has none.
    pub(crate) fn pipeline(&self, pinned: &PinnedQuery) -> Result<Result<Pipeline, NotIncremental>> {
        // Before optimizing, which would fold `now()` into a constant: the time becomes an
        // input of the pipeline (a filter comparing rows with it is a temporal filter; any other
        // use of it, or another non-deterministic function, is refused by the builder).
        let timed = time_as_input(&pinned.plan)?;
        let state = self.inner.ctx.state();
        let optimized = state.optimize(timed.as_ref().unwrap_or(&pinned.plan))?;
        // As many parts as DataFusion's batch plans use cores.
        let parallelism = state.config().target_partitions();
        // A materialized table shows open windows as they stand (see docs/architecture.md).
        let emit_on_close = false;
        let options = freshet_incremental::PipelineOptions {
            event_times: self.event_times(),
            emit_on_close,
            // A table equals its query: no state is forgotten while it could still change.
            state_ttl_ms: None,
            append_only_sources: self.inner.streams.append_only(),
        };
        match Pipeline::build_with(&optimized, &scan_table_name, parallelism, &options) {
            Ok(pipeline) => Ok(Ok(pipeline)),
            Err(BuildError::NotIncremental(why)) => Ok(Err(why)),
            Err(BuildError::Failed(e)) => Err(e),
        }
    }

    /// Why a query cannot be maintained incrementally, if it cannot.
    pub(crate) fn incremental_blocker(&self, pinned: &PinnedQuery) -> Result<Option<String>> {
        Ok(self.pipeline(pinned)?.err().map(|why| why.to_string()))
    }

    /// Decides between an incremental refresh and a full one.
    pub(crate) async fn choose_algorithm(
        &self,
        job: &RefreshJob<'_>,
        pinned: &PinnedQuery,
        previous: Option<&RefreshRecord>,
    ) -> Result<Algorithm> {
        let RefreshJob {
            name,
            definition,
            request,
            ..
        } = *job;
        let full = |reason: String| Ok(Algorithm::Full { reason });
        if let Some((column, value)) = &request.partition {
            return full(format!(
                "REFRESH PARTITION ({column} = '{value}') recomputes that partition"
            ));
        }
        if request.force {
            return full(
                match request.trigger {
                    Trigger::Create => "the first refresh computes the whole table",
                    Trigger::Alter => "the query changed",
                    Trigger::Manual | Trigger::Schedule | Trigger::Continuous => {
                        "REFRESH FULL asks for a recomputation"
                    }
                }
                .to_string(),
            );
        }
        let mode = definition.effective.mode;
        if mode == RefreshMode::Full {
            return full(definition.effective.reason.clone());
        }
        let Some(previous) = previous.filter(|p| p.partition.is_none() && p.query == definition.query) else {
            return full("no complete refresh of this query to continue from".into());
        };
        if previous.inputs.keys().ne(pinned.inputs.keys()) {
            return full("the tables the query reads changed".into());
        }
        if let Some((input, _)) = pinned
            .inputs
            .iter()
            .find(|(input, version)| previous.inputs.get(*input).is_some_and(|p| p > version))
        {
            return full(format!(
                "\"{input}\" is read at an older version than the last refresh read"
            ));
        }

        // The changes to process, counted from the manifests.
        let mut changed = 0u64;
        let mut total = 0u64;
        let mut changes = BTreeMap::new();
        for (input, &to) in &pinned.inputs {
            let table = self.inner.catalog.table(input)?;
            let from = previous.inputs.get(input).copied().unwrap_or(0);
            total += table.snapshot_at(to).await.map(|s| s.num_rows()).unwrap_or(0);
            if from < to {
                match table.changes(from, to).await {
                    Ok(read) => {
                        changed += read.rows();
                        changes.insert(input.clone(), read);
                    }
                    Err(e) => return full(format!("the changes of \"{input}\" cannot be read ({e})")),
                }
            }
        }
        let share = changed as f64 / total.max(1) as f64;
        let runtime = self.inner.materialized.runtime(name);
        let mut kept = runtime
            .incremental
            .lock()
            .await
            .take()
            .filter(|s| s.query == definition.query && s.inputs == previous.inputs);
        let mut restored = false;
        if kept.is_none() {
            kept = self.restore_state(name, pinned, previous, &definition.query).await?;
            restored = kept.is_some();
        }
        let reason = match mode {
            RefreshMode::Auto => {
                let limit = if kept.is_some() {
                    AUTO_MAX_CHANGE_RATIO
                } else {
                    AUTO_MAX_CHANGE_RATIO_COLD
                };
                let state = if kept.is_some() {
                    "with the operator state in memory"
                } else {
                    "with the operator state to rebuild"
                };
                let measured = format!(
                    "AUTO: {changed} changed input rows are {:.1}% of the {total} input rows",
                    share * 100.0
                );
                if share > limit {
                    return full(format!("{measured}, more than {:.0}% {state}", limit * 100.0));
                }
                let measured = format!("{measured}, at most {:.0}% {state}", limit * 100.0);
                if kept.is_none()
                    && let Some(why) = rebuild_not_yet(*super::lock(&runtime.costs))
                {
                    return full(format!("{measured}; {why}"));
                }
                measured
            }
            other => format!("REFRESH_MODE = {other}"),
        };
        if let Some(state) = kept {
            let reason = match restored {
                true => format!("{reason}; operator state restored from the table's checkpoint"),
                false => reason,
            };
            return Ok(Algorithm::Incremental {
                state: Box::new(state),
                changes,
                reason,
            });
        }
        match self.rebuild_state(name, definition, pinned, previous).await? {
            Ok(state) => {
                let drift = match state.drifted {
                    Some(rows) if rows > 0 => {
                        format!("; {rows} rows of the table differed from its query and are corrected")
                    }
                    _ => String::new(),
                };
                Ok(Algorithm::Incremental {
                    state: Box::new(state),
                    changes,
                    reason: format!(
                        "{reason}; operator state rebuilt from the input versions the table reflects{drift}"
                    ),
                })
            }
            Err(why) => full(why),
        }
    }

    /// Builds the pipeline and feeds it the input versions the last refresh read; `Err` says
    /// why that is not possible.
    async fn rebuild_state(
        &self,
        name: &str,
        definition: &MaterializedDefinition,
        pinned: &PinnedQuery,
        previous: &RefreshRecord,
    ) -> Result<Result<IncrementalState, String>> {
        let timer = std::time::Instant::now();
        let mut pipeline = match self.pipeline(pinned)? {
            Ok(pipeline) => pipeline,
            Err(why) => return Ok(Err(format!("the {why}"))),
        };
        // Every input row, in epochs of at most `state-build.epoch-rows` rows. One epoch of every
        // row allocates, clears and frees buffers the size of the inputs (TPC-H Q1's build took
        // 7.2 s at scale factor 1 in one epoch, 0.97 s in epochs of 65,536 rows); in several
        // epochs, an aggregate's rows would be retracted and re-inserted at every one (an
        // aggregate of 100,000 groups over 10 M rows took 10.6 s instead of 0.8 s), so all but
        // the last are building epochs: aggregates take them without output and give each
        // group's row once after the last (`Epoch::building`).
        // At the time the table's contents were computed, which `now()` read.
        let time = previous.started_at_ms;
        let epoch_rows = self.inner.materialized.settings().state_build_epoch_rows;
        let mut outputs: Vec<ChangeBatch> = Vec::new();
        let mut epoch = Epoch::at(time);
        for source in pipeline.sources().clone() {
            let Some(&version) = previous.inputs.get(&source) else {
                return Ok(Err(format!("the last refresh did not read \"{source}\"")));
            };
            let table = self.inner.catalog.table(&source)?;
            let snapshot = match table.snapshot_at(version).await {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    return Ok(Err(format!(
                        "the operator state cannot be rebuilt: version {version} of \"{source}\" is gone ({e})"
                    )));
                }
            };
            let columns = pipeline.source_columns(&source).map(<[usize]>::to_vec);
            let mut rows = snapshot.scan(columns, false);
            while let Some(batch) = rows.try_next().await? {
                // More rows may follow a full epoch: a building one (if none do, the last is
                // empty). Building epochs have no watermark; the last has the inputs'.
                epoch.add_in_parts(&source, &batch, epoch_rows, |full| {
                    outputs.extend(pipeline.step(&full)?);
                    Ok(())
                })?;
            }
        }
        self.set_watermarks(&mut epoch, &previous.inputs).await?;
        outputs.extend(pipeline.step(&epoch)?);
        // The table should hold exactly the pipeline's output. Float sums may differ in their
        // last bits (DataFusion adds in another order, the pipeline exactly), and a table may
        // have drifted for any other reason: the difference is applied with the next refresh,
        // so that every later retraction finds the row it retracts. Drift is counted in the
        // refresh's record and logged (`correction`).
        let table = self.inner.catalog.table(name)?;
        let contents = table.snapshot();
        let mut parts = outputs;
        let mut rows = contents.scan(None, false);
        while let Some(batch) = rows.try_next().await? {
            let batch = RecordBatch::try_new(pipeline.schema().clone(), batch.columns().to_vec())
                .map_err(|e| FreshetError::Internal(format!("materialized table \"{name}\": {e}")))?;
            parts.push(ChangeBatch::with_weight(&batch, -1)?);
        }
        let correction = consolidate(pipeline.schema(), &parts)?;
        let drifted = match &correction {
            Some(correction) => drifted_rows(correction)?,
            None => 0,
        };
        if drifted > 0 {
            tracing::warn!(
                table = name,
                rows = drifted,
                "the table differed from its query when its operator state was rebuilt; the next refresh corrects it"
            );
        }
        let memory = MemoryConsumer::new(format!("materialized table {name}"))
            .register(&self.inner.ctx.runtime_env().memory_pool);
        let mut state = IncrementalState {
            pipeline,
            query: definition.query.clone(),
            inputs: previous.inputs.clone(),
            correction,
            drifted: Some(drifted),
            index: None,
            memory,
            since_checkpoint: None,
            checkpoint: None,
            checkpoint_after: None,
        };
        state.account(name)?;
        let spent = u64::try_from(timer.elapsed().as_millis()).unwrap_or(u64::MAX);
        let runtime = self.inner.materialized.runtime(name);
        let mut costs = super::lock(&runtime.costs);
        costs.last_build_ms = Some(spent);
        costs.full_since_build_ms = 0;
        Ok(Ok(state))
    }

    /// Processes the input changes since the state's versions (`changes`, which
    /// `choose_algorithm` found: the state reflects the versions the last refresh read) and
    /// commits the output.
    pub(crate) async fn refresh_incremental(
        &self,
        job: &RefreshJob<'_>,
        pinned: &PinnedQuery,
        mut state: IncrementalState,
        changes: BTreeMap<String, ChangeSet>,
        reason: &str,
    ) -> Result<RefreshOutcome> {
        let RefreshJob {
            name,
            table,
            definition,
            request,
            started,
        } = *job;
        // Where the refresh's time went, for a debug log line after its commit.
        let phases = std::time::Instant::now();
        let mut epoch = Epoch::at(started);
        for source in state.pipeline.sources() {
            let Some(read) = changes.get(source) else {
                continue;
            };
            add_changes(&mut epoch, source, read, state.pipeline.source_columns(source)).await?;
        }
        self.set_watermarks(&mut epoch, &pinned.inputs).await?;
        let input_changes = epoch.rows() as u64;
        let phase_read = phases.elapsed();
        let output = state.pipeline.step(&epoch)?;
        let phase_step = phases.elapsed();
        state.account(name)?;
        let output = match (state.correction.take(), output) {
            (Some(correction), Some(output)) => consolidate(state.pipeline.schema(), &[correction, output])?,
            (correction, output) => correction.or(output),
        };

        let schema = table_schema(&pinned.output_schema(), &definition.primary_key);
        let mut txn = table.begin("REFRESH").await?;
        // An incremental refresh's files are small and on the freshness path; the table's
        // compaction compresses them.
        txn.write_uncompressed();
        let base = txn.base().clone();
        if state.index.as_ref().map(RowIndex::version) != Some(base.version()) {
            // Compactions since the index's version moved rows between files: follow them.
            // Any other commit (none should come between two incremental refreshes) means
            // building the index again from a scan.
            let followed = match state.index.take() {
                Some(mut index) if table.only_compacted_since(index.version(), base.version()).await? => {
                    index.follow_compaction(table, &base).await?.then_some(index)
                }
                _ => None,
            };
            state.index = match followed {
                Some(index) => Some(index),
                None => {
                    let max_rows = self.inner.materialized.settings().row_index_max_rows;
                    let pipeline = &state.pipeline;
                    let built = RowIndex::build(&base, max_rows, pipeline.unique_key(), pipeline.parallelism()).await?;
                    if built.is_some() {
                        // Compactions of the table then say where they moved rows, and the
                        // index follows them as they commit rather than at the next refresh.
                        table.keep_compaction_moves();
                        table.on_kept_moves(self.index_follower(name, table));
                    }
                    built
                }
            };
        }
        let applied = match output {
            Some(changes) => apply(&mut txn, &schema, &changes, name, state.index.as_mut()).await?,
            None => Applied {
                written: 0,
                keys: None,
                inserted: UInt32Array::from(Vec::<u32>::new()),
            },
        };
        let phase_write = phases.elapsed();
        let record = RefreshRecord {
            query: definition.query.clone(),
            inputs: pinned.inputs.clone(),
            sources: pinned.sources.clone(),
            trigger: request.trigger,
            algorithm: "incremental".into(),
            reason: Some(reason.to_string()),
            input_changes: Some(input_changes),
            corrected_rows: state.drifted.take(),
            started_at_ms: started,
            duration_ms: self.inner.materialized.clock.now_ms() - started,
            rows: applied.written,
            partition: None,
        };
        let interval = self.inner.materialized.settings().checkpoint_interval.duration();
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        let due = checkpoint_due(&state, input_changes, started, interval_ms);
        // A large state's checkpoints are written after the refresh returned, on the task below:
        // its rows are committed and seen without waiting for them. A first or whole one is
        // every operator's whole state (the build's cost several times over); a delta is the
        // changes since, tens of milliseconds for a TPC-H join at scale factor 1.
        let after =
            due && state.pipeline.state_size().rows >= self.inner.materialized.settings().checkpoint_background_rows;
        state.checkpoint_after = after.then_some(started);
        let written = due && !after && write_checkpoint(&mut txn, table, &mut state, &pinned.inputs, started).await?;
        if written {
            state.since_checkpoint = Some((0, started));
        } else if let Some((since, _)) = &mut state.since_checkpoint {
            *since += input_changes;
        }
        let committed = self.commit_refresh(name, txn, record).await?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            table = name,
            input_changes,
            read_ms = ms(phase_read),
            step_ms = ms(phase_step - phase_read),
            write_ms = ms(phase_write - phase_step),
            commit_ms = ms(phases.elapsed() - phase_write),
            "incremental refresh committed"
        );
        let version = committed.version;
        *super::lock(&self.inner.materialized.runtime(name).time_change_ms) = state.pipeline.next_change_ms();
        // The refresh is committed and returns. A task keeps the state for the next one,
        // holding the table's state lock until it is there. Failing drops the state (the next
        // refresh rebuilds it) but not the refresh.
        let mut slot = self
            .inner
            .materialized
            .runtime(name)
            .incremental
            .clone()
            .lock_owned()
            .await;
        // Held weakly, and let go before the state lock: an engine closed meanwhile waits for the
        // lock, and is then really gone (its location's lock released).
        let (engine, table, name) = (Arc::downgrade(&self.inner), table.clone(), name.to_string());
        let inputs = pinned.inputs.clone();
        let Applied {
            written,
            keys,
            inserted: rows,
        } = applied;
        let placements = committed.placements;
        tokio::spawn(async move {
            let inserted = keys.as_ref().map(|keys| Inserted {
                keys,
                rows: &rows,
                placements: &placements,
            });
            let kept = match engine.upgrade() {
                Some(inner) => {
                    Engine { inner }
                        .keep_state(&name, &table, version, state, inputs, inserted)
                        .await
                }
                None => return,
            };
            let kept = match kept {
                Ok(mut state) => match state.checkpoint_after.take() {
                    Some(at_ms) => {
                        if let Err(e) = checkpoint_after_refresh(&table, &mut state, at_ms).await {
                            tracing::warn!(table = name, error = %e, "the operator state's checkpoint was not written; the next refresh writes one");
                        }
                        Ok(state)
                    }
                    None => Ok(state),
                },
                Err(e) => Err(e),
            };
            match kept {
                Ok(state) => *slot = Some(state),
                Err(e) => {
                    tracing::warn!(table = name, error = %e, "operator state dropped after a refresh; the next one rebuilds it");
                }
            }
        });
        Ok(RefreshOutcome::Committed { version, rows: written })
    }

    /// What a table does when a compaction of it kept its moves: a task brings the row index
    /// to the compaction's version, holding the table's state lock, so that the next refresh
    /// finds it there. The table and the runtime are held weakly: the listener lives in the
    /// table, and does nothing once either is gone.
    fn index_follower(&self, name: &str, table: &Arc<Table>) -> MovesListener {
        let runtime = Arc::downgrade(&self.inner.materialized.runtime(name));
        let table = Arc::downgrade(table);
        let name = name.to_string();
        Arc::new(move |version| {
            let (Some(runtime), Some(table), Ok(tasks)) = (
                runtime.upgrade(),
                table.upgrade(),
                tokio::runtime::Handle::try_current(),
            ) else {
                return;
            };
            let name = name.clone();
            tasks.spawn(async move {
                let mut slot = runtime.incremental.lock().await;
                // The state is elsewhere during a refresh, which then follows the compaction
                // itself; any other commit since the index's version is for it to handle too.
                let Some(state) = slot.as_mut() else {
                    return;
                };
                let Some(index) = state.index.as_mut().filter(|index| index.version() < version) else {
                    return;
                };
                match table.only_compacted_since(index.version(), version).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(table = name, error = %e, "a compaction was not followed; the next refresh will");
                        return;
                    }
                }
                let followed = match table.snapshot_at(version).await {
                    Ok(snapshot) => index.follow_compaction(&table, &snapshot).await,
                    Err(e) => Err(e),
                };
                if !matches!(followed, Ok(true)) {
                    // Partly followed: not to be used. The next refresh builds it again.
                    state.index = None;
                }
            });
        })
    }

    /// Brings a table's state to the version `version` its refresh committed, reflecting the
    /// input versions `inputs`: the row index learns the rows inserted (`inserted` says where
    /// they went) and the memory is accounted.
    async fn keep_state(
        &self,
        name: &str,
        table: &Table,
        version: u64,
        mut state: IncrementalState,
        inputs: BTreeMap<String, u64>,
        inserted: Option<Inserted<'_>>,
    ) -> Result<IncrementalState> {
        if let Some(index) = &mut state.index {
            let committed = match table.snapshot() {
                snapshot if snapshot.version() == version => snapshot,
                _ => table.snapshot_at(version).await?,
            };
            if !index.advance(&committed, inserted).await? {
                state.index = None;
            }
        }
        state.account(name)?;
        state.inputs = inputs;
        Ok(state)
    }
}

/// Adds to `epoch` the changes `changes` of its source `source`, as a pipeline reading the
/// columns `columns` of it needs them: an UPDATE of other columns left out, an UPDATE's rows
/// marked (see [`ChangeSet::stream_read`]).
pub(crate) async fn add_changes(
    epoch: &mut Epoch,
    source: &str,
    changes: &ChangeSet,
    columns: Option<&[usize]>,
) -> Result<()> {
    let mut stream = changes.stream_read(columns);
    while let Some((batch, updated)) = stream.try_next().await? {
        match updated {
            true => epoch.add_updated(source, batch),
            false => epoch.add(source, batch),
        }
    }
    Ok(())
}

/// What [`apply`] did.
struct Applied {
    /// Rows deleted plus inserted.
    written: u64,
    /// The change rows' keys in the row index (when there is an index).
    keys: Option<Keys>,
    /// The change row of each inserted row, in insertion order.
    inserted: UInt32Array,
}

/// Applies a consolidated change batch to a table: each row of weight −n deletes n equal
/// rows, each row of weight +n inserts n copies. The rows to delete are found in `index`
/// (which describes the transaction's base version), or by a scan of the table without one.
async fn apply(
    txn: &mut Transaction,
    schema: &SchemaRef,
    changes: &ChangeBatch,
    name: &str,
    index: Option<&mut RowIndex>,
) -> Result<Applied> {
    let data = RecordBatch::try_new(schema.clone(), changes.data().columns().to_vec()).map_err(|e| {
        FreshetError::InvalidStatement(format!(
            "materialized table \"{name}\": the query's rows do not fit the table: {e}"
        ))
    })?;
    let weights = changes.weights();
    // Change rows of weight ±1 (nearly all of them) without an iterator per row.
    let copies = |sign: i64| -> UInt32Array {
        let mut rows = Vec::new();
        for (i, &weight) in weights.values().iter().enumerate() {
            match sign * weight {
                1 => rows.push(i as u32),
                n if n > 1 => rows.extend(std::iter::repeat_n(i as u32, n as usize)),
                _ => {}
            }
        }
        UInt32Array::from(rows)
    };
    let inserted = copies(1);
    let mut written = 0;
    let keys = match index {
        Some(index) => {
            // The retracted values and the insertions go to their files first, which are then
            // finished on tasks of their own while the index finds the retracted positions.
            // Retractions come first, so that a primary key may move onto a key the same
            // refresh frees.
            let keys = index.encode(data.columns())?;
            let retracted = copies(-1);
            written += write_rows(txn, &data, &retracted, Transaction::retract).await?;
            written += write_rows(txn, &data, &inserted, Transaction::insert).await?;
            txn.seal_files();
            delete_indexed(txn, &keys, &retracted, name, index).await?;
            Some(keys)
        }
        None => {
            // With a primary key, deletes go first (as above). Without one, insertions go
            // first: their file is then encoded on its own task while the table is scanned.
            let inserts_first = txn.base().primary_key().is_empty();
            if inserts_first {
                written += write_rows(txn, &data, &inserted, Transaction::insert).await?;
            }
            written += delete_scanned(txn, schema, &data, weights, name).await?;
            if !inserts_first {
                written += write_rows(txn, &data, &inserted, Transaction::insert).await?;
            }
            None
        }
    };
    Ok(Applied {
        written,
        keys,
        inserted,
    })
}

/// Gives the rows `rows` of `data` to `write` (inserting them, or retracting them); returns
/// how many.
async fn write_rows<W>(txn: &mut Transaction, data: &RecordBatch, rows: &UInt32Array, write: W) -> Result<u64>
where
    W: AsyncFnOnce(&mut Transaction, &RecordBatch) -> Result<()>,
{
    if rows.is_empty() {
        return Ok(0);
    }
    let rows = take_record_batch(data, rows).map_err(|e| FreshetError::Internal(e.to_string()))?;
    write(txn, &rows).await?;
    Ok(rows.num_rows() as u64)
}

/// Deletes, by position, the rows whose values `retracted` retracted (change rows, one per
/// copy), located through the index.
async fn delete_indexed(
    txn: &mut Transaction,
    keys: &Keys,
    retracted: &UInt32Array,
    name: &str,
    index: &mut RowIndex,
) -> Result<()> {
    let files = index.file_indices(txn.base());
    let doomed = index.take_all(keys, retracted.values(), &files).map_err(|why| {
        FreshetError::Internal(format!(
            "materialized table \"{name}\": {}",
            match why {
                Untaken::Missing => "a row to delete is not in the table",
                Untaken::FileGone => "a data file left the row index",
            }
        ))
    })?;
    for (file, positions) in doomed.into_iter().enumerate() {
        txn.delete_positions(file, positions).await?;
    }
    Ok(())
}

/// Deletes the rows of negative weight found by a scan of the table.
async fn delete_scanned(
    txn: &mut Transaction,
    schema: &SchemaRef,
    data: &RecordBatch,
    weights: &Int64Array,
    name: &str,
) -> Result<u64> {
    let converter = RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .map_err(|e| FreshetError::Internal(e.to_string()))?;
    let mut doomed: HashMap<Box<[u8]>, i64> = HashMap::new();
    let rows = converter
        .convert_columns(data.columns())
        .map_err(|e| FreshetError::Internal(e.to_string()))?;
    for (i, row) in rows.iter().enumerate() {
        let weight = weights.value(i);
        if weight < 0 {
            *doomed.entry(row.data().into()).or_default() -= weight;
        }
    }
    if doomed.is_empty() {
        return Ok(0);
    }
    let mut remaining: i64 = doomed.values().sum();
    let deleted = delete_matching(txn, |batch| {
        if remaining == 0 {
            return Ok(Some(vec![false; batch.num_rows()].into()));
        }
        let rows = converter
            .convert_columns(batch.columns())
            .map_err(|e| FreshetError::Internal(e.to_string()))?;
        let mask = rows
            .iter()
            .map(|row| match doomed.get_mut(row.data()) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    remaining -= 1;
                    Some(true)
                }
                _ => Some(false),
            })
            .collect();
        Ok(Some(mask))
    })
    .await?;
    if remaining > 0 {
        return Err(FreshetError::Internal(format!(
            "materialized table \"{name}\": {remaining} rows to delete are not in the table"
        )));
    }
    Ok(deleted)
}

impl Engine {
    /// `EXPLAIN MATERIALIZED TABLE`: the mode and its reason, the incremental operators with
    /// the state each keeps (and its size, when the state is in memory).
    pub(crate) async fn explain_materialized(&self, name: &str) -> Result<Vec<(&'static str, String)>> {
        let definition = self.materialized_definition(name)?;
        let effective = &definition.effective;
        let mut rows = vec![(
            "mode",
            format!("{} every {}: {}", effective.mode, effective.freshness, effective.reason),
        )];
        let runtime = self.inner.materialized.runtime(name);
        let schema = self.inner.catalog.table(name)?.snapshot().schema().clone();
        let kept = runtime
            .incremental
            .lock()
            .await
            .as_ref()
            .filter(|s| s.query == definition.query)
            .map(|s| {
                let index = s.index.as_ref().map(|index| index.describe(&schema));
                (s.pipeline.operators(), s.pipeline.state_size(), s.inputs.clone(), index)
            });
        let (operators, state, index) = match kept {
            Some((operators, size, inputs, index)) => (
                operators,
                format!(
                    "in memory: {} entries, {} (reflecting {})",
                    size.rows,
                    human_bytes(size.bytes),
                    super::status::versions_text(&inputs)
                ),
                Some(index.unwrap_or_else(|| {
                    "none: retractions are found by scanning the table (larger than \
                     materialized-table.row-index.max-rows, no room under the memory limit, or its rows repeat a key \
                     meant to be unique)"
                        .to_string()
                })),
            ),
            None => {
                let pinned = self.plan_pinned(name, &definition.query).await?;
                match self.pipeline(&pinned)? {
                    Ok(pipeline) => (
                        pipeline.operators(),
                        "not in memory: built from the input versions the table reflects at the next incremental \
                         refresh"
                            .to_string(),
                        None,
                    ),
                    Err(why) => {
                        rows.push(("incremental_plan", format!("none: the {why}")));
                        return Ok(rows);
                    }
                }
            }
        };
        rows.push(("incremental_plan", operator_lines(&operators)));
        rows.push(("state", state));
        if let Some(record) = RefreshRecord::of(&self.inner.catalog.table(name)?.snapshot())
            && let Some((watermark, late)) = self.inputs_event_time(&record.inputs).await?
        {
            let watermark = match watermark {
                None => "none yet".to_string(),
                Some(i64::MAX) => "+infinity (the inputs ended)".to_string(),
                Some(ms) => chrono::DateTime::from_timestamp_millis(ms)
                    .map_or_else(|| format!("{ms} ms"), |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()),
            };
            rows.push((
                "event_time",
                format!("watermark of the inputs {watermark}; {late} late rows dropped by their sources"),
            ));
        }
        if let Some(index) = index {
            rows.push(("row_index", index));
        }
        let table = self.inner.catalog.table(name)?;
        rows.push(("checkpoint", super::checkpoint::describe_checkpoint(&table)));
        Ok(rows)
    }
}

/// A pipeline's operators, one per line indented by depth, with the state each keeps.
pub(crate) fn operator_lines(operators: &[freshet_incremental::OperatorInfo]) -> String {
    let lines: Vec<String> = operators
        .iter()
        .map(|op| {
            let mut line = format!("{}{}", "  ".repeat(op.depth), op.operator);
            if !op.state_kind.is_empty() {
                line.push_str(&format!("  [state: {}", op.state_kind));
                if op.state.rows > 0 {
                    line.push_str(&format!("; {} entries, {}", op.state.rows, human_bytes(op.state.bytes)));
                }
                line.push(']');
            }
            line
        })
        .collect();
    lines.join("\n")
}

/// `1.5 KiB`.
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
