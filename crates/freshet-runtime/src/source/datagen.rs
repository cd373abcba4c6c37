//! The `datagen` source: rows generated at `rows-per-second` on the engine's clock, with Flink's
//! field options. Values are a function of the row's number (a hash, no state), so a restart
//! that resumes at a position generates the same rows as an uninterrupted run would.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int8Builder, Int16Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMicrosecondBuilder, TimestampMillisecondBuilder, TimestampNanosecondBuilder,
    TimestampSecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use freshet_common::{FreshetError, Result};

use crate::connector::{DatagenOptions, FieldGenerator};

/// Rows per generated batch.
const BATCH_ROWS: u64 = 8_192;

#[derive(Debug)]
pub(super) struct Datagen {
    table: String,
    schema: SchemaRef,
    options: DatagenOptions,
    columns: Vec<Column>,
    /// Rows a sequence field allows (the source ends after them), if any field is one.
    sequence_rows: Option<u64>,
}

#[derive(Debug)]
struct Column {
    generator: FieldGenerator,
    /// Integer bounds (random) or first value (sequence).
    low: i64,
    high: i64,
    float_low: f64,
    float_high: f64,
}

impl Datagen {
    pub(super) fn new(table: &str, schema: SchemaRef, options: DatagenOptions) -> Result<Self> {
        let error = |message: String| FreshetError::InvalidStatement(format!("table \"{table}\": {message}"));
        for (name, _) in &options.fields {
            if schema.field_with_name(name).is_err() {
                return Err(error(format!("datagen option 'fields.{name}...' names no column")));
            }
        }
        let mut columns = Vec::new();
        let mut sequence_rows: Option<u64> = None;
        for field in schema.fields() {
            let generator = options
                .fields
                .iter()
                .find(|(n, _)| n == field.name())
                .map(|(_, g)| g.clone())
                .unwrap_or_default();
            let int = |text: &Option<String>, default: i64, what: &str| -> Result<i64> {
                match text {
                    None => Ok(default),
                    Some(t) => t.trim().parse::<i64>().map_err(|_| {
                        error(format!(
                            "datagen option 'fields.{}.{what}' = '{t}' is not a whole number",
                            field.name()
                        ))
                    }),
                }
            };
            let float = |text: &Option<String>, default: f64, what: &str| -> Result<f64> {
                match text {
                    None => Ok(default),
                    Some(t) => t.trim().parse::<f64>().map_err(|_| {
                        error(format!(
                            "datagen option 'fields.{}.{what}' = '{t}' is not a number",
                            field.name()
                        ))
                    }),
                }
            };
            check_type(field).map_err(&error)?;
            let (type_low, type_high) = integer_range(field.data_type());
            let column = if generator.sequence {
                let start = int(&generator.start, 0, "start")?;
                let end = int(&generator.end, 0, "end")?;
                if end < start {
                    return Err(error(format!(
                        "datagen sequence '{}' ends before it starts",
                        field.name()
                    )));
                }
                let rows = (end - start) as u64 + 1;
                sequence_rows = Some(sequence_rows.map_or(rows, |r| r.min(rows)));
                Column {
                    low: start,
                    high: end,
                    float_low: 0.0,
                    float_high: 0.0,
                    generator,
                }
            } else {
                Column {
                    low: int(&generator.min, type_low, "min")?,
                    high: int(&generator.max, type_high, "max")?,
                    float_low: float(&generator.min, 0.0, "min")?,
                    float_high: float(&generator.max, 1.0, "max")?,
                    generator,
                }
            };
            if column.low > column.high {
                return Err(error(format!("datagen field '{}': min is above max", field.name())));
            }
            columns.push(column);
        }
        Ok(Self {
            table: table.to_string(),
            schema,
            options,
            columns,
            sequence_rows,
        })
    }

