//! Compaction and vacuum. Neither changes what any retained version reads.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::object_store::ObjectStoreExt;
use futures::TryStreamExt;

use freshet_common::{FreshetError, Result};

use crate::layout::{FileKind, manifest_dir, table_file};
use crate::manifest::{Changes, DataFile, Manifest};
use crate::table::Table;
use crate::write::ParallelWriter;

/// Deleted rows below which deletes alone never trigger a background compaction.
const MIN_DELETED_ROWS_TO_COMPACT: u64 = 1024;

/// What a VACUUM removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VacuumReport {
    /// Versions whose manifests were removed.
    pub versions_removed: u64,
    /// Files removed (data, retraction and deletion-vector files no retained version uses,
    /// including files left by failed or crashed writes).
    pub files_removed: u64,
    /// Bytes those files held.
    pub bytes_removed: u64,
}

impl std::ops::AddAssign for VacuumReport {
    fn add_assign(&mut self, other: Self) {
        self.versions_removed += other.versions_removed;
        self.files_removed += other.files_removed;
        self.bytes_removed += other.bytes_removed;
    }
}

impl Table {
    /// Whether the newest version has enough files or deleted rows to be worth compacting.
    pub fn needs_compaction(&self) -> bool {
        let snapshot = self.snapshot();
        let manifest = snapshot.manifest();
        let rows: u64 = manifest.files.iter().map(|f| f.rows).sum();
        let deleted: u64 = manifest.files.iter().map(|f| f.rows - f.live_rows()).sum();
        // A few deleted rows cost little to skip while reading; many cost a pass over the
        // deletion vectors and dead bytes in every scan.
        manifest.files.len() > self.options.compact_min_files
            || (deleted >= MIN_DELETED_ROWS_TO_COMPACT
                && deleted as f64 / rows as f64 > self.options.compact_deleted_fraction)
    }

    /// Rewrites the live rows of the newest version into as few files as the file size allows,
    /// dropping deletion vectors, and commits that as a new version with the same contents and no
    /// changes. Returns the new version, or `None` when there was nothing to compact or a writer
    /// committed meanwhile (the work is then abandoned; VACUUM removes its files).
    pub async fn compact(self: &Arc<Self>) -> Result<Option<u64>> {
        let _maintenance = self.maintenance.lock().await;
        let base = self.snapshot();
        let manifest = base.manifest();
        let has_deletes = manifest.files.iter().any(|f| f.deletes.is_some());
        let small_files = manifest
            .files
            .iter()
            .filter(|f| (f.rows as usize) < self.options.max_file_rows)
            .count();
        // Large rewrites are written by one writer per core, each leaving one partly filled file.
        if !has_deletes && small_files <= self.options.write_parallelism.max(1) {
            return Ok(None);
        }
        let mut writer = ParallelWriter::new(
            self.writer_template(FileKind::Data, base.schema()),
            self.options.write_parallelism,
        );
        let mut rows = base.scan(None, false);
        while let Some(batch) = rows.try_next().await? {
            writer.write(batch).await?;
        }
        let written = writer.finish().await?;
        let mut state = self.writer.lock().await;
        if self.snapshot().version() != base.version() {
            return Ok(None);
        }
        let version = base.version() + 1;
        let new = Manifest {
            version,
            committed_at_ms: self.options.clock.now_ms().max(manifest.committed_at_ms),
            operation: "COMPACT".into(),
            files: written
                .into_iter()
                .map(|f| DataFile {
                    path: f.path,
                    rows: f.rows,
                    bytes: f.bytes,
                    deletes: None,
                })
                .collect(),
            changes: Changes::default(),
            ..(**manifest).clone()
        };
        self.commit_manifest(new, base.schema().clone()).await?;
        if let Some(keys) = state.keys.as_mut()
            && keys.version == base.version()
        {
            keys.version = version;
        }
        Ok(Some(version))
    }

    /// Removes all but the newest `retain` versions, then every file under the table's directory
    /// that no retained version uses.
    pub async fn vacuum(self: &Arc<Self>, retain: u64) -> Result<VacuumReport> {
        self.vacuum_keeping(retain, None).await
    }

    /// [`Table::vacuum`], keeping also every version from `keep_from` on (the versions
    /// materialized tables reflect, whose changes they will read).
    pub async fn vacuum_keeping(self: &Arc<Self>, retain: u64, keep_from: Option<u64>) -> Result<VacuumReport> {
        if retain == 0 {
            return Err(FreshetError::InvalidStatement(
                "VACUUM must retain at least 1 version".into(),
            ));
        }
        let _maintenance = self.maintenance.lock().await;
        let _writer = self.writer.lock().await;
        let versions = self.log.versions().await?;
        let newest = versions.last().copied().unwrap_or(0);
        let oldest_kept = newest.saturating_sub(retain - 1).min(keep_from.unwrap_or(u64::MAX));
        let mut report = VacuumReport::default();
        let mut referenced = HashSet::new();
        for &version in versions.iter().filter(|&&v| v >= oldest_kept) {
            let manifest = self.read_manifest(version).await?;
            for file in manifest.files.iter().chain(&manifest.changes.removed) {
                referenced.insert(file.path.clone());
                if let Some(dv) = &file.deletes {
                    referenced.insert(dv.path.clone());
                }
            }
            for file in manifest.changes.inserted.iter().chain(&manifest.changes.retracted) {
                referenced.insert(file.path.clone());
            }
        }
        for &version in versions.iter().filter(|&&v| v < oldest_kept) {
            self.log.remove(version).await?;
            report.versions_removed += 1;
        }
        let manifests = manifest_dir(&self.files.dir);
        let store = &self.files.store;
        let objects: Vec<_> = store
            .list(Some(&self.files.dir))
            .try_collect()
            .await
            .map_err(|e| FreshetError::storage(&self.files.dir, e))?;
        for object in objects {
            if object.location.prefix_matches(&manifests) {
                continue;
            }
            let relative = object
                .location
                .prefix_match(&self.files.dir)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"))
                .unwrap_or_default();
            if referenced.contains(&relative) {
                continue;
            }
            let path = table_file(&self.files.dir, &relative);
            match store.delete(&path).await {
                Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(FreshetError::storage(&path, e)),
            }
            report.files_removed += 1;
            report.bytes_removed += object.size;
        }
        Ok(report)
    }
}
