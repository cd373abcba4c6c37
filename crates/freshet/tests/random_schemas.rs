//! The oracle over random schemas: two tables whose columns have random types (integers of
//! every width, decimals, floats, text, booleans, dates, timestamps), with or without a primary
//! key, a corpus of materialized tables generated from the schema (every construct maintained
//! incrementally, over randomly chosen columns), random transactions, and after each one every
//! table refreshed incrementally must equal DataFusion's batch evaluation of its query.

use proptest::prelude::*;

use crate::incremental::{check, create_corpus, oracle_engine};

/// A column type, with a handful of values per type so that groups, join matches and
/// duplicates happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SmallInt,
    Int,
    BigInt,
    Decimal,
    Double,
    Real,
    Text,
    Bool,
    Date,
    Timestamp,
}

const KINDS: [Kind; 10] = [
    Kind::SmallInt,
    Kind::Int,
    Kind::BigInt,
    Kind::Decimal,
    Kind::Double,
    Kind::Real,
    Kind::Text,
    Kind::Bool,
    Kind::Date,
    Kind::Timestamp,
];

const INTEGERS: [Kind; 3] = [Kind::SmallInt, Kind::Int, Kind::BigInt];

/// Text values, among them the empty string, case and a trailing space.
const WORDS: [&str; 7] = ["a", "b", "B", "c", "", "ab", "b "];

impl Kind {
    fn sql(self) -> &'static str {
        match self {
            Kind::SmallInt => "SMALLINT",
            Kind::Int => "INT",
            Kind::BigInt => "BIGINT",
            Kind::Decimal => "DECIMAL(12, 2)",
            Kind::Double => "DOUBLE",
            Kind::Real => "REAL",
            Kind::Text => "VARCHAR",
            Kind::Bool => "BOOLEAN",
            Kind::Date => "DATE",
            Kind::Timestamp => "TIMESTAMP",
        }
    }

    fn numeric(self) -> bool {
        matches!(
            self,
            Kind::SmallInt | Kind::Int | Kind::BigInt | Kind::Decimal | Kind::Double | Kind::Real
        )
    }

    /// Value number `i` (-3..=3) of the type. Float values are exact binary fractions, so that
    /// sums do not depend on the order of the additions.
    fn literal(self, i: i8) -> String {
        let i = i.clamp(-3, 3);
        match self {
            Kind::SmallInt | Kind::Int | Kind::BigInt => i.to_string(),
            Kind::Decimal => format!("{:.2}", f64::from(i) * 1.25),
            Kind::Double => format!("{}", f64::from(i) * 0.75),
            Kind::Real => format!("{}", f64::from(i) * 0.5),
            Kind::Text => format!("'{}'", WORDS[(i + 3) as usize]),
            Kind::Bool => (i % 2 == 0).to_string(),
            Kind::Date => format!("DATE '2026-02-0{}'", i + 4),
            Kind::Timestamp => format!("TIMESTAMP '2026-02-01 0{}:30:00'", i + 4),
        }
    }

    /// A scalar expression over a column of the type, for projections.
    fn expression(self, column: &str) -> String {
        match self {
            Kind::SmallInt | Kind::Int | Kind::BigInt => format!("abs({column}) * 2 + 1"),
            Kind::Decimal | Kind::Double | Kind::Real => format!("{column} * 2 - 1"),
            Kind::Text => format!("upper({column}) || '!' || CAST(length({column}) AS VARCHAR)"),
            Kind::Bool => format!("CASE WHEN {column} THEN 'yes' WHEN NOT {column} THEN 'no' END"),
            Kind::Date => format!("{column} + INTERVAL '1' DAY"),
            Kind::Timestamp => format!("date_part('hour', {column})"),
        }
    }

    /// A condition on a column of the type, true for about half of its values.
    fn predicate(self, column: &str) -> String {
        match self {
            Kind::Text => format!("{column} < 'b'"),
            Kind::Bool => column.to_string(),
            Kind::Date | Kind::Timestamp => format!("{column} >= {}", self.literal(0)),
            _ => format!("{column} > 0"),
        }
    }
}

