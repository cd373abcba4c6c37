//! A filter that compares rows with the epoch's time (`WHERE ts > now() - INTERVAL '7' DAY`).
//!
//! Each comparison of a row expression with the time bounds the span of time during which the
//! row passes: `ts > now() - 7 days` holds while the time is before `ts + 7 days`. A row whose
//! span has begun and not ended is output when it arrives; one whose span begins later waits in
//! `pending`; a row in the result whose span ends is kept in `expiring`. Each epoch first lets
//! the time pass — pending rows whose span began enter, expiring rows whose span ended leave —
//! then takes its changes. Rows that pass forever (no end) and rows whose span is over keep no
//! state.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, LargeBinaryBuilder, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};

use freshet_common::{Result, RowKey};

use super::{Compiled, Epoch, Operator, StateSize};
use crate::checkpoint::{SavedState, mismatch};
use crate::delta::{Delta, internal};
use crate::rows::RowCodec;

const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// The metadata key of a saved state's time of the last epoch.
const TIME_KEY: &str = "time";

/// How a comparison holds, the time on the left: `time < key` and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeComparison {
    Lt,
    LtEq,
    Gt,
    GtEq,
    Eq,
}

/// One comparison of the time (or its day, when `by_day`) with a row expression, `key`.
pub(crate) struct TimeBound {
    pub comparison: TimeComparison,
    pub key: Compiled,
    /// The time is truncated to its day (UTC) before comparing: `current_date`.
    pub by_day: bool,
    pub display: String,
}

impl TimeBound {
    /// The span `[from, until)` of times (ns) during which the comparison holds for a key `k`
    /// (ns).
    fn span(&self, k: i64) -> (i64, i64) {
        use TimeComparison::*;
        if self.by_day {
            // day(t) < k ⇔ t < the first midnight at or after k.
            let floor = k.div_euclid(NANOS_PER_DAY) * NANOS_PER_DAY;
            let ceil = if floor == k {
                k
            } else {
                floor.saturating_add(NANOS_PER_DAY)
            };
            let next = floor.saturating_add(NANOS_PER_DAY);
            match self.comparison {
                Lt => (i64::MIN, ceil),
                LtEq => (i64::MIN, next),
                Gt => (next, i64::MAX),
                GtEq => (ceil, i64::MAX),
                Eq => (ceil, next),
            }
        } else {
            match self.comparison {
                Lt => (i64::MIN, k),
                LtEq => (i64::MIN, k.saturating_add(1)),
                Gt => (k.saturating_add(1), i64::MAX),
                GtEq => (k, i64::MAX),
                Eq => (k, k.saturating_add(1)),
            }
        }
    }
}

/// The temporal filter operator.
pub(crate) struct TemporalFilter {
    input: Box<dyn Operator>,
    /// The other conjuncts of the filter.
    predicate: Option<Compiled>,
    bounds: Vec<TimeBound>,
    codec: RowCodec,
    schema: SchemaRef,
    /// Rows waiting for their span to begin: (from, until, row) → multiplicity.
    pending: BTreeMap<(i64, i64, RowKey), i64>,
    /// Rows in the result whose span ends: (until, row) → multiplicity.
    expiring: BTreeMap<(i64, RowKey), i64>,
    /// The time of the last epoch (ns).
    time: i64,
    bytes: u64,
    /// The time the bounds compare with: `None` for the epoch's time (`now()`); the sources'
    /// combined watermark for a window emitter.
    watermark_of: Option<Vec<String>>,
}

impl TemporalFilter {
    pub(crate) fn new(
        input: Box<dyn Operator>,
        predicate: Option<Compiled>,
        bounds: Vec<TimeBound>,
        schema: SchemaRef,
    ) -> Result<Self> {
        Ok(Self {
            input,
            predicate,
            bounds,
            codec: RowCodec::new(schema.fields().iter().map(|f| f.data_type().clone()))?,
            schema,
            pending: BTreeMap::new(),
            expiring: BTreeMap::new(),
            time: i64::MIN,
            bytes: 0,
            watermark_of: None,
        })
    }

