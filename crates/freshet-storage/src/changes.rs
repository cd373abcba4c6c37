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

/// A change file to read.
#[derive(Debug)]
struct ChangeFileRead {
    read: FileRead,
    /// Of each of its rows.
    weight: i64,
    /// The columns its version's UPDATE set (see [`crate::manifest::Changes::updated`]).
    updated: Option<Arc<[usize]>>,
}

/// The change files between two versions, ready to be read.
#[derive(Debug)]
pub struct ChangeSet {
    table: Arc<Table>,
    schema: SchemaRef,
    /// In version order.
    files: Vec<ChangeFileRead>,
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
        let files = self.files.iter().map(|f| (f.read.clone(), f.weight, false)).collect();
        self.stream_files(files, columns).map_ok(|(batch, _)| batch).boxed()
    }

    /// The changes as a reader of the columns `columns` (as in
    /// [`ChangeSet::stream_columns`]) needs them to follow the table: an UPDATE that set
    /// none of those columns is left out (each row it deleted is one it inserted, as those
    /// columns see it), and each batch says whether it holds an UPDATE's rows, which differ
    /// from each other in a column read (`true`: no row of it cancels another of it, barring
    /// an UPDATE that set a value it had).
    pub fn stream_read(&self, columns: Option<&[usize]>) -> BoxStream<'static, Result<(ChangeBatch, bool)>> {
        let reads = |updated: &[usize]| columns.is_none_or(|columns| updated.iter().any(|c| columns.contains(c)));
        let files = self
            .files
            .iter()
            .filter_map(|f| match &f.updated {
                None => Some((f.read.clone(), f.weight, false)),
                Some(updated) => reads(updated).then(|| (f.read.clone(), f.weight, true)),
            })
            .collect();
        self.stream_files(files, columns)
    }

    /// The rows of `files` (each with its weight and a mark passed on with its batches), of
    /// the columns `columns`.
    fn stream_files(
        &self,
        files: Vec<(FileRead, i64, bool)>,
        columns: Option<&[usize]>,
    ) -> BoxStream<'static, Result<(ChangeBatch, bool)>> {
        let files = match columns {
            None => files,
            Some(columns) => {
                let projected = files
                    .into_iter()
                    .map(|(read, weight, mark)| {
                        let schema = read
                            .schema
                            .project(columns)
                            .map_err(|e| FreshetError::Internal(format!("changes of columns {columns:?}: {e}")))?;
                        let read = FileRead {
                            projection: Some(columns.to_vec()),
                            schema: Arc::new(schema),
                            ..read
                        };
                        Ok((read, weight, mark))
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
            .map(move |(read, weight, mark)| {
                let task = tokio::spawn(read_changes(store.clone(), read, weight));
                async move {
                    let batches = task
                        .await
                        .map_err(|e| FreshetError::Internal(format!("a change read stopped: {e}")))??;
                    Ok::<_, FreshetError>(batches.into_iter().map(move |batch| Ok((batch, mark))))
                }
            })
            .buffered(parallelism)
            .map_ok(futures::stream::iter)
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
            // An UPDATE's columns, as indices (none when a name is unknown).
            let updated: Option<Arc<[usize]>> = changes.updated.as_ref().and_then(|names| {
                names
                    .iter()
                    .map(|name| version_schema.index_of(name).ok())
                    .collect::<Option<Vec<usize>>>()
                    .map(Into::into)
            });
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
                files.push(ChangeFileRead {
                    read: FileRead { deletes, ..read },
                    weight: -1,
                    updated: None,
                });
            }
            for (list, weight) in [(&changes.inserted, 1), (&changes.retracted, -1)] {
                for file in list {
                    bytes += file.bytes;
                    rows += file.rows;
                    let schema = version_schema.clone();
                    let read = self
                        .files
                        .file_read(&file.path, file.bytes, file.rows, file.generated.as_ref(), schema);
                    files.push(ChangeFileRead {
                        read,
                        weight,
                        updated: updated.clone(),
                    });
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
