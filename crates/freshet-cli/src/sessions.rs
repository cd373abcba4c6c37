//! Other sessions of the engine that holds a data directory.
//!
//! A data directory is opened by one engine at a time (it is locked). So that statements can
//! still be run against a directory while a shell or `freshet serve` has it open — a script
//! inserting rows while the shell `\watch`es a materialized table — both serve the Postgres
//! protocol on a Unix socket in the directory (`_freshet/.s.PGSQL.5433`, for this user only),
//! and a `freshet` that finds the directory locked connects there, as `--connect` would: its
//! statements run in the other engine as a session of their own. psql reaches the same socket
//! with `psql -h DIR/_freshet -p 5433 -U freshet`.

use std::path::{Path, PathBuf};

use freshet::Engine;
use freshet_server::{RunningServer, Server, ServerOptions};

use crate::remote::Remote;

/// Where the socket of the engine holding `directory` is.
fn socket_dir(directory: &Path) -> PathBuf {
    directory.join("_freshet")
}

/// The socket directory of the engine's data directory; `None` when its location is not a
/// local directory.
pub(crate) fn socket_dir_of(engine: &Engine) -> Option<PathBuf> {
    let dir = socket_dir(Path::new(engine.location()));
    dir.is_dir().then_some(dir)
}

/// Serves the engine on its directory's socket for as long as the server is kept (a shell's
/// sessions). `None` when the location is not a local directory or the socket cannot be made
/// (then sessions are not offered; the shell works as before).
pub(crate) async fn offer(engine: &Engine) -> Option<RunningServer> {
    let options = ServerOptions {
        pg_listen: None,
        http_listen: None,
        pg_socket_dir: Some(socket_dir_of(engine)?),
        ..ServerOptions::default()
    };
    match Server::start(engine.clone(), options).await {
        Ok(server) => Some(server),
        Err(e) => {
            eprintln!("note: other sessions cannot reach this shell ({e})");
            None
        }
    }
}

/// A connection to the engine holding `directory`, or why there is none; `None` when nothing
/// serves its socket (the directory is held by another program).
pub(crate) async fn attach(directory: &Path) -> Option<Result<Remote, String>> {
    let socket_dir = socket_dir(directory);
    if !freshet_server::socket_file(&socket_dir).exists() {
        return None;
    }
    let mut config = tokio_postgres::Config::new();
    config.host_path(&socket_dir);
    Some(Remote::connect_with(config).await)
}