    /// Emits the rows of a window-closing aggregate only once the watermark of `sources` has
    /// passed their window's end (output column `end`): Flink's emission of window results,
    /// final and append-only. Changes of a window until then cancel out here.
    pub(crate) fn window_emitter(
        input: Box<dyn Operator>,
        end: Compiled,
        sources: &[String],
        schema: SchemaRef,
    ) -> Result<Self> {
        let display = format!("{end} <= watermark of {}", sources.join(", "));
        let mut filter = Self::new(
            input,
            None,
            vec![TimeBound {
                comparison: TimeComparison::GtEq,
                key: end,
                by_day: false,
                display,
            }],
            schema,
        )?;
        filter.watermark_of = Some(sources.to_vec());
        Ok(filter)
    }

    fn add_expiring(&mut self, until: i64, row: RowKey, weight: i64) {
        let size = row.len() as u64 + 48;
        add_weight(&mut self.expiring, (until, row), weight, size, &mut self.bytes);
    }

    fn add_pending(&mut self, from: i64, until: i64, row: RowKey, weight: i64) {
        let size = row.len() as u64 + 56;
        add_weight(&mut self.pending, (from, until, row), weight, size, &mut self.bytes);
    }

    /// Each row's span: the intersection of its comparisons' spans (empty when a key is NULL).
    fn spans(&self, delta: &Delta) -> Result<Vec<(i64, i64)>> {
        let mut spans = vec![(i64::MIN, i64::MAX); delta.len()];
        for bound in &self.bounds {
            let keys = nanos(&bound.key.evaluate(&delta.data)?)?;
            for (span, key) in spans.iter_mut().zip(keys.iter()) {
                match key {
                    Some(k) => {
                        let (from, until) = bound.span(k);
                        span.0 = span.0.max(from);
                        span.1 = span.1.min(until);
                    }
                    None => *span = (i64::MAX, i64::MIN),
                }
            }
        }
        Ok(spans)
    }

    /// Rows leaving and entering as the time moves from the last epoch's to `time`.
    fn pass_time(&mut self, time: i64, entering: &mut Vec<(RowKey, i64)>, leaving: &mut Vec<(RowKey, i64)>) {
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > time {
                break;
            }
            let ((_, until, row), weight) = entry.remove_entry();
            self.bytes = self.bytes.saturating_sub(row.len() as u64 + 56);
            if until > time {
                entering.push((row.clone(), weight));
                if until != i64::MAX {
                    self.add_expiring(until, row, weight);
                }
            }
        }
        while let Some(entry) = self.expiring.first_entry() {
            if entry.key().0 > time {
                break;
            }
            let ((_, row), weight) = entry.remove_entry();
            self.bytes = self.bytes.saturating_sub(row.len() as u64 + 48);
            leaving.push((row, -weight));
        }
    }

    fn decode(&self, rows: &[(RowKey, i64)]) -> Result<Delta> {
        if rows.is_empty() {
            return Ok(Delta::empty(self.schema.clone()));
        }
        let parser = self.codec.parser();
        let columns = self
            .codec
            .decode(rows.iter().map(|(r, _)| parser.parse(r.as_bytes())))?;
        let weights = Int64Array::from_iter_values(rows.iter().map(|(_, w)| *w));
        Delta::from_columns(&self.schema, columns, weights)
    }
}

/// Adds `weight` to a row's multiplicity, dropping it at zero.
fn add_weight<K: Ord>(map: &mut BTreeMap<K, i64>, key: K, weight: i64, size: u64, bytes: &mut u64) {
    match map.entry(key) {
        Entry::Occupied(mut entry) => {
            *entry.get_mut() += weight;
            if *entry.get() == 0 {
                entry.remove();
                *bytes = bytes.saturating_sub(size);
            }
        }
        Entry::Vacant(entry) => {
            entry.insert(weight);
            *bytes += size;
        }
    }
}

