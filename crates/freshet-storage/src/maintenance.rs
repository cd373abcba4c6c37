//! Compaction and vacuum. Neither changes what any retained version reads.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::object_store::ObjectStoreExt;
use futures::TryStreamExt;

use freshet_common::{FreshetError, Result};

use crate::layout::{FileKind, manifest_dir, table_file};
use crate::manifest::{Changes, DataFile, Manifest};
use crate::moves::{CompactionMoves, MovedFile};
use crate::table::{Table, Tier};
use crate::write::{ParallelWriter, Written};

/// The operation of the versions compaction commits.
pub(crate) const COMPACT: &str = "COMPACT";

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

/// How much a compaction rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compaction {
    /// `ALTER TABLE ... COMPACT`: every file with deleted rows and every file smaller than the
    /// file size, into as few files as the size allows.
    Full,
    /// In the background after commits: files of similar sizes merge, and files with many
    /// deleted rows are rewritten, so that a row is rewritten a few times over its life instead
    /// of at every compaction.
    Tiered,
}

/// The manifest of a compaction of `base` that rewrote its files `chosen` into `written`,
/// committed on top of `current` (the newest version, `base` or later): `current`'s files
/// without the rewritten ones, plus the new ones, and no changes. `None` when a writer deleted
/// rows of a rewritten file since `base` (or removed it).
fn compacted_manifest(
    base: &Manifest,
    current: &Manifest,
    chosen: &[usize],
    written: Vec<DataFile>,
    now_ms: i64,
) -> Option<Manifest> {
    let rewritten: Vec<&DataFile> = chosen.iter().filter_map(|&i| base.files.get(i)).collect();
    let untouched = rewritten
        .iter()
        .all(|old| current.files.iter().any(|f| f.path == old.path && same_deletes(f, old)));
    if !untouched || rewritten.len() != chosen.len() {
        return None;
    }
    let kept = current
        .files
        .iter()
        .filter(|f| !rewritten.iter().any(|old| old.path == f.path))
        .cloned();
    Some(Manifest {
        version: current.version + 1,
        committed_at_ms: now_ms.max(current.committed_at_ms),
        operation: COMPACT.into(),
        files: kept.chain(written).collect(),
        changes: Changes::default(),
        ..current.clone()
    })
}

/// Whether two entries of one data file have the same deleted rows.
fn same_deletes(a: &DataFile, b: &DataFile) -> bool {
    match (&a.deletes, &b.deletes) {
        (None, None) => true,
        (Some(x), Some(y)) => x.path == y.path,
        _ => false,
    }
}

/// The files (indices into `files`) a compaction rewrites; empty when it would gain nothing.
///
/// Tiered: when there are more than `min_files` small files (fewer rows than `max_rows`; full
/// files never count), they merge smallest first,
/// each next file taken only while it is no larger than those taken before it together (at
/// least two). Files double in size at each merge, so a row is rewritten about
/// log2(`max_rows` / rows per commit) times before it sits in a full file — where rewriting
/// the whole table at every compaction costs the table's size each time. Files whose deleted
/// rows are more than `deleted_fraction` of them are rewritten too, once they hold at least
/// [`MIN_DELETED_ROWS_TO_COMPACT`] deleted rows together.
pub(crate) fn compaction_plan(
    files: &[DataFile],
    policy: Compaction,
    max_rows: usize,
    min_files: usize,
    deleted_fraction: f64,
    parallelism: usize,
) -> Vec<usize> {
    let deleted = |f: &DataFile| f.rows - f.live_rows();
    // Generated rows cost nothing to keep: rewritten into a file only to drop deleted rows.
    let small = |f: &DataFile| f.generated.is_none() && (f.rows as usize) < max_rows;
    match policy {
        Compaction::Full => {
            let chosen: Vec<usize> = (0..files.len())
                .filter(|&i| deleted(&files[i]) > 0 || small(&files[i]))
                .collect();
            // Large rewrites are written by one writer per core, each leaving one partly
            // filled file: as many small files as that are already compact.
            let has_deletes = chosen.iter().any(|&i| deleted(&files[i]) > 0);
            if !has_deletes && chosen.len() <= parallelism.max(1) {
                return Vec::new();
            }
            chosen
        }
        Compaction::Tiered => {
            let dirty: Vec<usize> = (0..files.len())
                .filter(|&i| {
                    let f = &files[i];
                    deleted(f) > 0 && deleted(f) as f64 > deleted_fraction * f.rows as f64
                })
                .collect();
            let dead: u64 = dirty.iter().map(|&i| deleted(&files[i])).sum();
            let mut chosen = if dead >= MIN_DELETED_ROWS_TO_COMPACT {
                dirty
            } else {
                Vec::new()
            };
            let mut candidates: Vec<usize> = (0..files.len())
                .filter(|&i| small(&files[i]) && !chosen.contains(&i))
                .collect();
            if candidates.len() > min_files {
                candidates.sort_by_key(|&i| files[i].live_rows());
                let mut taken = Vec::new();
                let mut rows = 0u64;
                for i in candidates {
                    let next = files[i].live_rows();
                    if taken.len() >= 2 && next > rows {
                        break;
                    }
                    rows += next;
                    taken.push(i);
                }
                if taken.len() >= 2 {
                    chosen.extend(taken);
                }
            }
            chosen.sort_unstable();
            chosen
        }
    }
}

