//! The JSON documents of the format: table manifests and the schema they carry.

use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use freshet_common::{FreshetError, Result};

/// Version of the manifest format written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// One committed version of a table: which files make up its rows, and which files hold the
/// changes this version made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version; readers refuse formats newer than theirs.
    pub format: u32,
    /// The table's identifier (its directory under `tables/`).
    pub table_id: String,
    /// This version's number. Version 1 is the table's creation; versions only grow by one.
    pub version: u64,
    /// Commit time, milliseconds since the Unix epoch; never less than the parent's.
    pub committed_at_ms: i64,
    /// What made this version: `CREATE`, `INSERT`, `UPDATE`, `DELETE`, `COMPACT`, ...
    pub operation: String,
    /// The table's columns.
    pub schema: SchemaDef,
    /// Names of the primary-key columns, in key order; empty when the table has none.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// The data files whose live rows are the table's contents at this version.
    pub files: Vec<DataFile>,
    /// The changes this version made relative to its parent.
    pub changes: Changes,
    /// For a materialized table: what the refresh that produced these contents read (the
    /// versions of its inputs) and did. The engine defines the document; storage commits it
    /// atomically with the rows, and later versions that do not refresh (compaction) keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<serde_json::Value>,
    /// A checkpoint of the operator state that maintains the table (materialized tables): files
    /// the engine wrote and a document saying what they hold. Committed atomically with the
    /// rows; later versions keep it until one replaces it, and VACUUM keeps its files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateCheckpoint>,
    /// A fresh id of the transaction that wrote this version, by which a writer recognises
    /// its own commit when the store's answer to the put was lost (see `log.rs`). Absent in
    /// versions written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
}

impl Manifest {
    /// Number of rows of the table at this version.
    pub fn live_rows(&self) -> u64 {
        self.files.iter().map(DataFile::live_rows).sum()
    }
}

/// Files of operator state and what they hold (see [`Manifest::state`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateCheckpoint {
    /// The files, paths relative to the table directory (`state/<uuid>.arrow`).
    pub files: Vec<StateFile>,
    /// What the engine needs to read them back; storage does not look inside.
    pub meta: serde_json::Value,
}

/// One file of a [`StateCheckpoint`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateFile {
    /// Path relative to the table directory.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// The checksum of its contents (XXH3-128 over its 16 MiB blocks' XXH3-128s, in hex:
    /// `hash.rs`): a checkpoint read back is checked whole, so that a damaged one is refused
    /// rather than restored into wrong results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
    /// The BLAKE3 hash of its contents, in hex, which earlier versions recorded instead of
    /// [`StateFile::xxh3`]; checked when that is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

impl StateFile {
    /// Describes `bytes`, written at a new path (relative to its directory).
    pub(crate) fn of(path: String, bytes: &[u8]) -> Self {
        Self {
            path,
            bytes: bytes.len() as u64,
            xxh3: Some(crate::hash::checksum(bytes)),
            blake3: None,
        }
    }

    /// Reads this file from `location` in `store`, checked against its size and checksum. In
    /// a local location (`local`: the file's path on the file system) it is mapped rather than
    /// read ([`crate::mapped`]), and checked on a blocking thread.
    pub(crate) async fn read(
        &self,
        store: &dyn datafusion::object_store::ObjectStore,
        location: &datafusion::object_store::path::Path,
        local: Option<std::path::PathBuf>,
    ) -> Result<bytes::Bytes> {
        use datafusion::object_store::ObjectStoreExt;
        if let Some(path) = local {
            let (file, at) = (self.clone(), location.clone());
            return tokio::task::spawn_blocking(move || {
                let bytes = crate::mapped::map(&path).map_err(|e| crate::mapped::error(&at, e))?;
                file.verify(&at, &bytes)?;
                Ok(bytes)
            })
            .await
            .map_err(|e| FreshetError::Internal(format!("reading {location}: {e}")))?;
        }
        let bytes = store
            .get(location)
            .await
            .map_err(|e| FreshetError::storage(location, e))?
            .bytes()
            .await
            .map_err(|e| FreshetError::storage(location, e))?;
        self.verify(location, &bytes)?;
        Ok(bytes)
    }

