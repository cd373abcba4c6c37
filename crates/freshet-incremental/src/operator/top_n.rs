//! Top-N: `ORDER BY ... LIMIT n [OFFSET m]` and the top rows per group,
//! `ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) <= n`.
//!
//! Each group keeps its rows ordered by the sort key (row-encoded, so byte order is the sort
//! order, directions and NULL placement included). An epoch retracts the old top rows of every
//! group it touches and inserts the new ones; consolidation cancels the rows that stayed. Rows
//! that tie on the sort key are ranked by their encoded bytes — SQL leaves that order open.

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, LargeBinaryBuilder, RecordBatch, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{Rows, SortField};

use freshet_common::{Result, RowKey};

use super::{Compiled, Epoch, Operator, StateSize, WindowClosing};
use crate::checkpoint::{SavedState, mismatch};
use crate::delta::Delta;
use crate::rows::RowCodec;

/// What the planner found: the groups, the order and the ranks kept.
pub(crate) struct TopNSpec {
    pub partition: Vec<Compiled>,
    pub partition_types: Vec<DataType>,
    /// Sort expressions with their directions.
    pub order: Vec<(Compiled, SortField)>,
    /// Ranks kept: `skip .. skip + fetch` (0-based).
    pub skip: usize,
    pub fetch: usize,
    /// Append the rank (1-based) as a column, as ROW_NUMBER() does.
    pub row_number: bool,
    /// The input only inserts: each group keeps only its rows at ranks below `skip + fetch`
    /// (a row below them can never rise), and a retraction is an error.
    pub top_only: bool,
    pub input_schema: SchemaRef,
    pub schema: SchemaRef,
    pub display: String,
}

/// Rows of one group: (sort key, row) → multiplicity.
pub(super) type Ranked = BTreeMap<(RowKey, RowKey), i64>;

/// Takes a forgotten group's entries off the operator's counts of entries and bytes.
pub(super) fn forget_ordered(ranked: Ranked, rows: &mut u64, bytes: &mut u64) {
    for (key, _) in ranked {
        *rows -= 1;
        *bytes -= (key.0.len() + key.1.len() + 48) as u64;
    }
}

/// Adds `weight` copies of a row to ordered rows; returns how the entries and their bytes
/// changed.
pub(super) fn add_ordered(ranked: &mut Ranked, key: (RowKey, RowKey), weight: i64) -> (i64, i64) {
    let size = (key.0.len() + key.1.len() + 48) as i64;
    let n = ranked.entry(key.clone()).or_insert(0);
    let before = *n != 0;
    *n += weight;
    match (before, *n != 0) {
        (false, true) => (1, size),
        (true, false) | (false, false) => {
            ranked.remove(&key);
            if before { (-1, -size) } else { (0, 0) }
        }
        (true, true) => (0, 0),
    }
}

/// Metadata keys of saved ordered state.
const LATE_ROWS: &str = "late_rows";
const CLOSED_UP_TO: &str = "closed_up_to";
pub(super) const NEXT_PASS: &str = "next_pass";

/// One kept row of saved ordered groups ([`save_ordered`]).
pub(super) struct SavedRow {
    pub group: RowKey,
    pub sort: RowKey,
    pub row: RowKey,
    pub count: i64,
    /// The group's window end (ms), where windows close groups.
    pub end: Option<i64>,
    /// When the group was last touched (ms), under a state TTL.
    pub touched_at: Option<i64>,
}

/// The state of ordered groups (a top-N's, a window operator's partitions) for a checkpoint:
/// one row per kept row — its group, sort key and row (row-encoded) and multiplicity — with the
/// group's window end and last touch where the operator keeps them (NULL otherwise).
pub(super) fn save_ordered(
    groups: &HashMap<RowKey, Ranked>,
    rows: u64,
    end_of: impl Fn(&RowKey) -> Option<i64>,
    touched_at: impl Fn(&RowKey) -> Option<i64>,
    metadata: std::collections::HashMap<String, String>,
) -> Result<RecordBatch> {
    let entries = groups.iter().flat_map(|(key, ranked)| {
        let (group_end, group_touched) = (end_of(key), touched_at(key));
        ranked.iter().map(move |((sort_key, row_key), n)| OrderedEntry {
            group: key.as_bytes(),
            sort: sort_key.as_bytes(),
            row: row_key.as_bytes(),
            count: *n,
            end: group_end,
            touched_at: group_touched,
        })
    });
    ordered_batch(entries, usize::try_from(rows).unwrap_or(0), metadata)
}

