//! `freshet serve`: the engine over the Postgres wire protocol and HTTP until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command};
use freshet::Engine;
use freshet_server::{Server, ServerOptions};

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
             server.shutdown-grace, and any SET key",
        ))
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
                _ => engine_settings.push((key, value)),
            }
        }
    }
    options.pg_listen = address(matches.get_one::<String>("pg-listen").cloned(), options.pg_listen);
    options.http_listen = address(matches.get_one::<String>("http-listen").cloned(), options.http_listen);

    let engine = match Engine::builder().location(location).open().await {
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
