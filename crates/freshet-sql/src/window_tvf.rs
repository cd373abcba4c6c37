//! Apache Flink's window table-valued functions, as queries DataFusion plans.
//!
//! `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), size [, offset]))` (and `HOP`, `CUMULATE`, also with
//! Flink's named arguments `DATA =>`, `TIMECOL =>`, `SIZE =>`, `SLIDE =>`, `STEP =>`,
//! `OFFSET =>`) is the rows of `t` with `window_start`, `window_end` and `window_time`
//! (`window_end - 1 ms`) added, one row per window a row belongs to. DataFusion has no window
//! functions in FROM, and its parser does not take `TABLE t` as an argument, so the dialect
//! parses `TABLE t` into a marker and this module rewrites each window call into a derived
//! table: a projection with `date_bin` for a tumbling window; for a hopping window (which puts
//! a row in `size / slide` windows) and a cumulating one (`size / step` windows, the first
//! ending after the row), a `UNION ALL` of one such projection per window, filtered where a
//! window may not hold the row. Everything after that — batch evaluation, incremental
//! maintenance, jobs — sees plain relational operators.
//!
//! Flink's older group-window functions in GROUP BY (`TUMBLE(ts, size)` with `TUMBLE_START`,
//! `TUMBLE_END`, `TUMBLE_ROWTIME`) become the same `date_bin` expressions.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    DateTimeField, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, ObjectNamePart, Query,
    Statement, TableAlias, TableFactor, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::parser::Parser;

use freshet_common::{FreshetError, Result};

use crate::dialect::FreshetDialect;

mod group_windows;

/// The alias of a window call's table in its rewrite (the engine names it in errors).
const INPUT: &str = freshet_common::WINDOW_INPUT;

/// The function name under which the dialect parses `TABLE t` (a window function's argument).
pub(crate) const TABLE_ARGUMENT: &str = "__freshet_table_argument";

/// Rewrites the window functions of every query of a statement.
pub(crate) fn rewrite_statement(statement: &mut Statement) -> Result<()> {
    let mut rewriter = Rewriter::default();
    let _ = statement.visit(&mut rewriter);
    rewriter.finish()
}

/// Rewrites the window functions of a query.
pub(crate) fn rewrite_query(query: &mut Query) -> Result<()> {
    let mut rewriter = Rewriter::default();
    let _ = query.visit(&mut rewriter);
    rewriter.finish()
}

#[derive(Default)]
struct Rewriter {
    error: Option<FreshetError>,
}

