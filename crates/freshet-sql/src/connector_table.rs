//! Apache Flink's table DDL for tables backed by a connector, and the statements of jobs:
//!
//! ```text
//! CREATE TABLE [IF NOT EXISTS] name (
//!     col type [NOT NULL] [COMMENT 'text']          -- physical column; `ROW<a T, b T>` nests
//!   | col AS expr [COMMENT 'text']                   -- computed column (`PROCTIME()` too)
//!   | WATERMARK FOR col AS expr
//!   | [CONSTRAINT c] PRIMARY KEY (col, ...) NOT ENFORCED
//!   , ...
//! ) [COMMENT 'text'] [PARTITIONED BY (col, ...)] WITH ('connector' = '...', 'key' = 'value', ...)
//! SHOW JOBS
//! STOP JOB 'id' [WITH SAVEPOINT] [WITH DRAIN]
//! EXECUTE STATEMENT SET BEGIN INSERT ...; INSERT ...; END
//! BEGIN STATEMENT SET; INSERT ...; INSERT ...; END      -- the SQL client's form
//! ```
//!
//! DataFusion's parser knows none of WATERMARK, computed columns or `ROW<...>`, so a `CREATE
//! TABLE` with a `WITH` clause is parsed here; a ROW type becomes sqlparser's `STRUCT<...>`,
//! which DataFusion turns into an Arrow struct.

use datafusion::sql::sqlparser::ast::{
    ArrayElemTypeDef, DataType, Expr, Ident, ObjectName, StructBracketKind, StructField,
};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use freshet_common::Result;

use crate::grammar::{
    accept_words, expect_token, identifier, identifier_list, object_name, option_list, string_literal, unexpected, word,
};
use crate::statement::parse_error;

/// `CREATE TABLE ... WITH ('connector' = ...)` in Flink's grammar.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateConnectorTable {
    /// The table's name.
    pub name: ObjectName,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// The columns, physical and computed, in the order written.
    pub columns: Vec<TableColumn>,
    /// `WATERMARK FOR col AS expr`.
    pub watermark: Option<Watermark>,
    /// `PRIMARY KEY (...) NOT ENFORCED`.
    pub primary_key: Vec<Ident>,
    /// `COMMENT '...'` of the table.
    pub comment: Option<String>,
    /// `PARTITIONED BY (...)`.
    pub partitioned_by: Vec<Ident>,
    /// The `WITH` options, in the order written.
    pub options: Vec<(String, String)>,
}

impl CreateConnectorTable {
    /// The value of a `WITH` option (keys compare exactly, as in Flink).
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A column of a connector table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableColumn {
    /// The column's name.
    pub name: Ident,
    /// What the column holds.
    pub kind: ColumnKind,
    /// `COMMENT '...'`.
    pub comment: Option<String>,
}

/// Whether a column is read from the connector or computed from the others.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnKind {
    /// Read from the connector.
    Physical {
        /// The declared type (`ROW<...>` as `STRUCT<...>`).
        data_type: DataType,
        /// `NOT NULL`.
        not_null: bool,
    },
    /// `name AS expr`: computed from the physical columns of the same row.
    Computed(Box<Expr>),
}

/// `WATERMARK FOR column AS expression`.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    /// The event-time column.
    pub column: Ident,
    /// The watermark's expression over the row.
    pub expression: Expr,
}

/// Whether the next tokens start `CREATE [TEMPORARY] TABLE` with Flink-only syntax: a `WITH`
/// option list with a `'connector'` after the columns, or a WATERMARK or computed column among
/// them. Looks ahead without consuming.
pub(crate) fn is_connector_table(parser: &Parser<'_>) -> bool {
    create_table_shape(parser) == Some(Shape::Connector)
}

