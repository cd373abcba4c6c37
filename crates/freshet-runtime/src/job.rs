//! Continuous jobs: `INSERT INTO sink SELECT ...` over streams, run until stopped or, over
//! bounded sources only, until everything is read.
//!
//! A job's loop: let each input's source ingest what is new; read every input's changes since
//! the versions the job has processed (the first epoch reads the inputs' contents); step the
//! pipeline once; write the output to the sink; wait for an input to commit, a source's monitor
//! interval, or a stop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use futures::future::{self, Either};
use futures::{FutureExt, TryStreamExt};
use tokio::sync::{Notify, watch};

use freshet_common::{ChangeBatch, FreshetError, Result, SharedClock};
use freshet_incremental::{Epoch, Pipeline};
use freshet_storage::{StateFile, Table};

use crate::sink::Sink;
use crate::source::{IngestReport, Source};

/// Where a job's progress is kept between epochs, so that a restarted engine resumes it.
#[async_trait::async_trait]
pub trait JobProgress: Send + Sync + std::fmt::Debug {
    /// Records, atomically, that the job has written everything up to these input versions,
    /// and which staged files of its sinks hold the output (put in place after this returns).
    async fn save(&self, job: &str, progress: &SavedProgress) -> Result<()>;
    /// The job has ended: forget it (its checkpoints too).
    async fn ended(&self, job: &str) -> Result<()>;
    /// Writes a checkpoint of the job's operator state as a new file, which a progress saved
    /// after it names.
    async fn write_state(&self, job: &str, bytes: bytes::Bytes) -> Result<StateFile>;
    /// Deletes the job's checkpoint files other than `keep` (those of its saved progress).
    async fn remove_states(&self, job: &str, keep: &[StateFile]) -> Result<()>;
}

/// What a job has committed: the input versions whose output it has written, and the files its
/// file sinks staged for that output (by branch), which a resumed job puts in place if a crash
/// came before it did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedProgress {
    /// Input versions processed.
    pub inputs: BTreeMap<String, u64>,
    /// Staged files (target names) of the last committed epoch, by branch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub staged: BTreeMap<usize, Vec<String>>,
    /// The newest checkpoint of each branch's operator state, by branch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checkpoints: BTreeMap<usize, JobCheckpoint>,
}

/// A checkpoint of one branch's operator state: written after the epoch whose input versions
/// it reflects had committed, so that those versions are never ahead of what the branch's sink
/// holds. A resumed branch restores it and steps the input changes from its versions to the
/// ones it had written everything of, with the output dropped.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobCheckpoint {
    /// The file (in the job's directory) holding the state's batches, its size and hash.
    pub file: StateFile,
    /// The pipeline the state belongs to ([`Pipeline::fingerprint`]).
    pub fingerprint: String,
    /// The input versions the state reflects.
    pub inputs: BTreeMap<String, u64>,
    /// When it was taken (engine clock, ms since the Unix epoch).
    pub at_ms: i64,
    /// The byte ranges of each stateful operator's batches ([`PipelineState::decode`]).
    pub operators: freshet_incremental::OperatorRanges,
    /// Rows of that whole state.
    #[serde(default)]
    pub rows: u64,
    /// The deltas taken after it, in order: each one's file and what it holds
    /// ([`Pipeline::save_checkpoint`]). The input versions and time above are the last one's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<(StateFile, freshet_incremental::Layer)>,
}

impl JobCheckpoint {
    /// Its files: the whole state's, then each delta's.
    pub fn files(&self) -> impl Iterator<Item = &StateFile> {
        std::iter::once(&self.file).chain(self.deltas.iter().map(|(file, _)| file))
    }

    /// Bytes over its files.
    pub fn bytes(&self) -> u64 {
        self.files().map(|f| f.bytes).sum()
    }
}

impl SavedProgress {
    /// Reads a saved progress; also the earlier form, a map of input versions alone.
    pub fn from_json(value: serde_json::Value) -> std::result::Result<Self, serde_json::Error> {
        match value.get("inputs") {
            Some(serde_json::Value::Object(_)) => serde_json::from_value(value),
            _ => Ok(Self {
                inputs: serde_json::from_value(value)?,
                ..Self::default()
            }),
        }
    }
}