impl Rewriter {
    fn finish(self) -> Result<()> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl VisitorMut for Rewriter {
    type Break = ();

    /// Group windows of HOP and SESSION become window table functions before the query's
    /// parts are visited.
    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        match group_windows::rewrite(&mut query.body) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::TableFunction {
            expr: Expr::Function(function),
            alias,
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let Some(kind) = WindowKind::of(&function.name) else {
            return ControlFlow::Continue(());
        };
        // Without an alias, the rows are named after the table (`sum(bid.price)`, as a query
        // of the table itself names them).
        let alias = alias.take().or_else(|| table_alias(function));
        match window_table(kind, function).and_then(|query| derived(query, alias)) {
            Ok(derived) => {
                *factor = derived;
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let Expr::Function(function) = expr else {
            return ControlFlow::Continue(());
        };
        let name = function_name(&function.name);
        if name == TABLE_ARGUMENT {
            self.error = Some(FreshetError::InvalidStatement(
                "TABLE <name> is an argument of a window function only: \
                 TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) and HOP, CUMULATE"
                    .into(),
            ));
            return ControlFlow::Break(());
        }
        match group_window(&name, function) {
            Ok(Some(rewritten)) => *expr = rewritten,
            Ok(None) => {}
            Err(e) => {
                self.error = Some(e);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum WindowKind {
    Tumble,
    Hop,
    Cumulate,
    Session,
}

impl WindowKind {
    fn of(name: &ObjectName) -> Option<Self> {
        match function_name(name).to_ascii_uppercase().as_str() {
            "TUMBLE" => Some(Self::Tumble),
            "HOP" => Some(Self::Hop),
            "CUMULATE" => Some(Self::Cumulate),
            "SESSION" => Some(Self::Session),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Tumble => "TUMBLE",
            Self::Hop => "HOP",
            Self::Cumulate => "CUMULATE",
            Self::Session => "SESSION",
        }
    }

    /// The arguments after DATA and TIMECOL, by Flink's names, in positional order; the last is
    /// optional (OFFSET).
    fn parameters(self) -> &'static [&'static str] {
        match self {
            Self::Tumble => &["SIZE", "OFFSET"],
            Self::Hop => &["SLIDE", "SIZE", "OFFSET"],
            Self::Cumulate => &["STEP", "SIZE", "OFFSET"],
            Self::Session => &["GAP"],
        }
    }
}

fn function_name(name: &ObjectName) -> String {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] => ident.value.clone(),
        _ => name.to_string(),
    }
}

fn invalid(kind: WindowKind, message: impl std::fmt::Display) -> FreshetError {
    FreshetError::InvalidStatement(format!("{}: {message}", kind.name()))
}

/// The arguments of a window call, by name.
struct WindowCall {
    table: ObjectName,
    /// `TABLE t PARTITION BY k, ...` (SESSION).
    keys: Vec<String>,
    time: String,
    /// In milliseconds, by parameter name.
    durations: Vec<(&'static str, i64)>,
}

impl WindowCall {
    fn duration(&self, name: &str) -> Option<i64> {
        self.durations.iter().find(|(n, _)| *n == name).map(|(_, ms)| *ms)
    }
}

fn arguments(function: &Function) -> &[FunctionArg] {
    match &function.args {
        FunctionArguments::List(list) => &list.args,
        _ => &[],
    }
}

fn window_call(kind: WindowKind, function: &Function) -> Result<WindowCall> {
    let parameters = kind.parameters();
    let mut names: Vec<&'static str> = vec!["DATA", "TIMECOL"];
    names.extend_from_slice(parameters);
    let mut given: Vec<Option<&Expr>> = vec![None; names.len()];
    let mut positional = 0;
    for arg in arguments(function) {
        let (name, value) = match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => (None, e),
            FunctionArg::Named {
                name,
                arg: FunctionArgExpr::Expr(e),
                ..
            } => (Some(name.value.clone()), e),
            FunctionArg::ExprNamed {
                name: Expr::Identifier(name),
                arg: FunctionArgExpr::Expr(e),
                ..
            } => (Some(name.value.clone()), e),
            other => return Err(invalid(kind, format!("unexpected argument {other}"))),
        };
        let slot = match name {
            Some(name) => names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(&name))
                .ok_or_else(|| {
                    invalid(
                        kind,
                        format!("no argument named {name} (its arguments are {})", names.join(", ")),
                    )
                })?,
            None => {
                positional += 1;
                positional - 1
            }
        };
        if slot >= names.len() {
            return Err(invalid(
                kind,
                format!("too many arguments (it takes {})", names.join(", ")),
            ));
        }
        if given[slot].replace(value).is_some() {
            return Err(invalid(kind, format!("argument {} is given twice", names[slot])));
        }
    }
    let (table, keys) = match given[0] {
        Some(Expr::Function(f)) if function_name(&f.name) == TABLE_ARGUMENT => match arguments(f) {
            [
                FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(parts))),
                keys @ ..,
            ] => {
                let keys: Vec<String> = keys
                    .iter()
                    .filter_map(|k| match k {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(key))) => Some(key.to_string()),
                        // A field of a ROW column (`bid.bidder`).
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(parts))) => {
                            Some(parts.iter().map(ToString::to_string).collect::<Vec<_>>().join("."))
                        }
                        _ => None,
                    })
                    .collect();
                (ObjectName::from(parts.clone()), keys)
            }
            _ => return Err(invalid(kind, "the first argument is a table: TABLE t")),
        },
        _ => return Err(invalid(kind, "the first argument (DATA) is a table: TABLE t")),
    };
    if !keys.is_empty() && kind != WindowKind::Session {
        return Err(invalid(kind, "PARTITION BY belongs to SESSION windows"));
    }
    let time = match given[1] {
        Some(Expr::Function(f)) if function_name(&f.name).eq_ignore_ascii_case("DESCRIPTOR") => match arguments(f) {
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(column)))] => column.to_string(),
            _ => return Err(invalid(kind, "DESCRIPTOR takes one column: DESCRIPTOR(ts)")),
        },
        _ => {
            return Err(invalid(
                kind,
                "the second argument (TIMECOL) is the time column: DESCRIPTOR(ts)",
            ));
        }
    };
    let mut durations = Vec::new();
    for (i, name) in parameters.iter().enumerate() {
        let optional = *name == "OFFSET";
        match given[i + 2] {
            Some(expr) => {
                let ms = interval_ms(expr).map_err(|why| invalid(kind, format!("{name}: {why}")))?;
                if !optional && ms <= 0 {
                    return Err(invalid(
                        kind,
                        format!("the {} must be positive, got {expr}", name.to_lowercase()),
                    ));
                }
                durations.push((*name, ms));
            }
            None if optional => {}
            None => return Err(invalid(kind, format!("the argument {name} is missing"))),
        }
    }
    Ok(WindowCall {
        table,
        keys,
        time,
        durations,
    })
}

