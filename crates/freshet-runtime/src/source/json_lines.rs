//! Decoding JSON lines into Arrow batches, with errors that say which line and column.
//!
//! Whole chunks go through arrow's JSON decoder; a chunk that fails is decoded again line by
//! line, only to find the bad lines: to name them, or to skip and count them. A missing key
//! decodes as NULL, as in Flink; with `json.fail-on-missing-field` a chunk that decoded a NULL
//! is read again line by line to tell a missing key from an explicit `null`.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Fields, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::Decoder;
use datafusion::arrow::record_batch::RecordBatch;

/// Rows decoded per batch.
const BATCH_ROWS: usize = 8_192;

/// A line that could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BadLine {
    /// 1-based line number in the file.
    pub line: u64,
    /// 1-based column, when the line is not JSON at all.
    pub column: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// Decodes JSON lines of one schema.
pub(crate) struct JsonLines {
    schema: SchemaRef,
    ignore_errors: bool,
    /// A line without a key of the schema (at any depth of its ROW columns) is bad.
    fail_on_missing_field: bool,
}

/// What a chunk decoded to.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub batches: Vec<RecordBatch>,
    /// Lines skipped (with `ignore_errors`).
    pub skipped: u64,
}

impl JsonLines {
    pub(crate) fn new(schema: SchemaRef, ignore_errors: bool, fail_on_missing_field: bool) -> Self {
        Self {
            schema,
            ignore_errors,
            fail_on_missing_field,
        }
    }

    fn decoder(&self) -> Result<Decoder, String> {
        ReaderBuilder::new(self.schema.clone())
            .with_batch_size(BATCH_ROWS)
            .build_decoder()
            .map_err(|e| e.to_string())
    }

    /// Decodes `chunk`, whole lines whose first is line `first_line` (1-based) of its file.
    /// A bad line is an error, or skipped when errors are ignored.
    pub(crate) fn decode(&self, chunk: &[u8], first_line: u64) -> Result<Decoded, BadLine> {
        match self.decode_all(chunk) {
            Ok(batches)
                if !self.fail_on_missing_field
                    || !batches
                        .iter()
                        .any(|b| b.columns().iter().any(|c| has_nulls(c.as_ref()))) =>
            {
                Ok(Decoded { batches, skipped: 0 })
            }
            _ => self.decode_by_line(chunk, first_line),
        }
    }

    fn decode_all(&self, chunk: &[u8]) -> Result<Vec<RecordBatch>, String> {
        let mut decoder = self.decoder()?;
        let mut batches = Vec::new();
        let mut rest = chunk;
        while !rest.is_empty() {
            let used = decoder.decode(rest).map_err(|e| e.to_string())?;
            rest = &rest[used..];
            if used == 0 || !rest.is_empty() {
                // The decoder is full (or stuck): take its rows.
                match decoder.flush().map_err(|e| e.to_string())? {
                    Some(batch) => batches.push(batch),
                    None if used == 0 => return Err("the JSON decoder made no progress".into()),
                    None => {}
                }
            }
        }
        if let Some(batch) = decoder.flush().map_err(|e| e.to_string())? {
            batches.push(batch);
        }
        Ok(batches)
    }

    fn decode_by_line(&self, chunk: &[u8], first_line: u64) -> Result<Decoded, BadLine> {
        let mut decoded = Decoded::default();
        let mut good: Vec<u8> = Vec::new();
        for (i, line) in chunk.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let number = first_line + i as u64;
            let problem = match serde_json::from_slice::<serde_json::Value>(line) {
                Err(e) => Some(BadLine {
                    line: number,
                    column: Some(e.column() as u64),
                    reason: format!("malformed JSON: {e}"),
                }),
                Ok(serde_json::Value::Object(object)) => match self.missing_field(&object) {
                    Some(field) => Some(BadLine {
                        line: number,
                        column: None,
                        reason: format!("field '{field}' is missing (json.fail-on-missing-field)"),
                    }),
                    None => self.decode_all(line).err().map(|reason| BadLine {
                        line: number,
                        column: None,
                        reason,
                    }),
                },
                Ok(_) => Some(BadLine {
                    line: number,
                    column: Some(1),
                    reason: "expected a JSON object".into(),
                }),
            };
            match problem {
                Some(bad) if !self.ignore_errors => return Err(bad),
                Some(_) => decoded.skipped += 1,
                None => {
                    good.extend_from_slice(line);
                    good.push(b'\n');
                }
            }
        }
        decoded.batches = self.decode_all(&good).map_err(|reason| BadLine {
            line: first_line,
            column: None,
            reason,
        })?;
        Ok(decoded)
    }

    /// With `fail_on_missing_field`, the first field of the schema the object lacks (a path
    /// `a.b` for fields of ROW columns).
    fn missing_field(&self, object: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        if !self.fail_on_missing_field {
            return None;
        }
        missing_in(object, self.schema.fields())
    }
}

