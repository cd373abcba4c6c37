//! The REST API: its committed OpenAPI spec matches the code, and its resources work.

use crate::http::request;
use crate::start;

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

/// `docs/openapi.json` is what the code generates (`FRESHET_UPDATE_OPENAPI=1` rewrites it).
#[test]
fn the_committed_spec_is_the_codes() {
    let generated = freshet_server::http::api::openapi_json();
    if std::env::var_os("FRESHET_UPDATE_OPENAPI").is_some() {
        std::fs::write(SPEC, format!("{generated}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(SPEC).unwrap();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/openapi.json differs from the code's spec: run FRESHET_UPDATE_OPENAPI=1 cargo test -p freshet-server openapi"
    );
    let spec: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_tables_as_resources() {
    let server = start().await;
    let http = server.http_address().unwrap();
    let sql = r#"{"sql": "CREATE TABLE o (c VARCHAR, n BIGINT); INSERT INTO o VALUES ('a', 1), ('b', 2)"}"#;
    assert_eq!(request(http, "POST", "/api/v1/sql", Some(sql)).await.0, 200);

    let new = r#"{"name": "per_c", "query": "SELECT c, SUM(n) AS total FROM o GROUP BY c", "freshness": "INTERVAL '1' HOUR"}"#;
    let (status, body) = request(http, "POST", "/api/v1/materialized-tables", Some(new)).await;
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["status"], "ACTIVE");
    assert_eq!(created["columns"][1]["name"], "total");

    let (status, body) = request(http, "GET", "/api/v1/materialized-tables", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()[0]["name"],
        "per_c"
    );

    let change = r#"{"freshness": "INTERVAL '5' MINUTE"}"#;
    let (status, body) = request(http, "PATCH", "/api/v1/materialized-tables/per_c", Some(change)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["freshness"],
        "INTERVAL '5' MINUTE"
    );

    let (status, body) = request(http, "POST", "/api/v1/materialized-tables/per_c/suspend", None).await;
    assert_eq!(
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"].clone()
        ),
        (200, "SUSPENDED".into())
    );
    let (status, _) = request(http, "POST", "/api/v1/materialized-tables/per_c/resume", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        request(
            http,
            "POST",
            "/api/v1/sql",
            Some(r#"{"sql": "INSERT INTO o VALUES ('a', 5)"}"#)
        )
        .await
        .0,
        200
    );
    let (status, body) = request(http, "POST", "/api/v1/materialized-tables/per_c/refresh", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = request(http, "GET", "/api/v1/materialized-tables/per_c/refreshes", None).await;
    assert_eq!(status, 200);
    let history: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(history["rows"].as_array().unwrap().len() >= 2, "{history}");
    let (status, body) = request(http, "GET", "/api/v1/materialized-tables/per_c/explain", None).await;
    assert!(status == 200 && body.contains("incremental_plan"), "{body}");

    let (status, body) = request(http, "GET", "/api/v1/tables/o", None).await;
    assert_eq!(status, 200);
    let table: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((table["rows"].clone(), table["version"].clone()), (3.into(), 3.into()));
    let (status, body) = request(http, "GET", "/api/v1/tables/o/versions?limit=2", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["rows"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (status, body) = request(http, "GET", "/api/v1/tables", None).await;
    assert!(
        status == 200 && body.contains("\"per_c\"") && body.contains("\"o\""),
        "{body}"
    );

    assert_eq!(
        request(http, "DELETE", "/api/v1/materialized-tables/per_c", None)
            .await
            .0,
        204
    );
    let (status, body) = request(http, "GET", "/api/v1/materialized-tables/per_c", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["code"],
        "42P01"
    );
    let (status, _) = request(http, "GET", "/api/v1/jobs", None).await;
    assert_eq!(status, 200);
    server.shutdown().await;
}
