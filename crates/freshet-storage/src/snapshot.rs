//! One version of a table, readable for as long as it is retained.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::object_store::ObjectStore;
use datafusion::object_store::path::Path;
use datafusion::physical_optimizer::pruning::PruningPredicate;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use roaring::RoaringTreemap;
use tokio::sync::OnceCell;

use freshet_common::Result;

use crate::layout::table_file;
use crate::manifest::{GeneratedRows, Manifest, RowGenerator};
use crate::read::{FileRead, GeneratedRead, read_deletes, read_file};

/// Name of the column holding a row's data-file index in position scans.
pub const FILE_COLUMN: &str = "__freshet_file";
/// Name of the column holding a row's position in its data file in position scans.
pub const POSITION_COLUMN: &str = "__freshet_pos";

/// The parts of a table that do not change between versions.
#[derive(Debug)]
pub(crate) struct TableFiles {
    pub store: Arc<dyn ObjectStore>,
    pub dir: Path,
    pub name: String,
    /// The local directory of the table's location, if it is one: state files are mapped
    /// from there ([`crate::mapped`]).
    pub local: Option<std::path::PathBuf>,
    /// What makes the table's generated rows ([`crate::GeneratedRows`]), once registered.
    pub generator: std::sync::RwLock<Option<Arc<dyn RowGenerator>>>,
}

impl TableFiles {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        dir: Path,
        name: String,
        location: &crate::location::Location,
    ) -> Self {
        Self {
            store,
            dir,
            name,
            local: location.local_path(&Path::default()),
            generator: std::sync::RwLock::new(None),
        }
    }

    /// How to read the `rows` rows a manifest lists at `path` (a data or change file of
    /// `bytes` bytes, or rows the table's generator makes), with the table's (projected) `schema`.
    pub(crate) fn file_read(
        &self,
        path: &str,
        bytes: u64,
        rows: u64,
        generated: Option<&GeneratedRows>,
        schema: SchemaRef,
    ) -> FileRead {
        FileRead {
            path: table_file(&self.dir, path),
            bytes,
            projection: None,
            schema,
            deletes: None,
            positions: None,
            pruning: None,
            generated: generated.map(|generated| GeneratedRead {
                table: self.name.clone(),
                rows: generated.clone(),
                count: rows,
                generator: self.generator.read().unwrap_or_else(|e| e.into_inner()).clone(),
            }),
        }
    }
}

/// A committed version of a table.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) files: Arc<TableFiles>,
    manifest: Arc<Manifest>,
    schema: SchemaRef,
    /// Deletion vectors, loaded on first use and shared by every scan of this version.
    deletes: Vec<OnceCell<Option<Arc<RoaringTreemap>>>>,
}

/// Deletion vectors already in memory, by the path of their file.
pub(crate) type KnownDeletes = std::collections::HashMap<String, Arc<RoaringTreemap>>;

impl Snapshot {
    pub(crate) fn new(files: Arc<TableFiles>, manifest: Arc<Manifest>, schema: SchemaRef) -> Self {
        Self::with_deletes(files, manifest, schema, &KnownDeletes::new())
    }

    /// A version whose deletion vectors found in `known` need not be read again (a commit
    /// knows the vectors it wrote and those its base version had loaded).
    pub(crate) fn with_deletes(
        files: Arc<TableFiles>,
        manifest: Arc<Manifest>,
        schema: SchemaRef,
        known: &KnownDeletes,
    ) -> Self {
        let deletes = manifest
            .files
            .iter()
            .map(|f| match f.deletes.as_ref().and_then(|dv| known.get(&dv.path)) {
                Some(vector) => OnceCell::new_with(Some(Some(vector.clone()))),
                None => OnceCell::new(),
            })
            .collect();
        Self {
            files,
            manifest,
            schema,
            deletes,
        }
    }

    /// The deletion vectors of this version loaded so far, by the path of their file.
    pub(crate) fn loaded_deletes(&self) -> KnownDeletes {
        self.manifest
            .files
            .iter()
            .zip(&self.deletes)
            .filter_map(|(file, cell)| Some((file.deletes.as_ref()?.path.clone(), cell.get()?.clone()?)))
            .collect()
    }