impl Table {
    /// The files a compaction of the newest version under `policy` would rewrite.
    fn compaction_plan(&self, manifest: &Manifest, policy: Compaction) -> Vec<usize> {
        compaction_plan(
            &manifest.files,
            policy,
            self.options.max_file_rows,
            self.options.compact_min_files,
            self.options.compact_deleted_fraction,
            self.options.write_parallelism,
        )
    }

    /// Whether the newest version has enough files or deleted rows to be worth compacting in
    /// the background.
    pub fn needs_compaction(&self) -> bool {
        !self
            .compaction_plan(self.snapshot().manifest(), Compaction::Tiered)
            .is_empty()
    }

    /// Rewrites the live rows of every file with deleted rows and of every file smaller than
    /// the file size into as few files as the size allows, and commits that as a new version
    /// with the same contents and no changes, on top of any version writers committed
    /// meanwhile. Returns the new version, or `None` when there was nothing to compact or a
    /// writer meanwhile deleted rows of a file it rewrote (the work is then abandoned; VACUUM
    /// removes its files).
    pub async fn compact(self: &Arc<Self>) -> Result<Option<u64>> {
        self.compact_with(Compaction::Full).await
    }

    /// Compacts the files `policy` chooses (see [`compaction_plan`]), as [`Table::compact`]
    /// describes.
    pub(crate) async fn compact_with(self: &Arc<Self>, policy: Compaction) -> Result<Option<u64>> {
        let _maintenance = self.maintenance.lock().await;
        // A compaction runs alongside writers and commits on top of theirs, unless one deleted
        // rows of a file it rewrote. A table whose writers delete rows of existing files (a
        // materialized table under continuous refresh deletes from every file) would abandon
        // every such compaction and pile up files: its compactions hold writers off instead.
        let exclusive = match self.deleted_since_compaction.load(Ordering::Acquire) {
            true => Some(self.writer.lock().await),
            false => None,
        };
        let base = self.snapshot();
        let manifest = base.manifest();
        let chosen = self.compaction_plan(manifest, policy);
        if chosen.is_empty() {
            return Ok(None);
        }
        let mut writer = ParallelWriter::new(
            // Files of a table whose rows churn are soon rewritten again, and a stream's log
            // is read back mostly once: the cheap codec.
            self.writer_template(
                FileKind::Data,
                if exclusive.is_some() || self.fast_compaction.load(Ordering::Relaxed) {
                    Tier::Fresh
                } else {
                    Tier::Compacted
                },
                base.schema(),
            ),
            self.options.write_parallelism,
        );
        let mut rows = base.scan_files(chosen.clone(), None, false);
        while let Some(batch) = rows.try_next().await? {
            writer.write(batch).await?;
        }
        let Written {
            files: written,
            placements,
        } = writer.finish().await?;
        let mut state = match exclusive {
            Some(state) => state,
            None => self.writer.lock().await,
        };
        // Writers may have committed meanwhile (a table taking a commit every few milliseconds
        // always has): the compaction still commits on top of them if the files it rewrote are
        // untouched there and the schema is the same.
        let current = self.snapshot();
        let written = written
            .into_iter()
            .map(|f| DataFile {
                path: f.path,
                rows: f.rows,
                bytes: f.bytes,
                deletes: None,
                generated: None,
            })
            .collect();
        let now = self.options.clock.now_ms();
        let Some(new) = compacted_manifest(manifest, current.manifest(), &chosen, written, now)
            .filter(|_| current.schema() == base.schema())
        else {
            return Ok(None);
        };
        let version = new.version;
        let rewritten: Vec<&DataFile> = chosen.iter().filter_map(|&i| manifest.files.get(i)).collect();
        // The scan read the chosen files one after the other, each in position order.
        let sources = match self.moves_wanted() {
            true => {
                let mut sources = Vec::with_capacity(chosen.len());
                let mut start = 0;
                for (&index, file) in chosen.iter().zip(&rewritten) {
                    sources.push(MovedFile {
                        path: file.path.clone(),
                        rows: file.rows,
                        deletes: base.deletes_of(index).await?,
                        start,
                    });
                    start += file.live_rows();
                }
                Some(sources)
            }
            false => None,
        };
        self.commit_manifest(new, base.schema().clone(), &current.loaded_deletes())
            .await?;
        self.options.counters.compacted();
        if let Some(moves) = sources.and_then(|sources| CompactionMoves::new(version, sources, placements)) {
            self.keep_moves(moves);
        }
        if let Some(keys) = state.keys.as_mut()
            && keys.version == current.version()
        {
            keys.version = version;
        }
        Ok(Some(version))
    }

