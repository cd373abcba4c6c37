//! The Nexmark benchmark's tables as Flink users declare them (nexmark-flink's `ddl_gen.sql` and
//! `ddl_views.sql`), its queries q0–q22 as Flink SQL jobs into blackhole sinks (`QUERIES`, the
//! files in `crates/freshet/nexmark/`), and an export of the generator's events as JSON lines,
//! so that other engines can be run on identical input.

use crate::{Engine, Result};

/// The columns of the `person` view (and of its JSON-lines files).
pub const PERSON_COLUMNS: &str = "id BIGINT, name VARCHAR, emailAddress VARCHAR, creditCard VARCHAR, city VARCHAR, \
     state VARCHAR, `dateTime` TIMESTAMP(3), extra VARCHAR";
/// The columns of the `auction` view.
pub const AUCTION_COLUMNS: &str = "id BIGINT, itemName VARCHAR, description VARCHAR, initialBid BIGINT, \
     reserve BIGINT, `dateTime` TIMESTAMP(3), expires TIMESTAMP(3), seller BIGINT, category BIGINT, extra VARCHAR";
/// The columns of the `bid` view.
pub const BID_COLUMNS: &str = "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, \
     `dateTime` TIMESTAMP(3), extra VARCHAR";

/// A Nexmark query: its name (`q0` … `q22`) and its Flink SQL, a `CREATE TABLE nexmark_<name>`
/// sink with `'connector' = 'blackhole'` and an `INSERT INTO nexmark_<name> SELECT ...` over the
/// views `person`, `auction` and `bid`.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    /// `q0` … `q22`.
    pub name: &'static str,
    /// The sink's `CREATE TABLE` and the `INSERT INTO`, as a Flink user writes them.
    pub sql: &'static str,
    /// Why Freshet cannot run it yet, when it cannot.
    pub unsupported: Option<&'static str>,
}

impl Query {
    /// The query's `SELECT ...`: what follows its `INSERT INTO nexmark_<name>`.
    pub fn select(&self) -> &'static str {
        let insert = format!("INSERT INTO nexmark_{}", self.name);
        self.sql
            .find(&insert)
            .map_or(self.sql, |at| &self.sql[at + insert.len()..])
            .trim()
            .trim_end_matches(';')
    }
}

macro_rules! query {
    ($name:literal) => {
        query!($name, None)
    };
    ($name:literal, $unsupported:expr) => {
        Query {
            name: $name,
            sql: include_str!(concat!("../nexmark/", $name, ".sql")),
            unsupported: $unsupported,
        }
    };
}

/// Nexmark's queries q0–q22, as nexmark-flink defines what they compute.
pub const QUERIES: &[Query] = &[
    query!("q0"),
    query!("q1"),
    query!("q2"),
    query!("q3"),
    query!("q4"),
    query!("q5"),
    query!("q6"),
    query!("q7"),
    query!("q8"),
    query!("q9"),
    query!("q10"),
    query!("q11"),
    query!(
        "q12",
        Some("windows over processing time (PROCTIME()) are not supported: only event-time windows are")
    ),
    query!(
        "q13",
        Some("lookup joins (FOR SYSTEM_TIME AS OF a processing time) against a side-input file are not supported")
    ),
    query!(
        "q14",
        Some("it calls count_char, a user-defined function of nexmark-flink's (and Flink's HOUR)")
    ),
    query!("q15"),
    query!("q16"),
    query!("q17"),
    query!("q18"),
    query!("q19"),
    query!("q20"),
    query!("q21"),
    query!("q22"),
];

