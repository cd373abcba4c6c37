//! The Postgres wire protocol (pgwire): psql, drivers and BI tools run Freshet's SQL.
//!
//! Every statement goes to the engine as the shell would run it, so materialized tables,
//! streams and jobs work over the wire unchanged. Around that, the protocol's needs:
//! - **Catalog queries** (psql's `\d`, drivers' introspection) are in Postgres' dialect; text
//!   the engine cannot parse or plan is tried there, over `pg_catalog` ([`catalog`]).
//! - **Extended protocol**: a statement's `$n` parameters are typed by DataFusion's inference
//!   (or the client's types) and bound as literals before the engine runs it. A statement whose
//!   result columns cannot be known before it runs (`SHOW JOBS`, `EXPLAIN ...`) runs when the
//!   client describes its portal, and the rows wait there for `Execute`.
//! - **Transactions**: Freshet commits every statement on its own. `BEGIN`/`COMMIT` are
//!   accepted (drivers send them), and `ROLLBACK` warns with a notice when statements since
//!   `BEGIN` have already committed.
//! - **Cancel requests** drop the running statement; Freshet's commits are cancel-safe.
//! - **Errors** carry a SQLSTATE ([`crate::error::sqlstate`]).

pub(crate) mod catalog;
pub(crate) mod command;
mod follow;
mod startup;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use freshet::datafusion::arrow::array::{Array, AsArray, RecordBatch};
use freshet::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use freshet::datafusion::common::{ParamValues, ScalarValue};
use freshet::datafusion::execution::SendableRecordBatchStream;
use freshet::datafusion::physical_plan::memory::MemoryStream;
use freshet::datafusion::physical_plan::stream::RecordBatchReceiverStream;
use freshet::datafusion::prelude::SessionContext;
use freshet::datafusion::sql::parser::Statement as DFStatement;
use freshet::{Engine, FreshetError};
use futures::sink::{Sink, SinkExt};
use futures::{StreamExt, TryStreamExt, stream};
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DescribePortalResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionManager, DEFAULT_NAME, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::RowDescription;
use pgwire::messages::extendedquery::{
    Close, CloseComplete, Sync as PgSync, TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::{NoticeResponse, ReadyForQuery};
use pgwire::tokio::TlsAcceptor;
use pgwire::types::format::FormatOptions;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::startup::{Authentication, CancelRequests, Cancels, Startup};
use crate::error::sqlstate;
use crate::{Activity, Running};
use command::Command;

/// What every connection shares: the engine, and the catalog session for Postgres' dialect.
pub(crate) struct Backend {
    engine: Engine,
    catalog: SessionContext,
    compat: PostgresCompatibilityParser,
}

impl Backend {
    pub(crate) fn new(engine: Engine) -> Result<Self, crate::ServerError> {
        let catalog = catalog::catalog_session(&engine).map_err(crate::ServerError::Catalog)?;
        Ok(Self {
            engine,
            catalog,
            compat: PostgresCompatibilityParser::new(),
        })
    }

    fn classify(&self, text: &str) -> Result<Vec<Command>, FreshetError> {
        command::classify(&self.engine, &self.compat, text)
    }

    /// Runs one engine or catalog command with its parameters' values.
    async fn run(&self, command: &Command, params: &[ScalarValue]) -> Result<Outcome, FreshetError> {
        match command {
            Command::CopyOut(statement) => {
                let stream = self.engine.execute(&command::bind(statement, params)?).await?;
                Ok(Outcome::Rows {
                    tag: command.tag(),
                    stream,
                })
            }
            Command::Engine(statement) => {
                let bound = command::bind(statement, params)?;
                let is_query = command.query().is_some();
                let stream = match self.engine.execute(&bound).await {
                    Ok(stream) => stream,
                    // A query the engine cannot plan may be a catalog query in Postgres' dialect
                    // (`SELECT ... FROM pg_catalog.pg_class`): queries have no side effects, so
                    // it is tried there, and the engine's error stands if that fails too.
                    Err(error) if is_query && error.domain() == freshet::ErrorDomain::User => {
                        match command::catalog_query(&self.compat, &bound.text) {
                            // A query of pg_catalog tells why the catalog could not answer it;
                            // any other keeps the engine's error.
                            Some(query) => match self.run_catalog(&query, &[]).await {
                                Ok(stream) => stream,
                                Err(catalog) if bound.text.to_ascii_lowercase().contains("pg_catalog.") => {
                                    return Err(catalog);
                                }
                                Err(_) => return Err(error),
                            },
                            None => return Err(error),
                        }
                    }
                    Err(error) => return Err(error),
                };
                Outcome::of(command.tag(), stream).await
            }
            Command::Catalog(query) => Outcome::of(command.tag(), self.run_catalog(query, params).await?).await,
            Command::Begin
            | Command::Commit
            | Command::Rollback
            | Command::SetVariable { .. }
            | Command::ShowVariable { .. } => Err(FreshetError::Internal(format!(
                "{} is answered by the connection",
                command.tag()
            ))),
        }
    }

    async fn run_catalog(
        &self,
        query: &freshet::datafusion::sql::sqlparser::ast::Statement,
        params: &[ScalarValue],
    ) -> Result<SendableRecordBatchStream, FreshetError> {
        let state = self.catalog.state();
        let mut plan = state
            .statement_to_plan(DFStatement::Statement(Box::new(query.clone())))
            .await?;
        if !params.is_empty() {
            plan = plan.with_param_values(ParamValues::List(params.iter().map(|v| v.clone().into()).collect()))?;
        }
        Ok(self.catalog.execute_logical_plan(plan).await?.execute_stream().await?)
    }
}

/// What a statement produced.
enum Outcome {
    /// Rows, streamed.
    Rows {
        tag: String,
        stream: SendableRecordBatchStream,
    },
    /// Done, with the command tag (and a row count where Postgres gives one).
    Done(Tag),
}

impl Outcome {
    /// A statement's stream as Postgres reports it: rows, or a command tag (with the count of
    /// rows an INSERT, UPDATE or DELETE wrote).
    async fn of(tag: String, stream: SendableRecordBatchStream) -> Result<Outcome, FreshetError> {
        let schema = stream.schema();
        if schema.fields().is_empty() {
            let _: Vec<RecordBatch> = stream.try_collect().await?;
            return Ok(Outcome::Done(Tag::new(&tag)));
        }
        let counts = matches!(tag.as_str(), "INSERT" | "UPDATE" | "DELETE")
            && schema.fields().len() == 1
            && schema.field(0).name() == "count"
            && schema.field(0).data_type() == &DataType::UInt64;
        if counts {
            let batches: Vec<RecordBatch> = stream.try_collect().await?;
            let rows: u64 = batches
                .iter()
                .map(|b| {
                    let c = b.column(0).as_primitive::<UInt64Type>();
                    (0..c.len()).filter(|i| c.is_valid(*i)).map(|i| c.value(i)).sum::<u64>()
                })
                .sum();
            let done = Tag::new(&tag).with_rows(rows as usize);
            // INSERT's tag carries an oid (always 0) before the count.
            return Ok(Outcome::Done(if tag == "INSERT" { done.with_oid(0) } else { done }));
        }
        let tag = if matches!(tag.as_str(), "SHOW" | "EXPLAIN" | "DESCRIBE") {
            tag
        } else {
            "SELECT".into()
        };
        Ok(Outcome::Rows { tag, stream })
    }

    fn into_response(self, format: &Format, options: Arc<FormatOptions>) -> PgWireResult<Response> {
        match self {
            Outcome::Done(tag) => Ok(Response::Execution(tag)),
            Outcome::Rows { tag, stream } => {
                let fields = Arc::new(arrow_schema_to_pg_fields(
                    stream.schema().as_ref(),
                    format,
                    Some(options),
                )?);
                let mut response = QueryResponse::new(fields.clone(), rows(fields, stream));
                response.command_tag = tag;
                Ok(Response::Query(response))
            }
        }
    }
}

/// The stream, ended by an error (SQLSTATE 57014, as Postgres) at the connection's next
/// cancel request.
fn cancellable(
    stream: SendableRecordBatchStream,
    cancel: Arc<Cancel>,
    seen: u64,
    running: Option<Running>,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    // Produced on a task of its own: one poll of a plan may compute for long without yielding
    // (an aggregate over a generated range), and the cancel must still be answered at once.
    // Dropping the receiving stream aborts the task.
    let mut produced = RecordBatchReceiverStream::builder(schema.clone(), 2);
    let tx = produced.tx();
    produced.spawn(async move {
        // The statement counts as running until its last row is produced.
        let _running = running;
        let mut stream = stream;
        while let Some(batch) = stream.next().await {
            if tx.send(batch).await.is_err() {
                break;
            }
        }
        Ok(())
    });
    let stream = produced.build();
    let cancelled: futures::future::BoxFuture<'static, ()> = Box::pin(async move { cancel.after(seen).await });
    let batches = stream::unfold(Some((stream, cancelled)), |state| async move {
        let (mut stream, mut cancelled) = state?;
        tokio::select! {
            next = stream.next() => next.map(|batch| (batch, Some((stream, cancelled)))),
            () = &mut cancelled => Some((Err(canceled()), None)),
        }
    });
    Box::pin(freshet::datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, batches))
}

