//! Window functions (`OVER`): every input row with the values of window functions computed
//! over its partition.
//!
//! Each partition keeps its rows ordered by the window's ORDER BY (row-encoded, ties broken by
//! the row's bytes, as the top-N does). An epoch evaluates DataFusion's own window functions
//! over every partition it touches, before and after applying its changes, and emits the
//! difference: consolidation cancels the rows whose values stayed. When every function looks
//! only backward — frames that end at the current row or before it, ROW_NUMBER, RANK, LAG — a
//! change cannot alter the rows ordered before it, so only the rows from the first changed sort
//! key on are emitted.
//!
//! Over an event-time column whose late rows are dropped, rows that no future row's frame can
//! reach (older than the watermark less the frame's extent) are forgotten: their results are
//! final, and the state stays bounded by the frames still open.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::row::SortField;
use datafusion::physical_expr::window::WindowExpr;

use freshet_common::{Result, RowKey};

use super::top_n::{NEXT_PASS, add_ordered, metadata_value, restore_ordered, save_ordered};
use super::{Compiled, Epoch, Operator, StateSize};
use crate::checkpoint::{SavedState, mismatch};
use crate::delta::{Delta, internal};
use crate::rows::RowCodec;

/// What the planner found: the partition, the order and the functions.
pub(crate) struct OverSpec {
    pub partition: Vec<Compiled>,
    pub partition_types: Vec<DataType>,
    /// Sort expressions with their directions.
    pub order: Vec<(Compiled, SortField)>,
    /// DataFusion's window functions, compiled against the input's columns.
    pub functions: Vec<Arc<dyn WindowExpr>>,
    /// Whether every function's value for a row depends only on rows ordered at or before it.
    pub backward: bool,
    /// Forgetting rows that no open frame reaches, when the order is an event time.
    pub expiry: Option<OverExpiry>,
    pub input_schema: SchemaRef,
    pub schema: SchemaRef,
    pub display: String,
}

/// Which rows rows still to come can reach, over an event-time order column.
#[derive(Debug, Clone)]
pub(crate) struct OverExpiry {
    /// The sources whose combined watermark bounds the order column.
    pub sources: Vec<String>,
    /// The type of the window's only ORDER BY column, an ascending event time.
    pub time_type: DataType,
    /// Rows to come are no older than the watermark less this (ms): the lateness allowed.
    pub lateness_ms: i64,
    pub reach: OverReach,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum OverReach {
    /// Frames reach rows ordered this far (ms) before them (RANGE), and this many rows before
    /// them (ROWS, LAG).
    Frames { range_ms: i64, rows: usize },
    /// SESSION windows of this gap (ms): the rows of a session that ended at or before the
    /// watermark are reached by no row to come.
    Sessions { gap_ms: i64 },
}

/// Rows of one partition: (sort key, row) → multiplicity, as a top-N's group keeps them.
type Ordered = super::top_n::Ranked;

/// The window-function operator.
pub(crate) struct Over {
    input: Box<dyn Operator>,
    spec: OverSpec,
    partitions_codec: RowCodec,
    sort_codec: RowCodec,
    rows_codec: RowCodec,
    partitions: HashMap<RowKey, Ordered>,
    rows: u64,
    bytes: u64,
    /// The watermark up to which rows were forgotten.
    expired_to: Option<i64>,
    /// With `table.exec.state.ttl`: partitions forgotten once idle for that long.
    idle: Option<super::idle::IdleGroups>,
}

impl Over {
    pub(crate) fn new(input: Box<dyn Operator>, spec: OverSpec) -> Result<Self> {
        Ok(Self {
            partitions_codec: RowCodec::new(spec.partition_types.clone())?,
            sort_codec: RowCodec::with_fields(spec.order.iter().map(|(_, f)| f.clone()).collect())?,
            rows_codec: RowCodec::new(spec.input_schema.fields().iter().map(|f| f.data_type().clone()))?,
            input,
            spec,
            partitions: HashMap::new(),
            rows: 0,
            bytes: 0,
            expired_to: None,
            idle: None,
        })
    }

