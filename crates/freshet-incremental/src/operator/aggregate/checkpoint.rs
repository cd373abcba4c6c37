//! An aggregate's state in a checkpoint: one row per group — its key as the key map holds it
//! (an integer, or bytes in Arrow's row format), its row count, window end and last touch, and
//! one binary value per aggregate (see `Accumulators::save_slot`) — with the operator's own
//! counters in the batch's metadata. Groups go back to the part their key hashes to, so a
//! checkpoint taken with one number of parts restores into another.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

use freshet_common::{Key, Result, part_of};

use super::{Aggregate, Groups};
use crate::checkpoint::{SavedState, StateReader, StateWriter, mismatch};
use crate::delta::internal;

const STARTED: &str = "started";
const CLOSED_UP_TO: &str = "closed_up_to";
const LATE_ROWS: &str = "late_rows";

impl Aggregate {
    pub(super) fn save(&self) -> Result<SavedState> {
        let (mut key_int, mut key_row) = (Vec::new(), Vec::new());
        let (mut rows, mut ends, mut touched_at) = (Vec::new(), Vec::new(), Vec::new());
        let groups: usize = self.parts.iter().map(|p| p.slots.len()).sum::<usize>().max(1);
        // One buffer per aggregate, no allocation per group: a checkpoint of many groups is on
        // the refresh's path.
        let mut accumulators: Vec<BinaryBuilder> = (0..self.specs.len())
            .map(|_| BinaryBuilder::with_capacity(groups, groups * 16))
            .collect();
        let mut writer = StateWriter::new();
        let mut save_slot = |groups: &Groups, slot: u32| {
            let slot = slot as usize;
            rows.push(groups.marks[slot].rows);
            ends.push(groups.ends[slot]);
            touched_at.push(groups.touched_at[slot]);
            for (column, accumulator) in accumulators.iter_mut().zip(&groups.accumulators) {
                writer.clear();
                accumulator.save_slot(slot, &mut writer);
                column.append_value(writer.written());
            }
        };
        if self.is_global() {
            key_int.push(None);
            key_row.push(None);
            save_slot(&self.parts[0], 0);
        } else {
            for groups in &self.parts {
                for (key, &slot) in groups.slots.iter() {
                    match key {
                        Key::Int(value) => {
                            key_int.push(value);
                            key_row.push(None);
                        }
                        Key::Row(bytes) => {
                            key_int.push(None);
                            key_row.push(Some(bytes.to_vec()));
                        }
                    }
                    save_slot(groups, slot);
                }
            }
        }
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
        metadata.insert(STARTED.to_string(), self.started.to_string());
        metadata.insert(LATE_ROWS.to_string(), self.late_rows.to_string());
        if let Some(bound) = self.closed_up_to {
            metadata.insert(CLOSED_UP_TO.to_string(), bound.to_string());
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
        let batch = RecordBatch::try_new(schema, columns).map_err(internal)?;
        Ok(SavedState::Batches(vec![batch]))
    }

    pub(super) fn restore(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        let [batch] =
            <[RecordBatch; 1]>::try_from(batches).map_err(|_| mismatch("an aggregate's state is one batch"))?;
        if batch.num_columns() != 5 + self.specs.len() {
            return Err(mismatch("an aggregate's state has another number of aggregates"));
        }
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
        let int64 = |i: usize| -> Result<&Int64Array> {
            batch
                .column(i)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| mismatch("an aggregate's state column is not Int64"))
        };
        let binary = |i: usize| -> Result<&BinaryArray> {
            batch
                .column(i)
                .as_binary_opt::<i32>()
                .ok_or_else(|| mismatch("an aggregate's state column is not binary"))
        };
        let (key_int, key_row) = (int64(0)?, binary(1)?);
        let (rows, ends, touched_at) = (int64(2)?, int64(3)?, int64(4)?);
        let accumulators = (0..self.specs.len())
            .map(|i| binary(5 + i))
            .collect::<Result<Vec<_>>>()?;
        let global = self.is_global();
        if global && batch.num_rows() != 1 {
            return Err(mismatch("a global aggregate's state is one group"));
        }
        let parts = self.parts.len();
        for row in 0..batch.num_rows() {
            let key = if key_row.is_valid(row) {
                Key::Row(key_row.value(row))
            } else {
                Key::Int(key_int.is_valid(row).then(|| key_int.value(row)))
            };
            let groups = &mut self.parts[if global { 0 } else { part_of(key, parts) }];
            let slot = if global {
                0
            } else {
                let slot = groups.allocate();
                if groups.slots.insert(key, slot).is_some() {
                    return Err(mismatch("a group is saved twice"));
                }
                slot
            };
            let index = slot as usize;
            groups.marks[index].rows = rows.value(row);
            groups.touched_at[index] = touched_at.value(row);
            let end = ends.value(row);
            groups.ends[index] = end;
            if end != i64::MAX {
                *groups.open_windows.entry(end).or_default() += 1;
            }
            for (accumulator, column) in groups.accumulators.iter_mut().zip(&accumulators) {
                let mut reader = StateReader::new(column.value(row));
                accumulator.restore_slot(index, &mut reader)?;
                if !reader.is_empty() {
                    return Err(mismatch("an accumulator's state is longer than its kind's"));
                }
            }
        }
        Ok(())
    }
}