/// How a job starts.
#[derive(Debug)]
pub struct JobStart {
    /// Its id: a new one, or the id of the job it resumes.
    pub id: String,
    /// The statement it runs (an INSERT, or a statement set of several).
    pub statement: String,
    /// Its inputs: every table its branches read, each once.
    pub inputs: Vec<JobInput>,
    /// What it writes: one branch per INSERT. The branches of a statement set read their
    /// common inputs once per epoch.
    pub branches: Vec<JobBranch>,
    /// Its operator state's share of the engine's memory pool, resized after every epoch: a
    /// state that outgrows the limit fails the job.
    pub memory: datafusion::execution::memory_pool::MemoryReservation,
    /// Flink's `execution.checkpointing.interval`: the longest a branch's operator state goes
    /// without a checkpoint while its inputs change (see [`freshet_incremental::checkpoint_due`]).
    pub checkpoint_interval_ms: i64,
    /// The most input rows one epoch of a state rebuilt from the inputs takes (the setting
    /// materialized tables' state builds use, `materialized-table.state-build.epoch-rows`).
    pub rebuild_epoch_rows: usize,
}

/// One INSERT of a job: its pipeline and its sink.
#[derive(Debug)]
pub struct JobBranch {
    /// Its pipeline.
    pub pipeline: Pipeline,
    /// Its sink.
    pub sink: Sink,
    /// The input versions it had written everything of, when the job resumes.
    pub resume: Option<BTreeMap<String, u64>>,
    /// How the pipeline's state was brought to `resume` before the job started (restored from
    /// this checkpoint, and the changes since stepped through it), if it was; otherwise the job
    /// rebuilds it from the inputs at those versions.
    pub restored: Option<Restored>,
}

/// A branch's state restored from a checkpoint before its job started.
#[derive(Debug)]
pub struct Restored {
    /// The checkpoint (kept until a newer one replaces it).
    pub checkpoint: JobCheckpoint,
    /// Input changes stepped since it, up to the versions the branch resumes from.
    pub replayed: u64,
}

/// The life of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Reading and writing.
    Running,
    /// Its bounded inputs are read and written: done.
    Finished,
    /// Stopped by an error (see [`JobInfo::error`]).
    Failed,
    /// Stopped by `STOP JOB`.
    Canceled,
}

impl JobStatus {
    /// Flink's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "RUNNING",
            JobStatus::Finished => "FINISHED",
            JobStatus::Failed => "FAILED",
            JobStatus::Canceled => "CANCELED",
        }
    }

    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        self != JobStatus::Running
    }
}

/// What a job is and has done.
#[derive(Debug, Clone)]
pub struct JobInfo {
    /// The job's id.
    pub id: String,
    /// The statement it runs.
    pub statement: String,
    /// Its status.
    pub status: JobStatus,
    /// When it started (engine clock, ms since the Unix epoch).
    pub started_at_ms: i64,
    /// When it ended, if it has.
    pub ended_at_ms: Option<i64>,
    /// Input rows (changes) processed.
    pub rows_in: u64,
    /// Rows written to the sinks.
    pub rows_out: u64,
    /// Rows written by each INSERT of the job (one, or a statement set's), in order.
    pub rows_out_by_insert: Vec<u64>,
    /// Epochs processed.
    pub epochs: u64,
    /// The operator state's bytes after the last epoch, and the most it has held.
    pub state_bytes: u64,
    /// The most the operator state has held (bytes).
    pub peak_state_bytes: u64,
    /// Entries (rows, groups) in the operator state after the last epoch.
    pub state_rows: u64,
    /// The most entries the operator state has held.
    pub peak_state_rows: u64,
    /// Per input table, the version processed up to (empty before the first epoch).
    pub inputs: BTreeMap<String, u64>,
    /// Per input table, the oldest version a restart reads: the version of its branches'
    /// oldest checkpoint, or the version processed where a branch has none. Vacuum keeps it.
    pub restart_inputs: BTreeMap<String, u64>,
    /// The size of its newest checkpoints (bytes, over its branches) and when the newest was
    /// taken; `None` before the first (a pipeline without state has none).
    pub checkpoint: Option<(u64, i64)>,
    /// How its state came back when it resumed after a restart (`None` for a new job).
    pub recovery: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl JobInfo {
    fn new(id: String, statement: String, status: JobStatus, now_ms: i64, branches: usize) -> Self {
        Self {
            id,
            statement,
            status,
            started_at_ms: now_ms,
            ended_at_ms: None,
            rows_in: 0,
            rows_out: 0,
            rows_out_by_insert: vec![0; branches],
            epochs: 0,
            state_bytes: 0,
            peak_state_bytes: 0,
            state_rows: 0,
            peak_state_rows: 0,
            inputs: BTreeMap::new(),
            restart_inputs: BTreeMap::new(),
            checkpoint: None,
            recovery: None,
            error: None,
        }
    }
}

/// One input of a job: a table, and the source that feeds it if it is a connector table.
#[derive(Debug, Clone)]
pub struct JobInput {
    /// The table.
    pub table: Arc<Table>,
    /// Its source, if any.
    pub source: Option<Arc<Source>>,
}

/// A running (or ended) job.
#[derive(Debug)]
pub struct Job {
    /// What it is and has done, updated after every epoch and when it ends.
    info: watch::Sender<JobInfo>,
    stop: Notify,
    /// Set by [`Job::stop`] (the notification wakes a waiting job; this tells a busy one).
    stopping: std::sync::atomic::AtomicBool,
    /// Stopped because the engine closes (it resumes when the engine opens again).
    closing: std::sync::atomic::AtomicBool,
    /// The tables it reads and the one it writes, if a table.
    tables: Vec<String>,
}

impl Job {
    /// What the job is and has done.
    pub fn info(&self) -> JobInfo {
        self.info.borrow().clone()
    }

