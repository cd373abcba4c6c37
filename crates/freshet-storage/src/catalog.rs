//! The catalog: which tables exist, persisted as numbered versions like a table's manifests.
//! A DDL statement commits by creating the next catalog version; a table's directory that no
//! catalog version names is invisible (and removed by VACUUM).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use freshet_common::{FreshetError, Result};

use crate::layout::{FileKind, catalog_dir, job_dir, job_progress_path, new_file_name, table_dir, table_file};
use crate::location::Location;
use crate::log::{Created, VersionLog};
use crate::maintenance::{Retain, VacuumReport};
use crate::manifest::{FORMAT_VERSION, StateFile};
use crate::table::{Table, WriteOptions};

/// One version of the catalog, as stored in `_freshet/catalog/<version>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CatalogManifest {
    /// Format version.
    pub format: u32,
    /// This catalog version's number; 0 is the empty catalog of a new location (never written).
    pub version: u64,
    /// Commit time, milliseconds since the Unix epoch.
    pub committed_at_ms: i64,
    /// The objects, by name.
    pub entries: BTreeMap<String, CatalogEntry>,
    /// Running jobs, by id: documents the engine defines (the statement), resumed on open.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jobs: BTreeMap<String, serde_json::Value>,
    /// A fresh id of the commit that wrote this version, by which the writer recognises its
    /// own commit when the store's answer to the put was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
}

/// A named object of the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CatalogEntry {
    /// A table stored by Freshet in `tables/<id>/`.
    Table {
        /// The table's directory name.
        id: String,
        /// Its options (`WITH ('retention' = ...)`, `ALTER TABLE ... SET (...)`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        options: BTreeMap<String, String>,
    },
    /// A materialized table: stored like a table in `tables/<id>/`, and defined by a document
    /// the engine owns (its query, freshness, refresh mode and lifecycle state).
    MaterializedTable {
        /// The table's directory name.
        id: String,
        /// The engine's definition.
        definition: serde_json::Value,
    },
    /// A table fed by or feeding a connector (`CREATE TABLE ... WITH ('connector' = ...)`):
    /// stored like a table in `tables/<id>/` (a source's ingested rows), and defined by its
    /// statement, which the engine parses again on open.
    ConnectorTable {
        /// The table's directory name.
        id: String,
        /// The `CREATE TABLE` statement.
        sql: String,
        /// Options set since by `ALTER TABLE ... SET`, over the statement's.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        options: BTreeMap<String, String>,
    },
    /// An object defined by a statement that the engine re-runs on open (an external table
    /// over files); Freshet stores only the definition.
    Definition {
        /// What kind of object (`external_table`, ...).
        object: String,
        /// The statement that defines it.
        sql: String,
    },
}

impl CatalogEntry {
    /// The directory name of a stored table (plain or materialized).
    pub fn table_id(&self) -> Option<&str> {
        match self {
            CatalogEntry::Table { id, .. }
            | CatalogEntry::MaterializedTable { id, .. }
            | CatalogEntry::ConnectorTable { id, .. } => Some(id),
            CatalogEntry::Definition { .. } => None,
        }
    }
}

/// A table that could not be opened: the error is reported when it is used; other tables work.
#[derive(Debug, Clone)]
pub enum TableSlot {
    /// The table, opened.
    Open(Arc<Table>),
    /// Opening failed with this message (naming the file).
    Broken(Arc<FreshetError>),
}

/// A name kept for a table being created; given back when dropped (created, failed or
/// cancelled).
struct Reservation {
    names: Arc<RwLock<HashSet<String>>>,
    name: String,
}

