//! A join's state in a checkpoint: each side's kept rows with a `_weight` column (for `NOT IN`,
//! the left rows with NULL keys among the left ones and the right side's counts in the right
//! batch's metadata); under a state TTL two more batches, when each row came. A delta is each
//! side's change rows since the last checkpoint, in the same layout, applied as an epoch would.
//!
//! A whole state of a join without expiry, TTL or `NOT IN` is saved part by part (each batch
//! names its part in [`PART`]), each part's side with its index (`left_index` and
//! `left_positions`, `right_index` and `right_positions`; see [`super::frozen`]): restored
//! into as many parts, each side's rows are taken with their index as they are. Otherwise (or
//! into another number of parts, or under another index hash) the rows are indexed again.
//!
//! Such a join's delta is saved in the same layout — each part's side's changed rows, then their
//! index — and restored over a whole state taken with its index as one more layer of it (the
//! deltas' indexes merged into one; see [`Join::restore_deltas`]).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array};

use freshet_common::{ChangeBatch, Keys, PARALLEL_MIN_ROWS, Result, run_parts};

use super::frozen::SavedIndex;
use super::{Consolidate, Encoded, Join, Part, Side};
use crate::checkpoint::{READ_IN_PLACE, SavedState, mismatch};
use crate::delta::{Delta, internal};

/// Keys of a `NOT IN` join's saved state (the right side's batch's metadata).
const RIGHT_COUNT: &str = "right_count";
const RIGHT_NULL_COUNT: &str = "right_null_count";
/// The metadata key naming what a batch of a whole state holds (`left`, `right`, `left_born`,
/// `right_born`): a side's rows may be several batches. A state without it (written before)
/// is two batches, or four with the times, in that order.
const PART_OF: &str = "freshet.join.part_of";
/// The metadata key naming the part a batch of a whole state belongs to (with its index).
const PART: &str = "freshet.join.part";
/// The metadata key of an index batch holding the number of parts the state was saved in.
const PARTS: &str = "freshet.join.parts";

impl Join {
    /// Both sides' rows, consolidated, each with its weight; for `NOT IN`, the left side's rows
    /// with NULL keys too, and the right side's counts in its batch's metadata. With a state
    /// TTL, two more batches: when each row of either side came (`born`, ms).
    pub(super) fn save(&self) -> Result<SavedState> {
        if self.frozen_saving() {
            return self.save_indexed();
        }
        let mut left = Vec::with_capacity(self.parts.len() + 1);
        let mut right = Vec::with_capacity(self.parts.len());
        let (mut left_born, mut right_born) = (Vec::new(), Vec::new());
        for part in &self.parts {
            for (rows, out, born) in [
                (&part.left_rows, &mut left, &mut left_born),
                (&part.right_rows, &mut right, &mut right_born),
            ] {
                let (changes, borns) = rows.contents()?;
                out.extend(changes.into_iter().map(ChangeBatch::into_batch));
                born.extend(borns.iter().flatten().flatten());
            }
        }
        if !self.spec.null_aware {
            // Each side's batches as they are, named.
            let mut batches = Vec::with_capacity(left.len() + right.len() + 2);
            for (side, rows) in [("left", left), ("right", right)] {
                for batch in rows {
                    batches.push(tagged(batch, side)?);
                }
            }
            if self.state_ttl_ms.is_some() {
                batches.push(tagged(born_batch(left_born)?, "left_born")?);
                batches.push(tagged(born_batch(right_born)?, "right_born")?);
            }
            return Ok(SavedState::Batches(batches));
        }
        // NOT IN (never under a TTL): each side as one batch, the left with its NULL-key rows,
        // the right with the counts.
        let part = self.parts.first().ok_or_else(|| internal("a join without parts"))?;
        if !part.left_nulls.is_empty() {
            let parser = part.left_codec.parser();
            let columns = part
                .left_codec
                .decode(part.left_nulls.keys().map(|r| parser.parse(r)))?;
            let weights: Int64Array = part.left_nulls.values().copied().collect();
            let data = RecordBatch::try_new(self.spec.left_schema.clone(), columns).map_err(internal)?;
            left.push(ChangeBatch::from_parts(&data, Arc::new(weights))?.into_batch());
        }
        let right = concat_all(right)?;
        let mut metadata = std::collections::HashMap::new();
        metadata.insert(RIGHT_COUNT.to_string(), part.right_count.to_string());
        metadata.insert(RIGHT_NULL_COUNT.to_string(), part.right_null_count.to_string());
        let schema = Arc::new(right.schema().as_ref().clone().with_metadata(metadata));
        let right = right.with_schema(schema).map_err(internal)?;
        Ok(SavedState::Batches(vec![concat_all(left)?, right]))
    }