    /// Follows the job: the receiver sees its info change after every epoch and when it ends
    /// (`wait_for` awaits a condition, such as rows written).
    pub fn subscribe(&self) -> watch::Receiver<JobInfo> {
        self.info.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut JobInfo)) {
        self.info.send_modify(change);
    }

    /// Asks the job to stop after the epoch it is in.
    pub fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        self.stop.notify_one();
    }

    fn stop_requested(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the job has ended, and returns how.
    pub async fn wait(&self) -> JobInfo {
        let mut info = self.info.subscribe();
        // The sender lives as long as the job: this cannot fail while `self` is borrowed.
        let _ = info.wait_for(|i| i.status.is_terminal()).await;
        self.info()
    }
}

/// The jobs of an engine.
#[derive(Debug, Default)]
pub struct Jobs {
    /// In the order they started.
    jobs: Mutex<Vec<Arc<Job>>>,
}

impl Jobs {
    /// Every job, running or ended, in the order they started.
    pub fn list(&self) -> Vec<JobInfo> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.iter().map(|j| j.info()).collect()
    }

    /// The job of an id.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.iter().find(|j| j.info.borrow().id == id).cloned()
    }

    /// A new job's id.
    pub fn new_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Starts a job on the current tokio runtime.
    pub fn start(&self, start: JobStart, clock: SharedClock, progress: Arc<dyn JobProgress>) -> Arc<Job> {
        let JobStart {
            id,
            statement,
            inputs,
            branches,
            memory,
            checkpoint_interval_ms,
            rebuild_epoch_rows,
        } = start;
        let mut tables: Vec<String> = inputs.iter().map(|i| i.table.name().to_string()).collect();
        tables.extend(branches.iter().filter_map(|b| b.sink.table()).map(str::to_string));
        let (branches, resume): (Vec<Branch>, Vec<_>) = branches
            .into_iter()
            .map(|b| {
                let branch = Branch {
                    stateful: !b
                        .pipeline
                        .save_state()
                        .is_ok_and(|s| s.is_ok_and(|s| s.operators.is_empty())),
                    pipeline: b.pipeline,
                    sink: b.sink,
                    processed: HashMap::new(),
                    checkpoint: None,
                    since_checkpoint: None,
                };
                (branch, (b.resume, b.restored))
            })
            .unzip();
        let job = Arc::new(Job {
            info: watch::Sender::new(JobInfo::new(
                id.clone(),
                statement,
                JobStatus::Running,
                clock.now_ms(),
                branches.len(),
            )),
            stop: Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            closing: std::sync::atomic::AtomicBool::new(false),
            tables,
        });
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).push(job.clone());
        let running = job.clone();
        tokio::spawn(async move {
            let mut run = Run {
                id: id.clone(),
                job: running.clone(),
                inputs,
                branches,
                clock: clock.clone(),
                progress: progress.clone(),
                memory,
                checkpoint_interval_ms,
                rebuild_epoch_rows,
            };
            // A panic (a bug) fails the job with what it said, rather than ending its task
            // with the job still shown running and everyone waiting for it waiting forever.
            let outcome = std::panic::AssertUnwindSafe(run.run(resume)).catch_unwind().await;
            let (status, error) = match outcome {
                Ok(Ok(status)) => (status, None),
                Ok(Err(e)) => {
                    tracing::warn!(job = %id, error = %e, "job failed");
                    (JobStatus::Failed, Some(e.to_string()))
                }
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|m| m.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".to_string());
                    tracing::error!(job = %id, message, "job panicked");
                    (
                        JobStatus::Failed,
                        Some(format!("internal error: the job panicked: {message}")),
                    )
                }
            };
            // Its inputs and sink are let go before it says it has ended, so that an engine
            // closing after it holds nothing of theirs.
            drop(run);
            // A job stopped by the engine closing is resumed when it opens again; one that
            // ended for any other reason is forgotten.
            let closing = status == JobStatus::Canceled && running.closing.load(std::sync::atomic::Ordering::Relaxed);
            if !closing && let Err(e) = progress.ended(&id).await {
                tracing::warn!(job = %id, error = %e, "could not forget an ended job");
            }
            // The progress store holds the catalog (and the location's lock): let go of it too.
            drop(progress);
            let now = clock.now_ms();
            running.update(|info| {
                info.status = status;
                info.error = error;
                info.ended_at_ms = Some(now);
            });
        });
        job
    }

    /// Lists a job that could not even start (a stored job that no longer plans when the engine
    /// opens), as failed with the reason.
    pub fn failed_to_start(&self, id: &str, statement: &str, error: String, clock: &SharedClock) -> Arc<Job> {
        let now = clock.now_ms();
        let mut info = JobInfo::new(id.to_string(), statement.to_string(), JobStatus::Failed, now, 0);
        info.ended_at_ms = Some(now);
        info.error = Some(error);
        let job = Arc::new(Job {
            info: watch::Sender::new(info),
            stop: Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            closing: std::sync::atomic::AtomicBool::new(false),
            tables: Vec::new(),
        });
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).push(job.clone());
        job
    }

    /// The id of a running job that reads or writes a table, if any.
    pub fn running_on(&self, table: &str) -> Option<String> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.iter()
            .find(|j| !j.info.borrow().status.is_terminal() && j.tables.iter().any(|t| t == table))
            .map(|j| j.info.borrow().id.clone())
    }

    /// Stops every running job and waits for them (the engine is closing).
    pub async fn stop_all(&self) {
        let jobs: Vec<Arc<Job>> = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).to_vec();
        for job in &jobs {
            job.closing.store(true, std::sync::atomic::Ordering::Relaxed);
            job.stop();
        }
        for job in jobs {
            job.wait().await;
        }
    }
}

