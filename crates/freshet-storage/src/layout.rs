//! Where things live in a Freshet location. See `docs/architecture.md` for the format.

use datafusion::object_store::path::Path;

/// Width of the zero-padded version numbers in manifest file names, so that names sort as numbers.
const VERSION_DIGITS: usize = 20;

/// The directory of catalog versions.
pub(crate) fn catalog_dir(root: &Path) -> Path {
    root.clone().join("_freshet").join("catalog")
}

/// Where a running job keeps its progress.
pub(crate) fn job_progress_path(root: &Path, job_id: &str) -> Path {
    root.clone()
        .join("_freshet")
        .join("jobs")
        .join(format!("{job_id}.json"))
}

/// Where a job keeps the checkpoints of its operator state (`state/<uuid>.arrow` below it).
pub(crate) fn job_dir(root: &Path, job_id: &str) -> Path {
    root.clone().join("_freshet").join("jobs").join(job_id)
}

/// The directory of one table's files.
pub(crate) fn table_dir(root: &Path, table_id: &str) -> Path {
    root.clone().join("tables").join(table_id)
}

/// The directory of one table's manifests.
pub(crate) fn manifest_dir(table_dir: &Path) -> Path {
    table_dir.clone().join("manifests")
}

/// The file name of a version in a versioned directory.
pub(crate) fn version_file(dir: &Path, version: u64) -> Path {
    dir.clone()
        .join(format!("{version:0width$}.json", width = VERSION_DIGITS))
}

/// Parses the version out of a manifest file name; `None` for anything else in the directory.
pub(crate) fn parse_version_file(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    let digits = name.strip_suffix(".json")?;
    if digits.len() != VERSION_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Kinds of files a table writes, each in its own directory.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FileKind {
    /// Parquet rows of the table.
    Data,
    /// Parquet rows deleted by a version (the "before" of updates and deletes).
    Retraction,
    /// A deletion vector: positions of deleted rows in one data file.
    Deletes,
    /// Operator state of a materialized table, in a checkpoint.
    State,
}

/// A new, unique path for a file of `kind` in a table directory, relative to the table directory.
pub(crate) fn new_file_name(kind: FileKind) -> String {
    let id = uuid::Uuid::new_v4();
    match kind {
        FileKind::Data => format!("data/{id}.parquet"),
        FileKind::Retraction => format!("retractions/{id}.parquet"),
        FileKind::Deletes => format!("deletes/{id}.roaring"),
        FileKind::State => format!("state/{id}.arrow"),
    }
}

/// Whether `path` is a file of a table's operator state (`tables/<id>/state/<uuid>.arrow`): a
/// materialized table's checkpoint, which a restore checks against its hash and, if it is
/// damaged, rebuilds from the inputs instead.
pub(crate) fn is_table_state_file(path: &Path) -> bool {
    let parts: Vec<_> = path.parts().collect();
    matches!(
        parts.as_slice(),
        [.., tables, _, state, file]
            if tables.as_ref() == "tables" && state.as_ref() == "state" && file.as_ref().ends_with(".arrow")
    )
}

/// The absolute path of a file named relative to its table directory.
pub(crate) fn table_file(table_dir: &Path, relative: &str) -> Path {
    let mut path = table_dir.clone();
    for part in relative.split('/') {
        path = path.join(part);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_state_files_are_told_apart() {
        let table = table_dir(&Path::default(), "t1");
        assert!(is_table_state_file(&table_file(
            &table,
            &new_file_name(FileKind::State)
        )));
        assert!(!is_table_state_file(&table_file(
            &table,
            &new_file_name(FileKind::Data)
        )));
        assert!(!is_table_state_file(&version_file(&manifest_dir(&table), 3)));
        let job = job_dir(&Path::default(), "j1");
        assert!(!is_table_state_file(&table_file(&job, &new_file_name(FileKind::State))));
    }

    #[test]
    fn version_files_round_trip_and_sort() {
        let dir = Path::from("t/manifests");
        let a = version_file(&dir, 9);
        let b = version_file(&dir, 10);
        assert!(a.as_ref() < b.as_ref());
        assert_eq!(parse_version_file(&b), Some(10));
        assert_eq!(parse_version_file(&Path::from("t/manifests/x.json")), None);
    }
}
