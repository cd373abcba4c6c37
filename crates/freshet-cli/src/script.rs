//! Running SQL text: statement by statement, each result printed, the first error stopping the
//! script with its position. A statement running over a second shows a progress indicator.

use std::time::{Duration, Instant};

use freshet::datafusion::arrow::array::RecordBatch;
use freshet::{Engine, FreshetError, Progress, Statement};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::Printer;

/// How long a statement runs before its progress indicator appears.
const PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// Runs every statement of a script, printing each result; the first error stops it and is
/// returned with the statement's position.
pub(crate) async fn run_script(engine: &Engine, printer: &mut Printer, origin: &str, sql: &str) -> Result<(), String> {
    let statements = engine.parse(sql).map_err(|e| format!("error: {origin}: {e}"))?;
    for statement in statements {
        let started = Instant::now();
        let result = match run_statement(engine, &statement, printer.progress).await {
            Ok((schema, batches)) => {
                tokio::task::block_in_place(|| printer.print(&schema, &batches, started.elapsed()))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            return Err(statement_error(origin, statement.line, &statement.text, &e.to_string()));
        }
    }
    Ok(())
}

type Collected = (freshet::datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>);

/// Executes one statement and collects its result. With `progress`, once it has run for a
/// second a spinner on standard error shows the rows read so far and the time elapsed; it is
/// cleared when the statement ends, or is cancelled (dropping this future drops it).
async fn run_statement(engine: &Engine, statement: &Statement, progress: bool) -> Result<Collected, FreshetError> {
    let tracked = Progress::new();
    let work = async {
        let mut stream = engine.execute_with_progress(statement, &tracked).await?;
        let schema = stream.schema();
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            batches.push(batch?);
        }
        Ok::<_, FreshetError>((schema, batches))
    };
    showing_progress(work, progress, Some(&tracked)).await
}

/// Awaits `work`; with `progress`, once it has run for a second a spinner on standard error
/// shows the time elapsed (and the rows read so far, when `rows` tracks them) until it ends or
/// is cancelled (dropping this future clears it).
pub(crate) async fn showing_progress<T>(work: impl Future<Output = T>, progress: bool, rows: Option<&Progress>) -> T {
    tokio::pin!(work);
    if !progress {
        return work.await;
    }
    tokio::select! {
        result = &mut work => return result,
        () = tokio::time::sleep(PROGRESS_AFTER) => {}
    }
    let indicator = Indicator::show(rows.is_some());
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = ticks.tick() => indicator.update(rows.map_or(0, Progress::rows_read)),
        }
    }
}

/// The progress indicator of one statement.
struct Indicator(ProgressBar);

impl Indicator {
    fn show(counts_rows: bool) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let template = if counts_rows {
            "{spinner} running: {human_pos} rows read, {elapsed} (Ctrl-C cancels)"
        } else {
            "{spinner} running: {elapsed} (Ctrl-C cancels)"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        Self(bar)
    }

    fn update(&self, rows_read: u64) {
        self.0.set_position(rows_read);
        self.0.tick();
    }
}

impl Drop for Indicator {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// The message of a statement's error: where the statement is, what went wrong, and its first
/// line.
pub(crate) fn statement_error(origin: &str, line: u64, text: &str, error: &str) -> String {
    format!("error: {origin}, line {line}: {error}\n  in: {}", first_line(text))
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.len() < text.len() {
        format!("{line} ...")
    } else {
        line.to_string()
    }
}
