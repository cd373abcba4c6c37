//! Time travel: `FROM t FOR SYSTEM_TIME AS OF TIMESTAMP '...'`, `FROM t TIMESTAMP AS OF '...'`
//! and `FROM t VERSION AS OF n` (or `FOR SYSTEM_TIME AS OF n` with an integer) read a retained
//! older version. The clause is resolved to a version number and the table reference rewritten
//! to the internal name of that version, keeping the table's name as its alias.

use std::ops::ControlFlow;

use datafusion::arrow::array::{Array, Int64Array};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, Ident, ObjectName, TableAlias, TableFactor, TableVersion, Value, VisitMut, VisitorMut,
};

use freshet_common::{FreshetError, Result};

use crate::engine::Engine;
use crate::schema::version_name;

/// Rewrites every versioned table reference of `statement`.
pub(crate) async fn rewrite(engine: &Engine, statement: &mut DFStatement) -> Result<()> {
    let mut found = Collect::default();
    let _ = visit(statement, &mut found);
    if found.references.is_empty() {
        return Ok(());
    }
    let mut versions = Vec::with_capacity(found.references.len());
    for (name, version) in found.references {
        let table_name = engine.resolve_name(&name)?;
        let table = engine.table(&table_name)?;
        let resolved = match version_number(&version) {
            Some(n) => n,
            None => {
                let at_ms = evaluate_timestamp(engine, &version).await?;
                table.version_at(at_ms).await?
            }
        };
        // A version that is gone is reported, naming the table, when the reference is resolved.
        versions.push((table_name, resolved));
    }
    let mut apply = Apply {
        versions: versions.into_iter(),
    };
    let _ = visit(statement, &mut apply);
    Ok(())
}

fn visit<V: VisitorMut>(statement: &mut DFStatement, visitor: &mut V) -> ControlFlow<V::Break> {
    match statement {
        DFStatement::Statement(inner) => inner.visit(visitor),
        DFStatement::Explain(explain) => visit(&mut explain.statement, visitor),
        _ => ControlFlow::Continue(()),
    }
}

#[derive(Default)]
struct Collect {
    references: Vec<(ObjectName, TableVersion)>,
}

impl VisitorMut for Collect {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table { name, version, .. } = factor {
            // Flink's processing-time lookup join (`FOR SYSTEM_TIME AS OF proctime()`) reads
            // the table as it is when the statement runs: its current version.
            if let Some(TableVersion::ForSystemTimeAsOf(Expr::Function(f))) = version
                && f.name.to_string().eq_ignore_ascii_case("proctime")
            {
                *version = None;
            }
            if let Some(version) = version {
                self.references.push((name.clone(), version.clone()));
            }
        }
        ControlFlow::Continue(())
    }
}

struct Apply<I> {
    versions: I,
}

impl<I: Iterator<Item = (String, u64)>> VisitorMut for Apply<I> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name, alias, version, ..
        } = factor
            && version.is_some()
            && let Some((table, resolved)) = self.versions.next()
        {
            *name = ObjectName::from(vec![Ident::with_quote('"', version_name(&table, resolved))]);
            if alias.is_none() {
                *alias = Some(TableAlias {
                    explicit: true,
                    name: Ident::with_quote('"', table),
                    columns: Vec::new(),
                    at: None,
                });
            }
            *version = None;
        }
        ControlFlow::Continue(())
    }
}

/// A version given as an integer literal.
fn version_number(version: &TableVersion) -> Option<u64> {
    let expr = match version {
        TableVersion::VersionAsOf(e) | TableVersion::ForSystemTimeAsOf(e) => e,
        _ => return None,
    };
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Evaluates a timestamp expression to milliseconds since the Unix epoch (UTC when the
/// timestamp has no time zone).
async fn evaluate_timestamp(engine: &Engine, version: &TableVersion) -> Result<i64> {
    let expr = match version {
        TableVersion::ForSystemTimeAsOf(e) | TableVersion::TimestampAsOf(e) => e,
        TableVersion::VersionAsOf(e) => {
            return Err(FreshetError::InvalidStatement(format!(
                "VERSION AS OF takes a version number, found {e}"
            )));
        }
        other => {
            return Err(FreshetError::Unsupported(format!("time travel with {other}")));
        }
    };
    let sql = format!("SELECT CAST(CAST(({expr}) AS TIMESTAMP) AS BIGINT) AS ns");
    let batches = engine
        .session()
        .sql(&sql)
        .await
        .map_err(|e| FreshetError::InvalidStatement(format!("AS OF {expr}: not a timestamp: {e}")))?
        .collect()
        .await
        .map_err(|e| FreshetError::InvalidStatement(format!("AS OF {expr}: not a timestamp: {e}")))?;
    let value = batches
        .first()
        .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>().cloned())
        .filter(|a| !a.is_empty() && !a.is_null(0))
        .map(|a| a.value(0))
        .ok_or_else(|| FreshetError::InvalidStatement(format!("AS OF {expr}: the timestamp is NULL")))?;
    Ok(value.div_euclid(1_000_000))
}
