//! The `filesystem` source: a file, or the files of a directory, each read whole once (as in
//! Flink, a file is complete when it appears: writers place files atomically, by rename).

use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use freshet_common::{FreshetError, Result};

use super::Position;
use super::json_lines::JsonLines;

/// Bytes of whole lines decoded at once.
const CHUNK_BYTES: usize = 8 << 20;

#[derive(Debug)]
pub(super) struct FileSource {
    table: String,
    path: PathBuf,
    schema: SchemaRef,
    ignore_errors: bool,
}

/// The rows of one file.
pub(super) struct FileRows {
    pub batches: Vec<RecordBatch>,
    pub skipped: u64,
}

impl FileSource {
    pub(super) fn new(table: &str, path: PathBuf, schema: SchemaRef, ignore_errors: bool) -> Self {
        Self {
            table: table.to_string(),
            path,
            schema,
            ignore_errors,
        }
    }

    fn bad(&self, at: String, reason: impl Into<String>) -> FreshetError {
        FreshetError::BadSourceData {
            table: self.table.clone(),
            at,
            reason: reason.into(),
        }
    }

    /// The files not read yet, in name order. Hidden files (`.name`, `_name`: files being
    /// written by most tools) are left alone.
    pub(super) async fn new_files(&self, position: &Position) -> Result<Vec<PathBuf>> {
        let metadata = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| self.bad(format!("path {}", self.path.display()), e.to_string()))?;
        let mut files = Vec::new();
        if metadata.is_dir() {
            let mut entries = tokio::fs::read_dir(&self.path)
                .await
                .map_err(|e| self.bad(format!("directory {}", self.path.display()), e.to_string()))?;
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| self.bad(format!("directory {}", self.path.display()), e.to_string()))?
            {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || name.starts_with('_') {
                    continue;
                }
                let is_file = entry.file_type().await.map(|t| t.is_file()).unwrap_or(false);
                if is_file {
                    files.push(entry.path());
                }
            }
            files.sort();
        } else {
            files.push(self.path.clone());
        }
        files.retain(|f| !position.files.iter().any(|done| Path::new(done) == f));
        Ok(files)
    }

    /// Every row of a file.
    pub(super) async fn read(&self, file: &Path) -> Result<FileRows> {
        let bytes = tokio::fs::read(file)
            .await
            .map_err(|e| self.bad(format!("file {}", file.display()), e.to_string()))?;
        let lines = JsonLines::new(self.schema.clone(), self.ignore_errors);
        let mut rows = FileRows {
            batches: Vec::new(),
            skipped: 0,
        };
        let mut rest = bytes.as_slice();
        let mut line = 1u64;
        while !rest.is_empty() {
            // Whole lines, up to about CHUNK_BYTES.
            let end = if rest.len() <= CHUNK_BYTES {
                rest.len()
            } else {
                match rest[CHUNK_BYTES..].iter().position(|&b| b == b'\n') {
                    Some(i) => CHUNK_BYTES + i + 1,
                    None => rest.len(),
                }
            };
            let (chunk, after) = rest.split_at(end);
            let decoded = lines.decode(chunk, line).map_err(|bad| {
                let at = match bad.column {
                    Some(column) => format!("file {}, line {}, column {column}", file.display(), bad.line),
                    None => format!("file {}, line {}", file.display(), bad.line),
                };
                self.bad(at, bad.reason)
            })?;
            rows.batches.extend(decoded.batches);
            rows.skipped += decoded.skipped;
            line += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            rest = after;
        }
        Ok(rows)
    }
}
