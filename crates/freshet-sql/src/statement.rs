//! Splitting SQL text into statements, and Freshet's own statements.

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParser, DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::ObjectName;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::{Location, Token};

use freshet_common::{FreshetError, Result};

use crate::connector_table::{
    CreateConnectorTable, JobStatement, is_connector_table, is_job_statement, parse_create_connector_table,
    parse_job_statement, plain_table_with,
};
use crate::dialect::FreshetDialect;
use crate::grammar::{expect_token, option_list, string_literal, word};
use crate::materialized::{
    AlterMaterializedTable, CreateMaterializedTable, is_materialized_statement, parse_materialized,
};

/// One parsed statement and the text it was parsed from.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    /// The statement.
    pub statement: FreshetStatement,
    /// Its text, as written (without the terminating `;`).
    pub text: String,
    /// Line (1-based) where it starts in the input.
    pub line: u64,
}

/// A statement: DataFusion's, or one of Freshet's own.
#[derive(Debug, Clone)]
pub enum FreshetStatement {
    /// Anything DataFusion's parser understands.
    DataFusion(Box<DFStatement>),
    /// `ALTER TABLE name COMPACT`: rewrite a table's live rows into fewer files.
    Compact {
        /// The table.
        table: ObjectName,
    },
    /// `VACUUM [name] [RETAIN n VERSIONS | RETAIN n HOURS]`: remove old versions and unused files.
    Vacuum {
        /// One table, or all when absent.
        table: Option<ObjectName>,
        /// What to keep of each table; by default, what its retention period keeps.
        retain: Option<VacuumRetain>,
    },
    /// `CREATE MATERIALIZED TABLE ...`.
    CreateMaterializedTable(Box<CreateMaterializedTable>),
    /// `ALTER MATERIALIZED TABLE name ...`.
    AlterMaterializedTable {
        /// The materialized table.
        name: ObjectName,
        /// What to do.
        action: AlterMaterializedTable,
    },
    /// `DROP MATERIALIZED TABLE [IF EXISTS] name [CASCADE]`.
    DropMaterializedTable {
        /// The materialized table.
        name: ObjectName,
        /// `IF EXISTS`.
        if_exists: bool,
        /// `CASCADE`: drop the materialized tables that read it too.
        cascade: bool,
    },
    /// `SHOW MATERIALIZED TABLES`.
    ShowMaterializedTables,
    /// `DESCRIBE MATERIALIZED TABLE name`.
    DescribeMaterializedTable {
        /// The materialized table.
        name: ObjectName,
    },
    /// `EXPLAIN MATERIALIZED TABLE name`: the incremental operators, the state each keeps, and
    /// the mode with its reason.
    ExplainMaterializedTable {
        /// The materialized table.
        name: ObjectName,
    },
    /// `SHOW CREATE MATERIALIZED TABLE name`.
    ShowCreateMaterializedTable {
        /// The materialized table.
        name: ObjectName,
    },
    /// `CREATE TABLE name (columns) WITH (options)` without a connector: a plain table with
    /// options such as `'retention'`.
    CreateTable {
        /// DataFusion's `CREATE TABLE` without the options.
        statement: Box<DFStatement>,
        /// The options, in the order written.
        options: Vec<(String, String)>,
    },
    /// `ALTER TABLE name SET ('key' = 'value', ...)` / `ALTER TABLE name RESET ('key', ...)`:
    /// changes a table's options (Flink's statements).
    AlterTableOptions {
        /// The table.
        table: ObjectName,
        /// Options set.
        set: Vec<(String, String)>,
        /// Options removed (back to their defaults).
        reset: Vec<String>,
    },
    /// `CREATE TABLE ... WITH ('connector' = ...)`: a source or sink table in Flink's grammar.
    CreateConnectorTable(Box<CreateConnectorTable>),
    /// `SHOW JOBS`.
    ShowJobs,
    /// `STOP JOB 'id'`.
    StopJob {
        /// The job's id.
        id: String,
    },
    /// `EXECUTE STATEMENT SET BEGIN INSERT ...; ... END`: the inserts run as one job.
    StatementSet {
        /// The inserts, each parsed with its text.
        inserts: Vec<ParsedStatement>,
    },
    /// `SUBSCRIBE [TO] name [WITH (snapshot = true | false)]`: every committed version's
    /// changes to a table or materialized table, as they commit, until the reader stops
    /// (Materialize's statement).
    Subscribe {
        /// The table.
        table: ObjectName,
        /// Whether the table's rows at the start come first (default true).
        snapshot: bool,
    },
    /// `SET 'key' = 'value'`: Apache Flink's form of setting an option, for keys such as
    /// `materialized-table.refresh-mode.freshness-threshold` that are not SQL identifiers.
    SetOption {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

/// What `VACUUM ... RETAIN` keeps of each table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VacuumRetain {
    /// `RETAIN n VERSIONS`: the newest n versions.
    Versions(u64),
    /// `RETAIN n HOURS` (or DAYS, MINUTES): every version current within that period.
    Period(std::time::Duration),
}

/// Parses SQL text holding any number of statements separated by `;`.
pub fn parse_statements(sql: &str) -> Result<Vec<ParsedStatement>> {
    let dialect = FreshetDialect::default();
    let mut parser = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .build()
        .map_err(|e| match e {
            DataFusionError::SQL(parser_error, _) => parse_error(*parser_error),
            other => FreshetError::from(other),
        })?;
    let mut out = Vec::new();
    loop {
        while parser.parser.consume_token(&Token::SemiColon) {}
        let first = parser.parser.peek_token_ref();
        if first.token == Token::EOF {
            break;
        }
        let start = first.span.start;
        let statement = parse_one(&mut parser, sql)?;
        let end = parser.parser.get_current_token().span.end;
        let next = parser.parser.peek_token_ref();
        if next.token != Token::EOF && next.token != Token::SemiColon {
            return Err(FreshetError::InvalidStatement(format!(
                "SQL error: expected end of statement, found {} at line {}, column {}",
                next.token, next.span.start.line, next.span.start.column
            )));
        }
        out.push(ParsedStatement {
            statement,
            text: slice(sql, start, end).trim().to_string(),
            line: start.line,
        });
    }
    Ok(out)
}

fn parse_one(parser: &mut DFParser<'_>, sql: &str) -> Result<FreshetStatement> {
    if is_materialized_statement(&parser.parser) {
        return parse_materialized(&mut parser.parser, sql);
    }
    if is_connector_table(&parser.parser) {
        let create = parse_create_connector_table(&mut parser.parser)?;
        return Ok(FreshetStatement::CreateConnectorTable(Box::new(create)));
    }
    if is_job_statement(&parser.parser) {
        return Ok(match parse_job_statement(&mut parser.parser, sql)? {
            JobStatement::Show => FreshetStatement::ShowJobs,
            JobStatement::Stop { id } => FreshetStatement::StopJob { id },
            JobStatement::StatementSet(texts) => {
                let mut inserts = Vec::new();
                for text in texts {
                    inserts.extend(parse_statements(&text)?);
                }
                FreshetStatement::StatementSet { inserts }
            }
        });
    }
    if parser.parser.peek_keyword(Keyword::SET)
        && let Token::SingleQuotedString(key) = &parser.parser.peek_nth_token_ref(1).token
    {
        let key = key.clone();
        let p = &mut parser.parser;
        p.next_token();
        p.next_token();
        if !p.consume_token(&Token::Eq) {
            return Err(FreshetError::InvalidStatement(format!(
                "SQL error: expected = after SET '{key}', found {}",
                p.peek_token_ref().token
            )));
        }
        let value = match p.next_token().token {
            Token::SingleQuotedString(v) | Token::Number(v, _) => v,
            Token::Word(w) => w.value,
            other => {
                return Err(FreshetError::InvalidStatement(format!(
                    "SQL error: expected a value for '{key}', found {other}"
                )));
            }
        };
        return Ok(FreshetStatement::SetOption { key, value });
    }
    let p = &mut parser.parser;
    if matches!(&p.peek_token_ref().token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("SUBSCRIBE"))
    {
        return parse_subscribe(p);
    }
    if p.peek_keyword(Keyword::VACUUM) {
        p.next_token();
        let table = if matches!(p.peek_token_ref().token, Token::Word(ref w) if w.keyword != Keyword::RETAIN) {
            Some(p.parse_object_name(false).map_err(parse_error)?)
        } else {
            None
        };
        let retain = if p.parse_keyword(Keyword::RETAIN) {
            let n = p.parse_literal_uint().map_err(parse_error)?;
            let unit = match p.parse_one_of_keywords(&[
                Keyword::VERSIONS,
                Keyword::VERSION,
                Keyword::DAYS,
                Keyword::DAY,
                Keyword::HOURS,
                Keyword::HOUR,
                Keyword::MINUTES,
                Keyword::MINUTE,
            ]) {
                Some(Keyword::VERSIONS | Keyword::VERSION) => None,
                Some(Keyword::DAYS | Keyword::DAY) => Some(86_400),
                Some(Keyword::HOURS | Keyword::HOUR) => Some(3_600),
                Some(_) => Some(60),
                None => {
                    return Err(FreshetError::InvalidStatement(format!(
                        "SQL error: expected VERSIONS, DAYS, HOURS or MINUTES after RETAIN {n}, found {}",
                        p.peek_token_ref().token
                    )));
                }
            };
            Some(match unit {
                None => VacuumRetain::Versions(n),
                Some(seconds) => VacuumRetain::Period(std::time::Duration::from_secs(n.saturating_mul(seconds))),
            })
        } else {
            None
        };
        return Ok(FreshetStatement::Vacuum { table, retain });
    }
    if let Some(with) = plain_table_with(&parser.parser) {
        return parse_plain_table_with(&mut parser.parser, sql, with);
    }
    let action = alter_table_action(parser);
    if matches!(&action, Some((w, true)) if w == "SET" || w == "RESET") {
        return parse_alter_table_options(&mut parser.parser);
    }
    if matches!(&action, Some((w, _)) if w == "COMPACT") {
        let p = &mut parser.parser;
        p.next_token(); // ALTER
        p.next_token(); // TABLE
        let table = p.parse_object_name(false).map_err(parse_error)?;
        p.next_token(); // COMPACT
        return Ok(FreshetStatement::Compact { table });
    }
    let statement = parser.parse_statement().map_err(|e| match e {
        DataFusionError::SQL(parser_error, _) => parse_error(*parser_error),
        DataFusionError::Diagnostic(_, inner) => match *inner {
            DataFusionError::SQL(parser_error, _) => parse_error(*parser_error),
            other => FreshetError::from(other),
        },
        other => FreshetError::from(other),
    })?;
    let mut statement = statement;
    rewrite_flink_constructs(&mut statement)?;
    Ok(FreshetStatement::DataFusion(Box::new(statement)))
}

/// Rewrites what Flink writes and DataFusion plans otherwise (window functions, names of field
/// accesses), in a statement and in the statement an EXPLAIN explains.
fn rewrite_flink_constructs(statement: &mut DFStatement) -> Result<()> {
    match statement {
        DFStatement::Statement(inner) => {
            crate::window_tvf::rewrite_statement(inner)?;
            crate::field_names::name_field_accesses(inner);
        }
        DFStatement::Explain(explain) => rewrite_flink_constructs(&mut explain.statement)?,
        _ => {}
    }
    Ok(())
}

/// The word after `ALTER TABLE <name>` (`COMPACT`, `SET`, `RESET`), looking ahead without
/// consuming, and whether a `(` follows it.
fn alter_table_action(parser: &DFParser<'_>) -> Option<(String, bool)> {
    let p = &parser.parser;
    let word = |n: usize| match p.peek_nth_token_ref(n).token {
        Token::Word(ref w) => Some((w.keyword, w.value.to_ascii_uppercase())),
        _ => None,
    };
    if word(0).map(|w| w.0) != Some(Keyword::ALTER) || word(1).map(|w| w.0) != Some(Keyword::TABLE) {
        return None;
    }
    // The name may be qualified: name, schema.name or catalog.schema.name.
    let mut n = 2;
    loop {
        word(n)?;
        n += 1;
        if p.peek_nth_token_ref(n).token == Token::Period {
            n += 1;
            continue;
        }
        let paren = p.peek_nth_token_ref(n + 1).token == Token::LParen;
        return word(n).map(|w| (w.1, paren));
    }
}

/// `ALTER TABLE <name> SET ('key' = 'value', ...)` or `RESET ('key', ...)`, Flink's forms.
fn parse_alter_table_options(p: &mut datafusion::sql::sqlparser::parser::Parser<'_>) -> Result<FreshetStatement> {
    p.next_token(); // ALTER
    p.next_token(); // TABLE
    let table = p.parse_object_name(false).map_err(parse_error)?;
    if word(p, 0) == "SET" {
        p.next_token();
        let set = option_list(p)?;
        return Ok(FreshetStatement::AlterTableOptions {
            table,
            set,
            reset: Vec::new(),
        });
    }
    p.next_token(); // RESET
    expect_token(p, &Token::LParen, "( after RESET")?;
    let mut reset = Vec::new();
    loop {
        reset.push(string_literal(
            p,
            "an option name as a quoted string, such as 'retention'",
        )?);
        if !p.consume_token(&Token::Comma) {
            break;
        }
    }
    expect_token(p, &Token::RParen, ")")?;
    Ok(FreshetStatement::AlterTableOptions {
        table,
        set: Vec::new(),
        reset,
    })
}

/// `CREATE TABLE name (columns) WITH (options)` without a connector: DataFusion's CREATE TABLE
/// (the text before `WITH`, `with` tokens ahead) and the options.
fn parse_plain_table_with(
    p: &mut datafusion::sql::sqlparser::parser::Parser<'_>,
    sql: &str,
    with: usize,
) -> Result<FreshetStatement> {
    let start = p.peek_token_ref().span.start;
    let with_at = p.peek_nth_token_ref(with).span.start;
    let create = slice(sql, start, with_at);
    let statement = match parse_statements(create)?.into_iter().next().map(|t| t.statement) {
        Some(FreshetStatement::DataFusion(statement)) => statement,
        _ => {
            return Err(FreshetError::InvalidStatement(format!(
                "SQL error: expected CREATE TABLE before WITH in: {create}"
            )));
        }
    };
    for _ in 0..=with {
        p.next_token();
    }
    let options = option_list(p)?;
    Ok(FreshetStatement::CreateTable { statement, options })
}

/// `SUBSCRIBE [TO] name [WITH (snapshot = true | false)]`, the parser at SUBSCRIBE.
fn parse_subscribe(p: &mut datafusion::sql::sqlparser::parser::Parser<'_>) -> Result<FreshetStatement> {
    p.next_token();
    let _ = p.parse_keyword(Keyword::TO);
    let table = p.parse_object_name(false).map_err(parse_error)?;
    let mut snapshot = true;
    if p.parse_keyword(Keyword::WITH) {
        p.expect_token(&Token::LParen).map_err(parse_error)?;
        loop {
            let option = p.parse_identifier().map_err(parse_error)?;
            if !option.value.eq_ignore_ascii_case("snapshot") {
                return Err(FreshetError::InvalidStatement(format!(
                    "SUBSCRIBE: unknown option {option} (the option is snapshot = true | false)"
                )));
            }
            let _ = p.consume_token(&Token::Eq);
            snapshot = match p.next_token().token {
                Token::Word(w) if w.keyword == Keyword::TRUE => true,
                Token::Word(w) if w.keyword == Keyword::FALSE => false,
                other => {
                    return Err(FreshetError::InvalidStatement(format!(
                        "SUBSCRIBE: snapshot is true or false, found {other}"
                    )));
                }
            };
            if !p.consume_token(&Token::Comma) {
                break;
            }
        }
        p.expect_token(&Token::RParen).map_err(parse_error)?;
    }
    Ok(FreshetStatement::Subscribe { table, snapshot })
}

pub(crate) fn parse_error(e: ParserError) -> FreshetError {
    let message = match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => "the statement is nested too deeply".into(),
    };
    FreshetError::InvalidStatement(format!("SQL error: {message}"))
}

