//! GROUP BY and global aggregates, kept per group under inserts and deletes.
//!
//! Each group keeps its row count and one accumulator per aggregate. COUNT, SUM and AVG keep
//! sums (integers and decimals exactly in 128 bits); MIN, MAX and COUNT(DISTINCT) keep the
//! multiset of values, ordered, because deleting the current minimum needs the next one
//! (DataFusion's `retract_batch` assumes first-in-first-out and cannot be used). An epoch emits,
//! for every group it touched, the group's old row with weight −1 and its new row with +1 (neither
//! when they are equal); a group whose last row is deleted disappears; a global aggregate always
//! has its one row.
//!
//! An aggregate grouped by a window's end that its sources' watermark closes (see
//! `event_time`) forgets the groups of closed windows after each epoch: their rows in the result
//! are final, and its state holds the open windows only.

mod accumulator;
mod checkpoint;
mod float_sum;
mod frozen;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::kernels::boolean::or;
use datafusion::arrow::compute::kernels::cmp::distinct;
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use freshet_common::{CACHED_BYTES, Key, KeyCodec, KeyMap, Keys, Result, run_parts_by_key, sweep_order};

use super::{Compiled, Epoch, Operator, StateSize};
use crate::delta::{Delta, internal};
use crate::rows::RowCodec;
use accumulator::{Accumulators, Arguments};

pub(crate) use accumulator::AggregateKind;

/// One aggregate of the operator.
pub(crate) struct AggregateSpec {
    pub kind: AggregateKind,
    /// A MIN or MAX whose input only inserts rows: it keeps the extreme alone.
    pub of_inserts: bool,
    /// A COUNT of an argument that is never NULL, without FILTER: the group's row count.
    pub counts_rows: bool,
    /// The argument (`count(*)` counts a non-null literal).
    pub arg: Compiled,
    /// `FILTER (WHERE ...)`.
    pub filter: Option<Compiled>,
    pub arg_type: DataType,
    pub output_type: DataType,
    /// The aggregate as the plan shows it.
    pub display: String,
}

/// The aggregate operator.
///
/// Its groups are split into parts by a hash of their key (see `freshet_common::run_parts`),
/// which step at once on threads of their own when an epoch is large. A global aggregate has
/// one part with one group.
pub(crate) struct Aggregate {
    input: Box<dyn Operator>,
    group_exprs: Vec<Compiled>,
    group_types: Vec<DataType>,
    /// Encodes the group key (`None` for a global aggregate).
    keys: Option<KeyCodec>,
    specs: Vec<AggregateSpec>,
    /// Encodes values of MIN, MAX and COUNT(DISTINCT).
    value_codecs: Vec<Option<RowCodec>>,
    parts: Vec<Groups>,
    schema: SchemaRef,
    /// A global aggregate's row has been emitted.
    started: bool,
    closing: Option<WindowClosing>,
    /// Windows ending at or before this (ms) are closed: a row for one (a source that was
    /// idle and held no watermark back brings it) is dropped and counted, never reopening it.
    closed_up_to: Option<i64>,
    /// Rows of a closed window are still taken this long (ms) after it closed: a slide's
    /// aggregate under a HOP window's (`planner::hop`) takes a row of a closed slide while a
    /// window holding that slide is open, and outputs its row at once.
    late_margin_ms: i64,
    late_rows: u64,
    /// `table.exec.state.ttl` (ms), and the epoch time (ms) at which idle groups are looked
    /// for next.
    state_ttl: Option<(i64, i64)>,
    /// With a state TTL: the groups last touched before this (ms) have been forgotten.
    forgotten_before: Option<i64>,
    /// With window closing: the output is each window's rows once, final, when the window
    /// closes (Flink's emission of window results), rather than every change of a group.
    final_rows: bool,
    /// It has taken the changes of building epochs without output ([`Epoch::building`]): its
    /// next epoch outputs every group's row.
    built_quietly: bool,
    /// The groups of the whole checkpoint restored, those no change has touched yet (see
    /// [`frozen::FrozenGroups`]).
    frozen: Option<frozen::FrozenGroups>,
}

/// Groups keyed by a window's end, closed by the watermark of the sources below.
#[derive(Debug, Clone)]
pub(crate) struct WindowClosing {
    /// The group column holding the window's end.
    pub column: usize,
    /// The sources whose combined watermark (the least) closes the windows: every source
    /// below the aggregate, since a row of any of them may join an old row of another.
    pub sources: Vec<String>,
    /// How far below the watermark rows are still taken (ms).
    pub allowed_lateness_ms: i64,
}

