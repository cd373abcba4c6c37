//! psycopg 3, the Python driver, from the virtual environment `.ci/run` makes
//! (`FRESHET_TEST_PYTHON`). Without it the test says it did not run, except in CI, where it
//! must.

use std::process::Command;

use crate::start;

const SCRIPT: &str = include_str!("psycopg_client.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_runs_simple_and_extended_queries() {
    let Some(python) = crate::python_with("psycopg") else {
        return;
    };
    let server = start().await;
    let port = server.pg_address().expect("pg address").port();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg("-c")
            .arg(SCRIPT)
            .arg(port.to_string())
            .output()
    })
    .await
    .unwrap()
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psycopg script failed:\n{stdout}\n{stderr}");
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    server.shutdown().await;
}
