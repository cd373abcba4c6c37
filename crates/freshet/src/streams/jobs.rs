//! Jobs: `INSERT INTO` a connector table, or from a source, planned into an incremental
//! pipeline and run by `freshet-runtime`; recorded in the catalog so that a restart resumes them;
//! `SHOW JOBS`, `STOP JOB` and the system table `freshet.jobs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray, UInt64Array};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Statement, TableObject};

use freshet_common::{FreshetError, Result};
use freshet_incremental::{BuildError, Pipeline, PipelineState, time_as_input};
use freshet_runtime::sink::FileSink;
use freshet_runtime::{
    Connector, Job, JobBranch, JobCheckpoint, JobInfo, JobInput, JobProgress, JobStart, Jobs, Restored, SavedProgress,
    Sink,
};
use freshet_sql::{FreshetStatement, ParsedStatement};
use freshet_storage::{CatalogEntry, StateFile};

use crate::engine::Engine;
use crate::execute::batches_stream;

impl Engine {
    /// Whether an INSERT is a job: into a connector table, or reading a source (directly or
    /// through views).
    pub(crate) fn is_job(&self, statement: &DFStatement) -> bool {
        let DFStatement::Statement(inner) = statement else {
            return false;
        };
        let Statement::Insert(insert) = inner.as_ref() else {
            return false;
        };
        let into_stream = matches!(&insert.table, TableObject::TableName(n)
            if self.resolve_name(n).is_ok_and(|n| self.inner.streams.get(&n).is_some()));
        let mut sources = Vec::new();
        self.sources_read(statement, &mut sources, 0);
        into_stream || !sources.is_empty()
    }

    /// Starts the job of INSERT statements: one, or a statement set's, whose inserts run as one
    /// job reading their common inputs once.
    pub(crate) async fn start_job(&self, inserts: &[ParsedStatement]) -> Result<SendableRecordBatchStream> {
        let mut texts = Vec::new();
        for parsed in inserts {
            if !matches!(&parsed.statement, FreshetStatement::DataFusion(_)) {
                return Err(FreshetError::InvalidStatement(format!(
                    "a statement set holds INSERT statements, not: {}",
                    parsed.text
                )));
            }
            texts.push(parsed.text.clone());
        }
        // Every insert is planned before the job starts, so that a bad one starts nothing.
        // The state TTL set now holds for the job's life, restarts included.
        let ttl = self.inner.streams.state_ttl_ms.load(Ordering::Relaxed);
        let ttl = (ttl > 0).then_some(ttl);
        let start = self.plan_job_start(Jobs::new_id(), &texts, ttl).await?;
        // Recorded before it starts: a restart resumes it (with the checkpoint interval set now).
        self.inner
            .catalog
            .put_job(
                &start.id,
                serde_json::json!({
                    "statements": texts,
                    "state_ttl_ms": ttl,
                    "checkpoint_interval_ms": start.checkpoint_interval_ms,
                }),
            )
            .await?;
        let job = self.launch(start);
        let mut info = job.info();
        if self.inner.streams.dml_sync.load(Ordering::Relaxed) {
            info = job.wait().await;
            if let Some(error) = &info.error {
                return Err(FreshetError::InvalidStatement(format!(
                    "job {} failed: {error}",
                    info.id
                )));
            }
        }
        self.jobs_result(&[info]).await
    }

