//! A table handle: its newest snapshot, its version history, and its single writer.

use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::object_store::path::Path;
use datafusion::parquet::arrow::ArrowSchemaConverter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::basic::Type as PhysicalType;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;
use tokio::sync::Mutex;

use freshet_common::{FreshetError, Result, SharedClock, SystemClock};

use crate::keys::KeyIndex;
use crate::layout::FileKind;
use crate::layout::{manifest_dir, table_dir};
use crate::location::Location;
use crate::log::{Created, VersionLog};
use crate::maintenance::{COMPACT, Compaction};
use crate::manifest::{Changes, FORMAT_VERSION, Manifest, SchemaDef};
use crate::moves::KeptMoves;
use crate::snapshot::{Snapshot, TableFiles};
use crate::statistics::StorageCounters;
use crate::transaction::Transaction;
use crate::write::WriterTemplate;

/// How a table writes its files.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Parquet writer settings.
    pub parquet: WriterProperties,
    /// Rows per data file before a new file is started.
    pub max_file_rows: usize,
    /// Files a large insert writes at once, each encoded on its own task.
    pub write_parallelism: usize,
    /// Live data files above which a commit asks for compaction.
    pub compact_min_files: usize,
    /// Fraction of deleted rows above which a commit asks for compaction.
    pub compact_deleted_fraction: f64,
    /// Where commit times come from.
    pub clock: SharedClock,
    /// What the tables' commits, compactions and vacuums count into.
    pub counters: Arc<StorageCounters>,
    /// Where what a table keeps in memory (its primary-key index) is accounted; `None`: nowhere.
    pub memory_pool: Option<Arc<dyn datafusion::execution::memory_pool::MemoryPool>>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            parquet: WriterProperties::default(),
            max_file_rows: 1 << 20,
            write_parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
            compact_min_files: 32,
            compact_deleted_fraction: 0.25,
            clock: Arc::new(SystemClock),
            counters: Arc::default(),
            memory_pool: None,
        }
    }
}

/// State only the writer touches.
#[derive(Debug, Default)]
pub(crate) struct WriterState {
    /// Keys of the newest version, built on the first write that needs them.
    pub keys: Option<KeyIndex>,
    /// Transactions that looked their keys up in the table since the index was last built
    /// (see [`crate::keys::PROBE_MAX_ROWS`]).
    pub probes: u32,
}

/// A durable, versioned table.
#[derive(Debug)]
pub struct Table {
    pub(crate) files: Arc<TableFiles>,
    pub(crate) id: String,
    pub(crate) log: VersionLog,
    current: RwLock<Arc<Snapshot>>,
    /// The newest version, for those waiting for commits.
    versions: tokio::sync::watch::Sender<u64>,
    pub(crate) writer: Arc<Mutex<WriterState>>,
    /// Held by compaction and vacuum, so that vacuum never removes the files of a compaction
    /// that has not committed yet.
    pub(crate) maintenance: Mutex<()>,
    /// The running background compaction, if any.
    background: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// A commit since the last compaction deleted rows of existing files: the next compaction
    /// holds writers off (see `compact_with`).
    pub(crate) deleted_since_compaction: std::sync::atomic::AtomicBool,
    /// Compactions write the fresh files' fast codec (LZ4) rather than the engine's: a table
    /// that is a stream's log ([`Table::compact_for_speed`]).
    pub(crate) fast_compaction: std::sync::atomic::AtomicBool,
    /// Whether compactions keep their moves, and the moves kept (see `moves.rs`).
    pub(crate) moves_wanted: std::sync::atomic::AtomicBool,
    pub(crate) moves: KeptMoves,
    pub(crate) options: WriteOptions,
    /// A commit failed in a way that may leave the newest snapshot behind the store (a version
    /// committed by another engine, or an outcome no read-back could settle): the next writer
    /// reads the store's newest version first.
    pub(crate) stale: std::sync::atomic::AtomicBool,
    /// Every snapshot handed out, held weakly: those still alive are versions a running query
    /// reads, whose files VACUUM keeps.
    readers: std::sync::Mutex<Vec<std::sync::Weak<Snapshot>>>,
}