/// One row of [`ordered_batch`].
struct OrderedEntry<'a> {
    group: &'a [u8],
    sort: &'a [u8],
    row: &'a [u8],
    count: i64,
    end: Option<i64>,
    touched_at: Option<i64>,
}

/// The layout [`save_ordered`] saves, of `entries` (about `rows` of them).
fn ordered_batch<'a>(
    entries: impl Iterator<Item = OrderedEntry<'a>>,
    rows: usize,
    metadata: std::collections::HashMap<String, String>,
) -> Result<RecordBatch> {
    let mut group = LargeBinaryBuilder::new();
    let mut sort = LargeBinaryBuilder::new();
    let mut row = LargeBinaryBuilder::new();
    let mut count = Vec::with_capacity(rows);
    let mut end = Vec::with_capacity(rows);
    let mut touched = Vec::with_capacity(rows);
    for entry in entries {
        group.append_value(entry.group);
        sort.append_value(entry.sort);
        row.append_value(entry.row);
        count.push(entry.count);
        end.push(entry.end);
        touched.push(entry.touched_at);
    }
    let schema = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("group", DataType::LargeBinary, false),
            Field::new("sort", DataType::LargeBinary, false),
            Field::new("row", DataType::LargeBinary, false),
            Field::new("count", DataType::Int64, false),
            Field::new("window_end", DataType::Int64, true),
            Field::new("touched_at", DataType::Int64, true),
        ],
        metadata,
    ));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(group.finish()),
        Arc::new(sort.finish()),
        Arc::new(row.finish()),
        Arc::new(Int64Array::from(count)),
        Arc::new(Int64Array::from(end)),
        Arc::new(Int64Array::from(touched)),
    ];
    RecordBatch::try_new(schema, columns).map_err(crate::delta::internal)
}

/// The rows [`save_ordered`] saved.
pub(super) fn restore_ordered(batch: &RecordBatch) -> Result<Vec<SavedRow>> {
    if batch.num_columns() != 6 {
        return Err(mismatch("ordered state has six columns"));
    }
    let binary = |i: usize| {
        batch
            .column(i)
            .as_binary_opt::<i64>()
            .ok_or_else(|| mismatch("an ordered state's keys are not binary"))
    };
    let int = |i: usize| {
        batch
            .column(i)
            .as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>()
            .ok_or_else(|| mismatch("an ordered state's numbers are not Int64"))
    };
    let (group, sort, row) = (binary(0)?, binary(1)?, binary(2)?);
    let (count, end, touched) = (int(3)?, int(4)?, int(5)?);
    Ok((0..batch.num_rows())
        .map(|i| SavedRow {
            group: RowKey::from(group.value(i)),
            sort: RowKey::from(sort.value(i)),
            row: RowKey::from(row.value(i)),
            count: count.value(i),
            end: end.is_valid(i).then(|| end.value(i)),
            touched_at: touched.is_valid(i).then(|| touched.value(i)),
        })
        .collect())
}

/// A number in a saved state's metadata, if there.
pub(super) fn metadata_value(metadata: &std::collections::HashMap<String, String>, key: &str) -> Result<Option<i64>> {
    metadata
        .get(key)
        .map(|v| {
            v.parse()
                .map_err(|_| mismatch(format!("a saved state's {key} is not a number")))
        })
        .transpose()
}