    /// Each side's changes since the state was saved or restored, as a state of the same
    /// layout (rows with weights, which [`Operator::apply_delta`] applies as an epoch would;
    /// with a state TTL, the epoch's time of each).
    pub(super) fn save_changes(&self) -> Result<Option<Vec<RecordBatch>>> {
        let Some(sides) = &self.changes else {
            return Ok(None);
        };
        if self.frozen_saving() {
            return self.save_changes_indexed(sides).map(Some);
        }
        let mut batches = Vec::with_capacity(4);
        let mut borns = Vec::with_capacity(2);
        for (logged, schema) in sides.iter().zip([&self.spec.left_schema, &self.spec.right_schema]) {
            let deltas: Vec<Delta> = logged.iter().map(|(delta, _)| delta.clone()).collect();
            let all = Delta::concat(schema, &deltas)?;
            // String views keep every buffer of the epochs they came from, which a checkpoint
            // would write whole: a TPC-H delta of 80,000 rows was 78 MB.
            let batch = super::arrangement::compact_views(all.into_change_batch()?.into_batch())?;
            // Read in place when restored, as the whole state's rows.
            batches.push(with_metadata(batch, &[(READ_IN_PLACE, "true")])?);
            let born: Vec<i64> = logged
                .iter()
                .flat_map(|(delta, at)| std::iter::repeat_n(*at, delta.len()))
                .collect();
            borns.push(born_batch(born)?);
        }
        if self.state_ttl_ms.is_some() {
            batches.extend(borns);
        }
        Ok(Some(batches))
    }

