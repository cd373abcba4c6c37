//! TPC-H as a corpus for incremental maintenance: the eight tables from a TPC-H generator, all
//! 22 queries as materialized tables refreshed incrementally, and rounds of changes in the
//! spirit of the refresh functions — new orders with their line items (RF1), orders and line
//! items deleted (RF2) — plus updates of dimension and fact rows. After loading and after every
//! round, each table must equal DataFusion's batch evaluation of its query, and every refresh
//! must have been incremental.
//!
//! At the default scale factor (0.01) it runs in the test suite; a larger run:
//! `FRESHET_TPCH_SF=0.1 FRESHET_TPCH_ROUNDS=3 cargo test --release -p freshet --test main tpch`.

mod data;
mod queries;

use std::sync::Arc;

use freshet::{Engine, ManualClock};

use crate::incremental::check;
use data::{generate, load, round};

/// 2026-11-20 00:00:00 UTC.
const START_MS: i64 = 1_795_132_800_000;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_queries_are_maintained_incrementally_and_equal_batch_evaluation() {
    let sf: f64 = setting("FRESHET_TPCH_SF", 0.01);
    let rounds: i64 = setting("FRESHET_TPCH_ROUNDS", 2);
    let data = tempfile::tempdir().unwrap();
    generate(data.path(), sf);
    // State builds in epochs of 4,096 rows (lineitem is 60,000 at SF 0.01): aggregates over
    // joins take all but the last without output.
    let engine = Engine::builder()
        .setting("materialized-table.state-build.epoch-rows", "4096")
        .unwrap()
        .location("memory://")
        .clock(Arc::new(ManualClock::new(START_MS)))
        .target_partitions(2)
        .open()
        .await
        .unwrap();
    load(&engine, data.path()).await;
    engine.sql(queries::REVENUE_VIEW).await.unwrap();
    let fraction = format!("{}", 0.0001 / sf);
    let corpus: Vec<(String, String)> = queries::QUERIES
        .iter()
        .map(|(name, query)| (name.to_string(), query.replace(":fraction", &fraction)))
        .collect();
    for (name, query) in &corpus {
        engine
            .sql(&format!(
                "CREATE MATERIALIZED TABLE {name} FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL AS {query}"
            ))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    check(&engine, &corpus, 0, "load").await;
    // Not a vacuous check: the queries have rows at this scale.
    let mut empty = Vec::new();
    for (name, _) in &corpus {
        let batches = engine.sql(&format!("SELECT count(*) FROM {name}")).await.unwrap();
        let rows = freshet::datafusion::arrow::util::display::array_value_to_string(batches[0].column(0), 0).unwrap();
        eprintln!("{name}: {rows} rows");
        if rows == "0" {
            empty.push(name.clone());
        }
    }
    assert!(empty.is_empty(), "empty at scale factor {sf}: {empty:?}");
    for r in 1..=rounds {
        for statement in round(r, 97) {
            engine
                .sql(&statement)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        check(&engine, &corpus, r as usize, &format!("round {r}")).await;
    }
    engine.close().await;
}