/// Where a branch resumes: the input versions it had written everything of, and its state
/// if restored already.
type Resume = (Option<BTreeMap<String, u64>>, Option<Restored>);

/// A job's loop and what it has processed.
struct Run {
    /// The job's id (its info is published; this is read at every epoch).
    id: String,
    job: Arc<Job>,
    inputs: Vec<JobInput>,
    branches: Vec<Branch>,
    clock: SharedClock,
    progress: Arc<dyn JobProgress>,
    memory: datafusion::execution::memory_pool::MemoryReservation,
    checkpoint_interval_ms: i64,
    rebuild_epoch_rows: usize,
}

/// One INSERT of a running job.
struct Branch {
    pipeline: Pipeline,
    /// Whether any of its operators keeps state (a pipeline without is neither checkpointed
    /// nor rebuilt when it resumes).
    stateful: bool,
    sink: Sink,
    /// Per input table it reads, the version its changes have been processed up to (empty
    /// before its first epoch).
    processed: HashMap<String, u64>,
    /// Its newest checkpoint.
    checkpoint: Option<JobCheckpoint>,
    /// Input rows stepped since its newest checkpoint, and when that was taken (`None`
    /// without one).
    since_checkpoint: Option<(u64, i64)>,
}

impl Branch {
    fn reads(&self, table: &str) -> bool {
        self.pipeline.sources().contains(table)
    }
}

impl Run {
    /// Resizes the state's reservation; past the engine's memory limit the job fails.
    fn account(&mut self) -> Result<()> {
        let bytes: u64 = self.branches.iter().map(|b| b.pipeline.state_size().bytes).sum();
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        self.memory.try_resize(bytes).map_err(|e| {
            FreshetError::from(e).context(format!(
                "job {}: its operator state needs {bytes} bytes of memory",
                self.id
            ))
        })
    }

