//! Commits that cannot be left ambiguous: a put whose answer was lost, a put that failed, a
//! statement cancelled while its commit is in flight, and two engines committing to one store.

use std::sync::Arc;

use freshet::datafusion::arrow::array::Int64Array;
use freshet::datafusion::object_store::memory::InMemory;
use freshet::datafusion::object_store::path::Path;
use freshet::storage::instrumented::{InstrumentedStore, Instruments};
use freshet::{Engine, FreshetError};

async fn engine_on(store: Arc<InMemory>, instruments: &Instruments) -> Engine {
    let instruments = instruments.clone();
    Engine::builder()
        .object_store(store, Path::default(), "memory://shared")
        .store_layer(move |store| Arc::new(InstrumentedStore::new(store, instruments)))
        .open()
        .await
        .unwrap()
}

async fn count(engine: &Engine, sql: &str) -> i64 {
    let batches = engine.sql(sql).await.unwrap();
    let column = batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    column.value(0)
}

fn manifests_of(engine: &Engine, table: &str) -> String {
    format!("{}/manifests/", engine.table(table).unwrap().id())
}

#[tokio::test]
async fn a_commit_whose_answer_was_lost_is_recognised_as_landed() {
    let instruments = Instruments::new();
    let engine = engine_on(Arc::new(InMemory::new()), &instruments).await;
    engine.sql("CREATE TABLE t (v BIGINT)").await.unwrap();
    // The store takes the manifest, then its answer is an error: the engine reads the version
    // back, finds its own transaction there, and reports the commit (a retry would duplicate).
    instruments.land_then_fail_next_write(&manifests_of(&engine, "t"));
    engine.sql("INSERT INTO t VALUES (1)").await.unwrap();
    assert!(!instruments.pending());
    assert_eq!(count(&engine, "SELECT count(*) FROM t").await, 1);
    engine.sql("INSERT INTO t VALUES (2)").await.unwrap();
    assert_eq!(count(&engine, "SELECT sum(v) FROM t").await, 3);
    assert_eq!(engine.table("t").unwrap().snapshot().version(), 3);

    // The same for the catalog.
    instruments.land_then_fail_next_write("_freshet/catalog/");
    engine.sql("CREATE TABLE u (v BIGINT)").await.unwrap();
    engine
        .sql("INSERT INTO u VALUES (7); CREATE TABLE w (v BIGINT)")
        .await
        .unwrap();
    assert_eq!(count(&engine, "SELECT sum(v) FROM u").await, 7);
}

#[tokio::test]
async fn a_failed_commit_commits_nothing_and_the_next_write_goes_on() {
    let instruments = Instruments::new();
    let engine = engine_on(Arc::new(InMemory::new()), &instruments).await;
    engine.sql("CREATE TABLE t (v BIGINT)").await.unwrap();
    instruments.fail_next_write(&manifests_of(&engine, "t"));
    let error = engine.sql("INSERT INTO t VALUES (1)").await.unwrap_err();
    assert!(error.to_string().contains("injected failure"), "{error}");
    assert_eq!(count(&engine, "SELECT count(*) FROM t").await, 0);
    engine.sql("INSERT INTO t VALUES (2)").await.unwrap();
    assert_eq!(count(&engine, "SELECT sum(v) FROM t").await, 2);
}

#[tokio::test]
async fn a_statement_cancelled_during_its_commit_leaves_the_engine_current() {
    let instruments = Instruments::new();
    let engine = engine_on(Arc::new(InMemory::new()), &instruments).await;
    engine.sql("CREATE TABLE t (v BIGINT)").await.unwrap();
    // The manifest's put is held (as the local store's write runs on a thread of its own, it
    // lands whether or not the statement still waits) and the statement is dropped meanwhile.
    let hold = instruments.hold_next_write(&manifests_of(&engine, "t"));
    tokio::select! {
        result = engine.sql("INSERT INTO t VALUES (1)") => panic!("the held commit finished: {result:?}"),
        () = hold.reached() => {}
    }
    hold.release();
    // The next write waits for the cancelled commit and builds on it, instead of failing on
    // a version it did not know of.
    engine.sql("INSERT INTO t VALUES (2)").await.unwrap();
    assert_eq!(count(&engine, "SELECT sum(v) FROM t").await, 3);

    let hold = instruments.hold_next_write("_freshet/catalog/");
    tokio::select! {
        result = engine.sql("CREATE TABLE u (v BIGINT)") => panic!("the held commit finished: {result:?}"),
        () = hold.reached() => {}
    }
    hold.release();
    engine.sql("CREATE TABLE w (v BIGINT)").await.unwrap();
    engine
        .sql("INSERT INTO u VALUES (5); INSERT INTO w VALUES (6)")
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT (SELECT sum(v) FROM u) + (SELECT sum(v) FROM w)").await,
        11
    );
}

