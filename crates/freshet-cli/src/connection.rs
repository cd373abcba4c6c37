//! What the shell and scripts run statements in: an engine of their own, or a server.

use freshet::Engine;
use freshet::datafusion::arrow::array::{Array, AsArray};
use freshet::datafusion::arrow::compute::cast;
use freshet::datafusion::arrow::datatypes::DataType;

use crate::output::Printer;
use crate::remote::Remote;

/// An engine in this process, or a `freshet serve` reached over the Postgres protocol.
pub(crate) enum Connection {
    Local(Engine),
    Remote(Box<Remote>),
}

impl Connection {
    /// Where statements run, for the shell's greeting.
    pub(crate) fn location(&self) -> String {
        match self {
            Connection::Local(engine) => engine.location().to_string(),
            Connection::Remote(remote) => remote.location(),
        }
    }

    /// The engine, when it runs in this process.
    pub(crate) fn engine(&self) -> Option<&Engine> {
        match self {
            Connection::Local(engine) => Some(engine),
            Connection::Remote(_) => None,
        }
    }

    /// Runs every statement of a script, printing each result; the first error stops it and
    /// is returned with the statement's position.
    pub(crate) async fn run_script(&self, printer: &mut Printer, origin: &str, sql: &str) -> Result<(), String> {
        match self {
            Connection::Local(engine) => crate::script::run_script(engine, printer, origin, sql).await,
            Connection::Remote(remote) => remote.run_script(printer, origin, sql).await,
        }
    }

    /// The rows of a query as text (NULL as `None`); `None` when it fails. For the shell's own
    /// look-ups (completion, meta-commands), which work alike locally and on a server.
    pub(crate) async fn rows(&self, sql: &str) -> Option<Vec<Vec<Option<String>>>> {
        match self {
            Connection::Local(engine) => {
                let batches = engine.sql(sql).await.ok()?;
                let mut rows = Vec::new();
                for batch in &batches {
                    let columns = batch
                        .columns()
                        .iter()
                        .map(|column| cast(column, &DataType::Utf8).ok())
                        .collect::<Option<Vec<_>>>()?;
                    for i in 0..batch.num_rows() {
                        rows.push(
                            columns
                                .iter()
                                .map(|column| {
                                    let strings = column.as_string::<i32>();
                                    strings.is_valid(i).then(|| strings.value(i).to_string())
                                })
                                .collect(),
                        );
                    }
                }
                Some(rows)
            }
            Connection::Remote(remote) => remote.rows(sql).await,
        }
    }

    /// Whether `name` (as written, or lower-cased) is a materialized table.
    pub(crate) async fn is_materialized(&self, name: &str) -> bool {
        let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let sql = format!(
            "SELECT name FROM freshet.materialized_tables WHERE name IN ({}, {})",
            literal(name),
            literal(&name.to_lowercase())
        );
        self.rows(&sql).await.is_some_and(|rows| !rows.is_empty())
    }
}