    async fn run(&mut self, resume: Vec<Resume>) -> Result<JobStatus> {
        let mut recovery = Vec::new();
        for (index, (versions, restored)) in resume.into_iter().enumerate() {
            let Some(versions) = versions else { continue };
            let branch = &mut self.branches[index];
            match restored {
                Some(Restored { checkpoint, replayed }) => {
                    recovery.push(format!(
                        "operator state restored from its checkpoint ({} bytes, {replayed} input changes replayed)",
                        checkpoint.bytes()
                    ));
                    branch.processed = versions.into_iter().filter(|(name, _)| branch.reads(name)).collect();
                    branch.since_checkpoint = Some((replayed, checkpoint.at_ms));
                    branch.checkpoint = Some(checkpoint);
                }
                None => recovery.push(self.rebuild(index, &versions).await?),
            }
        }
        if !recovery.is_empty() {
            recovery.dedup();
            let restart_inputs = self.restart_inputs();
            self.job.update(|info| {
                info.recovery = Some(recovery.join("; "));
                info.restart_inputs = restart_inputs;
            });
        }
        // Subscribed before the first look, so that no commit falls in between.
        let mut commits: Vec<watch::Receiver<u64>> = self.inputs.iter().map(|i| i.table.subscribe()).collect();
        let interval = self
            .inputs
            .iter()
            .filter_map(|i| i.source.as_ref().and_then(|s| s.poll_interval()))
            .min();
        loop {
            // Ends once every source has ended and been read (tables without a source are read
            // as they are: a bounded input).
            let mut finished = true;
            let mut pending = false;
            let mut ingested = HashMap::new();
            for input in &self.inputs {
                if let Some(source) = &input.source {
                    let report = source.ingest_keeping_rows(&input.table).await?;
                    finished &= report.finished;
                    pending |= report.pending;
                    if report.version > report.base {
                        ingested.insert(input.table.name().to_string(), report);
                    }
                }
            }
            self.epoch(ingested, false).await?;
            if finished {
                // At the end of bounded inputs the watermarks jump to +infinity: every window
                // closes and its result is written, as in Flink.
                self.epoch(HashMap::new(), true).await?;
                return Ok(JobStatus::Finished);
            }
            for c in &mut commits {
                c.borrow_and_update();
            }
            // A source that had more than one epoch takes is read on at once (a stop still
            // ends the job between epochs): the job pulls its input no faster than it writes it.
            if pending {
                if self.job.stop_requested() {
                    return Ok(JobStatus::Canceled);
                }
                continue;
            }
            let changed = future::select_all(commits.iter_mut().map(|c| Box::pin(c.changed())));
            let tick = tokio::time::sleep(interval.unwrap_or(Duration::from_secs(3_600)));
            let stop = self.job.stop.notified();
            tokio::pin!(tick, stop);
            match future::select(stop, future::select(changed, tick)).await {
                Either::Left(_) => return Ok(JobStatus::Canceled),
                Either::Right(_) => {}
            }
        }
    }

    /// Per input, the oldest version a restart reads ([`JobInfo::restart_inputs`]).
    fn restart_inputs(&self) -> BTreeMap<String, u64> {
        let mut oldest: BTreeMap<String, u64> = BTreeMap::new();
        for branch in &self.branches {
            for (name, &processed) in &branch.processed {
                let version = branch
                    .checkpoint
                    .as_ref()
                    .and_then(|c| c.inputs.get(name).copied())
                    .unwrap_or(processed);
                oldest
                    .entry(name.clone())
                    .and_modify(|v| *v = (*v).min(version))
                    .or_insert(version);
            }
        }
        oldest
    }

