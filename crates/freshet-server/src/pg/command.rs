//! What a Postgres client's SQL text asks for: statements for the engine, catalog queries in
//! Postgres' dialect, or commands about the connection itself (transactions, session variables).

use std::ops::ControlFlow;
use std::sync::Arc;

use freshet::datafusion::arrow::datatypes::DataType;
use freshet::datafusion::common::ScalarValue;
use freshet::datafusion::logical_expr::{Expr, LogicalPlan};
use freshet::datafusion::prelude::SessionContext;
use freshet::datafusion::sql::parser::Statement as DFStatement;
use freshet::datafusion::sql::sqlparser::ast::{self, Set, Statement, Value, visit_expressions, visit_expressions_mut};
use freshet::datafusion::sql::unparser::Unparser;
use freshet::sql::FreshetStatement;
use freshet::{Engine, FreshetError, Result};

/// One statement of a client's SQL text, classified.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT` / `END`.
    Commit,
    /// `ROLLBACK` / `ABORT`.
    Rollback,
    /// `SET name = value` of a connection variable (Postgres clients set several).
    SetVariable {
        /// Lower-cased name.
        name: String,
        /// The value as written.
        value: String,
    },
    /// `SHOW name` of a connection variable.
    ShowVariable {
        /// Lower-cased name.
        name: String,
    },
    /// A statement for the engine.
    Engine(Arc<freshet::Statement>),
    /// `COPY (statement) TO STDOUT`: the statement's rows in COPY's text format, sent as they
    /// are produced (psql shows a `SUBSCRIBE` this way).
    CopyOut(Arc<freshet::Statement>),
    /// A read-only query that only Postgres' dialect parses (catalog queries of psql and
    /// drivers), for the catalog session.
    Catalog(Arc<Statement>),
}

impl Command {
    /// The command tag Postgres would send when it completes (before a row count).
    pub(crate) fn tag(&self) -> String {
        match self {
            Command::Begin => "BEGIN".into(),
            Command::Commit => "COMMIT".into(),
            Command::Rollback => "ROLLBACK".into(),
            Command::SetVariable { .. } => "SET".into(),
            Command::ShowVariable { .. } => "SHOW".into(),
            Command::Catalog(_) => "SELECT".into(),
            Command::CopyOut(_) => "COPY".into(),
            Command::Engine(statement) => tag_of(&statement.text),
        }
    }

    /// Whether the command may change data or definitions (for what ROLLBACK cannot undo).
    pub(crate) fn may_write(&self) -> bool {
        match self {
            Command::Engine(statement) => {
                !matches!(
                    statement.statement,
                    FreshetStatement::DataFusion(ref s)
                        if matches!(s.as_ref(), DFStatement::Statement(inner) if matches!(inner.as_ref(), Statement::Query(_)))
                ) && !self.only_reads()
            }
            _ => false,
        }
    }

    /// Whether this is a subscription: its rows do not end, and are sent as they come.
    pub(crate) fn is_subscribe(&self) -> bool {
        matches!(self, Command::Engine(s) if matches!(s.statement, FreshetStatement::Subscribe { .. }))
    }

    /// Whether this follows a table until the client stops it (a subscription, or a COPY of
    /// one): it does not hold a server's shutdown.
    pub(crate) fn follows(&self) -> bool {
        match self {
            Command::CopyOut(s) => matches!(s.statement, FreshetStatement::Subscribe { .. }),
            other => other.is_subscribe(),
        }
    }

    /// Whether running the command only reads (Freshet's SHOW, DESCRIBE and EXPLAIN
    /// statements): then it may run just to learn its result columns.
    pub(crate) fn only_reads(&self) -> bool {
        match self {
            Command::Engine(statement) => matches!(
                statement.statement,
                FreshetStatement::ShowMaterializedTables
                    | FreshetStatement::DescribeMaterializedTable { .. }
                    | FreshetStatement::ExplainMaterializedTable { .. }
                    | FreshetStatement::ShowCreateMaterializedTable { .. }
                    | FreshetStatement::ShowJobs
                    | FreshetStatement::Subscribe { .. }
            ),
            _ => false,
        }
    }

    /// Whether this is a query (its result columns can be known without running it).
    pub(crate) fn query(&self) -> Option<DFStatement> {
        match self {
            Command::Engine(statement) => match &statement.statement {
                FreshetStatement::DataFusion(s) => match s.as_ref() {
                    DFStatement::Statement(inner)
                        if matches!(
                            inner.as_ref(),
                            Statement::Query(_)
                                | Statement::ShowTables { .. }
                                | Statement::ShowColumns { .. }
                                | Statement::ExplainTable { .. }
                        ) =>
                    {
                        Some(s.as_ref().clone())
                    }
                    DFStatement::Explain(_) => Some(s.as_ref().clone()),
                    _ => None,
                },
                _ => None,
            },
            Command::Catalog(statement) => Some(DFStatement::Statement(Box::new(statement.as_ref().clone()))),
            _ => None,
        }
    }