impl Table {
    /// Creates a new, empty table (version 1) in its own directory.
    pub(crate) async fn create(
        location: &Location,
        id: String,
        name: String,
        schema: SchemaRef,
        primary_key: Vec<String>,
        options: WriteOptions,
    ) -> Result<Arc<Self>> {
        let (store, dir) = (location.store().clone(), table_dir(location.root(), &id));
        let log = VersionLog::new(store.clone(), manifest_dir(&dir));
        let manifest = Manifest {
            format: FORMAT_VERSION,
            table_id: id.clone(),
            version: 1,
            committed_at_ms: options.clock.now_ms(),
            operation: "CREATE".into(),
            schema: SchemaDef::from_arrow(&schema),
            primary_key,
            files: Vec::new(),
            changes: Changes::default(),
            refresh: None,
            state: None,
            transaction: None,
        };
        if let Created::AlreadyExists = log.create(1, &manifest).await? {
            return Err(FreshetError::Internal(format!("table directory {dir} already exists")));
        }
        let files = Arc::new(TableFiles::new(store, dir, name, location));
        Ok(Arc::new(Self::from_parts(files, id, log, manifest, schema, options)))
    }

    /// Opens an existing table at its newest version.
    pub(crate) async fn open(
        location: &Location,
        id: String,
        name: String,
        options: WriteOptions,
    ) -> Result<Arc<Self>> {
        let (store, dir) = (location.store().clone(), table_dir(location.root(), &id));
        let log = VersionLog::new(store.clone(), manifest_dir(&dir));
        let latest = log
            .latest()
            .await?
            .ok_or_else(|| FreshetError::corrupt(manifest_dir(&dir), "the table has no manifest"))?;
        let manifest: Manifest = log
            .read(latest)
            .await?
            .ok_or_else(|| FreshetError::corrupt(log.path(latest), "the manifest disappeared while opening"))?;
        check_manifest(&log.path(latest), &manifest, &id, latest)?;
        let schema = manifest.schema.to_arrow(log.path(latest).as_ref())?;
        let files = Arc::new(TableFiles::new(store, dir, name, location));
        Ok(Arc::new(Self::from_parts(files, id, log, manifest, schema, options)))
    }