    /// `EXPLAIN INSERT ...` of an INSERT that runs as a job: the incremental operators the job
    /// would run, with the state each keeps, and where it writes. Nothing starts.
    pub(crate) async fn explain_job(
        &self,
        statement: &DFStatement,
        analyze: bool,
    ) -> Result<SendableRecordBatchStream> {
        if analyze {
            return Err(FreshetError::Unsupported(
                "EXPLAIN ANALYZE of a job's INSERT (it runs until its sources end or it is stopped): SHOW JOBS \
                 shows a running job's progress and state"
                    .into(),
            ));
        }
        let ttl = self.inner.streams.state_ttl_ms.load(Ordering::Relaxed);
        let (_, pipeline, sink) = self.plan_job(statement, (ttl > 0).then_some(ttl)).await?;
        let sink = match &sink {
            Sink::Blackhole => "blackhole: every change discarded".to_string(),
            Sink::Print(_) => "print: every change printed".to_string(),
            Sink::Table(table) => format!("table \"{}\": rows appended", table.name()),
            Sink::Upsert(table) => format!("table \"{}\": rows upserted by its primary key", table.name()),
            Sink::Files(_) => "filesystem: files committed with each epoch".to_string(),
        };
        crate::execute::result_rows(vec![
            ("plan_type", Arc::new(StringArray::from(vec!["job_plan", "sink"]))),
            (
                "plan",
                Arc::new(StringArray::from(vec![
                    crate::materialized::operator_lines(&pipeline.operators()),
                    sink,
                ])),
            ),
        ])
    }

    /// Plans a job's inserts into its start: one branch per insert, over the union of their
    /// inputs.
    async fn plan_job_start(&self, id: String, texts: &[String], state_ttl_ms: Option<i64>) -> Result<JobStart> {
        let mut inputs: Vec<JobInput> = Vec::new();
        let mut branches = Vec::new();
        for text in texts {
            let parsed = freshet_sql::parse_statements(text)?;
            let [
                ParsedStatement {
                    statement: FreshetStatement::DataFusion(insert),
                    ..
                },
            ] = parsed.as_slice()
            else {
                return Err(FreshetError::InvalidStatement(format!(
                    "a job runs INSERT statements, not: {text}"
                )));
            };
            let (branch_inputs, pipeline, mut sink) = self.plan_job(insert, state_ttl_ms).await?;
            if let Sink::Files(files) = &mut sink {
                files.set_job(&id);
            }
            for input in branch_inputs {
                if !inputs.iter().any(|i| i.table.name() == input.table.name()) {
                    inputs.push(input);
                }
            }
            branches.push(JobBranch {
                pipeline,
                sink,
                resume: None,
                restored: None,
            });
        }
        let statement = match texts {
            [one] => one.clone(),
            _ => format!("EXECUTE STATEMENT SET BEGIN\n{};\nEND", texts.join(";\n")),
        };
        let settings = self.inner.materialized.settings();
        let interval = settings.checkpoint_interval.duration();
        Ok(JobStart {
            id,
            statement,
            inputs,
            branches,
            memory: self.job_memory(),
            checkpoint_interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
            rebuild_epoch_rows: settings.state_build_epoch_rows,
        })
    }

    /// A job's share of the engine's memory pool.
    fn job_memory(&self) -> datafusion::execution::memory_pool::MemoryReservation {
        datafusion::execution::memory_pool::MemoryConsumer::new("job")
            .register(&self.inner.ctx.runtime_env().memory_pool)
    }

    fn launch(&self, start: JobStart) -> Arc<Job> {
        let progress = Arc::new(CatalogProgress {
            catalog: self.inner.catalog.clone(),
        });
        self.inner
            .streams
            .jobs
            .start(start, self.inner.materialized.clock.clone(), progress)
    }

