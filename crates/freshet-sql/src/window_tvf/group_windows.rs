//! Flink's older group-window syntax with hopping and session windows:
//! `SELECT k, HOP_START(ts, slide, size), count(*) FROM t GROUP BY k, HOP(ts, slide, size)` (and
//! `SESSION(ts, gap)` with `SESSION_START/END/ROWTIME`). Such a query groups by windows a row
//! may belong to several of (HOP) or that depend on other rows (SESSION), which no expression of
//! the row gives, so it becomes the same query over the window table function: its FROM table
//! `t` becomes `TABLE(HOP(TABLE t, DESCRIPTOR(ts), slide, size))` (for SESSION, partitioned by
//! the other grouping columns), the group window `window_start, window_end`, and
//! `HOP_START/END/ROWTIME(...)` the columns `window_start`, `window_end`, `window_time`.
//! (`TUMBLE(ts, size)` needs none of this: it is an expression of the row.)

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, GroupByExpr, Ident, Select, SetExpr, TableFactor, visit_expressions_mut};
use datafusion::sql::sqlparser::parser::Parser;

use freshet_common::{FreshetError, Result};

use super::{arguments, function_name};
use crate::dialect::FreshetDialect;

/// Rewrites the group windows of a SELECT (and of the SELECTs of a set operation).
pub(super) fn rewrite(body: &mut SetExpr) -> Result<()> {
    match body {
        SetExpr::Select(select) => rewrite_select(select),
        SetExpr::SetOperation { left, right, .. } => {
            rewrite(left)?;
            rewrite(right)
        }
        _ => Ok(()),
    }
}

/// The kind of a group window call: `HOP` or `SESSION`.
fn kind(expr: &Expr) -> Option<&'static str> {
    let Expr::Function(function) = expr else {
        return None;
    };
    match function_name(&function.name).to_ascii_uppercase().as_str() {
        "HOP" => Some("HOP"),
        "SESSION" => Some("SESSION"),
        _ => None,
    }
}

fn rewrite_select(select: &mut Select) -> Result<()> {
    let GroupByExpr::Expressions(groups, _) = &mut select.group_by else {
        return Ok(());
    };
    let Some(at) = groups.iter().position(|g| kind(g).is_some()) else {
        return Ok(());
    };
    let window = groups.remove(at);
    let name = kind(&window).unwrap_or("HOP");
    let Expr::Function(function) = &window else {
        return Ok(());
    };
    let args: Vec<String> = arguments(function).iter().map(ToString::to_string).collect();
    let expected = if name == "HOP" { 3 } else { 2 };
    if args.len() != expected {
        return Err(FreshetError::InvalidStatement(format!(
            "{name} in GROUP BY takes the time column and {}: {window}",
            if name == "HOP" {
                "the slide and the size"
            } else {
                "the gap"
            }
        )));
    }
    let time = args[0].rsplit('.').next().unwrap_or(&args[0]).to_string();
    let [from] = select.from.as_mut_slice() else {
        return Err(group_window_error(name));
    };
    let TableFactor::Table { name: table, alias, .. } = &from.relation else {
        return Err(group_window_error(name));
    };
    if !from.joins.is_empty() {
        return Err(group_window_error(name));
    }
    let qualifier = alias
        .as_ref()
        .map(|a| a.name.clone())
        .or_else(|| table.0.last().and_then(|p| p.as_ident().cloned()))
        .unwrap_or_else(|| Ident::new("w"));
    // A session is per value of the other grouping columns (`B.bidder` is the table's
    // column `bidder`; `bid.bidder`, with no table `bid`, a field of the ROW column `bid`).
    let partition = if name == "SESSION" {
        let keys: Vec<String> = groups
            .iter()
            .filter_map(|g| match g {
                Expr::Identifier(i) => Some(i.to_string()),
                Expr::CompoundIdentifier(parts) => match parts.split_first() {
                    Some((first, rest)) if first.value.eq_ignore_ascii_case(&qualifier.value) => {
                        Some(rest.iter().map(ToString::to_string).collect::<Vec<_>>().join("."))
                    }
                    _ => Some(parts.iter().map(ToString::to_string).collect::<Vec<_>>().join(".")),
                },
                _ => None,
            })
            .collect();
        if keys.is_empty() {
            String::new()
        } else {
            format!(" PARTITION BY ({})", keys.join(", "))
        }
    } else {
        String::new()
    };
    let parameters = args[1..].join(", ");
    let sql = format!(
        "SELECT * FROM TABLE({name}(TABLE {table}{partition}, DESCRIPTOR({time}), {parameters})) AS {qualifier}"
    );
    let dialect = FreshetDialect::default();
    let parsed = Parser::new(&dialect)
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_query())
        .map_err(|e| FreshetError::Internal(format!("group window {sql}: {e}")))?;
    let SetExpr::Select(parsed) = *parsed.body else {
        return Err(FreshetError::Internal(format!("group window {sql}: not a SELECT")));
    };
    let Some(relation) = parsed.from.into_iter().next().map(|t| t.relation) else {
        return Err(FreshetError::Internal(format!("group window {sql}: no FROM")));
    };
    from.relation = relation;
    let column = |suffix: &str| Expr::CompoundIdentifier(vec![qualifier.clone(), Ident::new(suffix)]);
    // (`window_time` too, so that `*_ROWTIME(...)` can be selected: it follows from the end.)
    groups.insert(at, column("window_time"));
    groups.insert(at, column("window_end"));
    groups.insert(at, column("window_start"));
    // HOP_START(...) and the like: the window's columns.
    let (start, end, rowtime) = (
        format!("{name}_START"),
        format!("{name}_END"),
        format!("{name}_ROWTIME"),
    );
    let mut replace = |expr: &mut Expr| {
        if let Expr::Function(f) = expr {
            let called = function_name(&f.name).to_ascii_uppercase();
            let suffix = if called == start {
                Some("window_start")
            } else if called == end {
                Some("window_end")
            } else if called == rowtime {
                Some("window_time")
            } else {
                None
            };
            if let Some(suffix) = suffix {
                *expr = column(suffix);
            }
        }
        ControlFlow::<()>::Continue(())
    };
    let _ = visit_expressions_mut(&mut select.projection, &mut replace);
    let _ = visit_expressions_mut(&mut select.having, &mut replace);
    Ok(())
}

fn group_window_error(name: &str) -> FreshetError {
    FreshetError::Unsupported(format!(
        "{name} in GROUP BY over anything but one table: use the window table function \
         TABLE({name}(TABLE t, DESCRIPTOR(ts), ...)) in FROM"
    ))
}
