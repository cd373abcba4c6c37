//! Who may connect: SCRAM-SHA-256 passwords on the Postgres protocol (psql and tokio-postgres),
//! bearer tokens on HTTP, TLS on both, the refusal to listen beyond loopback unprotected, and
//! the directories statements may touch files in.
//!
//! `tests/tls/server.{crt,key}` is a certificate for `localhost` and `127.0.0.1` (P-256, valid
//! for a century) signed by the test CA `tests/tls/ca.crt`, whose key was thrown away; made with
//! `openssl req -x509` (the CA) and `openssl x509 -req` with `subjectAltName`,
//! `basicConstraints=CA:FALSE` and `extendedKeyUsage=serverAuth` (the server certificate).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use freshet::Engine;
use freshet_server::{RunningServer, Secret, Server, ServerOptions, TlsFiles};
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::tokio_rustls::rustls::pki_types::pem::PemObject;
use pgwire::tokio::tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::http::{exchange, request};
use crate::options;

const PASSWORD: &str = "correct horse";
const TOKEN: &str = "battery-staple-42";

fn tls_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
}

fn tls_files() -> TlsFiles {
    let dir = tls_dir();
    TlsFiles {
        certificate: dir.join("server.crt"),
        key: dir.join("server.key"),
    }
}

async fn start_protected(tls: bool) -> RunningServer {
    let engine = Engine::builder().location("memory://").open().await.unwrap();
    let options = ServerOptions {
        password: Some(Secret::new(PASSWORD)),
        http_token: Some(Secret::new(TOKEN)),
        tls: tls.then(tls_files),
        ..options()
    };
    Server::start(engine, options).await.expect("server starts")
}