    /// Resumes a branch after a restart without a checkpoint: its pipeline's state is rebuilt
    /// from the inputs at the versions it had written everything of (its output then, already
    /// written, is dropped), and processing goes on from there. A pipeline without state
    /// reads nothing. The rows go in epochs of at most `rebuild_epoch_rows`, all but the last
    /// building ones (`Epoch::building`: aggregates quiet, windows open), the inputs'
    /// watermarks on the last, and the state is accounted after each: one epoch of every row
    /// held every intermediate result at once (Nexmark q9's job, 222 MiB of state after four
    /// million events, rebuilt at a peak of 7.6 GB). Says what it did.
    async fn rebuild(&mut self, branch: usize, versions: &BTreeMap<String, u64>) -> Result<String> {
        let now = self.clock.now_ms();
        let mut epoch = Epoch::at(now);
        let mut watermarks = Vec::new();
        let mut rows = 0;
        for input in 0..self.inputs.len() {
            let table = self.inputs[input].table.clone();
            let name = table.name().to_string();
            if !self.branches[branch].reads(&name) {
                continue;
            }
            let Some(&version) = versions.get(&name) else {
                return Err(FreshetError::InvalidStatement(format!(
                    "the job cannot resume: it had not recorded how far it read \"{name}\""
                )));
            };
            let snapshot = table.snapshot_at(version).await.map_err(|e| {
                FreshetError::InvalidStatement(format!(
                    "the job cannot resume: version {version} of \"{name}\", where it stopped, is gone ({e})"
                ))
            })?;
            if self.branches[branch].stateful {
                let columns = self.branches[branch]
                    .pipeline
                    .source_columns(&name)
                    .map(<[usize]>::to_vec);
                let mut scan = snapshot.scan(columns, false);
                let max_rows = self.rebuild_epoch_rows;
                while let Some(batch) = scan.try_next().await? {
                    rows += epoch.add_in_parts(&name, &batch, max_rows, |full| {
                        self.branches[branch].pipeline.step(&full)?;
                        self.account()
                    })?;
                }
            }
            if let Some(watermark) = input_watermark(&self.inputs[input], &snapshot, now) {
                watermarks.push((name.clone(), watermark));
            }
            self.branches[branch].processed.insert(name, version);
        }
        for (name, (watermark, idle)) in watermarks {
            epoch.set_watermark(&name, watermark);
            if idle {
                epoch.set_idle(&name);
            }
        }
        self.branches[branch].pipeline.step(&epoch)?;
        self.account()?;
        Ok(match self.branches[branch].stateful {
            true => format!("operator state rebuilt from the inputs ({rows} rows)"),
            false => "no operator state to rebuild".to_string(),
        })
    }

