//! UPDATE and DELETE.
//!
//! Both find the rows they change with a query DataFusion plans and runs: the table is read
//! through its position scan (each row with its data file and position), so the WHERE clause
//! may use anything a SELECT may, subqueries included. The rows found are deleted by position
//! (deletion vectors and a retraction file) and, for UPDATE, written again with their new
//! values — O(changed rows) written, never a rewrite of the table.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::Schema;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, Delete, FromTable, Ident, ObjectName, TableFactor, TableWithJoins, Update,
};
use futures::TryStreamExt;

use freshet_common::{FreshetError, Result};
use freshet_sql::{FreshetStatement, parse_statements};
use freshet_storage::delete_positioned;

use crate::engine::Engine;
use crate::execute::single_count;
use crate::schema::POSITIONS_SUFFIX;
use crate::time_travel;

impl Engine {
    pub(crate) async fn delete(&self, delete: &Delete) -> Result<SendableRecordBatchStream> {
        if delete.using.is_some() || delete.returning.is_some() || !delete.order_by.is_empty() || delete.limit.is_some()
        {
            return Err(FreshetError::Unsupported(
                "DELETE with USING, RETURNING, ORDER BY or LIMIT".into(),
            ));
        }
        let from = match &delete.from {
            FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables) => tables,
        };
        let [target] = from.as_slice() else {
            return Err(FreshetError::Unsupported("DELETE from several tables".into()));
        };
        let (name, alias) = self.dml_target(target)?;
        let table = self.table(&name)?;
        let mut txn = table.begin("DELETE").await?;
        let columns = txn.base().schema().fields().len();
        let select = format!(
            "SELECT * FROM {} AS {alias}{}",
            Ident::with_quote('"', format!("{name}{POSITIONS_SUFFIX}")),
            where_clause(&delete.selection)
        );
        let mut rows = self.internal_query(&select).await?;
        let mut deleted = 0;
        while let Some(batch) = rows.try_next().await? {
            deleted += delete_positioned(&mut txn, &batch, columns).await?;
        }
        txn.commit().await?;
        single_count("count", deleted)
    }

    pub(crate) async fn update(&self, update: &Update) -> Result<SendableRecordBatchStream> {
        if update.from.is_some() || update.returning.is_some() || update.limit.is_some() || !update.order_by.is_empty()
        {
            return Err(FreshetError::Unsupported(
                "UPDATE with FROM, RETURNING, ORDER BY or LIMIT".into(),
            ));
        }
        let (name, alias) = self.dml_target(&update.table)?;
        let table = self.table(&name)?;
        let mut txn = table.begin("UPDATE").await?;
        let schema = txn.base().schema().clone();
        let columns = schema.fields().len();

        // Which column each assignment sets.
        let mut targets: Vec<usize> = Vec::new();
        for assignment in &update.assignments {
            let AssignmentTarget::ColumnName(column) = &assignment.target else {
                return Err(FreshetError::Unsupported("UPDATE of a tuple of columns".into()));
            };
            let column_name = self.column_name(column)?;
            let index = schema.index_of(&column_name).map_err(|_| {
                FreshetError::InvalidStatement(format!("table \"{name}\": column \"{column_name}\" does not exist"))
            })?;
            if targets.contains(&index) {
                return Err(FreshetError::InvalidStatement(format!(
                    "table \"{name}\": column \"{column_name}\" is set twice"
                )));
            }
            targets.push(index);
        }
        let new_values = update
            .assignments
            .iter()
            .enumerate()
            .map(|(i, a)| format!(", ({}) AS \"__freshet_new_{i}\"", a.value))
            .collect::<String>();
        let select = format!(
            "SELECT *{new_values} FROM {} AS {alias}{}",
            Ident::with_quote('"', format!("{name}{POSITIONS_SUFFIX}")),
            where_clause(&update.selection)
        );
        let mut rows = self.internal_query(&select).await?;
        let cast = CastOptions {
            safe: false,
            ..Default::default()
        };
        // All old rows are deleted before any new row is inserted, so that an update moving a
        // primary key onto a key the same statement moves away is not a conflict.
        let loose = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let pool = self.inner.ctx.runtime_env().memory_pool.clone();
        let mut new_rows = freshet_storage::HeldRows::new(&pool, format!("UPDATE of \"{name}\""));
        let mut updated = 0;
        while let Some(batch) = rows.try_next().await? {
            let old = batch
                .project(&(0..columns + 2).collect::<Vec<_>>())
                .map_err(|e| FreshetError::Internal(e.to_string()))?;
            updated += delete_positioned(&mut txn, &old, columns).await?;
            let mut values: Vec<ArrayRef> = batch.columns()[..columns].to_vec();
            for (i, &target) in targets.iter().enumerate() {
                let field = schema.field(target);
                let value = batch.column(columns + 2 + i);
                values[target] = cast_with_options(value, field.data_type(), &cast).map_err(|e| {
                    FreshetError::InvalidStatement(format!(
                        "table \"{name}\": column \"{}\" ({}) cannot hold the new value: {e}",
                        field.name(),
                        field.data_type()
                    ))
                })?;
            }
            // NOT NULL is checked when the rows are inserted, which names the column.
            let new = RecordBatch::try_new(loose.clone(), values).map_err(|e| FreshetError::Internal(e.to_string()))?;
            new_rows.push(new, 0)?;
        }
        for batch in new_rows.batches() {
            txn.insert(batch).await?;
        }
        txn.updates_columns(&targets);
        txn.commit().await?;
        single_count("count", updated)
    }

    /// The table an UPDATE or DELETE writes, and the name its columns are qualified with.
    fn dml_target(&self, target: &TableWithJoins) -> Result<(String, String)> {
        if !target.joins.is_empty() {
            return Err(FreshetError::Unsupported("UPDATE or DELETE with JOIN".into()));
        }
        let TableFactor::Table {
            name,
            alias,
            args: None,
            version: None,
            ..
        } = &target.relation
        else {
            return Err(FreshetError::InvalidStatement(format!(
                "cannot change {}: only tables can be updated or deleted from",
                target.relation
            )));
        };
        let table = self.resolve_name(name)?;
        if let Some(connector) = self.inner.streams.connector_of(&table) {
            return Err(FreshetError::InvalidStatement(format!(
                "table \"{table}\" is a '{connector}' connector table: its rows come from the connector, \
                 they cannot be updated or deleted"
            )));
        }
        let qualifier = match alias {
            Some(alias) => alias.name.to_string(),
            None => Ident::with_quote('"', table.clone()).to_string(),
        };
        Ok((table, qualifier))
    }

    fn column_name(&self, column: &ObjectName) -> Result<String> {
        let ident = column
            .0
            .last()
            .and_then(|part| part.as_ident())
            .ok_or_else(|| FreshetError::InvalidStatement(format!("invalid column name {column}")))?;
        let normalize = self.normalizes_identifiers();
        Ok(if ident.quote_style.is_none() && normalize {
            ident.value.to_lowercase()
        } else {
            ident.value.clone()
        })
    }

    /// Plans and runs a query the engine wrote, with the same rewrites as a user's query.
    async fn internal_query(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        let mut parsed = parse_statements(sql)?;
        let Some(FreshetStatement::DataFusion(statement)) = parsed.pop().map(|p| p.statement) else {
            return Err(FreshetError::Internal(format!("not a query: {sql}")));
        };
        let mut statement = *statement;
        time_travel::rewrite(self, &mut statement).await?;
        let plan = self.inner.ctx.state().statement_to_plan(statement).await?;
        crate::progress::execute_tracked(self.execute_plan(plan).await?).await
    }
}

fn where_clause(selection: &Option<datafusion::sql::sqlparser::ast::Expr>) -> String {
    match selection {
        Some(predicate) => format!(" WHERE {predicate}"),
        None => String::new(),
    }
}
