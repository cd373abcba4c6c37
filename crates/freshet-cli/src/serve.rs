//! `freshet serve`: the engine over the Postgres wire protocol and HTTP until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command};
use freshet::Engine;
use freshet_server::{Secret, Server, ServerOptions, TlsFiles};

/// The `serve` subcommand's arguments.
pub(crate) fn command() -> Command {
    Command::new("serve")
        .about("Serve the data directory over the Postgres wire protocol (psql, drivers) and HTTP (SQL, metrics)")
        .arg(
            Arg::new("pg-listen")
                .long("pg-listen")
                .value_name("ADDR")
                .help("Postgres protocol address, or `off` (default 127.0.0.1:5433)"),
        )
        .arg(
            Arg::new("http-listen")
                .long("http-listen")
                .value_name("ADDR")
                .help("HTTP address (SQL, /metrics, /health), or `off` (default 127.0.0.1:8080)"),
        )
        .arg(Arg::new("config").long("config").value_name("FILE").help(
            "Settings, one `key: value` (or `key = value`) a line: server.pg-listen, server.http-listen, \
             server.shutdown-grace, server.password, server.http-token, server.tls-cert, server.tls-key, \
             server.allowed-paths, and any SET key",
        ))
        .after_help(
            "Beyond loopback the server needs a password for the Postgres protocol (user `freshet`, \
             SCRAM-SHA-256) and a bearer token for HTTP: server.password / FRESHET_PASSWORD and \
             server.http-token / FRESHET_HTTP_TOKEN. TLS for both from server.tls-cert and server.tls-key \
             (PEM). Statements read and write files only under server.allowed-paths (directories, \
             comma-separated; none by default).",
        )
}

/// Settings from a `--config` file, in order.
fn read_config(path: &str) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut settings = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(':').or_else(|| line.split_once('=')) else {
            return Err(format!(
                "{path}, line {}: expected `key: value`, found `{line}`",
                number + 1
            ));
        };
        let unquote = |s: &str| s.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
        settings.push((unquote(key), unquote(value)));
    }
    Ok(settings)
}

fn address(value: Option<String>, default: Option<String>) -> Option<String> {
    match value {
        Some(v) if v.eq_ignore_ascii_case("off") => None,
        Some(v) => Some(v),
        None => default,
    }
}

/// Runs `freshet serve` on the engine at `location` until a signal.
pub(crate) async fn run(location: &str, matches: &ArgMatches) -> ExitCode {
    let mut options = ServerOptions::default();
    let mut engine_settings = Vec::new();
    let (mut tls_cert, mut tls_key) = (None, None);
    let mut allowed_paths = Vec::new();
    let secret = |value: String| (!value.is_empty()).then(|| Secret::new(value));
    options.password = std::env::var("FRESHET_PASSWORD").ok().and_then(secret);
    options.http_token = std::env::var("FRESHET_HTTP_TOKEN").ok().and_then(secret);
    if let Some(path) = matches.get_one::<String>("config") {
        let settings = match read_config(path) {
            Ok(settings) => settings,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        };
        for (key, value) in settings {
            match key.as_str() {
                "server.pg-listen" => options.pg_listen = address(Some(value), None),
                "server.http-listen" => options.http_listen = address(Some(value), None),
                "server.shutdown-grace" => match value.trim_end_matches('s').trim().parse::<u64>() {
                    Ok(seconds) => options.shutdown_grace = Duration::from_secs(seconds),
                    Err(_) => {
                        eprintln!("error: server.shutdown-grace: expected seconds, found `{value}`");
                        return ExitCode::FAILURE;
                    }
                },
                "server.password" => options.password = secret(value),
                "server.http-token" => options.http_token = secret(value),
                "server.tls-cert" => tls_cert = Some(value.into()),
                "server.tls-key" => tls_key = Some(value.into()),
                "server.allowed-paths" => allowed_paths.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(std::path::PathBuf::from),
                ),
                _ => engine_settings.push((key, value)),
            }
        }
    }
    options.pg_listen = address(matches.get_one::<String>("pg-listen").cloned(), options.pg_listen);
    options.http_listen = address(matches.get_one::<String>("http-listen").cloned(), options.http_listen);

    options.tls = match (tls_cert, tls_key) {
        (Some(certificate), Some(key)) => Some(TlsFiles { certificate, key }),
        (None, None) => None,
        _ => {
            eprintln!("error: TLS needs both server.tls-cert and server.tls-key");
            return ExitCode::FAILURE;
        }
    };

    let builder = match Engine::builder().location(location).allowed_paths(allowed_paths) {
        Ok(builder) => match matches.get_one::<usize>("memory-limit") {
            Some(&limit) => builder.memory_limit(limit),
            None => builder,
        },
        Err(e) => {
            eprintln!("error: server.allowed-paths: {e}");
            return ExitCode::FAILURE;
        }
    };
    let engine = match builder.open().await {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("error: cannot open {location}: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (key, value) in &engine_settings {
        let statement = format!("SET '{}' = '{}'", key.replace('\'', "''"), value.replace('\'', "''"));
        if let Err(e) = engine.sql(&statement).await {
            eprintln!("error: setting {key}: {e}");
            engine.close().await;
            return ExitCode::FAILURE;
        }
    }
    // `freshet --data-dir ...` and `psql -h DIR/_freshet` reach the engine on its directory's socket.
    #[cfg(unix)]
    {
        options.pg_socket_dir = crate::sessions::socket_dir_of(&engine);
    }
    let server = match Server::start(engine.clone(), options).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: {e}");
            engine.close().await;
            return ExitCode::FAILURE;
        }
    };
    if let Some(pg) = server.pg_address() {
        eprintln!("Postgres protocol on {pg}: psql -h {} -p {}", pg.ip(), pg.port());
    }
    if let Some(socket) = server.pg_socket().and_then(|s| s.parent()) {
        eprintln!(
            "Postgres protocol on the Unix socket in {}: psql -h {} -p 5433",
            socket.display(),
            socket.display()
        );
    }
    if let Some(http) = server.http_address() {
        eprintln!("HTTP on http://{http} (POST /api/v1/sql, GET /metrics, /health)");
    }
    eprintln!("serving {}; stop with Ctrl-C or SIGTERM", engine.location());
    wait_for_signal().await;
    eprintln!("shutting down: running statements finish, then the engine closes");
    server.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
