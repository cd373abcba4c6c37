//! The materialized-table statements, in Apache Flink's grammar (Flink 2.x), plus Freshet's
//! extensions (`SET FRESHNESS`, `SET REFRESH_MODE`, the `INCREMENTAL` and `AUTO` modes,
//! `DROP ... CASCADE`):
//!
//! ```text
//! CREATE MATERIALIZED TABLE [IF NOT EXISTS] name
//!   [ ( [CONSTRAINT c] PRIMARY KEY (col, ...) [NOT ENFORCED] ) ]
//!   [COMMENT 'text']
//!   [PARTITIONED BY (col, ...)]
//!   [WITH ('key' = 'value', ...)]
//!   [FRESHNESS = INTERVAL '<n>' { SECOND[S] | MINUTE[S] | HOUR[S] | DAY[S] }]
//!   [REFRESH_MODE = { CONTINUOUS | FULL | INCREMENTAL | AUTO }]
//!   AS <query>
//! ALTER MATERIALIZED TABLE name { SUSPEND | RESUME [WITH (...)] | REFRESH [FULL] [PARTITION (col = 'v', ...)]
//!   | SET FRESHNESS = INTERVAL ... | SET REFRESH_MODE = ... | AS <query> }
//! DROP MATERIALIZED TABLE [IF EXISTS] name [CASCADE | RESTRICT]
//! SHOW MATERIALIZED TABLES
//! { DESCRIBE | DESC } MATERIALIZED TABLE name
//! EXPLAIN MATERIALIZED TABLE name                (Freshet: operators, their state, the mode)
//! SHOW CREATE MATERIALIZED TABLE name
//! ```

use std::fmt;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{Ident, ObjectName, Query};
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use serde::{Deserialize, Serialize};

use freshet_common::Result;

use crate::grammar::{
    accept_words, at, expect_token, expect_words, identifier, identifier_list, object_name, option_list, query,
    string_literal, unexpected, word,
};
use crate::statement::FreshetStatement;

/// How often a materialized table must reflect its inputs: `FRESHNESS = INTERVAL '1' HOUR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    /// The number of units (at least 1).
    pub amount: u64,
    /// The unit.
    pub unit: FreshnessUnit,
}

/// The unit of a [`Freshness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FreshnessUnit {
    /// Seconds.
    Second,
    /// Minutes.
    Minute,
    /// Hours.
    Hour,
    /// Days.
    Day,
}

impl FreshnessUnit {
    fn seconds(self) -> u64 {
        match self {
            FreshnessUnit::Second => 1,
            FreshnessUnit::Minute => 60,
            FreshnessUnit::Hour => 3_600,
            FreshnessUnit::Day => 86_400,
        }
    }
}

impl Freshness {
    /// A freshness of `amount` units.
    pub fn new(amount: u64, unit: FreshnessUnit) -> Self {
        Self { amount, unit }
    }

    /// The freshness as a duration.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.amount.saturating_mul(self.unit.seconds()))
    }
}

impl fmt::Display for Freshness {
    /// Flink's form: `INTERVAL '3' MINUTE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            FreshnessUnit::Second => "SECOND",
            FreshnessUnit::Minute => "MINUTE",
            FreshnessUnit::Hour => "HOUR",
            FreshnessUnit::Day => "DAY",
        };
        write!(f, "INTERVAL '{}' {unit}", self.amount)
    }
}

/// How a materialized table is kept fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RefreshMode {
    /// React to every input commit, incrementally.
    Continuous,
    /// Recompute at every freshness interval.
    Full,
    /// Apply the changes since the last refresh at every freshness interval.
    Incremental,
    /// Let the engine choose from the freshness (and, per refresh, from measured sizes).
    Auto,
}

impl fmt::Display for RefreshMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefreshMode::Continuous => "CONTINUOUS",
            RefreshMode::Full => "FULL",
            RefreshMode::Incremental => "INCREMENTAL",
            RefreshMode::Auto => "AUTO",
        })
    }
}