    /// Processes every input's changes since the last epoch: each input is read once for the
    /// branches that have processed it up to the same version (all of them, but after a
    /// restart that found them at different points). `ingested` holds the rows this job's own
    /// ingestion just appended to its inputs: where they are exactly the changes wanted (nothing
    /// else committed in between), they are taken as they are instead of being read back.
    async fn epoch(&mut self, ingested: HashMap<String, IngestReport>, end_of_input: bool) -> Result<()> {
        let mut versions = BTreeMap::new();
        let mut watermarks = Vec::new();
        let mut reads: HashMap<(String, Option<u64>), Vec<ChangeBatch>> = HashMap::new();
        let mut rows_in = 0;
        for input in &self.inputs {
            let name = input.table.name().to_string();
            let snapshot = input.table.snapshot();
            let version = snapshot.version();
            if end_of_input && input.source.as_ref().is_some_and(|s| s.event_time().is_some()) {
                watermarks.push((name.clone(), i64::MAX, false));
            } else if let Some((watermark, idle)) = input_watermark(input, &snapshot, self.clock.now_ms()) {
                watermarks.push((name.clone(), watermark, idle));
            }
            let (columns, froms) = {
                let readers: Vec<&Branch> = self.branches.iter().filter(|b| b.reads(&name)).collect();
                // One branch reads only the columns it needs; several read all (a pipeline
                // takes changes of all columns too).
                let columns = match readers.as_slice() {
                    [only] => only.pipeline.source_columns(&name).map(<[usize]>::to_vec),
                    _ => None,
                };
                let froms: BTreeSet<Option<u64>> = readers.iter().map(|b| b.processed.get(&name).copied()).collect();
                (columns, froms)
            };
            for from in froms {
                if from.is_some_and(|from| from >= version) {
                    continue;
                }
                let changes = read_changes(input, from, &snapshot, columns.as_deref(), ingested.get(&name)).await?;
                rows_in += changes.iter().map(ChangeBatch::num_rows).sum::<usize>() as u64;
                reads.insert((name.clone(), from), changes);
            }
            versions.insert(name, version);
        }
        let now = self.clock.now_ms();
        let mut written = vec![0; self.branches.len()];
        let mut stepped = false;
        for (index, branch) in self.branches.iter_mut().enumerate() {
            let mut epoch = Epoch::at(now);
            for (name, watermark, idle) in &watermarks {
                epoch.set_watermark(name, *watermark);
                if *idle {
                    epoch.set_idle(name);
                }
            }
            for name in branch.pipeline.sources() {
                if let Some(changes) = reads.get(&(name.clone(), branch.processed.get(name).copied())) {
                    for batch in changes {
                        epoch.add(name, batch.clone());
                    }
                }
            }
            let inputs: BTreeMap<String, u64> = versions
                .iter()
                .filter(|(name, _)| branch.reads(name))
                .map(|(name, &v)| (name.clone(), v))
                .collect();
            let branch_rows = epoch.rows() as u64;
            if let Some((since, _)) = &mut branch.since_checkpoint {
                *since += branch_rows;
            }
            if branch_rows > 0 || branch.processed.is_empty() || end_of_input {
                stepped = true;
                if let Some(output) = branch.pipeline.step(&epoch)? {
                    if branch.sink.append_only() && output.weights().values().iter().any(|&w| w < 0) {
                        return Err(FreshetError::InvalidStatement(
                            "the query's result retracted rows it had emitted, which an append-only sink cannot take"
                                .into(),
                        ));
                    }
                    let record = serde_json::json!({ "job": self.id, "branch": index, "inputs": inputs });
                    written[index] = branch.sink.write(&output, record).await?;
                }
            }
            branch.processed.extend(inputs);
        }
        if stepped {
            self.account()?;
        }
        let staged: BTreeMap<usize, Vec<String>> = self
            .branches
            .iter()
            .enumerate()
            .map(|(index, branch)| (index, branch.sink.take_staged()))
            .filter(|(_, files)| !files.is_empty())
            .collect();
        // At the end of its inputs the job ends: nothing will resume from a checkpoint.
        let checkpointed = match stepped && !end_of_input {
            true => self.checkpoint(now).await?,
            false => false,
        };
        let advanced = self.job.info.borrow().inputs != versions;
        let saved = advanced || !staged.is_empty() || checkpointed;
        if !stepped && !saved {
            return Ok(());
        }
        // The saved progress's checkpoints and what the job's info says of them.
        let mut committed = None;
        if saved {
            let checkpoints: BTreeMap<usize, JobCheckpoint> = self
                .branches
                .iter()
                .enumerate()
                .filter_map(|(index, b)| Some((index, b.checkpoint.clone()?)))
                .collect();
            let id = self.id.clone();
            let keep: Vec<StateFile> = checkpoints.values().flat_map(|c| c.files().cloned()).collect();
            let checkpoint = checkpoints
                .values()
                .map(|c| (c.bytes(), c.at_ms))
                .reduce(|a, b| (a.0 + b.0, a.1.max(b.1)));
            // The commit point of the epoch: its output reaches external sinks only after it.
            let progress = SavedProgress {
                inputs: versions.clone(),
                staged,
                checkpoints,
            };
            self.progress.save(&id, &progress).await?;
            for (index, files) in &progress.staged {
                self.branches[*index].sink.publish(files).await?;
            }
            if checkpointed {
                // The checkpoints the saved progress no longer names go; one left by a failure
                // here is removed when the job resumes or ends.
                if let Err(e) = self.progress.remove_states(&id, &keep).await {
                    tracing::warn!(job = %id, error = %e, "could not remove an old checkpoint");
                }
            }
            committed = Some((self.restart_inputs(), checkpoint));
        }
        // What the epoch did is published at once, once it is committed.
        let state_bytes: u64 = self.branches.iter().map(|b| b.pipeline.state_size().bytes).sum();
        let state_rows: u64 = self.branches.iter().map(|b| b.pipeline.state_size().rows).sum();
        self.job.update(|info| {
            if stepped {
                info.state_bytes = state_bytes;
                info.peak_state_bytes = info.peak_state_bytes.max(state_bytes);
                info.state_rows = state_rows;
                info.peak_state_rows = info.peak_state_rows.max(state_rows);
                info.rows_in += rows_in;
                info.rows_out += written.iter().sum::<u64>();
                for (total, rows) in info.rows_out_by_insert.iter_mut().zip(&written) {
                    *total += rows;
                }
                info.epochs += 1;
            }
            if let Some((restart_inputs, checkpoint)) = committed {
                info.inputs = versions;
                info.restart_inputs = restart_inputs;
                info.checkpoint = checkpoint;
            }
        });
        Ok(())
    }

