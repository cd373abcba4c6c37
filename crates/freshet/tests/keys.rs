//! Primary keys of base tables: how an insert checks its keys.

use freshet::Engine;

use crate::incremental::value;

/// A few rows inserted into a keyed table whose key index is not built have their keys looked
/// up in the table itself (a scan of the key columns, pruned by the row groups' statistics):
/// duplicates are refused as with the index, across files and row groups, for keys of one and
/// of two columns, and keys deleted earlier in the statement may come back. Under a memory
/// limit the index cannot fit in, that shows which way a write went: after
/// `PROBES_BEFORE_INDEX` (16) such writes the next one builds the index, and fails.
#[tokio::test]
async fn a_few_inserted_keys_are_looked_up_in_the_table_rather_than_in_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Engine::builder()
            .location(dir.path().display().to_string())
            .memory_limit(1 << 20)
            .max_file_rows(50_000)
            .open()
    };
    let engine = open().await.unwrap();
    engine
        .sql(
            "CREATE TABLE k (id BIGINT PRIMARY KEY, v BIGINT);
             INSERT INTO k SELECT value, 0 FROM generate_series(1, 200000);
             CREATE TABLE c (a INT, b VARCHAR, v INT, PRIMARY KEY (a, b));
             INSERT INTO c SELECT CAST(value % 1000 AS INT), 'b' || CAST(value / 1000 AS VARCHAR), 0
               FROM generate_series(0, 199999)",
        )
        .await
        .unwrap();
    engine.close().await;
    let engine = open().await.unwrap();
    let refused = |sql: &'static str| {
        let engine = &engine;
        async move {
            let error = engine.sql(sql).await.unwrap_err().to_string();
            assert!(error.contains("duplicate primary key"), "{sql}: {error}");
        }
    };
    refused("INSERT INTO k VALUES (0, 1), (150001, 1)").await;
    refused("INSERT INTO c VALUES (999, 'b199', 1)").await;
    refused("INSERT INTO c VALUES (5, 'x', 1), (5, 'x', 2)").await;
    engine.sql("INSERT INTO k VALUES (0, 1), (200001, 1)").await.unwrap();
    engine
        .sql("INSERT INTO c VALUES (999, 'b200', 1), (1000, 'b0', 1)")
        .await
        .unwrap();
    // An update moving a key onto one it deletes in the same statement.
    engine.sql("UPDATE k SET id = id + 1 WHERE id >= 199999").await.unwrap();
    engine
        .sql("UPDATE c SET a = 1000 - a WHERE b = 'b7' AND a IN (1, 999)")
        .await
        .unwrap();
    assert_eq!(value(&engine, "SELECT count(*) FROM k").await, "200002");
    assert_eq!(value(&engine, "SELECT count(*) FROM k WHERE id >= 199999").await, "3");
    assert_eq!(value(&engine, "SELECT count(*) FROM c").await, "200002");
    assert_eq!(
        value(&engine, "SELECT count(*) FROM c WHERE b = 'b7' AND a IN (1, 999)").await,
        "2"
    );
    // Three statements into k so far looked keys up; thirteen more may, then the index is built.
    for i in 0..13 {
        engine
            .sql(&format!("INSERT INTO k VALUES ({}, 2)", 300_000 + i))
            .await
            .unwrap();
    }
    let error = engine
        .sql("INSERT INTO k VALUES (400000, 2)")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("its primary-key index needs") && error.contains("memory limit"),
        "{error}"
    );
    engine.close().await;
}