    /// The DataFusion statement to infer parameter types from, when there is one.
    pub(crate) fn datafusion_statement(&self) -> Option<DFStatement> {
        match self {
            Command::Engine(statement) => match &statement.statement {
                FreshetStatement::DataFusion(s) => Some(s.as_ref().clone()),
                _ => None,
            },
            Command::Catalog(statement) => Some(DFStatement::Statement(Box::new(statement.as_ref().clone()))),
            _ => None,
        }
    }
}

/// Splits and classifies SQL text. Freshet's parser comes first (every Freshet statement);
/// text it cannot parse is tried in Postgres' dialect with the catalog rewrites, and taken
/// when it is only queries.
pub(crate) fn classify(
    engine: &Engine,
    compat: &datafusion_pg_catalog::sql::PostgresCompatibilityParser,
    text: &str,
) -> Result<Vec<Command>> {
    if let Some(inner) = super::follow::copy_to_stdout(text) {
        let mut statements = engine.parse(inner)?;
        return match statements.pop() {
            Some(statement) if statements.is_empty() => Ok(vec![Command::CopyOut(Arc::new(statement))]),
            _ => Err(FreshetError::InvalidStatement(
                "COPY (...) TO STDOUT takes one statement".into(),
            )),
        };
    }
    match engine.parse(text) {
        Ok(statements) => Ok(statements.into_iter().map(from_engine).collect()),
        Err(error) => {
            let Ok(statements) = compat.parse(text) else {
                return Err(error);
            };
            let mut commands = Vec::with_capacity(statements.len());
            for statement in statements {
                match connection_command(&statement) {
                    Some(command) => commands.push(command),
                    None if matches!(statement, Statement::Query(_)) => {
                        let mut statement = statement;
                        super::catalog::adapt_catalog_query(&mut statement);
                        commands.push(Command::Catalog(Arc::new(statement)))
                    }
                    None => return Err(error),
                }
            }
            if commands.is_empty() {
                return Err(error);
            }
            Ok(commands)
        }
    }
}

/// The Postgres-dialect reading of one query, for the catalog session (when the engine could
/// not plan it).
pub(crate) fn catalog_query(
    compat: &datafusion_pg_catalog::sql::PostgresCompatibilityParser,
    text: &str,
) -> Option<Arc<Statement>> {
    let mut statements = compat.parse(text).ok()?;
    match statements.pop() {
        Some(mut statement @ Statement::Query(_)) if statements.is_empty() => {
            super::catalog::adapt_catalog_query(&mut statement);
            Some(Arc::new(statement))
        }
        _ => None,
    }
}

fn from_engine(statement: freshet::Statement) -> Command {
    if let FreshetStatement::DataFusion(df) = &statement.statement
        && let DFStatement::Statement(inner) = df.as_ref()
        && let Some(command) = connection_command(inner)
    {
        return command;
    }
    Command::Engine(Arc::new(statement))
}