/// The query of a window call's rows.
fn window_table(kind: WindowKind, function: &Function) -> Result<String> {
    let call = window_call(kind, function)?;
    let offset = call.duration("OFFSET").unwrap_or(0);
    let table = &call.table;
    // Checked to be a timestamp when planned (the engine's `window_time_column`).
    let time = format!("window_time_column({INPUT}.{})", call.time);
    let bin = |stride: i64| {
        format!(
            "date_bin(INTERVAL '{stride} milliseconds', {time}, TIMESTAMP '1970-01-01 00:00:00' + INTERVAL '{offset} milliseconds')"
        )
    };
    // `window_bound(end, ts)` is `end`, and tells incremental maintenance that the column is a
    // window's end after the row's time: once the watermark of `ts`'s source passes it, the
    // window is final and its state can go.
    let column = format!("{INPUT}.{}", call.time);
    let select_timed = |start: String, end: String, window_time: String, filter: Option<String>| {
        format!(
            "SELECT {INPUT}.*, {start} AS window_start, window_bound({end}, {column}) AS window_end, \
             {window_time} AS window_time FROM {table} AS {INPUT}{}",
            filter.map(|f| format!(" WHERE {f}")).unwrap_or_default()
        )
    };
    let select = |start: String, end: String, filter: Option<String>| {
        // Marked too, so that windows over it (cascading windows) close with the source's
        // watermark.
        let window_time = format!("window_bound({end}, {column}) - INTERVAL '1 milliseconds'");
        select_timed(start, end, window_time, filter)
    };
    let size = call.duration("SIZE").unwrap_or(0);
    match kind {
        WindowKind::Tumble => {
            let start = bin(size);
            Ok(select(
                start.clone(),
                format!("{start} + INTERVAL '{size} milliseconds'"),
                None,
            ))
        }
        WindowKind::Hop => {
            let slide = call.duration("SLIDE").unwrap_or(1);
            if size % slide != 0 {
                return Err(invalid(
                    kind,
                    format!("the size ({size} ms) must be an integral multiple of the slide ({slide} ms), as in Flink"),
                ));
            }
            // A row is in the windows starting at its slide's start and the size/slide - 1
            // slides before it: the engine's `window_hop` gives the bounds of each, and marks
            // the branch as the i-th window of this HOP for incremental maintenance.
            let parts: Vec<String> = (0..size / slide)
                .map(|i| {
                    let bound =
                        |which: &str| format!("window_hop({column}, {slide}, {size}, {offset}, {i}, '{which}')");
                    select_timed(bound("start"), bound("end"), bound("time"), None)
                })
                .collect();
            Ok(parts.join(" UNION ALL "))
        }
        WindowKind::Cumulate => {
            let step = call.duration("STEP").unwrap_or(1);
            if size % step != 0 {
                return Err(invalid(
                    kind,
                    format!("the size ({size} ms) must be an integral multiple of the step ({step} ms), as in Flink"),
                ));
            }
            // The windows of a row share its size-window's start and end at each step after it.
            let parts: Vec<String> = (1..=size / step)
                .map(|j| {
                    let end = format!("{} + INTERVAL '{} milliseconds'", bin(size), j * step);
                    select(bin(size), end.clone(), Some(format!("{time} < {end}")))
                })
                .collect();
            Ok(parts.join(" UNION ALL "))
        }
        WindowKind::Session => {
            // Rows of a partition less than the gap apart share a session, which ends one gap
            // after its last row: window functions of Freshet's own give each row its
            // session's bounds (see `freshet`'s window functions), which incremental
            // maintenance knows how to keep and to close.
            let gap = call.duration("GAP").unwrap_or(1);
            let partition = if call.keys.is_empty() {
                String::new()
            } else {
                format!("PARTITION BY {} ", call.keys.join(", "))
            };
            let ts = &call.time;
            let over = format!("OVER ({partition}ORDER BY {time})");
            Ok(format!(
                "SELECT * EXCLUDE (__window_start, __window_end), __window_start AS window_start, \
                   window_bound(__window_end, {ts}) AS window_end, \
                   window_bound(__window_end, {ts}) - INTERVAL '1 milliseconds' AS window_time \
                 FROM (SELECT {INPUT}.*, \
                         window_session_start({time}, {gap}) {over} AS __window_start, \
                         window_session_end({time}, {gap}) {over} AS __window_end \
                       FROM {table} AS {INPUT}) AS __window_sessions"
            ))
        }
    }
}

