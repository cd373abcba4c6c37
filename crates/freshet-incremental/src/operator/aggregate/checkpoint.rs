//! An aggregate's state in a checkpoint: one row per group — its key as the key map holds it
//! (an integer, or bytes in Arrow's row format), its row count, window end and last touch, and
//! one binary value per aggregate (see `Accumulators::save_slot`) — with the operator's own
//! counters in the batch's metadata. Groups go back to the part their key hashes to, so a
//! checkpoint taken with one number of parts restores into another.
//!
//! A whole state's groups are sorted by a fixed hash of their keys, the hashes in a last
//! column (`hash`, with the hash's check in the metadata): a restore keeps them where they are
//! and loads a group when a change first touches it (see `frozen.rs`). A state saved without
//! them (an older checkpoint) is loaded group by group, as is one whose groups are forgotten by
//! time (windows, a state TTL), which passes over all of them.
//!
//! A delta has the same layout, with the groups changed since the last checkpoint only (a
//! group gone has a row count of zero).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, Int64Array, RecordBatch, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

use freshet_common::{Key, Result, run_parts_by_key};

use super::frozen::{FrozenGroups, HASH, HASH_CHECK};
use super::{Aggregate, Groups};
use crate::checkpoint::{READ_IN_PLACE, SavedState, StateReader, StateWriter, mismatch};
use crate::delta::internal;
use crate::operator::hashed::key_hash;

const STARTED: &str = "started";
const CLOSED_UP_TO: &str = "closed_up_to";
const LATE_ROWS: &str = "late_rows";
const FORGOTTEN_BEFORE: &str = "forgotten_before";

/// Group keys, owned, in the order listed (duplicates allowed).
#[derive(Debug, Default)]
pub(super) struct KeyLog {
    ints: Vec<Option<i64>>,
    bytes: Vec<u8>,
    /// The end of each row key in `bytes`.
    ends: Vec<usize>,
}

impl KeyLog {
    pub(super) fn push(&mut self, key: Key<'_>) {
        match key {
            Key::Int(value) => self.ints.push(value),
            Key::Row(bytes) => {
                self.bytes.extend_from_slice(bytes);
                self.ends.push(self.bytes.len());
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ints.len() + self.ends.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.ints.capacity() * size_of::<Option<i64>>()
            + self.bytes.capacity()
            + self.ends.capacity() * size_of::<usize>()
    }

    fn keys(&self) -> impl Iterator<Item = Key<'_>> {
        let rows = self.ends.iter().scan(0, |start, &end| {
            let key = Key::Row(&self.bytes[*start..end]);
            *start = end;
            Some(key)
        });
        self.ints.iter().map(|&v| Key::Int(v)).chain(rows)
    }
}

/// The rows of a saved state: one per group, or per group removed (a delta's: no rows, no
/// accumulators).
struct SavedGroups {
    key_int: Vec<Option<i64>>,
    key_row: Vec<Option<Vec<u8>>>,
    rows: Vec<i64>,
    ends: Vec<i64>,
    touched_at: Vec<i64>,
    accumulators: Vec<BinaryBuilder>,
    writer: StateWriter,
}

impl SavedGroups {
    fn new(aggregates: usize, groups: usize) -> Self {
        // One buffer per aggregate, no allocation per group: a checkpoint of many groups is on
        // the refresh's path.
        Self {
            key_int: Vec::with_capacity(groups),
            key_row: Vec::with_capacity(groups),
            rows: Vec::with_capacity(groups),
            ends: Vec::with_capacity(groups),
            touched_at: Vec::with_capacity(groups),
            accumulators: (0..aggregates)
                .map(|_| BinaryBuilder::with_capacity(groups, groups * 16))
                .collect(),
            writer: StateWriter::new(),
        }
    }

    fn key(&mut self, key: Option<Key<'_>>) {
        match key {
            None => {
                self.key_int.push(None);
                self.key_row.push(None);
            }
            Some(Key::Int(value)) => {
                self.key_int.push(value);
                self.key_row.push(None);
            }
            Some(Key::Row(bytes)) => {
                self.key_int.push(None);
                self.key_row.push(Some(bytes.to_vec()));
            }
        }
    }