fn missing_in(object: &serde_json::Map<String, serde_json::Value>, fields: &Fields) -> Option<String> {
    for field in fields {
        match (object.get(field.name()), field.data_type()) {
            (None, _) => return Some(field.name().clone()),
            (Some(serde_json::Value::Object(inner)), DataType::Struct(children)) => {
                if let Some(path) = missing_in(inner, children) {
                    return Some(format!("{}.{path}", field.name()));
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether the array or a field of its structs holds a NULL.
fn has_nulls(array: &dyn Array) -> bool {
    array.null_count() > 0
        || array
            .as_struct_opt()
            .is_some_and(|rows| rows.columns().iter().any(|c| has_nulls(c.as_ref())))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn lines(ignore: bool) -> JsonLines {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        JsonLines::new(schema, ignore, false)
    }

    fn rows(d: &Decoded) -> usize {
        d.batches.iter().map(RecordBatch::num_rows).sum()
    }

    #[test]
    fn decodes_lines_and_names_the_bad_one() {
        let ok = lines(false)
            .decode(b"{\"id\": 1, \"name\": \"a\"}\n\n{\"id\": 2}\n", 1)
            .unwrap();
        assert_eq!(rows(&ok), 2);
        let bad = lines(false)
            .decode(b"{\"id\": 1}\n{\"id\": 2\n{\"id\": 3}\n", 10)
            .unwrap_err();
        assert_eq!(bad.line, 11);
        assert!(bad.column.is_some());
        let typed = lines(false).decode(b"{\"id\": 1}\n{\"id\": \"x\"}\n", 1).unwrap_err();
        assert_eq!(typed.line, 2);
        assert!(
            typed.reason.contains("x") || typed.reason.contains("Int64"),
            "{}",
            typed.reason
        );
    }

    #[test]
    fn skips_and_counts_bad_lines_when_asked() {
        let d = lines(true)
            .decode(b"{\"id\": 1}\nnot json\n{\"id\": \"x\"}\n[1]\n{\"id\": 5}\n", 1)
            .unwrap();
        assert_eq!(rows(&d), 2);
        assert_eq!(d.skipped, 3);
    }

    #[test]
    fn decodes_more_rows_than_a_batch() {
        let mut text = Vec::new();
        for i in 0..(BATCH_ROWS * 2 + 5) {
            text.extend_from_slice(format!("{{\"id\": {i}}}\n").as_bytes());
        }
        let d = lines(false).decode(&text, 1).unwrap();
        assert_eq!(rows(&d), BATCH_ROWS * 2 + 5);
    }

    #[test]
    fn a_missing_field_is_null_or_with_fail_on_missing_field_a_bad_line() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new(
                "person",
                DataType::Struct(vec![Field::new("name", DataType::Utf8, true)].into()),
                true,
            ),
        ]));
        let text = b"{\"id\": 1, \"person\": {\"name\": \"a\"}}\n{\"id\": null, \"person\": {\"name\": null}}\n{\"person\": null}\n";
        let lenient = JsonLines::new(schema.clone(), false, false).decode(text, 1).unwrap();
        assert_eq!(rows(&lenient), 3);
        // Explicit NULLs are not missing fields; the third line lacks `id`.
        let strict = JsonLines::new(schema.clone(), false, true);
        let bad = strict.decode(text, 1).unwrap_err();
        assert_eq!(bad.line, 3);
        assert!(bad.reason.contains("field 'id' is missing"), "{}", bad.reason);
        let nested = strict
            .decode(
                b"{\"id\": 1, \"person\": {\"name\": \"a\"}}\n{\"id\": 2, \"person\": {}}\n",
                5,
            )
            .unwrap_err();
        assert_eq!(nested.line, 6);
        assert!(nested.reason.contains("'person.name'"), "{}", nested.reason);
        // Lines with every field decode as before, NULLs or not.
        let fine = strict.decode(&text[..text.len() - 17], 1).unwrap();
        assert_eq!(rows(&fine), 2);
    }
}
