//! Functions psql's describing commands call that `datafusion-pg-catalog` lacks: sizes shown
//! by `\dt+`, visibility and signatures by `\df`, comments by `\d+`. Freshet has no comments on
//! objects and no user functions in `pg_proc`; sizes of its tables are not kept as Postgres
//! relations, so they are unknown (NULL) rather than invented.

use std::sync::Arc;

use freshet::datafusion::arrow::array::{ArrayRef, AsArray, StringBuilder, new_null_array};
use freshet::datafusion::arrow::datatypes::{DataType, Int64Type};
use freshet::datafusion::common::ScalarValue;
use freshet::datafusion::error::Result as DFResult;
use freshet::datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use freshet::datafusion::prelude::SessionContext;

/// Registers the functions in a catalog session.
pub(crate) fn register(ctx: &SessionContext) {
    ctx.register_udf(pg_size_pretty());
    for (name, arguments) in [
        ("pg_table_size", vec![DataType::Int32]),
        ("pg_indexes_size", vec![DataType::Int32]),
    ] {
        ctx.register_udf(constant(name, arguments, ScalarValue::Int64(None)));
    }
    for (name, arguments) in [
        ("pg_get_function_result", vec![DataType::Int32]),
        ("pg_get_function_arguments", vec![DataType::Int32]),
        ("obj_description", vec![DataType::Int32, DataType::Utf8]),
        ("col_description", vec![DataType::Int32, DataType::Int32]),
        ("shobj_description", vec![DataType::Int32, DataType::Utf8]),
    ] {
        ctx.register_udf(constant(name, arguments, ScalarValue::Utf8(None)));
    }
    ctx.register_udf(constant(
        "pg_function_is_visible",
        vec![DataType::Int32],
        ScalarValue::Boolean(Some(true)),
    ));
}

/// A function of `arguments` whose value is always `value`.
fn constant(name: &str, arguments: Vec<DataType>, value: ScalarValue) -> ScalarUDF {
    let data_type = value.data_type();
    let func = move |args: &[ColumnarValue]| -> DFResult<ColumnarValue> {
        let rows = args.iter().find_map(|arg| match arg {
            ColumnarValue::Array(array) => Some(array.len()),
            ColumnarValue::Scalar(_) => None,
        });
        Ok(match rows {
            Some(rows) if value.is_null() => ColumnarValue::Array(new_null_array(&value.data_type(), rows)),
            Some(rows) => ColumnarValue::Array(value.to_array_of_size(rows)?),
            None => ColumnarValue::Scalar(value.clone()),
        })
    };
    create_udf(name, arguments, data_type, Volatility::Stable, Arc::new(func))
}

/// `pg_size_pretty(bytes)`: bytes, kB, MB ... as Postgres writes them (a unit while the
/// number is below 10240 of it, rounded half up).
fn pg_size_pretty() -> ScalarUDF {
    let func = |args: &[ColumnarValue]| -> DFResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let sizes = arrays[0].as_primitive::<Int64Type>();
        let mut out = StringBuilder::new();
        for size in sizes.iter() {
            match size {
                Some(size) => out.append_value(pretty_size(size)),
                None => out.append_null(),
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(ColumnarValue::Array(array))
    };
    create_udf(
        "pg_size_pretty",
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(func),
    )
}

fn pretty_size(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size.abs() >= 10240.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    format!("{} {}", size.round() as i64, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::pretty_size;

    #[test]
    fn sizes_are_written_as_postgres_writes_them() {
        assert_eq!(pretty_size(0), "0 bytes");
        assert_eq!(pretty_size(10239), "10239 bytes");
        assert_eq!(pretty_size(10240), "10 kB");
        assert_eq!(pretty_size(5 * 1024 * 1024 * 1024), "5120 MB");
        assert_eq!(pretty_size(-20480), "-20 kB");
    }
}