    /// Resumes the jobs that were running when the engine last closed (or crashed), each
    /// branch from the input versions it had written everything of. A job that no longer plans
    /// is listed as failed, with the reason.
    pub(crate) async fn resume_jobs(&self) {
        let stored = self.inner.catalog.manifest().jobs.clone();
        for (id, job) in stored {
            // One statement (`statement`, as first stored) or a statement set's (`statements`).
            let texts: Vec<String> = match job.get("statements") {
                Some(list) => serde_json::from_value(list.clone()).unwrap_or_default(),
                None => job
                    .get("statement")
                    .and_then(|s| s.as_str())
                    .map(|s| vec![s.to_string()])
                    .unwrap_or_default(),
            };
            let resumed = async {
                let ttl = job.get("state_ttl_ms").and_then(serde_json::Value::as_i64);
                let mut start = self.plan_job_start(id.clone(), &texts, ttl).await?;
                if let Some(interval) = job.get("checkpoint_interval_ms").and_then(serde_json::Value::as_i64) {
                    start.checkpoint_interval_ms = interval;
                }
                let progress: Option<SavedProgress> = match self.inner.catalog.job_progress(&id).await? {
                    Some(progress) => Some(
                        SavedProgress::from_json(progress)
                            .map_err(|e| FreshetError::corrupt(format!("the progress of job {id}"), e))?,
                    ),
                    None => None,
                };
                for (index, branch) in start.branches.iter_mut().enumerate() {
                    branch.resume = progress.as_ref().map(|p| p.inputs.clone());
                    if let Sink::Files(files) = &branch.sink {
                        // Files of the last committed epoch go in place (a crash may have come
                        // before); files of an epoch that never committed go away.
                        let committed = progress.as_ref().and_then(|p| p.staged.get(&index));
                        files.recover(committed.map_or(&[][..], Vec::as_slice)).await?;
                    }
                    if let Sink::Table(table) = &branch.sink {
                        // What a table sink committed is exact: its last record says which
                        // inputs (when no other branch of the job wrote the table since).
                        let record = table.snapshot().manifest().refresh.clone();
                        let ours = |r: &serde_json::Value| {
                            r.get("job").and_then(|j| j.as_str()) == Some(&id)
                                && r.get("branch").and_then(|b| b.as_u64()).unwrap_or(0) == index as u64
                        };
                        // The progress is saved after the sink commits: a record behind it
                        // is of an epoch before epochs that wrote nothing to the table.
                        if let Some(record) = record.filter(ours)
                            && let Ok(inputs) =
                                serde_json::from_value::<BTreeMap<String, u64>>(record["inputs"].clone())
                            && branch.resume.as_ref().is_none_or(|saved| {
                                saved
                                    .iter()
                                    .all(|(input, v)| inputs.get(input).is_none_or(|committed| committed >= v))
                            })
                        {
                            branch.resume = Some(inputs);
                        }
                    }
                }
                let checkpoints = progress.map(|p| p.checkpoints).unwrap_or_default();
                self.restore_job_checkpoints(&id, &texts, ttl, &mut start, &checkpoints)
                    .await?;
                Ok::<_, FreshetError>(start)
            };
            match resumed.await {
                Ok(start) => {
                    self.launch(start);
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "a job cannot be resumed");
                    let clock = self.inner.materialized.clock.clone();
                    let statement = texts.join(";\n");
                    self.inner
                        .streams
                        .jobs
                        .failed_to_start(&id, &statement, format!("cannot be resumed: {e}"), &clock);
                    if let Err(e) = self.inner.catalog.remove_job(&id).await {
                        tracing::warn!(job = %id, error = %e, "could not forget a job");
                    }
                }
            }
        }
    }

    /// Restores each branch's operator state from its checkpoint and steps the changes since up
    /// to the versions it resumes from, so that the job need not rebuild it from its inputs. A
    /// checkpoint that cannot be used (missing or damaged, of another operator tree, ahead of
    /// the sink) is logged and that branch is rebuilt from its inputs as before. Checkpoint
    /// files the progress does not name (a crash before it was saved) are removed.
    async fn restore_job_checkpoints(
        &self,
        id: &str,
        texts: &[String],
        state_ttl_ms: Option<i64>,
        start: &mut JobStart,
        checkpoints: &BTreeMap<usize, JobCheckpoint>,
    ) -> Result<()> {
        let keep: Vec<StateFile> = checkpoints.values().flat_map(|c| c.files().cloned()).collect();
        if let Err(e) = self.inner.catalog.remove_job_states(id, &keep).await {
            tracing::warn!(job = %id, error = %e, "could not remove a checkpoint no progress names");
        }
        let mut unusable = Vec::new();
        for (index, branch) in start.branches.iter_mut().enumerate() {
            let (Some(checkpoint), Some(versions)) = (checkpoints.get(&index), branch.resume.as_ref()) else {
                continue;
            };
            match self
                .restore_job_branch(id, &mut branch.pipeline, checkpoint, versions)
                .await
            {
                Ok(replayed) => {
                    branch.restored = Some(Restored {
                        checkpoint: checkpoint.clone(),
                        replayed,
                    });
                }
                Err(e) => {
                    tracing::warn!(
                        job = %id,
                        branch = index,
                        error = %e,
                        "the job's checkpoint cannot be used; its state is rebuilt from the inputs"
                    );
                    unusable.push(index);
                }
            }
        }
        if !unusable.is_empty() {
            // A restore that failed halfway leaves its pipeline unusable: plan it again.
            let fresh = self.plan_job_start(id.to_string(), texts, state_ttl_ms).await?;
            for (index, branch) in fresh.branches.into_iter().enumerate() {
                if unusable.contains(&index) {
                    start.branches[index].pipeline = branch.pipeline;
                }
            }
        }
        Ok(())
    }

    /// Restores one branch's pipeline from `checkpoint` and brings it to `versions`; returns
    /// the input changes stepped.
    async fn restore_job_branch(
        &self,
        id: &str,
        pipeline: &mut Pipeline,
        checkpoint: &JobCheckpoint,
        versions: &BTreeMap<String, u64>,
    ) -> Result<u64> {
        if pipeline.fingerprint() != checkpoint.fingerprint {
            return Err(FreshetError::Internal(
                "the checkpoint is of another operator tree".into(),
            ));
        }
        for source in pipeline.sources() {
            match (checkpoint.inputs.get(source), versions.get(source)) {
                (Some(at), Some(to)) if at <= to => {}
                _ => {
                    return Err(FreshetError::Internal(format!(
                        "the checkpoint's version of \"{source}\" is not at or before the one the job resumes from"
                    )));
                }
            }
        }
        let mut chain = Vec::with_capacity(1 + checkpoint.deltas.len());
        let files = std::iter::once((&checkpoint.file, &checkpoint.operators, None)).chain(
            checkpoint
                .deltas
                .iter()
                .map(|(file, layer)| (file, &layer.operators, Some(&layer.deltas))),
        );
        for (file, operators, deltas) in files {
            let bytes = Buffer::from(self.inner.catalog.read_job_state(id, file).await?);
            // SAFETY: `read_job_state` gave the bytes only after checking them against the size
            // and checksum recorded when they were written, from `PipelineState::encode`.
            #[allow(unsafe_code)]
            let mut layer =
                unsafe { PipelineState::decode_unchecked(checkpoint.fingerprint.clone(), &bytes, operators) }?;
            if let Some(deltas) = deltas {
                layer.deltas = deltas.clone();
            }
            chain.push(layer);
        }
        pipeline.restore_chain(chain)?;
        let now = self.inner.materialized.clock.now_ms();
        self.replay_changes(pipeline, &checkpoint.inputs, versions, now).await
    }

    async fn plan_job(
        &self,
        statement: &DFStatement,
        state_ttl_ms: Option<i64>,
    ) -> Result<(Vec<JobInput>, Pipeline, Sink)> {
        let state = self.inner.ctx.state();
        let plan = state.statement_to_plan(statement.clone()).await?;
        let LogicalPlan::Dml(DmlStatement {
            table_name,
            op: WriteOp::Insert(_),
            input,
            ..
        }) = plan
        else {
            return Err(FreshetError::InvalidStatement(
                "a job runs INSERT INTO <table> SELECT ...".into(),
            ));
        };
        let target = self.resolve_reference(table_name)?;
        let sink = match self.inner.streams.get(&target) {
            Some(table) => match &table.connector {
                Connector::Blackhole => Sink::Blackhole,
                Connector::Print(options) => Sink::Print(options.clone()),
                Connector::Datagen(_) | Connector::Nexmark(_) => {
                    return Err(FreshetError::InvalidStatement(format!(
                        "table \"{target}\" is a '{}' source: it cannot be written to",
                        table.connector.name()
                    )));
                }
                Connector::Filesystem(options) => {
                    let Some(source) = &table.source else {
                        return Err(FreshetError::Internal(format!(
                            "filesystem table \"{target}\" has no source"
                        )));
                    };
                    let (schema, positions) = source.data_columns();
                    Sink::Files(Box::new(FileSink::new(&target, options, schema, positions)?))
                }
            },
            None => {
                if matches!(
                    self.inner.catalog.manifest().entries.get(&target),
                    Some(CatalogEntry::MaterializedTable { .. })
                ) {
                    return Err(FreshetError::InvalidStatement(format!(
                        "\"{target}\" is a materialized table: its rows come from its query"
                    )));
                }
                let table = self.inner.catalog.table(&target)?;
                if table.snapshot().primary_key().is_empty() {
                    Sink::Table(table)
                } else {
                    Sink::Upsert(table)
                }
            }
        };
        let timed = time_as_input(&input)?;
        let optimized = state.optimize(timed.as_ref().unwrap_or(&input))?;
        let parallelism = state.config().target_partitions();
        let options = freshet_incremental::PipelineOptions {
            event_times: self.event_times(),
            // As in Flink, a job writes a window's result once the window has closed.
            emit_on_close: true,
            state_ttl_ms,
            append_only_sources: self.inner.streams.append_only(),
        };
        let pipeline =
            match Pipeline::build_with(&optimized, &crate::materialized::scan_table_name, parallelism, &options) {
                Ok(p) => p,
                Err(BuildError::NotIncremental(why)) => {
                    return Err(FreshetError::Unsupported(format!(
                        "a continuous INSERT over a stream whose query has a {why}"
                    )));
                }
                Err(BuildError::Failed(e)) => return Err(e),
            };
        if sink.append_only()
            && let Some(operator) = pipeline.updating_operator()
        {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{target}\" takes only insertions, but the query's {operator} updates rows it has emitted \
                 (write it to a table with a primary key, or to a materialized table)"
            )));
        }
        let mut inputs = Vec::new();
        for source in pipeline.sources() {
            let table = self.inner.catalog.table(source)?;
            let source = self.inner.streams.get(source).and_then(|t| t.source.clone());
            inputs.push(JobInput { table, source });
        }
        Ok((inputs, pipeline, sink))
    }

    /// `SHOW JOBS`.
    pub(crate) async fn show_jobs(&self) -> Result<SendableRecordBatchStream> {
        self.jobs_result(&self.inner.streams.jobs.list()).await
    }

    /// `STOP JOB 'id'`: stops it after its current epoch and waits for it.
    pub(crate) async fn stop_job(&self, id: &str) -> Result<SendableRecordBatchStream> {
        let Some(job) = self.inner.streams.jobs.get(id) else {
            return Err(FreshetError::InvalidStatement(format!(
                "no job with id '{id}' (SHOW JOBS lists them)"
            )));
        };
        job.stop();
        let info = job.wait().await;
        self.jobs_result(&[info]).await
    }

    /// Every job started since the engine opened, running or ended, in the order they started.
    pub fn jobs(&self) -> Vec<JobInfo> {
        self.inner.streams.jobs.list()
    }

    /// A job by id: its info, a way to follow it (`Job::subscribe`) and to stop it.
    pub fn job(&self, id: &str) -> Option<Arc<Job>> {
        self.inner.streams.jobs.get(id)
    }
}

