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
//! Then freshness (`PARTS` holds `freshness`): a CONTINUOUS materialized table (an aggregate)
//! over a directory source followed every MONITOR_MS (default 20 ms), while files of JSON lines
//! are placed into it at RATE events/s (default 100,000) in files of FILE_EVENTS (default
//! 1,000) for SECONDS (default 10): for each file, the time from its placement to the first
//! version of the materialized table that counts its events; p50, p99 and max.
//!
//! Then windowed freshness (`windowed-freshness`): the same stream with an event time that
//! follows the wall clock, counted by a job per tumbling window of WINDOW_MS (default 100) into
//! a table, each window written once the watermark passes its end: for each window, the time
//! from the placement of the file that moves the watermark past its end to its row.
//!
//! Run: `cargo bench -p freshet --bench streams`. Prints what it measured, the machine and the
//! commit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use freshet::Engine;
use freshet::nexmark::BID_COLUMNS;
use support::{commit, cpu_time, env_usize, machine, median};

fn nexmark_ddl(events: usize) -> String {
    let options = [
        ("events.num", events.to_string()),
        ("event.base-time", "2015-07-15 00:00:00".to_string()),
    ];
    let [_, _, bid] = freshet::nexmark::views_ddl("datagen");
    format!("{};\n{bid};", freshet::nexmark::generator_ddl("datagen", &options))
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

/// Freshness of a continuous materialized table over a followed directory.
async fn freshness_part(root: &std::path::Path) {
    let rate = env_usize("RATE", 100_000);
    let file_events = env_usize("FILE_EVENTS", 1_000).max(1);
    let seconds = env_usize("SECONDS", 10);
    let monitor_ms = env_usize("MONITOR_MS", 20);
    let input = root.join("stream");
    std::fs::create_dir_all(&input).unwrap();
    let engine = engine(&root.join("freshness")).await;
    run(
        &engine,
        &format!(
            "CREATE TABLE src (id BIGINT, channel VARCHAR, price BIGINT) WITH ('connector' = 'filesystem', \
             'path' = '{}', 'format' = 'json', 'source.monitor-interval' = '{monitor_ms} ms');\n\
             CREATE MATERIALIZED TABLE per_channel FRESHNESS = INTERVAL '1' SECOND AS \
             SELECT channel, count(*) AS n, sum(price) AS total FROM src GROUP BY channel",
            input.display()
        ),
    )
    .await;
    let files = rate * seconds / file_events;
    let interval = Duration::from_secs_f64(file_events as f64 / rate as f64);
    let placed: std::sync::Arc<std::sync::Mutex<Vec<Instant>>> = Default::default();
    // The watcher: at each version of the table, how many events it counts.
    let watcher = {
        let engine = engine.clone();
        let placed = placed.clone();
        let mut versions = engine.table("per_channel").unwrap().subscribe();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut seen = 0usize;
            while seen < files {
                if versions.changed().await.is_err() {
                    break;
                }
                let now = Instant::now();
                let batches = engine
                    .sql("SELECT CAST(coalesce(sum(n), 0) AS BIGINT) FROM per_channel")
                    .await
                    .unwrap();
                let counted = batches[0]
                    .column(0)
                    .as_any()
                    .downcast_ref::<freshet::datafusion::arrow::array::Int64Array>()
                    .unwrap()
                    .value(0) as usize;
                let visible = counted / file_events;
                let placed = placed.lock().unwrap().clone();
                for at in placed.iter().take(visible).skip(seen) {
                    latencies.push(now.duration_since(*at));
                }
                seen = seen.max(visible);
            }
            latencies
        })
    };
    place_files(&input, files, interval, &placed, |file| {
        let mut text = String::with_capacity(file_events * 48);
        for i in 0..file_events {
            let id = file * file_events + i;
            text.push_str(&format!(
                "{{\"id\": {id}, \"channel\": \"channel-{}\", \"price\": {}}}\n",
                id % 100,
                id % 997
            ));
        }
        text
    })
    .await;
    let latencies = watcher.await.unwrap();
    print_latencies(
        &format!(
            "freshness of a continuous aggregate over a followed directory, {rate} events/s in files of \
             {file_events}, monitor {monitor_ms} ms, {seconds} s"
        ),
        latencies,
        "files",
    );
    engine.close().await;
}

/// Places `files` files of JSON lines (`text(file)`) into `input` every `interval`, each
/// written aside and renamed into place (a reader never sees half a file); records when.
async fn place_files(
    input: &std::path::Path,
    files: usize,
    interval: Duration,
    placed: &std::sync::Mutex<Vec<Instant>>,
    text: impl Fn(usize) -> String,
) {
    let mut next = Instant::now();
    for file in 0..files {
        let hidden = input.join(format!(".{file:08}.json"));
        std::fs::write(&hidden, text(file)).unwrap();
        std::fs::rename(&hidden, input.join(format!("{file:08}.json"))).unwrap();
        placed.lock().unwrap().push(Instant::now());
        next += interval;
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Prints p50, p99 and the maximum of `latencies`.
fn print_latencies(what: &str, mut latencies: Vec<Duration>, unit: &str) {
    if latencies.is_empty() {
        println!("{what}: nothing became visible");
        return;
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} {unit})",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        latencies.len()
    );
}