/// A time-like array as nanoseconds since the epoch (UTC).
fn nanos(array: &ArrayRef) -> Result<Int64Array> {
    let (factor, as_int) = match array.data_type() {
        DataType::Timestamp(unit, _) => (
            match unit {
                TimeUnit::Second => 1_000_000_000,
                TimeUnit::Millisecond => 1_000_000,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1,
            },
            DataType::Int64,
        ),
        DataType::Date32 => (NANOS_PER_DAY, DataType::Int32),
        DataType::Date64 => (1_000_000, DataType::Int64),
        other => return Err(internal(format!("a temporal filter compared the time with {other}"))),
    };
    let raw = cast(&cast(array, &as_int).map_err(internal)?, &DataType::Int64).map_err(internal)?;
    Ok(raw
        .as_primitive::<Int64Type>()
        .iter()
        .map(|v| v.map(|v| v.saturating_mul(factor)))
        .collect())
}

impl Operator for TemporalFilter {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let time = match &self.watermark_of {
            // Before the source's first watermark, no window has closed.
            // (+infinity, the end of a bounded input, stays below the end of spans that have
            // none.)
            Some(sources) => epoch
                .watermark(sources)
                .map_or(i64::MIN, |ms| ms.saturating_mul(1_000_000).min(i64::MAX - 1)),
            None => epoch
                .time_ns()
                .ok_or_else(|| internal("an epoch without a time reached a temporal filter"))?,
        }
        .max(self.time);
        let mut entering = Vec::new();
        let mut leaving = Vec::new();
        self.pass_time(time, &mut entering, &mut leaving);
        self.time = time;