/// `CREATE MATERIALIZED TABLE`.
#[derive(Debug, Clone)]
pub struct CreateMaterializedTable {
    /// The table's name.
    pub name: ObjectName,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// `PRIMARY KEY (...)` columns.
    pub primary_key: Vec<Ident>,
    /// `COMMENT '...'`.
    pub comment: Option<String>,
    /// `PARTITIONED BY (...)` columns.
    pub partitioned_by: Vec<Ident>,
    /// `WITH (...)` options, in the order written.
    pub options: Vec<(String, String)>,
    /// `FRESHNESS = ...`.
    pub freshness: Option<Freshness>,
    /// `REFRESH_MODE = ...`.
    pub refresh_mode: Option<RefreshMode>,
    /// The defining query.
    pub query: Box<Query>,
    /// The defining query's text, as written.
    pub query_text: String,
}

/// What an `ALTER MATERIALIZED TABLE` does.
#[derive(Debug, Clone)]
pub enum AlterMaterializedTable {
    /// `SUSPEND`: stop refreshing.
    Suspend,
    /// `RESUME [WITH (...)]`: start refreshing again (also after FAILED).
    Resume {
        /// Options for the refreshes from now on.
        options: Vec<(String, String)>,
    },
    /// `REFRESH [FULL] [PARTITION (...)]`: refresh now (incrementally where the mode allows),
    /// recompute the whole table (`FULL`), or recompute one partition.
    Refresh {
        /// `col = 'value'` pairs naming one partition; empty for the whole table.
        partition: Vec<(Ident, String)>,
        /// `FULL`: recompute, even if an incremental refresh is possible.
        full: bool,
    },
    /// `SET FRESHNESS = ...`.
    SetFreshness(Freshness),
    /// `SET REFRESH_MODE = ...`.
    SetRefreshMode(RefreshMode),
    /// `AS <query>`: a new defining query.
    Query {
        /// The query.
        query: Box<Query>,
        /// Its text.
        text: String,
    },
}

/// Whether the next tokens start a materialized-table statement.
pub(crate) fn is_materialized_statement(parser: &Parser<'_>) -> bool {
    let words: Vec<String> = (0..4).map(|n| word(parser, n)).collect();
    let w = |i: usize| words[i].as_str();
    match w(0) {
        "CREATE" | "ALTER" | "DROP" | "DESCRIBE" | "DESC" | "EXPLAIN" => w(1) == "MATERIALIZED" && w(2) == "TABLE",
        "SHOW" => (w(1) == "MATERIALIZED" && w(2) == "TABLES") || (w(1) == "CREATE" && w(2) == "MATERIALIZED"),
        _ => false,
    }
}

/// Parses a statement for which [`is_materialized_statement`] holds. `sql` is the whole input,
/// for slicing out the query's text.
pub(crate) fn parse_materialized(parser: &mut Parser<'_>, sql: &str) -> Result<FreshetStatement> {
    let first = word(parser, 0);
    parser.next_token();
    match first.as_str() {
        "SHOW" if word(parser, 0) == "CREATE" => {
            expect_words(parser, &["CREATE", "MATERIALIZED", "TABLE"])?;
            Ok(FreshetStatement::ShowCreateMaterializedTable {
                name: object_name(parser, "a materialized table's name")?,
            })
        }
        "SHOW" => {
            expect_words(parser, &["MATERIALIZED", "TABLES"])?;
            Ok(FreshetStatement::ShowMaterializedTables)
        }
        "EXPLAIN" => {
            expect_words(parser, &["MATERIALIZED", "TABLE"])?;
            Ok(FreshetStatement::ExplainMaterializedTable {
                name: object_name(parser, "a materialized table's name")?,
            })
        }
        "DESCRIBE" | "DESC" => {
            expect_words(parser, &["MATERIALIZED", "TABLE"])?;
            Ok(FreshetStatement::DescribeMaterializedTable {
                name: object_name(parser, "a materialized table's name")?,
            })
        }
        "DROP" => {
            expect_words(parser, &["MATERIALIZED", "TABLE"])?;
            let if_exists = accept_words(parser, &["IF", "EXISTS"]);
            let name = object_name(parser, "a materialized table's name")?;
            let cascade = accept_words(parser, &["CASCADE"]);
            if !cascade {
                accept_words(parser, &["RESTRICT"]);
            }
            Ok(FreshetStatement::DropMaterializedTable {
                name,
                if_exists,
                cascade,
            })
        }
        "ALTER" => {
            expect_words(parser, &["MATERIALIZED", "TABLE"])?;
            let name = object_name(parser, "a materialized table's name")?;
            let action = parse_alter(parser, sql)?;
            Ok(FreshetStatement::AlterMaterializedTable { name, action })
        }
        _ => {
            expect_words(parser, &["MATERIALIZED", "TABLE"])?;
            parse_create(parser, sql).map(|c| FreshetStatement::CreateMaterializedTable(Box::new(c)))
        }
    }
}

