//! `pg_catalog` for Postgres clients.
//!
//! psql's `\d`, drivers and BI tools introspect a server through `pg_catalog` (`pg_class`,
//! `pg_attribute`, `pg_namespace`, ...) with Postgres-only syntax (`OPERATOR(pg_catalog.~)`,
//! `'t'::regclass`). `datafusion-pg-catalog` provides both the tables, built from a DataFusion
//! catalog, and the rewrites of that syntax. They live in a session of the server's own that
//! reads the engine's catalog through an overlay, so the engine's session (what the shell and
//! embedders see) stays free of Postgres' objects.

mod functions;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, RwLock};

use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use freshet::datafusion::catalog::{CatalogProvider, SchemaProvider};
use freshet::datafusion::error::{DataFusionError, Result as DFResult};
use freshet::datafusion::prelude::{SessionConfig, SessionContext};
use freshet::datafusion::sql::sqlparser::ast::{
    Expr, FunctionArguments, Query, SelectItem, SetExpr, Statement, TableFactor, Value, visit_expressions_mut,
};
use freshet::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use freshet::datafusion::sql::sqlparser::parser::Parser;
use freshet::{CATALOG_NAME, Engine, SCHEMA_NAME};

/// A session that plans Postgres clients' catalog queries over the engine's tables.
pub(crate) fn catalog_session(engine: &Engine) -> Result<SessionContext, Box<DataFusionError>> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_create_default_catalog_and_schema(false)
        .with_default_catalog_and_schema(CATALOG_NAME, SCHEMA_NAME);
    let ctx = SessionContext::new_with_config(config);
    let inner = engine.session().catalog(CATALOG_NAME).ok_or_else(|| {
        Box::new(DataFusionError::Internal(format!(
            "the engine has no catalog {CATALOG_NAME}"
        )))
    })?;
    ctx.register_catalog(
        CATALOG_NAME,
        Arc::new(Overlay {
            inner,
            added: RwLock::default(),
        }),
    );
    datafusion_pg_catalog::setup_pg_catalog(&ctx, CATALOG_NAME, EmptyContextProvider)?;
    functions::register(&ctx);
    Ok(ctx)
}

/// The engine's catalog with schemas added beside its own (`pg_catalog`).
#[derive(Debug)]
struct Overlay {
    inner: Arc<dyn CatalogProvider>,
    added: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
}

impl CatalogProvider for Overlay {
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.inner.schema_names();
        names.extend(self.added.read().unwrap_or_else(|p| p.into_inner()).keys().cloned());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let added = self.added.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        added.or_else(|| self.inner.schema(name))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DFResult<Option<Arc<dyn SchemaProvider>>> {
        Ok(self
            .added
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.into(), schema))
    }
}

/// Adapts a Postgres client's catalog query to what the catalog session plans: storage
/// options as NULL (see `without_relation_options`), and Postgres' `ARRAY(SELECT x FROM ...)`,
/// which DataFusion does not have, rewritten into the
/// scalar subquery `(SELECT array_agg(x) FROM ...)` (psql's `\du` and `\d+` use it; an empty
/// result is NULL rather than an empty array). Over a set-returning function in FROM
/// (`unnest(c.reloptions)`, correlated with the outer row) it becomes NULL: such options are
/// never set on Freshet's tables.
pub(crate) fn adapt_catalog_query(statement: &mut Statement) {
    without_relation_options(statement);
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Function(function) = expr
            && function.name.to_string().eq_ignore_ascii_case("array")
            && let FunctionArguments::Subquery(query) = &function.args
        {
            *expr = array_of(query).unwrap_or(Expr::Value(Value::Null.into()));
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `pg_class.reloptions` (storage options, an array of text), which `datafusion-pg-catalog`
/// does not have and Freshet's tables never set, as NULL: `\d+` formats it with
/// `array_to_string(c.reloptions || ..., ', ')`, which becomes NULL whole.
fn without_relation_options(statement: &mut Statement) {
    let mentions_options = |expr: &Expr| expr.to_string().to_ascii_lowercase().contains("reloptions");
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Function(function) = expr
            && function
                .name
                .to_string()
                .to_ascii_lowercase()
                .ends_with("array_to_string")
            && mentions_options(expr)
        {
            *expr = Expr::Value(Value::Null.into());
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_expressions_mut(statement, |expr| {
        let name = match &*expr {
            Expr::Identifier(ident) => Some(ident),
            Expr::CompoundIdentifier(parts) => parts.last(),
            _ => None,
        };
        if name.is_some_and(|ident| ident.value.eq_ignore_ascii_case("reloptions")) {
            *expr = Expr::Value(Value::Null.into());
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `(SELECT array_agg(x) FROM ...)` for `ARRAY(SELECT x FROM ...)`, when the subquery is one
/// plain SELECT of one column over tables.
fn array_of(query: &Query) -> Option<Expr> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [item] = select.projection.as_slice() else {
        return None;
    };
    let (SelectItem::UnnamedExpr(value) | SelectItem::ExprWithAlias { expr: value, .. }) = item else {
        return None;
    };
    let set_returning = |factor: &TableFactor| {
        matches!(
            factor,
            TableFactor::Function { .. }
                | TableFactor::UNNEST { .. }
                | TableFactor::TableFunction { .. }
                | TableFactor::Table { args: Some(_), .. }
        )
    };
    if select
        .from
        .iter()
        .any(|from| set_returning(&from.relation) || from.joins.iter().any(|join| set_returning(&join.relation)))
    {
        return None;
    }
    let aggregate = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&format!("array_agg({value})"))
        .ok()?
        .parse_expr()
        .ok()?;
    let mut select = select.clone();
    select.projection = vec![SelectItem::UnnamedExpr(aggregate)];
    let mut query = query.clone();
    query.body = Box::new(SetExpr::Select(select));
    query.order_by = None;
    Some(Expr::Subquery(Box::new(query)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        adapt_catalog_query(&mut statements[0]);
        statements[0].to_string()
    }

    #[test]
    fn array_subqueries_become_aggregates_or_null() {
        assert_eq!(
            rewritten(
                "SELECT r.a, ARRAY(SELECT b.name FROM m JOIN b ON m.id = b.id WHERE m.x = r.oid) AS memberof FROM r"
            ),
            "SELECT r.a, (SELECT array_agg(b.name) FROM m JOIN b ON m.id = b.id WHERE m.x = r.oid) AS memberof FROM r"
        );
        assert_eq!(
            rewritten(
                "SELECT array_to_string(c.o || array(select 'toast.' || x from pg_catalog.unnest(tc.o) x), ', ') FROM c"
            ),
            "SELECT array_to_string(c.o || NULL, ', ') FROM c"
        );
        assert_eq!(
            rewritten(
                "SELECT c.relkind, pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ') FROM c"
            ),
            "SELECT c.relkind, NULL FROM c"
        );
        assert_eq!(rewritten("SELECT array[1, 2]"), "SELECT ARRAY[1, 2]");
    }
}