fn canceled() -> freshet::datafusion::error::DataFusionError {
    freshet::datafusion::error::DataFusionError::External(Box::new(Canceled))
}

/// A statement cancelled by the client.
#[derive(Debug, thiserror::Error)]
#[error("canceling statement due to user request")]
struct Canceled;

/// A record batch stream as Postgres data rows.
fn rows(
    fields: Arc<Vec<FieldInfo>>,
    stream: SendableRecordBatchStream,
) -> impl futures::Stream<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send + 'static {
    stream
        .map(move |batch| {
            let rows: Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> = match batch {
                Ok(batch) => encode_recordbatch(fields.clone(), batch),
                Err(e) => Box::new(std::iter::once(Err(stream_error(e)))),
            };
            stream::iter(rows)
        })
        .flatten()
}

/// Where Postgres connections come from.
pub(crate) enum PgListener {
    /// TCP, with TLS when configured.
    Tcp(TcpListener, Option<TlsAcceptor>),
    /// A Unix socket (local clients: psql `-h DIR`, another `freshet` on the same directory).
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

impl PgListener {
    /// The next connection, as the future that serves it.
    async fn accept(
        &self,
        handlers: &Arc<PgHandlers>,
    ) -> std::io::Result<futures::future::BoxFuture<'static, std::io::Result<()>>> {
        let handlers = handlers.clone();
        match self {
            PgListener::Tcp(listener, tls) => {
                let (socket, _) = listener.accept().await?;
                let _ = socket.set_nodelay(true);
                Ok(Box::pin(pgwire::tokio::process_socket(socket, tls.clone(), handlers)))
            }
            #[cfg(unix)]
            PgListener::Unix(listener) => {
                let (socket, _) = listener.accept().await?;
                Ok(Box::pin(pgwire::tokio::process_socket_unix(socket, handlers)))
            }
        }
    }
}