/// Keeps the first `kept` rows (counting multiplicities) of ordered rows; returns the entries
/// and bytes dropped.
fn keep_first(ranked: &mut Ranked, kept: usize) -> (u64, u64) {
    let mut seen = 0usize;
    let mut cut = None;
    for (key, n) in ranked.iter_mut() {
        let n_rows = usize::try_from((*n).max(0)).unwrap_or(usize::MAX);
        if seen >= kept {
            cut = Some(key.clone());
            break;
        }
        if seen.saturating_add(n_rows) > kept {
            *n = i64::try_from(kept - seen).unwrap_or(i64::MAX);
        }
        seen = seen.saturating_add(n_rows);
    }
    let Some(cut) = cut else {
        return (0, 0);
    };
    let dropped = ranked.split_off(&cut);
    let bytes = dropped.keys().map(|k| (k.0.len() + k.1.len() + 48) as u64).sum();
    (dropped.len() as u64, bytes)
}

/// The top-N operator.
pub(crate) struct TopN {
    input: Box<dyn Operator>,
    spec: TopNSpec,
    groups_codec: RowCodec,
    sort_codec: RowCodec,
    rows_codec: RowCodec,
    groups: HashMap<RowKey, Ranked>,
    rows: u64,
    bytes: u64,
    /// Groups keyed by a window's end, forgotten when the watermark closes it.
    closing: Option<WindowClosing>,
    /// Each group's window end (ms), with window closing.
    ends: std::collections::BTreeSet<(i64, RowKey)>,
    /// Windows ending at or before this (ms) are closed: their rows are dropped and counted.
    closed_up_to: Option<i64>,
    late_rows: u64,
    /// With `table.exec.state.ttl`: groups forgotten once idle for that long.
    idle: Option<super::idle::IdleGroups>,
    /// The changes applied to the groups since the state was last saved or restored, for a
    /// delta checkpoint: each epoch's rows (group, sort key, row, encoded) and weights. `None`
    /// until then, and where groups are also cut or forgotten (windows, a TTL, an input that
    /// only inserts), which save their whole state.
    changes: Option<Vec<LoggedChanges>>,
}

/// One epoch's changes to a top-N's groups.
struct LoggedChanges {
    groups: Rows,
    sort_keys: Rows,
    rows: Rows,
    weights: Int64Array,
}

impl LoggedChanges {
    fn bytes(&self) -> u64 {
        (self.groups.size() + self.sort_keys.size() + self.rows.size() + self.weights.len() * 8) as u64
    }
}

impl TopN {
    pub(crate) fn new(input: Box<dyn Operator>, spec: TopNSpec) -> Result<Self> {
        Ok(Self {
            groups_codec: RowCodec::new(spec.partition_types.clone())?,
            sort_codec: RowCodec::with_fields(spec.order.iter().map(|(_, f)| f.clone()).collect())?,
            rows_codec: RowCodec::new(spec.input_schema.fields().iter().map(|f| f.data_type().clone()))?,
            input,
            spec,
            groups: HashMap::new(),
            rows: 0,
            bytes: 0,
            closing: None,
            ends: std::collections::BTreeSet::new(),
            closed_up_to: None,
            late_rows: 0,
            idle: None,
            changes: None,
        })
    }

    /// Forgets the groups no change has touched for `ttl_ms` on the epochs' clock
    /// (`table.exec.state.ttl`): a later row of such a group starts it anew, as in Flink.
    pub(crate) fn with_state_ttl(mut self, ttl_ms: i64) -> Self {
        self.idle = Some(super::idle::IdleGroups::new(ttl_ms));
        self
    }

    /// Notes the touched groups' time and forgets the groups idle past the TTL.
    fn forget_idle(&mut self, epoch: &Epoch, touched: &[RowKey]) {
        if let (Some(idle), Some(now)) = (&mut self.idle, epoch.time_ns()) {
            let touched = touched.iter().cloned();
            idle.forget(
                now.div_euclid(1_000_000),
                touched,
                &mut self.groups,
                &mut self.rows,
                &mut self.bytes,
            );
        }
    }

