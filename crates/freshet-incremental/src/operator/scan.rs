//! The leaves: the changes of a source table.

use datafusion::arrow::datatypes::SchemaRef;

use freshet_common::Result;

use super::{Compiled, Epoch, Operator};
use crate::delta::{Delta, internal};

/// The changes of one source table in an epoch, filtered and projected as the plan's scan is.
pub(crate) struct Scan {
    source: String,
    /// Filters pushed into the scan, over the table's columns.
    filters: Vec<Compiled>,
    projection: Option<Vec<usize>>,
    /// The table columns the changes hold when the pipeline reads only some (ascending), and
    /// how many the table has: changes of the whole table are cut down to them.
    read: Option<(Vec<usize>, usize)>,
    /// The table's columns as the plan saw them, those of `read` only when given.
    table_schema: SchemaRef,
    schema: SchemaRef,
    /// How many threads may look for changes that cancel (see [`Delta::without_cancelled`]).
    parts: usize,
    /// It looks for changes that cancel (else a projection above does).
    searching: bool,
}

impl Scan {
    pub(crate) fn new(
        source: String,
        filters: Vec<Compiled>,
        projection: Option<Vec<usize>>,
        read: Option<(Vec<usize>, usize)>,
        table_schema: SchemaRef,
        schema: SchemaRef,
    ) -> Self {
        Self {
            source,
            filters,
            projection,
            read,
            table_schema,
            schema,
            parts: 1,
            searching: true,
        }
    }

    /// Looks for changes that cancel on up to `parts` threads.
    pub(crate) fn with_parts(mut self, parts: usize) -> Self {
        self.parts = parts.max(1);
        self
    }
}

impl Operator for Scan {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        // Rows may cancel within the changes other than an UPDATE's of columns read (see
        // `Epoch::add_updated`): the ranges of those, in the changes' order.
        let mut parts = Vec::new();
        let mut searched: Vec<std::ops::Range<usize>> = Vec::new();
        let mut rows = 0;
        for (change, update) in epoch.changes(&self.source) {
            let data = change.data();
            let columns = match &self.read {
                _ if data.num_columns() == self.table_schema.fields().len() => data.columns().to_vec(),
                Some((read, width)) if data.num_columns() == *width => {
                    read.iter().map(|&i| data.column(i).clone()).collect()
                }
                _ => {
                    return Err(internal(format!(
                        "changes of \"{}\" have {} columns, the query was planned for {}",
                        self.source,
                        data.num_columns(),
                        self.table_schema.fields().len()
                    )));
                }
            };
            // `from_columns` keeps the row count when no column is read (`SELECT count(*)`).
            let mut delta = Delta::from_columns(&self.table_schema, columns, change.weights().clone())?;
            for filter in &self.filters {
                delta = delta.filter(&filter.mask(&delta.data)?)?;
            }
            let columns = match &self.projection {
                Some(indices) => indices.iter().map(|&i| delta.data.column(i).clone()).collect(),
                None => delta.data.columns().to_vec(),
            };
            let delta = Delta::from_columns(&self.schema, columns, delta.weights)?;
            let range = rows..rows + delta.len();
            rows = range.end;
            match searched.last_mut() {
                _ if *update || !self.searching => {}
                Some(last) if last.end == range.start => last.end = range.end,
                _ => searched.push(range),
            }
            parts.push(delta);
        }
        // A row deleted and inserted as it was (equal rows deleted and inserted again, or an
        // UPDATE of unread columns whose version does not say so, which the projection makes
        // equal) goes no further: every operator above would carry and cancel it. Hashing
        // every row to find such rows is most of a scan's time, spent only where rows can
        // cancel (an UPDATE of unread columns that its version describes is not read at all).
        Delta::concat(&self.schema, &parts)?.without_cancelled_within(self.parts, &searched)
    }

    fn leave_cancelled(&mut self) -> bool {
        self.searching = false;
        true
    }

    fn describe(&self) -> String {
        let mut text = format!("Scan: {}", self.source);
        if let Some(indices) = &self.projection {
            let names: Vec<&str> = indices
                .iter()
                .map(|&i| self.table_schema.field(i).name().as_str())
                .collect();
            text.push_str(&format!(" columns=[{}]", names.join(", ")));
        }
        if !self.filters.is_empty() {
            let filters: Vec<String> = self.filters.iter().map(ToString::to_string).collect();
            text.push_str(&format!(" filters=[{}]", filters.join(", ")));
        }
        text
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        vec![]
    }

    fn inputs_mut(&mut self) -> Vec<&mut dyn Operator> {
        vec![]
    }
}