/// The two tables: `t1 (id, k, a1, a2, ...)` and `t2 (id, k, b1, ...)`, `k` of join-compatible
/// types; `id` numbers the rows and is the primary key when `keyed`.
#[derive(Debug, Clone)]
struct Schema {
    t1: Vec<Kind>,
    t2: Vec<Kind>,
    keyed: (bool, bool),
    /// Choices of columns for the generated queries.
    picks: Vec<usize>,
}

fn kind() -> impl Strategy<Value = Kind> {
    proptest::sample::select(KINDS.to_vec())
}

fn schema() -> impl Strategy<Value = Schema> {
    (
        proptest::collection::vec(kind(), 2..6),
        proptest::collection::vec(kind(), 1..4),
        any::<(bool, bool)>(),
        0..3usize,
        proptest::collection::vec(0..64usize, 8),
    )
        .prop_map(|(t1, mut t2, keyed, width, picks)| {
            // Integer keys of different widths join (DataFusion coerces them); others keep
            // their type.
            t2[0] = if INTEGERS.contains(&t1[0]) {
                INTEGERS[width]
            } else {
                t1[0]
            };
            Schema { t1, t2, keyed, picks }
        })
}

/// One transaction on the inputs: `table` is 1 or 2, column numbers are taken modulo the
/// table's width.
#[derive(Debug, Clone)]
enum Change {
    Insert {
        table: u8,
        rows: Vec<Vec<Option<i8>>>,
    },
    Update {
        table: u8,
        column: usize,
        value: Option<i8>,
        modulus: i32,
        remainder: i32,
    },
    Delete {
        table: u8,
        modulus: i32,
        remainder: i32,
    },
    DeleteNulls {
        table: u8,
        column: usize,
    },
    /// Compacts the inputs and every materialized table: the next refresh reads changes
    /// across a compaction and finds its retractions in rewritten files.
    Compact,
}

fn value() -> impl Strategy<Value = Option<i8>> {
    proptest::option::weighted(0.85, -3..=3i8)
}

fn change() -> impl Strategy<Value = Change> {
    let table = prop_oneof![3 => Just(1u8), 2 => Just(2u8)];
    prop_oneof![
        4 => (table.clone(), proptest::collection::vec(proptest::collection::vec(value(), 6), 1..5))
            .prop_map(|(table, rows)| Change::Insert { table, rows }),
        3 => (table.clone(), 0..6usize, value(), 2..4i32, 0..3i32).prop_map(
            |(table, column, value, modulus, remainder)| Change::Update { table, column, value, modulus, remainder }
        ),
        2 => (table.clone(), 2..5i32, 0..3i32)
            .prop_map(|(table, modulus, remainder)| Change::Delete { table, modulus, remainder }),
        1 => (table, 0..6usize).prop_map(|(table, column)| Change::DeleteNulls { table, column }),
        2 => Just(Change::Compact),
    ]
}