    /// Forgets the groups of windows (partition column `closing.column`) that the watermark
    /// of `closing.sources` has closed.
    pub(crate) fn with_window_closing(mut self, closing: WindowClosing) -> Self {
        self.closing = Some(closing);
        self
    }

    /// Rows of windows already closed leave the delta (counted as late); each new group's
    /// window end is recorded.
    fn drop_closed(&mut self, delta: Delta, partition_columns: &[ArrayRef]) -> Result<Delta> {
        let Some(closing) = &self.closing else {
            return Ok(delta);
        };
        let ends = super::millis(&partition_columns[closing.column])?;
        let Some(bound) = self.closed_up_to else {
            return Ok(delta);
        };
        let open: BooleanArray = ends.iter().map(|end| Some(end.is_none_or(|end| end > bound))).collect();
        self.late_rows += (open.len() - open.true_count()) as u64;
        if open.true_count() == open.len() {
            return Ok(delta);
        }
        delta.filter(&open)
    }

    /// Forgets the groups of the windows the epoch's watermark has closed.
    fn close_windows(&mut self, epoch: &Epoch) {
        let Some(closing) = &self.closing else {
            return;
        };
        let Some(watermark) = epoch.watermark(&closing.sources) else {
            return;
        };
        let bound = watermark.saturating_sub(closing.allowed_lateness_ms);
        while let Some((end, _)) = self.ends.first()
            && *end <= bound
        {
            let Some((_, group)) = self.ends.pop_first() else {
                break;
            };
            if let Some(ranked) = self.groups.remove(&group) {
                forget_ordered(ranked, &mut self.rows, &mut self.bytes);
            }
        }
        self.closed_up_to = Some(self.closed_up_to.map_or(bound, |b| b.max(bound)));
    }

    /// The output rows of a group: its rows at the kept ranks, with their ranks.
    fn top<'a>(&'a self, group: &[u8], out: &mut Vec<(&'a [u8], u64)>) {
        let Some(ranked) = self.groups.get(group) else {
            return;
        };
        // `fetch` is `usize::MAX` for an OFFSET without LIMIT.
        let end = self.spec.skip.saturating_add(self.spec.fetch);
        let mut rank = 0usize;
        'rows: for ((_, row), &n) in ranked {
            for _ in 0..n.max(0) {
                if rank >= end {
                    break 'rows;
                }
                if rank >= self.spec.skip {
                    out.push((row, rank as u64 + 1));
                }
                rank += 1;
            }
        }
    }

    fn emit(&self, rows: &[(&[u8], u64)], weight: i64) -> Result<Delta> {
        let parser = self.rows_codec.parser();
        let mut columns = self.rows_codec.decode(rows.iter().map(|(r, _)| parser.parse(r)))?;
        if self.spec.row_number {
            columns.push(Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|(_, rank)| *rank),
            )));
        }
        Delta::from_columns(&self.spec.schema, columns, Int64Array::from_value(weight, rows.len()))
    }
}

