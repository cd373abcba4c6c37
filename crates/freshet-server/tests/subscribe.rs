//! Subscriptions: each committed version's changes, as they commit, over the wire (rows and
//! `COPY ... TO STDOUT`) and over HTTP as server-sent events.

use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::{connect, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_each_commit_as_it_happens() {
    let server = start().await;
    let writer = connect(&server).await;
    writer
        .batch_execute(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, name VARCHAR); INSERT INTO t VALUES (1, 'a');
             CREATE MATERIALIZED TABLE n FRESHNESS = INTERVAL '1' SECOND AS SELECT COUNT(*) AS c FROM t",
        )
        .await
        .unwrap();
    let reader = connect(&server).await;
    let rows = reader
        .query_raw("SUBSCRIBE TO t", std::iter::empty::<i64>())
        .await
        .unwrap();
    let mut rows = Box::pin(rows);
    let first = rows.try_next().await.unwrap().unwrap();
    let snapshot_version: i64 = first.get("_version");
    assert_eq!(
        (first.get::<_, i64>("_weight"), first.get::<_, i64>("id")),
        (1, 1),
        "the snapshot comes first"
    );

    writer
        .batch_execute("UPDATE t SET name = 'b' WHERE id = 1")
        .await
        .unwrap();
    let old = rows.try_next().await.unwrap().unwrap();
    let new = rows.try_next().await.unwrap().unwrap();
    assert_eq!(old.get::<_, i64>("_version"), snapshot_version + 1);
    assert_eq!(
        (old.get::<_, i64>("_weight"), old.get::<_, &str>("name")),
        (-1, "a"),
        "deletions first"
    );
    assert_eq!((new.get::<_, i64>("_weight"), new.get::<_, &str>("name")), (1, "b"));

    // A materialized table too, through COPY as psql reads it, without its snapshot.
    let copier = connect(&server).await;
    let copy = copier
        .copy_out("COPY (SUBSCRIBE TO n WITH (snapshot = false)) TO STDOUT")
        .await
        .unwrap();
    let mut copy = Box::pin(copy);
    writer
        .batch_execute("INSERT INTO t VALUES (2, 'c'); ALTER MATERIALIZED TABLE n REFRESH")
        .await
        .unwrap();
    let mut lines = String::new();
    while lines.lines().count() < 2 {
        let chunk = copy.next().await.unwrap().unwrap();
        lines.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let mut lines: Vec<&str> = lines.lines().map(|l| l.split_once('\t').unwrap().1).collect();
    lines.sort();
    assert_eq!(lines, ["-1\t1", "1\t2"], "the count went from 1 to 2");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_subscriptions_are_server_sent_events() {
    let server = start().await;
    let writer = connect(&server).await;
    writer
        .batch_execute("CREATE TABLE e (k BIGINT, v VARCHAR)")
        .await
        .unwrap();
    let http = server.http_address().unwrap();
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let request = format!("GET /api/v1/tables/e/changes?snapshot=false HTTP/1.1\r\nHost: {http}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    // The headers, up to the blank line.
    let status = lines.next_line().await.unwrap().unwrap();
    assert!(status.contains("200"), "{status}");
    while !lines.next_line().await.unwrap().unwrap().is_empty() {}
    writer.batch_execute("INSERT INTO e VALUES (7, 'seven')").await.unwrap();
    let data = loop {
        let line = lines.next_line().await.unwrap().unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            break data.to_string();
        }
    };
    let rows: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([{"_version": 2, "_weight": 1, "k": 7, "v": "seven"}])
    );
    let (status, body) = crate::http::request(http, "GET", "/api/v1/tables/nowhere/changes", None).await;
    assert_eq!(status, 404, "{body}");
    server.shutdown().await;
}