/// The last name part of a window call's `TABLE t`, as an alias.
fn table_alias(function: &Function) -> Option<TableAlias> {
    let data = arguments(function).iter().find_map(|arg| match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Function(f))) if function_name(&f.name) == TABLE_ARGUMENT => {
            Some(f)
        }
        FunctionArg::Named {
            arg: FunctionArgExpr::Expr(Expr::Function(f)),
            ..
        } if function_name(&f.name) == TABLE_ARGUMENT => Some(f),
        _ => None,
    })?;
    let [
        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(parts))),
        ..,
    ] = arguments(data)
    else {
        return None;
    };
    Some(TableAlias {
        explicit: true,
        name: parts.last()?.clone(),
        columns: Vec::new(),
        at: None,
    })
}

fn derived(query: String, alias: Option<TableAlias>) -> Result<TableFactor> {
    let dialect = FreshetDialect::default();
    let mut parser = Parser::new(&dialect)
        .try_with_sql(&query)
        .map_err(|e| FreshetError::Internal(format!("window query {query}: {e}")))?;
    let subquery = parser
        .parse_query()
        .map_err(|e| FreshetError::Internal(format!("window query {query}: {e}")))?;
    Ok(TableFactor::Derived {
        lateral: false,
        subquery,
        alias,
        sample: None,
    })
}