impl Reservation {
    fn take(names: &Arc<RwLock<HashSet<String>>>, name: &str) -> Result<Self> {
        if !write_lock(names).insert(name.to_string()) {
            return Err(FreshetError::TableExists { name: name.into() });
        }
        Ok(Self {
            names: names.clone(),
            name: name.to_string(),
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        write_lock(&self.names).remove(&self.name);
    }
}

/// What [`Catalog::create_table`] creates.
#[derive(Debug, Clone)]
pub enum NewTable {
    /// A plain table with its options.
    Plain(BTreeMap<String, String>),
    /// A materialized table with the engine's definition.
    Materialized(serde_json::Value),
}

/// The catalog of a location, and the tables it names.
#[derive(Debug)]
pub struct Catalog {
    location: Arc<Location>,
    log: VersionLog,
    // Shared with a commit's task, which updates them even when its caller stopped waiting.
    current: Arc<RwLock<Arc<CatalogManifest>>>,
    tables: Arc<RwLock<HashMap<String, TableSlot>>>,
    /// Serializes DDL: one catalog commit at a time.
    ddl: Mutex<()>,
    /// Names of tables being created (filled before the catalog names them).
    reserved: Arc<RwLock<HashSet<String>>>,
    /// Held by a commit's task from reading the current version until it has replaced it, so
    /// that a commit whose caller was cancelled still comes before the next one.
    committing: Arc<Mutex<()>>,
    options: WriteOptions,
}

impl Catalog {
    /// What the tables and the store have done since the catalog opened.
    pub fn storage_statistics(&self) -> crate::StorageStatistics {
        self.options.counters.read()
    }

    /// Opens the catalog of a location and every table it names.
    pub async fn open(location: Arc<Location>, options: WriteOptions) -> Result<Self> {
        let log = VersionLog::new(location.store().clone(), catalog_dir(location.root()));
        let manifest = match log.latest().await? {
            Some(version) => log
                .read::<CatalogManifest>(version)
                .await?
                .ok_or_else(|| FreshetError::corrupt(log.path(version), "the catalog disappeared while opening"))?,
            None => CatalogManifest {
                format: FORMAT_VERSION,
                ..Default::default()
            },
        };
        if manifest.format > FORMAT_VERSION {
            return Err(FreshetError::corrupt(
                log.path(manifest.version),
                format!(
                    "written in format {}, newer than this build's {FORMAT_VERSION}",
                    manifest.format
                ),
            ));
        }
        let mut tables = HashMap::new();
        for (name, entry) in &manifest.entries {
            if let Some(id) = entry.table_id() {
                let slot = match Table::open(&location, id.to_string(), name.clone(), options.clone()).await {
                    Ok(table) => TableSlot::Open(table),
                    Err(e) => {
                        tracing::warn!(table = %name, error = %e, "table cannot be opened");
                        TableSlot::Broken(Arc::new(e))
                    }
                };
                tables.insert(name.clone(), slot);
            }
        }
        Ok(Self {
            location,
            log,
            current: Arc::new(RwLock::new(Arc::new(manifest))),
            tables: Arc::new(RwLock::new(tables)),
            ddl: Mutex::new(()),
            committing: Arc::new(Mutex::new(())),
            reserved: Arc::new(RwLock::new(HashSet::new())),
            options,
        })
    }

    /// The location.
    pub fn location(&self) -> &Arc<Location> {
        &self.location
    }

    /// The newest catalog version.
    pub fn manifest(&self) -> Arc<CatalogManifest> {
        read_lock(&self.current).clone()
    }

    /// A table by name.
    pub fn table(&self, name: &str) -> Result<Arc<Table>> {
        match read_lock(&self.tables).get(name) {
            Some(TableSlot::Open(table)) => Ok(table.clone()),
            Some(TableSlot::Broken(e)) => Err(FreshetError::InvalidStatement(format!(
                "table \"{name}\" cannot be read: {e}"
            ))),
            None => Err(FreshetError::TableNotFound { name: name.into() }),
        }
    }

    /// Whether an object of any kind has this name, or a table of this name is being created.
    pub fn contains(&self, name: &str) -> bool {
        self.manifest().entries.contains_key(name) || read_lock(&self.reserved).contains(name)
    }

    /// Creates a table, plain or materialized. `fill` may write the table's first rows
    /// (CREATE TABLE ... AS SELECT) before the catalog names it, so that readers see the table
    /// only complete.
    pub async fn create_table<F, Fut>(
        &self,
        name: &str,
        schema: SchemaRef,
        primary_key: Vec<String>,
        kind: NewTable,
        fill: F,
    ) -> Result<Arc<Table>>
    where
        F: FnOnce(Arc<Table>) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let entry = move |id: String| match kind {
            NewTable::Materialized(definition) => CatalogEntry::MaterializedTable { id, definition },
            NewTable::Plain(options) => CatalogEntry::Table { id, options },
        };
        self.create_stored(name, schema, primary_key, entry, fill).await
    }

    /// Creates a connector table, defined by its `CREATE TABLE` statement.
    pub async fn create_connector_table(&self, name: &str, schema: SchemaRef, sql: &str) -> Result<Arc<Table>> {
        let sql = sql.to_string();
        let entry = move |id: String| CatalogEntry::ConnectorTable {
            id,
            sql,
            options: BTreeMap::new(),
        };
        self.create_stored(name, schema, Vec::new(), entry, |_| async { Ok(()) })
            .await
    }

    async fn create_stored<F, Fut>(
        &self,
        name: &str,
        schema: SchemaRef,
        primary_key: Vec<String>,
        entry: impl FnOnce(String) -> CatalogEntry,
        fill: F,
    ) -> Result<Arc<Table>>
    where
        F: FnOnce(Arc<Table>) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        // The name is reserved, not the DDL lock held, while the table is filled (a materialized
        // table's first refresh may take long): other DDL goes on meanwhile.
        let _reserved = {
            let _ddl = self.ddl.lock().await;
            if self.contains(name) {
                return Err(FreshetError::TableExists { name: name.into() });
            }
            Reservation::take(&self.reserved, name)?
        };
        crate::write::check_storable(name, &schema)?;
        let id = uuid::Uuid::new_v4().to_string();
        let table = Table::create(
            &self.location,
            id.clone(),
            name.into(),
            schema,
            primary_key,
            self.options.clone(),
        )
        .await?;
        fill(table.clone()).await?;
        let _ddl = self.ddl.lock().await;
        let entry = entry(id);
        let (key, opened) = (name.to_string(), table.clone());
        self.commit_then(
            |manifest| {
                manifest.entries.insert(name.into(), entry);
            },
            move |tables| {
                tables.insert(key, TableSlot::Open(opened));
            },
        )
        .await?;
        Ok(table)
    }

