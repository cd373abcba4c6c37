//! A write to one table: rows inserted, rows deleted by position, committed as one version.
//!
//! The protocol: data, retraction and deletion-vector files are written first, each under a new
//! unique name; then the manifest of the next version is created with a conditional put. The
//! manifest is the commit point: until it exists, no reader can see any of the new files, and a
//! failure (or a crash) before it leaves only unreferenced files that VACUUM removes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Array, RecordBatch, UInt64Array};
use datafusion::object_store::{ObjectStoreExt, PutPayload};
use futures::{StreamExt, TryStreamExt};
use roaring::RoaringTreemap;
use tokio::sync::OwnedMutexGuard;

use freshet_common::{FreshetError, Result};

use crate::keys::{KeyDelta, KeyEncoder, KeyIndex};
use crate::layout::{FileKind, new_file_name, table_file};
use crate::log::Created;
use crate::manifest::{
    ChangeFile, Changes, DataFile, DeletionVector, FORMAT_VERSION, GeneratedRows, Manifest, StateCheckpoint, StateFile,
};
use crate::snapshot::{KnownDeletes, Snapshot};
use crate::table::{Table, Tier, WriterState};
use crate::write::{ParallelWriter, Placements, Written, write_deletes};

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The version committed, or the unchanged current version when nothing changed.
    pub version: u64,
    /// Rows inserted.
    pub inserted: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Where the inserted rows are: the stream is every row given to
    /// [`Transaction::insert`], in order.
    pub placements: Placements,
}

/// An open write to a table. Dropping it without [`Transaction::commit`] abandons it: nothing
/// becomes visible.
pub struct Transaction {
    table: Arc<Table>,
    writer: OwnedMutexGuard<WriterState>,
    base: Arc<Snapshot>,
    operation: String,
    inserts: Option<ParallelWriter>,
    retractions: Option<ParallelWriter>,
    deletes: BTreeMap<usize, RoaringTreemap>,
    keys: Option<(KeyEncoder, KeyDelta)>,
    /// Rows whose keys were looked up in the table rather than in its index (see
    /// [`crate::keys::PROBE_MAX_ROWS`]).
    probed: usize,
    /// Every data file of the base version is dropped whole.
    removed_all: bool,
    /// The table's new columns, when the transaction replaces every row and the schema.
    new_schema: Option<datafusion::arrow::datatypes::SchemaRef>,
    refresh: Option<serde_json::Value>,
    /// A new checkpoint of operator state, or none (`Some(None)`); the base version's is kept
    /// otherwise.
    state: Option<Option<StateCheckpoint>>,
    /// How the transaction's files are compressed.
    tier: Tier,
    inserted: u64,
    /// Generated rows inserted ([`Transaction::insert_generated`]).
    generated: Vec<ChangeFile>,
    /// Rows deleted by position.
    deleted: u64,
    /// Deleted rows whose values were given.
    retracted: u64,
    /// The columns an UPDATE sets (see [`Transaction::updates_columns`]).
    updated: Option<Vec<String>>,
}

/// Why positions cannot be deleted.
enum Refused {
    /// A position is given twice.
    Twice,
    /// A position is beyond the file's rows.
    Beyond(u64),
}

/// `positions` (of rows of a file of `rows` rows) sorted, when each is below `rows` and given
/// once. Many positions in a file are marked in a bitset of its rows (one pass, no sort); a few
/// are sorted.
fn sorted_distinct(mut positions: Vec<u64>, rows: u64) -> std::result::Result<Vec<u64>, Refused> {
    if let Some(&beyond) = positions.iter().find(|&&p| p >= rows) {
        return Err(Refused::Beyond(beyond));
    }
    if (positions.len() as u64).saturating_mul(64) < rows {
        positions.sort_unstable();
        if positions.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(Refused::Twice);
        }
        return Ok(positions);
    }
    let mut marked = vec![0u64; rows.div_ceil(64) as usize];
    for &position in &positions {
        let (word, bit) = ((position / 64) as usize, 1u64 << (position % 64));
        if marked[word] & bit != 0 {
            return Err(Refused::Twice);
        }
        marked[word] |= bit;
    }
    positions.clear();
    for (word, &bits) in marked.iter().enumerate() {
        let mut bits = bits;
        while bits != 0 {
            positions.push(word as u64 * 64 + u64::from(bits.trailing_zeros()));
            bits &= bits - 1;
        }
    }
    Ok(positions)
}

