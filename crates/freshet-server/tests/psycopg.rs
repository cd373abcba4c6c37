//! psycopg 3, the Python driver, from the virtual environment `.ci/run` makes
//! (`FRESHET_TEST_PYTHON`). Without it the test says it did not run, except in CI, where it
//! must.

use std::process::Command;

use crate::start;

const SCRIPT: &str = include_str!("psycopg_client.py");

fn python() -> Option<String> {
    if let Ok(python) = std::env::var("FRESHET_TEST_PYTHON") {
        return Some(python);
    }
    let found = Command::new("python3").args(["-c", "import psycopg"]).output().ok()?;
    found.status.success().then(|| "python3".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_runs_simple_and_extended_queries() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide psycopg (FRESHET_TEST_PYTHON)"
        );
        eprintln!("psycopg is not installed: this test did not run (set FRESHET_TEST_PYTHON)");
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
