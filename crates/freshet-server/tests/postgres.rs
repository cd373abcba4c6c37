//! The extended protocol with tokio-postgres: parameters, types, prepared statements, errors,
//! cancel, transactions and many clients.

use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::{connect, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_bind_parameters_of_every_common_type() {
    let server = start().await;
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR, price DECIMAL(10, 2), \
             on_sale BOOLEAN, added DATE, seen TIMESTAMP, weight DOUBLE, blob BYTEA)",
        )
        .await
        .unwrap();

    let insert = client
        .prepare("INSERT INTO items VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .await
        .unwrap();
    assert_eq!(
        insert.params()[0],
        Type::INT8,
        "the id's type is inferred from the column"
    );
    let seen = NaiveDate::from_ymd_opt(2024, 5, 1)
        .unwrap()
        .and_hms_opt(12, 30, 0)
        .unwrap();
    for id in 1..=3_i64 {
        let rows = client
            .execute(
                &insert,
                &[
                    &id,
                    &format!("item {id}"),
                    &"2.50".parse::<rust_decimal::Decimal>().unwrap(),
                    &(id % 2 == 0),
                    &NaiveDate::from_ymd_opt(2024, 1, id as u32).unwrap(),
                    &seen,
                    &(id as f64 * 0.5),
                    &vec![id as u8, 0xff],
                ],
            )
            .await
            .unwrap();
        assert_eq!(rows, 1, "INSERT's tag carries the rows written");
    }

    let select = client
        .prepare("SELECT id, name, on_sale, added, seen, weight, blob, price FROM items WHERE id >= $1 ORDER BY id")
        .await
        .unwrap();
    let columns: Vec<Type> = select.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(
        columns,
        [
            Type::INT8,
            Type::TEXT,
            Type::BOOL,
            Type::DATE,
            Type::TIMESTAMP,
            Type::FLOAT8,
            Type::BYTEA,
            Type::NUMERIC
        ]
    );
    let rows = client.query(&select, &[&2_i64]).await.unwrap();
    assert_eq!(rows.len(), 2);
    let row = &rows[0];
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, &str>(1), "item 2");
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, NaiveDate>(3), NaiveDate::from_ymd_opt(2024, 1, 2).unwrap());
    assert_eq!(row.get::<_, NaiveDateTime>(4), seen);
    assert_eq!(row.get::<_, f64>(5), 1.0);
    assert_eq!(row.get::<_, Vec<u8>>(6), vec![2, 0xff]);
    assert_eq!(row.get::<_, rust_decimal::Decimal>(7).to_string(), "2.50");

    // UPDATE and DELETE by key, with parameters, report their counts.
    assert_eq!(
        client
            .execute("UPDATE items SET name = $1 WHERE id = $2", &[&"renamed", &1_i64])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        client
            .execute("DELETE FROM items WHERE id = $1", &[&3_i64])
            .await
            .unwrap(),
        1
    );
    let names: Vec<String> = client
        .query("SELECT name FROM items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["renamed", "item 2"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_tables_and_jobs_work_over_the_wire() {
    let server = start().await;
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE orders (id BIGINT, customer VARCHAR, amount BIGINT);
             INSERT INTO orders VALUES (1, 'a', 10), (2, 'b', 20), (3, 'a', 5);
             CREATE MATERIALIZED TABLE by_customer FRESHNESS = INTERVAL '1' SECOND
               AS SELECT customer, SUM(amount) AS total, COUNT(*) AS n FROM orders GROUP BY customer",
        )
        .await
        .unwrap();
    let rows = client
        .query("SELECT customer, total FROM by_customer ORDER BY customer", &[])
        .await
        .unwrap();
    let totals: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(totals, [("a".to_string(), 15), ("b".to_string(), 20)]);

    // Statements whose columns are known only once they run, through the extended protocol.
    let shown = client.query("SHOW MATERIALIZED TABLES", &[]).await.unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].get::<_, &str>("name"), "by_customer");
    let explained = client
        .query("EXPLAIN MATERIALIZED TABLE by_customer", &[])
        .await
        .unwrap();
    assert!(!explained.is_empty());

    client
        .batch_execute(
            "CREATE TABLE sink (customer VARCHAR, amount BIGINT) WITH ('connector' = 'blackhole');
             ALTER MATERIALIZED TABLE by_customer SUSPEND",
        )
        .await
        .unwrap();
    let status: String = client
        .query_one(
            "SELECT status FROM freshet.materialized_tables WHERE name = $1",
            &[&"by_customer"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "SUSPENDED");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_sqlstate_codes() {
    let server = start().await;
    let client = connect(&server).await;
    let missing = client.query("SELECT * FROM nowhere", &[]).await.unwrap_err();
    assert_eq!(missing.code(), Some(&SqlState::UNDEFINED_TABLE), "{missing:?}");
    let syntax = client.batch_execute("SELEC 1").await.unwrap_err();
    assert_eq!(syntax.code(), Some(&SqlState::SYNTAX_ERROR), "{syntax:?}");
    client
        .batch_execute("CREATE TABLE k (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    client.batch_execute("INSERT INTO k VALUES (1)").await.unwrap();
    let duplicate = client.batch_execute("INSERT INTO k VALUES (1)").await.unwrap_err();
    assert_eq!(duplicate.code(), Some(&SqlState::UNIQUE_VIOLATION), "{duplicate:?}");
    let division = client.query("SELECT 1 / 0", &[]).await.unwrap_err();
    assert!(
        division.code().is_some_and(|c| c.code().starts_with("22")),
        "{division:?}"
    );
    // The connection is still usable after errors.
    assert_eq!(
        client
            .query_one("SELECT 1::BIGINT", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_a_running_query() {
    let server = start().await;
    let client = connect(&server).await;
    // Connections made later must not take over the first one's cancel key (they share a pid).
    let other = connect(&server).await;
    drop(other);
    let cancel = client.cancel_token();
    let mut running = server.running_statements();
    let canceller = tokio::spawn(async move {
        running.wait_for(|n| *n > 0).await.unwrap();
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    let started = std::time::Instant::now();
    let result = client
        .query("SELECT count(*) FROM range(100000000000) r WHERE r.value % 7 = 3", &[])
        .await;
    canceller.await.unwrap().unwrap();
    let error = result.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        client
            .query_one("SELECT 2::BIGINT", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_accepted_and_rollback_warns() {
    let server = start().await;
    let mut client = connect(&server).await;
    client.batch_execute("CREATE TABLE t (a BIGINT)").await.unwrap();
    let transaction = client.transaction().await.unwrap();
    transaction
        .execute("INSERT INTO t VALUES ($1)", &[&1_i64])
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    let transaction = client.transaction().await.unwrap();
    transaction
        .execute("INSERT INTO t VALUES ($1)", &[&2_i64])
        .await
        .unwrap();
    // Freshet commits each statement: the rollback cannot undo it (a notice says so).
    transaction.rollback().await.unwrap();
    let count: i64 = client.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(count, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_at_once_and_a_slow_one_stalls_nobody() {
    let server = start().await;
    let setup = connect(&server).await;
    setup
        .batch_execute("CREATE TABLE c (client BIGINT, n BIGINT)")
        .await
        .unwrap();
    // A client that starts a large result and does not read it.
    let slow = connect(&server).await;
    let slow_query = tokio::spawn(async move {
        let stream = slow
            .query_raw("SELECT * FROM range(50000000)", std::iter::empty::<i64>())
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(stream);
    });
    let mut tasks = Vec::new();
    for id in 0..8_i64 {
        let client = connect(&server).await;
        tasks.push(tokio::spawn(async move {
            for n in 0..5_i64 {
                client
                    .execute("INSERT INTO c VALUES ($1, $2)", &[&id, &n])
                    .await
                    .unwrap();
            }
            client
                .query_one("SELECT count(*) FROM c WHERE client = $1", &[&id])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }));
    }
    let started = std::time::Instant::now();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 5);
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    let total: i64 = setup.query_one("SELECT count(*) FROM c", &[]).await.unwrap().get(0);
    assert_eq!(total, 40);
    slow_query.abort();
    server.shutdown().await;
}