/// Job progress kept in the location, beside the catalog.
#[derive(Debug)]
struct CatalogProgress {
    catalog: Arc<freshet_storage::Catalog>,
}

#[async_trait::async_trait]
impl JobProgress for CatalogProgress {
    async fn save(&self, job: &str, progress: &SavedProgress) -> Result<()> {
        let value = serde_json::to_value(progress).map_err(|e| FreshetError::Internal(e.to_string()))?;
        self.catalog.save_job_progress(job, &value).await
    }

    async fn ended(&self, job: &str) -> Result<()> {
        self.catalog.remove_job(job).await
    }

    async fn write_state(&self, job: &str, bytes: bytes::Bytes) -> Result<StateFile> {
        self.catalog.write_job_state(job, bytes).await
    }

    async fn remove_states(&self, job: &str, keep: &[StateFile]) -> Result<()> {
        self.catalog.remove_job_states(job, keep).await
    }
}

impl Engine {
    /// A table of jobs: `SHOW JOBS` and the system table `freshet.jobs`.
    async fn jobs_result(&self, jobs: &[JobInfo]) -> Result<SendableRecordBatchStream> {
        let batch = self.jobs_batch(jobs).await?;
        batches_stream(batch.schema(), vec![batch])
    }

    /// How far behind its inputs a running job is: now minus the commit time of the oldest
    /// input version it has not processed (0 when it has processed them all); NULL for a job
    /// that has ended or not yet run an epoch.
    async fn job_lag_ms(&self, job: &JobInfo) -> Option<i64> {
        if job.status.is_terminal() || job.inputs.is_empty() {
            return None;
        }
        let now = self.inner.materialized.clock.now_ms();
        let mut lag = 0;
        for (name, &processed) in &job.inputs {
            let Ok(table) = self.inner.catalog.table(name) else {
                continue;
            };
            if table.snapshot().version() > processed
                && let Ok(next) = table.snapshot_at(processed + 1).await
            {
                lag = lag.max(now - next.manifest().committed_at_ms);
            }
        }
        Some(lag.max(0))
    }

