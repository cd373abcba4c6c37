//! `freshet --connect URL`: statements sent to a running `freshet serve` over the Postgres
//! protocol, their results printed as the local shell prints them.
//!
//! Results arrive as text (the simple query protocol), so they print as text columns. A
//! statement is cancelled with the protocol's cancel request, as psql does on Ctrl-C; `\watch`
//! follows a table with `COPY (SUBSCRIBE ...) TO STDOUT`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use freshet::datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use freshet::datafusion::arrow::compute::{CastOptions, cast_with_options};
use freshet::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use freshet::datafusion::sql::parser::Statement as DFStatement;
use freshet::datafusion::sql::sqlparser::ast;
use freshet::sql::FreshetStatement;
use futures::StreamExt;
use tokio_postgres::types::Type;
use tokio_postgres::{CancelToken, Client, NoTls, SimpleQueryMessage};

use crate::output::Printer;

/// The user and database `freshet serve` knows.
const DEFAULT_USER: &str = "freshet";
/// `freshet serve`'s default port for the Postgres protocol.
const DEFAULT_PORT: u16 = freshet_server::SOCKET_PORT;

/// A connection to a server.
pub(crate) struct Remote {
    client: Client,
    cancel: CancelToken,
    /// `host:port`, for messages.
    address: String,
}

