//! Printing results: aligned tables for people; CSV, JSON and NDJSON for programs (no
//! decoration: nothing but the rows goes to standard output).

use std::io::Write;
use std::time::Instant;

use freshet::FreshetError;
use freshet::datafusion::arrow::array::RecordBatch;
use freshet::datafusion::arrow::csv::WriterBuilder;
use freshet::datafusion::arrow::datatypes::SchemaRef;
use freshet::datafusion::arrow::json::{ArrayWriter, LineDelimitedWriter};
use freshet::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
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

/// Prints statement results to standard output, or to a file chosen with `\o`.
pub(crate) struct Printer {
    pub format: Format,
    pub timing: bool,
    /// One line per column and value instead of a table (`\x`).
    pub expanded: bool,
    /// Where results go instead of standard output.
    pub output: Option<std::fs::File>,
}

impl Printer {
    pub(crate) fn new(format: Format) -> Self {
        Self {
            format,
            timing: false,
            expanded: false,
            output: None,
        }
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
        let written = match &self.output {
            Some(file) => {
                let mut out = std::io::BufWriter::new(file);
                self.render(&mut out, &schema, &batches, elapsed)
                    .and_then(|()| out.flush())
            }
            None => {
                let mut out = std::io::stdout().lock();
                self.render(&mut out, &schema, &batches, elapsed)
                    .and_then(|()| out.flush())
            }
        };
        written.map_err(|e| FreshetError::InvalidStatement(format!("cannot write the result: {e}")))
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
                Format::Table if self.expanded => render_expanded(out, batches)?,
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

/// One block per row: `-[ RECORD n ]-` and a `column | value` line per column.
fn render_expanded(out: &mut impl Write, batches: &[RecordBatch]) -> std::io::Result<()> {
    let options = FormatOptions::default().with_null("NULL");
    let mut record = 0;
    for batch in batches {
        let schema = batch.schema();
        let width = schema
            .fields()
            .iter()
            .map(|f| f.name().chars().count())
            .max()
            .unwrap_or(0);
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        for row in 0..batch.num_rows() {
            record += 1;
            writeln!(out, "-[ RECORD {record} ]-")?;
            for (field, formatter) in schema.fields().iter().zip(&formatters) {
                writeln!(out, "{:width$} | {}", field.name(), formatter.value(row))?;
            }
        }
    }
    writeln!(out, "({record} row{})", if record == 1 { "" } else { "s" })
}

/// An empty result still prints its header: give it an empty batch of its schema.
fn with_schema(batches: &[RecordBatch], schema: &SchemaRef) -> Vec<RecordBatch> {
    if batches.is_empty() {
        vec![RecordBatch::new_empty(schema.clone())]
    } else {
        batches.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use freshet::datafusion::arrow::array::{Int32Array, StringArray};
    use freshet::datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn expanded_display_prints_a_block_per_row() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a"), None])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        render_expanded(&mut out, &[batch]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-[ RECORD 1 ]-\nid   | 1\nname | a\n-[ RECORD 2 ]-\nid   | 2\nname | NULL\n(2 rows)\n"
        );
    }
}