/// The text between two token locations (1-based lines and columns, in characters).
pub(crate) fn slice(sql: &str, start: Location, end: Location) -> &str {
    let from = offset(sql, start).unwrap_or(0);
    let to = offset(sql, end).unwrap_or(sql.len());
    sql.get(from..to.max(from)).unwrap_or(sql)
}

fn offset(sql: &str, location: Location) -> Option<usize> {
    if location.line == 0 {
        return None;
    }
    let mut line = 1;
    let mut column = 1;
    for (index, ch) in sql.char_indices() {
        if line == location.line && column == location.column {
            return Some(index);
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    Some(sql.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_keeps_their_text() {
        let parsed = parse_statements("SELECT 1; ;\nSELECT 'a;b' AS x;").unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].text, "SELECT 1");
        assert_eq!(parsed[1].text, "SELECT 'a;b' AS x");
        assert_eq!(parsed[1].line, 2);
    }

    #[test]
    fn parses_freshet_statements() {
        let parsed =
            parse_statements("ALTER TABLE s.t COMPACT; VACUUM t RETAIN 3 VERSIONS; VACUUM; VACUUM RETAIN 168 HOURS")
                .unwrap();
        assert!(matches!(&parsed[0].statement, FreshetStatement::Compact { table } if table.to_string() == "s.t"));
        assert!(matches!(
            &parsed[1].statement,
            FreshetStatement::Vacuum {
                table: Some(_),
                retain: Some(VacuumRetain::Versions(3))
            }
        ));
        assert!(matches!(
            &parsed[2].statement,
            FreshetStatement::Vacuum {
                table: None,
                retain: None
            }
        ));
        assert!(matches!(
            &parsed[3].statement,
            FreshetStatement::Vacuum {
                table: None,
                retain: Some(VacuumRetain::Period(d))
            } if d.as_secs() == 168 * 3_600
        ));
    }

    #[test]
    fn parses_time_travel() {
        let parsed =
            parse_statements("SELECT * FROM t FOR SYSTEM_TIME AS OF 3; SELECT * FROM t VERSION AS OF 2").unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(parsed[1].text.contains("VERSION AS OF 2"));
    }

    #[test]
    fn rejects_garbage_with_a_position() {
        let err = parse_statements("SELECT 1 garbage garbage").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