#[tokio::test]
async fn a_writer_that_lost_a_race_to_another_engine_catches_up() {
    let store = Arc::new(InMemory::new());
    let first = engine_on(store.clone(), &Instruments::new()).await;
    first.sql("CREATE TABLE t (v BIGINT)").await.unwrap();
    let second = engine_on(store, &Instruments::new()).await;
    first.sql("INSERT INTO t VALUES (1)").await.unwrap();
    let error = second.sql("INSERT INTO t VALUES (2)").await.unwrap_err();
    assert!(matches!(error, FreshetError::ConcurrentCommit { .. }), "{error}");
    // Nothing of the refused statement landed, and its retry builds on the other's version.
    second.sql("INSERT INTO t VALUES (2)").await.unwrap();
    assert_eq!(count(&second, "SELECT sum(v) FROM t").await, 3);
    assert_eq!(second.table("t").unwrap().snapshot().version(), 3);
}

/// Rows of a snapshot, read whole.
async fn rows_of(snapshot: &Arc<freshet::storage::Snapshot>) -> usize {
    use futures::TryStreamExt;
    let batches: Vec<_> = snapshot.scan(None, false).try_collect().await.unwrap();
    batches.iter().map(|b| b.num_rows()).sum()
}

#[tokio::test]
async fn vacuum_keeps_what_a_running_query_reads() {
    let engine = engine_on(Arc::new(InMemory::new()), &Instruments::new()).await;
    engine
        .sql("CREATE TABLE t (v BIGINT); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (3)")
        .await
        .unwrap();
    // A query reading version 4 holds its snapshot while a compaction and a vacuum go by.
    let reading = engine.table("t").unwrap().snapshot();
    engine.sql("ALTER TABLE t COMPACT").await.unwrap();
    engine.sql("VACUUM t RETAIN 1 VERSIONS").await.unwrap();
    assert_eq!(rows_of(&reading).await, 3, "the files the query reads are still there");
    // Once the query is done, the next vacuum removes them.
    drop(reading);
    let removed = engine.sql("VACUUM t RETAIN 1 VERSIONS").await.unwrap();
    let files = removed[0]
        .column(1)
        .as_any()
        .downcast_ref::<freshet::datafusion::arrow::array::UInt64Array>()
        .unwrap()
        .value(0);
    assert_eq!(files, 3, "the three files the compaction replaced");
    assert_eq!(count(&engine, "SELECT sum(v) FROM t").await, 6);
}

#[tokio::test]
async fn vacuum_leaves_another_engines_transaction_alone() {
    let store = Arc::new(InMemory::new());
    let first = engine_on(store.clone(), &Instruments::new()).await;
    first.sql("CREATE TABLE t (v BIGINT)").await.unwrap();
    let instruments = Instruments::new();
    let second = Arc::new(engine_on(store, &instruments).await);
    // The second engine's insert has written its data file and waits at its commit...
    let hold = instruments.hold_next_write(&manifests_of(&second, "t"));
    let inserting = {
        let second = second.clone();
        tokio::spawn(async move { second.sql("INSERT INTO t VALUES (7)").await.map(|_| ()) })
    };
    hold.reached().await;
    // ...while the first vacuums everything: the file no manifest names yet is young, and stays.
    first.sql("VACUUM RETAIN 1 VERSIONS").await.unwrap();
    hold.release();
    inserting.await.unwrap().unwrap();
    assert_eq!(count(&second, "SELECT sum(v) FROM t").await, 7);
}

