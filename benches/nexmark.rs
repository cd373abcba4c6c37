//! The Nexmark benchmark: nexmark-flink's queries (`freshet::nexmark::QUERIES`), each an
//! `INSERT INTO <blackhole> SELECT ...` job run to the end of a bounded input, on a fresh engine.
//!
//! Options (environment variables):
//! - `EVENTS`: Nexmark events, persons, auctions and bids together (default 1,000,000);
//! - `RATE`: events per second of event time (default 10,000,000, Nexmark's standard; windowed
//!   queries want a lower rate, such as 10,000, to cover more than a few windows);
//! - `QUERIES`: the queries to run, by name, comma-separated (default: every one Freshet runs);
//! - `SOURCE`: `generator` (the `nexmark` connector and nexmark-flink's views, default) or
//!   `files` (three JSON-lines `filesystem` tables written once by Freshet's export);
//! - `PARALLELISM`: the engine's target partitions (default: the cores);
//! - `RUNS`: runs per query, the median reported (default 1);
//! - `SAMPLE_SECS`: also sample each job every so many seconds (events read, operator state,
//!   resident memory), printed after the table — the long run's state over time;
//! - `RESTART`: instead, for each query, a job over the rate-limited generator on a manual
//!   clock reads `EVENTS` events and the engine closes; it is reopened twice, timing how long
//!   the job takes to come back — restored from its checkpoint, then (its checkpoint files
//!   deleted) rebuilt from its inputs — with its state's and checkpoint's size (checkpoints
//!   due a second apart, so that the epoch reading the events writes one).
//!
//! Each row: events per second of wall time, per CPU-second (process user + system time: per
//! core), the CPU time, the process's peak resident memory during the run (sampled every
//! 10 ms), and the job's peak operator state (entries and bytes). Queries Freshet does not run are listed with the reason.
//!
//! Run: `cargo bench -p freshet --bench nexmark`. Prints what it measured, the machine and the
//! commit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use freshet::Engine;
use freshet::nexmark::QUERIES;
use support::{commit, cpu_time, env_usize, machine, median};

