//! TPC-H as a corpus for incremental maintenance: the eight tables from a TPC-H generator, all
//! 22 queries as materialized tables refreshed incrementally, and rounds of changes in the
//! spirit of the refresh functions — new orders with their line items (RF1), orders and line
//! items deleted (RF2) — plus updates of dimension and fact rows. After loading and after every
//! round, each table must equal DataFusion's batch evaluation of its query, and every refresh
//! must have been incremental. Before the last round the engine is closed and opened again:
//! every table's state comes back from its checkpoint (a join's rows with their saved index)
//! and must go on equal to batch evaluation.
//!
//! At the default scale factor (0.01) it runs in the test suite; a larger run:
//! `FRESHET_TPCH_SF=0.1 FRESHET_TPCH_ROUNDS=3 cargo test --release -p freshet --test main tpch`.

mod data;
mod queries;

use std::sync::Arc;

use freshet::{Engine, ManualClock};

use crate::incremental::{check, multiset};
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
    let location = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    // State builds in epochs of 4,096 rows (lineitem is 60,000 at SF 0.01): aggregates over
    // joins take all but the last without output.
    let open = || {
        Engine::builder()
            .setting("materialized-table.state-build.epoch-rows", "4096")
            .unwrap()
            .location(location.path().display().to_string())
            .sync_writes(false)
            .clock(Arc::new(clock.clone()))
            .target_partitions(2)
            .open()
    };
    let mut engine = open().await.unwrap();
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
        if r == rounds {
            engine.close().await;
            engine = open().await.unwrap();
        }
        for statement in round(r, 97) {
            engine
                .sql(&statement)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        check(&engine, &corpus, r as usize, &format!("round {r}")).await;
        if r == rounds {
            let restored = engine
                .sql("SELECT name FROM freshet.refreshes WHERE reason LIKE '%restored from the table''s checkpoint%'")
                .await
                .unwrap();
            assert_eq!(
                multiset(&restored).len(),
                corpus.len(),
                "every table restored its state after the engine was opened again"
            );
        }
    }
    engine.close().await;
}