    /// The version number.
    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    /// The manifest of this version.
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// The table's columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        &self.files.name
    }

    /// Primary-key column names.
    pub fn primary_key(&self) -> &[String] {
        &self.manifest.primary_key
    }

    /// Indices of the primary-key columns in the schema.
    pub fn primary_key_indices(&self) -> Vec<usize> {
        self.manifest
            .primary_key
            .iter()
            .filter_map(|name| self.schema.index_of(name).ok())
            .collect()
    }

    /// Number of rows.
    pub fn num_rows(&self) -> u64 {
        self.manifest.live_rows()
    }

    /// The schema of a scan with `projection`, with position columns when `with_positions`.
    pub fn scan_schema(&self, projection: Option<&[usize]>, with_positions: bool) -> SchemaRef {
        let mut fields: Vec<Arc<Field>> = match projection {
            Some(indices) => indices.iter().map(|&i| self.schema.fields()[i].clone()).collect(),
            None => self.schema.fields().iter().cloned().collect(),
        };
        if with_positions {
            fields.push(Arc::new(Field::new(FILE_COLUMN, DataType::UInt32, false)));
            fields.push(Arc::new(Field::new(POSITION_COLUMN, DataType::UInt64, false)));
        }
        Arc::new(Schema::new(fields))
    }

    /// Streams the live rows of some data files (indices into the manifest's file list).
    pub fn scan_files(
        self: &Arc<Self>,
        file_indices: Vec<usize>,
        projection: Option<Vec<usize>>,
        with_positions: bool,
    ) -> BoxStream<'static, Result<RecordBatch>> {
        self.scan_files_pruned(file_indices, projection, with_positions, None)
    }

    /// Like [`Snapshot::scan_files`], skipping the row groups whose statistics rule out every
    /// row `pruning` would keep (rows of the row groups read are returned whether they pass or
    /// not).
    pub fn scan_files_pruned(
        self: &Arc<Self>,
        file_indices: Vec<usize>,
        projection: Option<Vec<usize>>,
        with_positions: bool,
        pruning: Option<Arc<PruningPredicate>>,
    ) -> BoxStream<'static, Result<RecordBatch>> {
        let schema = self.scan_schema(projection.as_deref(), with_positions);
        let snapshot = self.clone();
        futures::stream::iter(file_indices)
            .then(move |index| {
                let snapshot = snapshot.clone();
                let projection = projection.clone();
                let schema = schema.clone();
                let pruning = pruning.clone();
                async move {
                    let file = &snapshot.manifest.files[index];
                    let read = FileRead {
                        projection,
                        deletes: snapshot.deletes_of(index).await?,
                        positions: with_positions.then_some(index as u32),
                        pruning,
                        ..snapshot
                            .files
                            .file_read(&file.path, file.bytes, file.rows, file.generated.as_ref(), schema)
                    };
                    read_file(snapshot.files.store.clone(), read).await
                }
            })
            .try_flatten()
            .boxed()
    }

    /// Streams all live rows.
    pub fn scan(
        self: &Arc<Self>,
        projection: Option<Vec<usize>>,
        with_positions: bool,
    ) -> BoxStream<'static, Result<RecordBatch>> {
        self.scan_files((0..self.manifest.files.len()).collect(), projection, with_positions)
    }

    /// The deletion vector of a data file, loaded once.
    pub(crate) async fn deletes_of(&self, index: usize) -> Result<Option<Arc<RoaringTreemap>>> {
        let Some(dv) = self.manifest.files.get(index).and_then(|f| f.deletes.clone()) else {
            return Ok(None);
        };
        self.deletes[index]
            .get_or_try_init(|| async {
                let path = table_file(&self.files.dir, &dv.path);
                Ok(Some(Arc::new(read_deletes(&self.files.store, &path).await?)))
            })
            .await
            .cloned()
    }
}
