//! # Freshet over the network
//!
//! One engine, served three ways at once:
//! - the **Postgres wire protocol**: psql, drivers (psycopg, JDBC, tokio-postgres) and BI tools
//!   run Freshet's SQL, including the materialized-table and stream statements, with the
//!   extended protocol's parameters, cancel requests and SQLSTATE error codes ([`pg`]);
//! - **HTTP**: health and readiness, SQL over JSON, and Prometheus metrics at `/metrics`
//!   ([`http`]).
//!
//! [`Server::start`] listens and returns a [`RunningServer`], whose addresses tests read (they
//! listen on port 0) and whose [`RunningServer::shutdown`] stops accepting, lets running
//! statements finish for a grace period, cancels what is left (Freshet's commits are
//! cancel-safe, so nothing is half-committed) and closes the engine. `freshet serve` is this
//! with signals.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use freshet::Engine;
//! use freshet_server::{Server, ServerOptions};
//!
//! let engine = Engine::builder().location("memory://").open().await?;
//! let server = Server::start(engine, ServerOptions::default()).await?;
//! println!("psql -h 127.0.0.1 -p {}", server.pg_address().map(|a| a.port()).unwrap_or(0));
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod error;
pub mod http;
pub mod pg;
pub mod security;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use freshet::Engine;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use error::{ServerError, sqlstate};
pub use security::{Secret, TlsFiles, USER};

/// Where to listen, who may connect, and how long running statements may take to finish at
/// shutdown. Without a password and a token the server listens on loopback only.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The Postgres protocol's address (`None`: not served). Default `127.0.0.1:5433`.
    pub pg_listen: Option<String>,
    /// The HTTP address (`None`: not served). Default `127.0.0.1:8080`.
    pub http_listen: Option<String>,
    /// How long running statements may take to finish at shutdown before they are cancelled.
    pub shutdown_grace: Duration,
    /// The password of the Postgres protocol's user [`USER`], checked by SCRAM-SHA-256
    /// (`None`: any user connects without one — loopback only).
    pub password: Option<Secret>,
    /// The bearer token HTTP requests must carry, except `/health` and `/ready` (`None`: no
    /// token — loopback only).
    pub http_token: Option<Secret>,
    /// TLS for both protocols (`None`: plain TCP).
    pub tls: Option<TlsFiles>,
    /// A directory to serve the Postgres protocol in on a Unix socket as well, named as
    /// Postgres names it ([`socket_file`]), readable and writable by this user only (`psql -h DIR
    /// -p 5433`). The password, when set, is asked there too.
    pub pg_socket_dir: Option<PathBuf>,
}

/// The port in the name of the Unix socket a server creates in [`ServerOptions::pg_socket_dir`].
pub const SOCKET_PORT: u16 = 5433;

/// The Unix socket's file in `directory`, as Postgres clients look for it.
pub fn socket_file(directory: &Path) -> PathBuf {
    directory.join(format!(".s.PGSQL.{SOCKET_PORT}"))
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            pg_listen: Some("127.0.0.1:5433".into()),
            http_listen: Some("127.0.0.1:8080".into()),
            shutdown_grace: Duration::from_secs(30),
            password: None,
            http_token: None,
            tls: None,
            pg_socket_dir: None,
        }
    }
}

