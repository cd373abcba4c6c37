//! Top-N: `ORDER BY ... LIMIT n [OFFSET m]` and the top rows per group,
//! `ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) <= n`.
//!
//! Each group keeps its rows ordered by the sort key (row-encoded, so byte order is the sort
//! order, directions and NULL placement included). An epoch retracts the old top rows of every
//! group it touches and inserts the new ones; consolidation cancels the rows that stayed. Rows
//! that tie on the sort key are ranked by their encoded bytes — SQL leaves that order open.

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use datafusion::arrow::array::{Int64Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::SortField;

use freshet_common::{Result, RowKey};

use super::{Compiled, Epoch, Operator, StateSize};
use crate::delta::Delta;
use crate::rows::RowCodec;

/// What the planner found: the groups, the order and the ranks kept.
pub(crate) struct TopNSpec {
    pub partition: Vec<Compiled>,
    pub partition_types: Vec<DataType>,
    /// Sort expressions with their directions.
    pub order: Vec<(Compiled, SortField)>,
    /// Ranks kept: `skip .. skip + fetch` (0-based).
    pub skip: usize,
    pub fetch: usize,
    /// Append the rank (1-based) as a column, as ROW_NUMBER() does.
    pub row_number: bool,
    pub input_schema: SchemaRef,
    pub schema: SchemaRef,
    pub display: String,
}

/// Rows of one group: (sort key, row) → multiplicity.
pub(super) type Ranked = BTreeMap<(RowKey, RowKey), i64>;

/// Adds `weight` copies of a row to ordered rows; returns how the entries and their bytes
/// changed.
pub(super) fn add_ordered(ranked: &mut Ranked, key: (RowKey, RowKey), weight: i64) -> (i64, i64) {
    let size = (key.0.len() + key.1.len() + 48) as i64;
    let n = ranked.entry(key.clone()).or_insert(0);
    let before = *n != 0;
    *n += weight;
    match (before, *n != 0) {
        (false, true) => (1, size),
        (true, false) | (false, false) => {
            ranked.remove(&key);
            if before { (-1, -size) } else { (0, 0) }
        }
        (true, true) => (0, 0),
    }
}

/// The top-N operator.
pub(crate) struct TopN {
    input: Box<dyn Operator>,
    spec: TopNSpec,
    groups_codec: RowCodec,
    sort_codec: RowCodec,
    rows_codec: RowCodec,
    groups: HashMap<RowKey, Ranked>,
    rows: u64,
    bytes: u64,
}

impl TopN {
    pub(crate) fn new(input: Box<dyn Operator>, spec: TopNSpec) -> Result<Self> {
        Ok(Self {
            groups_codec: RowCodec::new(spec.partition_types.clone())?,
            sort_codec: RowCodec::with_fields(spec.order.iter().map(|(_, f)| f.clone()).collect())?,
            rows_codec: RowCodec::new(spec.input_schema.fields().iter().map(|f| f.data_type().clone()))?,
            input,
            spec,
            groups: HashMap::new(),
            rows: 0,
            bytes: 0,
        })
    }

    /// The output rows of a group: its rows at the kept ranks, with their ranks.
    fn top<'a>(&'a self, group: &[u8], out: &mut Vec<(&'a [u8], u64)>) {
        let Some(ranked) = self.groups.get(group) else {
            return;
        };
        // `fetch` is `usize::MAX` for an OFFSET without LIMIT.
        let end = self.spec.skip.saturating_add(self.spec.fetch);
        let mut rank = 0usize;
        'rows: for ((_, row), &n) in ranked {
            for _ in 0..n.max(0) {
                if rank >= end {
                    break 'rows;
                }
                if rank >= self.spec.skip {
                    out.push((row, rank as u64 + 1));
                }
                rank += 1;
            }
        }
    }

    fn emit(&self, rows: &[(&[u8], u64)], weight: i64) -> Result<Delta> {
        let parser = self.rows_codec.parser();
        let mut columns = self.rows_codec.decode(rows.iter().map(|(r, _)| parser.parse(r)))?;
        if self.spec.row_number {
            columns.push(Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|(_, rank)| *rank),
            )));
        }
        Delta::from_columns(&self.spec.schema, columns, Int64Array::from_value(weight, rows.len()))
    }
}

impl Operator for TopN {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let delta = self.input.step(epoch)?;
        if delta.is_empty() {
            return Ok(Delta::empty(self.spec.schema.clone()));
        }
        let evaluate = |exprs: &mut dyn Iterator<Item = &Compiled>| {
            exprs.map(|e| e.evaluate(&delta.data)).collect::<Result<Vec<_>>>()
        };
        let group_columns = evaluate(&mut self.spec.partition.iter())?;
        let sort_columns = evaluate(&mut self.spec.order.iter().map(|(e, _)| e))?;
        let groups = self.groups_codec.encode(&group_columns, delta.len())?;
        let sort_keys = self.sort_codec.encode(&sort_columns, delta.len())?;
        let rows = self.rows_codec.encode(delta.data.columns(), delta.len())?;

        let mut seen = HashSet::new();
        let touched: Vec<RowKey> = groups
            .iter()
            .filter(|g| seen.insert(g.data()))
            .map(|g| g.data().into())
            .collect();
        let mut before = Vec::new();
        for group in &touched {
            self.top(group, &mut before);
        }
        let retracted = self.emit(&before, -1)?;

        for i in 0..delta.len() {
            let ranked = self.groups.entry(groups.row(i).data().into()).or_default();
            let key = (sort_keys.row(i).data().into(), rows.row(i).data().into());
            let (rows, bytes) = add_ordered(ranked, key, delta.weights.value(i));
            self.rows = self.rows.wrapping_add_signed(rows);
            self.bytes = self.bytes.wrapping_add_signed(bytes);
        }
        for group in &touched {
            if self.groups.get(group).is_some_and(BTreeMap::is_empty) {
                self.groups.remove(group);
            }
        }
        let mut after = Vec::new();
        for group in &touched {
            self.top(group, &mut after);
        }
        let inserted = self.emit(&after, 1)?;
        Delta::concat(&self.spec.schema, &[retracted, inserted])
    }

    fn updates(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.spec.display.clone()
    }

    fn state_kind(&self) -> &'static str {
        "per group: its rows, ordered by the sort key"
    }

    fn state_size(&self) -> StateSize {
        StateSize {
            rows: self.rows,
            bytes: self.bytes,
        }
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        vec![self.input.as_ref()]
    }
}