    /// The number of rows the source ends after, if it ends.
    pub(super) fn total_rows(&self) -> Option<u64> {
        match (self.options.number_of_rows, self.sequence_rows) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Rows due after `elapsed_ms` of generation at the configured rate.
    pub(super) fn rows_due(&self, elapsed_ms: i64) -> u64 {
        let due = (self.options.rows_per_second as u128 * elapsed_ms.max(0) as u128 / 1_000) as u64;
        self.total_rows().map_or(due, |total| due.min(total))
    }

    /// Rows `from..to`, generated at `now_ms`, in batches.
    pub(super) fn generate(&self, from: u64, to: u64, now_ms: i64) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        let mut start = from;
        while start < to {
            let end = (start + BATCH_ROWS).min(to);
            let columns = self
                .schema
                .fields()
                .iter()
                .zip(&self.columns)
                .enumerate()
                .map(|(index, (field, column))| self.column(index as u64, field, column, start, end, now_ms))
                .collect::<Result<Vec<_>>>()?;
            batches.push(
                RecordBatch::try_new(self.schema.clone(), columns)
                    .map_err(|e| FreshetError::Internal(format!("table \"{}\": datagen: {e}", self.table)))?,
            );
            start = end;
        }
        Ok(batches)
    }

    fn column(&self, index: u64, field: &Field, column: &Column, from: u64, to: u64, now_ms: i64) -> Result<ArrayRef> {
        let g = &column.generator;
        let random = |row: u64, salt: u64| mix(row.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index << 48) ^ salt);
        let is_null = |row: u64| g.null_rate > 0.0 && unit(random(row, 1)) < g.null_rate;
        let integer = |row: u64| -> i64 {
            if g.sequence {
                column.low.saturating_add(row as i64)
            } else {
                let span = (column.high as i128 - column.low as i128 + 1) as u128;
                (column.low as i128 + (random(row, 0) as u128 % span) as i128) as i64
            }
        };
        macro_rules! ints {
            ($builder:ty, $t:ty) => {{
                let mut b = <$builder>::with_capacity((to - from) as usize);
                for row in from..to {
                    if is_null(row) {
                        b.append_null()
                    } else {
                        b.append_value(integer(row) as $t)
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }};
        }
        let array: ArrayRef = match field.data_type() {
            DataType::Int8 => ints!(Int8Builder, i8),
            DataType::Int16 => ints!(Int16Builder, i16),
            DataType::Int32 => ints!(Int32Builder, i32),
            DataType::Int64 => ints!(Int64Builder, i64),
            DataType::Float32 | DataType::Float64 => {
                let value = |row: u64| {
                    if g.sequence {
                        column.low as f64 + row as f64
                    } else {
                        column.float_low + unit(random(row, 0)) * (column.float_high - column.float_low)
                    }
                };
                if field.data_type() == &DataType::Float32 {
                    let mut b = Float32Builder::with_capacity((to - from) as usize);
                    for row in from..to {
                        if is_null(row) {
                            b.append_null()
                        } else {
                            b.append_value(value(row) as f32)
                        }
                    }
                    Arc::new(b.finish())
                } else {
                    let mut b = Float64Builder::with_capacity((to - from) as usize);
                    for row in from..to {
                        if is_null(row) {
                            b.append_null()
                        } else {
                            b.append_value(value(row))
                        }
                    }
                    Arc::new(b.finish())
                }
            }
            DataType::Boolean => {
                let mut b = BooleanBuilder::with_capacity((to - from) as usize);
                for row in from..to {
                    if is_null(row) {
                        b.append_null()
                    } else {
                        b.append_value(random(row, 0) & 1 == 1)
                    }
                }
                Arc::new(b.finish())
            }
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
                let length = g.length.unwrap_or(100);
                let mut b = StringBuilder::new();
                let mut text = String::with_capacity(length);
                for row in from..to {
                    if is_null(row) {
                        b.append_null();
                        continue;
                    }
                    text.clear();
                    if g.sequence {
                        text.push_str(&integer(row).to_string());
                    } else {
                        let mut bits = random(row, 0);
                        for i in 0..length {
                            if i % 10 == 9 {
                                bits = mix(bits);
                            }
                            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                            text.push(ALPHABET[(bits >> ((i % 10) * 6) & 63) as usize % ALPHABET.len()] as char);
                        }
                    }
                    b.append_value(&text);
                }
                cast(&b.finish(), field.data_type()).map_err(|e| FreshetError::Internal(e.to_string()))?
            }
            DataType::Timestamp(unit_of_time, _) => {
                let past = g.max_past.map_or(0, |d| d.as_millis() as i64);
                let millis = |row: u64| now_ms - (random(row, 0) % (past as u64 + 1)) as i64;
                macro_rules! stamps {
                    ($builder:ty, $scale:expr) => {{
                        let mut b = <$builder>::with_capacity((to - from) as usize);
                        for row in from..to {
                            if is_null(row) {
                                b.append_null()
                            } else {
                                b.append_value($scale(millis(row)))
                            }
                        }
                        Arc::new(b.finish()) as ArrayRef
                    }};
                }
                let stamps = match unit_of_time {
                    TimeUnit::Second => stamps!(TimestampSecondBuilder, |m: i64| m / 1_000),
                    TimeUnit::Millisecond => stamps!(TimestampMillisecondBuilder, |m: i64| m),
                    TimeUnit::Microsecond => stamps!(TimestampMicrosecondBuilder, |m: i64| m * 1_000),
                    TimeUnit::Nanosecond => stamps!(TimestampNanosecondBuilder, |m: i64| m * 1_000_000),
                };
                cast(&stamps, field.data_type()).map_err(|e| FreshetError::Internal(e.to_string()))?
            }
            DataType::Date32 => {
                let mut b = Date32Builder::with_capacity((to - from) as usize);
                for row in from..to {
                    if is_null(row) {
                        b.append_null()
                    } else {
                        b.append_value((now_ms / 86_400_000) as i32)
                    }
                }
                Arc::new(b.finish())
            }
            other => {
                return Err(FreshetError::Internal(format!(
                    "datagen: type {other} passed the check"
                )));
            }
        };
        Ok(array)
    }
}

