//! GROUP BY and global aggregates, kept per group under inserts and deletes.
//!
//! Each group keeps its row count and one accumulator per aggregate. COUNT, SUM and AVG keep
//! sums (integers and decimals exactly in 128 bits); MIN, MAX and COUNT(DISTINCT) keep the
//! multiset of values, ordered, because deleting the current minimum needs the next one
//! (DataFusion's `retract_batch` assumes first-in-first-out and cannot be used). An epoch emits,
//! for every group it touched, the group's old row with weight −1 and its new row with +1; a
//! group whose last row is deleted disappears; a global aggregate always has its one row.

mod accumulator;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use freshet_common::Result;

use super::{Compiled, Epoch, Operator, StateSize};
use crate::delta::{Delta, internal};
use crate::rows::RowCodec;
use accumulator::{Accumulator, Arguments};

pub(crate) use accumulator::AggregateKind;

/// One aggregate of the operator.
pub(crate) struct AggregateSpec {
    pub kind: AggregateKind,
    /// The argument (`count(*)` counts a non-null literal).
    pub arg: Compiled,
    /// `FILTER (WHERE ...)`.
    pub filter: Option<Compiled>,
    pub arg_type: DataType,
    pub output_type: DataType,
    /// The aggregate as the plan shows it.
    pub display: String,
}

struct Group {
    rows: i64,
    accumulators: Vec<Accumulator>,
}

/// The aggregate operator.
pub(crate) struct Aggregate {
    input: Box<dyn Operator>,
    group_exprs: Vec<Compiled>,
    /// Encodes the group key (a global aggregate's is constant).
    keys: RowCodec,
    specs: Vec<AggregateSpec>,
    /// Encodes values of MIN, MAX and COUNT(DISTINCT).
    value_codecs: Vec<Option<RowCodec>>,
    groups: foldhash::HashMap<Box<[u8]>, Group>,
    schema: SchemaRef,
    /// A global aggregate's row has been emitted.
    started: bool,
    /// The state's size, kept up to date group by group (summing every group per epoch would
    /// cost as much as the epoch).
    bytes: usize,
}

impl Aggregate {
    pub(crate) fn new(
        input: Box<dyn Operator>,
        group_exprs: Vec<Compiled>,
        group_types: Vec<DataType>,
        specs: Vec<AggregateSpec>,
        schema: SchemaRef,
    ) -> Result<Self> {
        let value_codecs = specs
            .iter()
            .map(|s| {
                s.kind
                    .keeps_values()
                    .then(|| RowCodec::new([s.arg_type.clone()]))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            input,
            group_exprs,
            keys: RowCodec::new(group_types)?,
            specs,
            value_codecs,
            groups: foldhash::HashMap::default(),
            schema,
            started: false,
            bytes: 0,
        })
    }

    fn is_global(&self) -> bool {
        self.group_exprs.is_empty()
    }

    fn new_group(&self) -> Group {
        Group {
            rows: 0,
            accumulators: self.specs.iter().map(Accumulator::new).collect(),
        }
    }

    /// The output rows of the groups `keys` (which exist), in that order.
    fn output(&self, keys: &[&[u8]]) -> Result<Vec<ArrayRef>> {
        let parser = self.keys.parser();
        let mut columns = self.keys.decode(keys.iter().map(|k| parser.parse(k)))?;
        let groups: Vec<&Group> = keys
            .iter()
            .map(|k| {
                self.groups
                    .get(*k)
                    .ok_or_else(|| internal("an aggregate group vanished"))
            })
            .collect::<Result<_>>()?;
        for (i, spec) in self.specs.iter().enumerate() {
            let accumulators: Vec<&Accumulator> = groups.iter().map(|g| &g.accumulators[i]).collect();
            let array = accumulator::evaluate(spec, self.value_codecs[i].as_ref(), &accumulators)?;
            let array = if array.data_type() == &spec.output_type {
                array
            } else {
                cast(&array, &spec.output_type).map_err(internal)?
            };
            columns.push(array);
        }
        Ok(columns)
    }