/// Generated rows one entry of a manifest's files holds at most: consecutive ingestions of a
/// generator extend one entry (a manifest lists every file, and a rate-limited generator
/// ingests ten times a second), up to a size that still lets a scan read several on its cores.
const MAX_GENERATED_ENTRY_ROWS: u64 = 1 << 22;

/// Whether `rows` generated rows starting at `next` go on where the entry `last` ends: rows of
/// the same generator and origin, right after its own, none of them deleted.
fn extends_generated(last: &DataFile, next: &GeneratedRows, rows: u64) -> bool {
    last.deletes.is_none()
        && last.rows + rows <= MAX_GENERATED_ENTRY_ROWS
        && last.generated.as_ref().is_some_and(|generated| {
            generated.origin_ms == next.origin_ms
                && generated.generator == next.generator
                && generated.first + last.rows == next.first
        })
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("table", &self.table.name())
            .field("base", &self.base.version())
            .field("operation", &self.operation)
            .finish()
    }
}

impl Transaction {
    pub(crate) fn new(
        table: Arc<Table>,
        writer: OwnedMutexGuard<WriterState>,
        base: Arc<Snapshot>,
        operation: &str,
    ) -> Self {
        Self {
            table,
            writer,
            base,
            operation: operation.into(),
            inserts: None,
            retractions: None,
            deletes: BTreeMap::new(),
            keys: None,
            probed: 0,
            removed_all: false,
            new_schema: None,
            refresh: None,
            state: None,
            tier: Tier::Fresh,
            inserted: 0,
            generated: Vec::new(),
            deleted: 0,
            retracted: 0,
            updated: None,
        }
    }

    /// Says that the transaction is an UPDATE setting the columns `columns` (indices): every
    /// row it deletes by position is inserted again, with new values in those columns only.
    /// Its version then says so ([`Changes::updated`]), and a change read of other columns
    /// leaves its changes out ([`ChangeSet::stream_read`](crate::ChangeSet::stream_read)).
    /// The version says nothing when the rows deleted and inserted are not as many.
    pub fn updates_columns(&mut self, columns: &[usize]) {
        let schema = self.base.schema();
        self.updated = Some(columns.iter().map(|&i| schema.field(i).name().clone()).collect());
    }

    /// Writes the transaction's files without compression: faster to write and to read, larger
    /// until a compaction rewrites them. For writes on a latency path whose files compaction
    /// soon merges (a materialized table's refresh). Affects the files started after the call.
    pub fn write_uncompressed(&mut self) {
        self.tier = Tier::Uncompressed;
    }

    /// The version this transaction writes on top of. No other writer can commit while the
    /// transaction is open, so positions read from this snapshot stay valid.
    pub fn base(&self) -> &Arc<Snapshot> {
        &self.base
    }

