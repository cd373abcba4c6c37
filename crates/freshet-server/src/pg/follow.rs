//! Rows sent as they are produced: `SUBSCRIBE` (which does not end) and `COPY (...) TO STDOUT`.
//!
//! pgwire's own response path buffers rows until a socket buffer fills, which is right for a
//! query and wrong for a subscription whose next change may come an hour later: here each batch
//! is flushed to the client as soon as it is encoded.

use std::fmt::Debug;
use std::sync::Arc;

use arrow_pg::datatypes::encode_recordbatch;
use bytes::Bytes;
use freshet::datafusion::arrow::array::RecordBatch;
use freshet::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use freshet::datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use futures::sink::{Sink, SinkExt};
use pgwire::api::results::FieldInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyOutResponse};

use super::stream_error;

/// The statement inside `COPY (statement) TO STDOUT`, when the text is that.
pub(crate) fn copy_to_stdout(text: &str) -> Option<&str> {
    let text = text.trim().trim_end_matches(';').trim_end();
    let rest = strip_keyword(text, "COPY")?.trim_start();
    let rest = rest.strip_prefix('(')?;
    let close = matching_paren(rest)?;
    let (inner, after) = rest.split_at(close);
    let after = strip_keyword(after[1..].trim_start(), "TO")?.trim_start();
    let after = strip_keyword(after, "STDOUT")?.trim();
    // Text format is the only one: an options list may say so.
    let plain = after.is_empty()
        || after.eq_ignore_ascii_case("WITH (FORMAT TEXT)")
        || after.eq_ignore_ascii_case("(FORMAT TEXT)");
    plain.then_some(inner)
}

fn strip_keyword<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let head = text.get(..keyword.len())?;
    let rest = &text[keyword.len()..];
    (head.eq_ignore_ascii_case(keyword) && !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_')).then_some(rest)
}

/// The index of the `)` closing an already opened parenthesis, outside quotes.
fn matching_paren(text: &str) -> Option<usize> {
    let mut depth = 1;
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Sends the stream's rows as data rows, flushing each batch; the number of rows sent.
pub(crate) async fn send_rows<C>(
    client: &mut C,
    mut stream: SendableRecordBatchStream,
    fields: Arc<Vec<FieldInfo>>,
) -> PgWireResult<usize>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(stream_error)?;
        for row in encode_recordbatch(fields.clone(), batch) {
            client.feed(PgWireBackendMessage::DataRow(row?)).await?;
            rows += 1;
        }
        client.flush().await?;
    }
    Ok(rows)
}

/// Sends the stream as `COPY ... TO STDOUT` in Postgres' text format, flushing each batch; the
/// number of rows sent.
pub(crate) async fn send_copy<C>(client: &mut C, mut stream: SendableRecordBatchStream) -> PgWireResult<usize>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let columns = stream.schema().fields().len();
    let response = CopyOutResponse::new(0, columns as i16, vec![0; columns]);
    client.send(PgWireBackendMessage::CopyOutResponse(response)).await?;
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(stream_error)?;
        for line in text_lines(&batch).map_err(|e| stream_error(e.into()))? {
            client
                .feed(PgWireBackendMessage::CopyData(CopyData::new(Bytes::from(line))))
                .await?;
            rows += 1;
        }
        client.flush().await?;
    }
    client.send(PgWireBackendMessage::CopyDone(CopyDone::new())).await?;
    Ok(rows)
}

/// A batch's rows in COPY's text format: tab-separated, `\N` for NULL, backslash escapes.
fn text_lines(batch: &RecordBatch) -> Result<Vec<String>, freshet::datafusion::arrow::error::ArrowError> {
    let options = FormatOptions::default();
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let mut lines = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut line = String::new();
        for (i, (column, formatter)) in batch.columns().iter().zip(&formatters).enumerate() {
            if i > 0 {
                line.push('\t');
            }
            if column.is_null(row) {
                line.push_str("\\N");
                continue;
            }
            for c in formatter.value(row).to_string().chars() {
                match c {
                    '\\' => line.push_str("\\\\"),
                    '\t' => line.push_str("\\t"),
                    '\n' => line.push_str("\\n"),
                    '\r' => line.push_str("\\r"),
                    c => line.push(c),
                }
            }
        }
        line.push('\n');
        lines.push(line);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_to_stdout_finds_the_inner_statement() {
        assert_eq!(
            copy_to_stdout("COPY (SUBSCRIBE TO t) TO STDOUT"),
            Some("SUBSCRIBE TO t")
        );
        assert_eq!(
            copy_to_stdout("copy (select ')' from t) to stdout;"),
            Some("select ')' from t")
        );
        assert_eq!(
            copy_to_stdout("COPY (SELECT (1)) TO STDOUT WITH (FORMAT TEXT)"),
            Some("SELECT (1)")
        );
        assert_eq!(copy_to_stdout("COPY t TO STDOUT"), None);
        assert_eq!(copy_to_stdout("COPY (SELECT 1) TO 'file.csv'"), None);
        assert_eq!(copy_to_stdout("COPYX (SELECT 1) TO STDOUT"), None);
    }
}
