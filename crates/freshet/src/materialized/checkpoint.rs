//! Checkpoints of a materialized table's operator state.
//!
//! A refresh that commits incrementally may also write the pipeline's state: one file
//! (`state/<uuid>.arrow` in the table's directory) holding, one after the other, an Arrow IPC
//! file per batch of each stateful operator, listed in the version's manifest (`state`) with a
//! document saying what it holds — the pipeline's fingerprint, the input versions the state
//! reflects, and the byte range of each operator's batches. The file is written (and synced)
//! before the manifest and committed with it, so a crash leaves either the old checkpoint or
//! the new one, never half of one. Later versions keep the checkpoint
//! until a newer one replaces it.
//!
//! When the state is not in memory (the engine opened, a refresh failed), it is restored from
//! the checkpoint instead of being rebuilt from every input: the files are read back into a
//! pipeline built from the same plan, and the input changes between the checkpoint's versions
//! and the versions the table reflects are stepped through it with the output dropped (the
//! table holds it already). So a checkpoint need not be written at every refresh: one is
//! written when the state has none, when the last is older than Flink's
//! `execution.checkpointing.interval` (1 minute by default) and changes came since, and when
//! the changes since the last reach eight times the state's rows — which bounds what a restore
//! replays by the state's size, whatever the input's.
//! Anything wrong with a checkpoint (missing or corrupt files, another query, versions no
//! longer readable) is logged and the state is rebuilt from the inputs as before.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::buffer::Buffer;
use datafusion::execution::memory_pool::MemoryConsumer;
use serde::{Deserialize, Serialize};

use freshet_common::{FreshetError, Result};
use freshet_incremental::{Epoch, Layer, Pipeline, PipelineState};
use freshet_storage::{StateCheckpoint, Table, Transaction};

use super::incremental::IncrementalState;
use super::refresh::{PinnedQuery, RefreshRecord};
use crate::engine::Engine;

/// Format of the checkpoint document written by this build.
const CHECKPOINT_FORMAT: u32 = 1;

/// What a checkpoint's files hold (the manifest's `state.meta`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointMeta {
    format: u32,
    /// The pipeline the state belongs to.
    fingerprint: String,
    /// The input versions the state reflects.
    inputs: BTreeMap<String, u64>,
    /// When it was taken (engine clock, ms since the Unix epoch).
    #[serde(default)]
    at_ms: i64,
    /// The byte ranges (start, end) in the first file of each stateful operator's batches, in
    /// the pipeline's order: the whole state.
    operators: Vec<Vec<(usize, usize)>>,
    /// Rows of the whole state.
    #[serde(default)]
    rows: u64,
    /// The deltas after it, one per later file, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deltas: Vec<Layer>,
}

/// Whether a refresh at `now_ms` that processed `changes` input rows should write a checkpoint
/// of `state` ([`freshet_incremental::checkpoint_due`]).
pub(super) fn checkpoint_due(state: &IncrementalState, changes: u64, now_ms: i64, interval_ms: i64) -> bool {
    let since = state.since_checkpoint.map(|(since, at_ms)| (since + changes, at_ms));
    let pipeline = &state.pipeline;
    freshet_incremental::checkpoint_due(
        since,
        pipeline.state_size().rows,
        pipeline.delta_rows(),
        now_ms,
        interval_ms,
    )
}

/// Writes a checkpoint of `state`'s pipeline, which reflects `inputs`, into `txn`'s version of
/// `table`: a delta over the checkpoint the state keeps its changes since, when that is still
/// the table's and the deltas stay smaller than the whole state ([`delta_fits`]); else the
/// whole state. Returns whether one was written (not when an operator cannot save its state).
/// The pipeline then keeps its changes from here: were the version not committed, the refresh
/// fails and the state is dropped with it.
pub(super) async fn write_checkpoint(
    txn: &mut Transaction,
    table: &Table,
    state: &mut IncrementalState,
    inputs: &BTreeMap<String, u64>,
    at_ms: i64,
) -> Result<bool> {
    let pipeline = &state.pipeline;
    if pipeline.checkpoint_blocker().is_some() {
        return Ok(false);
    }
    let chain = chain_of(table, state);
    let Ok(saved) = pipeline.save_checkpoint(chain.as_ref().map(|(_, meta)| (meta.rows, meta.deltas.as_slice())))?
    else {
        return Ok(false);
    };
    let chain = chain.filter(|_| !saved.deltas.is_empty());
    let rows = saved.rows() as u64;
    let (bytes, operators) = saved.encode()?;
    let file = txn.write_state_file(Bytes::from(bytes)).await?;
    let (files, meta) = match chain {
        Some((mut files, mut meta)) => {
            files.push(file);
            meta.deltas.push(Layer {
                operators,
                deltas: saved.deltas,
                rows,
            });
            meta.inputs = inputs.clone();
            meta.at_ms = at_ms;
            (files, meta)
        }
        None => (
            vec![file],
            CheckpointMeta {
                format: CHECKPOINT_FORMAT,
                fingerprint: saved.fingerprint,
                inputs: inputs.clone(),
                at_ms,
                operators,
                rows,
                deltas: Vec::new(),
            },
        ),
    };
    let meta = serde_json::to_value(meta).map_err(|e| FreshetError::Internal(e.to_string()))?;
    let checkpoint = StateCheckpoint { files, meta };
    txn.set_state(checkpoint.clone());
    state.checkpoint = Some(checkpoint);
    state.pipeline.checkpoint_taken();
    Ok(true)
}