/// The groups of one part of an aggregate.
///
/// Groups live in slots: the map finds a group's slot from its encoded key, and the slots'
/// row counts and accumulators are columns indexed by slot (a slot freed by a vanished group
/// is reused). A global aggregate's one group is in slot 0.
///
/// The state is read at random places, one group at a time: every column a group's update
/// touches is one more cache miss (most of an epoch's time in a large state), so a slot's row
/// count and epoch mark share one entry, and a COUNT of a never-NULL argument keeps no column
/// (it is the row count).
struct Groups {
    /// The slot of each group (empty for a global aggregate).
    slots: KeyMap<u32>,
    /// Each slot's row count and epoch mark.
    marks: Vec<SlotMark>,
    /// One column of accumulators per aggregate.
    accumulators: Vec<Accumulators>,
    /// Slots whose group vanished.
    free: Vec<u32>,
    epoch: u64,
    /// With window closing: each slot's window end (ms; `i64::MAX` for none), and how many
    /// groups have each end.
    ends: Vec<i64>,
    open_windows: std::collections::BTreeMap<i64, usize>,
    /// With a state TTL: the epoch time (ms) each slot's group was last touched.
    touched_at: Vec<i64>,
    /// The keys of the groups changed since the state was last saved or restored, for a
    /// delta checkpoint (`None` until then). A group is listed when an epoch first touches it
    /// after `changed_after` (an epoch number), or when it is created.
    changed: Option<checkpoint::KeyLog>,
    changed_after: u64,
}

/// A slot's row count and the last epoch that touched it.
#[derive(Clone, Copy, Default)]
struct SlotMark {
    rows: i64,
    touched_in: u64,
}

/// What every part reads to step through one epoch: the operator's definition and the epoch's
/// rows with their keys and aggregate arguments.
struct Step<'a> {
    specs: &'a [AggregateSpec],
    value_codecs: &'a [Option<RowCodec>],
    schema: &'a SchemaRef,
    key_columns: &'a [ArrayRef],
    /// `None` for a global aggregate.
    keys: Option<&'a Keys>,
    arguments: &'a [Arguments],
    weights: &'a [i64],
    /// A global aggregate's row has been emitted.
    started: bool,
    /// With window closing: each row's window end (ms).
    ends: Option<&'a [i64]>,
    /// With a state TTL: the epoch's time (ms).
    now_ms: Option<i64>,
    /// The groups' changes are output (else only their state is kept: final rows).
    emit: bool,
    /// The saved groups a restore kept, and their columns: a group not in a slot is looked
    /// for there.
    frozen: Option<(&'a frozen::FrozenGroups, checkpoint::SavedColumns<'a>)>,
}

/// A group an epoch touched: its slot, the first row of the epoch's delta in it, whether it
/// existed before the epoch, and its place among the touched groups.
#[derive(Clone, Copy)]
struct Touched {
    slot: u32,
    row: u32,
    existed: bool,
    at: u32,
}

/// Which group each row of an epoch is in, and the order to visit them.
struct Assigned {
    /// The slot of each row's group (rows of other parts: 0, never read).
    slots: Vec<u32>,
    /// The part's rows, grouped by ranges of slots (see `freshet_common::sweep_order`).
    order: Vec<u32>,
    /// The groups touched, in `order`'s order.
    touched: Vec<Touched>,
}

/// Memory of a slot's row count and epoch mark (its entry in the slot map is counted by the
/// map).
const SLOT_BYTES: usize = size_of::<SlotMark>();