    /// Checks that `bytes`, read from `location`, are this file: its size and its checksum
    /// (or, recorded by an earlier version, its BLAKE3 hash).
    fn verify(&self, location: &datafusion::object_store::path::Path, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 != self.bytes {
            return Err(FreshetError::corrupt(
                location,
                format!("{} bytes, the manifest says {}", bytes.len(), self.bytes),
            ));
        }
        let matches = match (&self.xxh3, &self.blake3) {
            (Some(xxh3), _) => crate::hash::checksum(bytes) == *xxh3,
            (None, Some(blake3)) => crate::hash::blake3(bytes) == *blake3,
            (None, None) => {
                return Err(FreshetError::corrupt(
                    location,
                    "the manifest records no checksum for it",
                ));
            }
        };
        if !matches {
            return Err(FreshetError::corrupt(
                location,
                "its contents do not hash to what the manifest says",
            ));
        }
        Ok(())
    }
}

/// A Parquet data file and the rows of it that are deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataFile {
    /// Path relative to the table directory, e.g. `data/<uuid>.parquet`.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// The deletion vector, if any row of the file is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes: Option<DeletionVector>,
    /// Set when the rows are not in a file but made again by the table's generator whenever
    /// they are read (`path` then names no file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<GeneratedRows>,
}

impl DataFile {
    /// Rows of the file that are not deleted.
    pub fn live_rows(&self) -> u64 {
        self.rows - self.deletes.as_ref().map_or(0, |d| d.count)
    }
}

/// A file holding the positions (0-based row numbers) of deleted rows of one data file, as a
/// portable serialized 64-bit Roaring bitmap.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeletionVector {
    /// Path relative to the table directory, e.g. `deletes/<uuid>.roaring`.
    pub path: String,
    /// Number of deleted positions.
    pub count: u64,
}

/// The files that hold one version's changes. Reading them costs in proportion to the change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Changes {
    /// Data files added by this version whose rows are all new (weight +1). Compaction adds data
    /// files that are not changes; they are not listed here.
    #[serde(default)]
    pub inserted: Vec<ChangeFile>,
    /// Files holding the rows this version deleted (weight -1).
    #[serde(default)]
    pub retracted: Vec<ChangeFile>,
    /// Data files of the parent version that this version dropped whole (a full refresh
    /// replacing a table's contents): their live rows at the parent version, with its deletion
    /// vectors applied, are deleted (weight -1) without being copied to retraction files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<DataFile>,
    /// Set by an UPDATE: its retracted rows are its inserted rows' old values, one for one,
    /// and a pair differs in these columns only (by name). A reader of other columns sees
    /// every pair cancel; a reader of one of them sees pairs that differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<Vec<String>>,
}

impl Changes {
    /// Whether the version changed no row.
    pub fn is_empty(&self) -> bool {
        self.inserted.is_empty() && self.retracted.is_empty() && self.removed.is_empty()
    }
}

/// A Parquet file of changed rows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChangeFile {
    /// Path relative to the table directory.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// As [`DataFile::generated`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<GeneratedRows>,
}

/// Rows a table's generator makes whenever they are read, kept in a manifest in place of a data
/// file: the rows of a source whose rows are a function of their position in its sequence (the
/// Nexmark generator) need not be written, only where they start ([`crate::RowGenerator`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GeneratedRows {
    /// The position of the first row in the generator's sequence.
    pub first: u64,
    /// The time the generator's sequence counts from (ms since the Unix epoch).
    pub origin_ms: i64,
    /// What else the rows depend on (the generator's options, the table's columns), as the
    /// generator that made them describes itself: only a generator describing itself the same
    /// way makes them again.
    pub generator: String,
}

impl GeneratedRows {
    /// The path a manifest lists generated rows under: never a file's.
    pub(crate) fn path(&self, rows: u64) -> String {
        format!("generated:{}+{rows}", self.first)
    }
}

/// A table's rows made on demand (see [`GeneratedRows`]), registered on the table with
/// [`crate::Table::set_generator`].
pub trait RowGenerator: Send + Sync + std::fmt::Debug {
    /// What its rows depend on beyond their positions, as [`GeneratedRows::generator`] records.
    fn describe(&self) -> &str;