    /// Removes all but the newest `retain` versions, then every file under the table's directory
    /// that no retained version uses.
    pub async fn vacuum(self: &Arc<Self>, retain: u64) -> Result<VacuumReport> {
        self.vacuum_keeping(Retain::Versions(retain), None, Some(DEFAULT_ORPHAN_GRACE))
            .await
    }

    /// [`Table::vacuum`] by a [`Retain`] rule, keeping also every version from `keep_from` on
    /// (the versions materialized tables and jobs reflect, whose changes they will read) and
    /// every version a snapshot alive in this process (a running query) reads. Files of removed
    /// versions go. With `orphan_grace`, so do files no manifest names — a failed write's, or a
    /// write still under way, of this engine or of another on a shared store — once older than
    /// the grace period; that sweep reads every retained manifest. Without it, only the removed
    /// versions' manifests and the oldest retained one are read: a file a removed version names
    /// and a retained one too is named by the oldest retained one (a file lives in an unbroken
    /// run of versions, and the one that removes it names it).
    pub async fn vacuum_keeping(
        self: &Arc<Self>,
        retain: Retain,
        keep_from: Option<u64>,
        orphan_grace: Option<std::time::Duration>,
    ) -> Result<VacuumReport> {
        if retain == Retain::Versions(0) {
            return Err(FreshetError::InvalidStatement(
                "VACUUM must retain at least 1 version".into(),
            ));
        }
        let _maintenance = self.maintenance.lock().await;
        let _writer = self.writer.lock().await;
        let versions = self.log.versions().await?;
        let newest = versions.last().copied().unwrap_or(0);
        let oldest_retained = match retain {
            Retain::Versions(n) => newest.saturating_sub(n - 1),
            // The version current at `at_ms`, so that reading the table as of any time from
            // then on still works; the newest version always.
            Retain::Since(at_ms) => self.current_at(&versions, at_ms).await?.unwrap_or(0).min(newest),
        };
        // A version a running query reads stays, with its files, until the query is done.
        let oldest_read = self.read_versions().iter().map(|s| s.version()).min();
        let oldest_kept = oldest_retained
            .min(keep_from.unwrap_or(u64::MAX))
            .min(oldest_read.unwrap_or(u64::MAX));
        let first_kept = versions.iter().copied().find(|&v| v >= oldest_kept);
        let mut report = VacuumReport::default();
        let mut referenced = HashSet::new();
        // Files of the versions removed: no longer needed once no query reads them.
        let mut expired = HashSet::new();
        for &version in &versions {
            let kept = version >= oldest_kept;
            if kept && orphan_grace.is_none() && Some(version) != first_kept {
                continue;
            }
            let manifest = self.read_manifest(version).await?;
            match kept {
                true => referenced.extend(manifest_files(&manifest)),
                false => expired.extend(manifest_files(&manifest)),
            }
        }
        for &version in versions.iter().filter(|&&v| v < oldest_kept) {
            self.log.remove(version).await?;
            report.versions_removed += 1;
        }
        if orphan_grace.is_none() && expired.is_empty() {
            return Ok(report);
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let grace_ms = orphan_grace.map_or(i64::MAX, |g| i64::try_from(g.as_millis()).unwrap_or(i64::MAX));
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
            let young = now_ms.saturating_sub(object.last_modified.timestamp_millis()) < grace_ms;
            if !expired.contains(&relative) && young {
                continue;
            }
            let path = table_file(&self.files.dir, &relative);
            match store.delete(&path).await {
                Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(FreshetError::storage(&path, e)),
            }
            report.files_removed += 1;
            report.bytes_removed += object.size;
            self.options.counters.vacuumed(1, object.size);
        }
        Ok(report)
    }
}