    /// The group `key` (`None` for a global aggregate's) in `slot` of `groups`.
    fn group(&mut self, groups: &Groups, key: Option<Key<'_>>, slot: u32) {
        self.key(key);
        let slot = slot as usize;
        self.rows.push(groups.marks[slot].rows);
        self.ends.push(groups.ends[slot]);
        self.touched_at.push(groups.touched_at[slot]);
        for (column, accumulator) in self.accumulators.iter_mut().zip(&groups.accumulators) {
            self.writer.clear();
            accumulator.save_slot(slot, &mut self.writer);
            column.append_value(self.writer.written());
        }
    }

    /// The saved group at `row` of `columns`, copied as it was saved.
    fn copy(&mut self, columns: &SavedColumns<'_>, row: usize) {
        self.key(Some(columns.key(row)));
        self.rows.push(columns.rows.value(row));
        self.ends.push(columns.ends.value(row));
        self.touched_at.push(columns.touched_at.value(row));
        for (column, saved) in self.accumulators.iter_mut().zip(&columns.accumulators) {
            column.append_value(saved.value(row));
        }
    }

    /// The group `key`, gone: a row count of zero.
    fn removed(&mut self, key: Key<'_>) {
        self.key(Some(key));
        self.rows.push(0);
        self.ends.push(i64::MAX);
        self.touched_at.push(i64::MAX);
        for column in &mut self.accumulators {
            column.append_value([]);
        }
    }
}

impl Aggregate {
    /// The whole state: a global aggregate's one group, or every group sorted by the hash of
    /// its key, with the hashes (see [`FrozenGroups`]) — the groups in slots and those still
    /// in the batch a restore kept.
    pub(super) fn save(&self) -> Result<SavedState> {
        if self.is_global() {
            let mut saved = SavedGroups::new(self.specs.len(), 1);
            saved.group(&self.parts[0], None, 0);
            return Ok(SavedState::Batches(vec![self.batch(saved, None)?]));
        }
        /// Where a saved group comes from.
        enum Source<'k> {
            Slot { part: usize, key: Key<'k>, slot: u32 },
            Frozen(usize),
        }
        let mut order: Vec<(u64, Source<'_>)> = Vec::new();
        for (part, groups) in self.parts.iter().enumerate() {
            for (key, &slot) in groups.slots.iter() {
                order.push((key_hash(key), Source::Slot { part, key, slot }));
            }
        }
        let frozen = self
            .frozen
            .as_ref()
            .map(|f| f.columns().map(|columns| (f, columns)))
            .transpose()?;
        if let Some((frozen, _)) = &frozen {
            order.extend(frozen.remaining().map(|(row, hash)| (hash, Source::Frozen(row))));
        }
        order.sort_unstable_by_key(|(hash, _)| *hash);
        let mut saved = SavedGroups::new(self.specs.len(), order.len());
        for (_, source) in &order {
            match *source {
                Source::Slot { part, key, slot } => saved.group(&self.parts[part], Some(key), slot),
                Source::Frozen(row) => {
                    if let Some((_, columns)) = &frozen {
                        saved.copy(columns, row);
                    }
                }
            }
        }
        let hashes = order.iter().map(|(hash, _)| *hash).collect();
        Ok(SavedState::Batches(vec![self.batch(saved, Some(hashes))?]))
    }

    /// The groups changed since the state was saved or restored — each one's state, or a row
    /// count of zero for one gone — when the parts keep them (see `Groups::changed`). Groups
    /// forgotten for closed windows or idleness are not listed (see
    /// [`Aggregate::apply_changes`]).
    pub(super) fn save_changes(&self) -> Result<Option<Vec<RecordBatch>>> {
        if self.is_global() {
            return Ok(None);
        }
        let mut listed = 0;
        for groups in &self.parts {
            match &groups.changed {
                Some(changed) => listed += changed.len(),
                None => return Ok(None),
            }
        }
        let mut saved = SavedGroups::new(self.specs.len(), listed);
        for groups in &self.parts {
            for key in groups.changed.iter().flat_map(KeyLog::keys) {
                match groups.slots.get(key) {
                    Some(&slot) => saved.group(groups, Some(key), slot),
                    None => saved.removed(key),
                }
            }
        }
        Ok(Some(vec![self.batch(saved, None)?]))
    }

    /// The saved groups as a batch, with the operator's counters in its metadata, and their
    /// keys' hashes when sorted by them.
    fn batch(&self, saved: SavedGroups, hashes: Option<Vec<u64>>) -> Result<RecordBatch> {
        let SavedGroups {
            key_int,
            key_row,
            rows,
            ends,
            touched_at,
            mut accumulators,
            ..
        } = saved;
        let mut fields = vec![
            Field::new("key_int", DataType::Int64, true),
            Field::new("key_row", DataType::Binary, true),
            Field::new("rows", DataType::Int64, false),
            Field::new("window_end", DataType::Int64, false),
            Field::new("touched_at", DataType::Int64, false),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(key_int)),
            Arc::new(key_row.iter().map(|k| k.as_deref()).collect::<BinaryArray>()),
            Arc::new(Int64Array::from(rows)),
            Arc::new(Int64Array::from(ends)),
            Arc::new(Int64Array::from(touched_at)),
        ];
        for (i, column) in accumulators.iter_mut().enumerate() {
            fields.push(Field::new(format!("aggregate_{i}"), DataType::Binary, false));
            columns.push(Arc::new(column.finish()));
        }
        let mut metadata = HashMap::new();
        if let Some(hashes) = hashes {
            fields.push(Field::new(HASH, DataType::UInt64, false));
            columns.push(Arc::new(UInt64Array::from(hashes)));
            metadata.insert(HASH_CHECK.to_string(), crate::operator::hashed::hash_check());
        }
        // Read in place when restored: its groups are loaded from it and it is dropped, or
        // kept as it is (a whole state saved sorted, see `frozen.rs`).
        metadata.insert(READ_IN_PLACE.to_string(), "true".to_string());
        metadata.insert(STARTED.to_string(), self.started.to_string());
        metadata.insert(LATE_ROWS.to_string(), self.late_rows.to_string());
        if let Some(bound) = self.closed_up_to {
            metadata.insert(CLOSED_UP_TO.to_string(), bound.to_string());
        }
        if let Some(cutoff) = self.forgotten_before {
            metadata.insert(FORGOTTEN_BEFORE.to_string(), cutoff.to_string());
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
        RecordBatch::try_new(schema, columns).map_err(internal)
    }

    pub(super) fn restore(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        self.load(batches, false)
    }

    /// Applies what [`Aggregate::save_changes`] saved over the restored state: each listed
    /// group replaces the group of its key, a row count of zero removes it. Groups the state
    /// TTL forgot since the whole state are forgotten again by the last cutoff (a row for one
    /// starts it afresh, as it did); groups of closed windows need nothing: rows for closed
    /// windows are dropped before they reach a group, and the next epoch forgets them.
    pub(super) fn apply_changes(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        if self.is_global() {
            return Err(mismatch("a global aggregate saves its whole state"));
        }
        self.load(batches, true)?;
        if let Some(cutoff) = self.forgotten_before {
            for part in &mut self.parts {
                part.forget_idle(cutoff);
            }
        }
        Ok(())
    }

    /// Loads saved groups: into an empty state, or (`replace`) over one, replacing groups.
    fn load(&mut self, batches: Vec<RecordBatch>, replace: bool) -> Result<()> {
        let [batch] =
            <[RecordBatch; 1]>::try_from(batches).map_err(|_| mismatch("an aggregate's state is one batch"))?;
        let metadata = batch.schema().metadata().clone();
        let number = |key: &str| -> Result<Option<i64>> {
            metadata
                .get(key)
                .map(|v| v.parse::<i64>().map_err(|_| mismatch(format!("{key} = {v}"))))
                .transpose()
        };
        self.started = metadata.get(STARTED).is_some_and(|v| v == "true");
        self.late_rows = number(LATE_ROWS)?.unwrap_or(0).max(0) as u64;
        self.closed_up_to = number(CLOSED_UP_TO)?;
        self.forgotten_before = number(FORGOTTEN_BEFORE)?;
        let saved = SavedColumns::of(&batch, self.specs.len())?;
        if self.is_global() {
            if batch.num_rows() != 1 {
                return Err(mismatch("a global aggregate's state is one group"));
            }
            return self.parts[0].load_group(&saved, 0, 0);
        }
        // A whole state saved sorted is kept as it is, its groups loaded as changes touch them
        // — unless groups are forgotten by time (windows, TTL), which passes over all of them.
        if !replace
            && self.closing.is_none()
            && self.state_ttl.is_none()
            && self.frozen.is_none()
            && self.parts.iter().all(|part| part.slots.is_empty())
            && let Some(frozen) = FrozenGroups::of(&batch, self.specs.len())?
        {
            self.frozen = Some(frozen);
            return Ok(());
        }
        let frozen = self
            .frozen
            .as_ref()
            .map(|f| f.columns().map(|columns| (f, columns)))
            .transpose()?;
        let frozen = frozen.as_ref().map(|(f, columns)| (*f, columns));
        // Each part loads its groups on a thread of its own (a million groups' keys are
        // hashed and inserted into the parts' maps).
        let loaded = run_parts_by_key(
            &mut self.parts,
            batch.num_rows(),
            |row| saved.key(row),
            |_, groups, rows| groups.load(&saved, rows, replace, frozen),
        );
        loaded.into_iter().collect()
    }
}

/// The columns of a saved state (see [`Aggregate::save`]).
pub(super) struct SavedColumns<'a> {
    key_int: &'a Int64Array,
    key_row: &'a BinaryArray,
    rows: &'a Int64Array,
    ends: &'a Int64Array,
    touched_at: &'a Int64Array,
    accumulators: Vec<&'a BinaryArray>,
}

impl<'a> SavedColumns<'a> {
    /// The columns of `batch`, a saved state of an aggregate of `aggregates` aggregates (and
    /// maybe its keys' hashes after them).
    pub(super) fn of(batch: &'a RecordBatch, aggregates: usize) -> Result<Self> {
        let hashed = batch.schema().fields().last().is_some_and(|f| f.name() == HASH);
        if batch.num_columns() != 5 + aggregates + usize::from(hashed) {
            return Err(mismatch("an aggregate's state has another number of aggregates"));
        }
        let int64 = |i: usize| -> Result<&'a Int64Array> {
            batch
                .column(i)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| mismatch("an aggregate's state column is not Int64"))
        };
        let binary = |i: usize| -> Result<&'a BinaryArray> {
            batch
                .column(i)
                .as_binary_opt::<i32>()
                .ok_or_else(|| mismatch("an aggregate's state column is not binary"))
        };
        Ok(Self {
            key_int: int64(0)?,
            key_row: binary(1)?,
            rows: int64(2)?,
            ends: int64(3)?,
            touched_at: int64(4)?,
            accumulators: (0..aggregates).map(|i| binary(5 + i)).collect::<Result<Vec<_>>>()?,
        })
    }

    pub(super) fn key(&self, row: usize) -> Key<'a> {
        if self.key_row.is_valid(row) {
            Key::Row(self.key_row.value(row))
        } else {
            Key::Int(self.key_int.is_valid(row).then(|| self.key_int.value(row)))
        }
    }
}