/// Accepts connections until `stopped`; the connections keep running until this future is
/// dropped (the server's shutdown cancels them after its grace period).
pub(crate) async fn serve(listener: PgListener, handlers: Arc<PgHandlers>, mut stopped: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(&handlers) => match accepted {
                Ok(connection) => {
                    connections.spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "Postgres connection ended with an error");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot accept a Postgres connection"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopped.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

fn stream_error(error: freshet::datafusion::error::DataFusionError) -> PgWireError {
    if let freshet::datafusion::error::DataFusionError::External(inner) = &error
        && inner.is::<Canceled>()
    {
        return PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "57014".into(),
            inner.to_string(),
        )));
    }
    pg_error(&FreshetError::from(error))
}

/// An engine error as Postgres reports it.
pub(crate) fn pg_error(error: &FreshetError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(error)))
}

fn error_info(error: &FreshetError) -> ErrorInfo {
    ErrorInfo::new("ERROR".into(), sqlstate(error).into(), error.to_string())
}

/// One connection's state.
#[derive(Default)]
struct Session {
    /// Inside `BEGIN ... COMMIT`.
    in_block: AtomicBool,
    /// Statements that may have written since `BEGIN` (ROLLBACK cannot undo them).
    writes: AtomicU64,
    /// Portals whose statement ran when described: their rows wait for `Execute`.
    started: Mutex<HashMap<String, Outcome>>,
    /// Cancel requests for this connection.
    cancel: Arc<Cancel>,
}