impl Schema {
    /// The columns of table 1 or 2 after `id`: names and types.
    fn columns(&self, table: u8) -> Vec<(String, Kind)> {
        let (kinds, prefix) = if table == 1 { (&self.t1, "a") } else { (&self.t2, "b") };
        kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let name = if i == 0 {
                    "k".to_string()
                } else {
                    format!("{prefix}{i}")
                };
                (name, *kind)
            })
            .collect()
    }

    fn create(&self) -> String {
        [1, 2]
            .iter()
            .map(|&table| {
                let keyed = if table == 1 { self.keyed.0 } else { self.keyed.1 };
                let columns: Vec<String> = self
                    .columns(table)
                    .iter()
                    .map(|(name, kind)| format!("{name} {}", kind.sql()))
                    .collect();
                format!(
                    "CREATE TABLE t{table} (id INT{}, {});",
                    if keyed { " PRIMARY KEY" } else { "" },
                    columns.join(", ")
                )
            })
            .collect()
    }

    /// The `n`th chosen column of table 1 or 2.
    fn pick(&self, table: u8, n: usize) -> (String, Kind) {
        let columns = self.columns(table);
        columns[self.picks[n % self.picks.len()] % columns.len()].clone()
    }

    /// Every construct maintained incrementally, over the schema's columns.
    fn corpus(&self) -> Vec<(String, String)> {
        let t1 = self.columns(1);
        let (g, _) = self.pick(1, 0);
        let (x, x_kind) = self.pick(1, 1);
        let (y, y_kind) = self.pick(2, 2);
        let (z, z_kind) = self.pick(1, 3);

        let mut aggregates = vec![
            "count(*) AS n".to_string(),
            format!("count({x}) AS cx"),
            format!("min({x}) AS mn"),
            format!("max({x}) AS mx"),
            format!("count(DISTINCT {x}) AS cd"),
        ];
        for (column, kind) in &t1 {
            if kind.numeric() {
                aggregates.push(format!("sum({column}) AS s_{column}, avg({column}) AS av_{column}"));
            }
            if *kind == Kind::Bool {
                aggregates.push(format!(
                    "bool_and({column}) AS all_{column}, bool_or({column}) AS any_{column}"
                ));
            }
        }
        let aggregates = aggregates.join(", ");
        let projections: Vec<String> = t1
            .iter()
            .enumerate()
            .map(|(i, (column, kind))| format!("{} AS e{i}", kind.expression(column)))
            .collect();
        let same_kind = self
            .columns(2)
            .into_iter()
            .skip(1)
            .find(|(_, kind)| *kind == x_kind)
            .map(|(column, _)| column);
        let (set1, set2) = match same_kind {
            Some(column) if x != "k" => (format!("k, {x}"), format!("k, {column}")),
            _ => ("k".to_string(), "k".to_string()),
        };

        let queries = [
            ("agg", format!("SELECT {g}, {aggregates} FROM t1 GROUP BY {g}")),
            ("global", format!("SELECT {aggregates} FROM t1")),
            (
                "having",
                format!(
                    "SELECT {g}, count(*) AS n, max({x}) AS mx FROM t1 WHERE {} GROUP BY {g} HAVING count(*) > 1",
                    z_kind.predicate(&z)
                ),
            ),
            (
                "project",
                format!(
                    "SELECT id, {} FROM t1 WHERE {} OR {z} IS NULL",
                    projections.join(", "),
                    z_kind.predicate(&z)
                ),
            ),
            (
                "inner_join",
                format!("SELECT t1.id AS l, t2.id AS r, t1.{x} AS x, t2.{y} AS y FROM t1 JOIN t2 ON t1.k = t2.k"),
            ),
            (
                "residual_join",
                format!("SELECT t1.id AS l, t2.{y} AS y FROM t1 JOIN t2 ON t1.k = t2.k AND t1.id % 3 <> t2.id % 2"),
            ),
            (
                "left_join",
                format!("SELECT t1.id AS l, t2.{y} AS y FROM t1 LEFT JOIN t2 ON t1.k = t2.k AND t2.id > t1.id"),
            ),
            (
                "right_join",
                format!("SELECT t1.{x} AS x, t2.id AS r FROM t1 RIGHT JOIN t2 ON t1.k = t2.k"),
            ),
            (
                "full_join",
                format!(
                    "SELECT t1.id AS l, t2.id AS r, t2.{y} AS y FROM t1 FULL JOIN t2 ON t1.k = t2.k AND t1.id <> t2.id"
                ),
            ),
            (
                "in_subquery",
                format!(
                    "SELECT id, {x} FROM t1 WHERE k IN (SELECT k FROM t2 WHERE {})",
                    y_kind.predicate(&y)
                ),
            ),
            (
                "not_in_subquery",
                format!(
                    "SELECT id, k FROM t1 WHERE k NOT IN (SELECT k FROM t2 WHERE {})",
                    y_kind.predicate(&y)
                ),
            ),
            (
                "exists",
                "SELECT id FROM t1 WHERE EXISTS (SELECT 1 FROM t2 WHERE t2.k = t1.k AND t2.id > t1.id)".to_string(),
            ),
            (
                "scalar_subquery",
                format!("SELECT id, (SELECT max({y}) FROM t2 WHERE t2.k = t1.k) AS top FROM t1"),
            ),
            ("distinct", format!("SELECT DISTINCT {g} AS g, {x} AS x FROM t1")),
            (
                "union_all",
                format!("SELECT {set1} FROM t1 UNION ALL SELECT {set2} FROM t2"),
            ),
            ("union", format!("SELECT {set1} FROM t1 UNION SELECT {set2} FROM t2")),
            ("except", format!("SELECT {set1} FROM t1 EXCEPT SELECT {set2} FROM t2")),
            (
                "intersect",
                format!("SELECT {set1} FROM t1 INTERSECT SELECT {set2} FROM t2"),
            ),
            (
                "self_join",
                format!("SELECT a.id AS l, b.id AS r FROM t1 a JOIN t1 b ON a.{x} = b.{x} AND a.id < b.id"),
            ),
            (
                "three_way",
                "SELECT t1.id AS l, t2.id AS m, c.id AS r FROM t1 JOIN t2 ON t1.k = t2.k JOIN t1 c ON c.k = t2.k"
                    .to_string(),
            ),
            (
                "join_aggregate",
                format!(
                    "SELECT t2.{y} AS y, count(*) AS n, min(t1.{x}) AS mn, count(DISTINCT t1.{g}) AS cg \
                     FROM t1 JOIN t2 ON t1.k = t2.k GROUP BY t2.{y}"
                ),
            ),
            (
                "top_n",
                format!("SELECT id, {x} FROM t1 ORDER BY {x} DESC NULLS LAST, id LIMIT 3"),
            ),
            (
                "top_per_group",
                format!(
                    "SELECT * FROM (SELECT id, {g} AS g, {x} AS x, \
                     ROW_NUMBER() OVER (PARTITION BY {g} ORDER BY {x} NULLS FIRST, id DESC) AS rn FROM t1) WHERE rn <= 2"
                ),
            ),
            ("chained", format!("SELECT {g}, n, cx FROM r_agg WHERE n > 1")),
        ];
        queries
            .into_iter()
            .map(|(name, query)| (format!("r_{name}"), query))
            .collect()
    }

    /// The statement of a change; `next_id` numbers inserted rows.
    fn statement(&self, change: &Change, next_id: &mut i32) -> String {
        let literal = |kind: Kind, value: &Option<i8>| value.map_or("NULL".to_string(), |i| kind.literal(i));
        match change {
            Change::Insert { table, rows } => {
                let columns = self.columns(*table);
                let rows: Vec<String> = rows
                    .iter()
                    .map(|values| {
                        *next_id += 1;
                        let cells: Vec<String> = columns
                            .iter()
                            .zip(values)
                            .map(|((_, kind), value)| literal(*kind, value))
                            .collect();
                        format!("({next_id}, {})", cells.join(", "))
                    })
                    .collect();
                format!("INSERT INTO t{table} VALUES {}", rows.join(", "))
            }
            Change::Update {
                table,
                column,
                value,
                modulus,
                remainder,
            } => {
                let columns = self.columns(*table);
                let (name, kind) = &columns[column % columns.len()];
                format!(
                    "UPDATE t{table} SET {name} = {} WHERE id % {modulus} = {remainder}",
                    literal(*kind, value)
                )
            }
            Change::Delete {
                table,
                modulus,
                remainder,
            } => format!("DELETE FROM t{table} WHERE id % {modulus} = {remainder}"),
            Change::DeleteNulls { table, column } => {
                let columns = self.columns(*table);
                format!(
                    "DELETE FROM t{table} WHERE {} IS NULL",
                    columns[column % columns.len()].0
                )
            }
            Change::Compact => ["t1".to_string(), "t2".to_string()]
                .into_iter()
                .chain(self.corpus().into_iter().map(|(name, _)| name))
                .map(|name| format!("ALTER TABLE {name} COMPACT"))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

proptest! {
    #![proptest_config(crate::incremental::oracle_config(12))]

    #[test]
    fn incremental_refreshes_over_random_schemas_equal_batch_evaluation(
        schema in schema(),
        changes in proptest::collection::vec(change(), 1..8),
        indexed in proptest::bool::ANY,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let engine = oracle_engine(indexed).await;
            let create = schema.create();
            engine.sql(&create).await.unwrap_or_else(|e| panic!("{create}: {e}"));
            let corpus = schema.corpus();
            create_corpus(&engine, &corpus).await;
            let mut next_id = 0;
            for (step, change) in changes.iter().enumerate() {
                let statement = schema.statement(change, &mut next_id);
                engine.sql(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
                check(&engine, &corpus, step, &statement).await;
            }
            engine.close().await;
        });
    }
}