/// Transactions and connection variables: what a Postgres client says about its connection.
fn connection_command(statement: &Statement) -> Option<Command> {
    match statement {
        Statement::StartTransaction { .. } => Some(Command::Begin),
        Statement::Commit { .. } => Some(Command::Commit),
        Statement::Rollback { savepoint: None, .. } => Some(Command::Rollback),
        Statement::Set(Set::SingleAssignment { variable, values, .. }) if is_connection_variable(variable) => {
            Some(Command::SetVariable {
                name: variable.to_string().to_ascii_lowercase(),
                value: values
                    .iter()
                    .map(|v| unquote(&v.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
        Statement::Set(Set::SetTimeZone { value, .. }) => Some(Command::SetVariable {
            name: "timezone".into(),
            value: unquote(&value.to_string()),
        }),
        Statement::Set(Set::SetNames { charset_name, .. }) => Some(Command::SetVariable {
            name: "client_encoding".into(),
            value: unquote(&charset_name.to_string()),
        }),
        Statement::ShowVariable { variable } => {
            let name = variable.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join(" ");
            let name = name.to_ascii_lowercase();
            (!name.contains('.') && name != "all" && name != "tables" && name != "columns")
                .then_some(Command::ShowVariable { name })
        }
        _ => None,
    }
}

/// `SET x = ...` with an undotted name is a Postgres connection variable; dotted names are
/// DataFusion's and Freshet's settings, for the engine.
fn is_connection_variable(name: &ast::ObjectName) -> bool {
    name.0.len() == 1 && !name.to_string().contains('.')
}

fn unquote(value: &str) -> String {
    value.trim_matches('\'').to_string()
}

/// The command tag of a statement from its leading keywords: `CREATE MATERIALIZED TABLE`,
/// `INSERT`, `ALTER TABLE`, ...
fn tag_of(text: &str) -> String {
    let words: Vec<String> = text
        .split_whitespace()
        .take(8)
        .map(|w| w.trim_end_matches(';').to_ascii_uppercase())
        .collect();
    let Some(first) = words.first() else {
        return String::new();
    };
    match first.as_str() {
        "CREATE" | "DROP" | "ALTER" => {
            let mut tag = vec![first.as_str()];
            for word in &words[1..] {
                match word.as_str() {
                    "OR" | "REPLACE" | "TEMPORARY" | "TEMP" | "EXTERNAL" | "UNBOUNDED" | "IF" | "NOT" | "EXISTS" => {}
                    kind @ ("TABLE" | "VIEW" | "SCHEMA" | "DATABASE" | "FUNCTION" | "INDEX" | "CATALOG") => {
                        tag.push(kind);
                        break;
                    }
                    other if other.chars().all(|c| c.is_ascii_alphabetic()) => tag.push(other),
                    _ => break,
                }
            }
            tag.join(" ")
        }
        other => other.to_string(),
    }
}

/// The `$n` placeholders' types as DataFusion infers them from the statement's plan, in order.
/// Unknown when the statement is not DataFusion's or cannot be planned without its values.
pub(crate) async fn parameter_types(
    ctx: &SessionContext,
    command: &Command,
) -> (Vec<Option<DataType>>, Option<LogicalPlan>) {
    let Some(statement) = command.datafusion_statement() else {
        return (Vec::new(), None);
    };
    let count = placeholder_count(&statement);
    let Ok(plan) = ctx.state().statement_to_plan(statement).await else {
        return (vec![None; count], None);
    };
    let inferred = plan.get_parameter_types().unwrap_or_default();
    let types = (1..=count)
        .map(|n| inferred.get(&format!("${n}")).cloned().flatten())
        .collect();
    (types, Some(plan))
}

/// How many distinct `$n` a statement uses (the highest n).
pub(crate) fn placeholder_count(statement: &DFStatement) -> usize {
    let DFStatement::Statement(inner) = statement else {
        return 0;
    };
    let mut highest = 0;
    let _ = visit_expressions(inner.as_ref(), |expr| {
        if let Some(n) = placeholder_index(expr) {
            highest = highest.max(n);
        }
        ControlFlow::<()>::Continue(())
    });
    highest
}

fn placeholder_index(expr: &ast::Expr) -> Option<usize> {
    match expr {
        ast::Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => p.strip_prefix('$')?.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The engine statement with its `$n` placeholders replaced by the bound values, as literals.
pub(crate) fn bind(statement: &freshet::Statement, values: &[ScalarValue]) -> Result<freshet::Statement> {
    if values.is_empty() {
        return Ok(statement.clone());
    }
    let FreshetStatement::DataFusion(df) = &statement.statement else {
        return Err(FreshetError::Unsupported("parameters in this statement".into()));
    };
    let DFStatement::Statement(inner) = df.as_ref() else {
        return Err(FreshetError::Unsupported("parameters in this statement".into()));
    };
    let literals = values
        .iter()
        .map(|v| {
            Unparser::default()
                .expr_to_sql(&Expr::Literal(v.clone(), None))
                .map_err(FreshetError::from)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut bound = inner.as_ref().clone();
    let mut missing = None;
    let _ = visit_expressions_mut(&mut bound, |expr| {
        if let Some(n) = placeholder_index(expr) {
            match literals.get(n - 1) {
                Some(literal) => *expr = literal.clone(),
                None => missing = Some(n),
            }
        }
        ControlFlow::<()>::Continue(())
    });
    if let Some(n) = missing {
        return Err(FreshetError::InvalidStatement(format!(
            "there is no parameter ${n} ({} bound)",
            values.len()
        )));
    }
    Ok(freshet::Statement {
        text: bound.to_string(),
        statement: FreshetStatement::DataFusion(Box::new(DFStatement::Statement(Box::new(bound)))),
        line: statement.line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_the_statement_kind() {
        assert_eq!(
            tag_of("create materialized table m freshness = interval '1' second as select 1"),
            "CREATE MATERIALIZED TABLE"
        );
        assert_eq!(tag_of("CREATE OR REPLACE VIEW v AS SELECT 1"), "CREATE VIEW");
        assert_eq!(tag_of("CREATE TABLE IF NOT EXISTS t (a int)"), "CREATE TABLE");
        assert_eq!(tag_of("drop table t"), "DROP TABLE");
        assert_eq!(tag_of("ALTER MATERIALIZED TABLE m SUSPEND"), "ALTER MATERIALIZED TABLE");
        assert_eq!(tag_of("insert into t values (1)"), "INSERT");
        assert_eq!(tag_of("VACUUM"), "VACUUM");
    }
}