/// For `CREATE TABLE name (columns) WITH (options)` whose options name no connector (a plain
/// table's options, such as `'retention'`): how many tokens ahead its `WITH` is.
pub(crate) fn plain_table_with(parser: &Parser<'_>) -> Option<usize> {
    match create_table_shape(parser)? {
        Shape::PlainWith(n) => Some(n),
        Shape::Connector => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A connector table in Flink's grammar.
    Connector,
    /// DataFusion's CREATE TABLE, then `WITH` (this many tokens ahead) and options.
    PlainWith(usize),
}

/// What a `CREATE TABLE` ahead is, when it is not DataFusion's alone.
fn create_table_shape(parser: &Parser<'_>) -> Option<Shape> {
    if word(parser, 0) != "CREATE" {
        return None;
    }
    let mut n = 1;
    if word(parser, n) == "TEMPORARY" {
        n += 1;
    }
    if word(parser, n) != "TABLE" {
        return None;
    }
    // Find the column list's parentheses and what follows them; a `CREATE TABLE ... AS
    // SELECT` or one without a WITH clause stays DataFusion's.
    let mut depth = 0usize;
    loop {
        n += 1;
        match &parser.peek_nth_token_ref(n).token {
            Token::EOF | Token::SemiColon => return None,
            Token::LParen => depth += 1,
            Token::RParen => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            Token::Word(w) if depth == 1 && w.quote_style.is_none() => {
                let upper = w.value.to_ascii_uppercase();
                let previous = &parser.peek_nth_token_ref(n - 1).token;
                let starts_element = matches!(previous, Token::LParen | Token::Comma);
                if starts_element && upper == "WATERMARK" {
                    return Some(Shape::Connector);
                }
                // `name AS expr` at the start of an element is a computed column.
                if upper == "AS"
                    && matches!(previous, Token::Word(_))
                    && matches!(parser.peek_nth_token_ref(n - 2).token, Token::LParen | Token::Comma)
                {
                    return Some(Shape::Connector);
                }
            }
            _ => {}
        }
    }
    // After the columns: [COMMENT '...'] [PARTITIONED BY (...)] WITH (
    let mut m = n + 1;
    let mut flink_only = false;
    loop {
        let w = match &parser.peek_nth_token_ref(m).token {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            _ => return None,
        };
        match w.as_str() {
            "WITH" if flink_only || names_connector(parser, m + 1) => return Some(Shape::Connector),
            "WITH" => return Some(Shape::PlainWith(m)),
            "COMMENT" => {
                flink_only = true;
                m += 2;
            }
            "PARTITIONED" => {
                flink_only = true;
                // PARTITIONED BY ( ... )
                m += 2;
                let mut depth = 0usize;
                loop {
                    match &parser.peek_nth_token_ref(m).token {
                        Token::EOF => return None,
                        Token::LParen => depth += 1,
                        Token::RParen => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                m += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    m += 1;
                }
            }
            _ => return None,
        }
    }
}

/// Whether the option list starting `n` tokens ahead (at its `(`) has a `'connector'` key.
fn names_connector(parser: &Parser<'_>, n: usize) -> bool {
    let mut m = n + 1;
    loop {
        match &parser.peek_nth_token_ref(m).token {
            Token::SingleQuotedString(key) if key.eq_ignore_ascii_case("connector") => return true,
            Token::RParen | Token::EOF | Token::SemiColon => return false,
            _ => m += 1,
        }
    }
}

/// Parses a statement for which [`is_connector_table`] holds.
pub(crate) fn parse_create_connector_table(parser: &mut Parser<'_>) -> Result<CreateConnectorTable> {
    parser.next_token(); // CREATE
    if accept_words(parser, &["TEMPORARY"]) {
        return Err(unexpected(parser, "TABLE (temporary tables are not supported)"));
    }
    parser.next_token(); // TABLE
    let if_not_exists = accept_words(parser, &["IF", "NOT", "EXISTS"]);
    let name = object_name(parser, "a table's name")?;
    expect_token(parser, &Token::LParen, "( and the table's columns")?;
    let mut table = CreateConnectorTable {
        name,
        if_not_exists,
        columns: Vec::new(),
        watermark: None,
        primary_key: Vec::new(),
        comment: None,
        partitioned_by: Vec::new(),
        options: Vec::new(),
    };
    loop {
        parse_element(parser, &mut table)?;
        if parser.consume_token(&Token::Comma) {
            // Flink allows no trailing comma; neither do we, but say so clearly.
            if parser.peek_token_ref().token == Token::RParen {
                return Err(unexpected(parser, "a column, WATERMARK or PRIMARY KEY after ,"));
            }
            continue;
        }
        expect_token(parser, &Token::RParen, ", or ) after a column")?;
        break;
    }
    if accept_words(parser, &["COMMENT"]) {
        table.comment = Some(string_literal(parser, "the comment as a quoted string")?);
    }
    if accept_words(parser, &["PARTITIONED", "BY"]) {
        table.partitioned_by = identifier_list(parser, "a partition column")?;
    }
    if !accept_words(parser, &["WITH"]) {
        return Err(unexpected(parser, "WITH ('connector' = '...', ...)"));
    }
    table.options = option_list(parser)?;
    Ok(table)
}

fn parse_element(parser: &mut Parser<'_>, table: &mut CreateConnectorTable) -> Result<()> {
    if word(parser, 0) == "WATERMARK" {
        parser.next_token();
        if !accept_words(parser, &["FOR"]) {
            return Err(unexpected(parser, "FOR after WATERMARK"));
        }
        let column = identifier(parser, "the event-time column after WATERMARK FOR")?;
        if !accept_words(parser, &["AS"]) {
            return Err(unexpected(parser, "AS <expression> after WATERMARK FOR <column>"));
        }
        let expression = parser.parse_expr().map_err(parse_error)?;
        if table.watermark.is_some() {
            return Err(unexpected(parser, "one WATERMARK per table"));
        }
        table.watermark = Some(Watermark { column, expression });
        return Ok(());
    }
    if accept_words(parser, &["CONSTRAINT"]) {
        identifier(parser, "a constraint name")?;
        if word(parser, 0) != "PRIMARY" {
            return Err(unexpected(parser, "PRIMARY KEY after CONSTRAINT <name>"));
        }
    }
    if accept_words(parser, &["PRIMARY", "KEY"]) {
        if !table.primary_key.is_empty() {
            return Err(unexpected(parser, "one PRIMARY KEY per table"));
        }
        table.primary_key = identifier_list(parser, "a primary-key column")?;
        if !accept_words(parser, &["NOT", "ENFORCED"]) {
            return Err(unexpected(
                parser,
                "NOT ENFORCED after PRIMARY KEY (...) (Flink requires it on connector tables)",
            ));
        }
        return Ok(());
    }
    let name = identifier(parser, "a column name")?;
    let kind = if accept_words(parser, &["AS"]) {
        ColumnKind::Computed(Box::new(parser.parse_expr().map_err(parse_error)?))
    } else {
        let (data_type, extra) = data_type(parser)?;
        if extra {
            return Err(unexpected(parser, "a column's type with balanced < >"));
        }
        let mut not_null = false;
        if accept_words(parser, &["NOT", "NULL"]) {
            not_null = true;
        } else {
            accept_words(parser, &["NULL"]);
        }
        if word(parser, 0) == "METADATA" {
            return Err(unexpected(parser, ", or ) (METADATA columns are not supported)"));
        }
        ColumnKind::Physical { data_type, not_null }
    };
    let comment = if accept_words(parser, &["COMMENT"]) {
        Some(string_literal(parser, "the comment as a quoted string")?)
    } else {
        None
    };
    table.columns.push(TableColumn { name, kind, comment });
    Ok(())
}

/// A column type. Flink's `ROW<name type, ...>` / `ROW(name type, ...)`, `ARRAY<type>` and
/// `MAP<key, value>` are parsed here (so that they may nest); any other type is sqlparser's.
/// The flag is set when a `>>` token closed this type and one enclosing `<` too.
fn data_type(parser: &mut Parser<'_>) -> Result<(DataType, bool)> {
    let head = word(parser, 0);
    let next = &parser.peek_nth_token_ref(1).token;
    let angle = *next == Token::Lt;
    match head.as_str() {
        "ROW" if angle || *next == Token::LParen => {
            parser.next_token();
            parser.next_token();
            let mut fields = Vec::new();
            let mut extra = false;
            let closed = loop {
                if angle && parser.consume_token(&Token::Gt) {
                    break true;
                }
                if !angle && parser.consume_token(&Token::RParen) {
                    break true;
                }
                let field_name = identifier(parser, "a ROW field's name")?;
                let (field_type, closes_two) = data_type(parser)?;
                if accept_words(parser, &["NOT", "NULL"]) {
                    // Arrow struct fields are nullable here; NOT NULL inside a ROW is accepted.
                }
                if word(parser, 0) == "COMMENT" {
                    parser.next_token();
                    string_literal(parser, "the comment as a quoted string")?;
                }
                fields.push(StructField {
                    field_name: Some(field_name),
                    field_type,
                    options: None,
                });
                if closes_two {
                    // `>>` closed the inner type and this ROW.
                    break angle;
                }
                if parser.consume_token(&Token::Comma) {
                    continue;
                }
                if angle && parser.consume_token(&Token::ShiftRight) {
                    extra = true;
                    break true;
                }
                if angle && parser.consume_token(&Token::Gt) {
                    break true;
                }
                if !angle && parser.consume_token(&Token::RParen) {
                    break true;
                }
                break false;
            };
            if !closed {
                return Err(unexpected(
                    parser,
                    if angle {
                        ", or > in ROW<...>"
                    } else {
                        ", or ) in ROW(...)"
                    },
                ));
            }
            Ok((DataType::Struct(fields, StructBracketKind::AngleBrackets), extra))
        }
        "ARRAY" if angle => {
            parser.next_token();
            parser.next_token();
            let (element, closes_two) = data_type(parser)?;
            let extra = if closes_two {
                false
            } else if parser.consume_token(&Token::ShiftRight) {
                true
            } else {
                expect_token(parser, &Token::Gt, "> after ARRAY<type")?;
                false
            };
            Ok((
                DataType::Array(ArrayElemTypeDef::AngleBracket(Box::new(element))),
                extra,
            ))
        }
        "MAP" if angle => {
            parser.next_token();
            parser.next_token();
            let (key, closes_two) = data_type(parser)?;
            if closes_two {
                return Err(unexpected(parser, ", and the value type of MAP<key, value>"));
            }
            expect_token(parser, &Token::Comma, ", after MAP<key")?;
            let (value, closes_two) = data_type(parser)?;
            let extra = if closes_two {
                false
            } else if parser.consume_token(&Token::ShiftRight) {
                true
            } else {
                expect_token(parser, &Token::Gt, "> after MAP<key, value")?;
                false
            };
            Ok((DataType::Map(Box::new(key), Box::new(value)), extra))
        }
        "STRING" => {
            parser.next_token();
            Ok((DataType::String(None), false))
        }
        "TIMESTAMP_LTZ" => {
            parser.next_token();
            let precision = precision(parser)?;
            Ok((
                DataType::Timestamp(precision, datafusion::sql::sqlparser::ast::TimezoneInfo::WithTimeZone),
                false,
            ))
        }
        _ => {
            let data_type = parser.parse_data_type().map_err(parse_error)?;
            Ok((data_type, false))
        }
    }
}

fn precision(parser: &mut Parser<'_>) -> Result<Option<u64>> {
    if !parser.consume_token(&Token::LParen) {
        return Ok(None);
    }
    let n = parser.parse_literal_uint().map_err(parse_error)?;
    expect_token(parser, &Token::RParen, ")")?;
    Ok(Some(n))
}

/// Whether the next tokens are `SHOW JOBS`, `STOP JOB` or `EXECUTE STATEMENT SET`.
pub(crate) fn is_job_statement(parser: &Parser<'_>) -> bool {
    matches!(
        (
            word(parser, 0).as_str(),
            word(parser, 1).as_str(),
            word(parser, 2).as_str()
        ),
        ("SHOW", "JOBS", _) | ("STOP", "JOB", _) | ("EXECUTE", "STATEMENT", "SET") | ("BEGIN", "STATEMENT", "SET")
    )
}

/// A job statement, parsed after [`is_job_statement`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JobStatement {
    Show,
    Stop {
        id: String,
    },
    /// The text of each INSERT of `EXECUTE STATEMENT SET BEGIN ... END`.
    StatementSet(Vec<String>),
}

pub(crate) fn parse_job_statement(parser: &mut Parser<'_>, sql: &str) -> Result<JobStatement> {
    let first = word(parser, 0);
    parser.next_token();
    parser.next_token();
    match first.as_str() {
        "SHOW" => Ok(JobStatement::Show),
        "STOP" => {
            let id = string_literal(parser, "the job's id as a quoted string")?;
            loop {
                if accept_words(parser, &["WITH", "SAVEPOINT"]) || accept_words(parser, &["WITH", "DRAIN"]) {
                    continue;
                }
                break;
            }
            Ok(JobStatement::Stop { id })
        }
        // The SQL client's form: `BEGIN STATEMENT SET; INSERT ...; INSERT ...; END;`.
        "BEGIN" => {
            parser.next_token(); // SET
            statement_set(parser, sql)
        }
        _ => {
            parser.next_token(); // SET
            if !accept_words(parser, &["BEGIN"]) {
                return Err(unexpected(parser, "BEGIN after EXECUTE STATEMENT SET"));
            }
            statement_set(parser, sql)
        }
    }
}

/// The INSERTs of a statement set, up to its `END`.
fn statement_set(parser: &mut Parser<'_>, sql: &str) -> Result<JobStatement> {
    let mut inserts = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if accept_words(parser, &["END"]) {
            break;
        }
        if parser.peek_keyword(Keyword::INSERT) {
            let start = parser.peek_token_ref().span.start;
            parser.parse_statement().map_err(parse_error)?;
            let end = parser.get_current_token().span.end;
            inserts.push(crate::statement::slice(sql, start, end).trim().to_string());
            continue;
        }
        return Err(unexpected(parser, "INSERT INTO ... or END in a statement set"));
    }
    if inserts.is_empty() {
        return Err(unexpected(parser, "at least one INSERT in a statement set"));
    }
    Ok(JobStatement::StatementSet(inserts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FreshetStatement, parse_statements};

    fn create(sql: &str) -> CreateConnectorTable {
        match parse_statements(sql).unwrap().remove(0).statement {
            FreshetStatement::CreateConnectorTable(c) => *c,
            other => panic!("not a connector table: {other:?}"),
        }
    }

    #[test]
    fn parses_a_source_with_a_watermark_and_backquoted_names() {
        let c = create(
            "CREATE TABLE bid (auction BIGINT, price BIGINT, `dateTime` TIMESTAMP(3), extra VARCHAR,
               WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
             ) WITH ('connector' = 'filesystem', 'path' = 'file:///data/bid.jsonl', 'format' = 'json')",
        );
        assert_eq!(c.name.to_string(), "bid");
        assert_eq!(c.columns.len(), 4);
        assert_eq!(c.columns[2].name.value, "dateTime");
        assert_eq!(c.columns[2].name.quote_style, Some('`'));
        let w = c.watermark.clone().unwrap();
        assert_eq!(w.column.value, "dateTime");
        assert_eq!(w.expression.to_string(), "`dateTime` - INTERVAL '4' SECOND");
        assert_eq!(c.option("connector"), Some("filesystem"));
        assert_eq!(c.option("format"), Some("json"));
    }

    #[test]
    fn parses_nexmark_generator_ddl_with_nested_rows_and_a_computed_column() {
        let c = create(
            "CREATE TABLE datagen (
                event_type int,
                person ROW<id BIGINT, name VARCHAR, `dateTime` TIMESTAMP(3), extra VARCHAR>,
                nested ROW<a ROW<b INT>>,
                list ARRAY<ROW<x INT, y MAP<STRING, BIGINT>>>,
                `dateTime` AS CASE WHEN event_type = 0 THEN person.`dateTime` ELSE NULL END,
                pt AS PROCTIME(),
                WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
            ) WITH ('connector' = 'nexmark', 'events.num' = '1000')",
        );
        assert_eq!(c.columns.len(), 6);
        let ColumnKind::Physical { data_type, .. } = &c.columns[1].kind else {
            panic!()
        };
        assert_eq!(
            data_type.to_string(),
            "STRUCT<id BIGINT, name VARCHAR, `dateTime` TIMESTAMP(3), extra VARCHAR>"
        );
        let ColumnKind::Physical { data_type, .. } = &c.columns[2].kind else {
            panic!()
        };
        assert_eq!(data_type.to_string(), "STRUCT<a STRUCT<b INT>>");
        let ColumnKind::Physical { data_type, .. } = &c.columns[3].kind else {
            panic!()
        };
        assert_eq!(data_type.to_string(), "ARRAY<STRUCT<x INT, y Map(STRING, BIGINT)>>");
        assert!(matches!(c.columns[4].kind, ColumnKind::Computed(_)));
        assert!(matches!(&c.columns[5].kind, ColumnKind::Computed(e) if e.to_string() == "PROCTIME()"));
    }

    #[test]
    fn parses_keys_comments_and_partitions() {
        let c = create(
            "CREATE TABLE IF NOT EXISTS s (id BIGINT NOT NULL COMMENT 'the id', v STRING,
               CONSTRAINT pk PRIMARY KEY (id) NOT ENFORCED)
             COMMENT 'a sink' PARTITIONED BY (v) WITH ('connector' = 'blackhole')",
        );
        assert!(c.if_not_exists);
        assert_eq!(c.primary_key[0].value, "id");
        assert_eq!(c.comment.as_deref(), Some("a sink"));
        assert_eq!(c.partitioned_by[0].value, "v");
        assert_eq!(c.columns[0].comment.as_deref(), Some("the id"));
        assert!(matches!(c.columns[0].kind, ColumnKind::Physical { not_null: true, .. }));
    }

    #[test]
    fn leaves_plain_tables_to_datafusion() {
        for sql in [
            "CREATE TABLE t (a INT, b VARCHAR)",
            "CREATE TABLE t AS SELECT 1 AS a",
            "CREATE TABLE t (a INT PRIMARY KEY)",
        ] {
            let parsed = parse_statements(sql).unwrap();
            assert!(matches!(parsed[0].statement, FreshetStatement::DataFusion(_)), "{sql}");
        }
    }

    #[test]
    fn reports_what_was_expected() {
        for (sql, expected) in [
            (
                "CREATE TABLE t (a INT, PRIMARY KEY (a)) WITH ('connector' = 'blackhole')",
                "NOT ENFORCED",
            ),
            (
                "CREATE TABLE t (a INT, WATERMARK a AS a) WITH ('connector' = 'blackhole')",
                "FOR after WATERMARK",
            ),
            ("CREATE TABLE t (a ROW<b INT) WITH ('connector' = 'blackhole')", "ROW<"),
            ("CREATE TABLE t (a INT, b AS a + 1)", "WITH"),
        ] {
            let err = parse_statements(sql).unwrap_err().to_string();
            assert!(err.contains(expected), "{sql}: {err}");
        }
    }

    #[test]
    fn parses_job_statements() {
        let parsed = parse_statements(
            "SHOW JOBS; STOP JOB 'a1b2' WITH SAVEPOINT;
             EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT 1; INSERT INTO b SELECT 2; END",
        )
        .unwrap();
        assert!(matches!(parsed[0].statement, FreshetStatement::ShowJobs));
        assert!(matches!(&parsed[1].statement, FreshetStatement::StopJob { id } if id == "a1b2"));
        let FreshetStatement::StatementSet { inserts } = &parsed[2].statement else {
            panic!()
        };
        assert_eq!(inserts.len(), 2);
        assert_eq!(inserts[1].text, "INSERT INTO b SELECT 2");
        // The SQL client's form, across statements.
        let parsed =
            parse_statements("BEGIN STATEMENT SET;\nINSERT INTO a SELECT 1;\nINSERT INTO b SELECT 2;\nEND;\nSHOW JOBS")
                .unwrap();
        assert!(matches!(&parsed[0].statement, FreshetStatement::StatementSet { inserts } if inserts.len() == 2));
        assert!(matches!(parsed[1].statement, FreshetStatement::ShowJobs));
    }
}