/// Serves an engine.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Listens on the configured addresses and starts serving `engine`.
    pub async fn start(engine: Engine, options: ServerOptions) -> Result<RunningServer, ServerError> {
        let (stop, stopped) = watch::channel(false);
        let activity = Arc::new(Activity::default());
        let mut tasks = JoinSet::new();
        let tls = options.tls.as_ref().map(security::Tls::load).transpose()?;
        // Both listeners are bound and checked before either serves: a refused start serves nothing.
        let pg_listener = match &options.pg_listen {
            Some(address) => {
                let listener = listen(address).await?;
                security::require_protection(
                    local_address(&listener, address)?,
                    options.password.is_some(),
                    "a password (server.password, or FRESHET_PASSWORD)",
                )?;
                Some(listener)
            }
            None => None,
        };
        let http_listener = match &options.http_listen {
            Some(address) => {
                let listener = listen(address).await?;
                security::require_protection(
                    local_address(&listener, address)?,
                    options.http_token.is_some(),
                    "a bearer token (server.http-token, or FRESHET_HTTP_TOKEN)",
                )?;
                Some(listener)
            }
            None => None,
        };
        #[cfg(unix)]
        let socket = options.pg_socket_dir.as_deref().map(unix_listener).transpose()?;
        #[cfg(not(unix))]
        let socket: Option<(PathBuf, ())> = None;
        let mut pg_address = None;
        let mut pg_listeners = Vec::new();
        if let Some(listener) = pg_listener {
            pg_address = listener.local_addr().ok();
            let acceptor = tls.as_ref().map(|tls| tls.postgres.clone());
            pg_listeners.push(pg::PgListener::Tcp(listener, acceptor));
        }
        let mut pg_socket = None;
        #[cfg(unix)]
        if let Some((path, listener)) = socket {
            pg_socket = Some(path);
            pg_listeners.push(pg::PgListener::Unix(listener));
        }
        #[cfg(not(unix))]
        let _ = socket;
        if !pg_listeners.is_empty() {
            let backend = Arc::new(pg::Backend::new(engine.clone())?);
            let mut handlers = pg::PgHandlers::new(backend, activity.clone());
            if let Some(password) = &options.password {
                handlers = handlers.with_password(password, tls.as_ref());
            }
            let handlers = Arc::new(handlers);
            for listener in pg_listeners {
                tasks.spawn(pg::serve(listener, handlers.clone(), stopped.clone()));
            }
        }
        let mut http_address = None;
        if let Some(listener) = http_listener {
            http_address = listener.local_addr().ok();
            let mut app = http::router(http::AppState::new(engine.clone(), activity.clone())?);
            if let Some(token) = &options.http_token {
                app = app.layer(axum::middleware::from_fn_with_state(
                    Arc::new(token.clone()),
                    security::require_token,
                ));
            }
            let mut stopped = stopped.clone();
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            match &tls {
                Some(tls) => {
                    let listener = security::TlsListener::new(listener, tls.http.clone()).map_err(|source| {
                        ServerError::Listen {
                            address: format!("{http_address:?}"),
                            source,
                        }
                    })?;
                    tasks.spawn(async move {
                        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                            tracing::warn!(error = %e, "HTTPS server stopped");
                        }
                    });
                }
                None => {
                    tasks.spawn(async move {
                        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                            tracing::warn!(error = %e, "HTTP server stopped");
                        }
                    });
                }
            }
        }
        Ok(RunningServer {
            engine,
            pg_address,
            pg_socket,
            http_address,
            stop,
            tasks,
            activity,
            grace: options.shutdown_grace,
        })
    }
}

/// Binds the Unix socket in `directory`, replacing a file left by a server that was killed,
/// for this user only.
#[cfg(unix)]
fn unix_listener(directory: &Path) -> Result<(PathBuf, tokio::net::UnixListener), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_file(directory);
    let failed = |source| ServerError::Listen {
        address: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(failed)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    Ok((path, listener))
}

async fn listen(address: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address).await.map_err(|source| ServerError::Listen {
        address: address.into(),
        source,
    })
}

fn local_address(listener: &TcpListener, address: &str) -> Result<SocketAddr, ServerError> {
    listener.local_addr().map_err(|source| ServerError::Listen {
        address: address.into(),
        source,
    })
}

/// Statements running now, across protocols: what shutdown waits for.
#[derive(Debug)]
pub(crate) struct Activity {
    running: watch::Sender<usize>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            running: watch::channel(0).0,
        }
    }
}

impl Activity {
    /// Counts a statement as running until the guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> Running {
        self.running.send_modify(|n| *n += 1);
        Running(self.clone())
    }

    pub(crate) fn running(&self) -> usize {
        *self.running.borrow()
    }

    async fn wait_idle(&self) {
        let _ = self.running.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// A running statement (see [`Activity::start`]).
pub(crate) struct Running(Arc<Activity>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A server that is serving; see [`Server::start`].
#[derive(Debug)]
pub struct RunningServer {
    engine: Engine,
    pg_address: Option<SocketAddr>,
    /// The Unix socket's file, removed when the server is dropped.
    pg_socket: Option<PathBuf>,
    http_address: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    activity: Arc<Activity>,
    grace: Duration,
}

impl RunningServer {
    /// The address the Postgres protocol is served on.
    pub fn pg_address(&self) -> Option<SocketAddr> {
        self.pg_address
    }

    /// The Unix socket the Postgres protocol is served on.
    pub fn pg_socket(&self) -> Option<&Path> {
        self.pg_socket.as_deref()
    }

    /// The address HTTP is served on.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_address
    }

    /// How many statements are running now, over every protocol; it changes as they start and
    /// end (`wait_for` on it awaits a count).
    pub fn running_statements(&self) -> watch::Receiver<usize> {
        self.activity.running.subscribe()
    }

    /// The engine being served.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops accepting connections, lets running statements finish (up to the grace period),
    /// cancels the rest and closes the engine.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(self.grace, self.activity.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "statements still running at shutdown are cancelled");
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.engine.clone().close().await;
    }
}

impl Drop for RunningServer {
    /// Stops serving at once (connections are aborted) and removes the Unix socket.
    fn drop(&mut self) {
        self.tasks.abort_all();
        if let Some(path) = &self.pg_socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `engine.serve(options)` for embedders: [`Server::start`] as a method of the engine.
pub trait Serve {
    /// Starts serving this engine; see [`Server::start`].
    fn serve(&self, options: ServerOptions) -> impl Future<Output = Result<RunningServer, ServerError>> + Send;
}

impl Serve for Engine {
    fn serve(&self, options: ServerOptions) -> impl Future<Output = Result<RunningServer, ServerError>> + Send {
        Server::start(self.clone(), options)
    }
}