fn parse_create(parser: &mut Parser<'_>, sql: &str) -> Result<CreateMaterializedTable> {
    let if_not_exists = accept_words(parser, &["IF", "NOT", "EXISTS"]);
    let name = object_name(parser, "a materialized table's name")?;
    let mut primary_key = Vec::new();
    if parser.consume_token(&Token::LParen) {
        if accept_words(parser, &["CONSTRAINT"]) {
            identifier(parser, "a constraint name")?;
        }
        if !accept_words(parser, &["PRIMARY", "KEY"]) {
            return Err(unexpected(
                parser,
                "PRIMARY KEY (a materialized table's columns come from its query; only a primary key may be declared)",
            ));
        }
        primary_key = identifier_list(parser, "a primary-key column")?;
        accept_words(parser, &["NOT", "ENFORCED"]);
        expect_token(parser, &Token::RParen, ")")?;
    }
    let comment = if accept_words(parser, &["COMMENT"]) {
        Some(string_literal(parser, "the comment as a quoted string")?)
    } else {
        None
    };
    let partitioned_by = if accept_words(parser, &["PARTITIONED", "BY"]) {
        identifier_list(parser, "a partition column")?
    } else {
        Vec::new()
    };
    let options = if accept_words(parser, &["WITH"]) {
        option_list(parser)?
    } else {
        Vec::new()
    };
    let freshness = if accept_words(parser, &["FRESHNESS"]) {
        Some(freshness(parser)?)
    } else {
        None
    };
    let refresh_mode = if accept_words(parser, &["REFRESH_MODE"]) {
        Some(refresh_mode(parser)?)
    } else {
        None
    };
    if !accept_words(parser, &["AS"]) {
        return Err(unexpected(
            parser,
            "AS <query> (clauses in this order: PRIMARY KEY, COMMENT, PARTITIONED BY, WITH, FRESHNESS, REFRESH_MODE, AS)",
        ));
    }
    let (query, query_text) = query(parser, sql)?;
    Ok(CreateMaterializedTable {
        name,
        if_not_exists,
        primary_key,
        comment,
        partitioned_by,
        options,
        freshness,
        refresh_mode,
        query,
        query_text,
    })
}

