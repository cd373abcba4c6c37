//! The engine handle and its builder.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::config::TableParquetOptions;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::object_store::ObjectStore;
use datafusion::object_store::path::Path;
use datafusion::parquet::file::properties::WriterPropertiesBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use futures::TryStreamExt;

use freshet_common::{FreshetError, Result, SharedClock, SystemClock};
use freshet_sql::{ParsedStatement as Statement, parse_statements};
use freshet_storage::instrumented::{InstrumentedStore, Instruments};
use freshet_storage::{Catalog, CatalogEntry, ChangeSet, Location, StorageCounters, Table, WriteOptions};

use crate::functions;
use crate::materialized::{Materialized, MaterializedSettings, SystemSchema};
use crate::schema::{CATALOG_NAME, FreshetCatalog, FreshetSchema, SCHEMA_NAME};

/// Where an engine keeps its data when none is given.
pub const DEFAULT_LOCATION: &str = "./freshet-data";

/// Builds an [`Engine`].
#[derive(Default)]
pub struct EngineBuilder {
    location: Option<String>,
    layer: Option<StoreLayer>,
    store: Option<(Arc<dyn ObjectStore>, Path, String)>,
    target_partitions: Option<usize>,
    max_file_rows: Option<usize>,
    compact_min_files: Option<usize>,
    clock: Option<SharedClock>,
    memory_limit: Option<usize>,
    /// Local writes are not synced ([`EngineBuilder::sync_writes`]); off by default.
    unsynced: bool,
    settings: MaterializedSettings,
    file_access: crate::file_access::FileAccess,
}