/// `TUMBLE(ts, size)` in GROUP BY and `TUMBLE_START/END/ROWTIME(ts, size)`: the tumbling
/// window's start, end and last millisecond.
fn group_window(name: &str, function: &Function) -> Result<Option<Expr>> {
    let upper = name.to_ascii_uppercase();
    let suffix = match upper.as_str() {
        "TUMBLE" => "",
        "TUMBLE_START" => "_START",
        "TUMBLE_END" => "_END",
        "TUMBLE_ROWTIME" => "_ROWTIME",
        // Left by the group-window rewrite: not in a GROUP BY of one table.
        "HOP_START" | "HOP_END" | "HOP_ROWTIME" | "SESSION_START" | "SESSION_END" | "SESSION_ROWTIME" => {
            return Err(FreshetError::InvalidStatement(format!(
                "{upper} names the window of a GROUP BY {}(...) of the same query",
                upper.split('_').next().unwrap_or_default()
            )));
        }
        _ => return Ok(None),
    };
    let args: Vec<&Expr> = arguments(function)
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect();
    let [time, size] = args.as_slice() else {
        return Err(FreshetError::InvalidStatement(format!(
            "{upper} takes the time column and the window size: {upper}(ts, INTERVAL '1' MINUTE)"
        )));
    };
    let size = interval_ms(size).map_err(|why| FreshetError::InvalidStatement(format!("{upper}: {why}")))?;
    if size <= 0 {
        return Err(FreshetError::InvalidStatement(format!(
            "{upper}: the window size must be positive"
        )));
    }
    let start = format!(
        "date_bin(INTERVAL '{size} milliseconds', window_time_column({time}), TIMESTAMP '1970-01-01 00:00:00')"
    );
    let text = match suffix {
        "_END" => format!("{start} + INTERVAL '{size} milliseconds'"),
        "_ROWTIME" => format!("{start} + INTERVAL '{} milliseconds'", size - 1),
        _ => start,
    };
    let dialect = FreshetDialect::default();
    let expr = Parser::new(&dialect)
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| FreshetError::Internal(format!("group window {text}: {e}")))?;
    Ok(Some(expr))
}

/// An interval literal in milliseconds: `INTERVAL '10' SECOND`, `INTERVAL '1' MINUTE`,
/// `INTERVAL '2 hours'`, `INTERVAL '1.5' SECOND`.
fn interval_ms(expr: &Expr) -> std::result::Result<i64, String> {
    let Expr::Interval(interval) = expr else {
        return Err(format!("expected an interval such as INTERVAL '1' MINUTE, got {expr}"));
    };
    let text = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            _ => return Err(format!("expected an interval such as INTERVAL '1' MINUTE, got {expr}")),
        },
        _ => return Err(format!("expected an interval literal, got {expr}")),
    };
    let unit_ms = |unit: &str| -> Option<f64> {
        let unit = unit.to_ascii_lowercase();
        let unit = unit.trim_end_matches('s');
        Some(match unit {
            "millisecond" | "m" => 1.0,
            "second" | "sec" => 1_000.0,
            "minute" | "min" => 60_000.0,
            "hour" | "h" => 3_600_000.0,
            "day" | "d" => 86_400_000.0,
            "week" => 604_800_000.0,
            _ => return None,
        })
    };
    let total = match &interval.leading_field {
        Some(field) => {
            let unit = match field {
                DateTimeField::Millisecond | DateTimeField::Milliseconds => "millisecond",
                DateTimeField::Second | DateTimeField::Seconds => "second",
                DateTimeField::Minute | DateTimeField::Minutes => "minute",
                DateTimeField::Hour | DateTimeField::Hours => "hour",
                DateTimeField::Day | DateTimeField::Days => "day",
                DateTimeField::Week(_) | DateTimeField::Weeks => "week",
                other => return Err(format!("intervals of {other} have no fixed length")),
            };
            let value: f64 = text
                .trim()
                .parse()
                .map_err(|_| format!("not a number of {unit}s: '{text}'"))?;
            value * unit_ms(unit).unwrap_or(1.0)
        }
        None => {
            let words: Vec<&str> = text.split_whitespace().collect();
            if words.is_empty() || !words.len().is_multiple_of(2) {
                return Err(format!("not an interval: '{text}'"));
            }
            let mut total = 0.0;
            for pair in words.chunks(2) {
                let value: f64 = pair[0].parse().map_err(|_| format!("not an interval: '{text}'"))?;
                let unit = unit_ms(pair[1]).ok_or_else(|| format!("intervals of {} have no fixed length", pair[1]))?;
                total += value * unit;
            }
            total
        }
    };
    Ok(total.round() as i64)
}

#[cfg(test)]
mod tests {
    use crate::{FreshetStatement, parse_statements};