    /// The memory a group holds (0 for a group that does not exist).
    fn group_bytes(&self, key: &[u8]) -> usize {
        self.groups.get(key).map_or(0, |group| {
            key.len() + 56 + group.accumulators.iter().map(Accumulator::bytes).sum::<usize>()
        })
    }

    fn emit(&self, keys: &[&[u8]], weight: i64) -> Result<Delta> {
        let columns = self.output(keys)?;
        Delta::from_columns(&self.schema, columns, Int64Array::from_value(weight, keys.len()))
    }
}

impl Operator for Aggregate {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let delta = self.input.step(epoch)?;
        if delta.is_empty() && (self.started || !self.is_global()) {
            return Ok(Delta::empty(self.schema.clone()));
        }
        let key_columns = self
            .group_exprs
            .iter()
            .map(|e| e.evaluate(&delta.data))
            .collect::<Result<Vec<_>>>()?;
        let keys = self.keys.encode(&key_columns, delta.len())?;
        let arguments = self
            .specs
            .iter()
            .zip(&self.value_codecs)
            .map(|(spec, codec)| Arguments::evaluate(spec, codec.as_ref(), &delta.data))
            .collect::<Result<Vec<_>>>()?;

        // The groups touched, in first-seen order; a global aggregate's one group always.
        let mut touched: Vec<Box<[u8]>> = Vec::new();
        {
            let mut seen = foldhash::HashSet::default();
            for key in keys.iter() {
                if seen.insert(key.data()) {
                    touched.push(key.data().into());
                }
            }
            if self.is_global() && touched.is_empty() {
                touched.push(self.keys.encode(&[], 1)?.row(0).data().into());
            }
        }
        let before: Vec<&[u8]> = touched
            .iter()
            .map(AsRef::as_ref)
            .filter(|k| self.groups.contains_key(*k))
            .collect();
        let retracted = self.emit(&before, -1)?;
        let freed: usize = before.iter().map(|k| self.group_bytes(k)).sum();

        for (row, key) in keys.iter().enumerate() {
            let weight = delta.weights.value(row);
            let group = match self.groups.get_mut(key.data()) {
                Some(group) => group,
                None => {
                    let group = self.new_group();
                    self.groups.entry(key.data().into()).or_insert(group)
                }
            };
            group.rows += weight;
            for (accumulator, arguments) in group.accumulators.iter_mut().zip(&arguments) {
                arguments.apply(accumulator, row, weight)?;
            }
        }
        let global = self.is_global();
        if global && !self.groups.contains_key(touched[0].as_ref()) {
            let group = self.new_group();
            self.groups.insert(touched[0].clone(), group);
        }
        let mut after: Vec<&[u8]> = Vec::with_capacity(touched.len());
        for key in &touched {
            let rows = self.groups.get(key.as_ref()).map(|g| g.rows).unwrap_or(0);
            if rows < 0 {
                return Err(internal("a group's row count went below zero"));
            }
            if rows == 0 && !global {
                self.groups.remove(key.as_ref());
            } else {
                after.push(key);
            }
        }
        let held: usize = after.iter().map(|k| self.group_bytes(k)).sum();
        self.bytes = (self.bytes + held).saturating_sub(freed);
        let inserted = self.emit(&after, 1)?;
        self.started = true;
        Delta::concat(&self.schema, &[retracted, inserted])
    }

    fn describe(&self) -> String {
        let groups: Vec<String> = self.group_exprs.iter().map(ToString::to_string).collect();
        let aggregates: Vec<&str> = self.specs.iter().map(|s| s.display.as_str()).collect();
        format!(
            "Aggregate: group=[{}] aggregates=[{}]",
            groups.join(", "),
            aggregates.join(", ")
        )
    }

    fn state_kind(&self) -> &'static str {
        if self.specs.iter().any(|s| s.kind.keeps_values()) {
            "per group: row count, accumulators and the multiset of MIN/MAX/DISTINCT values"
        } else {
            "per group: row count and accumulators"
        }
    }

    fn state_size(&self) -> StateSize {
        StateSize {
            rows: self.groups.len() as u64,
            bytes: self.bytes as u64,
        }
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        vec![self.input.as_ref()]
    }
}
