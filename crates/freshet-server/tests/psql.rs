//! psql, the machine's Postgres 15 client: its meta-commands read `pg_catalog`.

use std::process::Command;

use freshet_server::RunningServer;

use crate::start;

/// Runs psql's `-c` commands against the server; returns standard output, or the error output
/// when psql fails.
async fn psql(server: &RunningServer, commands: &[&str]) -> Result<String, String> {
    let address = server.pg_address().expect("pg address");
    let mut command = Command::new("psql");
    command
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-h"])
        .arg(address.ip().to_string())
        .arg("-p")
        .arg(address.port().to_string())
        .args(["-U", "test", "-d", "freshet"]);
    for c in commands {
        command.arg("-c").arg(c);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("psql runs")
        .expect("psql is installed (.ci/run installs postgresql-client)");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_statements_and_describes_tables() {
    let server = start().await;
    let out = psql(
        &server,
        &[
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer VARCHAR NOT NULL, amount DECIMAL(10, 2), at TIMESTAMP)",
            "INSERT INTO orders VALUES (1, 'ann', 9.50, TIMESTAMP '2024-01-01 10:00:00'), (2, 'bob', NULL, NULL)",
            "CREATE MATERIALIZED TABLE totals FRESHNESS = INTERVAL '1' SECOND AS \
             SELECT customer, COUNT(*) AS n FROM orders GROUP BY customer",
            "SELECT customer, n FROM totals ORDER BY customer",
        ],
    )
    .await
    .unwrap();
    assert!(out.contains("CREATE TABLE"), "{out}");
    assert!(out.contains("INSERT 0 2"), "{out}");
    assert!(out.contains("CREATE MATERIALIZED TABLE"), "{out}");
    assert!(out.contains(" ann      | 1"), "{out}");
    assert!(out.contains("(2 rows)"), "{out}");

    // \dt lists the tables; \d NAME describes one with Postgres' type names.
    let tables = psql(&server, &["\\dt"]).await.unwrap();
    assert!(tables.contains("orders") && tables.contains("totals"), "{tables}");
    let described = psql(&server, &["\\d orders"]).await.unwrap();
    for expected in [
        "customer",
        "text",
        "not null",
        "numeric",
        "timestamp without time zone",
        "bigint",
    ] {
        assert!(described.contains(expected), "{expected} in {described}");
    }
    let all = psql(&server, &["\\d"]).await.unwrap();
    assert!(all.contains("orders"), "{all}");
    let databases = psql(&server, &["\\l"]).await.unwrap();
    assert!(databases.contains("freshet"), "{databases}");
    // The "+" forms, roles and functions answer too (sizes and comments Freshet does not keep
    // are empty).
    let verbose = psql(&server, &["\\d+ orders"]).await.unwrap();
    assert!(verbose.contains("customer") && verbose.contains("Storage"), "{verbose}");
    let sized = psql(&server, &["\\dt+"]).await.unwrap();
    assert!(sized.contains("orders") && sized.contains("Size"), "{sized}");
    let roles = psql(&server, &["\\du"]).await.unwrap();
    assert!(roles.contains("Role name"), "{roles}");
    let functions = psql(&server, &["\\df"]).await.unwrap();
    assert!(functions.contains("List of functions"), "{functions}");

    // Errors carry their SQLSTATE (psql's verbose errors print it).
    let error = psql(&server, &["SELECT * FROM nowhere"]).await.unwrap_err();
    assert!(error.contains("42P01"), "{error}");
    server.shutdown().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_connects_over_the_unix_socket_which_only_this_user_may_use() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let engine = freshet::Engine::builder().location("memory://").open().await.unwrap();
    let options = freshet_server::ServerOptions {
        pg_listen: None,
        http_listen: None,
        pg_socket_dir: Some(dir.path().to_path_buf()),
        ..crate::options()
    };
    let server = freshet_server::Server::start(engine, options).await.unwrap();
    let socket = server.pg_socket().expect("a socket").to_path_buf();
    assert_eq!(socket, freshet_server::socket_file(dir.path()));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let mut command = Command::new("psql");
    command
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-h"])
        .arg(dir.path())
        .args(["-p", "5433", "-U", "freshet", "-d", "freshet"])
        .args(["-c", "CREATE TABLE t (x INT)", "-c", "INSERT INTO t VALUES (4), (5)"])
        .args(["-c", "SELECT sum(x) FROM t"]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.lines().any(|l| l == "9"), "{stdout}");
    // A server that is dropped takes its socket with it.
    drop(server);
    assert!(!socket.exists());
}
