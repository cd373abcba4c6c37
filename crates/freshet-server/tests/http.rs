//! HTTP: health, SQL as JSON with errors by code, and Prometheus metrics.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::start;

/// One HTTP/1.1 request; the status code and the body.
pub(crate) async fn request(address: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(address).await.expect("connects");
    exchange(stream, address, method, path, body, &[]).await
}

/// One HTTP/1.1 request over `stream` with extra header lines; the status code and the body.
pub(crate) async fn exchange(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[&str],
) -> (u16, String) {
    let body = body.unwrap_or("");
    let headers: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         {headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("writes");
    let mut response = String::new();
    // A TLS peer may close without close_notify after `Connection: close`; what was read counts.
    let _ = stream.read_to_string(&mut response).await;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one series (its name and labels as written) in an exposition.
fn series_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} in {exposition}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_sql_and_metrics() {
    let server = start().await;
    let http = server.http_address().expect("http address");
    let (status, body) = request(http, "GET", "/health", None).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(request(http, "GET", "/ready", None).await.0, 200);

    let sql = r#"{"sql": "CREATE TABLE t (a BIGINT, b VARCHAR); INSERT INTO t VALUES (1, 'x'), (2, NULL)"}"#;
    assert_eq!(request(http, "POST", "/api/v1/sql", Some(sql)).await.0, 200);
    let sql =
        r#"{"sql": "CREATE MATERIALIZED TABLE n FRESHNESS = INTERVAL '1' SECOND AS SELECT COUNT(*) AS c FROM t"}"#;
    assert_eq!(request(http, "POST", "/api/v1/sql", Some(sql)).await.0, 200);
    let (status, body) = request(
        http,
        "POST",
        "/api/v1/sql",
        Some(r#"{"sql": "SELECT a, b FROM t ORDER BY a"}"#),
    )
    .await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["columns"], serde_json::json!(["a", "b"]));
    assert_eq!(json["rows"], serde_json::json!([{"a": 1, "b": "x"}, {"a": 2}]));

    let (status, body) = request(http, "POST", "/api/v1/sql", Some(r#"{"sql": "SELECT * FROM nowhere"}"#)).await;
    assert_eq!(status, 404);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["code"], "42P01");

    // A job, for the jobs' metrics; the INSERT returns once the job has read its bounded source
    // (whose ingestion is one of the commits counted below).
    let job = r#"{"sql": "CREATE TABLE g (x BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '10'); CREATE TABLE bh (x BIGINT) WITH ('connector' = 'blackhole'); SET 'table.dml-sync' = 'true'; INSERT INTO bh SELECT x FROM g"}"#;
    let (status, body) = request(http, "POST", "/api/v1/sql", Some(job)).await;
    assert_eq!(status, 200, "{body}");

    let (status, metrics) = request(http, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    // Every series the committed Grafana dashboard draws is exported.
    let dashboard = include_str!("../../../docs/grafana-dashboard.json");
    let mut names: Vec<&str> = dashboard
        .match_indices("freshet_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())]
        })
        .filter(|name| name.len() > "freshet_".len())
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        assert!(
            metrics.contains(&format!("\n{name}{{")) || metrics.contains(&format!("\n{name} ")),
            "{name} in {metrics}"
        );
    }
    assert!(
        metrics.contains("# TYPE freshet_materialized_table_data_lag_seconds gauge"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"freshet_materialized_table_status{table="n",status="ACTIVE"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"freshet_materialized_table_last_refresh_rows{table="n"} 1"#),
        "{metrics}"
    );
    // The first refresh (at CREATE) in the refresh counters and the duration histogram.
    assert!(
        metrics.contains(r#"freshet_materialized_table_refreshes_total{table="n",outcome="committed"} "#),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE freshet_materialized_table_refresh_duration_seconds histogram"),
        "{metrics}"
    );
    let count = series_value(
        &metrics,
        r#"freshet_materialized_table_refresh_duration_seconds_count{table="n"}"#,
    );
    let infinite = series_value(
        &metrics,
        r#"freshet_materialized_table_refresh_duration_seconds_bucket{table="n",le="+Inf"}"#,
    );
    let committed = series_value(
        &metrics,
        r#"freshet_materialized_table_refreshes_total{table="n",outcome="committed"}"#,
    );
    assert!(count >= 1.0 && count == infinite && count == committed, "{metrics}");
    // The datagen source, and the storage's commits and bytes.
    assert!(
        metrics.contains(r#"freshet_source_rows{source="g",connector="datagen"}"#),
        "{metrics}"
    );
    assert!(
        series_value(&metrics, "freshet_storage_commits_total") >= 3.0,
        "{metrics}"
    );
    assert!(
        series_value(&metrics, "freshet_storage_written_bytes_total") > 0.0,
        "{metrics}"
    );
    assert!(
        series_value(&metrics, "freshet_storage_read_bytes_total") > 0.0,
        "{metrics}"
    );
    server.shutdown().await;
}
