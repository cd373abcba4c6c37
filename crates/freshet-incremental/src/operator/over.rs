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

use super::{Compiled, Epoch, Operator, StateSize};
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

/// How far back the frames of rows still to come reach, over an event-time order column.
#[derive(Debug, Clone)]
pub(crate) struct OverExpiry {
    /// The sources whose combined watermark bounds the order column.
    pub sources: Vec<String>,
    /// The type of the window's only ORDER BY column, an ascending event time.
    pub time_type: DataType,
    /// Rows ordered this far (ms) below the watermark are still reached by a RANGE frame.
    pub range_ms: i64,
    /// Rows this many places before the first row at the watermark are still reached by a
    /// ROWS frame (or LAG).
    pub rows: usize,
}

/// Rows of one partition: (sort key, row) → multiplicity.
type Ordered = std::collections::BTreeMap<(RowKey, RowKey), i64>;

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
        })
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

    /// Forgets the rows no future row's frame reaches: below the watermark less the RANGE
    /// frames' extent, but for the last ROWS-frame extent of them.
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
        // The sort key of the bound: the order is the time alone, ascending.
        let bound: ArrayRef = Arc::new(Int64Array::from(vec![watermark.saturating_sub(expiry.range_ms)]));
        let bound = cast(&bound, &DataType::Timestamp(TimeUnit::Millisecond, None))
            .and_then(|b| cast(&b, &expiry.time_type))
            .map_err(internal)?;
        let bound: RowKey = self.sort_codec.encode(&[bound], 1)?.row(0).data().into();
        let below = (bound, RowKey::from(&[][..]));
        let mut emptied = Vec::new();
        for (partition, ordered) in &mut self.partitions {
            let expired: Vec<(RowKey, RowKey)> = ordered.range(..below.clone()).map(|(k, _)| k.clone()).collect();
            let forget = expired.len().saturating_sub(expiry.rows);
            for key in expired.into_iter().take(forget) {
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
}

impl Operator for Over {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let delta = self.input.step(epoch)?;
        if delta.is_empty() {
            self.expire(epoch)?;
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
            let weight = delta.weights.value(i);
            let ordered = self.partitions.entry(partitions.row(i).data().into()).or_default();
            let key: (RowKey, RowKey) = (sort_keys.row(i).data().into(), rows.row(i).data().into());
            let size = (key.0.len() + key.1.len() + 48) as u64;
            let n = ordered.entry(key.clone()).or_insert(0);
            if *n == 0 {
                self.rows += 1;
                self.bytes += size;
            }
            *n += weight;
            if *n == 0 {
                ordered.remove(&key);
                self.rows -= 1;
                self.bytes -= size;
            }
        }
        for (partition, _) in &touched {
            if self.partitions.get(partition).is_some_and(|o| o.is_empty()) {
                self.partitions.remove(partition);
            }
        }
        let after = self.evaluate(&touched, 1)?;
        self.expire(epoch)?;
        Delta::concat(&self.spec.schema, &[before, after])
    }

    fn updates(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.spec.display.clone()
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
}
