//! Primary-key enforcement: the set of keys of the newest version, kept in memory once built,
//! and the changes a transaction makes to it.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use futures::TryStreamExt;

use freshet_common::{FreshetError, Result};

use crate::snapshot::Snapshot;

/// The keys of one version of a table.
#[derive(Debug)]
pub(crate) struct KeyIndex {
    pub version: u64,
    keys: foldhash::HashSet<OwnedRow>,
    /// The keys' memory, accounted in the engine's pool.
    memory: Option<MemoryReservation>,
}

/// Bytes a key set spends per key beside the key's own bytes (the owned row and the hash
/// table's slot), for memory accounting.
pub(crate) const KEY_OVERHEAD: usize = 48;

/// What `keys` take in memory, about.
fn key_bytes<'a>(keys: impl Iterator<Item = &'a OwnedRow>) -> usize {
    keys.map(|k| k.row().as_ref().len() + KEY_OVERHEAD).sum()
}

/// The error of a key index the memory limit has no room for.
fn over_limit(table: &str, bytes: usize, e: datafusion::error::DataFusionError) -> FreshetError {
    FreshetError::from(e).context(format!(
        "table \"{table}\": its primary-key index needs {:.1} MiB, more than the engine's memory limit allows",
        bytes as f64 / f64::from(1u32 << 20)
    ))
}

/// Encodes key columns of batches into comparable rows.
pub(crate) struct KeyEncoder {
    indices: Vec<usize>,
    converter: RowConverter,
}

impl KeyEncoder {
    pub(crate) fn new(snapshot: &Snapshot) -> Result<Self> {
        let indices = snapshot.primary_key_indices();
        let fields = indices
            .iter()
            .map(|&i| SortField::new(snapshot.schema().field(i).data_type().clone()))
            .collect();
        let converter =
            RowConverter::new(fields).map_err(|e| FreshetError::Internal(format!("cannot index primary keys: {e}")))?;
        Ok(Self { indices, converter })
    }

    /// The key rows of `batch`, whose first columns are the table's columns.
    pub(crate) fn encode(&self, batch: &RecordBatch) -> Result<Rows> {
        let columns: Vec<ArrayRef> = self.indices.iter().map(|&i| batch.column(i).clone()).collect();
        self.encode_columns(&columns)
    }

    /// The key rows of the key columns alone, in key order.
    pub(crate) fn encode_columns(&self, columns: &[ArrayRef]) -> Result<Rows> {
        self.converter
            .convert_columns(columns)
            .map_err(|e| FreshetError::Internal(format!("cannot encode primary keys: {e}")))
    }

    /// The key of row `row` of `batch` as SQL literals, for error messages.
    pub(crate) fn render(&self, batch: &RecordBatch, row: usize) -> String {
        self.indices
            .iter()
            .map(|&i| render_value(batch.column(i), row))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn render_value(column: &ArrayRef, row: usize) -> String {
    if column.is_null(row) {
        return "NULL".into();
    }
    let text = array_value_to_string(column, row).unwrap_or_else(|_| "?".into());
    match column.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            format!("'{}'", text.replace('\'', "''"))
        }
        _ => text,
    }
}

impl KeyIndex {
    /// Reads the keys of a snapshot.
    /// Reads the keys of a snapshot, accounting them in `pool`: past the memory limit, an error
    /// naming the table.
    pub(crate) async fn build(
        snapshot: &Arc<Snapshot>,
        encoder: &KeyEncoder,
        pool: Option<&Arc<dyn MemoryPool>>,
    ) -> Result<Self> {
        let mut memory = pool.map(|pool| {
            MemoryConsumer::new(format!("primary-key index of \"{}\"", snapshot.table_name())).register(pool)
        });
        let mut keys = foldhash::HashSet::default();
        let mut bytes = 0usize;
        let projection = Some(snapshot.primary_key_indices());
        let mut stream = snapshot.scan(projection, false);
        while let Some(batch) = stream.try_next().await? {
            // The projected batches hold only the key columns, in key order.
            let rows = encoder.encode_columns(batch.columns())?;
            bytes += rows.iter().map(|r| r.as_ref().len() + KEY_OVERHEAD).sum::<usize>();
            if let Some(memory) = memory.as_mut() {
                memory
                    .try_resize(bytes)
                    .map_err(|e| over_limit(snapshot.table_name(), bytes, e))?;
            }
            keys.extend(rows.iter().map(|r| r.owned()));
        }
        Ok(Self {
            version: snapshot.version(),
            keys,
            memory,
        })
    }

    /// The keys after a committed transaction that replaced every row; `None` when the memory
    /// limit has no room for them (the next write builds the index again, or fails saying so).
    pub(crate) fn replaced(delta: KeyDelta, version: u64, pool: Option<&Arc<dyn MemoryPool>>) -> Option<Self> {
        let mut index = Self {
            version,
            keys: delta.added,
            memory: pool.map(|pool| MemoryConsumer::new("primary-key index").register(pool)),
        };
        index.account().then_some(index)
    }

    /// Applies a committed transaction's key changes; `false` when the memory limit has no room
    /// for the keys now (the caller drops the index).
    pub(crate) fn apply(&mut self, delta: KeyDelta, version: u64) -> bool {
        for key in delta.removed {
            self.keys.remove(&key);
        }
        self.keys.extend(delta.added);
        self.version = version;
        self.account()
    }

    /// Resizes the index's reservation to its keys; `false` when the limit does not allow it.
    fn account(&mut self) -> bool {
        let bytes = key_bytes(self.keys.iter());
        self.memory.as_mut().is_none_or(|m| m.try_resize(bytes).is_ok())
    }
}

/// Keys a transaction removed and added, on top of its base version's keys.
#[derive(Debug, Default)]
pub(crate) struct KeyDelta {
    removed: foldhash::HashSet<OwnedRow>,
    added: foldhash::HashSet<OwnedRow>,
    /// Every key of the base version was removed (the transaction replaces all rows).
    pub cleared: bool,
}

impl KeyDelta {
    /// The delta of a transaction that starts by removing every row.
    pub(crate) fn cleared() -> Self {
        Self {
            cleared: true,
            ..Self::default()
        }
    }

    /// Records deleted rows' keys.
    pub(crate) fn remove(&mut self, rows: &Rows) {
        for row in rows.iter() {
            let owned = row.owned();
            if !self.added.remove(&owned) {
                self.removed.insert(owned);
            }
        }
    }

    /// Records inserted rows' keys; returns the row index of the first key that already exists.
    /// `base` may be `None` only when the delta is cleared.
    pub(crate) fn add(&mut self, base: Option<&KeyIndex>, rows: &Rows) -> Option<usize> {
        for (i, row) in rows.iter().enumerate() {
            let owned = row.owned();
            let in_base =
                !self.cleared && base.is_some_and(|b| b.keys.contains(&owned)) && !self.removed.contains(&owned);
            if in_base || self.added.contains(&owned) {
                return Some(i);
            }
            self.added.insert(owned);
        }
        None
    }
}