/// A function wrapping the engine's object store.
type StoreLayer = Box<dyn FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> + Send>;

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("location", &self.location)
            .field("layered", &self.layer.is_some())
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// Wraps the location's object store in a layer of the caller's (metrics, caching, or
    /// failure injection in tests); the location's lock is kept.
    pub fn store_layer(
        mut self,
        layer: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> + Send + 'static,
    ) -> Self {
        self.layer = Some(Box::new(layer));
        self
    }

    /// The location: a local directory (the default, `./freshet-data`), `file:///dir`, or
    /// `memory://` for a store that lives as long as the engine.
    pub fn location(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }

    /// Any object store (S3, GCS, Azure, a test wrapper ...), with `root` as the top directory
    /// inside it. `name` is how the location is shown in messages.
    pub fn object_store(mut self, store: Arc<dyn ObjectStore>, root: Path, name: impl Into<String>) -> Self {
        self.store = Some((store, root, name.into()));
        self
    }

    /// How many partitions queries run with (default: the number of cores).
    pub fn target_partitions(mut self, partitions: usize) -> Self {
        self.target_partitions = Some(partitions.max(1));
        self
    }

    /// Rows per data file before a new one is started (default 1,048,576).
    pub fn max_file_rows(mut self, rows: usize) -> Self {
        self.max_file_rows = Some(rows.max(1));
        self
    }

    /// Number of data files above which a table is compacted in the background (default 32).
    pub fn compact_min_files(mut self, files: usize) -> Self {
        self.compact_min_files = Some(files.max(1));
        self
    }

    /// The memory the engine may use, in bytes (DataFusion's memory pool; unlimited by
    /// default). Queries and the operator state of materialized tables share it: a query
    /// that needs more fails (or spills, where DataFusion can), and so does the refresh of a
    /// materialized table whose state would grow past it.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Whether writes to a local directory are synced to disk before a commit is acknowledged
    /// (the default). Turning it off is faster for small commits, and a power loss — not a
    /// crash of the process — may then lose or corrupt the last commits: for scratch data and
    /// measurements that leave the disk out.
    pub fn sync_writes(mut self, sync: bool) -> Self {
        self.unsynced = !sync;
        self
    }

    /// The clock the engine reads time from (commit times, schedules, data lag); the system
    /// clock by default. Tests pass a [`freshet_common::ManualClock`] and advance it.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// A materialized-table setting by its key (see [`MaterializedSettings`]), such as
    /// `materialized-table.refresh-mode.freshness-threshold` = `30 min`.
    pub fn setting(mut self, key: &str, value: &str) -> Result<Self> {
        if !self.settings.set(key, value)? {
            return Err(FreshetError::InvalidStatement(format!("unknown setting '{key}'")));
        }
        Ok(self)
    }

    /// Statements may read and write local files only under these directories (which must
    /// exist): `COPY ... TO`, `CREATE EXTERNAL TABLE ... LOCATION` and the filesystem
    /// connector's `path`, including stored definitions when they are restored. Without this
    /// call any file the process can reach may be used — right for an embedded engine, wrong
    /// for a server whose clients are not its owner (`freshet serve` always restricts). An
    /// empty list allows no files at all.
    pub fn allowed_paths(mut self, directories: impl IntoIterator<Item = std::path::PathBuf>) -> Result<Self> {
        self.file_access = crate::file_access::FileAccess::under(directories)?;
        Ok(self)
    }

    /// Opens the engine: takes the location, reads its catalog and opens its tables. A table
    /// that cannot be opened is reported when used; the others work.
    pub async fn open(self) -> Result<Engine> {
        let location = match self.store {
            Some((store, root, name)) => Location::from_store(store, root, &name),
            None => Location::open_with(self.location.as_deref().unwrap_or(DEFAULT_LOCATION), !self.unsynced)?,
        };
        let location = match self.layer {
            Some(layer) => location.layer(layer),
            None => location,
        };
        // Every read and write of the store is counted, for the engine's statistics.
        let counters = Arc::new(StorageCounters::default());
        let instruments = Instruments::counting_into(counters.clone());
        let location = Arc::new(location.layer(|store| Arc::new(InstrumentedStore::new(store, instruments))));

        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG_NAME, SCHEMA_NAME);
        if let Some(partitions) = self.target_partitions {
            config = config.with_target_partitions(partitions);
        }
        // Files are written with the same Parquet settings DataFusion uses for its own writes.
        let mut parquet_options = TableParquetOptions {
            global: config.options().execution.parquet.clone(),
            ..Default::default()
        };
        // The Arrow writer embeds the Arrow schema itself; DataFusion's own check for it
        // applies to its writers only.
        parquet_options.global.skip_arrow_metadata = true;
        let parquet = WriterPropertiesBuilder::try_from(&parquet_options)
            .map_err(FreshetError::from)?
            .build();
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        // One memory pool for queries, operator state and what tables keep (key indexes).
        let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
        if let Some(bytes) = self.memory_limit {
            runtime = runtime.with_memory_limit(bytes, 1.0);
        }
        let runtime = runtime.build_arc()?;
        let defaults = WriteOptions::default();
        let options = WriteOptions {
            clock: clock.clone(),
            parquet,
            max_file_rows: self.max_file_rows.unwrap_or(defaults.max_file_rows),
            compact_min_files: self.compact_min_files.unwrap_or(defaults.compact_min_files),
            counters,
            memory_pool: Some(runtime.memory_pool.clone()),
            ..defaults
        };
        let catalog = Arc::new(Catalog::open(location.clone(), options).await?);
        let schema = Arc::new(FreshetSchema::new(catalog.clone()));
        let system = Arc::new(SystemSchema::default());
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        ctx.register_catalog(
            CATALOG_NAME,
            Arc::new(FreshetCatalog::new(schema.clone(), system.clone())),
        );
        let engine = Engine {
            inner: Arc::new(EngineInner {
                ctx,
                catalog,
                schema,
                location,
                materialized: Materialized::new(clock, self.settings),
                streams: crate::streams::Streams::default(),
                file_access: self.file_access,
            }),
        };
        system.attach(&engine.inner);
        functions::register(&engine);
        crate::flink_functions::register(&engine.inner.ctx, engine.inner.materialized.clock.clone());
        engine.restore_connector_tables().await;
        engine.restore_definitions().await;
        engine.start_scheduler();
        engine.resume_jobs().await;
        Ok(engine)
    }
}