/// The table's checkpoint — its files and document — when it is the one `state` keeps its
/// changes over (so a delta may follow it).
fn chain_of(table: &Table, state: &IncrementalState) -> Option<(Vec<freshet_storage::StateFile>, CheckpointMeta)> {
    let current = table.snapshot().manifest().state.clone()?;
    if state.checkpoint.as_ref() != Some(&current) {
        return None;
    }
    serde_json::from_value::<CheckpointMeta>(current.meta)
        .ok()
        .filter(|meta| meta.format == CHECKPOINT_FORMAT)
        .map(|meta| (current.files, meta))
}

/// Writes the checkpoint a refresh left for after it returned (`state.checkpoint_after`, taken
/// at `at_ms`: a delta over the table's checkpoint when it fits, else the whole state) and commits it as a version of its own that changes no row — when the
/// table's last refresh is still the one `state` reflects (a compaction may have come
/// between). Returns whether it was committed; the state then keeps its changes from here.
/// Until then a restart rebuilds the state from the inputs, as without a checkpoint.
pub(super) async fn checkpoint_after_refresh(
    table: &Arc<Table>,
    state: &mut IncrementalState,
    at_ms: i64,
) -> Result<bool> {
    let mut txn = table.begin("CHECKPOINT").await?;
    let reflected = RefreshRecord::of(txn.base())
        .is_some_and(|record| record.inputs == state.inputs && record.algorithm == "incremental");
    if !reflected {
        return Ok(false);
    }
    let inputs = state.inputs.clone();
    if !write_checkpoint(&mut txn, table, state, &inputs, at_ms).await? {
        return Ok(false);
    }
    match txn.commit().await {
        Ok(_) => {
            state.since_checkpoint = Some((0, at_ms));
            Ok(true)
        }
        Err(e) => {
            state.checkpoint = None;
            Err(e)
        }
    }
}

/// At the engine's close: writes the changes `state` processed since the table's checkpoint
/// as a delta over it and commits it as a version of its own, so that the next process
/// restores the state without replaying them (one process per statement, from the command
/// line, replayed each statement's changes in the next). Only a delta that fits
/// ([`freshet_incremental::delta_fits`]): a whole state is left for the next refresh to write.
/// Returns whether one was committed.
pub(crate) async fn checkpoint_at_close(table: &Arc<Table>, state: &mut IncrementalState, at_ms: i64) -> Result<bool> {
    if !matches!(state.since_checkpoint, Some((since, _)) if since > 0) {
        return Ok(false);
    }
    let fits = chain_of(table, state)
        .is_some_and(|(_, meta)| freshet_incremental::delta_fits(meta.rows, &meta.deltas, state.pipeline.delta_rows()));
    if !fits {
        return Ok(false);
    }
    checkpoint_after_refresh(table, state, at_ms).await
}

/// The input versions the table's checkpoint reflects, if it has one.
pub(crate) fn checkpoint_inputs(table: &Table) -> Option<BTreeMap<String, u64>> {
    let state = table.snapshot().manifest().state.clone()?;
    serde_json::from_value::<CheckpointMeta>(state.meta)
        .ok()
        .map(|m| m.inputs)
}

/// The table's checkpoint of its operator state, for EXPLAIN: its size and the input versions
/// it reflects, or that there is none.
pub(super) fn describe_checkpoint(table: &Table) -> String {
    let Some(state) = table.snapshot().manifest().state.clone() else {
        return "none: the state is rebuilt from the inputs when it is not in memory".into();
    };
    let bytes: u64 = state.files.iter().map(|f| f.bytes).sum();
    match serde_json::from_value::<CheckpointMeta>(state.meta) {
        Ok(meta) => {
            let inputs: Vec<String> = meta.inputs.iter().map(|(t, v)| format!("{t}@{v}")).collect();
            let deltas = match meta.deltas.len() {
                0 => String::new(),
                1 => " (a whole state and 1 delta)".to_string(),
                n => format!(" (a whole state and {n} deltas)"),
            };
            format!(
                "{}{deltas} reflecting {}",
                super::incremental::human_bytes(bytes),
                inputs.join(", ")
            )
        }
        Err(e) => format!("unreadable ({e}): the state is rebuilt"),
    }
}