impl Aggregate {
    /// An aggregate whose groups are split into `parts` parts (a global aggregate has one).
    pub(crate) fn new(
        input: Box<dyn Operator>,
        group_exprs: Vec<Compiled>,
        group_types: Vec<DataType>,
        specs: Vec<AggregateSpec>,
        schema: SchemaRef,
        parts: usize,
    ) -> Result<Self> {
        let value_codecs = specs
            .iter()
            .map(|s| {
                s.kind
                    .keeps_values()
                    .then(|| RowCodec::new([s.arg_type.clone()]))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let keys = (!group_types.is_empty())
            .then(|| KeyCodec::new(&group_types))
            .transpose()?;
        let parts = match &keys {
            Some(codec) => (0..parts.max(1)).map(|_| Groups::new(codec.map(), &specs)).collect(),
            // A global aggregate's one group is slot 0, never looked up: its map stays empty.
            None => {
                let mut groups = Groups::new(KeyCodec::new(&[DataType::Int64])?.map(), &specs);
                groups.allocate();
                vec![groups]
            }
        };
        Ok(Self {
            input,
            group_exprs,
            keys,
            group_types,
            specs,
            value_codecs,
            parts,
            schema,
            started: false,
            closing: None,
            closed_up_to: None,
            late_margin_ms: 0,
            late_rows: 0,
            state_ttl: None,
            forgotten_before: None,
            final_rows: false,
            built_quietly: false,
            frozen: None,
        })
    }

    /// Forgets groups no change has touched for `ttl_ms` of the epochs' time (Flink's
    /// `table.exec.state.ttl`).
    pub(crate) fn with_state_ttl(mut self, ttl_ms: i64) -> Self {
        self.state_ttl = Some((ttl_ms.max(1), i64::MIN));
        self
    }

    /// Forgets the groups of windows that the watermark of `closing.sources` has closed.
    pub(crate) fn with_window_closing(mut self, closing: WindowClosing) -> Self {
        self.closing = Some(closing);
        self
    }

    /// Takes rows of a window for `margin_ms` after it closed (see `late_margin_ms`).
    pub(crate) fn with_late_margin(mut self, margin_ms: i64) -> Self {
        self.late_margin_ms = margin_ms.max(0);
        self
    }

    /// Outputs nothing while a window is open and each of its groups' rows once when it
    /// closes (with window closing): what a window emitter above it would pass, without the
    /// changes of open windows that it would keep and cancel.
    pub(crate) fn with_final_rows(mut self) -> Self {
        self.final_rows = self.closing.is_some();
        self
    }

    fn is_global(&self) -> bool {
        self.group_exprs.is_empty()
    }
}

impl Groups {
    fn new(slots: KeyMap<u32>, specs: &[AggregateSpec]) -> Self {
        Self {
            slots,
            marks: Vec::new(),
            accumulators: specs.iter().map(Accumulators::new).collect(),
            free: Vec::new(),
            epoch: 0,
            ends: Vec::new(),
            open_windows: std::collections::BTreeMap::new(),
            touched_at: Vec::new(),
            changed: None,
            changed_after: 0,
        }
    }

    /// Makes room for `more` groups beyond those held: every per-slot column at once, so that
    /// loading a million groups does not grow each column by doubling.
    fn reserve(&mut self, more: usize) {
        self.slots.reserve(more);
        self.marks.reserve(more);
        self.ends.reserve(more);
        self.touched_at.reserve(more);
        for accumulators in &mut self.accumulators {
            accumulators.reserve(more);
        }
    }

    /// A slot with an empty state.
    fn allocate(&mut self) -> u32 {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        self.marks.push(SlotMark::default());
        self.ends.push(i64::MAX);
        self.touched_at.push(i64::MAX);
        for accumulators in &mut self.accumulators {
            accumulators.push();
        }
        (self.marks.len() - 1) as u32
    }

    /// Forgets the group `key` in `slot`.
    fn release(&mut self, key: Key<'_>, slot: u32) {
        self.slots.remove(key);
        self.clear(slot);
    }

    fn clear(&mut self, slot: u32) {
        for accumulators in &mut self.accumulators {
            accumulators.clear(slot as usize);
        }
        let end = std::mem::replace(&mut self.ends[slot as usize], i64::MAX);
        if end != i64::MAX
            && let std::collections::btree_map::Entry::Occupied(mut groups) = self.open_windows.entry(end)
        {
            *groups.get_mut() -= 1;
            if *groups.get() == 0 {
                groups.remove();
            }
        }
        self.marks[slot as usize] = SlotMark {
            rows: 0,
            touched_in: self.marks[slot as usize].touched_in,
        };
        self.free.push(slot);
    }

    /// Forgets the groups last touched before `cutoff` (ms).
    fn forget_idle(&mut self, cutoff: i64) {
        let mut idle = Vec::new();
        let touched_at = &self.touched_at;
        self.slots.retain(|slot| {
            let keep = touched_at[*slot as usize] >= cutoff;
            if !keep {
                idle.push(*slot);
            }
            keep
        });
        for slot in idle {
            self.clear(slot);
        }
    }

    /// The rows (weight 1) of the groups whose window ends at or before `bound` (ms), as
    /// `aggregate` (whose part this is) outputs them; in no particular order.
    fn closed_rows(&self, bound: i64, codec: &KeyCodec, aggregate: &Aggregate, schema: &SchemaRef) -> Result<Delta> {
        if self.open_windows.first_key_value().is_none_or(|(&end, _)| end > bound) {
            return Ok(Delta::empty(schema.clone()));
        }
        // A NULL window end (`i64::MAX`) never closes: such a group has no final row.
        self.rows_of(
            |slot| self.ends[slot as usize] <= bound.min(i64::MAX - 1),
            codec,
            aggregate,
            schema,
        )
    }

    /// The rows (weight 1) of the groups whose slot `pick` takes, as `aggregate` outputs them.
    fn rows_of(
        &self,
        pick: impl Fn(u32) -> bool,
        codec: &KeyCodec,
        aggregate: &Aggregate,
        schema: &SchemaRef,
    ) -> Result<Delta> {
        let (keys, slots): (Vec<Key<'_>>, Vec<u32>) = self
            .slots
            .iter()
            .filter(|(_, slot)| pick(**slot))
            .map(|(key, &slot)| (key, slot))
            .unzip();
        let mut columns = codec.decode(keys, &aggregate.group_types)?;
        columns.extend(self.aggregate_columns(&aggregate.specs, &aggregate.value_codecs, &slots)?);
        Delta::from_columns(schema, columns, Int64Array::from_value(1, slots.len()))
    }

    /// Forgets the groups whose window ends at or before `bound` (ms).
    fn close_windows(&mut self, bound: i64) {
        if self.open_windows.first_key_value().is_none_or(|(&end, _)| end > bound) {
            return;
        }
        let mut closed = Vec::new();
        let ends = &self.ends;
        self.slots.retain(|slot| {
            let open = ends[*slot as usize] > bound;
            if !open {
                closed.push(*slot);
            }
            open
        });
        for slot in closed {
            self.clear(slot);
        }
    }

    /// The slot of each row's group among `rows` (all of the epoch's rows when `None`), the
    /// order to visit them in, and the groups touched.
    fn assign(&mut self, step: &Step<'_>, rows: Option<&[u32]>) -> Result<Assigned> {
        self.epoch += 1;
        let all = step.weights.len();
        let row_at = |i: usize| rows.map_or(i as u32, |rows| rows[i]);
        let count = rows.map_or(all, <[u32]>::len);
        let Some(keys) = step.keys else {
            let touched = Touched {
                slot: 0,
                row: 0,
                existed: step.started,
                at: 0,
            };
            return Ok(Assigned {
                slots: vec![0; all],
                order: (0..all as u32).collect(),
                touched: vec![touched],
            });
        };
        // The groups of a map larger than the cache are found in the order of its buckets (it
        // would miss the cache at nearly every lookup in the rows' order).
        let mut slots = vec![0u32; all];
        let mut created = foldhash::HashSet::default();
        let probe = self.slots.probe((0..count).map(|i| keys.key(row_at(i) as usize)));
        for &i in &probe.order {
            let row = row_at(i as usize) as usize;
            let key = keys.key(row);
            let hash = probe.hash(i as usize);
            slots[row] = match self.slots.get_hashed(key, hash) {
                Some(&slot) => slot,
                None => {
                    let slot = self.allocate();
                    self.slots.insert_hashed(key, hash, slot);
                    let saved = step
                        .frozen
                        .as_ref()
                        .and_then(|(frozen, columns)| Some((columns, frozen.take(columns, key)?)));
                    match saved {
                        // A group the restore kept: loaded now, as it was, and listed as
                        // changed when the epoch touches it (its slot may be a reused one).
                        Some((columns, saved)) => {
                            self.load_group(columns, saved, slot)?;
                            self.marks[slot as usize].touched_in = 0;
                        }
                        None => {
                            created.insert(slot);
                            if let Some(ends) = step.ends
                                && ends[row] != i64::MAX
                            {
                                self.ends[slot as usize] = ends[row];
                                *self.open_windows.entry(ends[row]).or_default() += 1;
                            }
                        }
                    }
                    slot
                }
            };
        }
        // The state is columns indexed by slot. When they are larger than the cache, the rows
        // are visited by ranges of slots, which sweeps those columns. A group's rows keep their
        // order either way, so its first row comes first.
        let order: Vec<u32> = if self.bytes() <= CACHED_BYTES {
            (0..count).map(row_at).collect()
        } else {
            sweep_order(
                self.marks.len(),
                (0..count).map(|i| u64::from(slots[row_at(i) as usize])),
            )
            .into_iter()
            .map(|i| row_at(i as usize))
            .collect()
        };
        let mut touched = Vec::new();
        for &row in &order {
            let slot = slots[row as usize];
            let mark = &mut self.marks[slot as usize];
            if mark.touched_in != self.epoch {
                let created = created.contains(&slot);
                if let Some(changed) = &mut self.changed
                    && (created || mark.touched_in <= self.changed_after)
                {
                    changed.push(keys.key(row as usize));
                }
                mark.touched_in = self.epoch;
                if let Some(now) = step.now_ms {
                    self.touched_at[slot as usize] = now;
                }
                touched.push(Touched {
                    slot,
                    row,
                    existed: !created,
                    at: touched.len() as u32,
                });
            }
        }
        Ok(Assigned { slots, order, touched })
    }

    /// Steps this part's groups through the epoch's rows `rows` (all of them when `None`):
    /// returns the old rows of the groups touched (to retract) and their new rows (to insert),
    /// without the groups whose row did not change.
    fn step(&mut self, step: &Step<'_>, rows: Option<&[u32]>) -> Result<(Delta, Delta)> {
        let Assigned { slots, order, touched } = self.assign(step, rows)?;

        let before: Vec<Touched> = touched.iter().filter(|t| t.existed).copied().collect();
        let retracted = match step.emit {
            true => self.emit(step, &before, -1)?,
            false => Delta::empty(step.schema.clone()),
        };

        for &row in &order {
            self.marks[slots[row as usize] as usize].rows += step.weights[row as usize];
        }
        for (accumulators, arguments) in self.accumulators.iter_mut().zip(step.arguments) {
            accumulators.apply(arguments, &slots, step.weights, &order)?;
        }

        let mut after = Vec::with_capacity(touched.len());
        for group in touched {
            let rows = self.marks[group.slot as usize].rows;
            if rows < 0 {
                // A retraction of a group the state TTL forgot: ignored, as Flink does.
                if let (true, Some(keys)) = (step.now_ms.is_some(), step.keys) {
                    self.release(keys.key(group.row as usize), group.slot);
                    continue;
                }
                return Err(internal("a group's row count went below zero"));
            }
            match step.keys {
                Some(keys) if rows == 0 => self.release(keys.key(group.row as usize), group.slot),
                _ => after.push(group),
            }
        }
        if !step.emit {
            return Ok((retracted, Delta::empty(step.schema.clone())));
        }
        let inserted = self.emit(step, &after, 1)?;
        drop_unchanged(step, retracted, &before, inserted, &after)
    }

    /// The output rows of the groups `groups` (key values from their rows of the epoch's key
    /// columns, aggregates from their slots), with weight `weight`.
    fn emit(&self, step: &Step<'_>, groups: &[Touched], weight: i64) -> Result<Delta> {
        let rows = UInt32Array::from_iter_values(groups.iter().map(|g| g.row));
        let slots: Vec<u32> = groups.iter().map(|g| g.slot).collect();
        let mut columns = step
            .key_columns
            .iter()
            .map(|column| take(column.as_ref(), &rows, None).map_err(internal))
            .collect::<Result<Vec<_>>>()?;
        columns.extend(self.aggregate_columns(step.specs, step.value_codecs, &slots)?);
        Delta::from_columns(step.schema, columns, Int64Array::from_value(weight, groups.len()))
    }

    /// The aggregates' values of the groups in `slots`, a column per aggregate.
    fn aggregate_columns(
        &self,
        specs: &[AggregateSpec],
        value_codecs: &[Option<RowCodec>],
        slots: &[u32],
    ) -> Result<Vec<ArrayRef>> {
        specs
            .iter()
            .zip(&self.accumulators)
            .zip(value_codecs)
            .map(|((spec, accumulators), codec)| {
                let array =
                    accumulators.evaluate(spec, codec.as_ref(), slots, |slot| self.marks[slot as usize].rows)?;
                match array.data_type() == &spec.output_type {
                    true => Ok(array),
                    false => cast(&array, &spec.output_type).map_err(internal),
                }
            })
            .collect()
    }

    /// Memory of the part's state.
    fn bytes(&self) -> usize {
        let slots = self.marks.len();
        let accumulators: usize = self.accumulators.iter().map(|a| a.bytes(slots)).sum();
        let changed = self.changed.as_ref().map_or(0, checkpoint::KeyLog::bytes);
        slots * (SLOT_BYTES + size_of::<i64>()) + self.slots.bytes() + accumulators + changed
    }
}

/// Removes the groups whose row is the same after the epoch as before (a change that
/// cancelled out, or an update of a row's non-aggregated column) from the retractions (rows
/// of the groups `before`) and the insertions (`after`).
fn drop_unchanged(
    step: &Step<'_>,
    retracted: Delta,
    before: &[Touched],
    inserted: Delta,
    after: &[Touched],
) -> Result<(Delta, Delta)> {
    // Both lists follow the touched groups' order.
    let (mut old, mut new) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < before.len() && j < after.len() {
        match before[i].at.cmp(&after[j].at) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                old.push(i as u32);
                new.push(j as u32);
                i += 1;
                j += 1;
            }
        }
    }
    if old.is_empty() {
        return Ok((retracted, inserted));
    }
    let (old, new) = (UInt32Array::from(old), UInt32Array::from(new));
    let mut changed = BooleanArray::from(vec![false; old.len()]);
    for column in step.key_columns.len()..step.schema.fields().len() {
        let was = take(retracted.data.column(column).as_ref(), &old, None).map_err(internal)?;
        let is = take(inserted.data.column(column).as_ref(), &new, None).map_err(internal)?;
        changed = or(&changed, &distinct(&was, &is).map_err(internal)?).map_err(internal)?;
    }
    if changed.true_count() == changed.len() {
        return Ok((retracted, inserted));
    }
    let mut keep_old = vec![true; retracted.len()];
    let mut keep_new = vec![true; inserted.len()];
    for (k, changed) in changed.values().iter().enumerate() {
        if !changed {
            keep_old[old.value(k) as usize] = false;
            keep_new[new.value(k) as usize] = false;
        }
    }
    Ok((
        retracted.filter(&BooleanArray::from(keep_old))?,
        inserted.filter(&BooleanArray::from(keep_new))?,
    ))
}

impl Aggregate {
    /// Every group's row (weight 1); a global aggregate's one row.
    fn all_rows(&self) -> Result<Delta> {
        if self.frozen.is_some() {
            // Only after building epochs, which a restored state never takes.
            return Err(internal(
                "every row of an aggregate whose saved groups are not all loaded",
            ));
        }
        let Some(codec) = &self.keys else {
            let groups = self
                .parts
                .first()
                .ok_or_else(|| internal("an aggregate without parts"))?;
            let columns = groups.aggregate_columns(&self.specs, &self.value_codecs, &[0])?;
            return Delta::from_columns(&self.schema, columns, Int64Array::from_value(1, 1));
        };
        let parts = self
            .parts
            .iter()
            .map(|part| part.rows_of(|_| true, codec, self, &self.schema))
            .collect::<Result<Vec<_>>>()?;
        Delta::concat(&self.schema, &parts)
    }