    /// Each side's changes (`logged`) as a whole state with its index saves them, part by
    /// part: the rows that reach the part's arrangement (a matchable key, a nonzero weight),
    /// then their index — so that a restore takes them as they are (see
    /// [`Join::restore_deltas`]).
    fn save_changes_indexed(&self, logged: &[Vec<(Delta, i64)>; 2]) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        let mut dealt = Vec::with_capacity(2);
        for (logged, side, schema) in [
            (&logged[0], Side::Left, &self.spec.left_schema),
            (&logged[1], Side::Right, &self.spec.right_schema),
        ] {
            let deltas: Vec<Delta> = logged.iter().map(|(delta, _)| delta.clone()).collect();
            let encoded = self.encode(Delta::concat(schema, &deltas)?, side)?;
            let weights = &encoded.delta.weights;
            let kept: Vec<u32> = (0..encoded.delta.len() as u32)
                .filter(|&i| encoded.matchable[i as usize] && weights.value(i as usize) != 0)
                .collect();
            let encoded = match kept.len() == encoded.delta.len() {
                true => encoded,
                false => encoded.take(&self.keys, &kept)?,
            };
            dealt.push(self.deal(encoded)?);
        }
        let mut sides: Vec<_> = dealt.into_iter().map(Vec::into_iter).collect();
        for p in 0..self.parts.len() {
            for (side, of_side) in [Side::Left, Side::Right].into_iter().zip(sides.iter_mut()) {
                let changes = of_side.next().ok_or_else(|| internal("a part without its changes"))?;
                // String views keep every buffer of the epochs they came from, which a checkpoint
                // would write whole: a TPC-H delta of 80,000 rows was 78 MB.
                let Encoded { delta, keys, .. } = changes;
                let batch = super::arrangement::compact_views(delta.into_change_batch()?.into_batch())?;
                self.push_indexed(&mut batches, p, side, vec![ChangeBatch::try_new(batch)?], &[keys])?;
            }
        }
        Ok(batches)
    }

    /// Whether a whole state is saved with its index (see the module's documentation).
    fn frozen_saving(&self) -> bool {
        !self.spec.null_aware && self.state_ttl_ms.is_none() && self.expiry.iter().all(Option::is_none)
    }

    /// Each part's sides' rows, then their index, named by side and part.
    fn save_indexed(&self) -> Result<SavedState> {
        let mut batches = Vec::new();
        for (p, part) in self.parts.iter().enumerate() {
            for (side, rows) in [(Side::Left, &part.left_rows), (Side::Right, &part.right_rows)] {
                let (changes, _) = rows.contents()?;
                if let Some(index) = rows.saved_index()? {
                    // One frozen layer and nothing else: its index is this state's as it is.
                    self.push_with_index(&mut batches, p, side, changes, index)?;
                    continue;
                }
                let schema = match side {
                    Side::Left => &self.spec.left_schema,
                    Side::Right => &self.spec.right_schema,
                };
                let mut keys = Vec::with_capacity(changes.len());
                for change in &changes {
                    let delta =
                        Delta::from_columns(schema, change.data().columns().to_vec(), change.weights().clone())?;
                    keys.push(self.encode(delta, side)?.keys);
                }
                self.push_indexed(&mut batches, p, side, changes, &keys)?;
            }
        }
        Ok(SavedState::Batches(batches))
    }

    /// Pushes part `p`'s rows of `side` (`changes`, whose rows' keys are `keys`), then their
    /// index, named by side and part.
    fn push_indexed(
        &self,
        batches: &mut Vec<RecordBatch>,
        p: usize,
        side: Side,
        changes: Vec<ChangeBatch>,
        keys: &[Keys],
    ) -> Result<()> {
        let index = super::frozen::build_index(keys)?;
        self.push_with_index(batches, p, side, changes, index)
    }

    /// [`Join::push_indexed`] with the rows' index made already.
    fn push_with_index(
        &self,
        batches: &mut Vec<RecordBatch>,
        p: usize,
        side: Side,
        changes: Vec<ChangeBatch>,
        (index, positions): (RecordBatch, RecordBatch),
    ) -> Result<()> {
        let name = side_name(side);
        // Read in place when restored: they are kept as they are.
        let in_place = [(READ_IN_PLACE, "true")];
        for change in changes {
            batches.push(tagged_part(change.into_batch(), name, p, &in_place)?);
        }
        let parts = self.parts.len().to_string();
        let check = super::frozen::hash_check();
        let meta = [
            (PARTS, parts.as_str()),
            (super::frozen::HASH_CHECK, check.as_str()),
            in_place[0],
        ];
        batches.push(tagged_part(index, &format!("{name}_index"), p, &meta)?);
        batches.push(tagged_part(positions, &format!("{name}_positions"), p, &in_place)?);
        Ok(())
    }

    /// Takes back a state [`Join::save_indexed`] wrote into as many parts, each side's rows
    /// with their index; `Ok(false)` when it cannot (the rows are then indexed again).
    fn restore_indexed(&mut self, batches: &[RecordBatch]) -> Result<bool> {
        let parts = self.parts.len();
        let fits = self.frozen_saving()
            && self.parts.iter().all(|p| p.left_rows.len() + p.right_rows.len() == 0)
            && self.indexed_for_parts(batches);
        if !fits {
            return Ok(false);
        }
        for p in 0..parts {
            for side in [Side::Left, Side::Right] {
                let name = side_name(side);
                let index = of_part_number(batches, &format!("{name}_index"), p);
                let positions = of_part_number(batches, &format!("{name}_positions"), p);
                let (Some(index), Some(positions)) = (index.first(), positions.first()) else {
                    return Err(mismatch("a join part's index without its positions"));
                };
                let (data, weights) = self.saved_rows(batches, side, p)?;
                let mut bytes = 0u64;
                for column in data.iter().flat_map(RecordBatch::columns) {
                    bytes += column.to_data().get_slice_memory_size().map_err(internal)? as u64;
                }
                let frozen = super::frozen::Frozen::new(index, positions, weights)?;
                let schema = match side {
                    Side::Left => &self.spec.left_schema,
                    Side::Right => &self.spec.right_schema,
                };
                let arrangement =
                    super::arrangement::Arrangement::with_frozen(schema, &self.keys, data, frozen, bytes)?;
                let part = &mut self.parts[p];
                match side {
                    Side::Left => part.left_rows = arrangement,
                    Side::Right => part.right_rows = arrangement,
                }
            }
        }
        Ok(true)
    }

    /// Whether `batches` hold every part's index of both sides, saved in as many parts and
    /// under the index hash of this process.
    fn indexed_for_parts(&self, batches: &[RecordBatch]) -> bool {
        let parts = self.parts.len();
        let check = super::frozen::hash_check();
        (0..parts).all(|p| {
            ["left_index", "right_index"].iter().all(|name| {
                of_part_number(batches, name, p).first().is_some_and(|b| {
                    let meta = b.schema_ref().metadata();
                    meta.get(PARTS) == Some(&parts.to_string()) && meta.get(super::frozen::HASH_CHECK) == Some(&check)
                })
            })
        })
    }

    /// Part `p`'s saved rows of `side` in `batches`, as batches of the side's schema, and their
    /// weights.
    fn saved_rows(&self, batches: &[RecordBatch], side: Side, p: usize) -> Result<(Vec<RecordBatch>, Vec<Int64Array>)> {
        let schema = match side {
            Side::Left => &self.spec.left_schema,
            Side::Right => &self.spec.right_schema,
        };
        let mut data = Vec::new();
        let mut weights = Vec::new();
        for batch in of_part_number(batches, side_name(side), p) {
            let change = ChangeBatch::try_new(batch)?;
            let rows = change.data();
            let options = RecordBatchOptions::new().with_row_count(Some(rows.num_rows()));
            let rows = RecordBatch::try_new_with_options(schema.clone(), rows.columns().to_vec(), &options)
                .map_err(|e| mismatch(format!("a join's saved rows: {e}")))?;
            weights.push(change.weights().clone());
            data.push(rows);
        }
        Ok((data, weights))
    }

    pub(super) fn restore(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        if batches.iter().any(|b| b.schema().metadata().contains_key(PART)) && self.restore_indexed(&batches)? {
            return Ok(());
        }
        let ttl = self.state_ttl_ms.is_some() && !self.spec.null_aware;
        let batches = match batches.iter().any(|b| b.schema().metadata().contains_key(PART_OF)) {
            false => batches,
            true if ttl => {
                // Each side (and its times) as one batch, in the order of the older layout.
                let mut grouped = Vec::with_capacity(4);
                for side in ["left", "right", "left_born", "right_born"] {
                    grouped.push(concat_all(of_part(&batches, side))?);
                }
                grouped
            }
            true => return self.restore_sides(of_part(&batches, "left"), of_part(&batches, "right")),
        };
        let expected = if ttl { 4 } else { 2 };
        if batches.len() != expected {
            return Err(mismatch(format!("a join's state is {expected} batches")));
        }
        let mut batches = batches.into_iter();
        let (Some(left), Some(right)) = (batches.next(), batches.next()) else {
            return Err(mismatch("a join's state is two batches"));
        };
        if ttl {
            // Rows go back with the time they came, which the TTL counts from: a batch per time.
            let borns = [batches.next(), batches.next()];
            for ((batch, born), (side, schema)) in [left, right].into_iter().zip(borns).zip([
                (Side::Left, self.spec.left_schema.clone()),
                (Side::Right, self.spec.right_schema.clone()),
            ]) {
                let born = born.ok_or_else(|| mismatch("a join's state without its rows' times"))?;
                let born = born
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .filter(|b| b.len() == batch.num_rows())
                    .ok_or_else(|| mismatch("a join's rows' times do not fit its rows"))?
                    .clone();
                let delta = Delta::from_changes(&schema, &[ChangeBatch::try_new(batch)?])?;
                let mut times: Vec<i64> = born.values().to_vec();
                times.sort_unstable();
                times.dedup();
                for time in times {
                    let rows: UInt32Array = (0..born.len() as u32)
                        .filter(|&i| born.value(i as usize) == time)
                        .collect();
                    let dealt = self.deal(self.encode(delta.take(&rows)?, side)?)?;
                    for (part, changes) in self.parts.iter_mut().zip(dealt) {
                        part.left_rows.set_born(time);
                        part.right_rows.set_born(time);
                        part.apply(&changes, side, Consolidate::Due)?;
                    }
                }
            }
            for part in &mut self.parts {
                part.left_rows.set_born(self.now_ms);
                part.right_rows.set_born(self.now_ms);
            }
            return Ok(());
        }
        if !self.spec.null_aware {
            return self.restore_sides(vec![left], vec![right]);
        }
        let count = |key: &str| -> Result<i64> {
            right
                .schema()
                .metadata()
                .get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| mismatch(format!("a NOT IN state without {key}")))
        };
        let (rows, null_rows) = (count(RIGHT_COUNT)?, count(RIGHT_NULL_COUNT)?);
        let mut dealt = Vec::with_capacity(2);
        for (batch, side, schema) in [
            (left, Side::Left, self.spec.left_schema.clone()),
            (right, Side::Right, self.spec.right_schema.clone()),
        ] {
            let changes = ChangeBatch::try_new(batch)?;
            let delta = Delta::from_changes(&schema, &[changes])?;
            dealt.push(self.deal(self.encode(delta, side)?)?);
        }
        let right = dealt.pop().ok_or_else(|| mismatch("no right side"))?;
        let left = dealt.pop().ok_or_else(|| mismatch("no left side"))?;
        let changed: usize = left.iter().chain(&right).map(|changes| changes.delta.len()).sum();
        // The parts' arrangements are indexed at once, as an epoch's changes are.
        let mut work: Vec<(&mut Part, (Encoded, Encoded))> =
            self.parts.iter_mut().zip(left.into_iter().zip(right)).collect();
        run_parts(&mut work, changed >= PARALLEL_MIN_ROWS, |_, (part, (left, right))| {
            part.apply_not_in(left, right, rows, null_rows)
        })
        .into_iter()
        .collect()
    }

    /// Takes the deltas saved after the whole state, in order. Over a state restored with its
    /// index, the deltas saved with their own (see [`Join::save_changes`]) are taken as they
    /// are: their rows, and one index merged from theirs, become one more layer of each part's
    /// arrangements (see [`super::arrangement::Arrangement::freeze_more`]). From the command
    /// line — a delta per process — applying every delta as an epoch's changes, each row put
    /// into a map, grew with every process until the next whole checkpoint. The deltas from the
    /// first one saved without an index on are applied so.
    pub(super) fn restore_deltas(&mut self, deltas: Vec<Vec<RecordBatch>>) -> Result<()> {
        let room = self
            .parts
            .iter()
            .flat_map(|part| [part.left_rows.layer_room(), part.right_rows.layer_room()])
            .min()
            .unwrap_or(0);
        let layered = match self.frozen_saving() && room > 0 {
            true => deltas.iter().take_while(|delta| self.indexed_for_parts(delta)).count(),
            false => 0,
        };
        let mut deltas = deltas.into_iter();
        let layers: Vec<Vec<RecordBatch>> = deltas.by_ref().take(layered).collect();
        if !layers.is_empty() {
            for p in 0..self.parts.len() {
                for side in [Side::Left, Side::Right] {
                    let name = side_name(side);
                    let mut saved = Vec::with_capacity(layers.len());
                    for delta in &layers {
                        let index = of_part_number(delta, &format!("{name}_index"), p);
                        let positions = of_part_number(delta, &format!("{name}_positions"), p);
                        let (Some(per_key), Some(positions)) = (index.into_iter().next(), positions.into_iter().next())
                        else {
                            return Err(mismatch("a join delta's index without its positions"));
                        };
                        let (data, weights) = self.saved_rows(delta, side, p)?;
                        saved.push((
                            data,
                            SavedIndex {
                                per_key,
                                positions,
                                weights,
                            },
                        ));
                    }
                    let part = &mut self.parts[p];
                    match side {
                        Side::Left => part.left_rows.freeze_more(saved)?,
                        Side::Right => part.right_rows.freeze_more(saved)?,
                    }
                }
            }
        }
        for delta in deltas {
            self.restore(delta)?;
        }
        Ok(())
    }

    /// Takes back each side's rows from several batches (of a whole state), a batch at a time
    /// (never all of a side at once), each dealt to the parts and indexed as an epoch's changes.
    fn restore_sides(&mut self, left: Vec<RecordBatch>, right: Vec<RecordBatch>) -> Result<()> {
        for (batches, side, schema) in [
            (left, Side::Left, self.spec.left_schema.clone()),
            (right, Side::Right, self.spec.right_schema.clone()),
        ] {
            for batch in batches {
                let delta = Delta::from_changes(&schema, &[ChangeBatch::try_new(batch)?])?;
                let rows = delta.len();
                let dealt = self.deal(self.encode(delta, side)?)?;
                let mut work: Vec<(&mut Part, Encoded)> = self.parts.iter_mut().zip(dealt).collect();
                run_parts(&mut work, rows >= PARALLEL_MIN_ROWS, |_, (part, changes)| {
                    part.apply(changes, side, Consolidate::Later)
                })
                .into_iter()
                .collect::<Result<()>>()?;
            }
        }
        Ok(())
    }
}

