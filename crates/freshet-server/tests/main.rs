//! The server driven by real clients on loopback: psql, tokio-postgres (the extended protocol,
//! types, cancel), psycopg when present, and HTTP.

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http;
mod openapi;
mod postgres;
mod psql;
mod psycopg;
mod schemathesis;
mod security;
mod subscribe;

use freshet::Engine;
use freshet_server::{RunningServer, Server, ServerOptions};

/// A server on ports the system picks, over an in-memory engine.
pub(crate) async fn start() -> RunningServer {
    let engine = Engine::builder().location("memory://").open().await.expect("engine");
    start_with(engine).await
}

pub(crate) async fn start_with(engine: Engine) -> RunningServer {
    Server::start(engine, options()).await.expect("server starts")
}

/// Loopback on ports the system picks, no credentials.
pub(crate) fn options() -> ServerOptions {
    ServerOptions {
        pg_listen: Some("127.0.0.1:0".into()),
        http_listen: Some("127.0.0.1:0".into()),
        // A client that stops reading holds its statement until then.
        shutdown_grace: std::time::Duration::from_secs(5),
        ..ServerOptions::default()
    }
}

/// A tokio-postgres client of the server.
pub(crate) async fn connect(server: &RunningServer) -> tokio_postgres::Client {
    let address = server.pg_address().expect("pg address");
    let config = format!("host={} port={} user=test dbname=freshet", address.ip(), address.port());
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(connection);
    client
}

/// The Python with `module` importable: `FRESHET_TEST_PYTHON` (the virtual environment
/// `.ci/run` makes) or `python3`. `None` outside CI when it is missing (the test then says it did
/// not run); in CI a missing module fails the test.
pub(crate) fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("FRESHET_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let found = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide {module} (FRESHET_TEST_PYTHON)"
    );
    eprintln!("{module} is not installed: this test did not run (set FRESHET_TEST_PYTHON)");
    None
}
