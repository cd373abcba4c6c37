//! TPC-H as materialized tables: INCREMENTAL refresh time against FULL refresh time per query.
//!
//! The eight tables from the `tpchgen` crate at scale factor SF are loaded; each of the 22
//! queries becomes two materialized tables over them, one `REFRESH_MODE = INCREMENTAL` and one
//! `REFRESH_MODE = FULL`. Then, for each share of SHARES (the fraction of orders, line items and
//! dimension rows a round changes), ROUNDS rounds: the changes are committed, and each query's
//! two tables are refreshed one after the other (side by side, on the same input versions).
//! Printed per query: the median incremental and full refresh times and their ratio, the first
//! state build (the first incremental refresh, which reads the inputs whole) against the first
//! full refresh (timed after the state's first checkpoint, which a large state writes once the
//! refresh returned, has landed: that time is printed too), and the operator state kept.
//!
//! Then RESTARTS rounds (default 1) of the last share as from the command line, one process per
//! statement: the engine is opened again before each refresh, so the incremental tables' state
//! comes from their checkpoints (or is rebuilt), and each refresh's time includes the opening
//! and the closing (each process's time is printed in these three parts).
//!
//! Run: `cargo bench -p freshet --bench tpch` (env: SF, default 1; SHARES, default 0.001,0.01;
//! ROUNDS, default 3; RESTARTS, default 1; ONLY=q03,q05 for some queries; SETTINGS, statements
//! run at every opening, such as `SET 'materialized-table.checkpoint.background-rows' = '0'`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark fails loudly

#[path = "../crates/freshet/tests/tpch/data.rs"]
mod data;
#[path = "../crates/freshet/tests/tpch/queries.rs"]
mod queries;
#[path = "support.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use freshet::Engine;
use freshet::datafusion::arrow::util::display::array_value_to_string;
use support::{commit, machine, median};

async fn timed(engine: &Engine, sql: &str) -> Duration {
    let start = Instant::now();
    engine.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    start.elapsed()
}

/// The "state" line of EXPLAIN MATERIALIZED TABLE: entries and bytes of the operator state.
async fn state_of(engine: &Engine, name: &str) -> String {
    let batches = engine.sql(&format!("EXPLAIN MATERIALIZED TABLE {name}")).await.unwrap();
    for batch in &batches {
        for i in 0..batch.num_rows() {
            if array_value_to_string(batch.column(0), i).unwrap() == "state" {
                let text = array_value_to_string(batch.column(1), i).unwrap();
                return text
                    .trim_start_matches("in memory: ")
                    .split(" (")
                    .next()
                    .unwrap_or("")
                    .to_string();
            }
        }
    }
    String::new()
}

fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

#[derive(Default)]
struct Figures {
    first_full: Duration,
    first_incremental: Duration,
    /// From the first incremental refresh's return to its state's first checkpoint committed
    /// (written after the refresh for a large state).
    first_checkpoint: Duration,
    /// The incremental table's operator state after the rounds in one engine (before any
    /// reopening drops it from memory).
    state: String,
    incremental: BTreeMap<String, Vec<Duration>>,
    full: BTreeMap<String, Vec<Duration>>,
}

/// An engine on `dir`, with the statements of `SETTINGS` (`SET ...; SET ...`) run first.
async fn open(dir: &tempfile::TempDir) -> Engine {
    let engine = Engine::builder()
        .location(dir.path().display().to_string())
        .open()
        .await
        .unwrap();
    if let Ok(settings) = std::env::var("SETTINGS")
        && !settings.trim().is_empty()
    {
        engine.sql(&settings).await.unwrap_or_else(|e| panic!("SETTINGS: {e}"));
    }
    engine
}

/// Waits for the compactions the last commits started, so that they do not share the machine
/// with the refreshes timed next (they would slow whichever table refreshes first).
async fn settle(engine: &Engine) {
    for table in [
        "lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region",
    ] {
        engine.table(table).unwrap().wait_for_background_work().await;
    }
}

