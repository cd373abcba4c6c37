//! UNION ALL: the changes of every input.

use datafusion::arrow::datatypes::SchemaRef;

use freshet_common::Result;

use super::{Epoch, Operator};
use crate::delta::Delta;

/// The sum of its inputs (UNION ALL; UNION adds a distinct above it).
pub(crate) struct Union {
    inputs: Vec<Box<dyn Operator>>,
    schema: SchemaRef,
}

impl Union {
    pub(crate) fn new(inputs: Vec<Box<dyn Operator>>, schema: SchemaRef) -> Self {
        Self { inputs, schema }
    }
}

impl Operator for Union {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let parts = self
            .inputs
            .iter_mut()
            .map(|input| input.step(epoch))
            .collect::<Result<Vec<_>>>()?;
        Delta::concat(&self.schema, &parts)
    }

    fn describe(&self) -> String {
        "Union All".into()
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        self.inputs.iter().map(|i| i.as_ref()).collect()
    }

    fn inputs_mut(&mut self) -> Vec<&mut dyn Operator> {
        self.inputs
            .iter_mut()
            .map(|i| i.as_mut() as &mut dyn Operator)
            .collect()
    }
}
