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

use std::collections::hash_map::Entry;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{UInt32Type, UInt64Type};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use futures::TryStreamExt;

use freshet_common::{FreshetError, Result, RowKey, in_probe_order};
use freshet_storage::{CompactionMoves, FileMoves, Placements, Snapshot, Table};

/// Bytes an index entry costs besides its key's heap bytes: the map's slot (the key, inline
/// when short, and the locations).
const ENTRY_OVERHEAD: usize = 64;

/// Where copies of one row are: (file slot, row position in the file).
#[derive(Debug)]
enum Locations {
    One(u32, u64),
    Many(Vec<(u32, u64)>),
}

/// The rows a refresh inserted and where its commit put them.
pub(crate) struct Inserted<'a> {
    /// The refresh's change rows, encoded by the index's converter.
    pub keys: &'a Rows,
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
    rows: foldhash::HashMap<RowKey, Locations>,
    converter: RowConverter,
    bytes: usize,
    /// Tables with more rows are not indexed.
    max_rows: u64,
}

impl RowIndex {
    /// Indexes every row of `snapshot`, or `None` when the table is too large to index.
    pub(crate) async fn build(snapshot: &Arc<Snapshot>, max_rows: u64) -> Result<Option<Self>> {
        if snapshot.num_rows() > max_rows || max_rows == 0 {
            return Ok(None);
        }
        let fields = snapshot
            .schema()
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        let mut index = Self {
            version: snapshot.version(),
            files: FileSlots::default(),
            rows: foldhash::HashMap::default(),
            converter: RowConverter::new(fields).map_err(internal)?,
            bytes: 0,
            max_rows,
        };
        index
            .add_files(snapshot, (0..snapshot.manifest().files.len()).collect())
            .await?;
        Ok(Some(index))
    }

    /// The version the index describes.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Memory the index holds, approximately.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Encodes rows (the table's columns) as the index's keys.
    pub(crate) fn converter(&self) -> &RowConverter {
        &self.converter
    }

    /// Orders `keys` (with their payloads) by where the index's map keeps them, so that
    /// probing for them sweeps the map's memory (see `freshet_common::probe_order`).
    pub(crate) fn in_probe_order<'k, T>(&self, keys: impl Iterator<Item = (&'k [u8], T)>) -> Vec<(&'k [u8], T)> {
        in_probe_order(self.rows.hasher(), self.rows.capacity(), keys.collect(), |(key, _)| key)
    }

    /// Takes `count` locations of the row `key` out of the index, as (file slot, position);
    /// `None` when the table holds fewer copies of the row.
    pub(crate) fn take(&mut self, key: &[u8], count: usize) -> Option<Vec<(u32, u64)>> {
        let taken = match self.rows.get_mut(key)? {
            Locations::One(slot, position) if count == 1 => {
                let found = (*slot, *position);
                self.remove(key);
                vec![found]
            }
            Locations::One(..) => return None,
            Locations::Many(all) if all.len() < count => return None,
            Locations::Many(all) => {
                let taken = all.split_off(all.len() - count);
                if all.is_empty() {
                    self.remove(key);
                }
                taken
            }
        };
        Some(taken)
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

    fn remove(&mut self, key: &[u8]) {
        if let Some((key, _)) = self.rows.remove_entry(key) {
            self.bytes = self.bytes.saturating_sub(key.heap_bytes() + ENTRY_OVERHEAD);
        }
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
        match placed {
            Some(inserted) => self.add_placed(&inserted)?,
            None => self.add_files(snapshot, added).await?,
        }
        self.version = snapshot.version();
        Ok(true)
    }

    fn add_placed(&mut self, inserted: &Inserted<'_>) -> Result<()> {
        self.rows.reserve(inserted.rows.len());
        // The keys are copied in the order of the change rows (reading them in probe order
        // would miss the cache at each), then put in probe order.
        let mut placed = Vec::with_capacity(inserted.rows.len());
        for run in inserted.placements.runs() {
            let slot = self.files.slot(&run.path)?;
            for k in 0..run.rows {
                let row = usize::try_from(run.start + k).map_err(internal)?;
                let key = inserted.keys.row(inserted.rows.value(row) as usize).data();
                placed.push((RowKey::from(key), (slot, run.position + k)));
            }
        }
        let placed = in_probe_order(self.rows.hasher(), self.rows.capacity(), placed, |(key, _)| key);
        for (key, location) in placed {
            self.add_location(key, location);
        }
        Ok(())
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
        let relocate = |slot: &mut u32, position: &mut u64| -> Result<bool> {
            let Some(moves) = moved.get(slot) else {
                return Ok(true);
            };
            let Some((run, new)) = moves.locate_run(*position) else {
                return Ok(false);
            };
            *slot = run_slots[run];
            *position = new;
            Ok(true)
        };
        for locations in self.rows.values_mut() {
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
        let mut freed = 0;
        self.rows.retain(|key, locations| {
            let keep = match locations {
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
            };
            if !keep {
                freed += key.heap_bytes() + ENTRY_OVERHEAD;
            }
            keep
        });
        self.bytes = self.bytes.saturating_sub(freed);
    }

    async fn add_files(&mut self, snapshot: &Arc<Snapshot>, files: Vec<usize>) -> Result<()> {
        let columns = snapshot.schema().fields().len();
        let mut batches = snapshot.scan_files(files, None, true);
        while let Some(batch) = batches.try_next().await? {
            self.add_batch(snapshot, &batch, columns)?;
        }
        Ok(())
    }

    /// Adds the rows of a position scan: the table's columns, then the file index and the
    /// position.
    fn add_batch(&mut self, snapshot: &Snapshot, batch: &RecordBatch, columns: usize) -> Result<()> {
        let (Some(files), Some(positions)) = (
            batch.column(columns).as_primitive_opt::<UInt32Type>(),
            batch.column(columns + 1).as_primitive_opt::<UInt64Type>(),
        ) else {
            return Err(FreshetError::Internal("a position scan without positions".into()));
        };
        let rows = self
            .converter
            .convert_columns(&batch.columns()[..columns])
            .map_err(internal)?;
        let mut last: Option<(u32, u32)> = None;
        for (i, row) in rows.iter().enumerate() {
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
            self.add_location(RowKey::from(row.data()), (slot, positions.value(i)));
        }
        Ok(())
    }

    fn add_location(&mut self, key: RowKey, location: (u32, u64)) {
        match self.rows.entry(key) {
            Entry::Occupied(mut entry) => match entry.get_mut() {
                Locations::Many(all) => all.push(location),
                one @ Locations::One(..) => {
                    if let Locations::One(s, p) = *one {
                        *one = Locations::Many(vec![(s, p), location]);
                    }
                }
            },
            Entry::Vacant(entry) => {
                self.bytes += entry.key().heap_bytes() + ENTRY_OVERHEAD;
                entry.insert(Locations::One(location.0, location.1));
            }
        }
    }
}

fn internal(e: impl std::fmt::Display) -> FreshetError {
    FreshetError::Internal(format!("row index: {e}"))
}
