//! Ingest throughput of each source, into a blackhole sink and into a Freshet table, beside
//! DataFusion reading the same files in batch (the ceiling: no ingestion, no job).
//!
//! EVENTS Nexmark events (default 1,000,000; 46/50 of them bids) are generated once and written
//! by Freshet's filesystem sink as JSON lines and as Parquet (the bid view's columns). Then, each
//! RUNS times (default 3, median reported), on a fresh engine:
//! - `nexmark → blackhole`: the generator's events through the bid view's filter into a
//!   blackhole sink;
//! - `json → blackhole`, `parquet → blackhole`: a filesystem source over the files, every column;
//! - `json → table`, `parquet → table`: the same appended to a Freshet table;
//! - `datafusion json`, `datafusion parquet`: an external table over the files, `SELECT
//!   count(*), sum(price), sum(length(url))` (decodes what a job reads).
//!
//! Each line: events (or rows) per second of wall time, per second of CPU time (process user +
//! system, so "per core"), and the CPU time.
//!
//! Run: `cargo bench -p freshet --bench streams`. Prints what it measured, the machine and the
//! commit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use freshet::Engine;
use freshet::nexmark::BID_COLUMNS;
use support::{commit, env_usize, machine, median};

fn nexmark_ddl(events: usize) -> String {
    let options = [
        ("events.num", events.to_string()),
        ("event.base-time", "2015-07-15 00:00:00".to_string()),
    ];
    let [_, _, bid] = freshet::nexmark::views_ddl("datagen");
    format!("{};\n{bid};", freshet::nexmark::generator_ddl("datagen", &options))
}

/// CPU time of the process so far (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let clock_ticks = 100;
    Duration::from_millis((ticks(11) + ticks(12)) * 1_000 / clock_ticks)
}

async fn engine(dir: &std::path::Path) -> Engine {
    let _ = std::fs::remove_dir_all(dir);
    Engine::builder()
        .location(dir.display().to_string())
        .open()
        .await
        .unwrap()
}

async fn run(engine: &Engine, sql: &str) {
    for statement in sql.split(";\n").filter(|s| !s.trim().is_empty()) {
        engine
            .sql(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Times one measurement: (wall, cpu).
async fn timed<F: std::future::Future<Output = ()>>(work: F) -> (Duration, Duration) {
    let cpu = cpu_time();
    let start = Instant::now();
    work.await;
    (start.elapsed(), cpu_time().saturating_sub(cpu))
}

fn main() {
    let events = env_usize("EVENTS", 1_000_000);
    let runs = env_usize("RUNS", 3).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("machine: {}; commit: {}", machine(), commit());
    runtime.block_on(async {
        let root = tempfile::tempdir().unwrap();
        let files = root.path().join("files");
        // The input files, written once by Freshet's own sink.
        {
            let engine = engine(&root.path().join("prepare")).await;
            run(&engine, &nexmark_ddl(events)).await;
            for format in ["json", "parquet"] {
                run(
                    &engine,
                    &format!(
                        "CREATE TABLE out_{format} ({BID_COLUMNS}) WITH ('connector' = 'filesystem', \
                         'path' = '{}', 'format' = '{format}');\n\
                         SET 'table.dml-sync' = 'true';\n\
                         INSERT INTO out_{format} SELECT * FROM bid",
                        files.join(format).display()
                    ),
                )
                .await;
            }
            engine.close().await;
        }
        let bids = events * 46 / 50;
        println!("{events} Nexmark events, {bids} bids; median of {runs} runs");
        println!("| source → sink | rows | rows/s | rows/s per CPU-second | CPU time |");
        println!("|---|---|---|---|---|");
        let cases: Vec<(&str, usize, String)> = vec![
            (
                "nexmark → blackhole",
                events,
                format!(
                    "{};\nCREATE TABLE sink ({BID_COLUMNS}) WITH ('connector' = 'blackhole');\n\
                     SET 'table.dml-sync' = 'true';\nINSERT INTO sink SELECT * FROM bid",
                    nexmark_ddl(events).trim_end_matches(';')
                ),
            ),
            ("json → blackhole", bids, source_to("json", &files, "blackhole")),
            ("parquet → blackhole", bids, source_to("parquet", &files, "blackhole")),
            ("json → table", bids, source_to("json", &files, "table")),
            ("parquet → table", bids, source_to("parquet", &files, "table")),
            ("datafusion json (batch)", bids, batch("JSON", &files.join("json"))),
            (
                "datafusion parquet (batch)",
                bids,
                batch("PARQUET", &files.join("parquet")),
            ),
        ];
        for (name, rows, sql) in cases {
            let mut walls = Vec::new();
            let mut cpus = Vec::new();
            for _ in 0..runs {
                let engine = engine(&root.path().join("run")).await;
                let (wall, cpu) = timed(run(&engine, &sql)).await;
                engine.close().await;
                walls.push(wall);
                cpus.push(cpu);
            }
            let (wall, cpu) = (median(walls), median(cpus));
            println!(
                "| {name} | {rows} | {:.0} | {:.0} | {:.2} s |",
                rows as f64 / wall.as_secs_f64(),
                rows as f64 / cpu.as_secs_f64().max(1e-9),
                cpu.as_secs_f64()
            );
        }
    });
}

fn source_to(format: &str, files: &std::path::Path, sink: &str) -> String {
    let sink_ddl = match sink {
        "blackhole" => format!("CREATE TABLE sink ({BID_COLUMNS}) WITH ('connector' = 'blackhole')"),
        _ => format!("CREATE TABLE sink ({BID_COLUMNS})"),
    };
    format!(
        "CREATE TABLE src ({BID_COLUMNS}) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = '{format}');\n\
         {sink_ddl};\nSET 'table.dml-sync' = 'true';\nINSERT INTO sink SELECT * FROM src",
        files.join(format).display()
    )
}

fn batch(stored_as: &str, dir: &std::path::Path) -> String {
    format!(
        "CREATE EXTERNAL TABLE src STORED AS {stored_as} LOCATION '{}/';\n\
         SELECT count(*), sum(price), sum(length(url)) FROM src",
        dir.display()
    )
}