    /// Forgets the groups of the windows the epoch's watermark has closed; with final rows,
    /// returns their rows (else nothing).
    fn close_windows(&mut self, epoch: &Epoch) -> Result<Delta> {
        let none = || Delta::empty(self.schema.clone());
        let Some(closing) = &self.closing else {
            return Ok(none());
        };
        // None in a building epoch: windows do not close while a state is built.
        let Some(watermark) = epoch.watermark(&closing.sources) else {
            return Ok(none());
        };
        let bound = watermark.saturating_sub(closing.allowed_lateness_ms);
        let mut closed = Vec::new();
        if self.final_rows
            && let Some(codec) = &self.keys
        {
            for part in &self.parts {
                closed.push(part.closed_rows(bound, codec, self, &self.schema)?);
            }
        }
        for part in &mut self.parts {
            part.close_windows(bound);
        }
        self.closed_up_to = Some(self.closed_up_to.map_or(bound, |b| b.max(bound)));
        Delta::concat(&self.schema, &closed)
    }

    /// With a state TTL, forgets the groups idle for longer, in a pass over the groups at most
    /// every half TTL.
    fn forget_idle(&mut self, epoch: &Epoch) {
        let (Some((ttl, next_pass)), Some(now)) = (self.state_ttl, epoch.time_ns()) else {
            return;
        };
        let now = now.div_euclid(1_000_000);
        if now < next_pass {
            return;
        }
        let cutoff = now.saturating_sub(ttl);
        for part in &mut self.parts {
            part.forget_idle(cutoff);
        }
        self.forgotten_before = Some(cutoff);
        self.state_ttl = Some((ttl, now.saturating_add(ttl / 2)));
    }