/// `batch` with [`PART_OF`] naming what it holds.
fn tagged(batch: RecordBatch, part_of: &str) -> Result<RecordBatch> {
    with_metadata(batch, &[(PART_OF, part_of)])
}

/// `batch` with [`PART_OF`] naming what it holds, [`PART`] its part, and more metadata.
fn tagged_part(batch: RecordBatch, part_of: &str, part: usize, more: &[(&str, &str)]) -> Result<RecordBatch> {
    let part = part.to_string();
    with_metadata(batch, &[&[(PART_OF, part_of), (PART, part.as_str())], more].concat())
}

/// `batch` with the metadata `tags` added.
fn with_metadata(batch: RecordBatch, tags: &[(&str, &str)]) -> Result<RecordBatch> {
    let mut metadata = batch.schema().metadata().clone();
    for (key, value) in tags {
        metadata.insert(key.to_string(), value.to_string());
    }
    let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(metadata));
    batch.with_schema(schema).map_err(internal)
}

/// The batches of a whole state that hold `part_of` of part `part`.
fn of_part_number(batches: &[RecordBatch], part_of: &str, part: usize) -> Vec<RecordBatch> {
    let part = part.to_string();
    batches
        .iter()
        .filter(|b| {
            let schema = b.schema();
            let meta = schema.metadata();
            meta.get(PART_OF).map(String::as_str) == Some(part_of) && meta.get(PART) == Some(&part)
        })
        .cloned()
        .collect()
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Left => "left",
        Side::Right => "right",
    }
}

/// The batches of a whole state that hold `part_of` (see [`PART_OF`]), without the name.
fn of_part(batches: &[RecordBatch], part_of: &str) -> Vec<RecordBatch> {
    batches
        .iter()
        .filter(|b| b.schema().metadata().get(PART_OF).map(String::as_str) == Some(part_of))
        .cloned()
        .collect()
}

/// When each of a side's saved rows came (ms), as a batch of one column.
fn born_batch(born: Vec<i64>) -> Result<RecordBatch> {
    RecordBatch::try_from_iter([("born", Arc::new(Int64Array::from(born)) as ArrayRef)]).map_err(internal)
}

/// The batches (of one schema, at least one) as one.
fn concat_all(batches: Vec<RecordBatch>) -> Result<RecordBatch> {
    match <[RecordBatch; 1]>::try_from(batches) {
        Ok([batch]) => Ok(batch),
        Err(batches) => {
            let schema = batches
                .first()
                .ok_or_else(|| internal("no batches to concatenate"))?
                .schema();
            datafusion::arrow::compute::concat_batches(&schema, &batches).map_err(internal)
        }
    }
}
