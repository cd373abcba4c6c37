//! Partition directories of the `filesystem` connector, in Hive's layout as Flink writes them:
//! a table `PARTITIONED BY (dt, hr)` keeps a row with `dt = '2026-12-05'` and `hr = 10` in
//! `dt=2026-12-05/hr=10/`, without those columns in the file. Values are written as text with
//! the characters that cannot stand in a path escaped as `%XX`; NULL and the empty string are
//! `partition.default-name`.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::display::array_value_to_string;

use freshet_common::{FreshetError, Result};

/// Whether a character of a partition value is written as `%XX` (Hive's and Flink's set).
fn escaped(c: char) -> bool {
    c.is_ascii_control()
        || matches!(
            c,
            '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
        )
}

/// A partition value as a directory name's part.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if escaped(c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The value a directory name's part stands for.
pub(crate) fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(value) = text.get(i + 1..i + 3).and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory (relative, `a=1/b=x`) of each row of `columns` (the partition columns, in
/// `names`' order).
pub(crate) fn directories(names: &[String], columns: &[ArrayRef], default: &str) -> Result<Vec<String>> {
    let rows = columns.first().map_or(0, |c| c.len());
    let mut out = vec![String::new(); rows];
    for (name, column) in names.iter().zip(columns) {
        for (row, directory) in out.iter_mut().enumerate() {
            let value = if column.is_null(row) {
                String::new()
            } else {
                array_value_to_string(column, row).map_err(|e| FreshetError::Internal(e.to_string()))?
            };
            let value = if value.is_empty() {
                default.to_string()
            } else {
                escape(&value)
            };
            if !directory.is_empty() {
                directory.push('/');
            }
            directory.push_str(&format!("{}={value}", escape(name)));
        }
    }
    Ok(out)
}

/// The partition columns of a file's rows, from the directories of its path below `table`'s
/// `root`: for each field of `partitions` (name and type), a column of `rows` copies of the
/// value its `name=value` directory gives (NULL for the default name or no such directory).
pub(crate) fn columns_of(
    table: &str,
    root: &Path,
    file: &Path,
    partitions: &SchemaRef,
    default: &str,
    rows: usize,
) -> Result<Vec<ArrayRef>> {
    let relative = file.strip_prefix(root).unwrap_or(file);
    let directories: Vec<String> = relative
        .parent()
        .map(|p| p.iter().map(|c| c.to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    partitions
        .fields()
        .iter()
        .map(|field| {
            let value = directories.iter().rev().find_map(|d| {
                let (name, value) = d.split_once('=')?;
                (unescape(name) == *field.name()).then_some(value)
            });
            match value {
                None => Ok(new_null_array(field.data_type(), rows)),
                Some(value) if value == default => Ok(new_null_array(field.data_type(), rows)),
                Some(value) => {
                    let text: ArrayRef = Arc::new(StringArray::from(vec![unescape(value); rows]));
                    if field.data_type() == &DataType::Utf8 {
                        return Ok(text);
                    }
                    let typed = cast(&text, field.data_type()).map_err(|e| FreshetError::BadSourceData {
                        table: table.to_string(),
                        at: format!("file {}", file.display()),
                        reason: format!("partition {}={value}: {e}", field.name()),
                    })?;
                    if typed.null_count() > 0 {
                        return Err(FreshetError::BadSourceData {
                            table: table.to_string(),
                            at: format!("file {}", file.display()),
                            reason: format!(
                                "partition {}={value} is not a value of type {}",
                                field.name(),
                                field.data_type()
                            ),
                        });
                    }
                    Ok(typed)
                }
            }
        })
        .collect()
}

/// `batch` (the file's columns) with the partition columns put in: the columns of `schema`,
/// each taken from the file's batch or from `partition_values` by name.
pub(crate) fn with_partitions(
    schema: &SchemaRef,
    batch: &RecordBatch,
    partitions: &SchemaRef,
    partition_values: &[ArrayRef],
) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| match partitions.index_of(field.name()) {
            Ok(i) => Ok(partition_values[i].slice(0, batch.num_rows())),
            Err(_) => batch
                .column_by_name(field.name())
                .cloned()
                .ok_or_else(|| FreshetError::Internal(format!("a file's rows lack column {}", field.name()))),
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| FreshetError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_read_back() {
        for value in ["2026-12-05", "a/b=c", "50%", "x y", "é:ü"] {
            assert_eq!(unescape(&escape(value)), value);
            assert!(!escape(value).contains('/'));
        }
        let names = vec!["dt".to_string(), "hr".to_string()];
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("2026-12-05"), None, Some("a/b")])),
            Arc::new(datafusion::arrow::array::Int32Array::from(vec![
                Some(10),
                Some(3),
                None,
            ])),
        ];
        let dirs = directories(&names, &columns, "__DEFAULT_PARTITION__").unwrap();
        assert_eq!(dirs[0], "dt=2026-12-05/hr=10");
        assert_eq!(dirs[1], "dt=__DEFAULT_PARTITION__/hr=3");
        assert_eq!(dirs[2], "dt=a%2Fb/hr=__DEFAULT_PARTITION__");
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new("dt", DataType::Utf8, true),
            datafusion::arrow::datatypes::Field::new("hr", DataType::Int32, true),
        ]));
        let root = Path::new("/data/t");
        let read = columns_of(
            "t",
            root,
            &root.join(&dirs[2]).join("part-1.json"),
            &schema,
            "__DEFAULT_PARTITION__",
            2,
        )
        .unwrap();
        assert_eq!(array_value_to_string(&read[0], 1).unwrap(), "a/b");
        assert!(read[1].is_null(0));
        let bad = columns_of(
            "t",
            root,
            &root.join("dt=x/hr=ten/f.json"),
            &schema,
            "__DEFAULT_PARTITION__",
            1,
        );
        assert!(bad.unwrap_err().to_string().contains("hr=ten"));
    }
}
