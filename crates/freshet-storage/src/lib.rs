//! Freshet's table format: durable, versioned tables on any `object_store`, whose changes
//! between two versions can be read at a cost proportional to the change.
//!
//! A table is a directory of immutable files and one JSON manifest per version. The manifest of
//! a version lists the Parquet data files whose live rows are the table, each with an optional
//! deletion vector (a Roaring bitmap of deleted row positions), and the files holding the
//! changes the version made: data files of inserted rows and retraction files of deleted rows.
//! Deleting or updating k rows writes O(k) data (merge-on-read) until compaction rewrites the
//! live rows; compaction commits a version with the same contents and no changes.
//!
//! Commits are atomic: files are written under fresh names first, then the next manifest is
//! created with a conditional put. Readers hold a [`Snapshot`] and never see a partial commit.
//! The [`Catalog`] names tables the same way, with numbered catalog versions.
//!
//! The format is described for people in `docs/architecture.md` of the repository.

mod catalog;
mod changes;
#[cfg(test)]
mod generated_tests;
mod hash;
mod held;
pub mod instrumented;
mod keys;
mod layout;
mod location;
mod log;
mod maintenance;
mod manifest;
mod mapped;
mod moves;
mod provider;
mod prune;
mod read;
mod snapshot;
mod statistics;
pub mod synced;
mod table;
mod transaction;
mod write;

pub use catalog::{Catalog, CatalogEntry, CatalogManifest, NewTable, TableSlot};
pub use changes::ChangeSet;
pub use held::HeldRows;
pub use location::Location;
pub use maintenance::{DEFAULT_ORPHAN_GRACE, Retain, VacuumReport};
pub use manifest::{
    ChangeFile, Changes, ColumnDef, DataFile, DeletionVector, FORMAT_VERSION, GeneratedRows, Manifest, RowGenerator,
    SchemaDef, StateCheckpoint, StateFile,
};
pub use moves::{CompactionMoves, FileMoves, MovesListener};
pub use provider::{SnapshotScanExec, SnapshotTable, delete_matching, delete_positioned, upsert_by_key};
pub use snapshot::{FILE_COLUMN, POSITION_COLUMN, Snapshot};
pub use statistics::{StorageCounters, StorageStatistics};
pub use table::{Table, WriteOptions};
pub use transaction::{CommitInfo, Transaction};
pub use write::{Placement, Placements};