/// Cancel requests of one connection. pgwire cancels a statement while it runs; rows are
/// computed while they are sent, after that, so the row stream watches this too.
#[derive(Debug, Default)]
pub(crate) struct Cancel {
    requests: AtomicU64,
    notify: tokio::sync::Notify,
}

impl Cancel {
    fn request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves at the first cancel request after `seen` requests.
    async fn after(&self, seen: u64) {
        loop {
            let notified = self.notify.notified();
            if self.requests.load(Ordering::SeqCst) > seen {
                return;
            }
            notified.await;
        }
    }
}

impl Session {
    fn of<C: ClientInfo>(client: &C) -> Arc<Session> {
        client.session_extensions().get_or_insert_with(Session::default)
    }

    fn started(&self) -> std::sync::MutexGuard<'_, HashMap<String, Outcome>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Connection variables' values when a client has not set them (what drivers ask for).
fn default_variable(name: &str) -> Option<&'static str> {
    Some(match name {
        "server_version" => "16.0",
        "server_version_num" => "160000",
        "server_encoding" | "client_encoding" => "UTF8",
        "standard_conforming_strings" => "on",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "timezone" => "UTC",
        "integer_datetimes" => "on",
        "transaction isolation level" | "transaction_isolation" => "read committed",
        "search_path" => "public",
        "max_identifier_length" => "63",
        "is_superuser" => "on",
        _ => return None,
    })
}

/// The protocol handlers for one server.
pub(crate) struct PgHandlers {
    backend: Arc<Backend>,
    activity: Arc<Activity>,
    parser: Arc<PgParser>,
    authentication: Authentication,
    connections: Arc<ConnectionManager>,
    cancels: Arc<Cancels>,
}

impl PgHandlers {
    pub(crate) fn new(backend: Arc<Backend>, activity: Arc<Activity>) -> Self {
        Self {
            activity,
            parser: Arc::new(PgParser {
                backend: backend.clone(),
            }),
            backend,
            authentication: Authentication::Open,
            connections: Arc::new(ConnectionManager::new()),
            cancels: Arc::new(Cancels::default()),
        }
    }

    /// Connections must authenticate as [`crate::USER`] with `password` (SCRAM-SHA-256, bound
    /// to the TLS channel when the client asks for it).
    pub(crate) fn with_password(mut self, password: &crate::Secret, tls: Option<&crate::security::Tls>) -> Self {
        let passwords: Arc<dyn pgwire::api::auth::AuthSource> =
            Arc::new(crate::security::PasswordSource::new(password));
        let certificate_pem = tls
            .map(|tls| tls.certificate_pem.clone())
            .filter(|pem| {
                let binds = startup::binds_channel(&passwords, pem);
                if !binds {
                    tracing::warn!("the TLS certificate's signature algorithm rules out SCRAM channel binding");
                }
                binds
            })
            .map(Arc::new);
        self.authentication = Authentication::Scram {
            passwords,
            certificate_pem,
        };
        self
    }
}

