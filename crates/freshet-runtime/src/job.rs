//! Continuous jobs: `INSERT INTO sink SELECT ...` over streams, run until stopped or, over
//! bounded sources only, until everything is read.
//!
//! A job's loop: let each input's source ingest what is new; read every input's changes since
//! the versions the job has processed (the first epoch reads the inputs' contents); step the
//! pipeline once; write the output to the sink; wait for an input to commit, a source's monitor
//! interval, or a stop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use futures::future::{self, Either};
use tokio::sync::{Notify, watch};

use freshet_common::{ChangeBatch, FreshetError, Result, SharedClock};
use freshet_incremental::{Epoch, Pipeline};
use freshet_storage::Table;

use crate::sink::Sink;
use crate::source::Source;

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
    /// Rows written to the sink.
    pub rows_out: u64,
    /// Epochs processed.
    pub epochs: u64,
    /// Why it failed.
    pub error: Option<String>,
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
        self.stop.notify_one();
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

    /// Starts a job on the current tokio runtime.
    pub fn start(
        &self,
        statement: &str,
        inputs: Vec<JobInput>,
        pipeline: Pipeline,
        sink: Sink,
        clock: SharedClock,
    ) -> Arc<Job> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let job = Arc::new(Job {
            info: watch::Sender::new(JobInfo {
                id: id.clone(),
                statement: statement.to_string(),
                status: JobStatus::Running,
                started_at_ms: clock.now_ms(),
                ended_at_ms: None,
                rows_in: 0,
                rows_out: 0,
                epochs: 0,
                error: None,
            }),
            stop: Notify::new(),
        });
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).push(job.clone());
        let running = job.clone();
        tokio::spawn(async move {
            let mut run = Run {
                job: running.clone(),
                inputs,
                pipeline,
                sink,
                clock: clock.clone(),
                processed: HashMap::new(),
            };
            let (status, error) = match run.run().await {
                Ok(status) => (status, None),
                Err(e) => {
                    tracing::warn!(job = %running.info().id, error = %e, "job failed");
                    (JobStatus::Failed, Some(e.to_string()))
                }
            };
            let now = clock.now_ms();
            running.update(|info| {
                info.status = status;
                info.error = error;
                info.ended_at_ms = Some(now);
            });
        });
        job
    }

    /// Stops every running job and waits for them (the engine is closing).
    pub async fn stop_all(&self) {
        let jobs: Vec<Arc<Job>> = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).to_vec();
        for job in &jobs {
            job.stop();
        }
        for job in jobs {
            job.wait().await;
        }
    }
}

/// A job's loop and what it has processed.
struct Run {
    job: Arc<Job>,
    inputs: Vec<JobInput>,
    pipeline: Pipeline,
    sink: Sink,
    clock: SharedClock,
    /// Per input table, the version its changes have been processed up to.
    processed: HashMap<String, u64>,
}

impl Run {
    async fn run(&mut self) -> Result<JobStatus> {
        // Subscribed before the first look, so that no commit falls in between.
        let mut commits: Vec<watch::Receiver<u64>> = self.inputs.iter().map(|i| i.table.subscribe()).collect();
        let bounded = self
            .inputs
            .iter()
            .all(|i| i.source.as_ref().is_none_or(|s| s.is_bounded()));
        let interval = self
            .inputs
            .iter()
            .filter_map(|i| i.source.as_ref().and_then(|s| s.monitor_interval()))
            .min();
        loop {
            for input in &self.inputs {
                if let Some(source) = &input.source {
                    source.ingest(&input.table).await?;
                }
            }
            self.epoch().await?;
            if bounded {
                return Ok(JobStatus::Finished);
            }
            for c in &mut commits {
                c.borrow_and_update();
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

    /// Processes every input's changes since the last epoch.
    async fn epoch(&mut self) -> Result<()> {
        let mut epoch = Epoch::at(self.clock.now_ms());
        let mut versions = Vec::new();
        for input in &self.inputs {
            let name = input.table.name().to_string();
            let columns = self.pipeline.source_columns(&name).map(<[usize]>::to_vec);
            let snapshot = input.table.snapshot();
            let version = snapshot.version();
            match self.processed.get(&name) {
                // The first epoch reads the input's contents.
                None => {
                    let mut rows = snapshot.scan(columns, false);
                    while let Some(batch) = rows.try_next().await? {
                        epoch.add(&name, ChangeBatch::with_weight(&batch, 1)?);
                    }
                }
                Some(&from) if from < version => {
                    let changes = input.table.changes(from, version).await?;
                    let mut rows = changes.stream_columns(columns.as_deref());
                    while let Some(batch) = rows.try_next().await? {
                        epoch.add(&name, batch);
                    }
                }
                Some(_) => {}
            }
            versions.push((name, version));
        }
        let first = self.processed.is_empty();
        let rows_in = epoch.rows() as u64;
        if rows_in > 0 || first {
            let output = self.pipeline.step(&epoch)?;
            let mut written = 0;
            if let Some(output) = output {
                if self.sink.append_only() && output.weights().values().iter().any(|&w| w < 0) {
                    return Err(FreshetError::InvalidStatement(
                        "the query's result retracted rows it had emitted, which an append-only sink cannot take"
                            .into(),
                    ));
                }
                written = self.sink.write(&output).await?;
            }
            self.job.update(|info| {
                info.rows_in += rows_in;
                info.rows_out += written;
                info.epochs += 1;
            });
        }
        self.processed.extend(versions);
        Ok(())
    }
}