impl Groups {
    /// Loads the saved groups at `rows` (all of this part's keys): into an empty state, or
    /// (`replace`) over one, replacing groups.
    ///
    /// A group replaced that is still in the saved groups a restore kept (`frozen`) is marked
    /// taken there.
    fn load(
        &mut self,
        saved: &SavedColumns<'_>,
        rows: &[u32],
        replace: bool,
        frozen: Option<(&FrozenGroups, &SavedColumns<'_>)>,
    ) -> Result<()> {
        if !replace {
            self.reserve(rows.len());
        }
        for &row in rows {
            let row = row as usize;
            let key = saved.key(row);
            if replace {
                match self.slots.get(key) {
                    Some(&slot) => self.release(key, slot),
                    None => {
                        if let Some((frozen, columns)) = frozen {
                            frozen.take(columns, key);
                        }
                    }
                }
            }
            if saved.rows.value(row) == 0 {
                if replace {
                    continue;
                }
                return Err(mismatch("a saved group has no rows"));
            }
            let slot = self.allocate();
            if self.slots.insert(key, slot).is_some() {
                return Err(mismatch("a group is saved twice"));
            }
            self.load_group(saved, row, slot)?;
        }
        Ok(())
    }

    /// Loads the saved group at `row` into `slot`.
    pub(super) fn load_group(&mut self, saved: &SavedColumns<'_>, row: usize, slot: u32) -> Result<()> {
        let index = slot as usize;
        self.marks[index].rows = saved.rows.value(row);
        self.touched_at[index] = saved.touched_at.value(row);
        let end = saved.ends.value(row);
        self.ends[index] = end;
        if end != i64::MAX {
            *self.open_windows.entry(end).or_default() += 1;
        }
        for (accumulator, column) in self.accumulators.iter_mut().zip(&saved.accumulators) {
            let mut reader = StateReader::new(column.value(row));
            accumulator.restore_slot(index, &mut reader)?;
            if !reader.is_empty() {
                return Err(mismatch("an accumulator's state is longer than its kind's"));
            }
        }
        Ok(())
    }
}