    /// Inserts rows. The batch's columns must match the table's; NOT NULL columns and the primary
    /// key are checked here.
    pub async fn insert(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = self.conform(batch)?;
        if !self.base.primary_key().is_empty() {
            let duplicate = match self.probes(batch.num_rows())? {
                true => {
                    let (encoder, delta) = self.keys.as_mut().ok_or_else(missing_index)?;
                    let found = crate::keys::probe(&self.base, encoder, &batch, |key| delta.removed(key)).await?;
                    delta.add_probed(&found, &encoder.encode(&batch)?)
                }
                false => {
                    self.ensure_key_index().await?;
                    let (encoder, delta) = self.keys.as_mut().ok_or_else(missing_index)?;
                    let index = self.writer.keys.as_ref();
                    if index.is_none() && !delta.cleared {
                        return Err(missing_index());
                    }
                    delta.add(index, &encoder.encode(&batch)?)
                }
            };
            if let Some(row) = duplicate {
                let (encoder, _) = self.keys.as_ref().ok_or_else(missing_index)?;
                return Err(FreshetError::DuplicateKey {
                    table: self.table.name().into(),
                    columns: self.base.primary_key().join(", "),
                    key: encoder.render(&batch, row),
                });
            }
        }
        let rows = batch.num_rows() as u64;
        let writer = self.inserts.get_or_insert_with(|| {
            ParallelWriter::new(
                self.table.writer_template(
                    FileKind::Data,
                    self.tier,
                    self.new_schema.as_ref().unwrap_or(self.base.schema()),
                ),
                self.table.options.write_parallelism,
            )
        });
        writer.write(batch).await?;
        self.inserted += rows;
        Ok(())
    }

    /// Inserts `count` rows that the table's generator makes whenever they are read
    /// ([`GeneratedRows`]) rather than writing them: the caller has them in hand and they are
    /// exactly what the generator makes. Only for tables without a primary key.
    pub fn insert_generated(&mut self, rows: GeneratedRows, count: u64) -> Result<()> {
        if !self.base.primary_key().is_empty() {
            return Err(FreshetError::Internal(format!(
                "table \"{}\" has a primary key: generated rows are not checked against it",
                self.table.name()
            )));
        }
        if count == 0 {
            return Ok(());
        }
        self.generated.push(ChangeFile {
            path: rows.path(count),
            rows: count,
            bytes: 0,
            generated: Some(rows),
        });
        self.inserted += count;
        Ok(())
    }