/// The background vacuum removes what expired reading only the removed versions' manifests and
/// a few more (the retention boundary, the oldest kept), not every retained manifest: that is
/// for its occasional sweep of orphan files, and for VACUUM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_vacuum_reads_what_expired_not_every_manifest() {
    let instruments = Instruments::new();
    let clock = freshet::ManualClock::new(1_795_132_800_000);
    let layer = instruments.clone();
    let engine = Engine::builder()
        .object_store(Arc::new(InMemory::new()), Path::default(), "memory://vacuum")
        .store_layer(move |store| Arc::new(InstrumentedStore::new(store, layer)))
        .clock(Arc::new(clock.clone()))
        .open()
        .await
        .unwrap();
    let advance = |hours: u64| {
        let (engine, clock) = (engine.clone(), clock.clone());
        async move {
            engine.wait_for_refreshes().await;
            clock.advance(std::time::Duration::from_secs(hours * 3600));
            engine.wait_for_refreshes().await;
        }
    };
    engine.sql("CREATE TABLE t (v BIGINT)").await.unwrap();
    // The first background vacuum (which also sweeps orphans) runs an hour after the start.
    advance(2).await;
    engine.sql("SET 'table.vacuum.interval' = '0 s'").await.unwrap();
    for v in 0..100 {
        engine.sql(&format!("INSERT INTO t VALUES ({v})")).await.unwrap();
    }
    advance(2).await;
    for v in 100..200 {
        engine.sql(&format!("INSERT INTO t VALUES ({v})")).await.unwrap();
    }
    let versions = "SELECT count(*) FROM table_history('t')";
    // 201 commits, and the background compactions' versions.
    let before = count(&engine, versions).await;
    assert!(before >= 201, "{before}");
    engine.sql("SET 'table.retention' = '1 h'").await.unwrap();
    engine.sql("SET 'table.vacuum.interval' = '1 h'").await.unwrap();
    instruments.reset_counters();
    advance(0).await;
    let reads = instruments.reads();
    // The versions of the first hundred inserts were replaced more than an hour ago: all but
    // the last of them go; the versions after it stay.
    let after = count(&engine, versions).await;
    let removed = before - after;
    assert!(removed >= 100 && after >= 101, "{before} -> {after}");
    assert!(
        reads < u64::try_from(removed).unwrap() + 30,
        "the {removed} removed manifests and a few more, not all {before}: {reads}"
    );
    assert_eq!(count(&engine, "SELECT count(*) FROM t").await, 200);
    engine.close().await;
}

/// Replacing rows by key (INSERT OR REPLACE, and a job upserting into a table with a key) reads
/// the row groups whose statistics may hold the keys, not the whole table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_read_the_row_groups_of_their_keys_not_the_whole_table() {
    let instruments = Instruments::new();
    let layer = instruments.clone();
    let engine = Engine::builder()
        .object_store(Arc::new(InMemory::new()), Path::default(), "memory://upserts")
        .store_layer(move |store| Arc::new(InstrumentedStore::new(store, layer)))
        .compact_min_files(1000)
        .open()
        .await
        .unwrap();
    engine
        .sql("CREATE TABLE t (id BIGINT PRIMARY KEY, v VARCHAR)")
        .await
        .unwrap();
    // Five files of 20,000 rows: their footers are a small part of them.
    for part in 0..5 {
        let first = part * 20_000;
        engine
            .sql(&format!(
                "INSERT INTO t SELECT value, md5(CAST(value AS VARCHAR)) || md5(CAST(value + 1 AS VARCHAR)) \
                 || md5(CAST(value + 2 AS VARCHAR)) FROM generate_series({first}, {})",
                first + 19_999
            ))
            .await
            .unwrap();
    }
    let replace = |a: i64, b: i64| format!("INSERT OR REPLACE INTO t VALUES ({a}, 'a'), ({b}, 'b')");
    // The first write builds the key index (every key read once).
    engine.sql(&replace(0, 1)).await.unwrap();
    instruments.reset_counters();
    engine.sql(&replace(5, 7)).await.unwrap();
    let narrow = instruments.bytes_read();
    instruments.reset_counters();
    engine.sql(&replace(6, 99_005)).await.unwrap();
    let wide = instruments.bytes_read();
    assert!(
        narrow * 3 < wide,
        "keys in one file read {narrow} bytes, keys across all {wide}"
    );
    assert_eq!(count(&engine, "SELECT count(*) FROM t").await, 100_000);
    assert_eq!(count(&engine, "SELECT count(*) FROM t WHERE v IN ('a', 'b')").await, 6);
    assert_eq!(
        count(&engine, "SELECT sum(id) FROM t WHERE v = 'b'").await,
        1 + 7 + 99_005
    );
    engine.close().await;
}
