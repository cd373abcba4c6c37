//! FULL refresh benchmark (issue: materialized tables).
//!
//! A FULL refresh of a materialized table (`ALTER MATERIALIZED TABLE m REFRESH` after a one-row
//! input change) versus DataFusion running the same query over the same Parquet files and
//! writing the result to Parquet itself (`COPY (query) TO`), side by side in one run,
//! alternating, median of the runs. Two queries over ROWS orders and 100,000 customers:
//! - aggregation: `SELECT customer_id, count(*), sum(amount) ... GROUP BY customer_id`;
//! - join: every order with its customer's region (ROWS output rows).
//!
//! Run: `cargo bench -p freshet --bench refresh` (env: ROWS, default 10,000,000; RUNS, default 3).
//! Prints what it measured, the machine and the commit.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark fails loudly

#[path = "data.rs"]
mod data;
#[path = "support.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use data::{Random, customers, orders};
use freshet::Engine;
use freshet::datafusion::prelude::SessionContext;
use support::{commit, env_usize, machine, median};

const QUERIES: [(&str, &str); 2] = [
    (
        "aggregation",
        "SELECT customer_id, count(*) AS orders, sum(amount) AS total FROM orders GROUP BY customer_id",
    ),
    (
        "join",
        "SELECT o.id, o.amount, c.region FROM orders o JOIN customers c ON o.customer_id = c.id",
    ),
];

async fn run(rows: usize, runs: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::builder()
        .location(dir.path().display().to_string())
        .compact_min_files(10_000)
        .open()
        .await
        .expect("engine");
    engine
        .session()
        .register_table(
            "src_orders",
            Arc::new(orders(0, rows, &mut Random(0x9E37_79B9_7F4A_7C15))),
        )
        .unwrap();
    engine
        .session()
        .register_table("src_customers", Arc::new(customers()))
        .unwrap();
    engine
        .sql(
            "CREATE TABLE orders (id BIGINT NOT NULL, customer_id BIGINT NOT NULL, amount DOUBLE);
             INSERT INTO orders SELECT * FROM src_orders;
             CREATE TABLE customers (id BIGINT PRIMARY KEY, region TEXT NOT NULL);
             INSERT INTO customers SELECT * FROM src_customers;",
        )
        .await
        .expect("load");
    let data_dir = |table: &str| {
        dir.path()
            .join("tables")
            .join(engine.table(table).unwrap().id())
            .join("data")
    };
    for (name, query) in QUERIES {
        engine
            .sql(&format!(
                "CREATE MATERIALIZED TABLE mt_{name} FRESHNESS = INTERVAL '1' DAY REFRESH_MODE = FULL AS {query}"
            ))
            .await
            .expect("create");
    }
    let mut next_id = rows as i64;
    for (name, query) in QUERIES {
        let mut freshet_times = Vec::new();
        let mut datafusion_times = Vec::new();
        for run in 0..runs {
            // DataFusion over the same Parquet files, writing its own Parquet file.
            let out = tempfile::tempdir().expect("temp dir");
            let ctx = SessionContext::new();
            for table in ["orders", "customers"] {
                ctx.sql(&format!(
                    "CREATE EXTERNAL TABLE {table} STORED AS PARQUET LOCATION '{}/'",
                    data_dir(table).display()
                ))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            }
            let started = Instant::now();
            ctx.sql(&format!(
                "COPY ({query}) TO '{}' STORED AS PARQUET",
                out.path().join("out.parquet").display()
            ))
            .await
            .expect("plan")
            .collect()
            .await
            .expect("copy");
            datafusion_times.push(started.elapsed());

            // Freshet: one new order, then a FULL refresh of the materialized table.
            engine
                .sql(&format!("INSERT INTO orders VALUES ({next_id}, 7, 1.0)"))
                .await
                .unwrap();
            next_id += 1;
            let started = Instant::now();
            engine
                .sql(&format!("ALTER MATERIALIZED TABLE mt_{name} REFRESH"))
                .await
                .expect("refresh");
            freshet_times.push(started.elapsed());
            eprintln!(
                "  {name} run {}: datafusion {:?}, freshet {:?}",
                run + 1,
                datafusion_times[run],
                freshet_times[run]
            );
        }
        let df = median(datafusion_times);
        let fr = median(freshet_times);
        let out_rows = engine.table(&format!("mt_{name}")).unwrap().snapshot().num_rows();
        println!("FULL refresh, {name} over {rows} orders ({out_rows} result rows), median of {runs}:");
        println!("  datafusion COPY (query) TO parquet : {:>8.3} s", df.as_secs_f64());
        println!("  freshet ALTER ... REFRESH          : {:>8.3} s", fr.as_secs_f64());
        println!(
            "  overhead = freshet / datafusion - 1 = {:+.1}%",
            (fr.as_secs_f64() / df.as_secs_f64() - 1.0) * 100.0
        );
    }
    engine.close().await;
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
    runtime.block_on(run(rows, runs));
}
