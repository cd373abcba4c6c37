//! A slide's rows in the HOP windows that hold the slide.
//!
//! Under an aggregate over HOP windows computed per slide (`planner::hop`), each row of the
//! slides' aggregate (its keys, its slide's end and its partial aggregates) becomes one row per
//! window holding the slide, with the window's `window_start`, `window_end` and `window_time`
//! added: the rows a window's aggregate then combines.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};

use freshet_common::{HopBound, HopWindow, Result};

use super::{Epoch, Operator};
use crate::delta::{Delta, internal};

/// The names of the columns it adds, after its input's.
pub(crate) const WINDOW_COLUMNS: [&str; 3] = ["window_start", "window_end", "window_time"];

/// Each input row once per HOP window holding its slide.
pub(crate) struct HopWindows {
    input: Box<dyn Operator>,
    hop: HopWindow,
    /// The input column holding each row's slide end.
    slide_end: usize,
    unit: TimeUnit,
    schema: SchemaRef,
}

impl HopWindows {
    /// Rows of `input` in the windows of `hop` holding the slide that ends at input column
    /// `slide_end` (a timestamp).
    pub(crate) fn new(
        input: Box<dyn Operator>,
        hop: HopWindow,
        slide_end: usize,
        input_schema: &Schema,
    ) -> Result<Self> {
        let time_type = input_schema.field(slide_end).data_type().clone();
        let DataType::Timestamp(unit, _) = &time_type else {
            return Err(internal(format!("a slide's end is a {time_type}, not a timestamp")));
        };
        let mut fields: Vec<Field> = input_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(WINDOW_COLUMNS.map(|name| Field::new(name, time_type.clone(), true)));
        Ok(Self {
            input,
            hop,
            slide_end,
            unit: *unit,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The bounds of window `index` of each slide ending at `ends` (raw values in the unit).
    fn bounds(&self, ends: &Int64Array, index: i64, bound: HopBound) -> Result<ArrayRef> {
        // The last instant of the slide (one unit before its end) is in it: window 0 starts at
        // the slide's start.
        let values: Int64Array = ends
            .try_unary(|end| {
                end.checked_sub(1)
                    .and_then(|t| self.hop.bound(t, self.unit, index, bound))
                    .ok_or_else(|| {
                        datafusion::arrow::error::ArrowError::ComputeError(
                            "a HOP window's bound is out of the range of timestamps".into(),
                        )
                    })
            })
            .map_err(internal)?;
        let values: ArrayRef = Arc::new(values);
        cast(&values, self.schema.field(self.slide_end).data_type()).map_err(internal)
    }
}

impl Operator for HopWindows {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let delta = self.input.step(epoch)?;
        if delta.is_empty() {
            return Ok(Delta::empty(self.schema.clone()));
        }
        let ends = cast(delta.data.column(self.slide_end), &DataType::Int64).map_err(internal)?;
        let ends = ends.as_primitive::<Int64Type>();
        let windows = (0..self.hop.windows_per_row())
            .map(|index| {
                let mut columns = delta.data.columns().to_vec();
                for bound in [HopBound::Start, HopBound::End, HopBound::Time] {
                    columns.push(self.bounds(ends, index, bound)?);
                }
                Delta::from_columns(&self.schema, columns, delta.weights.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        Delta::concat(&self.schema, &windows)
    }

    fn output_consolidated(&self) -> bool {
        // Each window's rows are the input's with the window's bounds added.
        self.inputs().iter().all(|input| input.output_consolidated())
    }

    fn describe(&self) -> String {
        format!(
            "Hop windows: each slide's rows in the {} windows of {} ms every {} ms holding it",
            self.hop.windows_per_row(),
            self.hop.size_ms,
            self.hop.slide_ms
        )
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        vec![self.input.as_ref()]
    }

    fn inputs_mut(&mut self) -> Vec<&mut dyn Operator> {
        vec![self.input.as_mut()]
    }
}
