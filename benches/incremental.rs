//! Incremental maintenance benchmarks (issue: incremental maintenance).
//!
//! Three parts, chosen with `PARTS` (default all):
//! - `refresh`: INCREMENTAL versus FULL refresh of the same aggregate after changing 0.1%, 1%
//!   and 10% of ROWS orders (default 10,000,000), side by side, alternating, median of RUNS;
//!   plus the time to rebuild the operator state (what a restart costs) and its size. Two
//!   aggregates (`ONLY` picks one by name): by customer, and per ten consecutive orders.
//!   `SHARES` (e.g. `0.01`) picks the shares changed, comma-separated. `CHECKPOINT_EVERY=1`
//!   has every incremental refresh write a checkpoint (the engine's clock, a manual one,
//!   steps past `execution.checkpointing.interval` before each) and reports their sizes.
//! - `throughput`: input rows per second of incremental maintenance for a GROUP BY aggregate,
//!   a two-way join, a join + aggregate and a top-N per group, under transactions of 100 and of
//!   100,000 rows over BASE orders (default 1,000,000): commit, then refresh; the refresh time
//!   alone and commit + refresh.
//! - `latency`: a CONTINUOUS aggregate under a sustained stream of commits (RATE rows/s,
//!   default 100,000, in transactions of TXN rows, default 1,000, for SECONDS, default 10):
//!   time from each input commit to the materialized table's version reflecting it, p50/p99.
//!
//! Run: `cargo bench -p freshet --bench incremental`. Prints what it measured, the machine and
//! the commit.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark fails loudly

#[path = "data.rs"]
mod data;
#[path = "support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use data::{CUSTOMERS, Random, customers, orders};
use freshet::datafusion::arrow::array::Int64Array;
use freshet::{Engine, ManualClock, RefreshRecord};
use support::{commit, env_usize, machine, median};

const AGGREGATE: &str = "SELECT customer_id, count(*) AS orders, sum(amount) AS total FROM orders GROUP BY customer_id";

const QUERIES: [(&str, &str); 4] = [
    ("aggregate", AGGREGATE),
    (
        "join",
        "SELECT o.id, o.amount, c.region FROM orders o JOIN customers c ON o.customer_id = c.id",
    ),
    (
        "join_aggregate",
        "SELECT c.region, count(*) AS orders, sum(o.amount) AS total FROM orders o JOIN customers c \
         ON o.customer_id = c.id GROUP BY c.region",
    ),
    (
        "top_n_per_group",
        "SELECT * FROM (SELECT id, customer_id, amount, ROW_NUMBER() OVER (PARTITION BY customer_id \
         ORDER BY amount DESC, id) AS rank FROM orders) WHERE rank <= 3",
    ),
];

/// An engine on `dir`; `SYNC=0` leaves local writes unsynced (see `EngineBuilder::sync_writes`),
/// to tell the disk's share of a figure.
fn builder(dir: &tempfile::TempDir) -> freshet::EngineBuilder {
    let builder = Engine::builder()
        .location(dir.path().display().to_string())
        .sync_writes(std::env::var("SYNC").map_or(true, |v| v != "0"));
    match checkpoint_clock() {
        Some(clock) => builder.clock(Arc::new(clock.clone())),
        None => builder,
    }
}

/// With `CHECKPOINT_EVERY=1`, the clock of every engine of the run: a manual one, started at
/// the wall clock's time.
fn checkpoint_clock() -> Option<&'static ManualClock> {
    static CLOCK: std::sync::OnceLock<Option<ManualClock>> = std::sync::OnceLock::new();
    CLOCK
        .get_or_init(|| {
            let every = std::env::var("CHECKPOINT_EVERY").is_ok_and(|v| v == "1");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            every.then(|| ManualClock::new(now))
        })
        .as_ref()
}

/// With `CHECKPOINT_EVERY=1`: checkpoints a second apart at most, and the clock a second on,
/// so that the next refresh writes one.
async fn checkpoint_due_next(engine: &Engine) {
    if let Some(clock) = checkpoint_clock() {
        engine
            .sql("SET 'execution.checkpointing.interval' = '1 s'")
            .await
            .unwrap();
        clock.advance(Duration::from_secs(1));
    }
}

/// The files of a table's checkpoint, with their sizes.
fn checkpoint_files(engine: &Engine, table: &str) -> Vec<(String, u64)> {
    engine
        .table(table)
        .unwrap()
        .snapshot()
        .manifest()
        .state
        .as_ref()
        .map_or_else(Vec::new, |state| {
            state.files.iter().map(|f| (f.path.clone(), f.bytes)).collect()
        })
}

