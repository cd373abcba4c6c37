//! Storage benchmarks (issue: foundation):
//!
//! 1. Bulk `INSERT ... SELECT` of N rows (5 columns of mixed types) into a Freshet table, versus
//!    DataFusion writing the same batches to Parquet itself (`COPY ... TO`), side by side in one
//!    run, alternating, median of the runs.
//! 2. Change read of a 1,000-row UPDATE on tables of two sizes: bytes read and time.
//!
//! Run: `cargo bench -p freshet --bench storage` (env: ROWS, default 10,000,000; RUNS, default 3).
//! Prints what it measured, the machine and the commit.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark fails loudly

#[path = "support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use freshet::Engine;
use freshet::datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use freshet::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use freshet::datafusion::datasource::MemTable;
use freshet::datafusion::prelude::SessionContext;
use freshet::storage::instrumented::{InstrumentedStore, Instruments};
use support::{commit, env_usize, machine, median};

const BATCH_ROWS: usize = 8192;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("customer", DataType::Utf8, true),
        Field::new("day", DataType::Date32, true),
        Field::new("flag", DataType::Boolean, true),
    ]))
}

/// Deterministic pseudo-random batches.
fn batches(rows: usize) -> Vec<RecordBatch> {
    let schema = schema();
    let mut out = Vec::new();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut start = 0;
    while start < rows {
        let n = BATCH_ROWS.min(rows - start);
        let ids = Int64Array::from_iter_values((start..start + n).map(|i| i as i64));
        let amounts = Float64Array::from_iter_values((0..n).map(|_| (next() % 100_000) as f64 / 100.0));
        let customers = StringArray::from_iter_values((0..n).map(|_| format!("customer-{:06}", next() % 100_000)));
        let days = Date32Array::from_iter_values((0..n).map(|_| 19_000 + (next() % 1_000) as i32));
        let flags = BooleanArray::from_iter((0..n).map(|_| Some(next() % 2 == 0)));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids),
            Arc::new(amounts),
            Arc::new(customers),
            Arc::new(days),
            Arc::new(flags),
        ];
        out.push(RecordBatch::try_new(schema.clone(), columns).expect("batch"));
        start += n;
    }
    out
}

async fn bulk_insert(rows: usize, runs: usize) {
    let data = batches(rows);
    let partitions: Vec<Vec<RecordBatch>> = vec![data];
    let mut freshet_times = Vec::new();
    let mut datafusion_times = Vec::new();
    let mut freshet_bytes = 0;
    let mut datafusion_bytes = 0;
    for run in 0..runs {
        // DataFusion writing the batches to Parquet itself.
        let dir = tempfile::tempdir().expect("temp dir");
        let ctx = SessionContext::new();
        let source = MemTable::try_new(schema(), partitions.clone()).expect("mem table");
        ctx.register_table("src", Arc::new(source)).expect("register");
        let out = dir.path().join("out.parquet");
        let started = Instant::now();
        ctx.sql(&format!(
            "COPY (SELECT * FROM src) TO '{}' STORED AS PARQUET",
            out.display()
        ))
        .await
        .expect("plan")
        .collect()
        .await
        .expect("copy");
        datafusion_times.push(started.elapsed());
        datafusion_bytes = dir_size(dir.path());

        // Freshet: INSERT ... SELECT into a table.
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::builder()
            .location(dir.path().display().to_string())
            .open()
            .await
            .expect("engine");
        let source = MemTable::try_new(schema(), partitions.clone()).expect("mem table");
        engine
            .session()
            .register_table("src", Arc::new(source))
            .expect("register");
        engine
            .sql("CREATE TABLE t (id BIGINT NOT NULL, amount DOUBLE, customer TEXT, day DATE, flag BOOLEAN)")
            .await
            .expect("create");
        let started = Instant::now();
        engine
            .sql("INSERT INTO t SELECT id, amount, customer, day, flag FROM src")
            .await
            .expect("insert");
        freshet_times.push(started.elapsed());
        freshet_bytes = dir_size(dir.path());
        eprintln!(
            "  run {}: datafusion {:?}, freshet {:?}",
            run + 1,
            datafusion_times[run],
            freshet_times[run]
        );
    }
    let df = median(datafusion_times);
    let fr = median(freshet_times);
    let rate = |d: Duration| rows as f64 / d.as_secs_f64() / 1e6;
    println!("bulk insert of {rows} rows (5 columns: BIGINT, DOUBLE, TEXT, DATE, BOOLEAN), median of {runs}:");
    println!(
        "  datafusion COPY TO parquet : {:>8.3} s  {:>6.2} M rows/s  {:>6.1} MiB",
        df.as_secs_f64(),
        rate(df),
        datafusion_bytes as f64 / 1048576.0
    );
    println!(
        "  freshet INSERT ... SELECT  : {:>8.3} s  {:>6.2} M rows/s  {:>6.1} MiB",
        fr.as_secs_f64(),
        rate(fr),
        freshet_bytes as f64 / 1048576.0
    );
    println!(
        "  freshet throughput / datafusion throughput = {:.2}",
        df.as_secs_f64() / fr.as_secs_f64()
    );
}

