//! Where each row of a materialized table is stored, so that an incremental refresh deletes the
//! rows it retracts by position instead of scanning the whole table for them.
//!
//! The index describes one version of the table. A refresh that finds the table at that version
//! takes the positions of its retractions from it and, once committed, adds the rows it
//! inserted where its writer says it put them. Compactions in between are followed: positions
//! are translated through the moves the table kept (`CompactionMoves`), or, when it kept none,
//! the rows of the files they wrote are read and indexed again. Any other commit to the table
//! (a full refresh) makes the index stale, and the next refresh scans the table once, as it
//! would without an index, and builds a new one.
//! Tables above a size (setting `materialized-table.row-index.max-rows`) are not indexed: the
//! index would cost more memory than the scans it saves are worth.
//!
//! Rows are found by their values. When the query's result has a unique key (the GROUP BY
//! columns of an aggregate), the index is keyed by it alone: one location per key, and a key of
//! one integer column is kept as an `i64` (`freshet_common::KeyMap`), so that the index of a
//! hundred thousand groups fits the cache. Otherwise the key is the whole row, and equal rows
//! share an entry with one location per copy.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Schema, UInt32Type, UInt64Type};
use futures::TryStreamExt;

use freshet_common::{
    FreshetError, Key, KeyCodec, KeyMap, Keys, PARALLEL_MIN_ROWS, Result, part_of, run_parts, run_parts_by_key,
};
use freshet_storage::{CompactionMoves, FileMoves, Placements, Snapshot, Table};

/// Where copies of one row are: (file slot, row position in the file), positions in 32 bits to
/// keep the map's entries small.
#[derive(Debug, Clone)]
#[allow(
    clippy::box_collection,
    reason = "a thin pointer keeps the map's entries at 16 bytes"
)]
enum Locations {
    One(u32, u32),
    Many(Box<Vec<(u32, u32)>>),
}

/// Why retractions could not be taken from the index.
#[derive(Debug)]
pub(crate) enum Untaken {
    /// A row to delete is not in the table.
    Missing,
    /// A row's data file is not in the version the index describes.
    FileGone,
}

/// The rows a refresh inserted and where its commit put them.
pub(crate) struct Inserted<'a> {
    /// The refresh's change rows, encoded by [`RowIndex::encode`].
    pub keys: &'a Keys,
    /// For each inserted row, in insertion order, its change row.
    pub rows: &'a UInt32Array,
    /// Where the commit put each inserted row.
    pub placements: &'a Placements,
}

/// Data file paths by slot, and slots by path.
#[derive(Debug, Default)]
struct FileSlots {
    files: Vec<String>,
    slots: foldhash::HashMap<String, u32>,
}

impl FileSlots {
    fn slot(&mut self, path: &str) -> Result<u32> {
        if let Some(&slot) = self.slots.get(path) {
            return Ok(slot);
        }
        let slot = u32::try_from(self.files.len()).map_err(internal)?;
        self.files.push(path.to_string());
        self.slots.insert(path.to_string(), slot);
        Ok(slot)
    }
}

/// The rows of one version of a materialized table and where they are stored.
#[derive(Debug)]
pub(crate) struct RowIndex {
    /// The table version the index describes.
    version: u64,
    files: FileSlots,
    /// The rows' locations by key, split into parts by a hash of the key
    /// (`freshet_common::part_of`), which a large refresh works on at once.
    parts: Vec<KeyMap<Locations>>,
    codec: KeyCodec,
    /// The columns whose values are a row's key: a unique key of the table, or all of them.
    key_columns: Vec<usize>,
    /// The key is unique: at most one row has it.
    unique: bool,
    /// Tables with more rows are not indexed.
    max_rows: u64,
}