    /// Deletes rows of the base version by position. `rows` are the deleted rows' values (the
    /// table's columns), which become the version's retractions.
    pub async fn delete(&mut self, file: usize, positions: &UInt64Array, rows: &RecordBatch) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        self.delete_positions(file, positions.values().to_vec()).await?;
        self.retract(rows).await
    }

    /// Deletes rows of data file `file` of the base version (an index into its files) by
    /// position. Their values must be given to [`Transaction::retract`] before the commit, in
    /// any order and grouping: [`Transaction::delete`] does both at once.
    pub async fn delete_positions(&mut self, file: usize, positions: Vec<u64>) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        if self.removed_all {
            return Err(FreshetError::Internal("delete after remove_all".into()));
        }
        let data_file = self.base.manifest().files.get(file).ok_or_else(|| {
            FreshetError::Internal(format!(
                "delete names data file {file} of a {}-file version",
                self.base.manifest().files.len()
            ))
        })?;
        let existing = self.base.deletes_of(file).await?;
        let not_live = |position: u64| {
            FreshetError::Internal(format!(
                "delete of row {position} of {} which is not a live row",
                data_file.path
            ))
        };
        let same_row_twice = || {
            FreshetError::InvalidStatement(format!(
                "table \"{}\": the statement changes the same row more than once",
                self.table.name()
            ))
        };
        let count = positions.len() as u64;
        let sorted = match sorted_distinct(positions, data_file.rows) {
            Ok(sorted) => sorted,
            Err(Refused::Twice) => return Err(same_row_twice()),
            Err(Refused::Beyond(position)) => return Err(not_live(position)),
        };
        let new = RoaringTreemap::from_sorted_iter(sorted)
            .map_err(|e| FreshetError::Internal(format!("deleted positions out of order: {e}")))?;
        if let Some(gone) = existing
            .filter(|existing| !existing.is_disjoint(&new))
            .and_then(|existing| {
                let mut both = (*existing).clone();
                both &= &new;
                both.min()
            })
        {
            return Err(not_live(gone));
        }
        let set = self.deletes.entry(file).or_default();
        if !set.is_disjoint(&new) {
            return Err(same_row_twice());
        }
        *set |= new;
        self.deleted += count;
        Ok(())
    }

    /// The values of rows deleted by [`Transaction::delete_positions`] (the table's columns),
    /// which become the version's retractions. They are encoded on a task of their own while
    /// the caller goes on.
    pub async fn retract(&mut self, rows: &RecordBatch) -> Result<()> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        if self.removed_all {
            return Err(FreshetError::Internal("delete after remove_all".into()));
        }
        let rows = self.conform(rows)?;
        if !self.base.primary_key().is_empty() {
            // Deleting needs no index: the keys are recorded, and a current index (if any)
            // takes them at the commit; a stale one is dropped, not built for this.
            self.key_delta()?;
            if !self.index_current() {
                self.writer.keys = None;
            }
            let (encoder, delta) = self.keys.as_mut().ok_or_else(missing_index)?;
            delta.remove(&encoder.encode(&rows)?);
        }
        let writer = self.retractions.get_or_insert_with(|| {
            ParallelWriter::new(
                self.table
                    .writer_template(FileKind::Retraction, self.tier, self.base.schema()),
                self.table.options.write_parallelism,
            )
        });
        self.retracted += rows.num_rows() as u64;
        writer.write(rows).await
    }

    /// Closes the files written so far: they are finished and stored on their own tasks while
    /// the caller goes on, and the commit waits for them. Rows given later go to new files.
    pub fn seal_files(&mut self) {
        for writer in [&mut self.inserts, &mut self.retractions].into_iter().flatten() {
            writer.seal();
        }
    }

    /// Deletes every row of the base version by dropping its data files whole: nothing is
    /// copied, the version lists the files as removed. Must come before any other change.
    pub fn remove_all(&mut self) -> Result<u64> {
        if self.inserted > 0 || self.deleted > 0 {
            return Err(FreshetError::Internal(
                "remove_all must be a transaction's first change".into(),
            ));
        }
        self.removed_all = true;
        self.deleted = self.base.num_rows();
        if !self.base.primary_key().is_empty() {
            self.keys = Some((KeyEncoder::new(&self.base)?, KeyDelta::cleared()));
        }
        Ok(self.deleted)
    }

    /// Gives the table new columns from this version on; only after [`Transaction::remove_all`]
    /// and before any insert (the old rows are all gone, so none needs converting). The primary
    /// key keeps its columns.
    pub fn replace_schema(&mut self, schema: datafusion::arrow::datatypes::SchemaRef) -> Result<()> {
        if !self.removed_all || self.inserted > 0 {
            return Err(FreshetError::Internal(
                "replace_schema needs remove_all first and no insert".into(),
            ));
        }
        for key in self.base.primary_key() {
            if schema.index_of(key).is_err() {
                return Err(FreshetError::InvalidStatement(format!(
                    "table \"{}\": the new columns lack primary-key column \"{key}\"",
                    self.table.name()
                )));
            }
        }
        crate::write::check_storable(self.table.name(), &schema)?;
        self.new_schema = Some(schema);
        Ok(())
    }

    /// The columns rows are written with.
    fn schema(&self) -> &datafusion::arrow::datatypes::SchemaRef {
        self.new_schema.as_ref().unwrap_or(self.base.schema())
    }

    /// Records what produced this version (a materialized table's refresh); committed with the
    /// rows. A transaction with a record commits a version even when no row changed.
    pub fn set_refresh(&mut self, record: serde_json::Value) {
        self.refresh = Some(record);
    }

    /// Writes a file of operator state for a checkpoint; it becomes part of the table when the
    /// transaction commits a checkpoint naming it ([`Transaction::set_state`]), and is an
    /// orphan (removed by VACUUM) otherwise.
    pub async fn write_state_file(&mut self, bytes: bytes::Bytes) -> Result<StateFile> {
        let path = new_file_name(FileKind::State);
        let location = table_file(&self.table.files.dir, &path);
        let file = StateFile::of(path, &bytes);
        self.table
            .files
            .store
            .put(&location, PutPayload::from(bytes))
            .await
            .map_err(|e| FreshetError::storage(&location, e))?;
        Ok(file)
    }

    /// Commits a checkpoint of operator state with the version, replacing the base version's.
    pub fn set_state(&mut self, state: StateCheckpoint) {
        self.state = Some(Some(state));
    }

    /// Drops the base version's checkpoint of operator state: the rows this transaction
    /// writes were not made by that state (a full recomputation).
    pub fn clear_state(&mut self) {
        self.state = Some(None);
    }

    /// Commits the transaction as the next version. A transaction that changed nothing commits
    /// nothing and reports the base version.
    pub async fn commit(mut self) -> Result<CommitInfo> {
        // Checked first: values given without any position would otherwise commit nothing
        // without a word.
        if !self.removed_all && self.retracted != self.deleted {
            return Err(FreshetError::Internal(format!(
                "a transaction deleted {} rows by position but gave the values of {}",
                self.deleted, self.retracted
            )));
        }
        if self.inserted == 0
            && self.deleted == 0
            && self.refresh.is_none()
            && self.new_schema.is_none()
            && self.state.is_none()
        {
            return Ok(CommitInfo {
                version: self.base.version(),
                inserted: 0,
                deleted: 0,
                placements: Placements::default(),
            });
        }
        let Written {
            files: mut inserted_files,
            placements,
        } = match self.inserts.take() {
            Some(writer) => writer.finish().await?,
            None => Written::default(),
        };
        inserted_files.append(&mut self.generated);
        let retracted_files = match self.retractions.take() {
            Some(writer) => writer.finish().await?.files,
            None => Vec::new(),
        };
        let mut files = Vec::with_capacity(self.base.manifest().files.len() + inserted_files.len());
        let removed = if self.removed_all {
            self.base.manifest().files.clone()
        } else {
            Vec::new()
        };
        // The new deletion vectors of the files this transaction deleted from, written
        // concurrently: a refresh may touch every file of its table.
        let mut known = self.base.loaded_deletes();
        let mut vectors = Vec::new();
        for (index, new) in self.deletes.iter().filter(|_| !self.removed_all) {
            let file = self.base.manifest().files.get(*index).ok_or_else(|| {
                FreshetError::Internal(format!(
                    "a delete names data file {index}, which the base version lacks"
                ))
            })?;
            let mut all = match self.base.deletes_of(*index).await? {
                Some(existing) => (*existing).clone(),
                None => RoaringTreemap::new(),
            };
            all |= new;
            // A file all of whose rows are gone leaves the version.
            if all.len() < file.rows {
                vectors.push((*index, Arc::new(all)));
            }
        }
        let store = &self.table.files.store;
        let dir = &self.table.files.dir;
        let written: BTreeMap<usize, (String, Arc<RoaringTreemap>)> =
            futures::stream::iter(vectors.into_iter().map(|(index, all)| async move {
                let path = write_deletes(store, dir, &all).await?;
                Ok::<_, FreshetError>((index, (path, all)))
            }))
            .buffer_unordered(8)
            .try_collect()
            .await?;
        for (index, file) in self.base.manifest().files.iter().enumerate() {
            if self.removed_all {
                break;
            }
            if !self.deletes.contains_key(&index) {
                files.push(file.clone());
                continue;
            }
            let Some((path, all)) = written.get(&index) else {
                continue;
            };
            known.insert(path.clone(), all.clone());
            files.push(DataFile {
                deletes: Some(DeletionVector {
                    path: path.clone(),
                    count: all.len(),
                }),
                ..file.clone()
            });
        }
        for f in &inserted_files {
            if let Some(last) = files.last_mut()
                && let Some(generated) = &f.generated
                && extends_generated(last, generated, f.rows)
            {
                last.rows += f.rows;
                if let Some(first) = &last.generated {
                    last.path = first.path(last.rows);
                }
                continue;
            }
            files.push(DataFile {
                path: f.path.clone(),
                rows: f.rows,
                bytes: f.bytes,
                deletes: None,
                generated: f.generated.clone(),
            });
        }
        let base_manifest = self.base.manifest();
        let version = base_manifest.version + 1;
        let manifest = Manifest {
            format: FORMAT_VERSION,
            table_id: self.table.id.clone(),
            version,
            committed_at_ms: self.table.options.clock.now_ms().max(base_manifest.committed_at_ms),
            operation: self.operation.clone(),
            schema: match &self.new_schema {
                Some(schema) => crate::manifest::SchemaDef::from_arrow(schema),
                None => base_manifest.schema.clone(),
            },
            primary_key: base_manifest.primary_key.clone(),
            files,
            changes: Changes {
                updated: self.updated.take().filter(|_| {
                    self.retracted == self.inserted && self.deleted == self.retracted && removed.is_empty()
                }),
                inserted: inserted_files,
                retracted: retracted_files,
                removed,
            },
            refresh: self.refresh.take().or_else(|| base_manifest.refresh.clone()),
            state: self.state.take().unwrap_or_else(|| base_manifest.state.clone()),
            transaction: None,
        };
        let table = self.table.clone();
        let schema = self.schema().clone();
        let deleted_rows = !self.deletes.is_empty();
        let keys = self.keys.take();
        let mut writer = self.writer;
        let info = CommitInfo {
            version,
            inserted: self.inserted,
            deleted: self.deleted,
            placements,
        };
        // From here on the commit runs to its end even if the caller stops waiting (a
        // cancelled statement): a put the store already took would land anyway (the local
        // store writes on a thread of its own), and the table's snapshot, key index and writer
        // lock must follow it, or the next writer would build on a version that is gone.
        let finish = async move {
            table.commit_manifest(manifest, schema, &known).await?;
            if deleted_rows {
                table.deleted_since_compaction.store(true, Ordering::Release);
            }
            if let Some((_, delta)) = keys {
                let pool = table.options.memory_pool.as_ref();
                if delta.cleared {
                    writer.keys = KeyIndex::replaced(delta, version, pool);
                } else if let Some(index) = writer.keys.as_mut()
                    && !index.apply(delta, version)
                {
                    // No room for the keys: the next write builds the index again, or says why not.
                    writer.keys = None;
                }
            }
            drop(writer);
            table.compact_in_background_if_needed();
            Ok(info)
        };
        tokio::spawn(finish)
            .await
            .map_err(|e| FreshetError::Internal(format!("a commit's task failed: {e}")))?
    }

    /// The key encoder and the keys this transaction changed, made on first use.
    fn key_delta(&mut self) -> Result<()> {
        if self.keys.is_none() {
            self.keys = Some((KeyEncoder::new(&self.base)?, KeyDelta::default()));
        }
        Ok(())
    }

    /// Whether the table's key index is that of the base version.
    fn index_current(&self) -> bool {
        self.writer
            .keys
            .as_ref()
            .is_some_and(|k| k.version == self.base.version())
    }

    /// Whether an insert of `rows` rows looks its keys up in the table rather than in the
    /// index ([`crate::keys::PROBE_MAX_ROWS`]): the index is not built, the transaction's
    /// inserts stay few, and the writers since the index was last built have not done so too
    /// often. A stale index is then dropped (the commit must not bring it forward).
    fn probes(&mut self, rows: usize) -> Result<bool> {
        self.key_delta()?;
        let cleared = self.keys.as_ref().is_some_and(|(_, delta)| delta.cleared);
        if cleared || self.index_current() || self.probed + rows > crate::keys::PROBE_MAX_ROWS {
            return Ok(false);
        }
        if self.probed == 0 {
            if self.writer.probes >= crate::keys::PROBES_BEFORE_INDEX {
                return Ok(false);
            }
            self.writer.probes += 1;
            self.writer.keys = None;
        }
        self.probed += rows;
        Ok(true)
    }

    async fn ensure_key_index(&mut self) -> Result<()> {
        self.key_delta()?;
        if self.keys.as_ref().is_some_and(|(_, delta)| delta.cleared) {
            return Ok(());
        }
        if !self.index_current() {
            let (encoder, _) = self.keys.as_ref().ok_or_else(missing_index)?;
            // The old index goes first: its memory is not held twice.
            self.writer.keys = None;
            let pool = self.table.options.memory_pool.as_ref();
            self.writer.keys = Some(KeyIndex::build(&self.base, encoder, pool).await?);
            self.writer.probes = 0;
        }
        Ok(())
    }

    /// Gives a batch the table's exact schema (names and nullability), checking the types and
    /// NOT NULL.
    fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let schema = self.schema();
        if batch.num_columns() != schema.fields().len() {
            return Err(FreshetError::Internal(format!(
                "table \"{}\" has {} columns, a write gave {}",
                self.table.name(),
                schema.fields().len(),
                batch.num_columns()
            )));
        }
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            if !field.is_nullable() && column.null_count() > 0 {
                return Err(FreshetError::NullViolation {
                    table: self.table.name().into(),
                    column: field.name().clone(),
                });
            }
            if field.data_type() != column.data_type() {
                return Err(FreshetError::Internal(format!(
                    "table \"{}\": column \"{}\" is {}, a write gave {}",
                    self.table.name(),
                    field.name(),
                    field.data_type(),
                    column.data_type()
                )));
            }
        }
        RecordBatch::try_new_with_options(
            schema.clone(),
            batch.columns().to_vec(),
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )
        .map_err(|e| FreshetError::Internal(e.to_string()))
    }
}