/// The process's resident memory (bytes).
fn resident_memory() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples the resident memory every 10 ms until dropped; `peak` is the most seen.
struct MemorySampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl MemorySampler {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = resident_memory();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                peak = peak.max(resident_memory());
            }
            peak
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / f64::from(1 << 30))
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn main() {
    support::allocator::configure();
    let events = env_usize("EVENTS", 1_000_000);
    let rate = env_usize("RATE", 10_000_000);
    let runs = env_usize("RUNS", 1).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parallelism = env_usize("PARALLELISM", cores).max(1);
    let source = std::env::var("SOURCE").unwrap_or_else(|_| "generator".into());
    let sample_secs = std::env::var("SAMPLE_SECS").ok().and_then(|s| s.parse::<u64>().ok());
    let wanted: Option<Vec<String>> = std::env::var("QUERIES")
        .ok()
        .map(|q| q.split(',').map(|s| s.trim().to_lowercase()).collect());
    let options = [
        ("events.num", events.to_string()),
        ("first-event.rate", rate.to_string()),
        ("next-event.rate", rate.to_string()),
        ("event.base-time", "2015-07-15 00:00:00".to_string()),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("machine: {}; commit: {}", machine(), commit());
    println!(
        "{events} Nexmark events at {rate} events/s of event time, source {source}, parallelism {parallelism}; \
         median of {runs} run(s)"
    );
    if std::env::var("RESTART").is_ok() {
        runtime.block_on(restarts(events, rate, parallelism, wanted.as_deref()));
        return;
    }
    runtime.block_on(async {
        let root = tempfile::tempdir().unwrap();
        let files = root.path().join("files");
        if source == "files" {
            freshet::nexmark::export_json_lines(&options, &files).await.unwrap();
        }
        let tables: Vec<String> = if source == "files" {
            freshet::nexmark::files_ddl(&files).to_vec()
        } else {
            let mut tables = vec![freshet::nexmark::generator_ddl("datagen", &options)];
            tables.extend(freshet::nexmark::views_ddl("datagen"));
            tables
        };
        println!("| query | events/s | events/s per CPU-second | CPU time | peak memory | peak state entries | peak state bytes |");
        println!("|---|---|---|---|---|---|---|");
        let mut skipped = Vec::new();
        let mut samples = Vec::new();
        for query in QUERIES {
            if wanted.as_ref().is_some_and(|w| !w.iter().any(|n| n == query.name)) {
                continue;
            }
            if let Some(reason) = query.unsupported {
                skipped.push(format!("{}: {reason}", query.name));
                continue;
            }
            let mut walls = Vec::new();
            let mut cpus: Vec<Duration> = Vec::new();
            let mut measures = Vec::new();
            for _ in 0..runs {
                let dir = root.path().join("run");
                let _ = std::fs::remove_dir_all(&dir);
                let engine = Engine::builder()
                    .location(dir.display().to_string())
                    .target_partitions(parallelism)
                    .open()
                    .await
                    .unwrap();
                for table in &tables {
                    engine.sql(table).await.unwrap();
                }
                engine.sql("SET 'table.dml-sync' = 'true'").await.unwrap();
                let sampler = sample_secs.map(|secs| {
                    let engine = engine.clone();
                    let name = query.name;
                    tokio::spawn(async move {
                        let start = Instant::now();
                        let mut lines = Vec::new();
                        loop {
                            // Sampling at an interval, not waiting for anything.
                            tokio::time::sleep(Duration::from_secs(secs)).await;
                            let Some(job) = engine.jobs().pop() else { continue };
                            lines.push(format!(
                                "| {name} | {:.0} s | {} | {} | {} | {} |",
                                start.elapsed().as_secs_f64(),
                                job.rows_in,
                                job.state_rows,
                                human(job.state_bytes),
                                human(resident_memory())
                            ));
                            if job.status.is_terminal() {
                                return lines;
                            }
                        }
                    })
                });
                let memory = MemorySampler::start();
                let cpu = cpu_time();
                let start = Instant::now();
                for statement in query.sql.split(";\n").filter(|s| !s.trim().is_empty()) {
                    engine
                        .sql(statement)
                        .await
                        .unwrap_or_else(|e| panic!("{}: {e}", query.name));
                }
                walls.push(start.elapsed());
                cpus.push(cpu_time().saturating_sub(cpu));
                let job = engine.jobs().pop().unwrap();
                measures.push((memory.peak(), job.peak_state_rows, job.peak_state_bytes));
                if let Some(sampler) = sampler {
                    // It ends at its next sample, which finds the job ended.
                    if let Ok(lines) = sampler.await {
                        samples.extend(lines);
                    }
                }
                engine.close().await;
            }
            let (wall, cpu) = (median(walls), median(cpus));
            measures.sort();
            let (memory, rows, bytes) = measures[measures.len() / 2];
            println!(
                "| {} | {:.0} | {:.0} | {:.2} s | {} | {} | {} |",
                query.name,
                events as f64 / wall.as_secs_f64(),
                events as f64 / cpu.as_secs_f64().max(1e-9),
                cpu.as_secs_f64(),
                human(memory),
                rows,
                human(bytes)
            );
        }
        for line in skipped {
            println!("not run: {line}");
        }
        if !samples.is_empty() {
            println!();
            println!("| query | time | events read | state entries | state bytes | resident memory |");
            println!("|---|---|---|---|---|---|");
            for line in samples {
                println!("{line}");
            }
        }
    });
}

/// The `RESTART` table: per query, how long its job takes to come back after the engine
/// reopens, from its checkpoint and from its inputs.
async fn restarts(events: usize, rate: usize, parallelism: usize, wanted: Option<&[String]>) {
    // The generator's events come due on a manual clock from their base time; twice as many
    // are declared, so that the job is still running when the engine closes.
    let base_ms = 1_436_918_400_000;
    let options = [
        ("events.num", (events * 2).to_string()),
        ("first-event.rate", rate.to_string()),
        ("next-event.rate", rate.to_string()),
        ("event.base-time", "2015-07-15 00:00:00".to_string()),
        ("rate.limited", "true".to_string()),
    ];
    let mut tables = vec![freshet::nexmark::generator_ddl("datagen", &options)];
    tables.extend(freshet::nexmark::views_ddl("datagen"));
    println!(
        "| query | state entries | state bytes | checkpoint bytes | restored from the checkpoint | rebuilt from the inputs |"
    );
    println!("|---|---|---|---|---|---|");
    for query in QUERIES {
        if wanted.is_some_and(|w| !w.iter().any(|n| n == query.name)) || query.unsupported.is_some() {
            continue;
        }
        let root = tempfile::tempdir().unwrap();
        let clock = freshet::ManualClock::new(base_ms);
        let open = || async {
            Engine::builder()
                .location(root.path().join("data").display().to_string())
                .clock(std::sync::Arc::new(clock.clone()))
                .target_partitions(parallelism)
                .open()
                .await
                .unwrap()
        };
        let engine = open().await;
        for table in &tables {
            engine.sql(table).await.unwrap();
        }
        // Checkpoints are due a second apart: the epoch that reads the events writes one.
        engine
            .sql("SET 'execution.checkpointing.interval' = '1 s'")
            .await
            .unwrap();
        for statement in query.sql.split(";\n").filter(|s| !s.trim().is_empty()) {
            engine
                .sql(statement)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", query.name));
        }
        let id = engine.jobs().pop().unwrap().id;
        // The clock passes the events' time in ten steps; at each, every event due is ingested
        // (a statement reading the source ingests a step at a time) and the job follows.
        let table = engine.table("datagen").unwrap();
        let job = engine.job(&id).unwrap();
        let mut info = job.info();
        for step in 1..=10u64 {
            let due = events as u64 * step / 10;
            clock.set(base_ms + i64::try_from((due * 1000).div_ceil(rate as u64)).unwrap());
            while (table.snapshot().manifest().files.iter().map(|f| f.rows).sum::<u64>()) < due {
                engine.sql("SELECT count(*) FROM datagen").await.unwrap();
            }
            let version = table.snapshot().version();
            info = job
                .subscribe()
                .wait_for(|i| i.inputs.get("datagen").is_some_and(|&v| v >= version) || i.status.is_terminal())
                .await
                .unwrap()
                .clone();
            assert!(info.error.is_none(), "{}: {:?}", query.name, info.error);
        }
        engine.close().await;
        let mut times = Vec::new();
        for lose_checkpoint in [false, true] {
            if lose_checkpoint {
                let state = root.path().join("data/_freshet/jobs").join(&id).join("state");
                let _ = std::fs::remove_dir_all(state);
            }
            let start = Instant::now();
            let engine = open().await;
            let job = engine.job(&id).unwrap();
            let back = job
                .subscribe()
                .wait_for(|i| i.recovery.is_some() || i.status.is_terminal())
                .await
                .unwrap()
                .clone();
            times.push((start.elapsed(), back.recovery.unwrap_or_default()));
            engine.close().await;
        }
        let checkpoint = info.checkpoint.map_or(0, |c| c.0);
        let shown = |(time, how): &(Duration, String)| format!("{:.3} s ({how})", time.as_secs_f64());
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            query.name,
            info.state_rows,
            human(info.state_bytes),
            human(checkpoint),
            shown(&times[0]),
            shown(&times[1])
        );
    }
}
