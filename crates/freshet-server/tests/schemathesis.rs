//! The REST API fuzzed from its own OpenAPI spec by schemathesis (from the virtual environment
//! `.ci/run` makes, `FRESHET_TEST_PYTHON`): every response must match the spec (status codes,
//! content types, bodies), no request may make a server error, and requests that violate the
//! spec must be rejected. Requests the spec allows may still be refused (a query must be valid
//! SQL, which no schema says), so schemathesis's `positive_data_acceptance` is left out.

use std::process::Command;

use freshet::Engine;
use freshet_server::{Secret, Server, ServerOptions};

use crate::http::exchange;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_conforms_to_its_spec_under_fuzzing() {
    let Some(python) = crate::python_with("schemathesis") else {
        return;
    };
    // With a token: schemathesis also checks that requests without it are refused.
    let token = "fuzz-token";
    let engine = Engine::builder().location("memory://").open().await.unwrap();
    let options = ServerOptions {
        http_token: Some(Secret::new(token)),
        ..crate::options()
    };
    let server = Server::start(engine, options).await.unwrap();
    let http = server.http_address().unwrap();
    let authorization = format!("Authorization: Bearer {token}");
    // Something for the operations on existing resources to find.
    let sql = concat!(
        r#"{"sql": "CREATE TABLE t (a BIGINT, b VARCHAR); INSERT INTO t VALUES (1, 'x'); "#,
        r#"CREATE MATERIALIZED TABLE m FRESHNESS = INTERVAL '1' HOUR AS SELECT COUNT(*) AS c FROM t"}"#
    );
    let stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let (status, body) = exchange(stream, http, "POST", "/api/v1/sql", Some(sql), &[&authorization]).await;
    assert_eq!(status, 200, "{body}");
    let spec = format!("http://{http}/api/v1/openapi.json");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args([
                "-m",
                "schemathesis.cli",
                "run",
                &spec,
                "--checks",
                "all",
                "-H",
                &authorization,
            ])
            .args([
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "5",
                "--workers",
                "1",
            ])
            .args(["--seed", "20261205", "--phases", "examples,coverage,fuzzing"])
            .env("NO_COLOR", "1")
            .output()
    })
    .await
    .unwrap()
    .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.shutdown().await;
}