    /// Forgets the partitions no change has touched for `ttl_ms` on the epochs' clock
    /// (`table.exec.state.ttl`): a later row of such a partition starts it anew, as in Flink.
    pub(crate) fn with_state_ttl(mut self, ttl_ms: i64) -> Self {
        self.idle = Some(super::idle::IdleGroups::new(ttl_ms));
        self
    }

    /// Notes the touched partitions' time and forgets those idle past the TTL.
    fn forget_idle(&mut self, epoch: &Epoch, touched: &[(RowKey, RowKey)]) {
        if let (Some(idle), Some(now)) = (&mut self.idle, epoch.time_ns()) {
            let touched = touched.iter().map(|(partition, _)| partition.clone());
            idle.forget(
                now.div_euclid(1_000_000),
                touched,
                &mut self.partitions,
                &mut self.rows,
                &mut self.bytes,
            );
        }
    }

    /// The output rows of the touched partitions whose values may have changed, with `weight`:
    /// each partition's rows from its first changed sort key on (all of them when a function
    /// looks forward).
    fn evaluate(&self, touched: &[(RowKey, RowKey)], weight: i64) -> Result<Delta> {
        let mut rows: Vec<&[u8]> = Vec::new();
        // (first row, rows, first row emitted) of each partition.
        let mut parts = Vec::new();
        for (partition, first_changed) in touched {
            let Some(ordered) = self.partitions.get(partition) else {
                continue;
            };
            let start = rows.len();
            let mut from = None;
            for ((sort, row), &n) in ordered {
                if from.is_none() && sort.as_ref() >= first_changed.as_ref() {
                    from = Some(rows.len() - start);
                }
                for _ in 0..n.max(0) {
                    rows.push(row);
                }
            }
            let len = rows.len() - start;
            let from = if self.spec.backward { from.unwrap_or(len) } else { 0 };
            if from < len {
                parts.push((start, len, from));
            }
        }
        if parts.is_empty() {
            return Ok(Delta::empty(self.spec.schema.clone()));
        }
        let parser = self.rows_codec.parser();
        let columns = self.rows_codec.decode(rows.iter().map(|r| parser.parse(r)))?;
        let batch = RecordBatch::try_new(self.spec.input_schema.clone(), columns).map_err(internal)?;
        let mut values: Vec<Vec<ArrayRef>> = vec![Vec::new(); self.spec.functions.len()];
        let mut emitted = Vec::new();
        for &(start, len, from) in &parts {
            let partition = batch.slice(start, len);
            for (function, out) in self.spec.functions.iter().zip(values.iter_mut()) {
                out.push(function.evaluate(&partition)?.slice(from, len - from));
            }
            emitted.extend((start + from..start + len).map(|i| i as u32));
        }
        let emitted = UInt32Array::from(emitted);
        let mut columns = batch
            .columns()
            .iter()
            .map(|c| take(c, &emitted, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(internal)?;
        for parts in values {
            let parts: Vec<&dyn Array> = parts.iter().map(AsRef::as_ref).collect();
            columns.push(concat(&parts).map_err(internal)?);
        }
        let count = emitted.len();
        Delta::from_columns(&self.spec.schema, columns, Int64Array::from_value(weight, count))
    }

    /// Forgets the rows that no row to come reaches: below the watermark less the RANGE
    /// frames' extent but for the last ROWS-frame extent of them, or the rows of sessions
    /// that have ended.
    fn expire(&mut self, epoch: &Epoch) -> Result<()> {
        let Some(expiry) = &self.spec.expiry else {
            return Ok(());
        };
        let Some(watermark) = epoch.watermark(&expiry.sources) else {
            return Ok(());
        };
        if self.expired_to.is_some_and(|done| done >= watermark) {
            return Ok(());
        }
        self.expired_to = Some(watermark);
        let front = watermark.saturating_sub(expiry.lateness_ms);
        // Rows below this time (ms) may be forgotten.
        let below_ms = match expiry.reach {
            OverReach::Frames { range_ms, .. } => front.saturating_sub(range_ms),
            OverReach::Sessions { gap_ms } => front.saturating_sub(gap_ms).saturating_add(1),
        };
        let below = (self.time_key(below_ms)?, RowKey::from(&[][..]));
        let mut emptied = Vec::new();
        for (partition, ordered) in &mut self.partitions {
            let candidates: Vec<(RowKey, RowKey)> = ordered.range(..below.clone()).map(|(k, _)| k.clone()).collect();
            let forget = match expiry.reach {
                OverReach::Frames { rows, .. } => candidates.len().saturating_sub(rows),
                OverReach::Sessions { gap_ms } => {
                    // Up to the last row whose session has ended: the next row (if any) is at
                    // least the gap after it, and it is at least the gap below the front.
                    let next = ordered.range(below.clone()..).next().map(|(k, _)| k.0.clone());
                    let sorts = candidates.iter().map(|(sort, _)| sort).chain(next.as_ref());
                    let parser = self.sort_codec.parser();
                    let times = self.sort_codec.decode(sorts.map(|s| parser.parse(s)))?;
                    let times = match times.first() {
                        Some(times) => super::millis(times)?,
                        None => continue,
                    };
                    let ended = (0..candidates.len()).rev().find(|&i| {
                        times.is_valid(i)
                            && times.value(i).saturating_add(gap_ms) <= front
                            && (i + 1 >= times.len()
                                || times.is_null(i + 1)
                                || times.value(i + 1) - times.value(i) >= gap_ms)
                    });
                    ended.map_or(0, |i| i + 1)
                }
            };
            for key in candidates.into_iter().take(forget) {
                ordered.remove(&key);
                self.rows -= 1;
                self.bytes -= (key.0.len() + key.1.len() + 48) as u64;
            }
            if ordered.is_empty() {
                emptied.push(partition.clone());
            }
        }
        for partition in emptied {
            self.partitions.remove(&partition);
        }
        Ok(())
    }

    /// The sort key of time `ms` (the order is the time alone, ascending).
    fn time_key(&self, ms: i64) -> Result<RowKey> {
        let Some(expiry) = &self.spec.expiry else {
            return Err(internal("a time key without an event-time order"));
        };
        let time: ArrayRef = Arc::new(Int64Array::from(vec![ms]));
        let time = cast(&time, &DataType::Timestamp(TimeUnit::Millisecond, None))
            .and_then(|t| cast(&t, &expiry.time_type))
            .map_err(internal)?;
        Ok(self.sort_codec.encode(&[time], 1)?.row(0).data().into())
    }
}

impl Operator for Over {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let delta = self.input.step(epoch)?;
        if delta.is_empty() {
            self.expire(epoch)?;
            self.forget_idle(epoch, &[]);
            return Ok(Delta::empty(self.spec.schema.clone()));
        }
        let evaluate = |exprs: &mut dyn Iterator<Item = &Compiled>| {
            exprs.map(|e| e.evaluate(&delta.data)).collect::<Result<Vec<_>>>()
        };
        let partition_columns = evaluate(&mut self.spec.partition.iter())?;
        let sort_columns = evaluate(&mut self.spec.order.iter().map(|(e, _)| e))?;
        let partitions = self.partitions_codec.encode(&partition_columns, delta.len())?;
        let sort_keys = self.sort_codec.encode(&sort_columns, delta.len())?;
        let rows = self.rows_codec.encode(delta.data.columns(), delta.len())?;

        // Each touched partition with its least changed sort key.
        let mut first_changed: HashMap<&[u8], &[u8]> = HashMap::new();
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for i in 0..delta.len() {
            let (partition, sort) = (partitions.row(i).data(), sort_keys.row(i).data());
            if seen.insert(partition) {
                order.push(partition);
            }
            let least = first_changed.entry(partition).or_insert(sort);
            if sort < *least {
                *least = sort;
            }
        }
        let touched: Vec<(RowKey, RowKey)> = order.iter().map(|p| ((*p).into(), first_changed[p].into())).collect();
        let before = self.evaluate(&touched, -1)?;

        for i in 0..delta.len() {
            let ordered = self.partitions.entry(partitions.row(i).data().into()).or_default();
            let key = (sort_keys.row(i).data().into(), rows.row(i).data().into());
            let (rows, bytes) = add_ordered(ordered, key, delta.weights.value(i));
            self.rows = self.rows.wrapping_add_signed(rows);
            self.bytes = self.bytes.wrapping_add_signed(bytes);
        }
        for (partition, _) in &touched {
            if self.partitions.get(partition).is_some_and(|o| o.is_empty()) {
                self.partitions.remove(partition);
            }
        }
        let after = self.evaluate(&touched, 1)?;
        self.expire(epoch)?;
        self.forget_idle(epoch, &touched);
        Delta::concat(&self.spec.schema, &[before, after])
    }

    fn updates(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        match &self.idle {
            Some(idle) => format!(
                "{} forgetting partitions idle for {} ms (table.exec.state.ttl)",
                self.spec.display,
                idle.ttl_ms()
            ),
            None => self.spec.display.clone(),
        }
    }

    fn state_kind(&self) -> &'static str {
        if self.spec.expiry.is_some() {
            "per partition: its rows that open frames still reach, ordered"
        } else {
            "per partition: its rows, ordered"
        }
    }