impl PgHandlers {
    fn queries(&self) -> PgQueries {
        PgQueries {
            backend: self.backend.clone(),
            activity: self.activity.clone(),
            parser: self.parser.clone(),
        }
    }
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(self.queries())
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(self.queries())
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Startup::new(&self.authentication, &self.connections, &self.cancels))
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(CancelRequests {
            connections: self.connections.clone(),
            cancels: self.cancels.clone(),
        })
    }
}

/// A parsed statement of the extended protocol.
#[derive(Clone)]
pub(crate) struct Prepared {
    command: Command,
    /// The `$n` parameters' types as DataFusion infers them, in order.
    parameters: Vec<Option<DataType>>,
    /// The result columns, when known before running (queries).
    schema: Option<SchemaRef>,
}

pub(crate) struct PgParser {
    backend: Arc<Backend>,
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut commands = self.backend.classify(sql).map_err(|e| pg_error(&e))?;
        if commands.len() > 1 {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "42601".into(),
                "cannot insert multiple commands into a prepared statement".into(),
            ))));
        }
        let Some(command) = commands.pop() else {
            return Ok(None);
        };
        let ctx = match command {
            Command::Catalog(_) => &self.backend.catalog,
            _ => self.backend.engine.session(),
        };
        let (parameters, plan) = command::parameter_types(ctx, &command).await;
        let schema = match (&command.query(), plan) {
            (Some(_), Some(plan)) => Some(Arc::new(plan.schema().as_arrow().clone())),
            // Its columns are known once it runs, and running it only reads.
            _ if command.only_reads() => match self.backend.run(&command, &[]).await {
                Ok(Outcome::Rows { stream, .. }) => Some(stream.schema()),
                Ok(Outcome::Done(_)) => None,
                Err(e) => return Err(pg_error(&e)),
            },
            _ => None,
        };
        Ok(Some(Prepared {
            command,
            parameters,
            schema,
        }))
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        statement
            .parameters
            .iter()
            .map(|t| match t {
                Some(t) => into_pg_type(t),
                // Untyped, like a Postgres `unknown` literal: the value's text is used.
                None => Ok(Type::TEXT),
            })
            .collect()
    }

    fn get_result_schema(&self, statement: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        match &statement.schema {
            Some(schema) => arrow_schema_to_pg_fields(schema, format.unwrap_or(&Format::UnifiedText), None),
            None => Ok(Vec::new()),
        }
    }
}

/// Simple and extended queries.
struct PgQueries {
    backend: Arc<Backend>,
    activity: Arc<Activity>,
    parser: Arc<PgParser>,
}