impl Engine {
    /// The table's operator state restored from its checkpoint and brought to the input
    /// versions the table reflects (`previous.inputs`); `Ok(None)` when there is no usable
    /// checkpoint (why is logged).
    pub(super) async fn restore_state(
        &self,
        name: &str,
        pinned: &PinnedQuery,
        previous: &RefreshRecord,
        query: &str,
    ) -> Result<Option<IncrementalState>> {
        let table = self.inner.catalog.table(name)?;
        let Some(checkpoint) = table.snapshot().manifest().state.clone() else {
            return Ok(None);
        };
        match self.restore_from(&table, checkpoint, pinned, previous, query).await {
            Ok(restored) => Ok(restored),
            Err(e) => {
                tracing::warn!(
                    table = name,
                    error = %e,
                    "the operator state's checkpoint cannot be used; the state is rebuilt from the inputs"
                );
                Ok(None)
            }
        }
    }

    async fn restore_from(
        &self,
        table: &Arc<Table>,
        checkpoint: StateCheckpoint,
        pinned: &PinnedQuery,
        previous: &RefreshRecord,
        query: &str,
    ) -> Result<Option<IncrementalState>> {
        let name = table.name();
        let checkpoint_kept = checkpoint.clone();
        let meta: CheckpointMeta = serde_json::from_value(checkpoint.meta)
            .map_err(|e| FreshetError::Internal(format!("the checkpoint's document: {e}")))?;
        if meta.format > CHECKPOINT_FORMAT {
            return Ok(None);
        }
        let Ok(mut pipeline) = self.pipeline(pinned)? else {
            return Ok(None);
        };
        if pipeline.fingerprint() != meta.fingerprint {
            tracing::info!(
                table = name,
                "the checkpoint is of another operator tree; the state is rebuilt"
            );
            return Ok(None);
        }
        if meta.inputs.keys().ne(previous.inputs.keys())
            || meta
                .inputs
                .iter()
                .any(|(input, v)| previous.inputs.get(input) < Some(v))
        {
            return Ok(None);
        }
        if checkpoint.files.len() != 1 + meta.deltas.len() {
            return Err(FreshetError::Internal(
                "a checkpoint has a file for its whole state and one per delta".into(),
            ));
        }
        let mut chain = Vec::with_capacity(checkpoint.files.len());
        for (n, file) in checkpoint.files.iter().enumerate() {
            let bytes = Buffer::from(table.read_state_file(file).await?);
            let delta = n.checked_sub(1).map(|d| &meta.deltas[d]);
            let operators = delta.map_or(&meta.operators, |delta| &delta.operators);
            // SAFETY: `read_state_file` gave the bytes only after checking them against the
            // size and checksum recorded when they were written, from `PipelineState::encode`.
            #[allow(unsafe_code)]
            let mut layer = unsafe { PipelineState::decode_unchecked(meta.fingerprint.clone(), &bytes, operators) }?;
            if let Some(delta) = delta {
                layer.deltas = delta.deltas.clone();
            }
            chain.push(layer);
        }
        pipeline.restore_chain(chain)?;
        // The changes since the checkpoint, whose output the table holds already.
        let replayed = self
            .replay_changes(&mut pipeline, &meta.inputs, &previous.inputs, previous.started_at_ms)
            .await?;
        let memory = MemoryConsumer::new(format!("materialized table {name}"))
            .register(&self.inner.ctx.runtime_env().memory_pool);
        let mut state = IncrementalState {
            pipeline,
            query: query.to_string(),
            inputs: previous.inputs.clone(),
            correction: None,
            drifted: None,
            index: None,
            memory,
            since_checkpoint: Some((replayed, meta.at_ms)),
            checkpoint: Some(checkpoint_kept),
            checkpoint_after: None,
        };
        state.account(name)?;
        tracing::debug!(table = name, replayed, "operator state restored from its checkpoint");
        Ok(Some(state))
    }
}

impl Engine {
    /// Steps a pipeline restored at the input versions `from` through the changes up to `to`
    /// (one epoch, at `at_ms`, with the watermarks of `to`), dropping the output: its
    /// consumers hold it already. Returns the changes stepped.
    pub(crate) async fn replay_changes(
        &self,
        pipeline: &mut Pipeline,
        from: &BTreeMap<String, u64>,
        to: &BTreeMap<String, u64>,
        at_ms: i64,
    ) -> Result<u64> {
        let mut epoch = Epoch::at(at_ms);
        for (input, &to) in to {
            let from = from.get(input).copied().unwrap_or(to);
            if from >= to || !pipeline.sources().contains(input) {
                continue;
            }
            let changes = self.inner.catalog.table(input)?.changes(from, to).await?;
            super::incremental::add_changes(&mut epoch, input, &changes, pipeline.source_columns(input)).await?;
        }
        let replayed = epoch.rows() as u64;
        self.set_watermarks(&mut epoch, to).await?;
        pipeline.step(&epoch)?;
        Ok(replayed)
    }
}
