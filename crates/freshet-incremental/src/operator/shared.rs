//! An operator whose output several others read: a subquery that a query holds twice (the
//! same aggregate or join in two places, a view or common table expression read twice) is
//! built and stepped once, and every further reader takes the same changes.
//!
//! [`Shared`] wraps the operator where it is first read, and is an ordinary node of the tree:
//! its state, checkpoints and EXPLAIN lines are there, once. Each further reader holds a
//! [`Reuse`], a leaf that hands on what the [`Shared`] computed in the same epoch. Operators
//! step their inputs in the order they were built, so the [`Shared`] always steps first; a
//! [`Reuse`] stepped before it is an error, never a stale or empty result.

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;

use freshet_common::Result;

use super::{Epoch, Operator};
use crate::delta::{Delta, internal};

/// What the [`Shared`] operator output in its last epoch, until every [`Reuse`] has taken it.
#[derive(Debug, Default)]
struct Outbox {
    /// The readers besides the [`Shared`] itself.
    reuses: usize,
    /// The epoch ([`Epoch::id`]), its output, and how many readers have yet to take it.
    output: Option<(u64, Delta, usize)>,
}

type SharedOutbox = Arc<Mutex<Outbox>>;

fn lock(outbox: &SharedOutbox) -> Result<std::sync::MutexGuard<'_, Outbox>> {
    outbox
        .lock()
        .map_err(|_| internal("a shared operator's output was left behind by a panic"))
}

/// The first reader of an operator that others read too: it steps the operator and keeps the
/// epoch's output for them.
pub(crate) struct Shared {
    input: Box<dyn Operator>,
    outbox: SharedOutbox,
}

impl Shared {
    /// Shares `input`'s output: the [`Shared`] node to put where it is first read, and what
    /// makes the further readers.
    pub(crate) fn new(input: Box<dyn Operator>) -> (Self, Readers) {
        let outbox = SharedOutbox::default();
        let readers = Readers {
            outbox: outbox.clone(),
            describe: input.describe(),
            updates: subtree_updates(input.as_ref()),
            unique_key: input.unique_key(),
            consolidated: input.output_consolidated(),
        };
        (Self { input, outbox }, readers)
    }
}

/// Makes the further readers of a [`Shared`] operator's output.
pub(crate) struct Readers {
    outbox: SharedOutbox,
    describe: String,
    updates: bool,
    unique_key: Option<Vec<usize>>,
    consolidated: bool,
}

impl Readers {
    /// Another reader, whose rows have the columns of `schema` (those of the shared
    /// operator's, perhaps under other names).
    pub(crate) fn reuse(&self, schema: SchemaRef) -> Result<Reuse> {
        lock(&self.outbox)?.reuses += 1;
        Ok(Reuse {
            outbox: self.outbox.clone(),
            schema,
            describe: self.describe.clone(),
            updates: self.updates,
            unique_key: self.unique_key.clone(),
            consolidated: self.consolidated,
        })
    }
}

/// Whether anything in the tree below `operator` (itself included) retracts rows it output
/// although its inputs only insert, unless an operator passing only final rows stands between.
fn subtree_updates(operator: &dyn Operator) -> bool {
    operator.updates() || (!operator.final_output() && operator.inputs().into_iter().any(subtree_updates))
}

impl Operator for Shared {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let delta = self.input.step(epoch)?;
        let mut outbox = lock(&self.outbox)?;
        outbox.output = (outbox.reuses > 0).then(|| (epoch.id(), delta.clone(), outbox.reuses));
        Ok(delta)
    }

    fn describe(&self) -> String {
        let reuses = self.outbox.lock().map_or(0, |outbox| outbox.reuses);
        format!("Shared: computed once, read {} times", reuses + 1)
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

    fn unique_key(&self) -> Option<Vec<usize>> {
        self.input.unique_key()
    }
}

/// A further reader of a [`Shared`] operator's output.
pub(crate) struct Reuse {
    outbox: SharedOutbox,
    schema: SchemaRef,
    /// The shared operator's description.
    describe: String,
    /// Whether the shared operator's output updates (see [`Operator::updates`]), its tree
    /// below counted: a reader sees no tree below a [`Reuse`].
    updates: bool,
    unique_key: Option<Vec<usize>>,
    consolidated: bool,
}

impl Operator for Reuse {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let mut outbox = lock(&self.outbox)?;
        let Some((_, delta, left)) = outbox.output.as_mut().filter(|(id, ..)| *id == epoch.id()) else {
            return Err(internal("a shared operator's output was read before it was computed"));
        };
        let delta = delta.clone();
        *left -= 1;
        if *left == 0 {
            outbox.output = None;
        }
        delta.with_schema(&self.schema)
    }

    fn describe(&self) -> String {
        format!("Reuse of the shared {}", self.describe)
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        Vec::new()
    }

    fn inputs_mut(&mut self) -> Vec<&mut dyn Operator> {
        Vec::new()
    }

    fn output_consolidated(&self) -> bool {
        self.consolidated
    }

    fn unique_key(&self) -> Option<Vec<usize>> {
        self.unique_key.clone()
    }

    fn updates(&self) -> bool {
        self.updates
    }
}