impl Table {
    /// The newest of `versions` (ascending) committed at or before `at_ms`: the version current
    /// then. Commit times never decrease, so a binary search reads a few manifests only.
    async fn current_at(&self, versions: &[u64], at_ms: i64) -> Result<Option<u64>> {
        let (mut low, mut high) = (0, versions.len());
        while low < high {
            let mid = low + (high - low) / 2;
            if self.read_manifest(versions[mid]).await?.committed_at_ms <= at_ms {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        Ok(low.checked_sub(1).map(|i| versions[i]))
    }
}

/// Which versions of a table VACUUM keeps (besides those in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retain {
    /// The newest n versions (at least one).
    Versions(u64),
    /// Every version current at or after this commit time (milliseconds since the epoch), so
    /// that the table can be read as of any time from then on; the newest version always.
    Since(i64),
}

/// How long VACUUM keeps a file that no manifest names, by default: longer than any
/// transaction takes to commit.
pub const DEFAULT_ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(3_600);

/// Every file a manifest names (paths relative to the table directory).
fn manifest_files(manifest: &Manifest) -> Vec<String> {
    let mut files = Vec::new();
    for file in manifest.files.iter().chain(&manifest.changes.removed) {
        if file.generated.is_none() {
            files.push(file.path.clone());
        }
        if let Some(dv) = &file.deletes {
            files.push(dv.path.clone());
        }
    }
    for file in manifest.changes.inserted.iter().chain(&manifest.changes.retracted) {
        if file.generated.is_none() {
            files.push(file.path.clone());
        }
    }
    for file in manifest.state.iter().flat_map(|state| &state.files) {
        files.push(file.path.clone());
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::DeletionVector;

    fn file(rows: u64, deleted: u64) -> DataFile {
        DataFile {
            path: format!("data/{rows}-{deleted}.parquet"),
            rows,
            bytes: rows * 8,
            deletes: (deleted > 0).then(|| DeletionVector {
                path: "deletes/x.roaring".into(),
                count: deleted,
            }),
            generated: None,
        }
    }

    fn tiered(files: &[DataFile]) -> Vec<usize> {
        compaction_plan(files, Compaction::Tiered, 1000, 4, 0.25, 2)
    }

    #[test]
    fn files_of_similar_sizes_merge_and_a_large_one_waits() {
        // Five commits of 10 rows after a merge of 400: the small ones merge, the 400 stays.
        let files = [
            file(400, 0),
            file(10, 0),
            file(10, 0),
            file(10, 0),
            file(10, 0),
            file(10, 0),
        ];
        assert_eq!(tiered(&files), vec![1, 2, 3, 4, 5]);
        // Files of 50 and 40 wait until the commits of 10 after them add up to their size.
        let files = [file(50, 0), file(10, 0), file(40, 0), file(10, 0), file(10, 0)];
        assert_eq!(tiered(&files), vec![1, 3, 4]);
        let files = [
            file(50, 0),
            file(10, 0),
            file(40, 0),
            file(10, 0),
            file(10, 0),
            file(10, 0),
            file(10, 0),
        ];
        assert_eq!(tiered(&files), vec![0, 1, 2, 3, 4, 5, 6]);
        // Full files neither merge nor count.
        let full = [
            file(1000, 0),
            file(1000, 0),
            file(1000, 0),
            file(1000, 0),
            file(2000, 0),
        ];
        assert!(tiered(&full).is_empty());
        assert!(tiered(&[&full[..], &[file(10, 0), file(10, 0)]].concat()).is_empty());
        assert!(tiered(&[file(10, 0), file(10, 0), file(10, 0)]).is_empty());
    }

    #[test]
    fn rows_are_rewritten_a_logarithmic_number_of_times() {
        // 1,000 commits of 10 rows with a compaction after each: every row is rewritten a few
        // times, not once per compaction.
        let mut files: Vec<DataFile> = Vec::new();
        let mut rewritten = 0;
        for _ in 0..1000 {
            files.push(file(10, 0));
            let chosen = tiered(&files);
            let rows: u64 = chosen.iter().map(|&i| files[i].rows).sum();
            rewritten += rows;
            let mut kept: Vec<DataFile> = (0..files.len())
                .filter(|i| !chosen.contains(i))
                .map(|i| files[i].clone())
                .collect();
            // Written into files of at most 1,000 rows.
            let mut left = rows;
            while left > 0 {
                kept.push(file(left.min(1000), 0));
                left -= left.min(1000);
            }
            files = kept;
        }
        let inserted = 10 * 1000;
        assert!(
            rewritten < inserted * 8,
            "{rewritten} rows rewritten for {inserted} inserted"
        );
        assert!(files.len() <= 20, "{} files left", files.len());
    }

    fn manifest(version: u64, files: Vec<DataFile>) -> Manifest {
        Manifest {
            format: 1,
            table_id: "t".into(),
            version,
            committed_at_ms: 10,
            operation: "INSERT".into(),
            schema: serde_json::from_str(r#"{"columns": []}"#).unwrap(),
            primary_key: Vec::new(),
            files,
            changes: Changes::default(),
            refresh: Some(serde_json::json!({"inputs": {"orders": 7}})),
            state: None,
            transaction: None,
        }
    }

    #[test]
    fn a_compaction_commits_on_top_of_writes_that_left_its_files_alone() {
        let base = manifest(5, vec![file(10, 0), file(20, 0), file(30, 3)]);
        let merged = vec![file(57, 0)];
        // Two inserts committed meanwhile: the compaction goes on top, keeping their files and
        // the newest refresh record.
        let mut current = manifest(7, vec![file(10, 0), file(20, 0), file(30, 3), file(40, 0), file(50, 0)]);
        current.refresh = Some(serde_json::json!({"inputs": {"orders": 9}}));
        let new = compacted_manifest(&base, &current, &[0, 1, 2], merged.clone(), 20).unwrap();
        assert_eq!(new.version, 8);
        assert_eq!(new.operation, COMPACT);
        let paths: Vec<&str> = new.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["data/40-0.parquet", "data/50-0.parquet", "data/57-0.parquet"]);
        assert_eq!(new.refresh, current.refresh);
        assert!(new.changes.inserted.is_empty() && new.changes.retracted.is_empty());

        // A delete meanwhile in a rewritten file (a new deletion vector): abandoned, or its
        // deleted rows would come back.
        let mut deleted = current.clone();
        deleted.files[2].deletes = Some(DeletionVector {
            path: "deletes/y.roaring".into(),
            count: 4,
        });
        assert!(compacted_manifest(&base, &deleted, &[0, 1, 2], merged.clone(), 20).is_none());
        // A rewritten file dropped meanwhile: abandoned too.
        let mut dropped = current.clone();
        dropped.files.remove(0);
        assert!(compacted_manifest(&base, &dropped, &[0, 1, 2], merged, 20).is_none());
    }

    #[test]
    fn files_with_many_deleted_rows_are_rewritten() {
        let files = [file(4000, 2000), file(4000, 10), file(10, 0)];
        assert_eq!(tiered(&files), vec![0]);
        // Too few deleted rows altogether to be worth a rewrite.
        assert!(tiered(&[file(100, 50)]).is_empty());
        // A full compaction takes every file with deletes and every small file.
        assert_eq!(
            compaction_plan(&files, Compaction::Full, 1000, 4, 0.25, 2),
            vec![0, 1, 2]
        );
    }
}
