//! Row groups a scan's filters rule out, from their Parquet statistics.
//!
//! DataFusion gives a scan the filters of its query (`WHERE id = 7`); DataFusion's pruning
//! predicate asks, per row group, whether the column statistics the writer recorded (min, max,
//! null count) allow any row to pass. Row groups that cannot are not read: a point query or an
//! `UPDATE ... WHERE id = 7` reads the footers and the row groups that may hold its rows, not
//! the whole table. The filters are still applied above the scan (the statistics only rule
//! row groups out). Float columns do not prune (see `RowGroupStatistics::converter`).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, UInt64Array};
use datafusion::arrow::datatypes::Schema;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, ScalarValue};
use datafusion::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::physical_optimizer::pruning::PruningPredicate;

/// The row groups of a file that may hold rows passing `predicate`, or `None` when that is all
/// of them (or the statistics cannot tell).
pub(crate) fn kept_row_groups(
    predicate: &PruningPredicate,
    metadata: &ParquetMetaData,
    file_schema: &Schema,
) -> Option<Vec<usize>> {
    let statistics = RowGroupStatistics { metadata, file_schema };
    let keep = predicate.prune(&statistics).ok()?;
    if keep.iter().all(|&k| k) {
        return None;
    }
    Some(keep.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i).collect())
}

/// The statistics of a file's row groups, one container per row group.
struct RowGroupStatistics<'a> {
    metadata: &'a ParquetMetaData,
    file_schema: &'a Schema,
}

impl RowGroupStatistics<'_> {
    fn converter(&self, column: &Column) -> Option<StatisticsConverter<'_>> {
        // Float statistics leave NaN out (Parquet's min and max ignore it), but in DataFusion
        // NaN is greater than every number: `x > 0` holds for a NaN that a row group's max
        // of -3 would rule out. Float columns are not used to prune.
        let field = self.file_schema.field_with_name(&column.name).ok()?;
        if field.data_type().is_floating() {
            return None;
        }
        StatisticsConverter::try_new(
            &column.name,
            self.file_schema,
            self.metadata.file_metadata().schema_descr(),
        )
        .ok()
    }
}

impl PruningStatistics for RowGroupStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.converter(column)?
            .row_group_mins(self.metadata.row_groups().iter())
            .ok()
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.converter(column)?
            .row_group_maxes(self.metadata.row_groups().iter())
            .ok()
    }

    fn num_containers(&self) -> usize {
        self.metadata.num_row_groups()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let counts = self
            .converter(column)?
            .row_group_null_counts(self.metadata.row_groups().iter())
            .ok()?;
        Some(Arc::new(counts))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(
            self.metadata.row_groups().iter().map(|rg| rg.num_rows() as u64),
        )))
    }

    fn contained(&self, _column: &Column, _values: &std::collections::HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}