impl Remote {
    /// Connects to `url` (`postgres://[user[:password]@]host[:port][/database]`, or the
    /// `key=value` form). Unset parts default to user and database `freshet`, port 5433, and
    /// the password in `FRESHET_PASSWORD`, else `PGPASSWORD`.
    pub(crate) async fn connect(url: &str) -> Result<Self, String> {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| format!("error: {url}: {e}"))?;
        Self::connect_with(config).await
    }

    /// Connects as `config` says, with the defaults of [`Remote::connect`].
    pub(crate) async fn connect_with(mut config: tokio_postgres::Config) -> Result<Self, String> {
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        if config.get_ports().is_empty() {
            config.port(DEFAULT_PORT);
        }
        if config.get_user().is_none() {
            config.user(DEFAULT_USER);
        }
        if config.get_dbname().is_none() {
            config.dbname(DEFAULT_USER);
        }
        if config.get_password().is_none()
            && let Some(password) = std::env::var_os("FRESHET_PASSWORD").or_else(|| std::env::var_os("PGPASSWORD"))
        {
            config.password(password.to_string_lossy().as_bytes());
        }
        config.application_name("freshet");
        let address = address(&config);
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| format!("error: cannot connect to {address}: {}", describe(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("error: the connection to the server ended: {e}");
            }
        });
        let cancel = client.cancel_token();
        Ok(Self {
            client,
            cancel,
            address,
        })
    }

    /// Where it is connected, for the shell's greeting.
    pub(crate) fn location(&self) -> String {
        format!("the server at {}", self.address)
    }

    /// Runs every statement of a script on the server, printing each result; the first error
    /// stops it and is returned with the statement's position. Statements are split here, with
    /// the engine's own parser, so that errors name the script's lines.
    pub(crate) async fn run_script(&self, printer: &mut Printer, origin: &str, sql: &str) -> Result<(), String> {
        let statements = freshet::sql::parse_statements(sql).map_err(|e| format!("error: {origin}: {e}"))?;
        for statement in statements {
            let started = Instant::now();
            let counts = counts_rows(&statement.text);
            let types = if counts {
                vec![Some(DataType::Int64)]
            } else {
                self.column_types(&statement).await
            };
            let work = self.client.simple_query(&statement.text);
            let result = crate::script::showing_progress(work, printer.progress, None).await;
            let printed = match result {
                Ok(messages) => {
                    let (schema, batches) = result_of(&messages, counts);
                    let (schema, batches) = typed(schema, batches, &types);
                    tokio::task::block_in_place(|| printer.print(&schema, &batches, started.elapsed()))
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(describe(&e)),
            };
            if let Err(message) = printed {
                return Err(crate::script::statement_error(
                    origin,
                    statement.line,
                    &statement.text,
                    &message,
                ));
            }
        }
        Ok(())
    }

    /// For a query, the Arrow type each result column's text stands for, where the printer
    /// shows it differently from text (numbers, booleans): from the server's description of
    /// the query, which plans it without running it. Empty for other statements, or when the
    /// server cannot describe it (the text then prints as text).
    async fn column_types(&self, statement: &freshet::Statement) -> Vec<Option<DataType>> {
        let is_query = matches!(
            &statement.statement,
            FreshetStatement::DataFusion(s)
                if matches!(s.as_ref(), DFStatement::Statement(inner) if matches!(inner.as_ref(), ast::Statement::Query(_)))
        );
        if !is_query {
            return Vec::new();
        }
        let Ok(prepared) = self.client.prepare(&statement.text).await else {
            return Vec::new();
        };
        prepared
            .columns()
            .iter()
            .map(|column| arrow_type(column.type_()))
            .collect()
    }

    /// [`Remote::run_script`] until Ctrl-C, which asks the server to cancel the statement
    /// running (its error then says so).
    pub(crate) async fn run_cancellable(&self, printer: &mut Printer, origin: &str, sql: &str) -> Result<(), String> {
        let work = self.run_script(printer, origin, sql);
        tokio::pin!(work);
        tokio::select! {
            result = &mut work => return result,
            _ = tokio::signal::ctrl_c() => {}
        }
        if let Err(e) = self.cancel.cancel_query(NoTls).await {
            eprintln!("error: cannot cancel the statement: {e}");
        }
        work.await
    }

    /// The rows of a query, as text; `None` when it fails.
    pub(crate) async fn rows(&self, sql: &str) -> Option<Vec<Vec<Option<String>>>> {
        let messages = self.client.simple_query(sql).await.ok()?;
        Some(
            messages
                .iter()
                .filter_map(|message| match message {
                    SimpleQueryMessage::Row(row) => {
                        Some((0..row.len()).map(|i| row.get(i).map(String::from)).collect())
                    }
                    _ => None,
                })
                .collect(),
        )
    }

    /// Follows table `name`'s changes over the server until Ctrl-C: each committed version's
    /// rows, marked `+` (inserted) and `-` (deleted), with the version.
    pub(crate) async fn watch(&self, name: &str) {
        let sql = format!("COPY (SUBSCRIBE TO {name} WITH (snapshot = false)) TO STDOUT");
        let stream = match self.client.copy_out(&sql).await {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("error: {}", describe(&e));
                return;
            }
        };
        println!("Watching {name}: its changes as they commit, + inserted and - deleted (Ctrl-C to stop)");
        tokio::pin!(stream);
        let mut pending = Vec::new();
        loop {
            tokio::select! {
                chunk = stream.next() => match chunk {
                    Some(Ok(bytes)) => {
                        pending.extend_from_slice(&bytes);
                        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=end).collect();
                            print_change(&String::from_utf8_lossy(&line[..end]));
                        }
                    }
                    Some(Err(e)) => {
                        eprintln!("error: {}", describe(&e));
                        return;
                    }
                    None => return,
                },
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        // The subscription ends when the server cancels it; its end is read so that the
        // connection is ready for the next statement.
        if let Err(e) = self.cancel.cancel_query(NoTls).await {
            eprintln!("error: cannot stop watching: {e}");
            return;
        }
        while let Some(Ok(_)) = stream.next().await {}
    }
}

/// One row of a subscription in COPY's text format (`version`, `weight`, then the columns,
/// tab-separated, `\N` for NULL), printed as `v5 + 1 | a`.
fn print_change(line: &str) {
    let mut fields = line.split('\t');
    let version = fields.next().unwrap_or_default();
    let weight: i64 = fields.next().and_then(|w| w.parse().ok()).unwrap_or_default();
    let columns: Vec<&str> = fields.map(|f| if f == "\\N" { "NULL" } else { f }).collect();
    let sign = if weight < 0 { '-' } else { '+' };
    let times = if weight.abs() > 1 {
        format!(" (x{})", weight.abs())
    } else {
        String::new()
    };
    println!("v{version} {sign} {}{times}", columns.join(" | "));
}