impl TopN {
    /// The output changes for the input's changes, and the groups they touched.
    fn changes(&mut self, delta: Delta) -> Result<(Delta, Vec<RowKey>)> {
        if delta.is_empty() {
            return Ok((Delta::empty(self.spec.schema.clone()), Vec::new()));
        }
        let partition_columns = self
            .spec
            .partition
            .iter()
            .map(|e| e.evaluate(&delta.data))
            .collect::<Result<Vec<_>>>()?;
        let delta = self.drop_closed(delta, &partition_columns)?;
        if delta.is_empty() {
            return Ok((Delta::empty(self.spec.schema.clone()), Vec::new()));
        }
        let evaluate = |exprs: &mut dyn Iterator<Item = &Compiled>| {
            exprs.map(|e| e.evaluate(&delta.data)).collect::<Result<Vec<_>>>()
        };
        let group_columns = evaluate(&mut self.spec.partition.iter())?;
        let sort_columns = evaluate(&mut self.spec.order.iter().map(|(e, _)| e))?;
        let groups = self.groups_codec.encode(&group_columns, delta.len())?;
        let sort_keys = self.sort_codec.encode(&sort_columns, delta.len())?;
        let rows = self.rows_codec.encode(delta.data.columns(), delta.len())?;

        let mut seen = HashSet::new();
        let touched: Vec<RowKey> = groups
            .iter()
            .filter(|g| seen.insert(g.data()))
            .map(|g| g.data().into())
            .collect();
        let mut before = Vec::new();
        for group in &touched {
            self.top(group, &mut before);
        }
        let retracted = self.emit(&before, -1)?;

        let ends = match &self.closing {
            Some(closing) => Some(super::millis(&group_columns[closing.column])?),
            None => None,
        };
        for i in 0..delta.len() {
            let group: RowKey = groups.row(i).data().into();
            if let Some(ends) = &ends
                && ends.is_valid(i)
                && !self.groups.contains_key(&group)
            {
                self.ends.insert((ends.value(i), group.clone()));
            }
            let weight = delta.weights.value(i);
            if self.spec.top_only && weight < 0 {
                return Err(freshet_common::FreshetError::Internal(format!(
                    "{}: a row was retracted from an input that only inserts",
                    self.spec.display
                )));
            }
            let ranked = self.groups.entry(group).or_default();
            let key = (sort_keys.row(i).data().into(), rows.row(i).data().into());
            let (entries, size) = add_ordered(ranked, key, weight);
            self.rows = self.rows.wrapping_add_signed(entries);
            self.bytes = self.bytes.wrapping_add_signed(size);
        }
        if self.spec.top_only {
            let kept = self.spec.skip.saturating_add(self.spec.fetch);
            for group in &touched {
                if let Some(ranked) = self.groups.get_mut(group) {
                    let (entries, size) = keep_first(ranked, kept);
                    self.rows = self.rows.wrapping_sub(entries);
                    self.bytes = self.bytes.wrapping_sub(size);
                }
            }
        }
        for group in &touched {
            if self.groups.get(group).is_some_and(BTreeMap::is_empty) {
                self.groups.remove(group);
            }
        }
        let mut after = Vec::new();
        for group in &touched {
            self.top(group, &mut after);
        }
        let inserted = self.emit(&after, 1)?;
        if let Some(log) = &mut self.changes {
            log.push(LoggedChanges {
                groups,
                sort_keys,
                rows,
                weights: delta.weights.clone(),
            });
        }
        Ok((Delta::concat(&self.spec.schema, &[retracted, inserted])?, touched))
    }
}