impl PgQueries {
    /// Answers a connection command, or runs an engine or catalog one.
    async fn answer<C>(&self, client: &mut C, command: &Command, params: &[ScalarValue]) -> PgWireResult<Outcome>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = Session::of(client);
        match command {
            Command::Begin => {
                session.in_block.store(true, Ordering::SeqCst);
                session.writes.store(0, Ordering::SeqCst);
                Ok(Outcome::Done(Tag::new("BEGIN")))
            }
            Command::Commit | Command::Rollback => {
                let written = session.writes.swap(0, Ordering::SeqCst);
                session.in_block.store(false, Ordering::SeqCst);
                if matches!(command, Command::Rollback) && written > 0 {
                    let notice = ErrorInfo::new(
                        "WARNING".into(),
                        "25000".into(),
                        format!(
                            "Freshet commits each statement as it runs: the {written} statement(s) \
                             since BEGIN stay committed"
                        ),
                    );
                    client
                        .send(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(notice)))
                        .await?;
                }
                Ok(Outcome::Done(Tag::new(&command.tag())))
            }
            Command::SetVariable { name, value } => {
                client.metadata_mut().insert(name.clone(), value.clone());
                Ok(Outcome::Done(Tag::new("SET")))
            }
            Command::ShowVariable { name } => {
                let value = client
                    .metadata()
                    .get(name)
                    .cloned()
                    .or_else(|| default_variable(name).map(String::from));
                let Some(value) = value else {
                    return Err(pg_error(&FreshetError::InvalidStatement(format!(
                        "unrecognized configuration parameter \"{name}\""
                    ))));
                };
                let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]));
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(freshet::datafusion::arrow::array::StringArray::from(vec![
                        value,
                    ]))],
                )
                .map_err(|e| {
                    pg_error(&FreshetError::from(freshet::datafusion::error::DataFusionError::from(
                        e,
                    )))
                })?;
                let stream =
                    MemoryStream::try_new(vec![batch], schema, None).map_err(|e| pg_error(&FreshetError::from(e)))?;
                Ok(Outcome::Rows {
                    tag: "SHOW".into(),
                    stream: Box::pin(stream),
                })
            }
            Command::Engine(_) | Command::Catalog(_) | Command::CopyOut(_) => {
                let running = (!command.follows()).then(|| self.activity.start());
                if command.may_write() && session.in_block.load(Ordering::SeqCst) {
                    session.writes.fetch_add(1, Ordering::SeqCst);
                }
                // A cancel request stops the statement while it runs and while its rows are
                // computed and sent (pgwire's own cancel misses keys of some protocol versions).
                let seen = session.cancel.requests.load(Ordering::SeqCst);
                let outcome = tokio::select! {
                    outcome = self.backend.run(command, params) => outcome.map_err(|e| pg_error(&e))?,
                    () = session.cancel.after(seen) => return Err(stream_error(canceled())),
                };
                Ok(match outcome {
                    Outcome::Rows { tag, stream } => Outcome::Rows {
                        tag,
                        stream: cancellable(stream, session.cancel.clone(), seen, running),
                    },
                    done @ Outcome::Done(_) => done,
                })
            }
        }
    }

    /// A command's outcome as the protocol's response. Subscriptions and `COPY ... TO STDOUT`
    /// are sent here, as their rows come (with their row description first when `describe`:
    /// the simple protocol's; the extended one described the portal before); an error while
    /// sending becomes the response.
    async fn respond<C>(
        &self,
        client: &mut C,
        command: &Command,
        outcome: Outcome,
        format: &Format,
        describe: bool,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sent = match (command, outcome) {
            (Command::CopyOut(_), Outcome::Rows { stream, .. }) => follow::send_copy(client, stream)
                .await
                .map(|rows| Tag::new("COPY").with_rows(rows)),
            (command, Outcome::Rows { stream, .. }) if command.is_subscribe() => {
                let fields = Arc::new(arrow_schema_to_pg_fields(
                    stream.schema().as_ref(),
                    format,
                    Some(format_options(client)),
                )?);
                if describe {
                    let description = RowDescription::new(fields.iter().map(Into::into).collect());
                    client.send(PgWireBackendMessage::RowDescription(description)).await?;
                }
                follow::send_rows(client, stream, fields)
                    .await
                    .map(|rows| Tag::new("SUBSCRIBE").with_rows(rows))
            }
            (Command::Begin, Outcome::Done(tag)) => return Ok(Response::TransactionStart(tag)),
            (Command::Commit | Command::Rollback, Outcome::Done(tag)) => return Ok(Response::TransactionEnd(tag)),
            (_, outcome) => return outcome.into_response(format, format_options(client)),
        };
        match sent {
            Ok(tag) => Ok(Response::Execution(tag)),
            Err(PgWireError::UserError(info)) => Ok(Response::Error(info)),
            Err(other) => Err(other),
        }
    }

    /// The values bound to a portal, typed by the client's types or DataFusion's inference.
    fn parameters(&self, portal: &Portal<Prepared>) -> PgWireResult<Vec<ScalarValue>> {
        let prepared = &portal.statement.statement;
        let client_types = &portal.statement.parameter_types;
        let inferred: Vec<Option<&DataType>> = prepared
            .parameters
            .iter()
            .enumerate()
            .map(|(i, inferred)| {
                // A value the client typed is decoded as its type; the engine's statement then
                // casts the literal as SQL would (an integer compared with a decimal column).
                // The catalog's plans take values of their inferred types only.
                let typed = matches!(client_types.get(i), Some(Some(t)) if *t != Type::UNKNOWN);
                match prepared.command {
                    Command::Engine(_) if typed => None,
                    _ => inferred.as_ref(),
                }
            })
            .collect();
        let values = arrow_pg::datatypes::df::deserialize_parameters(portal, &inferred)?;
        Ok(match values {
            ParamValues::List(values) => values.into_iter().map(|v| v.value).collect(),
            ParamValues::Map(_) => Vec::new(),
        })
    }
}

