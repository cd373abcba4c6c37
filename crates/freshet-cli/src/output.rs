//! Printing results: aligned tables for people; CSV, JSON and NDJSON for programs (no
//! decoration: nothing but the rows goes to standard output).

use std::io::{IsTerminal, Write};

use freshet::FreshetError;
use freshet::datafusion::arrow::array::RecordBatch;
use freshet::datafusion::arrow::csv::WriterBuilder;
use freshet::datafusion::arrow::datatypes::SchemaRef;
use freshet::datafusion::arrow::json::{ArrayWriter, LineDelimitedWriter};
use freshet::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use freshet::datafusion::arrow::util::pretty::pretty_format_batches;

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

/// Where results go.
pub(crate) enum Destination {
    /// The terminal or whatever standard output is.
    Stdout,
    /// A file chosen with `\o`.
    File(std::fs::File),
}

/// Prints statement results.
pub(crate) struct Printer {
    pub format: Format,
    pub timing: bool,
    /// One line per column and value instead of a table (`\x`).
    pub expanded: bool,
    pub destination: Destination,
    /// Whether results taller or wider than the terminal go through a pager (interactive use
    /// only, and only when standard output is a terminal).
    pub pager: bool,
    /// Whether statements running over a second show a progress indicator on standard error.
    pub progress: bool,
}

impl Printer {
    pub(crate) fn new(format: Format) -> Self {
        Self {
            format,
            timing: false,
            expanded: false,
            destination: Destination::Stdout,
            pager: false,
            progress: false,
        }
    }

    /// Whether results go to a terminal (not a file, a pipe or another session).
    pub(crate) fn to_terminal(&self) -> bool {
        matches!(self.destination, Destination::Stdout) && std::io::stdout().is_terminal()
    }

    /// Prints one statement's result.
    pub(crate) fn print(
        &mut self,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        elapsed: std::time::Duration,
    ) -> Result<(), FreshetError> {
        let mut rendered = Vec::new();
        let written = self
            .render(&mut rendered, schema, batches, elapsed)
            .and_then(|()| match &mut self.destination {
                Destination::Stdout
                    if self.pager && self.format == Format::Table && std::io::stdout().is_terminal() =>
                {
                    page(&rendered)
                }
                Destination::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&rendered).and_then(|()| out.flush())
                }
                Destination::File(file) => file.write_all(&rendered).and_then(|()| file.flush()),
            });
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

/// Shows `text` through the pager when it does not fit the terminal, like psql: `$PAGER`
/// (empty: no pager), else `less -SRX`. Without a usable pager the text is printed.
fn page(text: &[u8]) -> std::io::Result<()> {
    // A terminal that reports no size (0 x 0) is treated like one of unknown size.
    let size = terminal_size::terminal_size().filter(|(width, height)| width.0 > 0 && height.0 > 0);
    let fits = size.is_none_or(|(width, height)| {
        fits_in(
            &String::from_utf8_lossy(text),
            usize::from(width.0),
            usize::from(height.0),
        )
    });
    let command = match std::env::var("PAGER") {
        Ok(pager) => pager,
        Err(_) => "less -SRX".to_string(),
    };
    let mut words = command.split_whitespace();
    if let (false, Some(program)) = (fits, words.next()) {
        let child = std::process::Command::new(program)
            .args(words)
            .stdin(std::process::Stdio::piped())
            .spawn();
        if let Ok(mut child) = child {
            // The pager may quit before reading everything (the user pressed q): not an error.
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(text);
            }
            child.wait()?;
            return Ok(());
        }
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text).and_then(|()| out.flush())
}

/// Whether text fits a terminal of `width` columns and `height` lines, keeping a line for the
/// prompt.
fn fits_in(text: &str, width: usize, height: usize) -> bool {
    let mut lines = 0;
    for line in text.lines() {
        lines += 1;
        if lines >= height || line.chars().count() > width {
            return false;
        }
    }
    true
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
    fn text_fits_a_terminal_with_a_line_to_spare() {
        assert!(fits_in("ab\ncd\n", 2, 3));
        assert!(!fits_in("ab\ncd\nef\n", 2, 3));
        assert!(!fits_in("abc\n", 2, 3));
        assert!(fits_in("", 2, 1));
    }

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