/// `CREATE TABLE <table> (...) WITH ('connector' = 'nexmark', <options>)`: one generator table
/// with `event_type`, the three ROW columns, the computed `dateTime` and its watermark.
pub fn generator_ddl(table: &str, options: &[(&str, String)]) -> String {
    let options: String = options.iter().map(|(k, v)| format!(", '{k}' = '{v}'")).collect();
    format!(
        "CREATE TABLE {table} (
            event_type INT,
            person ROW<{PERSON_COLUMNS}>,
            auction ROW<{AUCTION_COLUMNS}>,
            bid ROW<{BID_COLUMNS}>,
            `dateTime` AS CASE WHEN event_type = 0 THEN person.`dateTime`
                WHEN event_type = 1 THEN auction.`dateTime` ELSE bid.`dateTime` END,
            WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
        ) WITH ('connector' = 'nexmark'{options})"
    )
}

/// The views `person`, `auction` and `bid` over a generator table, as nexmark-flink's.
pub fn views_ddl(table: &str) -> [String; 3] {
    [
        format!(
            "CREATE VIEW person AS SELECT person.id, person.name, person.emailAddress, person.creditCard, \
             person.city, person.state, `dateTime`, person.extra FROM {table} WHERE event_type = 0"
        ),
        format!(
            "CREATE VIEW auction AS SELECT auction.id, auction.itemName, auction.description, auction.initialBid, \
             auction.reserve, `dateTime`, auction.expires, auction.seller, auction.category, auction.extra \
             FROM {table} WHERE event_type = 1"
        ),
        format!(
            "CREATE VIEW bid AS SELECT bid.auction, bid.bidder, bid.price, bid.channel, bid.url, `dateTime`, \
             bid.extra FROM {table} WHERE event_type = 2"
        ),
    ]
}

/// `CREATE TABLE person|auction|bid (...) WITH ('connector' = 'filesystem', ...)`: the JSON-lines
/// files [`export_json_lines`] writes under `dir`, with the views' columns and the generator's
/// watermark (`dateTime` less 4 seconds).
pub fn files_ddl(dir: &std::path::Path) -> [String; 3] {
    [
        ("person", PERSON_COLUMNS),
        ("auction", AUCTION_COLUMNS),
        ("bid", BID_COLUMNS),
    ]
    .map(|(kind, columns)| {
        format!(
            "CREATE TABLE {kind} ({columns}, WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND) \
             WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json')",
            dir.join(kind).display().to_string().replace('\'', "''")
        )
    })
}

/// Writes the events of a Nexmark generator with `options` (nexmark-flink's option names, and
/// Freshet's `event.base-time` and `seed`) as JSON lines into `dir/person`, `dir/auction` and
/// `dir/bid`, with the views' columns. Runs on an engine of its own in memory. Returns the rows
/// written per kind.
pub async fn export_json_lines(options: &[(&str, String)], dir: &std::path::Path) -> Result<[u64; 3]> {
    let engine = Engine::builder().location("memory://").open().await?;
    engine.sql(&generator_ddl("nexmark_events", options)).await?;
    for view in views_ddl("nexmark_events") {
        engine.sql(&view).await?;
    }
    let mut inserts = Vec::new();
    for (kind, columns) in [
        ("person", PERSON_COLUMNS),
        ("auction", AUCTION_COLUMNS),
        ("bid", BID_COLUMNS),
    ] {
        let path = dir.join(kind);
        engine
            .sql(&format!(
                "CREATE TABLE {kind}_files ({columns}) WITH ('connector' = 'filesystem', 'path' = '{}', \
                 'format' = 'json')",
                path.display().to_string().replace('\'', "''")
            ))
            .await?;
        inserts.push(format!("INSERT INTO {kind}_files SELECT * FROM {kind};"));
    }
    engine.sql("SET 'table.dml-sync' = 'true'").await?;
    engine
        .sql(&format!("EXECUTE STATEMENT SET BEGIN {} END", inserts.join(" ")))
        .await?;
    let mut rows = [0; 3];
    if let Some(job) = engine.jobs().first() {
        for (slot, written) in rows.iter_mut().zip(&job.rows_out_by_insert) {
            *slot = *written;
        }
    }
    engine.close().await;
    Ok(rows)
}
