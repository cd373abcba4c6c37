//! Materialized tables through the embedding API: schedules on a manual clock, restarts,
//! storage failures during a refresh, and the statement text SHOW CREATE gives back.

use std::sync::Arc;
use std::time::Duration;

use freshet::datafusion::arrow::array::{Array, Int64Array, StringArray};
use freshet::storage::instrumented::{InstrumentedStore, Instruments};
use freshet::{Engine, ManualClock, RefreshMode, Status, Trigger};

/// 2026-11-20 00:00:00 UTC.
const START_MS: i64 = 1_795_132_800_000;

async fn open(dir: &std::path::Path, clock: &ManualClock, instruments: &Instruments) -> Engine {
    let instruments = instruments.clone();
    Engine::builder()
        .location(dir.display().to_string())
        .clock(Arc::new(clock.clone()))
        .store_layer(move |store| Arc::new(InstrumentedStore::new(store, instruments)))
        .open()
        .await
        .unwrap()
}

/// An engine on a new directory, with a manual clock and failure injection.
async fn fresh() -> (tempfile::TempDir, ManualClock, Instruments, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let instruments = Instruments::new();
    let engine = open(dir.path(), &clock, &instruments).await;
    (dir, clock, instruments, engine)
}

async fn total(engine: &Engine) -> i64 {
    let batches = engine.sql("SELECT total FROM sums").await.unwrap();
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_engine_catches_up_on_missed_refreshes() {
    let (dir, clock, instruments, engine) = fresh().await;
    engine
        .sql(
            "CREATE TABLE t (v BIGINT); INSERT INTO t VALUES (1), (2);
             CREATE MATERIALIZED TABLE sums FRESHNESS = INTERVAL '1' MINUTE REFRESH_MODE = FULL
             AS SELECT sum(v) AS total FROM t",
        )
        .await
        .unwrap();
    assert_eq!(total(&engine).await, 3);
    let mut versions = engine.table("sums").unwrap().subscribe();
    let before = *versions.borrow_and_update();
    engine.sql("INSERT INTO t VALUES (10)").await.unwrap();
    clock.advance(Duration::from_secs(20));
    let info = engine.materialized_table("sums").await.unwrap();
    assert_eq!(info.data_lag_ms, Some(20_000));
    assert_eq!(info.mode, RefreshMode::Full);
    assert_eq!(info.next_refresh_ms, Some(START_MS + 60_000));
    assert!(!versions.has_changed().unwrap(), "no refresh before the schedule");
    // The scheduled refresh wakes those following the table's commits (the shell's \watch).
    clock.advance(Duration::from_secs(40));
    versions.changed().await.unwrap();
    assert_eq!(*versions.borrow(), before + 1);
    engine.wait_for_refreshes().await;
    engine.sql("INSERT INTO t VALUES (100)").await.unwrap();
    engine.close().await;

    // Five minutes pass while no engine runs; the next one refreshes at once.
    clock.advance(Duration::from_secs(300));
    let engine = open(dir.path(), &clock, &instruments).await;
    engine.wait_for_refreshes().await;
    assert_eq!(total(&engine).await, 113);
    let info = engine.materialized_table("sums").await.unwrap();
    let last = info.last_refresh.unwrap();
    assert_eq!(last.trigger, Trigger::Schedule);
    assert_eq!(last.started_at_ms, START_MS + 360_000);
    assert_eq!(info.data_lag_ms, Some(0));
    assert_eq!(info.next_refresh_ms, Some(START_MS + 420_000));
    engine.close().await;
}

/// `freshet.refreshes` as `name | trigger | algorithm | version`, in its order.
async fn refresh_rows(engine: &Engine) -> Vec<String> {
    let batches = engine
        .sql(
            "SELECT name || ' | ' || trigger || ' | ' || coalesce(algorithm, outcome) || ' | ' || \
             coalesce(CAST(version AS VARCHAR), '-') FROM freshet.refreshes",
        )
        .await
        .unwrap();
    let mut rows = Vec::new();
    for batch in &batches {
        let column = freshet::datafusion::arrow::compute::cast(
            batch.column(0),
            &freshet::datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let column = column.as_any().downcast_ref::<StringArray>().unwrap();
        rows.extend((0..column.len()).map(|i| column.value(i).to_string()));
    }
    rows
}

/// One process per statement (the command line) sees the refreshes committed by the processes
/// before it: `freshet.refreshes` reads them from the tables' retained versions, each once,
/// and this engine's own attempts follow them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_history_outlives_the_engine_that_refreshed() {
    let (dir, clock, instruments, engine) = fresh().await;
    for statement in [
        "CREATE TABLE t (v BIGINT); INSERT INTO t VALUES (1), (2);
         CREATE MATERIALIZED TABLE sums FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL
         AS SELECT sum(v) AS total FROM t",
        "CREATE MATERIALIZED TABLE everything FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = FULL
         AS SELECT v FROM t",
        "INSERT INTO t VALUES (10); ALTER MATERIALIZED TABLE sums REFRESH; ALTER TABLE sums COMPACT",
    ] {
        engine.sql(statement).await.unwrap();
        clock.advance(Duration::from_secs(1));
    }
    let before = refresh_rows(&engine).await;
    assert_eq!(before.len(), 3, "{before:?}");
    engine.close().await;

    clock.advance(Duration::from_secs(60));
    let engine = open(dir.path(), &clock, &instruments).await;
    // The compaction's version carries the last refresh's record but is no refresh.
    assert_eq!(refresh_rows(&engine).await, before);
    engine.sql("INSERT INTO t VALUES (100)").await.unwrap();
    engine.sql("ALTER MATERIALIZED TABLE sums REFRESH").await.unwrap();
    let after = refresh_rows(&engine).await;
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(after[..3], before[..]);
    assert!(after[3].starts_with("sums | manual | incremental | "), "{after:?}");
    assert_eq!(total(&engine).await, 113);
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_old_contents_and_is_retried() {
    let (_dir, clock, instruments, engine) = fresh().await;
    engine
        .sql(
            "CREATE TABLE t (v BIGINT); INSERT INTO t VALUES (1);
             CREATE MATERIALIZED TABLE sums FRESHNESS = INTERVAL '1' HOUR AS SELECT sum(v) AS total FROM t",
        )
        .await
        .unwrap();
    engine.sql("INSERT INTO t VALUES (5)").await.unwrap();
    let id = engine.table("sums").unwrap().id().to_string();
    // The refresh writes its data, then its commit (the manifest) fails.
    instruments.fail_next_write(&format!("{id}/manifests/"));
    clock.advance(Duration::from_secs(3_600));
    engine.wait_for_refreshes().await;
    assert_eq!(total(&engine).await, 1, "the previous version stays readable");
    let info = engine.materialized_table("sums").await.unwrap();
    assert_eq!(info.status, Status::Active);
    assert_eq!(info.failures, 1);
    assert!(
        info.last_error.as_deref().unwrap_or_default().contains("manifests"),
        "{info:?}"
    );
    // The retry comes a second later, not an hour later.
    assert_eq!(info.next_refresh_ms, Some(START_MS + 3_601_000));
    clock.advance(Duration::from_secs(1));
    engine.wait_for_refreshes().await;
    assert_eq!(total(&engine).await, 6);
    let info = engine.materialized_table("sums").await.unwrap();
    assert_eq!((info.failures, info.last_error), (0, None));
    engine.close().await;
}

#[tokio::test]
async fn show_create_gives_back_a_statement_that_creates_the_same_table() {
    let engine = Engine::builder().location("memory://").open().await.unwrap();
    engine
        .sql(
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, ds TEXT NOT NULL, amount BIGINT);
             CREATE MATERIALIZED TABLE daily (PRIMARY KEY (ds) NOT ENFORCED) COMMENT 'it''s daily'
               PARTITIONED BY (ds) WITH ('partition.fields.ds.date-formatter' = 'yyyy-MM-dd')
               FRESHNESS = INTERVAL '2' HOUR REFRESH_MODE = FULL
               AS SELECT ds, sum(amount) AS total FROM orders GROUP BY ds",
        )
        .await
        .unwrap();
    let text = |engine: &Engine| {
        let engine = engine.clone();
        async move {
            let batches = engine.sql("SHOW CREATE MATERIALIZED TABLE daily").await.unwrap();
            let column = batches[0].column(0).as_any().downcast_ref::<StringArray>().unwrap();
            column.value(0).to_string()
        }
    };
    let first = text(&engine).await;
    assert!(first.contains("COMMENT 'it''s daily'"), "{first}");
    let before = engine.materialized_table("daily").await.unwrap();
    engine.sql("DROP MATERIALIZED TABLE daily").await.unwrap();
    engine.sql(&first).await.unwrap();
    assert_eq!(text(&engine).await, first);
    let after = engine.materialized_table("daily").await.unwrap();
    assert_eq!(
        (
            after.freshness,
            after.mode,
            after.partitioned_by,
            after.options,
            after.comment
        ),
        (
            before.freshness,
            before.mode,
            before.partitioned_by,
            before.options,
            before.comment
        )
    );
}

#[tokio::test]
async fn a_downstream_table_reads_the_base_table_at_the_version_its_upstream_reflects() {
    let clock = ManualClock::new(START_MS);
    let engine = Engine::builder()
        .location("memory://")
        .clock(Arc::new(clock.clone()))
        .open()
        .await
        .unwrap();
    engine
        .sql(
            "CREATE TABLE t (v BIGINT); INSERT INTO t VALUES (1);
             CREATE MATERIALIZED TABLE up FRESHNESS = INTERVAL '1' DAY AS SELECT sum(v) AS s FROM t;
             INSERT INTO t VALUES (100);
             CREATE MATERIALIZED TABLE down FRESHNESS = INTERVAL '1' DAY AS
               SELECT up.s, (SELECT sum(v) FROM t) AS direct FROM up",
        )
        .await
        .unwrap();
    // `up` reflects t at version 2; `down` reads t directly at that same version, not at 3.
    let batches = engine.sql("SELECT s, direct FROM down").await.unwrap();
    let s = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    let direct = batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!((s, direct), (1, 1));
    let info = engine.materialized_table("down").await.unwrap();
    assert_eq!(info.last_refresh.unwrap().inputs.get("t"), Some(&2));
}

#[tokio::test]
async fn refresh_attempts_are_streamed_as_they_are_recorded() {
    let (_dir, clock, _instruments, engine) = fresh().await;
    let mut attempts = engine.refresh_attempts();
    engine.sql("CREATE TABLE t (k INT NOT NULL, v INT)").await.unwrap();
    engine
        .sql(
            "CREATE MATERIALIZED TABLE by_k (PRIMARY KEY (k) NOT ENFORCED) FRESHNESS = INTERVAL '1' HOUR \
             AS SELECT k, v FROM t",
        )
        .await
        .unwrap();
    let created = attempts.recv().await.unwrap();
    assert_eq!(
        (created.table.as_str(), created.outcome.as_str()),
        ("by_k", "committed")
    );
    // A duplicate key makes the scheduled refresh fail; the failure is in the stream.
    engine.sql("INSERT INTO t VALUES (1, 1), (1, 2)").await.unwrap();
    clock.advance(Duration::from_secs(3600));
    engine.wait_for_refreshes().await;
    let failed = attempts.recv().await.unwrap();
    assert_eq!(failed.trigger, Trigger::Schedule);
    assert_eq!(failed.outcome, "failed");
    assert!(failed.detail.unwrap().contains("duplicate"), "the error is named");
}

/// Waits for `table` to commit a version after `after`; fails the test after a minute of wall
/// time (a hang, not a timing assertion).
async fn committed_after(engine: &Engine, table: &str, after: u64) {
    let mut versions = engine.table(table).unwrap().subscribe();
    tokio::time::timeout(Duration::from_secs(60), versions.wait_for(|v| *v > after))
        .await
        .unwrap_or_else(|_| panic!("{table} committed nothing after version {after}"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_scheduled_refresh_does_not_hold_back_a_continuous_table() {
    let (_dir, clock, instruments, engine) = fresh().await;
    engine
        .sql(
            "CREATE TABLE a (v BIGINT); CREATE TABLE b (v BIGINT);
             CREATE MATERIALIZED TABLE slow FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = FULL AS SELECT count(*) AS n FROM b;
             CREATE MATERIALIZED TABLE fast FRESHNESS = INTERVAL '1' SECOND AS SELECT count(*) AS n FROM a",
        )
        .await
        .unwrap();
    // The hourly refresh of `slow` is held at its commit, as a long one would be.
    let slow = engine.table("slow").unwrap().id().to_string();
    let hold = instruments.hold_next_write(&format!("{slow}/manifests/"));
    engine.sql("INSERT INTO b VALUES (1)").await.unwrap();
    clock.advance(Duration::from_secs(3_600));
    hold.reached().await;
    // Meanwhile `fast` follows its input's commits.
    let before = engine.table("fast").unwrap().snapshot().version();
    engine.sql("INSERT INTO a VALUES (1), (2)").await.unwrap();
    committed_after(&engine, "fast", before).await;
    let n = engine.sql("SELECT n FROM fast").await.unwrap();
    let n = n[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
    assert_eq!(n, 2);
    hold.release();
    engine.wait_for_refreshes().await;
    let n = engine.sql("SELECT n FROM slow").await.unwrap();
    assert_eq!(
        n[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0),
        1
    );
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspend_during_a_refresh_stands() {
    let (_dir, clock, instruments, engine) = fresh().await;
    engine
        .sql(
            "CREATE TABLE t (v BIGINT); INSERT INTO t VALUES (1);
             CREATE MATERIALIZED TABLE sums FRESHNESS = INTERVAL '1' HOUR AS SELECT sum(v) AS total FROM t",
        )
        .await
        .unwrap();
    let id = engine.table("sums").unwrap().id().to_string();
    // A failed refresh: the next one, if it succeeds, clears the failure and records that.
    engine.sql("INSERT INTO t VALUES (5)").await.unwrap();
    instruments.fail_next_write(&format!("{id}/manifests/"));
    clock.advance(Duration::from_secs(3_600));
    engine.wait_for_refreshes().await;
    assert_eq!(engine.materialized_table("sums").await.unwrap().failures, 1);
    // The retry is held at its commit while the table is suspended.
    let hold = instruments.hold_next_write(&format!("{id}/manifests/"));
    clock.advance(Duration::from_secs(1));
    hold.reached().await;
    engine.sql("ALTER MATERIALIZED TABLE sums SUSPEND").await.unwrap();
    hold.release();
    engine.wait_for_refreshes().await;
    let info = engine.materialized_table("sums").await.unwrap();
    assert_eq!(info.status, Status::Suspended, "{info:?}");
    assert_eq!(total(&engine).await, 6, "the refresh under way committed");
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_ddl_goes_on_during_a_create_s_first_refresh() {
    let (_dir, _clock, instruments, engine) = fresh().await;
    engine
        .sql("CREATE TABLE t (v BIGINT); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    // The new table's first refresh commits its version 2: held there, as a long one would be.
    let hold = instruments.hold_next_write("manifests/00000000000000000002.json");
    let creating = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .sql("CREATE MATERIALIZED TABLE sums FRESHNESS = INTERVAL '1' HOUR AS SELECT sum(v) AS total FROM t")
                .await
                .map(|_| ())
        })
    };
    hold.reached().await;
    tokio::time::timeout(Duration::from_secs(60), engine.sql("CREATE TABLE other (x INT)"))
        .await
        .expect("CREATE TABLE waited for the other CREATE's refresh")
        .unwrap();
    // The name being created is taken meanwhile.
    let error = engine.sql("CREATE TABLE sums (x INT)").await.unwrap_err();
    assert!(error.to_string().contains("already exists"), "{error}");
    hold.release();
    creating.await.unwrap().unwrap();
    assert_eq!(total(&engine).await, 3);
    engine.close().await;
}