/// Whether a statement reports the rows it changed (as a `count` column, as the local shell
/// prints it), where the server sends only the count in its command tag.
fn counts_rows(sql: &str) -> bool {
    let first = sql.split_whitespace().next().unwrap_or_default();
    ["INSERT", "UPDATE", "DELETE"]
        .iter()
        .any(|word| first.eq_ignore_ascii_case(word))
}

/// A statement's result as the printer takes it: text columns; for a statement that changed
/// rows (`counts`) without sending any, their count; or no columns.
fn result_of(messages: &[SimpleQueryMessage], counts: bool) -> (SchemaRef, Vec<RecordBatch>) {
    let mut names: Vec<String> = Vec::new();
    let mut rows: Vec<Vec<Option<String>>> = Vec::new();
    for message in messages {
        match message {
            SimpleQueryMessage::CommandComplete(count) if counts && names.is_empty() => {
                names = vec!["count".into()];
                rows = vec![vec![Some(count.to_string())]];
            }
            SimpleQueryMessage::RowDescription(columns) => {
                names = columns.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                if names.is_empty() {
                    names = row.columns().iter().map(|c| c.name().to_string()).collect();
                }
                rows.push((0..row.len()).map(|i| row.get(i).map(String::from)).collect());
            }
            _ => {}
        }
    }
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|name| Field::new(name, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    if names.is_empty() {
        return (schema, Vec::new());
    }
    let columns: Vec<ArrayRef> = (0..names.len())
        .map(|i| {
            Arc::new(
                rows.iter()
                    .map(|row| row.get(i).cloned().flatten())
                    .collect::<StringArray>(),
            ) as ArrayRef
        })
        .collect();
    match RecordBatch::try_new(schema.clone(), columns) {
        Ok(batch) => (schema, vec![batch]),
        Err(_) => (schema, Vec::new()),
    }
}

/// The Arrow type of a Postgres type whose text the printer should not show as text.
fn arrow_type(pg: &Type) -> Option<DataType> {
    match *pg {
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => Some(DataType::Int64),
        Type::FLOAT4 | Type::FLOAT8 => Some(DataType::Float64),
        Type::BOOL => Some(DataType::Boolean),
        _ => None,
    }
}

/// The text columns cast to `types` where one is given and every value converts; the others
/// stay text.
fn typed(schema: SchemaRef, batches: Vec<RecordBatch>, types: &[Option<DataType>]) -> (SchemaRef, Vec<RecordBatch>) {
    let [batch] = batches.as_slice() else {
        return (schema, batches);
    };
    if types.len() != batch.num_columns() || types.iter().all(Option::is_none) {
        return (schema, batches);
    }
    let mut fields = Vec::with_capacity(types.len());
    let mut columns = Vec::with_capacity(types.len());
    for ((field, column), target) in schema.fields().iter().zip(batch.columns()).zip(types) {
        let converted = target.as_ref().and_then(|target| {
            let text = column.as_string::<i32>();
            let parsed: Option<ArrayRef> = match target {
                // Postgres writes booleans as t and f.
                DataType::Boolean => Some(Arc::new(
                    text.iter()
                        .map(|v| v.map(|v| matches!(v, "t" | "true")))
                        .collect::<BooleanArray>(),
                ) as ArrayRef),
                _ => cast_with_options(
                    column,
                    target,
                    &CastOptions {
                        safe: false,
                        ..Default::default()
                    },
                )
                .ok(),
            };
            parsed.filter(|array| array.null_count() == column.null_count())
        });
        match converted {
            Some(array) => {
                fields.push(Field::new(field.name(), array.data_type().clone(), true));
                columns.push(array);
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    let typed_schema = Arc::new(Schema::new(fields));
    match RecordBatch::try_new(typed_schema.clone(), columns) {
        Ok(batch) => (typed_schema, vec![batch]),
        Err(_) => (schema, batches),
    }
}

/// An error as the server gave it: its message and SQLSTATE.
fn describe(error: &tokio_postgres::Error) -> String {
    match (error.as_db_error(), std::error::Error::source(error)) {
        (Some(db), _) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        // "error connecting to server: Connection refused (os error 111)".
        (None, Some(source)) => format!("{error}: {source}"),
        (None, None) => error.to_string(),
    }
}

fn address(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(DEFAULT_PORT);
    format!("{host}:{port}")
}