impl RowIndex {
    /// Indexes every row of `snapshot` by `unique_key` (columns no two rows agree on) or, without
    /// one, by the whole row, in `parts` parts. `None` when the table is too large to index, or
    /// when its rows repeat a key meant to be unique.
    pub(crate) async fn build(
        snapshot: &Arc<Snapshot>,
        max_rows: u64,
        unique_key: Option<Vec<usize>>,
        parts: usize,
    ) -> Result<Option<Self>> {
        if snapshot.num_rows() > max_rows || max_rows == 0 {
            return Ok(None);
        }
        let fields = snapshot.schema().fields();
        let unique = unique_key
            .as_ref()
            .is_some_and(|key| !key.is_empty() && key.iter().all(|&c| c < fields.len()));
        let key_columns = match unique_key {
            Some(key) if unique => key,
            _ => (0..fields.len()).collect(),
        };
        let types: Vec<DataType> = key_columns.iter().map(|&c| fields[c].data_type().clone()).collect();
        let codec = KeyCodec::new(&types)?;
        let mut index = Self {
            version: snapshot.version(),
            files: FileSlots::default(),
            parts: (0..parts.max(1)).map(|_| codec.map()).collect(),
            codec,
            key_columns,
            unique,
            max_rows,
        };
        let all = (0..snapshot.manifest().files.len()).collect();
        Ok(index.add_files(snapshot, all).await?.then_some(index))
    }

    /// The version the index describes.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Memory the index holds, approximately.
    pub(crate) fn bytes(&self) -> usize {
        self.parts.iter().map(KeyMap::bytes).sum::<usize>()
            + self.files.files.iter().map(|f| 2 * f.len() + 64).sum::<usize>()
    }

    /// What the index is keyed by and holds, for EXPLAIN; `schema` is the table's.
    pub(crate) fn describe(&self, schema: &Schema) -> String {
        let by = if self.unique {
            let names: Vec<&str> = self
                .key_columns
                .iter()
                .filter_map(|&c| schema.fields().get(c).map(|f| f.name().as_str()))
                .collect();
            format!("by unique key ({})", names.join(", "))
        } else {
            "by whole row".to_string()
        };
        format!(
            "{by}: {} keys in {} files at version {}",
            self.parts.iter().map(KeyMap::len).sum::<usize>(),
            self.files.slots.len(),
            self.version
        )
    }

    /// The keys of rows of the table (its columns).
    pub(crate) fn encode(&self, columns: &[ArrayRef]) -> Result<Keys> {
        let key = self
            .key_columns
            .iter()
            .map(|&c| columns.get(c).cloned())
            .collect::<Option<Vec<ArrayRef>>>()
            .ok_or_else(|| {
                internal(format!(
                    "rows of {} columns, keyed by {:?}",
                    columns.len(),
                    self.key_columns
                ))
            })?;
        self.codec.encode(&key)
    }

    /// Takes the locations of the rows `retractions` retract out of the index: each is a row of
    /// `keys` (change rows encoded by [`RowIndex::encode`]), once per copy. Returns, per file of
    /// the version the index describes (`files`, from [`RowIndex::file_indices`]), the
    /// positions to delete. The parts work at once when there are many retractions. On an
    /// error the index must not be used again.
    pub(crate) fn take_all(
        &mut self,
        keys: &Keys,
        retractions: &[u32],
        files: &[Option<usize>],
    ) -> std::result::Result<Vec<Vec<u64>>, Untaken> {
        let data_files = files.iter().flatten().max().map_or(0, |&last| last + 1);
        let key_of = |k: usize| keys.key(retractions[k] as usize);
        let taken = run_parts_by_key(&mut self.parts, retractions.len(), key_of, |_, map, mine| {
            let mut doomed: Vec<Vec<u64>> = vec![Vec::new(); data_files];
            for k in map.probe_order(mine.iter().map(|&k| key_of(k as usize))) {
                let row = retractions[mine[k as usize] as usize];
                let (slot, position) = take(map, keys.key(row as usize)).ok_or(Untaken::Missing)?;
                let file = files.get(slot as usize).copied().flatten().ok_or(Untaken::FileGone)?;
                doomed[file].push(position);
            }
            Ok(doomed)
        });
        let mut all: Vec<Vec<u64>> = vec![Vec::new(); data_files];
        for part in taken {
            for (all, doomed) in all.iter_mut().zip(part?) {
                all.extend(doomed);
            }
        }
        Ok(all)
    }

