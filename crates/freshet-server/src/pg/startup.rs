//! A connection's start — authentication when the server has a password — and the registry
//! through which cancel requests (psql's Ctrl-C) find the connection they are for.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::sink::Sink;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, StartupHandler};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::{ClientInfo, ConnectionManager, PgWireConnectionState, RandomPidSecretKeyGenerator};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::SecretKey;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::{Cancel, Session};

/// Whether SCRAM can bind to the channel of this certificate (its signature algorithm must be
/// one SCRAM knows how to hash).
pub(crate) fn binds_channel(passwords: &Arc<dyn AuthSource>, certificate_pem: &[u8]) -> bool {
    ScramAuth::new(passwords.clone())
        .configure_certificate(certificate_pem)
        .is_ok()
}

/// How connections authenticate: not at all (loopback without a password) or by SCRAM-SHA-256.
#[derive(Clone)]
pub(crate) enum Authentication {
    Open,
    Scram {
        passwords: Arc<dyn AuthSource>,
        /// With TLS, the server's certificate: clients may bind the exchange to the TLS
        /// channel (SCRAM-SHA-256-PLUS), which defeats a man in the middle.
        certificate_pem: Option<Arc<Vec<u8>>>,
    },
}

/// One connection's start (pgwire asks for a handler per connection; SCRAM keeps the state of
/// its exchange in it).
pub(crate) enum Startup {
    Open(OpenStartup),
    Scram {
        exchange: SASLAuthStartupHandler<DefaultServerParameterProvider>,
        cancels: Arc<Cancels>,
    },
}

impl Startup {
    pub(crate) fn new(
        authentication: &Authentication,
        connections: &Arc<ConnectionManager>,
        cancels: &Arc<Cancels>,
    ) -> Self {
        match authentication {
            Authentication::Open => Startup::Open(OpenStartup {
                connections: connections.clone(),
                cancels: cancels.clone(),
            }),
            Authentication::Scram {
                passwords,
                certificate_pem,
            } => {
                let mut scram = ScramAuth::new(passwords.clone());
                if let Some(pem) = certificate_pem
                    && let Err(e) = scram.configure_certificate(pem)
                {
                    // Checked when the server starts; plain SCRAM-SHA-256 remains.
                    tracing::warn!(error = %e, "SCRAM channel binding unavailable");
                }
                Startup::Scram {
                    exchange: SASLAuthStartupHandler::new(Arc::new(DefaultServerParameterProvider::default()))
                        .with_scram(scram)
                        .with_connection_manager(connections.clone())
                        .with_pid_secret_key_generator(cancels.pids.clone()),
                    cancels: cancels.clone(),
                }
            }
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Open(open) => open.on_startup(client, message).await,
            Startup::Scram { exchange, cancels } => {
                exchange.on_startup(client, message).await?;
                if matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
                    let (pid, key) = client.pid_and_secret_key();
                    cancels.register(pid, key, &Session::of(client).cancel);
                }
                Ok(())
            }
        }
    }
}

/// No authentication (loopback only); registers each connection so that its statements can be
/// cancelled.
pub(crate) struct OpenStartup {
    connections: Arc<ConnectionManager>,
    cancels: Arc<Cancels>,
}

#[async_trait]
impl NoopStartupHandler for OpenStartup {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }

    async fn post_startup<C>(&self, client: &mut C, _message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, key) = client.pid_and_secret_key();
        self.cancels.register(pid, key, &Session::of(client).cancel);
        Ok(())
    }
}

/// A secret key's bytes: a cancel request's key arrives as bytes whatever the protocol version
/// the connection started with.
fn key_bytes(key: &SecretKey) -> Vec<u8> {
    match key {
        SecretKey::I32(k) => k.to_be_bytes().to_vec(),
        SecretKey::Bytes(b) => b.to_vec(),
    }
}

/// Where cancel requests find their connection: by process id and secret key.
#[derive(Default)]
pub(crate) struct Cancels {
    /// By process id and secret key (a pid alone names a connection only as long as every
    /// startup handler draws from `pids`).
    connections: Mutex<HashMap<CancelKey, std::sync::Weak<Cancel>>>,
    /// Process ids and keys for every password-authenticated connection: pgwire makes a SCRAM
    /// handler per connection, each of which would otherwise number from the same first pid.
    pids: Arc<RandomPidSecretKeyGenerator>,
}

/// A connection's process id and secret key's bytes.
type CancelKey = (i32, Vec<u8>);

impl Cancels {
    fn register(&self, pid: i32, key: SecretKey, cancel: &Arc<Cancel>) {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.retain(|_, c| c.strong_count() > 0);
        connections.insert((pid, key_bytes(&key)), Arc::downgrade(cancel));
    }

    fn cancel(&self, pid: i32, key: &SecretKey) {
        let connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cancel) = connections
            .get(&(pid, key_bytes(key)))
            .and_then(std::sync::Weak::upgrade)
        {
            cancel.request();
        }
    }
}

/// Cancels the running statement (pgwire) and the rows being sent (the session's token).
pub(crate) struct CancelRequests {
    pub(crate) connections: Arc<ConnectionManager>,
    pub(crate) cancels: Arc<Cancels>,
}

#[async_trait]
impl CancelHandler for CancelRequests {
    async fn on_cancel_request(&self, request: CancelRequest) {
        self.cancels.cancel(request.pid, &request.secret_key);
        self.connections.cancel(request.pid, &request.secret_key).await;
    }
}
