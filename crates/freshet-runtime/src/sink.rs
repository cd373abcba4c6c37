//! Where a job's output goes.

mod files;

pub use files::FileSink;

use std::io::Write;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use freshet_common::{ChangeBatch, FreshetError, Result};
use freshet_storage::Table;

use crate::connector::PrintOptions;

/// A job's sink.
#[derive(Debug)]
pub enum Sink {
    /// Discards every change (`'connector' = 'blackhole'`): for benchmarks and tests.
    Blackhole,
    /// Prints every change as Flink does (`+I[1, a]`, `-D[1, a]`), one line per row.
    Print(PrintOptions),
    /// Appends to a Freshet table.
    Table(Arc<Table>),
    /// Upserts into a Freshet table with a primary key: a retracted row deletes its key's row,
    /// an inserted one replaces it.
    Upsert(Arc<Table>),
    /// Writes files into a filesystem table's directory.
    Files(Box<FileSink>),
}

impl Sink {
    /// Files the last epochs wrote that are not in place yet (a file sink's): the job commits
    /// their names with its progress, then [`Sink::publish`]es them.
    pub fn take_staged(&self) -> Vec<String> {
        match self {
            Sink::Files(files) => files.take_staged(),
            _ => Vec::new(),
        }
    }

    /// Puts staged files in place, once the epoch that wrote them is committed.
    pub async fn publish(&self, staged: &[String]) -> Result<()> {
        match self {
            Sink::Files(files) => files.publish(staged).await,
            _ => Ok(()),
        }
    }

    /// Whether the sink takes only insertions: a query whose result updates (retracts rows)
    /// cannot write to it.
    pub fn append_only(&self) -> bool {
        matches!(self, Sink::Table(_) | Sink::Files(_))
    }

    /// The Freshet table it writes, if it writes one.
    pub fn table(&self) -> Option<&str> {
        match self {
            Sink::Table(table) | Sink::Upsert(table) => Some(table.name()),
            Sink::Files(files) => Some(files.table()),
            Sink::Blackhole | Sink::Print(_) => None,
        }
    }

    /// Writes one epoch's changes (consolidated: each row once, with a non-zero weight).
    /// `record` says what they reflect (the job and its input versions): a Freshet table
    /// commits it with the rows, so a resumed job knows exactly what it has written.
    /// Returns the rows written.
    pub async fn write(&self, changes: &ChangeBatch, record: serde_json::Value) -> Result<u64> {
        // Rows as the query's result has them: a row of weight 2 is two rows.
        let rows: u64 = changes.weights().values().iter().map(|w| w.unsigned_abs()).sum();
        match self {
            Sink::Blackhole => Ok(rows),
            Sink::Print(options) => {
                let text = render(changes, options)?;
                if options.standard_error {
                    std::io::stderr().lock().write_all(text.as_bytes())
                } else {
                    std::io::stdout().lock().write_all(text.as_bytes())
                }
                .map_err(|e| FreshetError::Internal(format!("print sink: {e}")))?;
                Ok(rows)
            }
            Sink::Files(files) => {
                let data = insertions(changes)?;
                files.write(&data).await
            }
            Sink::Upsert(table) => {
                let data = changes.data();
                let weights = changes.weights();
                let positive: datafusion::arrow::array::BooleanArray =
                    weights.values().iter().map(|&w| Some(w > 0)).collect();
                let negative = datafusion::arrow::compute::not(&positive).map_err(internal)?;
                let upserted = datafusion::arrow::compute::filter_record_batch(&data, &positive).map_err(internal)?;
                let deleted = datafusion::arrow::compute::filter_record_batch(&data, &negative).map_err(internal)?;
                if weights.values().iter().any(|&w| w > 1) {
                    return Err(FreshetError::InvalidStatement(format!(
                        "table \"{}\": the query's result holds a row twice, so it has no key to upsert by",
                        table.name()
                    )));
                }
                let conform = |batch: RecordBatch| {
                    RecordBatch::try_new(table.schema(), batch.columns().to_vec())
                        .map_err(|e| FreshetError::InvalidStatement(format!("table \"{}\": {e}", table.name())))
                };
                let (upserted, deleted) = (conform(upserted)?, conform(deleted)?);
                let mut txn = table.begin("UPSERT").await?;
                freshet_storage::upsert_by_key(&mut txn, &[upserted], &[deleted]).await?;
                txn.set_refresh(record);
                txn.commit().await?;
                // Every change counts: an upserted row and a deleted key alike.
                Ok(rows)
            }
            Sink::Table(table) => {
                let data = insertions(changes)?;
                let mut txn = table.begin("INSERT").await?;
                let batch = RecordBatch::try_new(table.schema(), data.columns().to_vec())
                    .map_err(|e| FreshetError::InvalidStatement(format!("table \"{}\": {e}", table.name())))?;
                txn.insert(&batch).await?;
                txn.set_refresh(record);
                let committed = txn.commit().await?;
                Ok(committed.inserted)
            }
        }
    }
}

fn internal(e: impl std::fmt::Display) -> FreshetError {
    FreshetError::Internal(e.to_string())
}

/// The rows of an append-only change, each as many times as its weight.
fn insertions(changes: &ChangeBatch) -> Result<RecordBatch> {
    let weights = changes.weights();
    if weights.values().iter().any(|&w| w < 0) {
        return Err(FreshetError::InvalidStatement(
            "the query retracted rows it had written, which an append-only sink cannot take".into(),
        ));
    }
    repeat_by_weight(&changes.data(), weights.values())
}

/// Each row as many times as its weight (weights are positive).
fn repeat_by_weight(data: &RecordBatch, weights: &[i64]) -> Result<RecordBatch> {
    if weights.iter().all(|&w| w == 1) {
        return Ok(data.clone());
    }
    let mut indices = Vec::new();
    for (row, &w) in weights.iter().enumerate() {
        for _ in 0..w {
            indices.push(row as u32);
        }
    }
    let indices = datafusion::arrow::array::UInt32Array::from(indices);
    datafusion::arrow::compute::take_record_batch(data, &indices).map_err(|e| FreshetError::Internal(e.to_string()))
}

/// Flink's print format: the row kind and the values, one line per copy.
fn render(changes: &ChangeBatch, options: &PrintOptions) -> Result<String> {
    let data = changes.data();
    let format = FormatOptions::default().with_null("NULL");
    let formatters = data
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &format))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| FreshetError::Internal(e.to_string()))?;
    let prefix = options
        .identifier
        .as_ref()
        .map(|i| format!("{i}> "))
        .unwrap_or_default();
    let mut out = String::new();
    for (row, &weight) in changes.weights().values().iter().enumerate() {
        let values: Vec<String> = formatters.iter().map(|f| f.value(row).to_string()).collect();
        let kind = if weight > 0 { "+I" } else { "-D" };
        for _ in 0..weight.unsigned_abs() {
            out.push_str(&format!("{prefix}{kind}[{}]\n", values.join(", ")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn prints_as_flink_does() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let data = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("a"), Some("b")])),
            ],
        )
        .unwrap();
        let changes = ChangeBatch::from_parts(&data, Arc::new(Int64Array::from(vec![2, -1]))).unwrap();
        let text = render(
            &changes,
            &PrintOptions {
                identifier: Some("q1".into()),
                standard_error: false,
            },
        )
        .unwrap();
        assert_eq!(text, "q1> +I[1, a]\nq1> +I[1, a]\nq1> -D[NULL, b]\n");
    }
}