    fn from_parts(
        files: Arc<TableFiles>,
        id: String,
        log: VersionLog,
        manifest: Manifest,
        schema: SchemaRef,
        options: WriteOptions,
    ) -> Self {
        let snapshot = Arc::new(Snapshot::new(files.clone(), Arc::new(manifest), schema));
        Self {
            files,
            id,
            log,
            versions: tokio::sync::watch::channel(snapshot.version()).0,
            current: RwLock::new(snapshot),
            writer: Arc::new(Mutex::new(WriterState::default())),
            maintenance: Mutex::new(()),
            background: std::sync::Mutex::new(None),
            deleted_since_compaction: std::sync::atomic::AtomicBool::new(false),
            fast_compaction: std::sync::atomic::AtomicBool::new(false),
            moves_wanted: std::sync::atomic::AtomicBool::new(false),
            moves: KeptMoves::default(),
            options,
            stale: std::sync::atomic::AtomicBool::new(false),
            readers: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Registers what makes the table's generated rows ([`crate::GeneratedRows`]): reading
    /// them fails until it is.
    pub fn set_generator(&self, generator: Arc<dyn crate::RowGenerator>) {
        *self.files.generator.write().unwrap_or_else(|e| e.into_inner()) = Some(generator);
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.files.name
    }

    /// The table's identifier, which names its directory.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The table's directory in the store.
    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    /// The newest committed version.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn publish(&self, snapshot: Arc<Snapshot>) {
        self.register_reader(&snapshot);
        let version = snapshot.version();
        match self.current.write() {
            Ok(mut guard) => *guard = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
        self.versions.send_replace(version);
    }

    /// Follows the table's commits: the receiver holds the newest version and wakes at each
    /// commit (of this engine), so a watcher reacts to commits instead of polling.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.versions.subscribe()
    }

    /// The table's columns.
    pub fn schema(&self) -> SchemaRef {
        self.snapshot().schema().clone()
    }

    /// A retained version.
    pub async fn snapshot_at(&self, version: u64) -> Result<Arc<Snapshot>> {
        let current = self.snapshot();
        if version == current.version() {
            return Ok(current);
        }
        if version > current.version() {
            return Err(FreshetError::VersionNotFound {
                table: self.name().into(),
                version,
                reason: format!("the newest version is {}", current.version()),
            });
        }
        let manifest = self.read_manifest(version).await?;
        let schema = manifest.schema.to_arrow(self.log.path(version).as_ref())?;
        let snapshot = Arc::new(Snapshot::new(self.files.clone(), Arc::new(manifest), schema));
        self.register_reader(&snapshot);
        Ok(snapshot)
    }

    fn register_reader(&self, snapshot: &Arc<Snapshot>) {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if readers.len() >= 64 {
            readers.retain(|r| r.strong_count() > 0);
        }
        readers.push(Arc::downgrade(snapshot));
    }

    /// The versions some part of this process still reads (snapshots alive).
    pub(crate) fn read_versions(&self) -> Vec<Arc<Snapshot>> {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        readers.retain(|r| r.strong_count() > 0);
        readers.iter().filter_map(std::sync::Weak::upgrade).collect()
    }

    /// Reads the manifest of a retained version.
    pub(crate) async fn read_manifest(&self, version: u64) -> Result<Manifest> {
        let manifest: Manifest = self
            .log
            .read(version)
            .await?
            .ok_or_else(|| FreshetError::VersionNotFound {
                table: self.name().into(),
                version,
                reason: "it was never committed or was removed by VACUUM".into(),
            })?;
        check_manifest(&self.log.path(version), &manifest, &self.id, version)?;
        Ok(manifest)
    }

    /// Whether every version after `from` up to `to` was made by a compaction: the rows are
    /// those of `from`, in other files.
    pub async fn only_compacted_since(&self, from: u64, to: u64) -> Result<bool> {
        for version in from + 1..=to {
            let operation = match self.snapshot() {
                current if current.version() == version => current.manifest().operation.clone(),
                _ => self.read_manifest(version).await?.operation,
            };
            if operation != COMPACT {
                return Ok(false);
            }
        }
        Ok(from <= to)
    }

    /// The newest version committed at or before `at_ms` (milliseconds since the Unix epoch).
    pub async fn version_at(&self, at_ms: i64) -> Result<u64> {
        let versions = self.log.versions().await?;
        // Commit times never decrease with the version, so a binary search finds the boundary.
        let (mut lo, mut hi) = (0usize, versions.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let manifest = self.read_manifest(versions[mid]).await?;
            if manifest.committed_at_ms <= at_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        match lo.checked_sub(1) {
            Some(index) => Ok(versions[index]),
            None => Err(FreshetError::InvalidStatement(format!(
                "table \"{}\" has no retained version committed at or before that time",
                self.name()
            ))),
        }
    }

    /// The retained versions, oldest first (one listing of the log, no manifest read).
    pub async fn versions(&self) -> Result<Vec<u64>> {
        self.log.versions().await
    }

    /// The manifests of all retained versions, oldest first.
    pub async fn history(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for version in self.log.versions().await? {
            out.push(self.read_manifest(version).await?);
        }
        Ok(out)
    }

    /// How this table's files of `kind` with `schema`, written by `tier`, are written.
    pub(crate) fn writer_template(&self, kind: FileKind, tier: Tier, schema: &SchemaRef) -> WriterTemplate {
        WriterTemplate {
            store: self.files.store.clone(),
            table_dir: self.files.dir.clone(),
            kind,
            schema: schema.clone(),
            properties: file_properties(&self.options.parquet, tier, schema),
            max_rows: self.options.max_file_rows,
        }
    }

    /// Reads a file of a checkpoint of operator state.
    pub async fn read_state_file(&self, file: &crate::manifest::StateFile) -> Result<bytes::Bytes> {
        let location = crate::layout::table_file(&self.files.dir, &file.path);
        let local = self
            .files
            .local
            .as_deref()
            .map(|dir| crate::location::local_file(dir, &location));
        file.read(self.files.store.as_ref(), &location, local).await
    }

    /// Makes this table's compactions write the fast codec of fresh files (LZ4) instead of the
    /// engine's (ZSTD by default): for a source's table, a stream's log written at the
    /// stream's rate and read back mostly once, by the jobs following it — there, ZSTD
    /// compactions were a sixth of a Nexmark job's CPU time over ten million events. Its files
    /// are somewhat larger.
    pub fn compact_for_speed(&self) {
        self.fast_compaction.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts a transaction, waiting for any other writer of this table to finish.
    pub async fn begin(self: &Arc<Self>, operation: &str) -> Result<Transaction> {
        let guard = self.writer.clone().lock_owned().await;
        if self.stale.load(std::sync::atomic::Ordering::Acquire) {
            self.catch_up().await?;
        }
        Ok(Transaction::new(self.clone(), guard, self.snapshot(), operation))
    }

    /// Makes the store's newest version the newest snapshot, after a commit that left the
    /// snapshot in doubt. Called with the writer lock held.
    pub(crate) async fn catch_up(&self) -> Result<()> {
        let latest = self
            .log
            .latest()
            .await?
            .ok_or_else(|| FreshetError::corrupt(self.log.path(1), "the table has no manifest"))?;
        if latest > self.snapshot().version() {
            let manifest = self.read_manifest(latest).await?;
            let schema = manifest.schema.to_arrow(self.log.path(latest).as_ref())?;
            tracing::info!(table = self.name(), version = latest, "caught up with the store");
            self.publish(Arc::new(Snapshot::new(self.files.clone(), Arc::new(manifest), schema)));
        }
        self.stale.store(false, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

/// Who writes a file, which decides how hard it is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    /// A transaction: files on the path from a commit to a fresh materialized table, most of
    /// them small and soon merged by compaction — compressed for speed (LZ4).
    Fresh,
    /// A transaction that asked for speed over size ([`Transaction::write_uncompressed`]): a
    /// materialized table's refresh, whose files wait only for the next compaction — not
    /// compressed.
    Uncompressed,
    /// Compaction: the files that stay — compressed as the engine is configured (DataFusion's
    /// Parquet compression, ZSTD by default).
    Compacted,
}

/// The Parquet settings of a file of `schema` written by `tier`: the engine's, with dictionary
/// encoding only for text and binary columns, and LZ4 for fresh files unless the engine writes
/// uncompressed files. Numbers are mostly distinct (ids, amounts, times), so a dictionary of them
/// is built for nothing — it was a tenth of the CPU time of continuous maintenance — and the
/// codec compresses the repeated ones anyway. ZSTD compression and decompression of fresh files
/// were a third of the CPU time of continuous maintenance; LZ4 does the same work several
/// times faster, for somewhat larger files until compaction rewrites them.
fn file_properties(properties: &WriterProperties, tier: Tier, schema: &SchemaRef) -> WriterProperties {
    let mut builder = properties.clone().into_builder();
    match tier {
        Tier::Fresh if properties.compression(&ColumnPath::from("")) != Compression::UNCOMPRESSED => {
            builder = builder.set_compression(Compression::LZ4_RAW);
        }
        Tier::Uncompressed => builder = builder.set_compression(Compression::UNCOMPRESSED),
        Tier::Fresh | Tier::Compacted => {}
    }
    // By the Parquet leaf columns, so that the numbers inside ROW, ARRAY and MAP columns go
    // without a dictionary too (Nexmark's generator table is three ROW columns).
    // A schema Parquet cannot hold fails when the file is written, with its own error.
    if let Ok(leaves) = ArrowSchemaConverter::new().convert(schema) {
        for column in leaves.columns() {
            let bytes = matches!(
                column.physical_type(),
                PhysicalType::BYTE_ARRAY | PhysicalType::FIXED_LEN_BYTE_ARRAY
            );
            if !bytes {
                builder = builder.set_column_dictionary_enabled(column.path().clone(), false);
            }
        }
    }
    builder.build()
}

impl Table {
    /// Starts a compaction in the background when the newest version has too many files or
    /// deleted rows, unless one is running. Must be called within a tokio runtime.
    pub(crate) fn compact_in_background_if_needed(self: &Arc<Self>) {
        if !self.needs_compaction() {
            return;
        }
        let mut slot = self.background.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let table = self.clone();
        *slot = Some(tokio::spawn(async move {
            match table.compact_with(Compaction::Tiered).await {
                Ok(Some(version)) => tracing::debug!(table = table.name(), version, "compacted"),
                Ok(None) => {}
                Err(e) => tracing::warn!(table = table.name(), error = %e, "background compaction failed"),
            }
        }));
    }

    /// Waits until the background compaction started by the last commits (if any) is done.
    pub async fn wait_for_background_work(&self) {
        let task = self.background.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::warn!(table = self.name(), error = %e, "background compaction panicked");
        }
    }
}

fn check_manifest(path: &Path, manifest: &Manifest, id: &str, version: u64) -> Result<()> {
    if manifest.format > FORMAT_VERSION {
        return Err(FreshetError::corrupt(
            path,
            format!(
                "written in format {}, newer than this build's {FORMAT_VERSION}",
                manifest.format
            ),
        ));
    }
    if manifest.table_id != id || manifest.version != version {
        return Err(FreshetError::corrupt(
            path,
            format!(
                "names table {} version {}, expected table {id} version {version}",
                manifest.table_id, manifest.version
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};

    use super::*;

    #[test]
    fn only_text_leaves_have_dictionaries_also_inside_rows_and_lists() {
        let row = Fields::from(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]);
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("t", DataType::Utf8, true),
            Field::new("r", DataType::Struct(row), true),
            Field::new_list("l", Field::new_list_field(DataType::Float64, true), true),
        ]));
        let properties = file_properties(&WriterProperties::default(), Tier::Fresh, &schema);
        let dictionary = |path: &[&str]| {
            properties.dictionary_enabled(&ColumnPath::new(path.iter().map(|p| p.to_string()).collect()))
        };
        assert!(!dictionary(&["n"]));
        assert!(dictionary(&["t"]));
        assert!(!dictionary(&["r", "id"]));
        assert!(dictionary(&["r", "name"]));
        assert!(!dictionary(&["l", "list", "item"]));
    }
}