fn check_type(field: &Field) -> std::result::Result<(), String> {
    match field.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::Float32
        | DataType::Float64
        | DataType::Boolean
        | DataType::Utf8
        | DataType::Utf8View
        | DataType::LargeUtf8
        | DataType::Timestamp(..)
        | DataType::Date32 => Ok(()),
        other => Err(format!(
            "datagen cannot generate column \"{}\" of type {other} (integers, floats, booleans, strings, \
             timestamps and dates)",
            field.name()
        )),
    }
}

/// The range of an integer type (for random values without min/max).
fn integer_range(data_type: &DataType) -> (i64, i64) {
    match data_type {
        DataType::Int8 => (i8::MIN as i64, i8::MAX as i64),
        DataType::Int16 => (i16::MIN as i64, i16::MAX as i64),
        DataType::Int32 => (i32::MIN as i64, i32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    }
}

/// SplitMix64's finalizer: a well-mixed 64-bit hash of a number.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A number in [0, 1) from a hash.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::Schema;

    use super::*;

    fn options(pairs: &[(&str, &str)]) -> DatagenOptions {
        let mut all = vec![("connector".to_string(), "datagen".to_string())];
        all.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        match crate::ConnectorOptions::new("t", &all).connector().unwrap() {
            crate::Connector::Datagen(o) => o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn generates_sequences_ranges_and_lengths_the_same_every_time() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Int32, true),
            Field::new("s", DataType::Utf8View, true),
        ]));
        let o = options(&[
            ("rows-per-second", "100"),
            ("fields.id.kind", "sequence"),
            ("fields.id.start", "5"),
            ("fields.id.end", "1004"),
            ("fields.v.min", "1"),
            ("fields.v.max", "3"),
            ("fields.s.length", "7"),
        ]);
        let generator = Datagen::new("t", schema, o).unwrap();
        assert_eq!(generator.total_rows(), Some(1000));
        assert_eq!(generator.rows_due(1_500), 150);
        assert_eq!(generator.rows_due(1_000_000), 1000);
        let batches = generator.generate(0, 10, 0).unwrap();
        let ids = batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values().to_vec(), (5..15).collect::<Vec<i64>>());
        let again = generator.generate(3, 4, 0).unwrap();
        assert_eq!(again[0].column(1).to_data(), batches[0].column(1).slice(3, 1).to_data());
        let v = cast(batches[0].column(1), &DataType::Int64).unwrap();
        let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
        assert!(v.values().iter().all(|x| (1..=3).contains(x)));
        let s = cast(batches[0].column(2), &DataType::Utf8).unwrap();
        let s = s
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap();
        assert!(s.iter().all(|x| x.unwrap().len() == 7));
    }

    #[test]
    fn refuses_bad_options() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let err = Datagen::new("t", schema.clone(), options(&[("fields.nope.min", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("names no column"), "{err}");
        let err = Datagen::new("t", schema, options(&[("fields.id.min", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a whole number"), "{err}");
    }
}