    fn rewritten(sql: &str) -> String {
        let parsed = parse_statements(sql).unwrap();
        match &parsed[0].statement {
            FreshetStatement::DataFusion(s) => s.to_string(),
            other => panic!("{other:?}"),
        }
    }

    fn error(sql: &str) -> String {
        parse_statements(sql).unwrap_err().to_string()
    }

    #[test]
    fn tumble_hop_and_cumulate_become_derived_tables() {
        let tumble = rewritten(
            "SELECT window_start, count(*) FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
             GROUP BY window_start, window_end",
        );
        assert!(tumble.contains("date_bin(INTERVAL '10000 milliseconds'"), "{tumble}");
        assert!(tumble.contains("AS window_time FROM bid AS __window_input"), "{tumble}");
        let named = rewritten(
            "SELECT * FROM TABLE(TUMBLE(DATA => TABLE bid, TIMECOL => DESCRIPTOR(ts), SIZE => INTERVAL '10' SECONDS))",
        );
        assert!(named.contains("date_bin(INTERVAL '10000 milliseconds'"), "{named}");
        let hop = rewritten(
            "SELECT * FROM TABLE(HOP(TABLE bid, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND)) AS w",
        );
        assert_eq!(hop.matches("UNION ALL").count(), 4, "{hop}");
        assert!(hop.contains(") AS w"), "{hop}");
        let cumulate = rewritten(
            "SELECT * FROM TABLE(CUMULATE(TABLE bid, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '1' HOUR))",
        );
        assert_eq!(cumulate.matches("UNION ALL").count(), 59);
    }

    #[test]
    fn bad_windows_are_named() {
        assert!(
            error("SELECT * FROM TABLE(HOP(TABLE t, DESCRIPTOR(ts), INTERVAL '3' SECOND, INTERVAL '10' SECOND))")
                .contains("must be an integral multiple of the slide")
        );
        assert!(
            error("SELECT * FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '0' SECOND))")
                .contains("the size must be positive")
        );
        assert!(error("SELECT * FROM TABLE(TUMBLE(TABLE t, ts, INTERVAL '1' SECOND))").contains("DESCRIPTOR(ts)"));
        assert!(error("SELECT * FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts)))").contains("SIZE is missing"));
        assert!(
            error("SELECT * FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MONTH))")
                .contains("no fixed length")
        );
        assert!(error("SELECT count(TABLE t)").contains("argument of a window function only"));
        assert!(
            error("SELECT * FROM TABLE(TUMBLE(TABLE t PARTITION BY k, DESCRIPTOR(ts), INTERVAL '1' SECOND))")
                .contains("PARTITION BY belongs to SESSION windows")
        );
    }

    #[test]
    fn group_windows_become_date_bins() {
        let sql = rewritten(
            "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE), TUMBLE_END(ts, INTERVAL '1' MINUTE), count(*) \
             FROM bid GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)",
        );
        assert_eq!(
            sql.matches("date_bin(INTERVAL '60000 milliseconds', window_time_column(ts)")
                .count(),
            3,
            "{sql}"
        );
        let hop = rewritten(
            "SELECT k, HOP_END(ts, INTERVAL '1' MINUTE, INTERVAL '1' HOUR), count(*) FROM bid b \
             GROUP BY k, HOP(b.ts, INTERVAL '1' MINUTE, INTERVAL '1' HOUR)",
        );
        assert!(
            hop.contains("GROUP BY k, b.window_start, b.window_end, b.window_time"),
            "{hop}"
        );
        assert!(hop.starts_with("SELECT k, b.window_end, count(*)"), "{hop}");
        assert!(
            error("SELECT count(*) FROM a JOIN b ON a.k = b.k GROUP BY SESSION(a.ts, INTERVAL '1' MINUTE)")
                .contains("SESSION in GROUP BY over anything but one table")
        );
        assert!(
            error("SELECT HOP_START(ts, INTERVAL '1' MINUTE, INTERVAL '1' HOUR) FROM t").contains("names the window")
        );
    }
}