        let mut delta = self.input.step(epoch)?;
        if let Some(predicate) = &self.predicate
            && !delta.is_empty()
        {
            delta = delta.filter(&predicate.mask(&delta.data)?)?;
        }
        let mut now_in = Vec::new();
        if !delta.is_empty() {
            let spans = self.spans(&delta)?;
            let rows = self.codec.encode(delta.data.columns(), delta.len())?;
            for (i, &(from, until)) in spans.iter().enumerate() {
                let weight = delta.weights.value(i);
                if from >= until || until <= time {
                    continue;
                }
                if from > time {
                    self.add_pending(from, until, rows.row(i).data().into(), weight);
                    continue;
                }
                now_in.push(i as u32);
                if until != i64::MAX {
                    self.add_expiring(until, rows.row(i).data().into(), weight);
                }
            }
        }
        let arriving = delta.take(&UInt32Array::from(now_in))?;
        let passed = [self.decode(&leaving)?, self.decode(&entering)?, arriving];
        Delta::concat(&self.schema, &passed)
    }

    fn updates(&self) -> bool {
        self.watermark_of.is_none()
    }

    /// A window emitter passes each window's row once, final.
    fn final_output(&self) -> bool {
        self.watermark_of.is_some()
    }

    fn describe(&self) -> String {
        let bounds: Vec<&str> = self.bounds.iter().map(|b| b.display.as_str()).collect();
        if self.watermark_of.is_some() {
            return format!("WindowEmitter: [{}]", bounds.join(", "));
        }
        match &self.predicate {
            Some(predicate) => format!("TemporalFilter: [{}] and {predicate}", bounds.join(", ")),
            None => format!("TemporalFilter: [{}]", bounds.join(", ")),
        }
    }

    fn state_kind(&self) -> &'static str {
        if self.watermark_of.is_some() {
            "rows of open windows, until the watermark passes their end"
        } else {
            "rows waiting to enter the result or to leave it, by time"
        }
    }

    fn state_size(&self) -> StateSize {
        StateSize {
            rows: (self.pending.len() + self.expiring.len()) as u64,
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

    /// One row per waiting row: whether it is pending (its span has not begun) or expiring
    /// (in the result until its span ends), its span, the row (row-encoded) and its
    /// multiplicity; the time of the last epoch in the batch's metadata.
    fn save_state(&self) -> Result<SavedState> {
        let rows = self.pending.len() + self.expiring.len();
        let mut pending = Vec::with_capacity(rows);
        let mut from = Vec::with_capacity(rows);
        let mut until = Vec::with_capacity(rows);
        let mut row = LargeBinaryBuilder::new();
        let mut weight = Vec::with_capacity(rows);
        for ((f, u, r), w) in &self.pending {
            pending.push(true);
            from.push(*f);
            until.push(*u);
            row.append_value(r.as_bytes());
            weight.push(*w);
        }
        for ((u, r), w) in &self.expiring {
            pending.push(false);
            from.push(i64::MIN);
            until.push(*u);
            row.append_value(r.as_bytes());
            weight.push(*w);
        }
        let metadata = HashMap::from([(TIME_KEY.to_string(), self.time.to_string())]);
        let schema = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new("pending", DataType::Boolean, false),
                Field::new("from", DataType::Int64, false),
                Field::new("until", DataType::Int64, false),
                Field::new("row", DataType::LargeBinary, false),
                Field::new("weight", DataType::Int64, false),
            ],
            metadata,
        ));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(BooleanArray::from(pending)),
            Arc::new(Int64Array::from(from)),
            Arc::new(Int64Array::from(until)),
            Arc::new(row.finish()),
            Arc::new(Int64Array::from(weight)),
        ];
        let batch = RecordBatch::try_new(schema, columns).map_err(internal)?;
        Ok(SavedState::Batches(vec![batch]))
    }

    fn restore_state(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        let [batch] =
            <[RecordBatch; 1]>::try_from(batches).map_err(|_| mismatch("a temporal filter's state is one batch"))?;
        self.time = batch
            .schema()
            .metadata()
            .get(TIME_KEY)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| mismatch("a temporal filter's state has no time"))?;
        let int = |i: usize| {
            batch
                .column(i)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| mismatch("a temporal filter's state column is not Int64"))
        };
        let pending = batch
            .column(0)
            .as_boolean_opt()
            .ok_or_else(|| mismatch("a temporal filter's state column is not boolean"))?;
        let (from, until, weight) = (int(1)?, int(2)?, int(4)?);
        let row = batch
            .column(3)
            .as_binary_opt::<i64>()
            .ok_or_else(|| mismatch("a temporal filter's rows are not binary"))?;
        for i in 0..batch.num_rows() {
            let key = RowKey::from(row.value(i));
            match pending.value(i) {
                true => self.add_pending(from.value(i), until.value(i), key, weight.value(i)),
                false => self.add_expiring(until.value(i), key, weight.value(i)),
            }
        }
        Ok(())
    }

    fn next_change(&self) -> Option<i64> {
        // A watermark moves with the data, not with the clock.
        if self.watermark_of.is_some() {
            return None;
        }
        let entering = self.pending.keys().next().map(|k| k.0);
        let leaving = self.expiring.keys().next().map(|k| k.0);
        entering.into_iter().chain(leaving).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(comparison: TimeComparison, by_day: bool) -> TimeBound {
        let schema = datafusion::common::DFSchema::empty();
        TimeBound {
            comparison,
            key: Compiled::new(&datafusion::logical_expr::lit(0i64), &schema).unwrap(),
            by_day,
            display: String::new(),
        }
    }

    #[test]
    fn spans_follow_the_comparison() {
        use TimeComparison::*;
        assert_eq!(bound(Lt, false).span(10), (i64::MIN, 10));
        assert_eq!(bound(LtEq, false).span(10), (i64::MIN, 11));
        assert_eq!(bound(Gt, false).span(10), (11, i64::MAX));
        assert_eq!(bound(GtEq, false).span(10), (10, i64::MAX));
        assert_eq!(bound(Eq, false).span(10), (10, 11));
        // By day: a key at midnight of day 2, and one in the middle of day 2.
        let midnight = 2 * NANOS_PER_DAY;
        let noon = midnight + NANOS_PER_DAY / 2;
        assert_eq!(bound(Eq, true).span(midnight), (midnight, midnight + NANOS_PER_DAY));
        assert_eq!(bound(Lt, true).span(noon), (i64::MIN, midnight + NANOS_PER_DAY));
        assert_eq!(bound(LtEq, true).span(midnight), (i64::MIN, midnight + NANOS_PER_DAY));
        assert_eq!(bound(Gt, true).span(noon), (midnight + NANOS_PER_DAY, i64::MAX));
        assert_eq!(bound(GtEq, true).span(midnight), (midnight, i64::MAX));
    }
}
