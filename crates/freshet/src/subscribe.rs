//! Subscriptions: a table's changes as they commit, for as long as the reader reads.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::stream::BoxStream;
use futures::{TryStreamExt, stream};

use datafusion::arrow::compute::{sort_to_indices, take_record_batch};
use freshet_common::{ChangeBatch, FreshetError, Result};
use freshet_storage::Table;

use crate::engine::Engine;

/// The columns a subscription adds before the table's: the version that committed the change and
/// its weight (+n inserted n times, -n deleted).
pub const SUBSCRIBE_VERSION: &str = "_version";
/// See [`SUBSCRIBE_VERSION`].
pub const SUBSCRIBE_WEIGHT: &str = "_weight";

impl Engine {
    /// Follows table (or materialized table) `name`: with `snapshot`, its rows at the current
    /// version first (weight +1), then each version committed after it, as it commits, as
    /// consolidated changes (an update is the old row with -1 and the new with +1). Each row has
    /// `_version` and `_weight` before the table's columns. The stream does not end while the
    /// table exists: drop it to stop. SQL: `SUBSCRIBE [TO] name [WITH (snapshot = false)]`.
    pub async fn subscribe(&self, name: &str, snapshot: bool) -> Result<SendableRecordBatchStream> {
        let table = self.table(name)?;
        let mut versions = table.subscribe();
        let start = *versions.borrow_and_update();
        let data_schema = table.schema();
        let mut fields = vec![
            Arc::new(Field::new(SUBSCRIBE_VERSION, DataType::Int64, false)),
            Arc::new(Field::new(SUBSCRIBE_WEIGHT, DataType::Int64, false)),
        ];
        fields.extend(data_schema.fields().iter().cloned());
        let schema: SchemaRef = Arc::new(Schema::new(fields));

        // The rows at the start, streamed from the version's files.
        let rows = match snapshot {
            true => Some(table.snapshot_at(start).await?.scan(None, false)),
            false => None,
        };
        let state = Following {
            table,
            versions,
            last: start,
            rows,
            pending: VecDeque::new(),
            schema: schema.clone(),
        };
        let batches = stream::try_unfold(state, |mut state| async move {
            if let Some(rows) = &mut state.rows {
                match rows.try_next().await? {
                    Some(batch) => {
                        let weights = Arc::new(Int64Array::from(vec![1; batch.num_rows()]));
                        let batch = labelled(&state.schema, state.last, weights, &batch)?;
                        return Ok(Some((batch, state)));
                    }
                    None => state.rows = None,
                }
            }
            loop {
                if let Some(batch) = state.pending.pop_front() {
                    return Ok(Some((batch, state)));
                }
                if !state.next_version().await? {
                    return Ok(None);
                }
            }
        })
        .map_err(|e: FreshetError| datafusion::error::DataFusionError::External(Box::new(e)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// Where a subscription is: the last version it has read, and rows not yet taken.
struct Following {
    table: Arc<Table>,
    versions: tokio::sync::watch::Receiver<u64>,
    last: u64,
    /// The rows at the start, while they are being read.
    rows: Option<BoxStream<'static, Result<RecordBatch>>>,
    pending: VecDeque<RecordBatch>,
    schema: SchemaRef,
}

impl Following {
    /// Reads the changes of the next committed version (waiting for it); false when the table
    /// is gone.
    async fn next_version(&mut self) -> Result<bool> {
        while *self.versions.borrow_and_update() <= self.last {
            if self.versions.changed().await.is_err() {
                return Ok(false);
            }
        }
        let version = self.last + 1;
        let changes = self.table.changes(self.last, version).await?;
        if let Some(change) = changes.consolidated().await? {
            // Deletions first, as a reader applies them (an update: the old row, then the new).
            let order = sort_to_indices(change.weights(), None, None)
                .and_then(|order| take_record_batch(change.batch(), &order))
                .map_err(|e| FreshetError::Internal(format!("ordering a version's changes: {e}")))?;
            let change = ChangeBatch::try_new(order)?;
            let weights: ArrayRef = Arc::new(change.weights().clone());
            self.pending
                .push_back(labelled(&self.schema, version, weights, &change.data())?);
        }
        self.last = version;
        Ok(true)
    }
}

/// `data` with its version and weights in front.
fn labelled(schema: &SchemaRef, version: u64, weights: ArrayRef, data: &RecordBatch) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![version as i64; data.num_rows()])),
        weights,
    ];
    columns.extend(data.columns().iter().cloned());
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| FreshetError::Internal(format!("a subscription's rows: {e}")))
}