    /// Records an object defined by a statement.
    pub async fn create_definition(&self, name: &str, object: &str, sql: &str) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        if self.contains(name) {
            return Err(FreshetError::TableExists { name: name.into() });
        }
        self.commit(|entries| {
            entries.insert(
                name.into(),
                CatalogEntry::Definition {
                    object: object.into(),
                    sql: sql.into(),
                },
            );
        })
        .await
    }

    /// Records a running job (resumed when the location is opened again).
    pub async fn put_job(&self, id: &str, job: serde_json::Value) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        self.commit_with(|manifest| {
            manifest.jobs.insert(id.into(), job);
        })
        .await
    }

    /// Forgets a job that ended, and its progress.
    pub async fn remove_job(&self, id: &str) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        if self.manifest().jobs.contains_key(id) {
            self.commit_with(|manifest| {
                manifest.jobs.remove(id);
            })
            .await?;
        }
        self.remove_job_states(id, &[]).await?;
        let path = job_progress_path(self.location.root(), id);
        match self.location.store().delete(&path).await {
            Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(FreshetError::Storage {
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Writes a checkpoint of a job's operator state, as a new file that its progress names.
    pub async fn write_job_state(&self, id: &str, bytes: bytes::Bytes) -> Result<StateFile> {
        let file = StateFile::of(new_file_name(FileKind::State), &bytes);
        let location = table_file(&job_dir(self.location.root(), id), &file.path);
        self.location
            .store()
            .put(&location, bytes.into())
            .await
            .map_err(|e| FreshetError::storage(&location, e))?;
        Ok(file)
    }

    /// Reads back a checkpoint of a job's operator state, checked against its size and hash.
    pub async fn read_job_state(&self, id: &str, file: &StateFile) -> Result<bytes::Bytes> {
        let location = table_file(&job_dir(self.location.root(), id), &file.path);
        let local = self.location.local_path(&location);
        file.read(self.location.store().as_ref(), &location, local).await
    }

    /// Deletes a job's checkpoint files other than `keep` (those its saved progress names).
    pub async fn remove_job_states(&self, id: &str, keep: &[StateFile]) -> Result<()> {
        let dir = job_dir(self.location.root(), id);
        let keep: HashSet<Path> = keep.iter().map(|f| table_file(&dir, &f.path)).collect();
        let store = self.location.store();
        let objects: Vec<_> = store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| FreshetError::storage(&dir, e))?;
        for object in objects {
            if keep.contains(&object.location) {
                continue;
            }
            match store.delete(&object.location).await {
                Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(FreshetError::storage(&object.location, e)),
            }
        }
        Ok(())
    }

    /// Saves how far a job has got (replacing what was saved before).
    pub async fn save_job_progress(&self, id: &str, progress: &serde_json::Value) -> Result<()> {
        let path = job_progress_path(self.location.root(), id);
        let bytes = serde_json::to_vec(progress).map_err(|e| FreshetError::Internal(e.to_string()))?;
        self.location
            .store()
            .put(&path, bytes.into())
            .await
            .map_err(|source| FreshetError::Storage {
                path: path.to_string(),
                source,
            })?;
        Ok(())
    }

    /// How far a job had got, if it saved its progress.
    pub async fn job_progress(&self, id: &str) -> Result<Option<serde_json::Value>> {
        let path = job_progress_path(self.location.root(), id);
        let bytes = match self.location.store().get(&path).await {
            Ok(got) => got.bytes().await,
            Err(datafusion::object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => Err(e),
        }
        .map_err(|source| FreshetError::Storage {
            path: path.to_string(),
            source,
        })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| FreshetError::corrupt(&path, e))
    }

    /// Replaces the definition of a materialized table.
    pub async fn update_definition(&self, name: &str, definition: serde_json::Value) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        match self.manifest().entries.get(name) {
            Some(CatalogEntry::MaterializedTable { .. }) => {}
            _ => return Err(FreshetError::TableNotFound { name: name.into() }),
        }
        self.commit(|entries| {
            if let Some(CatalogEntry::MaterializedTable { definition: old, .. }) = entries.get_mut(name) {
                *old = definition;
            }
        })
        .await
    }

    /// Replaces the options of a plain table, or those a connector table's `ALTER TABLE ... SET`
    /// set over its statement's.
    pub async fn set_table_options(&self, name: &str, options: BTreeMap<String, String>) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        match self.manifest().entries.get(name) {
            Some(CatalogEntry::Table { .. } | CatalogEntry::ConnectorTable { .. }) => {}
            _ => return Err(FreshetError::TableNotFound { name: name.into() }),
        }
        self.commit(|entries| {
            if let Some(CatalogEntry::Table { options: old, .. } | CatalogEntry::ConnectorTable { options: old, .. }) =
                entries.get_mut(name)
            {
                *old = options;
            }
        })
        .await
    }

    /// Removes an object. A dropped table's files stay until VACUUM, so that reads already
    /// running finish.
    pub async fn drop_entry(&self, name: &str) -> Result<CatalogEntry> {
        let _ddl = self.ddl.lock().await;
        let entry = self
            .manifest()
            .entries
            .get(name)
            .cloned()
            .ok_or_else(|| FreshetError::TableNotFound { name: name.into() })?;
        let key = name.to_string();
        self.commit_then(
            |manifest| {
                manifest.entries.remove(name);
            },
            move |tables| {
                tables.remove(&key);
            },
        )
        .await?;
        Ok(entry)
    }

    async fn commit(&self, change: impl FnOnce(&mut BTreeMap<String, CatalogEntry>)) -> Result<()> {
        self.commit_with(|manifest| change(&mut manifest.entries)).await
    }

    async fn commit_with(&self, change: impl FnOnce(&mut CatalogManifest)) -> Result<()> {
        self.commit_then(change, |_| {}).await
    }

    /// Commits the next catalog version made by `change`, then applies `opened` to the open
    /// tables. The commit runs to its end on a task of its own even when the caller stops
    /// waiting (a cancelled statement), so that a version the store took is always the one
    /// the engine knows: else the next DDL would build on a stale version and be refused.
    async fn commit_then(
        &self,
        change: impl FnOnce(&mut CatalogManifest),
        opened: impl FnOnce(&mut HashMap<String, TableSlot>) + Send + 'static,
    ) -> Result<()> {
        let committing = self.committing.clone().lock_owned().await;
        let current = self.manifest();
        let mut next = (*current).clone();
        change(&mut next);
        next.format = FORMAT_VERSION;
        next.version = current.version + 1;
        next.committed_at_ms = self.options.clock.now_ms().max(current.committed_at_ms);
        let transaction = uuid::Uuid::new_v4().to_string();
        next.transaction = Some(transaction.clone());
        let (log, slot, tables) = (self.log.clone(), self.current.clone(), self.tables.clone());
        let location = self.location.display().to_string();
        let finish = async move {
            let _committing = committing;
            let created = log
                .create_resolved(next.version, &next, &transaction, |m: &CatalogManifest| {
                    m.transaction.as_deref()
                })
                .await?;
            match created {
                Created::Yes => {
                    *write_lock(&slot) = Arc::new(next);
                    opened(&mut write_lock(&tables));
                    Ok(())
                }
                Created::AlreadyExists => Err(FreshetError::Locked {
                    location,
                    detail: format!(
                        "catalog version {} was committed by another engine; reopen to see its changes",
                        next.version
                    ),
                }),
            }
        };
        tokio::spawn(finish)
            .await
            .map_err(|e| FreshetError::Internal(format!("a catalog commit's task failed: {e}")))?
    }

    /// Opened tables, by name.
    pub fn tables(&self) -> Vec<(String, Arc<Table>)> {
        let mut out: Vec<_> = read_lock(&self.tables)
            .iter()
            .filter_map(|(name, slot)| match slot {
                TableSlot::Open(t) => Some((name.clone(), t.clone())),
                TableSlot::Broken(_) => None,
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Removes old catalog versions and the directories of dropped tables, then vacuums every
    /// table keeping the versions `retain` gives for its name and, for a table named in
    /// `keep_from`, every version from the one given on. Without `orphan_grace`, files and
    /// directories no version names are left alone (see [`Table::vacuum_keeping`]).
    pub async fn vacuum(
        &self,
        retain: impl Fn(&str) -> Retain,
        keep_from: &HashMap<String, u64>,
        orphan_grace: Option<std::time::Duration>,
    ) -> Result<VacuumReport> {
        let mut report = VacuumReport::default();
        for (name, table) in self.tables() {
            report += table
                .vacuum_keeping(retain(&name), keep_from.get(&name).copied(), orphan_grace)
                .await?;
        }
        let _ddl = self.ddl.lock().await;
        let current = self.manifest();
        // Tables some catalog version named: dropped ones, whose directories can go now. A
        // directory no version named may be another engine's table being created: it goes only
        // once it has been quiet for the grace period.
        let mut named: HashSet<String> = HashSet::new();
        for version in self.log.versions().await? {
            if version < current.version {
                if let Some(old) = self.log.read::<CatalogManifest>(version).await? {
                    named.extend(
                        old.entries
                            .values()
                            .filter_map(CatalogEntry::table_id)
                            .map(str::to_string),
                    );
                }
                self.log.remove(version).await?;
            }
        }
        let live: HashSet<&str> = current.entries.values().filter_map(CatalogEntry::table_id).collect();
        let store = self.location.store();
        let tables_dir = self.location.root().clone().join("tables");
        let listing = store
            .list_with_delimiter(Some(&tables_dir))
            .await
            .map_err(|e| FreshetError::storage(&tables_dir, e))?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let grace_ms = orphan_grace.map_or(i64::MAX, |g| i64::try_from(g.as_millis()).unwrap_or(i64::MAX));
        for dir in listing.common_prefixes {
            let Some(id) = dir.filename() else { continue };
            if live.contains(id) {
                continue;
            }
            let path = table_dir(self.location.root(), id);
            if !named.contains(id) {
                let newest: Option<i64> = store
                    .list(Some(&path))
                    .map_ok(|meta| meta.last_modified.timestamp_millis())
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(|e| FreshetError::storage(&path, e))?
                    .into_iter()
                    .max();
                if newest.is_some_and(|at| now_ms.saturating_sub(at) < grace_ms) {
                    continue;
                }
            }
            report += remove_tree(store, &path).await?;
        }
        Ok(report)
    }
}

async fn remove_tree(store: &Arc<dyn ObjectStore>, dir: &Path) -> Result<VacuumReport> {
    let objects: Vec<_> = store
        .list(Some(dir))
        .try_collect()
        .await
        .map_err(|e| FreshetError::storage(dir, e))?;
    let mut report = VacuumReport::default();
    for object in objects {
        match datafusion::object_store::ObjectStoreExt::delete(store.as_ref(), &object.location).await {
            Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(FreshetError::storage(&object.location, e)),
        }
        report.files_removed += 1;
        report.bytes_removed += object.size;
    }
    Ok(report)
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