impl Operator for TopN {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let delta = self.input.step(epoch)?;
        let (output, touched) = self.changes(delta)?;
        self.close_windows(epoch);
        self.forget_idle(epoch, &touched);
        Ok(output)
    }

    fn updates(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        match &self.closing {
            Some(closing) => format!(
                "{} closing windows by {} at the watermark of {}{}{}",
                self.spec.display,
                self.spec.partition[closing.column],
                closing.sources.join(", "),
                match closing.allowed_lateness_ms {
                    0 => String::new(),
                    ms => format!(" less {ms} ms"),
                },
                match self.late_rows {
                    0 => String::new(),
                    n => format!(" ({n} rows for closed windows dropped)"),
                }
            ),
            None => match &self.idle {
                Some(idle) => format!(
                    "{} forgetting groups idle for {} ms (table.exec.state.ttl)",
                    self.spec.display,
                    idle.ttl_ms()
                ),
                None => self.spec.display.clone(),
            },
        }
    }

    fn state_kind(&self) -> &'static str {
        "per group: its rows, ordered by the sort key"
    }

    fn state_size(&self) -> StateSize {
        let logged: u64 = self.changes.iter().flatten().map(LoggedChanges::bytes).sum();
        StateSize {
            rows: self.rows,
            bytes: self.bytes + logged,
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

    /// Every kept row ([`save_ordered`]) with its group's window end when windows close it and
    /// the time it was last touched under a state TTL; how far windows have closed, the rows
    /// dropped as late and the TTL's next pass in the batch's metadata.
    fn save_state(&self) -> Result<SavedState> {
        let ends: HashMap<&RowKey, i64> = self.ends.iter().map(|(end, group)| (group, *end)).collect();
        let mut metadata = std::collections::HashMap::from([(LATE_ROWS.to_string(), self.late_rows.to_string())]);
        if let Some(closed) = self.closed_up_to {
            metadata.insert(CLOSED_UP_TO.to_string(), closed.to_string());
        }
        if let Some(idle) = &self.idle {
            metadata.insert(NEXT_PASS.to_string(), idle.next_pass().to_string());
        }
        let batch = save_ordered(
            &self.groups,
            self.rows,
            |group| ends.get(group).copied(),
            |group| self.idle.as_ref().and_then(|idle| idle.touched_at(group)),
            metadata,
        )?;
        Ok(SavedState::Batches(vec![batch]))
    }

    /// The rows each epoch since the last checkpoint applied to the groups, with their
    /// weights as counts, in [`save_ordered`]'s layout.
    fn save_delta(&self) -> Result<Option<Vec<RecordBatch>>> {
        let Some(log) = &self.changes else {
            return Ok(None);
        };
        let rows = log.iter().map(|l| l.weights.len()).sum();
        let entries = log.iter().flat_map(|l| {
            (0..l.weights.len()).map(move |i| OrderedEntry {
                group: l.groups.row(i).data(),
                sort: l.sort_keys.row(i).data(),
                row: l.rows.row(i).data(),
                count: l.weights.value(i),
                end: None,
                touched_at: None,
            })
        });
        let batch = ordered_batch(entries, rows, std::collections::HashMap::new())?;
        Ok(Some(vec![batch]))
    }

    fn delta_rows(&self) -> u64 {
        self.changes.iter().flatten().map(|l| l.weights.len() as u64).sum()
    }

    fn track_changes(&mut self) {
        if self.closing.is_none() && self.idle.is_none() && !self.spec.top_only {
            self.changes = Some(Vec::new());
        }
    }

    /// Adds the saved rows' counts to their groups, as the epochs did.
    fn apply_delta(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        if self.closing.is_some() || self.idle.is_some() || self.spec.top_only {
            return Err(mismatch("this top-N saves its whole state"));
        }
        let [batch] = <[RecordBatch; 1]>::try_from(batches).map_err(|_| mismatch("a top-N's delta is one batch"))?;
        for saved in restore_ordered(&batch)? {
            let ranked = self.groups.entry(saved.group.clone()).or_default();
            let (entries, size) = add_ordered(ranked, (saved.sort, saved.row), saved.count);
            self.rows = self.rows.wrapping_add_signed(entries);
            self.bytes = self.bytes.wrapping_add_signed(size);
            if ranked.is_empty() {
                self.groups.remove(&saved.group);
            }
        }
        Ok(())
    }

    fn restore_state(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        let [batch] = <[RecordBatch; 1]>::try_from(batches).map_err(|_| mismatch("a top-N's state is one batch"))?;
        let metadata = batch.schema().metadata().clone();
        self.late_rows = metadata_value(&metadata, LATE_ROWS)?.unwrap_or(0) as u64;
        self.closed_up_to = metadata_value(&metadata, CLOSED_UP_TO)?;
        if let (Some(idle), Some(next)) = (&mut self.idle, metadata_value(&metadata, NEXT_PASS)?) {
            idle.set_next_pass(next);
        }
        for saved in restore_ordered(&batch)? {
            if let Some(end) = saved.end
                && !self.groups.contains_key(&saved.group)
            {
                self.ends.insert((end, saved.group.clone()));
            }
            if let (Some(idle), Some(at)) = (&mut self.idle, saved.touched_at) {
                idle.touch(&saved.group, at);
            }
            let ranked = self.groups.entry(saved.group).or_default();
            let (entries, size) = add_ordered(ranked, (saved.sort, saved.row), saved.count);
            self.rows = self.rows.wrapping_add_signed(entries);
            self.bytes = self.bytes.wrapping_add_signed(size);
        }
        Ok(())
    }
}