async fn run(sf: f64, shares: &[f64], rounds: usize, restarts: usize, only: &[String]) {
    let data_dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    data::generate(data_dir.path(), sf);
    println!("generated SF {sf} in {:.1} s", start.elapsed().as_secs_f64());
    let dir = tempfile::tempdir().unwrap();
    let mut engine = open(&dir).await;
    let start = Instant::now();
    data::load(&engine, data_dir.path()).await;
    println!("loaded in {:.1} s", start.elapsed().as_secs_f64());
    engine.sql(queries::REVENUE_VIEW).await.unwrap();
    let fraction = format!("{}", 0.0001 / sf);
    let corpus: Vec<(String, String)> = queries::QUERIES
        .iter()
        .filter(|(name, _)| only.is_empty() || only.iter().any(|o| o == name))
        .map(|(name, query)| (name.to_string(), query.replace(":fraction", &fraction)))
        .collect();
    let mut figures: BTreeMap<String, Figures> = BTreeMap::new();
    for (name, query) in &corpus {
        for (suffix, mode) in [("inc", "INCREMENTAL"), ("full", "FULL")] {
            engine
                .sql(&format!(
                    "CREATE MATERIALIZED TABLE {name}_{suffix} FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = {mode} AS {query}"
                ))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    // A first round of one order in ten thousand: the incremental tables build their state.
    let mut r = 1;
    for statement in data::round(r, 10_000) {
        engine.sql(&statement).await.unwrap();
    }
    settle(&engine).await;
    for (name, _) in &corpus {
        let f = figures.entry(name.clone()).or_default();
        f.first_incremental = timed(&engine, &format!("ALTER MATERIALIZED TABLE {name}_inc REFRESH")).await;
        let start = Instant::now();
        engine.wait_for_materialized_state(&format!("{name}_inc")).await;
        f.first_checkpoint = start.elapsed();
        f.first_full = timed(&engine, &format!("ALTER MATERIALIZED TABLE {name}_full REFRESH")).await;
    }
    for &share in shares {
        let every = (1.0 / share).round() as i64;
        let label = format!("{}%", share * 100.0);
        for _ in 0..rounds {
            r += 1;
            let start = Instant::now();
            for statement in data::round(r % every, every) {
                engine.sql(&statement).await.unwrap();
            }
            println!(
                "{label} round {r}: changes committed in {:.2} s",
                start.elapsed().as_secs_f64()
            );
            settle(&engine).await;
            let mut after = Duration::ZERO;
            for (name, _) in &corpus {
                let inc = timed(&engine, &format!("ALTER MATERIALIZED TABLE {name}_inc REFRESH")).await;
                // What the state's task does after the refresh returned (its row index brought
                // up to date, a checkpoint due): waited for, so that it does not share the
                // machine with the FULL refresh timed next.
                let kept = Instant::now();
                engine.wait_for_materialized_state(&format!("{name}_inc")).await;
                after += kept.elapsed();
                let full = timed(&engine, &format!("ALTER MATERIALIZED TABLE {name}_full REFRESH")).await;
                let f = figures.get_mut(name).unwrap();
                f.incremental.entry(label.clone()).or_default().push(inc);
                f.full.entry(label.clone()).or_default().push(full);
            }
            println!(
                "{label} round {r}: incremental states kept (indexes, checkpoints) after their refreshes in {:.2} s",
                after.as_secs_f64()
            );
        }
    }
    let algorithms = engine
        .sql("SELECT name, count(*) FROM freshet.refreshes WHERE name LIKE '%_inc' AND algorithm = 'full' AND trigger <> 'create' GROUP BY name")
        .await
        .unwrap();
    let full_fallbacks: usize = algorithms.iter().map(|b| b.num_rows()).sum();
    for (name, _) in &corpus {
        let state = state_of(&engine, &format!("{name}_inc")).await;
        figures.get_mut(name).unwrap().state = state;
    }
    // As from the command line: a new engine for every refresh.
    let mut labels: Vec<String> = shares.iter().map(|s| format!("{}%", s * 100.0)).collect();
    let (mut restored, mut refreshed) = (0, 0);
    if let (Some(&share), true) = (shares.last(), restarts > 0) {
        let every = (1.0 / share).round() as i64;
        let label = format!("{}% reopened", share * 100.0);
        println!("{label}: the engine is opened again before every refresh");
        for _ in 0..restarts {
            r += 1;
            for statement in data::round(r % every, every) {
                engine.sql(&statement).await.unwrap();
            }
            engine.close().await;
            for (name, _) in &corpus {
                let mut times = Vec::new();
                let mut phases = Vec::new();
                let mut records = Vec::new();
                for suffix in ["inc", "full"] {
                    // One process: open, refresh, close (which checkpoints what the refresh
                    // changed).
                    let start = Instant::now();
                    let process = open(&dir).await;
                    let opened = start.elapsed();
                    process
                        .sql(&format!("ALTER MATERIALIZED TABLE {name}_{suffix} REFRESH"))
                        .await
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    let refreshed = start.elapsed();
                    records.push(freshet::RefreshRecord::of(
                        &process.table(&format!("{name}_inc")).unwrap().snapshot(),
                    ));
                    process.close().await;
                    let total = start.elapsed();
                    times.push(total);
                    phases.push(format!(
                        "open {}, refresh {}, close {}",
                        seconds(opened),
                        seconds(refreshed - opened),
                        seconds(total - refreshed)
                    ));
                }
                println!(
                    "{label} {name}: incremental {} s ({}), full {} s ({})",
                    seconds(times[0]),
                    phases[0],
                    seconds(times[1]),
                    phases[1]
                );
                let record = records.swap_remove(0);
                refreshed += 1;
                if record
                    .and_then(|r| r.reason)
                    .is_some_and(|reason| reason.contains("restored"))
                {
                    restored += 1;
                }
                let f = figures.get_mut(name).unwrap();
                f.incremental.entry(label.clone()).or_default().push(times[0]);
                f.full.entry(label.clone()).or_default().push(times[1]);
            }
            engine = open(&dir).await;
        }
        labels.push(label);
    }

    println!();
    println!(
        "TPC-H SF {sf}, {} queries, {rounds} rounds per share; machine: {}; commit {}",
        corpus.len(),
        machine(),
        commit()
    );
    let mut header = String::from("| query |");
    let mut rule = String::from("|---|");
    for label in &labels {
        header.push_str(&format!(
            " incremental {label} (s) | full {label} (s) | ratio {label} |"
        ));
        rule.push_str("---|---|---|");
    }
    header.push_str(" first state build (s) | checkpoint after it (s) | first full (s) | build / full | state |");
    rule.push_str("---|---|---|---|---|");
    println!("{header}");
    println!("{rule}");
    let mut ratios: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut builds = Vec::new();
    for (name, f) in &figures {
        let mut line = format!("| {name} |");
        for label in &labels {
            let inc = median(f.incremental[label].clone());
            let full = median(f.full[label].clone());
            let ratio = full.as_secs_f64() / inc.as_secs_f64().max(1e-9);
            ratios.entry(label.clone()).or_default().push(ratio);
            line.push_str(&format!(" {} | {} | {ratio:.1}x |", seconds(inc), seconds(full)));
        }
        let build = f.first_incremental.as_secs_f64() / f.first_full.as_secs_f64().max(1e-9);
        builds.push(build);
        line.push_str(&format!(
            " {} | {} | {} | {build:.2}x | {} |",
            seconds(f.first_incremental),
            seconds(f.first_checkpoint),
            seconds(f.first_full),
            f.state
        ));
        println!("{line}");
    }
    let median_of = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for label in &labels {
        let r = ratios[label].clone();
        let slower = r.iter().filter(|&&x| x < 1.0).count();
        println!(
            "{label}: median full/incremental {:.1}x over {} queries; {slower} slower than full",
            median_of(r.clone()),
            r.len()
        );
    }
    println!("first state build / first full: median {:.2}x", median_of(builds));
    println!("incremental tables that fell back to full refreshes: {full_fallbacks}");
    if refreshed > 0 {
        println!("reopened: {restored} of {refreshed} incremental refreshes restored their state from a checkpoint");
    }
    engine.close().await;
}

fn main() {
    support::allocator::configure();
    let sf: f64 = std::env::var("SF").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    let shares: Vec<f64> = std::env::var("SHARES")
        .unwrap_or_else(|_| "0.001,0.01".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds = support::env_usize("ROUNDS", 3);
    let restarts = support::env_usize("RESTARTS", 1);
    let only: Vec<String> = std::env::var("ONLY")
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(sf, &shares, rounds, restarts, &only));
}