    /// The index in `snapshot`'s file list of each file slot (`None`: the file is gone).
    pub(crate) fn file_indices(&self, snapshot: &Snapshot) -> Vec<Option<usize>> {
        let by_path: foldhash::HashMap<&str, usize> = snapshot
            .manifest()
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.as_str(), i))
            .collect();
        self.files
            .files
            .iter()
            .map(|path| by_path.get(path.as_str()).copied())
            .collect()
    }

    /// After the refresh that took its retractions from this index committed `snapshot`:
    /// indexes the rows it inserted, where `inserted` says they went, or by reading the files it
    /// added without. `false` when the table grew past what is indexed.
    pub(crate) async fn advance(&mut self, snapshot: &Arc<Snapshot>, inserted: Option<Inserted<'_>>) -> Result<bool> {
        if snapshot.num_rows() > self.max_rows {
            return Ok(false);
        }
        let added: Vec<usize> = snapshot
            .manifest()
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| !self.files.slots.contains_key(&f.path))
            .map(|(i, _)| i)
            .collect();
        // The writer's placements cover the added files when they hold every inserted row and
        // name every added file: then the files need not be read back.
        let placed = inserted.filter(|inserted| {
            let runs = inserted.placements.runs();
            inserted.placements.rows() == inserted.rows.len() as u64
                && added.iter().all(|&i| {
                    let path = &snapshot.manifest().files[i].path;
                    runs.iter().any(|run| &run.path == path)
                })
        });
        let consistent = match placed {
            Some(inserted) => self.add_placed(&inserted)?,
            None => self.add_files(snapshot, added).await?,
        };
        self.version = snapshot.version();
        Ok(consistent)
    }

    /// Indexes inserted rows where their placements say they are; `false` when one repeats a
    /// unique key.
    fn add_placed(&mut self, inserted: &Inserted<'_>) -> Result<bool> {
        // (change row, location) of each inserted row, then by part.
        let mut placed = Vec::with_capacity(inserted.rows.len());
        for run in inserted.placements.runs() {
            let slot = self.files.slot(&run.path)?;
            for k in 0..run.rows {
                let row = usize::try_from(run.start + k).map_err(internal)?;
                placed.push((inserted.rows.value(row), (slot, narrow(run.position + k)?)));
            }
        }
        let unique = self.unique;
        let key_of = |i: usize| inserted.keys.key(placed[i].0 as usize);
        let consistent = run_parts_by_key(&mut self.parts, placed.len(), key_of, |_, map, mine| {
            map.reserve(mine.len());
            let mut consistent = true;
            for i in map.probe_order(mine.iter().map(|&i| key_of(i as usize))) {
                let (row, location) = placed[mine[i as usize] as usize];
                consistent &= add_location(map, unique, inserted.keys.key(row as usize), location);
            }
            consistent
        });
        Ok(consistent.into_iter().all(|c| c))
    }

    /// Brings the index to `snapshot`, a later version of `table` made by compactions only
    /// (the same rows in other files). The positions in the files they rewrote are translated
    /// through the moves the table kept; without them, those locations are forgotten and the
    /// files the compactions wrote are read and indexed. `false` when the index cannot follow
    /// (it must be built again).
    pub(crate) async fn follow_compaction(&mut self, table: &Table, snapshot: &Arc<Snapshot>) -> Result<bool> {
        let moves: Option<Vec<Arc<CompactionMoves>>> = (self.version + 1..=snapshot.version())
            .map(|version| table.compaction_moves(version))
            .collect();
        if let Some(moves) = moves {
            for compaction in &moves {
                if !self.translate(compaction)? {
                    return Ok(false);
                }
            }
            return self.advance(snapshot, None).await;
        }
        self.forget_files_missing_from(snapshot);
        self.advance(snapshot, None).await
    }

    /// Moves every location in a file `compaction` rewrote to where it put the row. `false`
    /// when the index did not describe the compaction's base (it is then unusable).
    fn translate(&mut self, compaction: &CompactionMoves) -> Result<bool> {
        let mut moved: foldhash::HashMap<u32, FileMoves<'_>> = foldhash::HashMap::default();
        for path in compaction.rewritten() {
            // Every file the compaction rewrote has live rows, all of them indexed: a file the
            // index does not know means it does not describe the compaction's base.
            let (Some(&slot), Some(moves)) = (self.files.slots.get(path), compaction.of_file(path)) else {
                return Ok(false);
            };
            moved.insert(slot, moves);
        }
        let run_slots = compaction
            .placements()
            .runs()
            .iter()
            .map(|run| self.files.slot(&run.path))
            .collect::<Result<Vec<u32>>>()?;
        let relocate = |slot: &mut u32, position: &mut u32| -> Result<bool> {
            let Some(moves) = moved.get(slot) else {
                return Ok(true);
            };
            let Some((run, new)) = moves.locate_run(u64::from(*position)) else {
                return Ok(false);
            };
            *slot = run_slots[run];
            *position = narrow(new)?;
            Ok(true)
        };
        let entries: usize = self.parts.iter().map(KeyMap::len).sum();
        let relocated = run_parts(&mut self.parts, entries >= PARALLEL_MIN_ROWS, |_, map| {
            for locations in map.values_mut() {
                let relocated = match locations {
                    Locations::One(slot, position) => relocate(slot, position)?,
                    Locations::Many(all) => {
                        let mut all_relocated = true;
                        for (slot, position) in all.iter_mut() {
                            all_relocated &= relocate(slot, position)?;
                        }
                        all_relocated
                    }
                };
                if !relocated {
                    return Ok(false);
                }
            }
            Ok(true)
        });
        if !relocated
            .into_iter()
            .collect::<Result<Vec<bool>>>()?
            .into_iter()
            .all(|r| r)
        {
            return Ok(false);
        }
        for path in compaction.rewritten() {
            self.files.slots.remove(path);
        }
        Ok(true)
    }

    /// Forgets the locations in files `snapshot` no longer has.
    fn forget_files_missing_from(&mut self, snapshot: &Snapshot) {
        let present: foldhash::HashSet<&str> = snapshot.manifest().files.iter().map(|f| f.path.as_str()).collect();
        let gone: foldhash::HashSet<u32> = self
            .files
            .slots
            .iter()
            .filter(|(path, _)| !present.contains(path.as_str()))
            .map(|(_, &slot)| slot)
            .collect();
        if gone.is_empty() {
            return;
        }
        self.files.slots.retain(|_, slot| !gone.contains(slot));
        for map in &mut self.parts {
            map.retain(|locations| match locations {
                Locations::One(slot, _) => !gone.contains(slot),
                Locations::Many(all) => {
                    all.retain(|(slot, _)| !gone.contains(slot));
                    match all[..] {
                        [] => false,
                        [(slot, position)] => {
                            *locations = Locations::One(slot, position);
                            true
                        }
                        _ => true,
                    }
                }
            });
        }
    }

    /// Reads and indexes the rows of some files of `snapshot`; `false` when one repeats a
    /// unique key.
    async fn add_files(&mut self, snapshot: &Arc<Snapshot>, files: Vec<usize>) -> Result<bool> {
        let columns = snapshot.schema().fields().len();
        let mut batches = snapshot.scan_files(files, None, true);
        while let Some(batch) = batches.try_next().await? {
            if !self.add_batch(snapshot, &batch, columns)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Adds the rows of a position scan: the table's columns, then the file index and the
    /// position. `false` when one repeats a unique key.
    fn add_batch(&mut self, snapshot: &Snapshot, batch: &RecordBatch, columns: usize) -> Result<bool> {
        let (Some(files), Some(positions)) = (
            batch.column(columns).as_primitive_opt::<UInt32Type>(),
            batch.column(columns + 1).as_primitive_opt::<UInt64Type>(),
        ) else {
            return Err(FreshetError::Internal("a position scan without positions".into()));
        };
        let keys = self.encode(&batch.columns()[..columns])?;
        let parts = self.parts.len();
        let mut last: Option<(u32, u32)> = None;
        let mut consistent = true;
        for i in 0..keys.len() {
            let file = files.value(i);
            let slot = match last {
                Some((f, slot)) if f == file => slot,
                _ => {
                    let path = &snapshot
                        .manifest()
                        .files
                        .get(file as usize)
                        .ok_or_else(|| FreshetError::Internal(format!("a position scan names file {file}")))?
                        .path;
                    let slot = self.files.slot(path)?;
                    last = Some((file, slot));
                    slot
                }
            };
            let key = keys.key(i);
            let map = &mut self.parts[part_of(key, parts)];
            consistent &= add_location(map, self.unique, key, (slot, narrow(positions.value(i))?));
        }
        Ok(consistent)
    }
}

/// Adds a location of the row whose key is `key` to `map`; `false` when the key is `unique`
/// and already indexed (the table then breaks the key, and the index must not be used).
fn add_location(map: &mut KeyMap<Locations>, unique: bool, key: Key<'_>, location: (u32, u32)) -> bool {
    match map.get_mut(key) {
        Some(_) if unique => false,
        Some(Locations::Many(all)) => {
            all.push(location);
            true
        }
        Some(one @ Locations::One(..)) => {
            if let Locations::One(s, p) = *one {
                *one = Locations::Many(Box::new(vec![(s, p), location]));
            }
            true
        }
        None => {
            map.insert(key, Locations::One(location.0, location.1));
            true
        }
    }
}

/// Takes one location of the row whose key is `key` out of `map`, as (file slot, position);
/// `None` when the table holds no copy of the row.
fn take(map: &mut KeyMap<Locations>, key: Key<'_>) -> Option<(u32, u64)> {
    // Removed, then put back when copies remain: one probe for the usual single row.
    let (slot, position) = match map.remove(key)? {
        Locations::One(slot, position) => (slot, position),
        Locations::Many(mut all) => {
            let (slot, position) = all.pop()?;
            match all[..] {
                [] => {}
                [(slot, position)] => {
                    map.insert(key, Locations::One(slot, position));
                }
                _ => {
                    map.insert(key, Locations::Many(all));
                }
            }
            (slot, position)
        }
    };
    Some((slot, u64::from(position)))
}

/// A row position as the index keeps it.
fn narrow(position: u64) -> Result<u32> {
    u32::try_from(position).map_err(|_| internal(format!("row position {position} beyond what the index keeps")))
}

fn internal(e: impl std::fmt::Display) -> FreshetError {
    FreshetError::Internal(format!("row index: {e}"))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::RecordBatch;

    use super::*;
    use crate::Engine;

    /// Takes every row of `snapshot` out of `index` by its key, and checks that each comes out
    /// at its own file and position.
    async fn assert_describes(index: &mut RowIndex, snapshot: &Arc<Snapshot>) {
        let columns = snapshot.schema().fields().len();
        let files = index.file_indices(snapshot);
        let all = (0..snapshot.manifest().files.len()).collect();
        let batches: Vec<RecordBatch> = snapshot.scan_files(all, None, true).try_collect().await.unwrap();
        let mut taken = 0;
        for batch in &batches {
            let keys = index.encode(&batch.columns()[..columns]).unwrap();
            let file_of = batch.column(columns).as_primitive::<UInt32Type>();
            let position_of = batch.column(columns + 1).as_primitive::<UInt64Type>();
            for row in 0..batch.num_rows() {
                let doomed = index.take_all(&keys, &[row as u32], &files).unwrap();
                let located: Vec<(usize, u64)> = doomed
                    .iter()
                    .enumerate()
                    .flat_map(|(file, positions)| positions.iter().map(move |&p| (file, p)))
                    .collect();
                assert_eq!(located, vec![(file_of.value(row) as usize, position_of.value(row))]);
                taken += 1;
            }
        }
        assert_eq!(taken, snapshot.num_rows());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_index_follows_a_compaction_with_or_without_its_moves() {
        for keep_moves in [true, false] {
            // Small files, and no compaction but the one asked for.
            let engine = Engine::builder()
                .location("memory://")
                .max_file_rows(4)
                .compact_min_files(1_000)
                .open()
                .await
                .unwrap();
            engine.sql("CREATE TABLE t (k INT, v INT)").await.unwrap();
            for i in 0..6 {
                let (from, to) = (i * 10, i * 10 + 9);
                engine
                    .sql(&format!(
                        "INSERT INTO t SELECT value, value * 10 FROM generate_series({from}, {to})"
                    ))
                    .await
                    .unwrap();
            }
            engine.sql("DELETE FROM t WHERE k % 3 = 0").await.unwrap();
            let table = engine.inner.catalog.table("t").unwrap();
            let before = table.snapshot();
            // Keyed by a unique column, and by the whole row.
            let mut indices = Vec::new();
            for key in [Some(vec![0]), None] {
                indices.push(RowIndex::build(&before, 1_000, key, 2).await.unwrap().unwrap());
            }
            if keep_moves {
                table.keep_compaction_moves();
            }
            let version = table.compact().await.unwrap().expect("a compaction");
            let after = table.snapshot();
            assert_eq!(after.version(), version);
            // Without the moves, the index forgets the rewritten files and reads the new ones.
            assert_eq!(table.compaction_moves(version).is_some(), keep_moves);
            for index in &mut indices {
                assert!(index.follow_compaction(&table, &after).await.unwrap());
                assert_eq!(index.version(), version);
                assert_describes(index, &after).await;
            }
            engine.close().await;
        }
    }
}
