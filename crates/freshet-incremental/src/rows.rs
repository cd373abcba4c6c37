//! Rows as comparable bytes: how operator state stores keys and values.
//!
//! Arrow's row format encodes a tuple of values so that byte order is the values' order and
//! byte equality is value equality (NULLs equal each other). State keeps rows in that form and
//! turns them back into columns only when it emits them.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{Row, RowConverter, RowParser, Rows, SortField};

use freshet_common::Result;

use crate::delta::internal;

/// Encodes columns of the given types into rows and back. Rows of no columns (a global
/// aggregate's key, a cross join's key, a side of a join that reads no column) are encoded
/// through one constant column, so that they still count.
pub(crate) struct RowCodec {
    converter: RowConverter,
    constant: bool,
}

impl RowCodec {
    pub(crate) fn new(types: impl IntoIterator<Item = DataType>) -> Result<Self> {
        Self::with_fields(types.into_iter().map(SortField::new).collect())
    }

    /// A codec whose byte order follows the fields' sort options.
    pub(crate) fn with_fields(mut fields: Vec<SortField>) -> Result<Self> {
        let constant = fields.is_empty();
        if constant {
            fields.push(SortField::new(DataType::Boolean));
        }
        Ok(Self {
            converter: RowConverter::new(fields).map_err(internal)?,
            constant,
        })
    }

    /// The rows of `columns`, which have `num_rows` rows.
    pub(crate) fn encode(&self, columns: &[ArrayRef], num_rows: usize) -> Result<Rows> {
        if self.constant {
            let column: ArrayRef = Arc::new(BooleanArray::from(vec![true; num_rows]));
            return self.converter.convert_columns(&[column]).map_err(internal);
        }
        self.converter.convert_columns(columns).map_err(internal)
    }

    /// Columns holding `rows`, in order.
    pub(crate) fn decode<'a>(&self, rows: impl IntoIterator<Item = Row<'a>>) -> Result<Vec<ArrayRef>> {
        let columns = self.converter.convert_rows(rows).map_err(internal)?;
        Ok(if self.constant { vec![] } else { columns })
    }

    /// Reads rows back from their bytes.
    pub(crate) fn parser(&self) -> RowParser {
        self.converter.parser()
    }
}
