//! How far a running statement has got, for progress displays such as the shell's.
//!
//! A statement run with [`Engine::execute_with_progress`](crate::Engine::execute_with_progress)
//! registers the physical plans it executes with its [`Progress`]; the rows its scans have
//! produced so far are read from DataFusion's live operator metrics. The progress is carried by
//! a task-local, so the code that plans queries deep inside a statement (a DELETE's scan, an
//! INSERT's SELECT) registers its plans without every function taking a parameter.

use std::sync::{Arc, Mutex};

use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::DataFrame;

use crate::Result;
use datafusion::execution::SendableRecordBatchStream;

tokio::task_local! {
    static CURRENT: Progress;
}

/// The progress of one running statement: cheap to clone, read from any thread.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    plans: Arc<Mutex<Vec<Arc<dyn ExecutionPlan>>>>,
}

impl Progress {
    /// A progress with nothing registered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows read so far: the rows produced by the scans (the leaves) of the statement's plans.
    pub fn rows_read(&self) -> u64 {
        let plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans.iter().map(|plan| leaf_rows(plan.as_ref())).sum()
    }

    /// Runs `work` with this progress as the current one.
    pub(crate) async fn scope<F: Future>(&self, work: F) -> F::Output {
        CURRENT.scope(self.clone(), work).await
    }
}

fn leaf_rows(plan: &dyn ExecutionPlan) -> u64 {
    let children = plan.children();
    if children.is_empty() {
        plan.metrics().and_then(|m| m.output_rows()).unwrap_or(0) as u64
    } else {
        children.iter().map(|child| leaf_rows(child.as_ref())).sum()
    }
}

/// Executes a planned query, registering its plan with the current progress (if any).
pub(crate) async fn execute_tracked(frame: DataFrame) -> Result<SendableRecordBatchStream> {
    let task = frame.task_ctx();
    let plan = frame.create_physical_plan().await?;
    let _ = CURRENT.try_with(|progress| {
        progress
            .plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(plan.clone());
    });
    Ok(execute_stream(plan, Arc::new(task))?)
}