    fn state_size(&self) -> StateSize {
        StateSize {
            rows: self.rows,
            bytes: self.bytes,
        }
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        vec![self.input.as_ref()]
    }

    fn inputs_mut(&mut self) -> Vec<&mut dyn Operator> {
        vec![self.input.as_mut()]
    }

    fn can_save_state(&self) -> bool {
        true
    }

    /// Every partition's rows as a top-N's groups ([`save_ordered`]), with the time each was
    /// last touched under a state TTL; how far rows were forgotten by the watermark and the
    /// TTL's next pass in the batch's metadata.
    fn save_state(&self) -> Result<SavedState> {
        let mut metadata = std::collections::HashMap::new();
        if let Some(expired) = self.expired_to {
            metadata.insert(EXPIRED_TO.to_string(), expired.to_string());
        }
        if let Some(idle) = &self.idle {
            metadata.insert(NEXT_PASS.to_string(), idle.next_pass().to_string());
        }
        let batch = save_ordered(
            &self.partitions,
            self.rows,
            |_| None,
            |partition| self.idle.as_ref().and_then(|idle| idle.touched_at(partition)),
            metadata,
        )?;
        Ok(SavedState::Batches(vec![batch]))
    }

    fn restore_state(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        let [batch] =
            <[RecordBatch; 1]>::try_from(batches).map_err(|_| mismatch("a window operator's state is one batch"))?;
        let metadata = batch.schema().metadata().clone();
        self.expired_to = metadata_value(&metadata, EXPIRED_TO)?;
        if let (Some(idle), Some(next)) = (&mut self.idle, metadata_value(&metadata, NEXT_PASS)?) {
            idle.set_next_pass(next);
        }
        for saved in restore_ordered(&batch)? {
            if let (Some(idle), Some(at)) = (&mut self.idle, saved.touched_at) {
                idle.touch(&saved.group, at);
            }
            let ordered = self.partitions.entry(saved.group).or_default();
            let (rows, bytes) = add_ordered(ordered, (saved.sort, saved.row), saved.count);
            self.rows = self.rows.wrapping_add_signed(rows);
            self.bytes = self.bytes.wrapping_add_signed(bytes);
        }
        Ok(())
    }
}

/// The metadata key of a saved window operator's [`Over::expired_to`].
const EXPIRED_TO: &str = "expired_to";
