//! Runs every `sql-tests/*.slt` file against a fresh engine on a temporary directory.
//!
//! Besides SQL, a statement may be a harness directive starting with `!`:
//! - `!reopen`: close the engine and open it again on the same directory;
//! - `!fail_next_write <path fragment>`: the next write to a path containing the fragment fails
//!   (e.g. `/manifests/` fails the next commit after its data files are written);
//! - `!advance <n> <unit>`: move the engine's clock forward (`!advance 1 hour`) and wait until
//!   the scheduler has run every refresh due.
//!
//! The engine's clock is a manual clock starting at 2026-11-20 00:00:00 UTC, so that times in
//! results are the same on every run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use freshet::datafusion;
use freshet::storage::instrumented::{InstrumentedStore, Instruments};
use freshet::{Engine, FreshetError, ManualClock};
use sqllogictest::{DBOutput, DefaultColumnType};

/// 2026-11-20 00:00:00 UTC.
const START_MS: i64 = 1_795_132_800_000;

struct FreshetDb {
    dir: PathBuf,
    engine: Option<Engine>,
    injector: Instruments,
    clock: ManualClock,
}

impl FreshetDb {
    async fn open(dir: &Path, injector: Instruments, clock: &ManualClock) -> Result<Engine, FreshetError> {
        let layer_injector = injector.clone();
        Engine::builder()
            .location(dir.display().to_string())
            .clock(Arc::new(clock.clone()))
            .target_partitions(2)
            .store_layer(move |store| Arc::new(InstrumentedStore::new(store, layer_injector)))
            .open()
            .await
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for FreshetDb {
    type Error = FreshetError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, FreshetError> {
        let trimmed = sql.trim();
        if let Some(directive) = trimmed.strip_prefix('!') {
            let mut words = directive.split_whitespace();
            match words.next() {
                Some("reopen") => {
                    if let Some(engine) = self.engine.take() {
                        engine.close().await;
                    }
                    self.engine = Some(Self::open(&self.dir, self.injector.clone(), &self.clock).await?);
                }
                Some("fail_next_write") => {
                    let fragment = words.next().unwrap_or("/manifests/");
                    self.injector.fail_next_write(fragment);
                }
                Some("advance") => {
                    let amount: u64 = words.next().and_then(|n| n.parse().ok()).expect("!advance <n> <unit>");
                    let seconds = match words.next().unwrap_or("seconds").trim_end_matches('s') {
                        "second" => 1,
                        "minute" => 60,
                        "hour" => 3_600,
                        "day" => 86_400,
                        other => panic!("unknown unit {other} in !advance"),
                    };
                    // Refreshes due now run at this time, before the clock moves.
                    if let Some(engine) = &self.engine {
                        engine.wait_for_refreshes().await;
                    }
                    self.clock.advance(std::time::Duration::from_secs(amount * seconds));
                    if let Some(engine) = &self.engine {
                        engine.wait_for_refreshes().await;
                    }
                }
                other => panic!("unknown harness directive {other:?}"),
            }
            return Ok(DBOutput::StatementComplete(0));
        }
        let engine = self.engine.as_ref().expect("engine is open");
        let stream = engine.sql_stream(sql).await?;
        let schema = stream.schema();
        let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream)
            .await
            .map_err(FreshetError::from)?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = schema.fields().iter().map(|f| column_type(f.data_type())).collect();
        Ok(DBOutput::Rows {
            types,
            rows: render(&batches),
        })
    }

    async fn shutdown(&mut self) {
        self.engine = None;
    }

    fn engine_name(&self) -> &str {
        "freshet"
    }
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    if data_type.is_integer() {
        DefaultColumnType::Integer
    } else if data_type.is_floating() || matches!(data_type, DataType::Decimal128(..) | DataType::Decimal256(..)) {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

fn render(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formattable column"))
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| {
                        let text = f.value(row).to_string();
                        if text.is_empty() { "(empty)".to_string() } else { text }
                    })
                    .collect(),
            );
        }
    }
    rows
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql-tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sql-tests directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_logic_tests() {
    let filter = std::env::var("SLT").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for file in slt_files() {
        let name = file.file_name().unwrap_or_default().to_string_lossy().to_string();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().to_path_buf();
        let injector = Instruments::new();
        let clock = ManualClock::new(START_MS);
        let engine = FreshetDb::open(&path, injector.clone(), &clock)
            .await
            .expect("engine opens");
        let db = std::sync::Mutex::new(Some(FreshetDb {
            dir: path,
            engine: Some(engine),
            injector,
            clock,
        }));
        let mut runner = sqllogictest::Runner::new(move || {
            let db = db.lock().expect("lock").take().expect("one connection per file");
            async move { Ok(db) }
        });
        ran += 1;
        if let Err(e) = runner.run_file_async(&file).await {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(ran > 0, "no .slt file ran");
    assert!(
        failures.is_empty(),
        "{} of {ran} files failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
