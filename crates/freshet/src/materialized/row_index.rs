//! Where each row of a materialized table is stored, so that an incremental refresh deletes the
//! rows it retracts by position instead of scanning the whole table for them.
//!
//! The index describes one version of the table. A refresh that finds the table at that version
//! takes the positions of its retractions from it and, once committed, adds the rows of the
//! files it wrote. Compactions in between are followed (the rows of the files they rewrote are
//! indexed again); any other commit to the table (a full refresh) makes the index stale, and the
//! next refresh scans the table once, as it would without an index, and builds a new one.
//! Tables above a size (setting `materialized-table.row-index.max-rows`) are not indexed: the
//! index would cost more memory than the scans it saves are worth.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{UInt32Type, UInt64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use futures::TryStreamExt;

use freshet_common::{FreshetError, Result, RowKey};
use freshet_storage::Snapshot;

/// Bytes an index entry costs besides its key's heap bytes: the map's slot (the key, inline
/// when short, and the locations).
const ENTRY_OVERHEAD: usize = 64;

/// Where copies of one row are: (file slot, row position in the file).
#[derive(Debug)]
enum Locations {
    One(u32, u64),
    Many(Vec<(u32, u64)>),
}

/// The rows of one version of a materialized table and where they are stored.
#[derive(Debug)]
pub(crate) struct RowIndex {
    /// The table version the index describes.
    version: u64,
    /// Data file paths by slot, and slots by path.
    files: Vec<String>,
    slots: foldhash::HashMap<String, u32>,
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
            files: Vec::new(),
            slots: foldhash::HashMap::default(),
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
    /// indexes the files it added. `false` when the table grew past what is indexed.
    pub(crate) async fn advance(&mut self, snapshot: &Arc<Snapshot>) -> Result<bool> {
        if snapshot.num_rows() > self.max_rows {
            return Ok(false);
        }
        let added: Vec<usize> = snapshot
            .manifest()
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| !self.slots.contains_key(&f.path))
            .map(|(i, _)| i)
            .collect();
        self.add_files(snapshot, added).await?;
        self.version = snapshot.version();
        Ok(true)
    }

    /// Brings the index to `snapshot`, a later version made by compactions only (the same rows
    /// in other files): forgets the locations in the files they removed and indexes the files
    /// they wrote — a read of the rewritten rows instead of the whole table. `false` when the
    /// table grew past what is indexed.
    pub(crate) async fn follow_compaction(&mut self, snapshot: &Arc<Snapshot>) -> Result<bool> {
        let present: foldhash::HashSet<&str> = snapshot.manifest().files.iter().map(|f| f.path.as_str()).collect();
        let gone: foldhash::HashSet<u32> = self
            .slots
            .iter()
            .filter(|(path, _)| !present.contains(path.as_str()))
            .map(|(_, &slot)| slot)
            .collect();
        if !gone.is_empty() {
            self.slots.retain(|_, slot| !gone.contains(slot));
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
        self.advance(snapshot).await
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
        let mut slot_of = |file: u32| -> Result<u32> {
            let path = &snapshot
                .manifest()
                .files
                .get(file as usize)
                .ok_or_else(|| FreshetError::Internal(format!("a position scan names file {file}")))?
                .path;
            if let Some(&slot) = self.slots.get(path) {
                return Ok(slot);
            }
            let slot = u32::try_from(self.files.len()).map_err(internal)?;
            self.files.push(path.clone());
            self.slots.insert(path.clone(), slot);
            Ok(slot)
        };
        let mut last: Option<(u32, u32)> = None;
        for (i, row) in rows.iter().enumerate() {
            let file = files.value(i);
            let slot = match last {
                Some((f, slot)) if f == file => slot,
                _ => {
                    let slot = slot_of(file)?;
                    last = Some((file, slot));
                    slot
                }
            };
            let location = (slot, positions.value(i));
            match self.rows.get_mut(row.data()) {
                Some(Locations::Many(all)) => all.push(location),
                Some(one) => {
                    if let Locations::One(s, p) = *one {
                        *one = Locations::Many(vec![(s, p), location]);
                    }
                }
                None => {
                    let key = RowKey::from(row.data());
                    self.bytes += key.heap_bytes() + ENTRY_OVERHEAD;
                    self.rows.insert(key, Locations::One(location.0, location.1));
                }
            }
        }
        Ok(())
    }
}

fn internal(e: impl std::fmt::Display) -> FreshetError {
    FreshetError::Internal(format!("row index: {e}"))
}
