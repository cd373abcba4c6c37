//! Printing results: aligned tables for people; CSV, JSON and NDJSON for programs (no
//! decoration: nothing but the rows goes to standard output).

use std::io::Write;
use std::time::Instant;

use freshet::FreshetError;
use freshet::datafusion::arrow::array::RecordBatch;
use freshet::datafusion::arrow::csv::WriterBuilder;
use freshet::datafusion::arrow::datatypes::SchemaRef;
use freshet::datafusion::arrow::json::{ArrayWriter, LineDelimitedWriter};
use freshet::datafusion::arrow::util::pretty::pretty_format_batches;
use freshet::datafusion::execution::SendableRecordBatchStream;
use futures::TryStreamExt;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned table with a row count.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON array of objects per statement.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// Prints statement results to standard output.
pub(crate) struct Printer {
    pub format: Format,
    pub timing: bool,
}

impl Printer {
    pub(crate) fn new(format: Format) -> Self {
        Self { format, timing: false }
    }

    /// Prints one statement's result.
    pub(crate) async fn print(
        &mut self,
        stream: SendableRecordBatchStream,
        started: Instant,
    ) -> Result<(), FreshetError> {
        let schema = stream.schema();
        let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(FreshetError::from)?;
        let elapsed = started.elapsed();
        let mut out = std::io::stdout().lock();
        self.render(&mut out, &schema, &batches, elapsed)
            .and_then(|()| out.flush())
            .map_err(|e| FreshetError::InvalidStatement(format!("cannot write the result: {e}")))
    }

    fn render(
        &self,
        out: &mut impl Write,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        elapsed: std::time::Duration,
    ) -> std::io::Result<()> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if schema.fields().is_empty() {
            // Statements without rows print nothing in machine formats.
            if self.format == Format::Table {
                writeln!(out, "OK")?;
            }
        } else {
            match self.format {
                Format::Table => {
                    let table = pretty_format_batches(&with_schema(batches, schema)).map_err(std::io::Error::other)?;
                    writeln!(out, "{table}\n({rows} row{})", if rows == 1 { "" } else { "s" })?;
                }
                Format::Csv => {
                    let mut writer = WriterBuilder::new().with_header(true).build(&mut *out);
                    for batch in with_schema(batches, schema) {
                        writer.write(&batch).map_err(std::io::Error::other)?;
                    }
                }
                Format::Json => {
                    let mut writer = ArrayWriter::new(&mut *out);
                    for batch in batches {
                        writer.write(batch).map_err(std::io::Error::other)?;
                    }
                    writer.finish().map_err(std::io::Error::other)?;
                    writeln!(out)?;
                }
                Format::Ndjson => {
                    let mut writer = LineDelimitedWriter::new(&mut *out);
                    for batch in batches {
                        writer.write(batch).map_err(std::io::Error::other)?;
                    }
                    writer.finish().map_err(std::io::Error::other)?;
                }
            }
        }
        if self.timing && self.format == Format::Table {
            writeln!(out, "Time: {:.3} ms", elapsed.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// An empty result still prints its header: give it an empty batch of its schema.
fn with_schema(batches: &[RecordBatch], schema: &SchemaRef) -> Vec<RecordBatch> {
    if batches.is_empty() {
        vec![RecordBatch::new_empty(schema.clone())]
    } else {
        batches.to_vec()
    }
}