/// An engine on a temporary directory with `rows` orders and the customers.
async fn load(rows: usize, dir: &tempfile::TempDir) -> Engine {
    let engine = builder(dir).open().await.expect("engine");
    let mut random = Random(0x9E37_79B9_7F4A_7C15);
    engine
        .session()
        .register_table("src_orders", Arc::new(orders(0, rows, &mut random)))
        .unwrap();
    engine
        .session()
        .register_table("src_customers", Arc::new(customers()))
        .unwrap();
    engine
        .sql(
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT NOT NULL, amount DOUBLE);
             INSERT INTO orders SELECT * FROM src_orders;
             CREATE TABLE customers (id BIGINT PRIMARY KEY, region TEXT NOT NULL);
             INSERT INTO customers SELECT * FROM src_customers;",
        )
        .await
        .expect("load");
    engine.session().deregister_table("src_orders").unwrap();
    engine
}

/// Peak resident memory of this process so far.
fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l[6..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

async fn timed(engine: &Engine, sql: &str) -> Duration {
    let started = Instant::now();
    engine.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    started.elapsed()
}

/// The queries of the refresh comparison: the aggregate by customer (100,000 groups, so that
/// 1 % of the orders changed touches most groups) and one whose groups are ten consecutive
/// orders (1,000,000 groups: the output changes in proportion to the input). The first column
/// is the group key.
const REFRESHED: [(&str, &str); 2] = [
    ("by customer", AGGREGATE),
    (
        "per 10 orders",
        "SELECT id / 10 AS bucket, count(*) AS orders, sum(amount) AS total FROM orders GROUP BY id / 10",
    ),
];

async fn refresh_part(rows: usize, runs: usize) {
    let only = std::env::var("ONLY").unwrap_or_default();
    for (name, query) in REFRESHED
        .into_iter()
        .filter(|(n, _)| only.is_empty() || only.contains(n))
    {
        println!("INCREMENTAL versus FULL, {name}: {query}");
        refresh_query(rows, runs, query).await;
    }
}

async fn refresh_query(rows: usize, runs: usize, query: &str) {
    let key = if query.contains("bucket") {
        "bucket"
    } else {
        "customer_id"
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = load(rows, &dir).await;
    for mode in ["FULL", "INCREMENTAL"] {
        engine
            .sql(&format!(
                "CREATE MATERIALIZED TABLE mt_{} FRESHNESS = INTERVAL '1' DAY REFRESH_MODE = {mode} AS {query}",
                mode.to_lowercase()
            ))
            .await
            .expect("create");
    }
    // The first incremental refresh rebuilds the operator state from the input versions the
    // table reflects: what reopening an engine costs.
    engine
        .sql("UPDATE orders SET amount = amount + 1 WHERE id = 0")
        .await
        .unwrap();
    let rebuild = timed(&engine, "ALTER MATERIALIZED TABLE mt_incremental REFRESH").await;
    let state = engine
        .sql("EXPLAIN MATERIALIZED TABLE mt_incremental")
        .await
        .unwrap()
        .iter()
        .map(|b| {
            freshet::datafusion::arrow::util::pretty::pretty_format_batches(std::slice::from_ref(b))
                .unwrap()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    println!(
        "state rebuild (restart recovery) over {rows} orders: {:.3} s",
        rebuild.as_secs_f64()
    );
    for line in state.lines().filter(|l| l.contains("state")) {
        println!("  {}", line.trim_matches(|c| c == '|' || c == ' '));
    }
    println!("  peak memory so far: {}", peak_memory());
    let shares: Vec<f64> = std::env::var("SHARES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0.001, 0.01, 0.1]);
    for share in shares {
        let every = (1.0 / share) as usize;
        let mut full = Vec::new();
        let mut incremental = Vec::new();
        let mut written = Vec::new();
        for run in 0..runs {
            engine
                .sql(&format!(
                    "UPDATE orders SET amount = amount + 1 WHERE id % {every} = {}",
                    run % every
                ))
                .await
                .unwrap();
            full.push(timed(&engine, "ALTER MATERIALIZED TABLE mt_full REFRESH").await);
            checkpoint_due_next(&engine).await;
            let before = checkpoint_files(&engine, "mt_incremental");
            incremental.push(timed(&engine, "ALTER MATERIALIZED TABLE mt_incremental REFRESH").await);
            let after = checkpoint_files(&engine, "mt_incremental");
            if after != before
                && let Some((_, bytes)) = after.last()
            {
                written.push((*bytes, after.len() > 1));
            }
            eprintln!(
                "  {:.1}% run {}: full {:?}, incremental {:?}",
                share * 100.0,
                run + 1,
                full[run],
                incremental[run]
            );
        }
        let (f, i) = (median(full).as_secs_f64(), median(incremental).as_secs_f64());
        println!(
            "{:>5.1}% of {rows} orders changed: FULL {f:.3} s, INCREMENTAL {i:.3} s, speed-up {:.1}x (median of {runs})",
            share * 100.0,
            f / i
        );
        if !written.is_empty() {
            let deltas: Vec<u64> = written.iter().filter(|w| w.1).map(|w| w.0).collect();
            let wholes: Vec<u64> = written.iter().filter(|w| !w.1).map(|w| w.0).collect();
            println!(
                "  checkpoints written: {} deltas (median {:.2} MiB), {} whole (median {:.2} MiB)",
                deltas.len(),
                mib(deltas),
                wholes.len(),
                mib(wholes)
            );
        }
    }
    // Float sums agree up to rounding: DataFusion adds in its own order, the incremental sum
    // in the order of the changes.
    let differing = engine
        .sql(&format!(
            "SELECT count(*) FROM mt_full f FULL JOIN mt_incremental i ON f.{key} = i.{key} \
             WHERE f.{key} IS NULL OR i.{key} IS NULL OR f.orders <> i.orders \
             OR abs(f.total - i.total) > 1e-9 * greatest(abs(f.total), 1.0)",
        ))
        .await
        .unwrap();
    let differing = differing[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .map(|c| c.value(0));
    assert_eq!(differing, Some(0), "both tables agree");
    println!("  peak memory: {}", peak_memory());
    engine.close().await;

    // A restart: the engine opens again and its first refresh restores the operator state
    // from the table's checkpoint (and replays the changes since it) instead of rebuilding it.
    let opened = Instant::now();
    let engine = builder(&dir).open().await.expect("engine");
    let open = opened.elapsed();
    engine
        .sql("UPDATE orders SET amount = amount + 1 WHERE id = 1")
        .await
        .unwrap();
    let restored = timed(&engine, "ALTER MATERIALIZED TABLE mt_incremental REFRESH").await;
    let record = RefreshRecord::of(&engine.table("mt_incremental").unwrap().snapshot()).expect("a refresh record");
    let reason = record.reason.unwrap_or_default();
    assert!(reason.contains("restored"), "the restart restored the state: {reason}");
    let files = checkpoint_files(&engine, "mt_incremental");
    let checkpoint: u64 = files.iter().map(|f| f.1).sum();
    println!(
        "restart over {rows} orders: open {:.3} s, first refresh with the state restored from its checkpoint \
         ({:.1} MiB in {} files) {:.3} s, together {:.3} s (the state's rebuild took {:.3} s)",
        open.as_secs_f64(),
        checkpoint as f64 / (1 << 20) as f64,
        files.len(),
        restored.as_secs_f64(),
        (open + restored).as_secs_f64(),
        rebuild.as_secs_f64()
    );
    engine.close().await;
}

/// The median of byte counts, in MiB (0 for none).
fn mib(mut bytes: Vec<u64>) -> f64 {
    bytes.sort_unstable();
    bytes.get(bytes.len() / 2).map_or(0.0, |&b| b as f64 / (1 << 20) as f64)
}

async fn throughput_part(base: usize) {
    let only = std::env::var("ONLY").unwrap_or_default();
    for (name, query) in QUERIES.into_iter().filter(|(n, _)| only.is_empty() || only.contains(n)) {
        for (txn, count) in [(100usize, 100usize), (100_000, 5)] {
            let dir = tempfile::tempdir().expect("temp dir");
            let engine = load(base, &dir).await;
            engine
                .sql(&format!(
                    "CREATE MATERIALIZED TABLE mt FRESHNESS = INTERVAL '1' DAY REFRESH_MODE = INCREMENTAL AS {query}"
                ))
                .await
                .expect("create");
            let mut random = Random(42);
            let mut next = base;
            // Warm the state up.
            engine
                .sql(&format!("INSERT INTO orders VALUES ({next}, 1, 1.0)"))
                .await
                .unwrap();
            next += 1;
            engine.sql("ALTER MATERIALIZED TABLE mt REFRESH").await.unwrap();
            let mut refresh = Duration::ZERO;
            let mut total = Duration::ZERO;
            for _ in 0..count {
                engine
                    .session()
                    .register_table("batch", Arc::new(orders(next, next + txn, &mut random)))
                    .unwrap();
                next += txn;
                let started = Instant::now();
                engine.sql("INSERT INTO orders SELECT * FROM batch").await.unwrap();
                // An update of as many old rows as a tenth of the transaction: retractions too.
                engine
                    .sql(&format!(
                        "UPDATE orders SET amount = amount + 1 WHERE id >= {} AND id < {}",
                        next - txn,
                        next - txn + txn / 10
                    ))
                    .await
                    .unwrap();
                let refreshed = timed(&engine, "ALTER MATERIALIZED TABLE mt REFRESH").await;
                refresh += refreshed;
                total += started.elapsed();
                engine.session().deregister_table("batch").unwrap();
            }
            let rows = (txn + txn / 10 * 2) * count;
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            println!(
                "{name:<16} txn {txn:>6} rows: {:>10.0} changed rows/s/core in refresh ({:>10.0} rows/s/core commit + refresh), {count} txns",
                rows as f64 / refresh.as_secs_f64() / cores as f64,
                rows as f64 / total.as_secs_f64() / cores as f64,
            );
            engine.close().await;
        }
    }
}

async fn latency_part(rate: usize, txn: usize, seconds: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = load(CUSTOMERS, &dir).await;
    engine
        .sql(&format!(
            "CREATE MATERIALIZED TABLE mt FRESHNESS = INTERVAL '1' SECOND REFRESH_MODE = CONTINUOUS AS {AGGREGATE}"
        ))
        .await
        .expect("create");
    let committed: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut versions = engine.table("mt").unwrap().subscribe();
    let watcher = {
        let engine = engine.clone();
        let committed = committed.clone();
        let latencies = latencies.clone();
        tokio::spawn(async move {
            while versions.changed().await.is_ok() {
                let seen = Instant::now();
                let Some(record) = RefreshRecord::of(&engine.table("mt").unwrap().snapshot()) else {
                    continue;
                };
                let reflected = record.inputs.get("orders").copied().unwrap_or(0);
                let mut committed = committed.lock().unwrap();
                let done: Vec<u64> = committed.range(..=reflected).map(|(v, _)| *v).collect();
                for version in done {
                    if let Some(at) = committed.remove(&version) {
                        latencies.lock().unwrap().push(seen - at);
                    }
                }
            }
        })
    };
    let interval = Duration::from_secs_f64(txn as f64 / rate as f64);
    let mut random = Random(7);
    let mut next = CUSTOMERS;
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(seconds as u64) {
        tick.tick().await;
        engine
            .session()
            .register_table("batch", Arc::new(orders(next, next + txn, &mut random)))
            .unwrap();
        next += txn;
        engine.sql("INSERT INTO orders SELECT * FROM batch").await.unwrap();
        let version = engine.table("orders").unwrap().snapshot().version();
        committed.lock().unwrap().insert(version, Instant::now());
        engine.session().deregister_table("batch").unwrap();
        sent += txn;
    }
    let achieved = sent as f64 / started.elapsed().as_secs_f64();
    // Let the last refreshes land.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !committed.lock().unwrap().is_empty() && Instant::now() < deadline {
        engine.wait_for_refreshes().await;
    }
    watcher.abort();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "CONTINUOUS aggregate, {achieved:.0} input rows/s sustained (target {rate}) in {txn}-row commits for {seconds} s: \
         commit-to-visible latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} commits",
        pick(0.5),
        pick(0.99),
        pick(1.0),
        latencies.len()
    );
    println!("  peak memory: {}", peak_memory());
    engine.close().await;
}

fn main() {
    support::allocator::configure();
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "refresh,throughput,latency".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("machine: {}; commit: {}", machine(), commit());
    runtime.block_on(async {
        if parts.contains("refresh") {
            refresh_part(env_usize("ROWS", 10_000_000), env_usize("RUNS", 3).max(1)).await;
        }
        if parts.contains("throughput") {
            throughput_part(env_usize("BASE", 1_000_000)).await;
        }
        if parts.contains("latency") {
            latency_part(
                env_usize("RATE", 100_000),
                env_usize("TXN", 1_000),
                env_usize("SECONDS", 10),
            )
            .await;
        }
    });
}