    /// Writes a checkpoint of each branch whose state is due one (after the epoch's output is
    /// written, so that the versions it reflects are never ahead of its sink's); whether any
    /// was written. The saved progress that follows names them. A checkpoint is a delta over
    /// the branch's last one while the deltas stay smaller than its whole state
    /// ([`freshet_incremental::delta_fits`]); the pipeline keeps its changes from there (a
    /// progress that fails to save fails the job, and the state goes with it).
    async fn checkpoint(&mut self, now_ms: i64) -> Result<bool> {
        let mut written = false;
        for branch in &mut self.branches {
            if !branch.stateful
                || !freshet_incremental::checkpoint_due(
                    branch.since_checkpoint,
                    branch.pipeline.state_size().rows,
                    branch.pipeline.delta_rows(),
                    now_ms,
                    self.checkpoint_interval_ms,
                )
            {
                continue;
            }
            let layers: Vec<freshet_incremental::Layer> = branch
                .checkpoint
                .iter()
                .flat_map(|c| c.deltas.iter().map(|(_, layer)| layer.clone()))
                .collect();
            let chain_rows = branch.checkpoint.as_ref().map(|c| (c.rows, layers.as_slice()));
            let Ok(state) = branch.pipeline.save_checkpoint(chain_rows)? else {
                // An operator that cannot save its state yet: the branch is rebuilt from its
                // inputs when it resumes.
                continue;
            };
            let chain = branch.checkpoint.clone().filter(|_| !state.deltas.is_empty());
            let rows = state.rows() as u64;
            let (bytes, operators) = state.encode()?;
            let file = self.progress.write_state(&self.id, bytes.into()).await?;
            let inputs = branch.processed.iter().map(|(k, &v)| (k.clone(), v)).collect();
            branch.checkpoint = Some(match chain {
                Some(mut chain) => {
                    chain.deltas.push((
                        file,
                        freshet_incremental::Layer {
                            operators,
                            deltas: state.deltas,
                            rows,
                        },
                    ));
                    chain.inputs = inputs;
                    chain.at_ms = now_ms;
                    chain
                }
                None => JobCheckpoint {
                    file,
                    fingerprint: state.fingerprint,
                    inputs,
                    at_ms: now_ms,
                    operators,
                    rows,
                    deltas: Vec::new(),
                },
            });
            branch.pipeline.checkpoint_taken();
            branch.since_checkpoint = Some((0, now_ms));
            written = true;
        }
        Ok(written)
    }
}

/// The changes of `input` from version `from` (its contents when none) to `snapshot`'s.
/// `ingested` is what the job's own ingestion just appended, taken as it is where it is exactly
/// those changes (or their end).
async fn read_changes(
    input: &JobInput,
    from: Option<u64>,
    snapshot: &Arc<freshet_storage::Snapshot>,
    columns: Option<&[usize]>,
    ingested: Option<&IngestReport>,
) -> Result<Vec<ChangeBatch>> {
    let version = snapshot.version();
    let mut changes = Vec::new();
    let ingested = ingested.filter(|report| report.version == version);
    match from {
        // The contents: those before this job's own ingestion, and the rows it just appended.
        None => {
            let read_from = match ingested {
                Some(report) => {
                    add_rows(&mut changes, &report.batches, columns)?;
                    input.table.snapshot_at(report.base).await?
                }
                None => snapshot.clone(),
            };
            let mut rows = read_from.scan(columns.map(<[usize]>::to_vec), false);
            while let Some(batch) = rows.try_next().await? {
                changes.push(ChangeBatch::with_weight(&batch, 1)?);
            }
        }
        Some(from) => match ingested {
            Some(report) if report.base == from => add_rows(&mut changes, &report.batches, columns)?,
            _ => {
                let read = input.table.changes(from, version).await?;
                let mut rows = read.stream_columns(columns);
                while let Some(batch) = rows.try_next().await? {
                    changes.push(batch);
                }
            }
        },
    }
    Ok(changes)
}

/// The watermark of an input whose source has an event time, at a version of its table, and
/// whether the source is idle at `now_ms`.
fn input_watermark(input: &JobInput, snapshot: &freshet_storage::Snapshot, now_ms: i64) -> Option<(i64, bool)> {
    let source = input.source.as_ref()?;
    source.event_time()?;
    let progress = crate::source::SourceProgress::at(snapshot);
    Some((progress.watermark_ms?, source.is_idle(&progress, now_ms)))
}

/// Inserted rows of a source, with the columns the pipeline reads.
fn add_rows(changes: &mut Vec<ChangeBatch>, batches: &[RecordBatch], columns: Option<&[usize]>) -> Result<()> {
    for batch in batches {
        let batch = match columns {
            Some(columns) => batch
                .project(columns)
                .map_err(|e| FreshetError::Internal(e.to_string()))?,
            None => batch.clone(),
        };
        changes.push(ChangeBatch::with_weight(&batch, 1)?);
    }
    Ok(())
}