async fn connect_as(
    server: &RunningServer,
    user: &str,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let address = server.pg_address().unwrap();
    let mut config = format!(
        "host={} port={} user={user} dbname=freshet",
        address.ip(),
        address.port()
    );
    if let Some(password) = password {
        config.push_str(&format!(" password='{password}'"));
    }
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// psql with a connection string and a password; its output or its error.
async fn psql(conninfo: String, password: &str, command: &str) -> Result<String, String> {
    let mut psql = Command::new("psql");
    psql.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-c", command])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10");
    let output = tokio::task::spawn_blocking(move || psql.output())
        .await
        .unwrap()
        .expect("psql is installed (.ci/run installs postgresql-client)");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_checked_by_scram() {
    let server = start_protected(false).await;

    let client = connect_as(&server, "freshet", Some(PASSWORD))
        .await
        .expect("the right password");
    let row = client.query_one("SELECT 41 + 1 AS n", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);

    for (user, password) in [("freshet", Some("wrong")), ("admin", Some(PASSWORD)), ("freshet", None)] {
        let refused = connect_as(&server, user, password).await.err().unwrap_or_else(|| {
            panic!("{user} with {password:?} must be refused");
        });
        if password.is_some() {
            assert_eq!(
                refused.code().map(|c| c.code()),
                Some("28P01"),
                "{user}/{password:?}: {refused}"
            );
        }
    }

    // libpq's own SCRAM.
    let address = server.pg_address().unwrap();
    let conninfo = format!(
        "host={} port={} user=freshet dbname=freshet",
        address.ip(),
        address.port()
    );
    let out = psql(conninfo.clone(), PASSWORD, "SELECT 'in' AS door").await.unwrap();
    assert!(out.contains(" in"), "{out}");
    let refused = psql(conninfo, "guess", "SELECT 1").await.unwrap_err();
    assert!(
        refused.to_lowercase().contains("password authentication failed"),
        "{refused}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_need_the_token() {
    let server = start_protected(false).await;
    let http = server.http_address().unwrap();
    // Probes carry no credentials.
    assert_eq!(request(http, "GET", "/health", None).await.0, 200);
    assert_eq!(request(http, "GET", "/ready", None).await.0, 200);

    assert_eq!(request(http, "GET", "/api/v1/openapi.json", None).await.0, 200);
    for path in ["/api/v1/tables", "/metrics", "/api/v1/materialized-tables/x"] {
        let (status, body) = request(http, "GET", path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["code"], "28000", "{body}");
    }
    let with = |header: &'static str| async move {
        let stream = tokio::net::TcpStream::connect(http).await.unwrap();
        exchange(stream, http, "GET", "/api/v1/tables", None, &[header]).await
    };
    assert_eq!(with("Authorization: Bearer battery-staple-4").await.0, 401);
    assert_eq!(with("Authorization: Basic battery-staple-42").await.0, 401);
    let (status, body) = with("Authorization: Bearer battery-staple-42").await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_protocols() {
    let server = start_protected(true).await;

    // psql verifies the certificate and binds SCRAM to the TLS channel (SCRAM-SHA-256-PLUS).
    let address = server.pg_address().unwrap();
    let conninfo = format!(
        "host=localhost hostaddr={} port={} user=freshet dbname=freshet sslmode=verify-full sslrootcert={} \
         channel_binding=require",
        address.ip(),
        address.port(),
        tls_dir().join("ca.crt").display()
    );
    let out = psql(conninfo, PASSWORD, "\\conninfo").await.unwrap();
    assert!(out.contains("SSL connection"), "{out}");

    // HTTPS with the same certificate; plain HTTP on that port gets no answer.
    let http = server.http_address().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&std::fs::read(tls_dir().join("ca.crt")).unwrap()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = pgwire::tokio::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (status, body) = exchange(
        tls,
        http,
        "GET",
        "/api/v1/tables",
        None,
        &[&format!("Authorization: Bearer {TOKEN}")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut plain = tokio::net::TcpStream::connect(http).await.unwrap();
    let answered = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = plain.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer).await;
        answer
    })
    .await
    .unwrap_or_default();
    assert!(!String::from_utf8_lossy(&answered).contains("200 OK"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_only_with_credentials() {
    let engine = Engine::builder().location("memory://").open().await.unwrap();
    let everywhere = |pg: bool| ServerOptions {
        pg_listen: pg.then(|| "0.0.0.0:0".into()),
        http_listen: (!pg).then(|| "0.0.0.0:0".into()),
        ..options()
    };
    let refused = Server::start(engine.clone(), everywhere(true))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("without a password"), "{refused}");
    let refused = Server::start(engine.clone(), everywhere(false))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("without a bearer token"), "{refused}");

    let protected = ServerOptions {
        pg_listen: Some("0.0.0.0:0".into()),
        http_listen: Some("0.0.0.0:0".into()),
        password: Some(Secret::new(PASSWORD)),
        http_token: Some(Secret::new(TOKEN)),
        ..options()
    };
    let server = Server::start(engine, protected).await.expect("protected, it listens");
    server.shutdown().await;

    // A certificate that is not one is a clear error at start.
    let engine = Engine::builder().location("memory://").open().await.unwrap();
    let broken = ServerOptions {
        tls: Some(TlsFiles {
            certificate: tls_files().key,
            key: tls_files().key,
        }),
        ..options()
    };
    let refused = Server::start(engine, broken).await.unwrap_err().to_string();
    assert!(refused.contains("TLS") && refused.contains("server.key"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_touch_files_only_where_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let engine = Engine::builder()
        .location("memory://")
        .allowed_paths([allowed.clone()])
        .unwrap()
        .open()
        .await
        .unwrap();
    let server = Server::start(engine, options()).await.unwrap();
    let client = crate::connect(&server).await;

    let inside = allowed.join("one.csv");
    client
        .batch_execute(&format!("COPY (SELECT 1 AS a) TO '{}' STORED AS CSV", inside.display()))
        .await
        .expect("inside the allowed directory");
    assert!(inside.exists());

    let outside = dir.path().join("outside.csv");
    for statement in [
        format!("COPY (SELECT 1 AS a) TO '{}' STORED AS CSV", outside.display()),
        format!(
            "COPY (SELECT 1 AS a) TO '{}/../outside.csv' STORED AS CSV",
            allowed.display()
        ),
        "CREATE EXTERNAL TABLE pw STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        format!(
            "CREATE TABLE src (a BIGINT) WITH ('connector' = 'filesystem', 'path' = 'file://{}', 'format' = 'csv')",
            dir.path().display()
        ),
    ] {
        let refused = client.batch_execute(&statement).await.unwrap_err();
        assert_eq!(
            refused.code().map(|c| c.code()),
            Some("42501"),
            "{statement}: {refused}"
        );
    }
    assert!(!outside.exists());
    server.shutdown().await;
}