    /// The rows at positions `rows.first .. rows.first + count` of its sequence, with the
    /// table's columns, exactly as they were when first generated.
    fn generate(&self, rows: &GeneratedRows, count: u64) -> Result<Vec<datafusion::arrow::record_batch::RecordBatch>>;
}

/// A table's columns as stored: Arrow types written as Arrow's own type names
/// (`Int64`, `Utf8`, `Decimal128(10, 2)`, `Timestamp(µs, "UTC")`), readable by hand.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SchemaDef {
    /// The columns, in order.
    pub columns: Vec<ColumnDef>,
}

/// One column.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnDef {
    /// Column name.
    pub name: String,
    /// Arrow data type, as Arrow displays it.
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether NULL is allowed.
    pub nullable: bool,
}

impl SchemaDef {
    /// Describes an Arrow schema.
    pub fn from_arrow(schema: &Schema) -> Self {
        Self {
            columns: schema
                .fields()
                .iter()
                .map(|f| ColumnDef {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                })
                .collect(),
        }
    }

    /// The Arrow schema described; `origin` names the file for the error message.
    pub fn to_arrow(&self, origin: &str) -> Result<SchemaRef> {
        let fields = self
            .columns
            .iter()
            .map(|c| {
                let data_type = DataType::from_str(&c.data_type).map_err(|e| {
                    FreshetError::corrupt(
                        origin,
                        format!("column \"{}\" has unknown type \"{}\": {e}", c.name, c.data_type),
                    )
                })?;
                Ok(Field::new(&c.name, data_type, c.nullable))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{IntervalUnit, TimeUnit};

    /// A state file is recorded with its XXH3 checksum; one recorded by an earlier version
    /// with a BLAKE3 hash is checked against that; other bytes, or a record of neither, are
    /// refused as damaged.
    #[test]
    fn state_files_are_checked_by_the_hash_they_were_recorded_with() {
        let at = datafusion::object_store::path::Path::from("state/x.arrow");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let file = StateFile::of("state/x.arrow".into(), &bytes);
        assert!(file.blake3.is_none());
        let json = serde_json::to_value(&file).unwrap();
        assert!(json.get("blake3").is_none() && json.get("xxh3").is_some(), "{json}");
        file.verify(&at, &bytes).unwrap();
        let mut changed = bytes.clone();
        changed[77_777] ^= 0x10;
        assert!(file.verify(&at, &changed).is_err());
        assert!(file.verify(&at, &bytes[1..]).is_err());

        let earlier: StateFile = serde_json::from_value(serde_json::json!({
            "path": "state/x.arrow",
            "bytes": bytes.len(),
            "blake3": blake3::hash(&bytes).to_hex().to_string(),
        }))
        .unwrap();
        earlier.verify(&at, &bytes).unwrap();
        assert!(earlier.verify(&at, &changed).is_err());
        let neither = StateFile {
            blake3: None,
            ..earlier
        };
        assert!(neither.verify(&at, &bytes).is_err());
    }

    #[test]
    fn every_common_type_round_trips_through_its_name() {
        let types = vec![
            DataType::Boolean,
            DataType::Int8,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::UInt64,
            DataType::Float32,
            DataType::Float64,
            DataType::Decimal128(38, 10),
            DataType::Decimal128(10, 2),
            DataType::Utf8,
            DataType::Utf8View,
            DataType::LargeUtf8,
            DataType::Binary,
            DataType::Date32,
            DataType::Time64(TimeUnit::Nanosecond),
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            DataType::Interval(IntervalUnit::MonthDayNano),
            DataType::new_list(DataType::Int64, true),
        ];
        let schema = Schema::new(
            types
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("c{i}"), t.clone(), i % 2 == 0))
                .collect::<Vec<_>>(),
        );
        let def = SchemaDef::from_arrow(&schema);
        let json = serde_json::to_string(&def).unwrap();
        let back: SchemaDef = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_arrow("test").unwrap().as_ref(), &schema);
    }
}
