//! Output names of nested field access, as Apache Flink gives them.
//!
//! In Flink, `SELECT bid.auction FROM events` (a field of a ROW column) yields a column named
//! `auction`; DataFusion names it `events.bid[auction]`, so a view such as nexmark-flink's
//! `CREATE VIEW bid AS SELECT bid.auction, ... FROM datagen` would have no column `auction`.
//! A select item that is a compound identifier naming a field — three parts or more, or two
//! whose first part is not a table or alias of that SELECT's FROM clause — is given its last
//! part as an alias. `t.column` stays as it is (DataFusion already names it `column`).

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Query, SelectItem, SetExpr, Statement, TableFactor, TableWithJoins, VisitMut, VisitorMut,
};

/// Names nested field accesses in every query of a statement.
pub(crate) fn name_field_accesses(statement: &mut Statement) {
    let _ = statement.visit(&mut FieldNames);
}

struct FieldNames;

impl VisitorMut for FieldNames {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        name_in(&mut query.body);
        ControlFlow::Continue(())
    }
}

fn name_in(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            let mut relations = HashSet::new();
            for table in &select.from {
                collect_relations(table, &mut relations);
            }
            for item in &mut select.projection {
                let SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) = item else {
                    continue;
                };
                let is_field =
                    parts.len() >= 3 || (parts.len() == 2 && !relations.contains(&parts[0].value.to_lowercase()));
                if let (true, Some(last)) = (is_field, parts.last().cloned()) {
                    *item = SelectItem::ExprWithAlias {
                        expr: Expr::CompoundIdentifier(parts.clone()),
                        alias: last,
                    };
                }
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            name_in(left);
            name_in(right);
        }
        // Nested queries are visited on their own.
        _ => {}
    }
}

fn collect_relations(table: &TableWithJoins, out: &mut HashSet<String>) {
    collect_factor(&table.relation, out);
    for join in &table.joins {
        collect_factor(&join.relation, out);
    }
}

fn collect_factor(factor: &TableFactor, out: &mut HashSet<String>) {
    match factor {
        TableFactor::Table { name, alias, .. } => {
            if let Some(alias) = alias {
                out.insert(alias.name.value.to_lowercase());
            }
            // A table is referred to by its last name part (`s.t` as `t`) or its full name.
            if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
                out.insert(last.value.to_lowercase());
            }
        }
        TableFactor::NestedJoin {
            table_with_joins,
            alias,
        } => {
            if let Some(alias) = alias {
                out.insert(alias.name.value.to_lowercase());
            }
            collect_relations(table_with_joins, out);
        }
        other => {
            // Derived tables, table functions, UNNEST, ...: their alias.
            if let Some(alias) = table_factor_alias(other) {
                out.insert(alias);
            }
        }
    }
}

fn table_factor_alias(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Derived { alias, .. }
        | TableFactor::TableFunction { alias, .. }
        | TableFactor::Function { alias, .. }
        | TableFactor::UNNEST { alias, .. } => alias.as_ref().map(|a| a.name.value.to_lowercase()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::{FreshetStatement, parse_statements};

    fn text(sql: &str) -> String {
        match &parse_statements(sql).unwrap()[0].statement {
            FreshetStatement::DataFusion(s) => s.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_fields_but_not_table_columns() {
        assert_eq!(
            text("SELECT bid.auction, `dateTime`, e.bid.price FROM events AS e WHERE event_type = 2"),
            "SELECT bid.auction AS auction, `dateTime`, e.bid.price AS price FROM events AS e WHERE event_type = 2"
        );
        assert_eq!(
            text("SELECT t.a, u.b FROM t JOIN u ON t.a = u.a"),
            "SELECT t.a, u.b FROM t JOIN u ON t.a = u.a"
        );
        assert_eq!(
            text("CREATE VIEW v AS SELECT person.id FROM datagen"),
            "CREATE VIEW v AS SELECT person.id AS id FROM datagen"
        );
        assert_eq!(
            text("SELECT x FROM (SELECT p.id FROM s) AS q"),
            "SELECT x FROM (SELECT p.id AS id FROM s) AS q"
        );
    }
}
