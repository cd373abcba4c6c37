//! Stateless operators: a filter or a projection changes each row on its own, keeping its
//! weight; a constant relation contributes its rows once.

use datafusion::arrow::array::Int64Array;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use freshet_common::Result;

use super::{Compiled, Epoch, Operator};
use crate::delta::Delta;

/// Keeps the rows for which the predicate is true.
pub(crate) struct Filter {
    input: Box<dyn Operator>,
    predicate: Compiled,
}

impl Filter {
    pub(crate) fn new(input: Box<dyn Operator>, predicate: Compiled) -> Self {
        Self { input, predicate }
    }
}

impl Operator for Filter {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let delta = self.input.step(epoch)?;
        if delta.is_empty() {
            return Ok(delta);
        }
        delta.filter(&self.predicate.mask(&delta.data)?)
    }

    fn describe(&self) -> String {
        format!("Filter: {}", self.predicate)
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        vec![self.input.as_ref()]
    }

    fn inputs_mut(&mut self) -> Vec<&mut dyn Operator> {
        vec![self.input.as_mut()]
    }

    fn output_consolidated(&self) -> bool {
        self.input.output_consolidated()
    }

    fn leave_cancelled(&mut self) -> bool {
        self.input.leave_cancelled()
    }

    fn deletes_only_earlier_rows(&self) -> bool {
        self.input.deletes_only_earlier_rows()
    }

    fn unique_key(&self) -> Option<Vec<usize>> {
        self.input.unique_key()
    }
}

/// Computes the output columns from each row.
pub(crate) struct Project {
    input: Box<dyn Operator>,
    exprs: Vec<Compiled>,
    schema: SchemaRef,
    /// Every one of the input's columns is among the outputs as it is, so distinct input rows
    /// give distinct output rows.
    keeps_every_column: bool,
    /// How many threads may look for changes that cancel (see [`Delta::without_cancelled`]).
    parts: usize,
}

impl Project {
    /// A projection of an input with `input_columns` columns.
    pub(crate) fn new(
        mut input: Box<dyn Operator>,
        exprs: Vec<Compiled>,
        input_columns: usize,
        schema: SchemaRef,
    ) -> Self {
        let kept: std::collections::BTreeSet<usize> = exprs.iter().filter_map(Compiled::column_index).collect();
        let keeps_every_column = kept.len() == input_columns;
        // Rows that cancel here cancel with fewer columns too: looked for once, here.
        if !keeps_every_column {
            input.leave_cancelled();
        }
        Self {
            input,
            exprs,
            schema,
            keeps_every_column,
            parts: 1,
        }
    }

    /// Looks for changes that cancel on up to `parts` threads.
    pub(crate) fn with_parts(mut self, parts: usize) -> Self {
        self.parts = parts.max(1);
        self
    }
}

impl Operator for Project {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let delta = self.input.step(epoch)?;
        if delta.is_empty() {
            return Ok(Delta::empty(self.schema.clone()));
        }
        let columns = self
            .exprs
            .iter()
            .map(|e| e.evaluate(&delta.data))
            .collect::<Result<Vec<_>>>()?;
        let projected = Delta::from_columns(&self.schema, columns, delta.weights)?;
        // A row retracted and inserted again that differed only in columns left out is one
        // row both ways here: the pair is dropped rather than passed on (a scalar subquery's
        // new value re-matches every row compared with it, and most rows pass both times).
        match self.keeps_every_column {
            true => Ok(projected),
            false => projected.without_cancelled(self.parts),
        }
    }

    fn describe(&self) -> String {
        let exprs: Vec<String> = self.exprs.iter().map(ToString::to_string).collect();
        format!("Project: {}", exprs.join(", "))
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        vec![self.input.as_ref()]
    }

    fn inputs_mut(&mut self) -> Vec<&mut dyn Operator> {
        vec![self.input.as_mut()]
    }

    fn output_consolidated(&self) -> bool {
        self.keeps_every_column && self.input.output_consolidated()
    }

    fn deletes_only_earlier_rows(&self) -> bool {
        self.input.deletes_only_earlier_rows()
    }

    /// The input's key, when every column of it is an output column as it is.
    fn unique_key(&self) -> Option<Vec<usize>> {
        self.input
            .unique_key()?
            .into_iter()
            .map(|column| self.exprs.iter().position(|e| e.column_index() == Some(column)))
            .collect()
    }
}

/// A relation that never changes (`VALUES`, `SELECT 1`): its rows are inserted in the first
/// epoch.
pub(crate) struct Constant {
    rows: RecordBatch,
    emitted: bool,
}

impl Constant {
    pub(crate) fn new(rows: RecordBatch) -> Self {
        Self { rows, emitted: false }
    }
}

impl Operator for Constant {
    fn step(&mut self, _epoch: &Epoch) -> Result<Delta> {
        if self.emitted {
            return Ok(Delta::empty(self.rows.schema()));
        }
        self.emitted = true;
        let weights = Int64Array::from_value(1, self.rows.num_rows());
        Delta::new(self.rows.clone(), weights)
    }

    fn describe(&self) -> String {
        format!("Constant: {} rows", self.rows.num_rows())
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        vec![]
    }

    fn inputs_mut(&mut self) -> Vec<&mut dyn Operator> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::DFSchema;
    use datafusion::logical_expr::col;

    use super::*;

    /// An input whose every epoch is the same delta.
    struct Replays(Delta);

    impl Operator for Replays {
        fn step(&mut self, _epoch: &Epoch) -> Result<Delta> {
            Ok(self.0.clone())
        }

        fn describe(&self) -> String {
            "Replays".into()
        }

        fn inputs(&self) -> Vec<&dyn Operator> {
            Vec::new()
        }

        fn inputs_mut(&mut self) -> Vec<&mut dyn Operator> {
            Vec::new()
        }
    }

    fn project(columns: &[&str], delta: Delta) -> Delta {
        let input = DFSchema::try_from(delta.data.schema().as_ref().clone()).unwrap();
        let exprs: Vec<Compiled> = columns
            .iter()
            .map(|c| Compiled::new(&col(*c), &input).unwrap())
            .collect();
        let fields: Vec<Field> = columns.iter().map(|c| Field::new(*c, DataType::Int64, true)).collect();
        let mut project = Project::new(
            Box::new(Replays(delta)),
            exprs,
            input.fields().len(),
            Arc::new(Schema::new(fields)),
        );
        project.step(&Epoch::at(0)).unwrap()
    }

    #[test]
    fn rows_that_differ_only_in_columns_left_out_cancel() {
        // (id, value): 1 moves from 10 to 20, 2 is deleted, 3 moves from 30 to 31.
        let data = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 1, 2, 3, 3])) as ArrayRef),
            ("value", Arc::new(Int64Array::from(vec![10, 20, 5, 30, 31])) as ArrayRef),
        ])
        .unwrap();
        let delta = Delta::new(data, Int64Array::from(vec![-1, 1, -1, -1, 1])).unwrap();
        let ids = project(&["id"], delta.clone());
        assert_eq!(ids.data.column(0).as_ref(), &Int64Array::from(vec![2]) as &dyn Array);
        assert_eq!(ids.weights, Int64Array::from(vec![-1]));
        // Every column kept: nothing can cancel that did not before.
        assert_eq!(project(&["value", "id"], delta).len(), 5);
    }
}