fn parse_alter(parser: &mut Parser<'_>, sql: &str) -> Result<AlterMaterializedTable> {
    if accept_words(parser, &["SUSPEND"]) {
        return Ok(AlterMaterializedTable::Suspend);
    }
    if accept_words(parser, &["RESUME"]) {
        let options = if accept_words(parser, &["WITH"]) {
            option_list(parser)?
        } else {
            Vec::new()
        };
        return Ok(AlterMaterializedTable::Resume { options });
    }
    if accept_words(parser, &["REFRESH"]) {
        let full = accept_words(parser, &["FULL"]);
        let mut partition = Vec::new();
        if accept_words(parser, &["PARTITION"]) {
            expect_token(parser, &Token::LParen, "(")?;
            loop {
                let column = identifier(parser, "a partition column")?;
                expect_token(parser, &Token::Eq, "=")?;
                let value = string_literal(parser, "the partition value as a quoted string")?;
                partition.push((column, value));
                if !parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            expect_token(parser, &Token::RParen, ")")?;
        }
        return Ok(AlterMaterializedTable::Refresh { partition, full });
    }
    if accept_words(parser, &["SET", "FRESHNESS"]) {
        return Ok(AlterMaterializedTable::SetFreshness(freshness(parser)?));
    }
    if accept_words(parser, &["SET", "REFRESH_MODE"]) {
        return Ok(AlterMaterializedTable::SetRefreshMode(refresh_mode(parser)?));
    }
    if accept_words(parser, &["AS"]) {
        let (query, text) = query(parser, sql)?;
        return Ok(AlterMaterializedTable::Query { query, text });
    }
    Err(unexpected(
        parser,
        "SUSPEND, RESUME, REFRESH, SET FRESHNESS, SET REFRESH_MODE or AS <query>",
    ))
}

/// `= INTERVAL '<n>' <unit>` after `FRESHNESS`.
fn freshness(parser: &mut Parser<'_>) -> Result<Freshness> {
    expect_token(parser, &Token::Eq, "= after FRESHNESS")?;
    if !accept_words(parser, &["INTERVAL"]) {
        return Err(unexpected(parser, "INTERVAL '<n>' <unit> after FRESHNESS ="));
    }
    let amount_token = parser.next_token();
    let amount_text = match &amount_token.token {
        Token::SingleQuotedString(s) => s.trim().to_string(),
        Token::Number(n, _) => n.clone(),
        Token::Minus => format!("-{}", parser.next_token().token),
        other => {
            return Err(at(
                &amount_token,
                format!("FRESHNESS must be a literal interval such as INTERVAL '5' MINUTE, found {other}"),
            ));
        }
    };
    let amount = match amount_text.parse::<i64>() {
        Ok(n) if n > 0 => n as u64,
        Ok(_) => {
            return Err(at(
                &amount_token,
                format!("FRESHNESS must be positive, found INTERVAL '{amount_text}'"),
            ));
        }
        Err(_) => {
            return Err(at(
                &amount_token,
                format!("FRESHNESS must be a whole number of units, found '{amount_text}'"),
            ));
        }
    };
    let unit_token = parser.next_token();
    let unit = match &unit_token.token {
        Token::Word(w) => match w.value.to_ascii_uppercase().as_str() {
            "SECOND" | "SECONDS" => FreshnessUnit::Second,
            "MINUTE" | "MINUTES" => FreshnessUnit::Minute,
            "HOUR" | "HOURS" => FreshnessUnit::Hour,
            "DAY" | "DAYS" => FreshnessUnit::Day,
            other => {
                return Err(at(
                    &unit_token,
                    format!("unknown FRESHNESS unit {other}: expected SECOND, MINUTE, HOUR or DAY"),
                ));
            }
        },
        other => {
            return Err(at(
                &unit_token,
                format!("expected a FRESHNESS unit (SECOND, MINUTE, HOUR or DAY), found {other}"),
            ));
        }
    };
    Ok(Freshness { amount, unit })
}

/// `= <mode>` after `REFRESH_MODE`.
fn refresh_mode(parser: &mut Parser<'_>) -> Result<RefreshMode> {
    expect_token(parser, &Token::Eq, "= after REFRESH_MODE")?;
    let token = parser.next_token();
    let mode = match &token.token {
        Token::Word(w) => match w.value.to_ascii_uppercase().as_str() {
            "CONTINUOUS" => Some(RefreshMode::Continuous),
            "FULL" => Some(RefreshMode::Full),
            "INCREMENTAL" => Some(RefreshMode::Incremental),
            "AUTO" => Some(RefreshMode::Auto),
            _ => None,
        },
        _ => None,
    };
    mode.ok_or_else(|| {
        at(
            &token,
            format!(
                "unknown REFRESH_MODE {}: expected CONTINUOUS, FULL, INCREMENTAL or AUTO",
                token.token
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::{AlterMaterializedTable, FreshetStatement, Freshness, FreshnessUnit, RefreshMode, parse_statements};

    fn one(sql: &str) -> FreshetStatement {
        let mut parsed = parse_statements(sql).unwrap();
        assert_eq!(parsed.len(), 1);
        parsed.remove(0).statement
    }

    fn error(sql: &str) -> String {
        parse_statements(sql).unwrap_err().to_string()
    }

    #[test]
    fn parses_flinks_create_statement() {
        let sql = "CREATE MATERIALIZED TABLE IF NOT EXISTS dwd_orders (CONSTRAINT pk PRIMARY KEY(ds, id) NOT ENFORCED)
            COMMENT 'orders' PARTITIONED BY (ds)
            WITH ('format' = 'debezium-json', 'partition.fields.ds.date-formatter' = 'yyyy-MM-dd')
            FRESHNESS = INTERVAL '3' MINUTES REFRESH_MODE = FULL
            AS SELECT ds, id FROM orders;";
        let FreshetStatement::CreateMaterializedTable(create) = one(sql) else {
            panic!("not a create")
        };
        assert!(create.if_not_exists);
        assert_eq!(create.name.to_string(), "dwd_orders");
        assert_eq!(create.primary_key.len(), 2);
        assert_eq!(create.comment.as_deref(), Some("orders"));
        assert_eq!(create.partitioned_by[0].value, "ds");
        assert_eq!(create.options.len(), 2);
        assert_eq!(create.freshness, Some(Freshness::new(3, FreshnessUnit::Minute)));
        assert_eq!(create.freshness.unwrap().duration().as_secs(), 180);
        assert_eq!(create.refresh_mode, Some(RefreshMode::Full));
        assert_eq!(create.query_text, "SELECT ds, id FROM orders");
    }

    #[test]
    fn freshness_and_mode_are_optional() {
        let FreshetStatement::CreateMaterializedTable(create) = one("create materialized table m as select 1 as x")
        else {
            panic!("not a create")
        };
        assert_eq!(create.freshness, None);
        assert_eq!(create.refresh_mode, None);
    }

    #[test]
    fn parses_alter_drop_show_describe() {
        assert!(matches!(
            one("ALTER MATERIALIZED TABLE m REFRESH PARTITION (ds = '2026-11-20')"),
            FreshetStatement::AlterMaterializedTable { action: AlterMaterializedTable::Refresh { partition, full: false }, .. }
                if partition.len() == 1 && partition[0].1 == "2026-11-20"
        ));
        assert!(matches!(
            one("ALTER MATERIALIZED TABLE m REFRESH FULL"),
            FreshetStatement::AlterMaterializedTable {
                action: AlterMaterializedTable::Refresh { full: true, .. },
                ..
            }
        ));
        assert!(matches!(
            one("EXPLAIN MATERIALIZED TABLE m"),
            FreshetStatement::ExplainMaterializedTable { .. }
        ));
        assert!(matches!(
            one("ALTER MATERIALIZED TABLE m SET FRESHNESS = INTERVAL '1' DAY"),
            FreshetStatement::AlterMaterializedTable { action: AlterMaterializedTable::SetFreshness(f), .. }
                if f.unit == FreshnessUnit::Day
        ));
        assert!(matches!(
            one("ALTER MATERIALIZED TABLE m RESUME WITH ('sink.parallelism' = '2')"),
            FreshetStatement::AlterMaterializedTable { action: AlterMaterializedTable::Resume { options }, .. }
                if options.len() == 1
        ));
        assert!(matches!(
            one("ALTER MATERIALIZED TABLE m AS SELECT 2 AS y"),
            FreshetStatement::AlterMaterializedTable { action: AlterMaterializedTable::Query { text, .. }, .. }
                if text == "SELECT 2 AS y"
        ));
        assert!(matches!(
            one("DROP MATERIALIZED TABLE IF EXISTS m CASCADE"),
            FreshetStatement::DropMaterializedTable {
                if_exists: true,
                cascade: true,
                ..
            }
        ));
        assert!(matches!(
            one("SHOW MATERIALIZED TABLES"),
            FreshetStatement::ShowMaterializedTables
        ));
        assert!(matches!(
            one("DESC MATERIALIZED TABLE m"),
            FreshetStatement::DescribeMaterializedTable { .. }
        ));
        assert!(matches!(
            one("SHOW CREATE MATERIALIZED TABLE m"),
            FreshetStatement::ShowCreateMaterializedTable { .. }
        ));
    }

    #[test]
    fn rejects_bad_freshness_with_position() {
        let base = "CREATE MATERIALIZED TABLE m FRESHNESS = ";
        for (interval, expected) in [
            ("INTERVAL '0' MINUTE", "must be positive"),
            ("INTERVAL '-5' MINUTE", "must be positive"),
            ("INTERVAL '1.5' MINUTE", "whole number"),
            ("INTERVAL '5' WEEK", "unknown FRESHNESS unit WEEK"),
            ("INTERVAL x MINUTE", "literal interval"),
            ("5 MINUTES", "expected INTERVAL"),
        ] {
            let err = error(&format!("{base}{interval} AS SELECT 1"));
            assert!(err.contains(expected), "{interval}: {err}");
            assert!(err.contains("line 1, column"), "{interval}: {err}");
        }
        let err = error("CREATE MATERIALIZED TABLE m REFRESH_MODE = SOMETIMES AS SELECT 1");
        assert!(err.contains("unknown REFRESH_MODE SOMETIMES"), "{err}");
        let err = error("CREATE MATERIALIZED TABLE m REFRESH_MODE = FULL FRESHNESS = INTERVAL '1' HOUR AS SELECT 1");
        assert!(err.contains("clauses in this order"), "{err}");
    }
}
