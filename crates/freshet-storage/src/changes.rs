//! Change reads: the rows inserted and deleted between two versions, as change batches, read
//! from the change files of the versions in between — never from the table's other files.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::object_store::ObjectStore;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use freshet_common::{ChangeBatch, FreshetError, Result, consolidate};

use crate::layout::table_file;
use crate::manifest::SchemaDef;
use crate::read::{FileRead, read_deletes, read_file};
use crate::table::Table;

/// The change files between two versions, ready to be read.
#[derive(Debug)]
pub struct ChangeSet {
    table: Arc<Table>,
    schema: SchemaRef,
    /// (file, weight) in version order.
    files: Vec<(FileRead, i64)>,
    /// Bytes of change files to read.
    bytes: u64,
    /// Rows of the change files (inserts plus deletes, before consolidation).
    rows: u64,
}

impl ChangeSet {
    /// The schema of the data columns (without the weight).
    pub fn data_schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Total size of the change files that will be read.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Rows the change files hold: every insert and every delete, before equal rows are
    /// merged. Known from the manifests, before reading any file.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Number of change files.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Streams the changes as they are stored: every insert and every delete of every version,
    /// in version order. A row inserted and deleted in the range appears twice, with +1 and -1.
    ///
    /// A change of several files (an update's retractions and insertions) is decoded on several
    /// cores: each file is read whole on its own task, as many at once as the table writes in
    /// parallel, and yielded in order.
    pub fn stream(&self) -> BoxStream<'static, Result<ChangeBatch>> {
        self.stream_columns(None)
    }

    /// [`ChangeSet::stream`] of some columns only (table column indices, ascending; `None`:
    /// all): the batches hold those columns, in that order, and the others are not decoded.
    pub fn stream_columns(&self, columns: Option<&[usize]>) -> BoxStream<'static, Result<ChangeBatch>> {
        let files = match columns {
            None => self.files.clone(),
            Some(columns) => {
                let projected = self
                    .files
                    .iter()
                    .map(|(read, weight)| {
                        let schema = read
                            .schema
                            .project(columns)
                            .map_err(|e| FreshetError::Internal(format!("changes of columns {columns:?}: {e}")))?;
                        let read = FileRead {
                            projection: Some(columns.to_vec()),
                            schema: Arc::new(schema),
                            ..read.clone()
                        };
                        Ok((read, *weight))
                    })
                    .collect::<Result<Vec<_>>>();
                match projected {
                    Ok(files) => files,
                    Err(e) => return futures::stream::once(async { Err(e) }).boxed(),
                }
            }
        };
        let store = self.table.files.store.clone();
        let parallelism = self.table.options.write_parallelism.max(1);
        futures::stream::iter(files)
            .map(move |(read, weight)| {
                let task = tokio::spawn(read_changes(store.clone(), read, weight));
                async move {
                    task.await
                        .map_err(|e| FreshetError::Internal(format!("a change read stopped: {e}")))?
                }
            })
            .buffered(parallelism)
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    /// The net changes: equal rows merged, rows whose weights cancel dropped.
    pub async fn consolidated(&self) -> Result<Option<ChangeBatch>> {
        let batches: Vec<ChangeBatch> = self.stream().try_collect().await?;
        consolidate(&self.schema, &batches)
    }
}

/// The rows of one change file, each of weight `weight`.
async fn read_changes(store: Arc<dyn ObjectStore>, read: FileRead, weight: i64) -> Result<Vec<ChangeBatch>> {
    read_file(store, read)
        .await?
        .map(|batch| ChangeBatch::with_weight(&batch?, weight))
        .try_collect()
        .await
}

impl Table {
    /// The first version after `version` that changed rows (compactions and refresh records
    /// change none), with its commit time; `None` when no later version changed a row. When
    /// VACUUM removed versions after `version`, what they changed is unknown: the first
    /// retained version is reported as the change.
    pub async fn first_change_after(&self, version: u64) -> Result<Option<(u64, i64)>> {
        let newest = self.snapshot().version();
        let mut vacuumed = false;
        for v in version + 1..=newest {
            let manifest = match self.read_manifest(v).await {
                Ok(manifest) => manifest,
                Err(FreshetError::VersionNotFound { .. }) => {
                    vacuumed = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if vacuumed || !manifest.changes.is_empty() {
                return Ok(Some((v, manifest.committed_at_ms)));
            }
        }
        Ok(None)
    }

    /// The changes made by versions `from + 1 ..= to`. `from` may be 0, the empty table before
    /// its creation. Both versions must be retained.
    pub async fn changes(self: &Arc<Self>, from: u64, to: u64) -> Result<ChangeSet> {
        let newest = self.snapshot().version();
        if from > to {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{}\": changes from version {from} to version {to}: the start is after the end",
                self.name()
            )));
        }
        if to > newest {
            return Err(FreshetError::VersionNotFound {
                table: self.name().into(),
                version: to,
                reason: format!("the newest version is {newest}"),
            });
        }
        let mut files = Vec::new();
        let mut bytes = 0;
        let mut rows = 0;
        let mut schema: Option<SchemaRef> = None;
        for version in from + 1..=to {
            let manifest = self.read_manifest(version).await?;
            let version_schema = match &schema {
                Some(s) if manifest.schema != SchemaDef::from_arrow(s.as_ref()) => {
                    return Err(FreshetError::InvalidStatement(format!(
                        "table \"{}\": its columns changed at version {version}; read the changes before and \
                         after that version separately",
                        self.name()
                    )));
                }
                Some(s) => Arc::clone(s),
                None => {
                    let s = manifest.schema.to_arrow(self.log.path(version).as_ref())?;
                    schema = Some(s.clone());
                    s
                }
            };
            let changes = manifest.changes;
            for file in &changes.removed {
                let deletes = match &file.deletes {
                    Some(dv) => Some(Arc::new(
                        read_deletes(&self.files.store, &table_file(&self.files.dir, &dv.path)).await?,
                    )),
                    None => None,
                };
                bytes += file.bytes;
                rows += file.live_rows();
                let schema = version_schema.clone();
                let read = self
                    .files
                    .file_read(&file.path, file.bytes, file.rows, file.generated.as_ref(), schema);
                files.push((FileRead { deletes, ..read }, -1));
            }
            for (list, weight) in [(&changes.inserted, 1), (&changes.retracted, -1)] {
                for file in list {
                    bytes += file.bytes;
                    rows += file.rows;
                    let schema = version_schema.clone();
                    let read = self
                        .files
                        .file_read(&file.path, file.bytes, file.rows, file.generated.as_ref(), schema);
                    files.push((read, weight));
                }
            }
        }
        let schema = match schema {
            Some(s) => s,
            None => self.snapshot().schema().clone(),
        };
        Ok(ChangeSet {
            table: self.clone(),
            schema,
            files,
            bytes,
            rows,
        })
    }
}