fn format_options<C: ClientInfo>(client: &C) -> Arc<FormatOptions> {
    Arc::new(FormatOptions::from_client_metadata(client.metadata()))
}

#[async_trait]
impl SimpleQueryHandler for PgQueries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let commands = self.backend.classify(query).map_err(|e| pg_error(&e))?;
        let mut responses = Vec::with_capacity(commands.len());
        for command in &commands {
            // Like Postgres, the statements after a failing one do not run.
            let outcome = match self.answer(client, command, &[]).await {
                Ok(outcome) => outcome,
                Err(PgWireError::UserError(info)) => {
                    responses.push(Response::Error(info));
                    break;
                }
                Err(other) => return Err(other),
            };
            let response = self
                .respond(client, command, outcome, &Format::UnifiedText, true)
                .await?;
            let failed = matches!(response, Response::Error(_));
            responses.push(response);
            if failed {
                break;
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for PgQueries {
    type Statement = Prepared;
    type QueryParser = PgParser;

    fn query_parser(&self) -> Arc<PgParser> {
        self.parser.clone()
    }

    async fn on_sync<C>(&self, client: &mut C, _message: PgSync) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Sync ends the unnamed portal; a statement described but never executed in it ends
        // with it (its rows are dropped).
        Session::of(client).started().remove(DEFAULT_NAME);
        client.portal_store().rm_portal(DEFAULT_NAME);
        client
            .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                client.transaction_status(),
            )))
            .await?;
        client.flush().await?;
        Ok(())
    }

    async fn on_close<C>(&self, client: &mut C, message: Close) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => client.portal_store().rm_statement(name),
            TARGET_TYPE_BYTE_PORTAL => {
                Session::of(client).started().remove(name);
                client.portal_store().rm_portal(name);
            }
            _ => {}
        }
        client
            .send(PgWireBackendMessage::CloseComplete(CloseComplete::new()))
            .await?;
        Ok(())
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        if matches!(prepared.command, Command::CopyOut(_)) {
            return Ok(DescribePortalResponse::new(Vec::new()));
        }
        if let Some(schema) = &prepared.schema {
            let fields = arrow_schema_to_pg_fields(schema, &portal.result_column_format, Some(format_options(client)))?;
            return Ok(DescribePortalResponse::new(fields));
        }
        // Its columns are known once it runs: it runs now, and Execute sends its rows.
        let params = self.parameters(portal)?;
        let outcome = self.answer(client, &prepared.command, &params).await?;
        let fields = match &outcome {
            Outcome::Rows { stream, .. } => arrow_schema_to_pg_fields(
                stream.schema().as_ref(),
                &portal.result_column_format,
                Some(format_options(client)),
            )?,
            Outcome::Done(_) => Vec::new(),
        };
        Session::of(client).started().insert(portal.name.clone(), outcome);
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let started = Session::of(client).started().remove(&portal.name);
        let outcome = match started {
            Some(outcome) => outcome,
            None => {
                let params = self.parameters(portal)?;
                match self.answer(client, &prepared.command, &params).await {
                    Ok(outcome) => outcome,
                    Err(PgWireError::UserError(info)) => return Ok(Response::Error(info)),
                    Err(other) => return Err(other),
                }
            }
        };
        self.respond(client, &prepared.command, outcome, &portal.result_column_format, false)
            .await
    }
}