/// An embedded Freshet engine. Cheap to clone; every clone is the same engine and may be used
/// from many tasks at once.
///
/// ```
/// # async fn demo() -> freshet::Result<()> {
/// let engine = freshet::Engine::builder().location("memory://").open().await?;
/// engine.sql("CREATE TABLE t (id INT PRIMARY KEY, name TEXT)").await?;
/// engine.sql("INSERT INTO t VALUES (1, 'one'), (2, 'two')").await?;
/// let batches = engine.sql("SELECT count(*) FROM t").await?;
/// assert_eq!(batches[0].num_rows(), 1);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub ctx: SessionContext,
    pub catalog: Arc<Catalog>,
    pub schema: Arc<FreshetSchema>,
    pub location: Arc<Location>,
    pub materialized: Materialized,
    pub streams: crate::streams::Streams,
    pub file_access: crate::file_access::FileAccess,
}

impl std::fmt::Debug for EngineInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("location", &self.location.display())
            .finish()
    }
}

impl Engine {
    /// A builder with the default settings.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Runs one or more statements, separated by `;`, in order, and returns the rows of the
    /// last one. Statements before a failing one stay committed; the failing one commits
    /// nothing, and when there are several its error says which one it was.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let stream = self.sql_stream(sql).await?;
        stream.try_collect().await.map_err(FreshetError::from)
    }

    /// Like [`Engine::sql`], but streams the rows of the last statement instead of collecting
    /// them: for large results.
    pub async fn sql_stream(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        let statements = parse_statements(sql)?;
        let Some((last, first)) = statements.split_last() else {
            return Err(FreshetError::InvalidStatement("no statement to run".into()));
        };
        let several = !first.is_empty();
        let locate = |e: FreshetError, index: usize, statement: &Statement| {
            if several {
                e.context(format!("statement {} (line {})", index + 1, statement.line))
            } else {
                e
            }
        };
        for (index, statement) in first.iter().enumerate() {
            let stream = self.run(statement).await.map_err(|e| locate(e, index, statement))?;
            let _: Vec<RecordBatch> = stream
                .try_collect()
                .await
                .map_err(|e| locate(FreshetError::from(e), index, statement))?;
        }
        self.run(last).await.map_err(|e| locate(e, first.len(), last))
    }

    /// Splits SQL text into statements without running them, for callers that run and show
    /// them one by one (a shell). Each keeps its text and the line it starts on.
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        parse_statements(sql)
    }

    /// Runs one statement parsed by [`Engine::parse`]; streams its rows.
    pub async fn execute(&self, statement: &Statement) -> Result<SendableRecordBatchStream> {
        self.run(statement).await
    }

    /// [`Engine::execute`], reporting how far the statement has got to `progress` (rows read
    /// so far) while it runs and while its rows are streamed.
    pub async fn execute_with_progress(
        &self,
        statement: &Statement,
        progress: &crate::Progress,
    ) -> Result<SendableRecordBatchStream> {
        progress.scope(self.run(statement)).await
    }

    /// Closes the engine: waits for background work (compactions) to finish, so that another
    /// engine can open the location at once and find it quiet. Dropping an engine without
    /// closing it is safe too: a compaction still running then commits (or fails) on its own.
    pub async fn close(self) {
        self.inner.streams.jobs.stop_all().await;
        self.inner.streams.stop_following().await;
        self.stop_scheduler().await;
        for (_, table) in self.inner.catalog.tables() {
            table.wait_for_background_work().await;
        }
        // A refresh's state is brought up to date on a task holding the table's state lock;
        // then what it changed since its checkpoint is written as a delta.
        for name in self.materialized_names() {
            let runtime = self.inner.materialized.runtime(&name);
            let mut slot = runtime.incremental.lock().await;
            if let (Some(state), Ok(table)) = (slot.as_mut(), self.inner.catalog.table(&name)) {
                let now = self.inner.materialized.clock.now_ms();
                if let Err(e) = crate::materialized::checkpoint_at_close(&table, state, now).await {
                    tracing::warn!(table = name, error = %e, "the operator state's changes were not checkpointed at close; the next refresh replays them");
                }
            }
        }
    }

    /// A table by name, for reading its versions and changes directly.
    pub fn table(&self, name: &str) -> Result<Arc<Table>> {
        self.inner.catalog.table(name)
    }

    /// The changes to table `name` made by versions `from + 1 ..= to`, as change batches
    /// (the table's columns and an Int64 weight: +1 inserted, -1 deleted). Costs in proportion
    /// to the change, not the table.
    pub async fn changes(&self, name: &str, from: u64, to: u64) -> Result<ChangeSet> {
        self.table(name)?.changes(from, to).await
    }

    /// The DataFusion session the engine plans with (its tables are the engine's tables).
    pub fn session(&self) -> &SessionContext {
        &self.inner.ctx
    }

    /// Where the engine keeps its data.
    pub fn location(&self) -> &str {
        self.inner.location.display()
    }

    /// Re-creates external tables and views from their stored definitions. A view may read
    /// another definition, so they are retried until no more succeed; one that still fails
    /// (its files are gone) is marked broken and reported when used.
    async fn restore_definitions(&self) {
        let manifest = self.inner.catalog.manifest();
        let mut pending: Vec<(&String, &String)> = manifest
            .entries
            .iter()
            .filter_map(|(name, entry)| match entry {
                CatalogEntry::Definition { sql, .. } => Some((name, sql)),
                CatalogEntry::Table { .. }
                | CatalogEntry::MaterializedTable { .. }
                | CatalogEntry::ConnectorTable { .. } => None,
            })
            .collect();
        let mut errors = Vec::new();
        loop {
            let before = pending.len();
            errors.clear();
            let mut failed = Vec::new();
            for (name, sql) in pending {
                if let Err(e) = self.define(sql).await {
                    failed.push((name, sql));
                    errors.push((name, e));
                }
            }
            pending = failed;
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        for (name, e) in errors {
            tracing::warn!(object = %name, error = %e, "stored definition cannot be restored");
            self.inner.schema.mark_broken(name, e);
        }
    }

    /// Runs a defining statement through DataFusion only (it registers the provider).
    pub(crate) async fn define(&self, sql: &str) -> Result<()> {
        let ctx = &self.inner.ctx;
        // Parsed as statements are (Freshet's dialect and its rewrites), planned by DataFusion.
        let mut parsed = freshet_sql::parse_statements(sql)?;
        let statement = match parsed.pop().map(|p| p.statement) {
            Some(freshet_sql::FreshetStatement::DataFusion(statement)) if parsed.is_empty() => *statement,
            _ => return Err(FreshetError::Internal(format!("not one definition: {sql}"))),
        };
        if let DFStatement::CreateExternalTable(create) = &statement {
            for location in &create.locations {
                self.inner.file_access.check("external table location", location)?;
            }
        }
        let plan = ctx.state().statement_to_plan(statement).await?;
        ctx.execute_logical_plan(plan).await?.collect().await?;
        Ok(())
    }
}

impl Engine {
    /// A DataFusion session state for one statement evaluated at `time_ms` on the engine's
    /// clock: what `now()` and `current_date` read (DataFusion's own would read the system
    /// clock, so a query and an incremental refresh would disagree on the time).
    pub(crate) fn state_at(&self, time_ms: i64) -> SessionState {
        let mut state = self.inner.ctx.state();
        state.execution_props_mut().query_execution_start_time = chrono::DateTime::from_timestamp_millis(time_ms);
        state
    }

    /// Runs a planned statement: DDL and settings through DataFusion's context, queries (and
    /// inserts) at the engine clock's current time.
    pub(crate) async fn execute_plan(&self, plan: LogicalPlan) -> Result<DataFrame> {
        Ok(match plan {
            plan @ (LogicalPlan::Ddl(_) | LogicalPlan::Statement(_)) => {
                self.inner.ctx.execute_logical_plan(plan).await?
            }
            plan => DataFrame::new(self.state_at(self.inner.materialized.clock.now_ms()), plan),
        })
    }
}
