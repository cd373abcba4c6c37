//! # Freshet
//!
//! An embeddable streaming SQL engine on Apache DataFusion. This crate is what applications
//! use: open an [`Engine`] on a location, run SQL with [`Engine::sql`].
//!
//! Tables are durable and versioned: every committed statement makes a new version of the
//! tables it writes, any retained version can be read (`SELECT * FROM t VERSION AS OF 3`, or
//! `FOR SYSTEM_TIME AS OF TIMESTAMP '...'`), and the changes between two versions can be read
//! as change batches at a cost proportional to the change ([`Engine::changes`], or SQL
//! `SELECT * FROM table_changes('t', 3, 5)`). That is what materialized tables are maintained
//! from.
//!
//! A **materialized table** is a query kept fresh by the engine:
//! `CREATE MATERIALIZED TABLE daily FRESHNESS = INTERVAL '1' HOUR AS SELECT ...` (Apache Flink's
//! grammar). A scheduler inside the engine refreshes it at its freshness; its status and data
//! lag are in [`Engine::materialized_table`] and the system table `freshet.materialized_tables`.
//! Time comes from an injectable [`Clock`], so tests advance a [`ManualClock`] and call
//! [`Engine::wait_for_refreshes`] instead of sleeping.
//!
//! ```
//! # async fn tour() -> freshet::Result<()> {
//! use freshet::Engine;
//!
//! let engine = Engine::builder().location("memory://").open().await?;
//! engine.sql("CREATE TABLE orders (id BIGINT PRIMARY KEY, amount DECIMAL(10, 2))").await?;
//! engine.sql("INSERT INTO orders VALUES (1, 9.99), (2, 20.00)").await?; // version 2
//! engine.sql("UPDATE orders SET amount = 25.00 WHERE id = 2").await?; // version 3
//!
//! // The update as a change: the old row retracted (-1), the new one inserted (+1).
//! let changes = engine.changes("orders", 2, 3).await?.consolidated().await?.unwrap();
//! assert_eq!(changes.num_rows(), 2);
//!
//! // The table as it was before the update.
//! let before = engine.sql("SELECT amount FROM orders VERSION AS OF 2 WHERE id = 2").await?;
//! assert_eq!(before[0].num_rows(), 1);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(tour()).unwrap();
//! ```
//!
//! The storage format and the crates' architecture are described in `docs/architecture.md`.

mod dml;
mod engine;
mod execute;
mod file_access;
mod flink_functions;
mod functions;
pub mod materialized;
pub mod nexmark;
mod progress;
mod retention;
mod schema;
mod streams;
mod subscribe;
mod time_travel;
mod window_functions;

pub use engine::{DEFAULT_LOCATION, Engine, EngineBuilder};
pub use freshet_common::{
    ChangeBatch, Clock, ErrorDomain, FreshetError, ManualClock, Result, SharedClock, SystemClock, WEIGHT_COLUMN,
};
pub use freshet_runtime::connector::parse_size;
pub use freshet_runtime::{Job, JobInfo, JobStatus};
pub use freshet_sql::ParsedStatement as Statement;
pub use freshet_sql::{Freshness, FreshnessUnit, RefreshMode};
pub use freshet_storage::{ChangeSet, Snapshot, StorageStatistics, Table};
pub use materialized::{
    LastRefresh, MaterializedSettings, MaterializedTableInfo, REFRESH_DURATION_BUCKETS, REFRESH_FAILED_TARGET,
    RefreshOutcome, RefreshRecord, RefreshStatistics, Status, Trigger,
};
pub use progress::Progress;
pub use schema::{CATALOG_NAME, SCHEMA_NAME};
pub use streams::SourceInfo;
pub use subscribe::{SUBSCRIBE_VERSION, SUBSCRIBE_WEIGHT};

/// Freshet's SQL dialect and statements, for callers that inspect statements before running
/// them (a server binding parameters).
pub use freshet_sql as sql;

/// The table format, for direct access to versions, changes and storage layers.
pub use freshet_storage as storage;

/// DataFusion, as Freshet uses it (the single copy of arrow, parquet and object_store).
pub use datafusion;