    /// The group key columns of `delta`'s rows and, with window closing, their window ends
    /// (ms), without the rows of windows already closed (counted as late).
    fn keyed(&mut self, delta: Delta) -> Result<(Delta, Vec<ArrayRef>, Option<Vec<i64>>)> {
        let key_columns = self
            .group_exprs
            .iter()
            .zip(&self.group_types)
            .map(|(e, t)| {
                let column = e.evaluate(&delta.data)?;
                if column.data_type() == t {
                    Ok(column)
                } else {
                    cast(&column, t).map_err(internal)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let Some(closing) = &self.closing else {
            return Ok((delta, key_columns, None));
        };
        let ends = window_ends(&key_columns[closing.column])?;
        let bound = self.closed_up_to.map(|bound| bound.saturating_sub(self.late_margin_ms));
        let Some(bound) = bound.filter(|&bound| ends.iter().any(|&end| end <= bound)) else {
            return Ok((delta, key_columns, Some(ends)));
        };
        let open: BooleanArray = ends.iter().map(|&end| Some(end > bound)).collect();
        self.late_rows += (open.len() - open.true_count()) as u64;
        let key_columns = key_columns
            .iter()
            .map(|c| datafusion::arrow::compute::filter(c, &open).map_err(internal))
            .collect::<Result<Vec<_>>>()?;
        let ends = ends.into_iter().filter(|&end| end > bound).collect();
        Ok((delta.filter(&open)?, key_columns, Some(ends)))
    }
}

/// Window ends as ms (`i64::MAX` for NULL: never closed).
fn window_ends(column: &ArrayRef) -> Result<Vec<i64>> {
    Ok(super::millis(column)?.iter().map(|v| v.unwrap_or(i64::MAX)).collect())
}

impl Operator for Aggregate {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let delta = self.input.step(epoch)?;
        let (delta, key_columns, ends) = self.keyed(delta)?;
        if delta.is_empty() && (self.started || !self.is_global()) && !self.built_quietly {
            let closed = self.close_windows(epoch)?;
            self.forget_idle(epoch);
            return Ok(closed);
        }
        let arguments = self
            .specs
            .iter()
            .zip(&self.value_codecs)
            .map(|(spec, codec)| Arguments::evaluate(spec, codec.as_ref(), &delta.data))
            .collect::<Result<Vec<_>>>()?;
        let keys = self.keys.as_ref().map(|codec| codec.encode(&key_columns)).transpose()?;
        let step = Step {
            specs: &self.specs,
            value_codecs: &self.value_codecs,
            schema: &self.schema,
            key_columns: &key_columns,
            keys: keys.as_ref(),
            arguments: &arguments,
            weights: delta.weights.values(),
            started: self.started,
            ends: ends.as_deref(),
            now_ms: self.state_ttl.and(epoch.time_ns()).map(|ns| ns.div_euclid(1_000_000)),
            emit: !self.final_rows && !epoch.is_building() && !self.built_quietly,
            frozen: self
                .frozen
                .as_ref()
                .map(|frozen| frozen.columns().map(|columns| (frozen, columns)))
                .transpose()?,
        };
        let outputs = match (&keys, self.parts.len()) {
            (Some(keys), parts) if parts > 1 => run_parts_by_key(
                &mut self.parts,
                keys.len(),
                |row| keys.key(row),
                |_, groups, rows| groups.step(&step, Some(rows)),
            ),
            _ => self.parts.iter_mut().map(|groups| groups.step(&step, None)).collect(),
        };
        self.started = true;
        // Retractions first, then insertions, as one part alone would give them.
        let (retracted, inserted): (Vec<Delta>, Vec<Delta>) =
            outputs.into_iter().collect::<Result<Vec<_>>>()?.into_iter().unzip();
        if epoch.is_building() {
            self.built_quietly = true;
            return Ok(Delta::empty(self.schema.clone()));
        }
        // After a quiet build, every group's row (the state was empty before it); closing
        // windows then forgets theirs, as final.
        let built = match std::mem::take(&mut self.built_quietly) {
            true if !self.final_rows => self.all_rows()?,
            _ => Delta::empty(self.schema.clone()),
        };
        let closed = self.close_windows(epoch)?;
        self.forget_idle(epoch);
        Delta::concat(&self.schema, &[retracted, inserted, vec![built, closed]].concat())
    }

    /// Each output row appears at most once among the retractions and once among the
    /// insertions, and `drop_unchanged` removes a retraction and an insertion of the same row.
    fn output_consolidated(&self) -> bool {
        true
    }

    /// The group columns (the first outputs): one row per group.
    fn unique_key(&self) -> Option<Vec<usize>> {
        (!self.is_global()).then(|| (0..self.group_exprs.len()).collect())
    }

    fn updates(&self) -> bool {
        !self.final_rows
    }

    fn final_output(&self) -> bool {
        self.final_rows
    }

    fn describe(&self) -> String {
        let groups: Vec<String> = self.group_exprs.iter().map(ToString::to_string).collect();
        let aggregates: Vec<&str> = self.specs.iter().map(|s| s.display.as_str()).collect();
        let closing = match &self.closing {
            Some(c) => format!(
                " closing windows by {} at the watermark of {}{}{}",
                self.group_exprs[c.column],
                c.sources.join(", "),
                match c.allowed_lateness_ms {
                    0 => String::new(),
                    ms => format!(" less {ms} ms"),
                },
                match self.late_rows {
                    0 => String::new(),
                    n => format!(" ({n} rows for closed windows dropped)"),
                }
            ),
            None => String::new(),
        };
        let closing = match self.late_margin_ms {
            0 => closing,
            ms => format!("{closing}, taking rows of a closed window for {ms} ms of the watermark more"),
        };
        let closing = match self.state_ttl {
            Some((ttl, _)) => format!("{closing} forgetting groups idle for {ttl} ms (table.exec.state.ttl)"),
            None => closing,
        };
        let closing = match self.final_rows {
            true => format!("{closing}, emitting each window's rows once when it closes"),
            false => closing,
        };
        format!(
            "Aggregate: group=[{}] aggregates=[{}]{closing}",
            groups.join(", "),
            aggregates.join(", ")
        )
    }

    fn state_kind(&self) -> &'static str {
        if self.specs.iter().any(|s| s.kind.keeps_values() && !s.of_inserts) {
            "per group: row count, accumulators and the multiset of MIN/MAX/DISTINCT values"
        } else {
            "per group: row count and accumulators"
        }
    }

    fn state_size(&self) -> StateSize {
        let frozen = self.frozen.as_ref();
        let groups: usize = if self.is_global() {
            1
        } else {
            self.parts.iter().map(|part| part.slots.len()).sum::<usize>()
                + frozen.map_or(0, frozen::FrozenGroups::remaining_count)
        };
        let bytes: usize =
            self.parts.iter().map(|part| part.bytes()).sum::<usize>() + frozen.map_or(0, frozen::FrozenGroups::bytes);
        StateSize {
            rows: groups as u64,
            bytes: bytes as u64,
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

    fn save_state(&self) -> Result<crate::checkpoint::SavedState> {
        self.save()
    }

    fn restore_state(&mut self, batches: Vec<datafusion::arrow::record_batch::RecordBatch>) -> Result<()> {
        self.restore(batches)
    }

    fn save_delta(&self) -> Result<Option<Vec<datafusion::arrow::record_batch::RecordBatch>>> {
        self.save_changes()
    }

    fn delta_rows(&self) -> u64 {
        self.parts
            .iter()
            .filter_map(|part| part.changed.as_ref())
            .map(|changed| changed.len() as u64)
            .sum()
    }

    fn track_changes(&mut self) {
        if self.is_global() {
            return;
        }
        for part in &mut self.parts {
            part.changed = Some(checkpoint::KeyLog::default());
            part.changed_after = part.epoch;
        }
    }

    fn apply_delta(&mut self, batches: Vec<datafusion::arrow::record_batch::RecordBatch>) -> Result<()> {
        self.apply_changes(batches)
    }
}