/// Freshness of a windowed job: events whose event time follows the wall clock are placed in
/// files; a job counts them per tumbling window of WINDOW_MS (default 100 ms) into a Freshet
/// table, writing each window once the watermark (the latest event time, no delay) passes its
/// end. For each window, the time from the placement of the file whose events move the
/// watermark past its end to the version of the table holding its row.
async fn windowed_freshness_part(root: &std::path::Path) {
    let rate = env_usize("RATE", 100_000);
    let file_events = env_usize("FILE_EVENTS", 1_000).max(1);
    let seconds = env_usize("SECONDS", 10);
    let monitor_ms = env_usize("MONITOR_MS", 20);
    let window_ms = env_usize("WINDOW_MS", 100).max(1) as i64;
    let input = root.join("windowed-stream");
    std::fs::create_dir_all(&input).unwrap();
    let engine = engine(&root.join("windowed-freshness")).await;
    run(
        &engine,
        &format!(
            "CREATE TABLE ev (id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH ('connector' = 'filesystem', \
             'path' = '{}', 'format' = 'json', 'source.monitor-interval' = '{monitor_ms} ms');\n\
             CREATE TABLE per_window (window_end TIMESTAMP(3), n BIGINT);\n\
             INSERT INTO per_window SELECT window_end, count(*) FROM \
             TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '{window_ms}' MILLISECOND)) GROUP BY window_start, window_end",
            input.display()
        ),
    )
    .await;
    let files = rate * seconds / file_events;
    let interval = Duration::from_secs_f64(file_events as f64 / rate as f64);
    // Event time (ms from the start) of event `id`: as many ms per event as the wall clock.
    let event_ms = move |id: usize| (id as f64 * 1000.0 / rate as f64) as i64;
    // The file whose last event first reaches each window's end closes it.
    let last_ms = |file: usize| event_ms((file + 1) * file_events - 1);
    let closing: Vec<usize> = (1..)
        .map(|window: i64| window * window_ms)
        .map_while(|end| (0..files).find(|&f| last_ms(f) >= end))
        .collect();
    let placed: std::sync::Arc<std::sync::Mutex<Vec<Instant>>> = Default::default();
    let watcher = {
        let engine = engine.clone();
        let placed = placed.clone();
        let windows = closing.len();
        let mut versions = engine.table("per_window").unwrap().subscribe();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while latencies.len() < windows {
                if versions.changed().await.is_err() {
                    break;
                }
                let now = Instant::now();
                let batches = engine.sql("SELECT count(*) FROM per_window").await.unwrap();
                let visible = batches[0]
                    .column(0)
                    .as_any()
                    .downcast_ref::<freshet::datafusion::arrow::array::Int64Array>()
                    .unwrap()
                    .value(0) as usize;
                let placed = placed.lock().unwrap().clone();
                for file in closing.iter().take(visible).skip(latencies.len()) {
                    latencies.push(placed.get(*file).map_or(Duration::ZERO, |at| now.duration_since(*at)));
                }
            }
            latencies
        })
    };
    place_files(&input, files, interval, &placed, |file| {
        let mut text = String::with_capacity(file_events * 64);
        for id in file * file_events..(file + 1) * file_events {
            let ms = event_ms(id);
            text.push_str(&format!(
                "{{\"id\": {id}, \"ts\": \"2024-01-01 00:{:02}:{:02}.{:03}\"}}\n",
                ms / 60_000 % 60,
                ms / 1000 % 60,
                ms % 1000
            ));
        }
        text
    })
    .await;
    let latencies = watcher.await.unwrap();
    print_latencies(
        &format!(
            "freshness of a windowed job (tumbling {window_ms} ms, emitted on close) over a followed directory, \
             {rate} events/s in files of {file_events}, monitor {monitor_ms} ms, {seconds} s: from the watermark \
             passing a window's end to its row"
        ),
        latencies,
        "windows",
    );
    engine.close().await;
}

fn main() {
    support::allocator::configure();
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "ingest,freshness,windowed-freshness".into());
    let events = env_usize("EVENTS", 1_000_000);
    let runs = env_usize("RUNS", 3).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("machine: {}; commit: {}", machine(), commit());
    runtime.block_on(async {
        let root = tempfile::tempdir().unwrap();
        if parts.split(',').any(|p| p == "freshness") {
            freshness_part(root.path()).await;
        }
        if parts.contains("windowed-freshness") {
            windowed_freshness_part(root.path()).await;
        }
        if !parts.contains("ingest") {
            return;
        }
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
