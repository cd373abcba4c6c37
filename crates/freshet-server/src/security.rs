//! Who may connect, and over what: a password checked by SCRAM-SHA-256 on the Postgres
//! protocol (the password itself never crosses the wire), a bearer token on HTTP, TLS for both
//! from a PEM certificate and key — and the rule that a server listening beyond loopback
//! requires the password and the token.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pgwire::api::auth::sasl::scram::gen_salted_password;
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::tokio_rustls::server::TlsStream;
use pgwire::tokio::{TlsAcceptor, tokio_rustls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::ServerError;
use crate::http::ApiError;

/// The one user of the Postgres protocol when a password is set (its database is `freshet`).
pub const USER: &str = "freshet";

/// SCRAM's iteration count (RFC 7677's minimum, and Postgres' default).
const SCRAM_ITERATIONS: usize = 4096;

/// How long a client may take to finish a TLS handshake on HTTP.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A password or token: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret from its text.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A PEM certificate chain and its private key: TLS for both protocols.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, PEM (the server's certificate first).
    pub certificate: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A server on `address` without `protection` is refused unless the address is loopback.
pub(crate) fn require_protection(address: SocketAddr, protected: bool, missing: &str) -> Result<(), ServerError> {
    if protected || address.ip().is_loopback() {
        return Ok(());
    }
    Err(ServerError::Unprotected {
        address,
        missing: missing.into(),
    })
}

/// TLS acceptors for the Postgres protocol and for HTTP, from one certificate and key.
pub(crate) struct Tls {
    pub(crate) postgres: TlsAcceptor,
    pub(crate) http: TlsAcceptor,
    /// The certificate chain as read (SCRAM's channel binding signs with it).
    pub(crate) certificate_pem: Vec<u8>,
}

impl Tls {
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, ServerError> {
        let certificate_pem = read(&files.certificate)?;
        let certificates = CertificateDer::pem_slice_iter(&certificate_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error(&files.certificate, e))?;
        if certificates.is_empty() {
            return Err(tls_error(&files.certificate, "no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| tls_error(&files.key, e))?;
        let config = |alpn: &[u8]| -> Result<TlsAcceptor, ServerError> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .and_then(|builder| {
                    builder
                        .with_no_client_auth()
                        .with_single_cert(certificates.clone(), key.clone_key())
                })
                .map_err(|e| tls_error(&files.key, e))?;
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        Ok(Self {
            postgres: config(b"postgresql")?,
            http: config(b"http/1.1")?,
            certificate_pem,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|e| tls_error(path, e))
}

fn tls_error(path: &Path, error: impl fmt::Display) -> ServerError {
    ServerError::Tls {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

/// The password of [`USER`], salted once at start (SCRAM needs the salted form; salting takes
/// thousands of hashes, too many to repeat per connection).
#[derive(Debug)]
pub(crate) struct PasswordSource {
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl PasswordSource {
    pub(crate) fn new(password: &Secret) -> Self {
        let salt = rand_salt();
        let salted = gen_salted_password(password.expose(), &salt, SCRAM_ITERATIONS);
        Self { salt, salted }
    }
}

fn rand_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 16];
    // The salt needs to be unpredictable, not secret: the ring backend's generator serves.
    let _ = rustls::crypto::ring::default_provider().secure_random.fill(&mut salt);
    salt
}

#[async_trait]
impl AuthSource for PasswordSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        match login.user() {
            Some(USER) => Ok(Password::new(Some(self.salt.clone()), self.salted.clone())),
            Some(other) => Err(PgWireError::InvalidPassword(other.to_string())),
            None => Err(PgWireError::UserNameRequired),
        }
    }
}

/// HTTP requests must carry `Authorization: Bearer <token>`; `/health` and `/ready` need not
/// (probes of load balancers and orchestrators carry no credentials), nor the API's description.
pub(crate) async fn require_token(State(token): State<Arc<Secret>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if matches!(path, "/health" | "/ready" | "/api/v1/openapi.json") {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(presented) if same(presented.trim().as_bytes(), token.expose().as_bytes()) => next.run(request).await,
        _ => {
            let mut response = ApiError::unauthorized().into_response();
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
    }
}

/// Equality whose time does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A TCP listener whose connections come out TLS-handshaken; handshakes run concurrently, so
/// a client that stalls in its handshake delays nobody else.
pub(crate) struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    address: SocketAddr,
    accepting: tokio::task::AbortHandle,
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        let (sender, handshaken) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((socket, peer)) => {
                        let sender = sender.clone();
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                                Ok(Ok(stream)) => {
                                    let _ = sender.send((stream, peer)).await;
                                }
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "cannot accept an HTTPS connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
        .abort_handle();
        Ok(Self {
            handshaken,
            address,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accepting task ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        assert!(!format!("{:?}", Secret::new("hunter2")).contains("hunter2"));
    }

    #[test]
    fn only_loopback_may_go_unprotected() {
        let loopback: SocketAddr = "127.0.0.1:5433".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:5433".parse().unwrap();
        assert!(require_protection(loopback, false, "a password").is_ok());
        assert!(require_protection(any, true, "a password").is_ok());
        let refused = require_protection(any, false, "a password").unwrap_err().to_string();
        assert!(
            refused.contains("0.0.0.0:5433") && refused.contains("a password"),
            "{refused}"
        );
    }
}