    pub(crate) async fn jobs_batch(&self, jobs: &[JobInfo]) -> Result<RecordBatch> {
        let mut lags = Vec::with_capacity(jobs.len());
        for job in jobs {
            lags.push(self.job_lag_ms(job).await);
        }
        jobs_batch(jobs, lags)
    }
}

fn jobs_batch(jobs: &[JobInfo], lags: Vec<Option<i64>>) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("job_id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("statement", DataType::Utf8, false),
        Field::new("rows_in", DataType::UInt64, false),
        Field::new("rows_out", DataType::UInt64, false),
        Field::new("epochs", DataType::UInt64, false),
        Field::new("lag_ms", DataType::Int64, true),
        Field::new(
            "started_at",
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("error", DataType::Utf8, true),
        Field::new("state_rows", DataType::UInt64, false),
        Field::new("state_bytes", DataType::UInt64, false),
        Field::new("checkpoint_bytes", DataType::UInt64, true),
        Field::new(
            "checkpointed_at",
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("recovery", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(jobs.iter().map(|j| j.id.clone()))),
        Arc::new(StringArray::from_iter_values(jobs.iter().map(|j| j.status.as_str()))),
        Arc::new(StringArray::from_iter_values(jobs.iter().map(|j| j.statement.clone()))),
        Arc::new(UInt64Array::from_iter_values(jobs.iter().map(|j| j.rows_in))),
        Arc::new(UInt64Array::from_iter_values(jobs.iter().map(|j| j.rows_out))),
        Arc::new(UInt64Array::from_iter_values(jobs.iter().map(|j| j.epochs))),
        Arc::new(datafusion::arrow::array::Int64Array::from(lags)),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            jobs.iter().map(|j| j.started_at_ms),
        )),
        Arc::new(StringArray::from_iter(jobs.iter().map(|j| j.error.clone()))),
        Arc::new(UInt64Array::from_iter_values(jobs.iter().map(|j| j.state_rows))),
        Arc::new(UInt64Array::from_iter_values(jobs.iter().map(|j| j.state_bytes))),
        Arc::new(UInt64Array::from_iter(jobs.iter().map(|j| j.checkpoint.map(|c| c.0)))),
        Arc::new(TimestampMillisecondArray::from_iter(
            jobs.iter().map(|j| j.checkpoint.map(|c| c.1)),
        )),
        Arc::new(StringArray::from_iter(jobs.iter().map(|j| j.recovery.clone()))),
    ];
    RecordBatch::try_new(schema, columns).map_err(|e| FreshetError::Internal(e.to_string()))
}