fn missing_index() -> FreshetError {
    FreshetError::Internal("primary-key index missing".into())
}

impl Table {
    /// Creates the manifest of a new version and makes it the newest snapshot. The manifest is
    /// given a fresh transaction id, by which an ambiguous put is resolved (`log.rs`).
    pub(crate) async fn commit_manifest(
        &self,
        mut manifest: Manifest,
        schema: datafusion::arrow::datatypes::SchemaRef,
        known_deletes: &KnownDeletes,
    ) -> Result<()> {
        let version = manifest.version;
        let transaction = uuid::Uuid::new_v4().to_string();
        manifest.transaction = Some(transaction.clone());
        let created = self
            .log
            .create_resolved(version, &manifest, &transaction, |m: &Manifest| {
                m.transaction.as_deref()
            })
            .await;
        match created {
            Ok(Created::Yes) => self.options.counters.committed(),
            Ok(Created::AlreadyExists) => {
                // Another engine on a shared store committed first: the next writer starts
                // from its version, so a retry of the statement can succeed.
                self.stale.store(true, Ordering::Release);
                return Err(FreshetError::ConcurrentCommit {
                    table: self.name().into(),
                    version,
                });
            }
            Err(e) => {
                self.stale.store(true, Ordering::Release);
                return Err(e);
            }
        }
        self.publish(Arc::new(Snapshot::with_deletes(
            self.files.clone(),
            Arc::new(manifest),
            schema,
            known_deletes,
        )));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_come_sorted_once_each_whether_marked_or_sorted() {
        // Few positions in a large file are sorted; many are marked in a bitset.
        for rows in [1_000_000, 200] {
            let positions = vec![199, 0, 64, 63, 5, 128];
            assert_eq!(
                sorted_distinct(positions, rows).ok(),
                Some(vec![0, 5, 63, 64, 128, 199]),
                "{rows} rows"
            );
            assert!(matches!(sorted_distinct(vec![7, 3, 7], rows), Err(Refused::Twice)));
            assert!(matches!(
                sorted_distinct(vec![3, rows, 4], rows),
                Err(Refused::Beyond(beyond)) if beyond == rows
            ));
        }
    }
}