async fn change_read(rows: usize, runs: usize) {
    let data = batches(rows);
    let dir = tempfile::tempdir().expect("temp dir");
    let instruments = Instruments::new();
    let layer = instruments.clone();
    let engine = Engine::builder()
        .location(dir.path().display().to_string())
        .store_layer(move |store| Arc::new(InstrumentedStore::new(store, layer)))
        .open()
        .await
        .expect("engine");
    let source = MemTable::try_new(schema(), vec![data]).expect("mem table");
    engine
        .session()
        .register_table("src", Arc::new(source))
        .expect("register");
    engine
        .sql("CREATE TABLE t (id BIGINT PRIMARY KEY, amount DOUBLE, customer TEXT, day DATE, flag BOOLEAN)")
        .await
        .expect("create");
    engine.sql("INSERT INTO t SELECT * FROM src").await.expect("insert");
    // 1,000 rows spread over the whole table, whatever its size.
    let step = (rows / 1000).max(1);
    engine
        .sql(&format!("UPDATE t SET amount = amount + 1 WHERE id % {step} = 0"))
        .await
        .expect("update");
    let table = engine.table("t").expect("table");
    let version = table.snapshot().version();
    let changed: u64 = table
        .snapshot()
        .manifest()
        .changes
        .inserted
        .iter()
        .map(|f| f.rows)
        .sum();
    let mut times = Vec::new();
    let mut bytes = 0;
    let mut change_rows = 0;
    for _ in 0..runs.max(5) {
        instruments.reset_counters();
        let started = Instant::now();
        let changes = engine.changes("t", version - 1, version).await.expect("changes");
        let consolidated = changes.consolidated().await.expect("read").expect("some changes");
        times.push(started.elapsed());
        bytes = instruments.bytes_read();
        change_rows = consolidated.num_rows();
    }
    let table_bytes = dir_size(dir.path());
    println!(
        "change read of an UPDATE of {changed} rows on a {rows}-row table ({:.1} MiB on disk): {change_rows} change rows, {bytes} bytes read, median {:.2} ms",
        table_bytes as f64 / 1048576.0,
        median(times).as_secs_f64() * 1000.0
    );
}

fn dir_size(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let p = entry.path();
            total += if p.is_dir() {
                dir_size(&p)
            } else {
                entry.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

fn main() {
    support::allocator::configure();
    let rows = env_usize("ROWS", 10_000_000);
    let runs = env_usize("RUNS", 3).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("machine: {}; commit: {}", machine(), commit());
    runtime.block_on(async {
        bulk_insert(rows, runs).await;
        change_read(rows / 10, runs).await;
        change_read(rows, runs).await;
    });
}
