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
        self.add_where(rows, |key| base.is_some_and(|b| b.keys.contains(key)))
    }

    /// [`KeyDelta::add`] with the base version's keys among `rows` looked up in the table
    /// ([`probe`]) rather than in its index: `found` holds those it has.
    pub(crate) fn add_probed(&mut self, found: &foldhash::HashSet<OwnedRow>, rows: &Rows) -> Option<usize> {
        self.add_where(rows, |key| found.contains(key))
    }

    fn add_where(&mut self, rows: &Rows, in_base: impl Fn(&OwnedRow) -> bool) -> Option<usize> {
        for (i, row) in rows.iter().enumerate() {
            let owned = row.owned();
            let in_base = !self.cleared && !self.removed.contains(&owned) && in_base(&owned);
            if in_base || self.added.contains(&owned) {
                return Some(i);
            }
            self.added.insert(owned);
        }
        None
    }

    /// Whether the transaction removed `key` from the base version.
    pub(crate) fn removed(&self, key: &OwnedRow) -> bool {
        self.removed.contains(key)
    }
}

/// Inserts of at most this many rows (over a transaction) into a table whose key index is not
/// built look their keys up in the table instead ([`probe`]): building the index reads every
/// key and holds it in memory — a one-row `INSERT` into a table of 6 M rows, one process per
/// statement, took 2 s and 770 MB, nearly all of it the index.
pub(crate) const PROBE_MAX_ROWS: usize = 1_024;

/// Transactions that may look their keys up ([`PROBE_MAX_ROWS`]) before the next one builds
/// the index: an engine that keeps writing amortizes it, a process per statement never does.
pub(crate) const PROBES_BEFORE_INDEX: u32 = 16;

/// The keys of `batch`'s rows (but those in `skip`) that live rows of `snapshot` hold: a scan
/// of the key columns that skips the row groups whose statistics rule every key out.
pub(crate) async fn probe(
    snapshot: &Arc<Snapshot>,
    encoder: &KeyEncoder,
    batch: &RecordBatch,
    skip: impl Fn(&OwnedRow) -> bool,
) -> Result<foldhash::HashSet<OwnedRow>> {
    let wanted: foldhash::HashSet<OwnedRow> = encoder
        .encode(batch)?
        .iter()
        .map(|row| row.owned())
        .filter(|key| !skip(key))
        .collect();
    let mut found = foldhash::HashSet::default();
    if wanted.is_empty() || snapshot.manifest().files.is_empty() {
        return Ok(found);
    }
    let pruning = key_pruning(snapshot, encoder, batch);
    let files = (0..snapshot.manifest().files.len()).collect();
    let mut stream = snapshot.scan_files_pruned(files, Some(encoder.indices.clone()), false, pruning);
    while let Some(rows) = stream.try_next().await? {
        // The projected batches hold only the key columns, in key order.
        for key in encoder.encode_columns(rows.columns())?.iter() {
            let key = key.owned();
            if wanted.contains(&key) {
                found.insert(key);
            }
        }
    }
    Ok(found)
}

/// The pruning predicate `key IN (the batch's keys)` over the table's columns — of the key's
/// first column, for a key of several: a disjunction of a conjunction per row would be a tree
/// as deep as the batch is long, which planning it recurses through (a stack overflow at a
/// few hundred rows), and the first column rules out about as many row groups.
fn key_pruning(
    snapshot: &Snapshot,
    encoder: &KeyEncoder,
    batch: &RecordBatch,
) -> Option<Arc<datafusion::physical_optimizer::pruning::PruningPredicate>> {
    use datafusion::common::{Column, DFSchema, ScalarValue};
    use datafusion::logical_expr::{Expr, lit};
    // Statistics decide `IN` lists of at most this many values (DataFusion's pruning rewrites
    // longer ones into nothing it can use).
    if batch.num_rows() > datafusion::physical_optimizer::pruning::MAX_IN_LIST_SIZE {
        return None;
    }
    let schema = snapshot.schema();
    let first = *encoder.indices.first()?;
    let column = Expr::Column(Column::new_unqualified(schema.field(first).name()));
    // A NULL key equals no value, so statistics could rule out the row groups that hold
    // another NULL: no pruning then (the keys found are compared as rows either way).
    let values = (0..batch.num_rows())
        .map(|row| {
            ScalarValue::try_from_array(batch.column(first), row)
                .ok()
                .filter(|value| !value.is_null())
                .map(lit)
        })
        .collect::<Option<Vec<_>>>()?;
    let predicate = column.in_list(values, false);
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).ok()?;
    let props = datafusion::execution::context::ExecutionProps::new();
    let physical =
        datafusion::physical_expr::create_physical_expr(&predicate, &df_schema, &props, &Default::default()).ok()?;
    crate::provider::pruning_of(schema, physical)
}
