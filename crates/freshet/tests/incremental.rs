//! The oracle of incremental maintenance: random data and random transactions on two tables,
//! a corpus of materialized tables covering every construct maintained incrementally, and after
//! every transaction each table refreshed incrementally must equal DataFusion's batch
//! evaluation of its query over the same input versions, as a multiset.

use std::collections::BTreeMap;

use freshet::datafusion::arrow::array::{Array, RecordBatch, StringArray};
use freshet::datafusion::arrow::datatypes::DataType;
use freshet::datafusion::arrow::util::display::array_value_to_string;
use freshet::{Engine, ManualClock};
use proptest::prelude::*;

/// 2026-11-20 00:00:00 UTC.
const START_MS: i64 = 1_795_132_800_000;

/// Every construct of incremental maintenance, over `t1` and `t2` (and `agg`, an MT).
const CORPUS: &[(&str, &str)] = &[
    (
        "agg",
        "SELECT g, count(*) AS c, count(v) AS cv, sum(v) AS s, avg(v) AS a, min(v) AS mn, max(v) AS mx, \
         count(DISTINCT v) AS cd, bool_and(b) AS band, bool_or(b) AS bor, sum(d) AS sd, avg(d) AS ad, \
         min(g) AS ming, max(f) AS mxf, sum(f) AS sf, avg(f) AS af FROM t1 GROUP BY g",
    ),
    (
        "global",
        "SELECT count(*) AS c, sum(v) AS s, min(v) AS mn, max(g) AS mx, avg(d) AS ad, count(DISTINCT k) AS ck \
         FROM t1",
    ),
    (
        "having",
        "SELECT k, sum(v) AS s, count(*) FILTER (WHERE b) AS cb FROM t1 WHERE v > -3 GROUP BY k \
         HAVING count(*) > 1",
    ),
    (
        "project",
        "SELECT id, CASE WHEN v > 2 THEN 'hi' WHEN v IS NULL THEN 'none' ELSE 'lo' END AS band, upper(g) AS u, \
         CAST(v AS DOUBLE) * 2 AS dv, coalesce(g, 'x') || '-' || CAST(k AS VARCHAR) AS label, d * 2 AS d2, \
         abs(v) % 3 AS m FROM t1 WHERE b OR v < 0",
    ),
    (
        "inner_join",
        "SELECT t1.id AS a, t2.id AS b, t1.v + t2.x AS vx FROM t1 JOIN t2 ON t1.k = t2.k",
    ),
    (
        "residual_join",
        "SELECT t1.id AS a, t2.id AS b FROM t1 JOIN t2 ON t1.k = t2.k AND t1.v < t2.x",
    ),
    (
        "left_join",
        "SELECT t1.id AS a, t2.x AS x FROM t1 LEFT JOIN t2 ON t1.k = t2.k",
    ),
    (
        "left_join_residual",
        "SELECT t1.id AS a, t2.id AS b FROM t1 LEFT JOIN t2 ON t1.k = t2.k AND t2.x > t1.v",
    ),
    (
        "right_join",
        "SELECT t1.g AS g, t2.id AS b FROM t1 RIGHT JOIN t2 ON t1.k = t2.k",
    ),
    (
        "full_join",
        "SELECT t1.id AS a, t2.id AS b, t2.s AS s FROM t1 FULL JOIN t2 ON t1.k = t2.k AND t1.g = t2.s",
    ),
    (
        "full_join_keys_only",
        "SELECT t1.id AS a, t2.id AS b FROM t1 FULL JOIN t2 ON t1.k = t2.k",
    ),
    (
        "not_exists_keys_only",
        "SELECT id, v FROM t1 WHERE NOT EXISTS (SELECT 1 FROM t2 WHERE t2.k = t1.k)",
    ),
    (
        "in_subquery",
        "SELECT id, v FROM t1 WHERE k IN (SELECT k FROM t2 WHERE x > 0)",
    ),
    (
        // NULLs on both sides (and an empty subquery now and then): SQL's three-valued NOT IN.
        "not_in_subquery",
        "SELECT id, k FROM t1 WHERE k NOT IN (SELECT k FROM t2 WHERE x > 2)",
    ),
    (
        "not_exists",
        "SELECT id FROM t1 WHERE NOT EXISTS (SELECT 1 FROM t2 WHERE t2.k = t1.k AND t2.x > t1.v)",
    ),
    (
        "scalar_subquery",
        "SELECT id, (SELECT max(x) FROM t2 WHERE t2.k = t1.k) AS top FROM t1",
    ),
    ("distinct", "SELECT DISTINCT g, k FROM t1"),
    ("union_all", "SELECT k, g AS name FROM t1 UNION ALL SELECT k, s FROM t2"),
    ("union", "SELECT k FROM t1 UNION SELECT k FROM t2"),
    ("except", "SELECT k, g FROM t1 EXCEPT SELECT k, s FROM t2"),
    ("intersect", "SELECT k FROM t1 INTERSECT SELECT k FROM t2"),
    (
        "self_join",
        "SELECT a.id AS x, b.id AS y FROM t1 a JOIN t1 b ON a.k = b.k AND a.id < b.id",
    ),
    (
        "three_way",
        "SELECT t1.id AS a, t2.id AS b, c.id AS c FROM t1 JOIN t2 ON t1.k = t2.k JOIN t1 c ON c.g = t2.s",
    ),
    (
        "join_aggregate",
        "SELECT t2.s, count(*) AS n, sum(t1.v) AS total, min(t1.d) AS least FROM t1 JOIN t2 ON t1.k = t2.k \
         GROUP BY t2.s",
    ),
    (
        // One aggregate read twice (Nexmark's q5): computed once, shared.
        "busiest",
        "SELECT a.k, a.g, a.n FROM (SELECT k, g, count(*) AS n FROM t1 GROUP BY k, g) a \
         JOIN (SELECT g, max(n) AS top FROM (SELECT k, g, count(*) AS n FROM t1 GROUP BY k, g) x GROUP BY g) b \
         ON a.g = b.g AND a.n >= b.top",
    ),
    (
        // A common table expression of a join and an aggregate, read twice.
        "cte_twice",
        "WITH j AS (SELECT t1.k AS k, sum(t2.x) AS sx, count(*) AS n FROM t1 JOIN t2 ON t1.k = t2.k GROUP BY t1.k) \
         SELECT k, sx FROM j WHERE n > 1 UNION ALL SELECT k, n FROM j WHERE sx > 2",
    ),
    ("top_n", "SELECT id, v FROM t1 ORDER BY v DESC NULLS LAST, id LIMIT 3"),
    ("top_n_offset", "SELECT id, g FROM t1 ORDER BY g, id LIMIT 2 OFFSET 1"),
    ("offset_only", "SELECT id FROM t1 ORDER BY v NULLS FIRST, id OFFSET 2"),
    ("count_only", "SELECT count(*) AS c FROM t1"),
    (
        "top_per_group",
        "SELECT * FROM (SELECT id, g, v, ROW_NUMBER() OVER (PARTITION BY g ORDER BY v DESC, id) AS rn FROM t1) \
         WHERE rn <= 2",
    ),
    (
        "dedup",
        "SELECT id, k, v FROM (SELECT id, k, v, ROW_NUMBER() OVER (PARTITION BY k ORDER BY id DESC) AS rn FROM t1) \
         WHERE rn = 1 AND v IS NOT NULL",
    ),
    (
        "over_running",
        "SELECT id, g, sum(v) OVER (PARTITION BY g ORDER BY v, id) AS run, \
         count(*) OVER (PARTITION BY g ORDER BY v, id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS c3 FROM t1",
    ),
    (
        "over_range",
        "SELECT id, k, sum(v) OVER (PARTITION BY k ORDER BY v RANGE BETWEEN 2 PRECEDING AND CURRENT ROW) AS s, \
         min(d) OVER (PARTITION BY k ORDER BY v DESC RANGE BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS m FROM t1",
    ),
    (
        "over_rank",
        "SELECT id, rank() OVER (ORDER BY v DESC) AS r, dense_rank() OVER (PARTITION BY g ORDER BY k) AS dr, \
         percent_rank() OVER (PARTITION BY g ORDER BY k) AS pr, cume_dist() OVER (PARTITION BY g ORDER BY k) AS cd \
         FROM t1",
    ),
    (
        "over_whole",
        "SELECT id, v - max(v) OVER (PARTITION BY g) AS below, count(d) OVER (PARTITION BY k) AS n, \
         lag(v) OVER (PARTITION BY g ORDER BY id) AS prev, lead(v, 2) OVER (PARTITION BY g ORDER BY id) AS next FROM t1",
    ),
    (
        "over_filter",
        "SELECT * FROM (SELECT id, v, rank() OVER (PARTITION BY k ORDER BY v) AS r FROM t1) WHERE r = 2",
    ),
    (
        "grouping_sets",
        "SELECT g, k, count(*) AS c, sum(v) AS s, GROUPING(g) AS gg, GROUPING(k) AS gk FROM t1 \
         GROUP BY GROUPING SETS ((g, k), (g), ())",
    ),
    (
        "rollup",
        "SELECT g, b, max(v) AS m, count(d) AS n FROM t1 GROUP BY ROLLUP (g, b)",
    ),
    (
        "cube",
        "SELECT k, b, min(d) AS m FROM t1 WHERE v > 0 GROUP BY CUBE (k, b)",
    ),
    ("chained", "SELECT g, c, s FROM agg WHERE c > 1"),
    (
        "scalar_having",
        "SELECT k, sum(v) AS s FROM t1 GROUP BY k HAVING sum(v) > (SELECT avg(x) FROM t2)",
    ),
    (
        "scalar_where",
        "SELECT id, v FROM t1 WHERE v >= (SELECT max(x) FROM t2 WHERE x < 4)",
    ),
    (
        "scalar_select",
        "SELECT id, v - (SELECT min(x) FROM t2) AS d, (SELECT count(*) FROM t2) AS n FROM t1",
    ),
    (
        "scalar_top",
        "SELECT k, s FROM (SELECT k, sum(v) AS s FROM t1 GROUP BY k) r \
         WHERE s = (SELECT max(s2) FROM (SELECT k, sum(v) AS s2 FROM t1 GROUP BY k) r2)",
    ),
];

/// One transaction on the inputs.
#[derive(Debug, Clone)]
enum Change {
    InsertT1(Vec<T1Row>),
    InsertT2(Vec<T2Row>),
    UpdateT1 {
        modulus: i32,
        remainder: i32,
        k: i32,
        v: i32,
    },
    UpdateT2 {
        modulus: i32,
        remainder: i32,
        x: i32,
    },
    DeleteT1 {
        modulus: i32,
        remainder: i32,
    },
    DeleteT2 {
        modulus: i32,
        remainder: i32,
    },
}

type T1Row = (
    Option<i32>,
    Option<String>,
    Option<i32>,
    Option<i32>,
    Option<bool>,
    Option<i32>,
);
type T2Row = (Option<i32>, Option<i32>, Option<String>);

fn name() -> impl Strategy<Value = Option<String>> {
    proptest::option::weighted(0.85, "[a-c]")
}

fn small() -> impl Strategy<Value = Option<i32>> {
    proptest::option::weighted(0.85, -4..6i32)
}

fn t1_row() -> impl Strategy<Value = T1Row> {
    (
        small(),
        name(),
        small(),
        small(),
        proptest::option::weighted(0.8, any::<bool>()),
        small(),
    )
}

fn t2_row() -> impl Strategy<Value = T2Row> {
    (small(), small(), name())
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => proptest::collection::vec(t1_row(), 1..5).prop_map(Change::InsertT1),
        2 => proptest::collection::vec(t2_row(), 1..4).prop_map(Change::InsertT2),
        2 => (2..4i32, 0..3i32, -4..6i32, -4..6i32)
            .prop_map(|(modulus, remainder, k, v)| Change::UpdateT1 { modulus, remainder, k, v }),
        1 => (2..4i32, 0..3i32, -4..6i32).prop_map(|(modulus, remainder, x)| Change::UpdateT2 { modulus, remainder, x }),
        2 => (2..5i32, 0..3i32).prop_map(|(modulus, remainder)| Change::DeleteT1 { modulus, remainder }),
        1 => (2..5i32, 0..3i32).prop_map(|(modulus, remainder)| Change::DeleteT2 { modulus, remainder }),
    ]
}

fn int(value: Option<i32>) -> String {
    value.map_or("NULL".into(), |v| v.to_string())
}

fn text(value: &Option<String>) -> String {
    value.as_ref().map_or("NULL".into(), |v| format!("'{v}'"))
}

/// The statement of a change; `next_id` numbers inserted rows (the primary keys).
fn statement(change: &Change, next_id: &mut i32) -> String {
    let mut id = || {
        *next_id += 1;
        *next_id
    };
    match change {
        Change::InsertT1(rows) => {
            let values: Vec<String> = rows
                .iter()
                .map(|(k, g, v, d, b, f)| {
                    format!(
                        "({}, {}, {}, {}, {}, {}, {})",
                        id(),
                        int(*k),
                        text(g),
                        int(*v),
                        // Decimals with cents; floats in cents too, whose sums are inexact (0.1 + 0.2).
                        d.map_or("NULL".into(), |d| format!("{}.{:02}", d, (d * 7).rem_euclid(100))),
                        b.map_or("NULL".into(), |b| b.to_string()),
                        f.map_or("NULL".into(), |f| format!("{}", f as f64 * 1.1 / 10.0)),
                    )
                })
                .collect();
            format!("INSERT INTO t1 VALUES {}", values.join(", "))
        }
        Change::InsertT2(rows) => {
            let values: Vec<String> = rows
                .iter()
                .map(|(k, x, s)| format!("({}, {}, {}, {})", id(), int(*k), int(*x), text(s)))
                .collect();
            format!("INSERT INTO t2 VALUES {}", values.join(", "))
        }
        Change::UpdateT1 {
            modulus,
            remainder,
            k,
            v,
        } => format!("UPDATE t1 SET k = {k}, v = v + {v}, b = NOT b WHERE id % {modulus} = {remainder}"),
        Change::UpdateT2 { modulus, remainder, x } => {
            format!("UPDATE t2 SET x = {x} WHERE id % {modulus} = {remainder}")
        }
        Change::DeleteT1 { modulus, remainder } => format!("DELETE FROM t1 WHERE id % {modulus} = {remainder}"),
        Change::DeleteT2 { modulus, remainder } => format!("DELETE FROM t2 WHERE id % {modulus} = {remainder}"),
    }
}

/// Rows as sorted text: a multiset that compares across plans.
pub(crate) fn multiset(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for batch in batches {
        for i in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(i) {
                        "NULL".to_string()
                    } else if matches!(c.data_type(), DataType::Float64 | DataType::Float32) {
                        // Sums of a few values with three decimals, and their averages over fewer
                        // than 64 rows, agree to 9 decimals whatever the order of the additions,
                        // and cannot fall on a rounding boundary there.
                        // (Rounded first, so that -0.000000000 and 0.000000000 agree.)
                        let v: f64 = array_value_to_string(c, i).unwrap().parse().unwrap();
                        format!("{:.9}", (v * 1e9).round() / 1e9 + 0.0)
                    } else {
                        array_value_to_string(c, i).unwrap()
                    }
                })
                .collect();
            rows.push(cells.join(" | "));
        }
    }
    rows.sort();
    rows
}

/// An engine with both tables and every materialized table of the corpus.
async fn setup(indexed: bool) -> Engine {
    let engine = oracle_engine(indexed).await;
    engine
        .sql(
            "CREATE TABLE t1 (id INT PRIMARY KEY, k INT, g VARCHAR, v INT, d DECIMAL(10, 2), b BOOLEAN, f DOUBLE);
             CREATE TABLE t2 (id INT PRIMARY KEY, k INT, x INT, s VARCHAR);",
        )
        .await
        .unwrap();
    create_corpus(&engine, CORPUS).await;
    engine
}

/// An engine in memory for the oracles: tiny files and eager compaction, so that refreshes
/// meet many files, deletion vectors and compactions; with `indexed` false, retractions find
/// their rows by scanning the tables instead of through the row index, and with `indexed`
/// true a state build over existing rows takes them in many epochs.
pub(crate) async fn oracle_engine(indexed: bool) -> Engine {
    Engine::builder()
        .setting(
            "materialized-table.row-index.max-rows",
            if indexed { "1000000" } else { "0" },
        )
        .unwrap()
        // With the index, a state build takes its inputs three rows an epoch (aggregates give
        // their rows after the last); without, in one epoch.
        .setting(
            "materialized-table.state-build.epoch-rows",
            if indexed { "3" } else { "1000000" },
        )
        .unwrap()
        .location("memory://")
        .clock(std::sync::Arc::new(ManualClock::new(START_MS)))
        .max_file_rows(4)
        .compact_min_files(3)
        .target_partitions(2)
        .open()
        .await
        .unwrap()
}

/// A materialized table refreshed only when asked (`REFRESH_MODE = INCREMENTAL`) for each
/// `(name, query)` of the corpus.
pub(crate) async fn create_corpus(engine: &Engine, corpus: &[(impl AsRef<str>, impl AsRef<str>)]) {
    for (name, query) in corpus {
        let (name, query) = (name.as_ref(), query.as_ref());
        engine
            .sql(&format!(
                "CREATE MATERIALIZED TABLE {name} FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL AS {query}"
            ))
            .await
            .unwrap_or_else(|e| panic!("{name}: {query}: {e}"));
    }
}

/// The oracles' proptest settings: `cases` cases, failing cases kept beside the test in
/// `*.regressions`.
pub(crate) fn oracle_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource(
            "regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// The algorithm of the last refresh of each table.
async fn last_algorithms(engine: &Engine) -> BTreeMap<String, String> {
    let batches = engine
        .sql("SELECT name, coalesce(algorithm, outcome) || ': ' || coalesce(reason, detail, '') FROM freshet.refreshes")
        .await
        .unwrap();
    let mut last = BTreeMap::new();
    for batch in &batches {
        let names = batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let what = freshet::datafusion::arrow::compute::cast(batch.column(1), &DataType::Utf8).unwrap();
        let what = what.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..batch.num_rows() {
            last.insert(names.value(i).to_string(), what.value(i).to_string());
        }
    }
    last
}

/// Refreshes every table of the corpus, then checks each against its query evaluated in batch
/// and that its refresh was incremental.
pub(crate) async fn check(
    engine: &Engine,
    corpus: &[(impl AsRef<str>, impl AsRef<str>)],
    step: usize,
    statement: &str,
) {
    for (name, _) in corpus {
        let name = name.as_ref();
        engine
            .sql(&format!("ALTER MATERIALIZED TABLE {name} REFRESH"))
            .await
            .unwrap_or_else(|e| panic!("step {step} ({statement}): refreshing {name}: {e}"));
    }
    let algorithms = last_algorithms(engine).await;
    for (name, query) in corpus {
        let (name, query) = (name.as_ref(), query.as_ref());
        let maintained = multiset(&engine.sql(&format!("SELECT * FROM {name}")).await.unwrap());
        let expected = multiset(&engine.sql(query).await.unwrap());
        assert_eq!(
            maintained, expected,
            "step {step} ({statement}): {name} differs from its query {query}"
        );
        let algorithm = algorithms.get(name).map(String::as_str).unwrap_or("");
        assert!(
            algorithm.starts_with("incremental") || algorithm.starts_with("skipped"),
            "step {step}: {name} was refreshed by {algorithm}"
        );
    }
    // A rebuilt state never found a table drifted from its query.
    let drifted = engine
        .sql("SELECT name FROM freshet.refreshes WHERE corrected_rows > 0")
        .await
        .unwrap();
    assert_eq!(
        multiset(&drifted),
        Vec::<String>::new(),
        "step {step}: tables had drifted"
    );
}

proptest! {
    #![proptest_config(crate::incremental::oracle_config(16))]

    #[test]
    fn incremental_refreshes_equal_batch_evaluation(
        changes in proptest::collection::vec(change(), 1..10),
        indexed in proptest::bool::ANY,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let engine = setup(indexed).await;
            let mut next_id = 0;
            for (step, change) in changes.iter().enumerate() {
                let statement = statement(change, &mut next_id);
                engine.sql(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
                check(&engine, CORPUS, step, &statement).await;
            }
            engine.close().await;
        });
    }
}

/// A state built from inputs that already hold rows takes them a few rows an epoch (the
/// oracle engine's setting): every query of the corpus equals batch evaluation after the
/// build and after changes, and no build found its table drifted (an aggregate that lost or
/// repeated a group's row in its building epochs would show both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_built_in_many_epochs_equal_batch_evaluation() {
    let engine = oracle_engine(true).await;
    engine
        .sql(
            "CREATE TABLE t1 (id INT PRIMARY KEY, k INT, g VARCHAR, v INT, d DECIMAL(10, 2), b BOOLEAN, f DOUBLE);
             CREATE TABLE t2 (id INT PRIMARY KEY, k INT, x INT, s VARCHAR);
             INSERT INTO t1 SELECT value, value % 5, CASE WHEN value % 7 = 0 THEN NULL ELSE 'g' || CAST(value % 3 AS VARCHAR) END, \
               CAST(value % 11 AS INT) - 4, CAST(value AS DECIMAL(10, 2)) / 4, value % 2 = 0, CAST(value AS DOUBLE) / 8 \
               FROM generate_series(1, 60);
             INSERT INTO t2 SELECT value, value % 7, value % 9, CASE WHEN value % 4 = 0 THEN NULL ELSE 'g' || CAST(value % 3 AS VARCHAR) END \
               FROM generate_series(1, 25);",
        )
        .await
        .unwrap();
    create_corpus(&engine, CORPUS).await;
    check(&engine, CORPUS, 0, "state builds over existing rows").await;
    let statement = "UPDATE t1 SET v = v + 1 WHERE id % 4 = 0; DELETE FROM t2 WHERE id % 5 = 0";
    engine.sql(statement).await.unwrap();
    check(&engine, CORPUS, 1, statement).await;
    engine.close().await;
}

/// A subquery a query reads twice is computed and kept once: its second reader takes the
/// first's changes (the oracle above checks the results).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subquery_read_twice_is_computed_once() {
    let engine = setup(true).await;
    engine
        .sql("INSERT INTO t1 VALUES (1, 1, 'a', 1, 1.0, true, 1.0), (2, 1, 'a', 2, 1.0, true, 1.0)")
        .await
        .unwrap();
    for (name, shared) in [
        ("busiest", "Aggregate: group=[k@0, g@1] aggregates=[count(Int64(1))]"),
        (
            "cte_twice",
            "Aggregate: group=[k@0] aggregates=[sum(t2.x), count(Int64(1))]",
        ),
    ] {
        engine
            .sql(&format!("ALTER MATERIALIZED TABLE {name} REFRESH"))
            .await
            .unwrap();
        let explained = multiset(&engine.sql(&format!("EXPLAIN MATERIALIZED TABLE {name}")).await.unwrap()).join("\n");
        assert_eq!(
            explained.matches("Shared: computed once, read 2 times").count(),
            1,
            "{explained}"
        );
        assert_eq!(
            explained.matches(&format!("Reuse of the shared {shared}")).count(),
            1,
            "{explained}"
        );
        assert_eq!(
            explained.matches(shared).count(),
            2,
            "one aggregate and its reuse: {explained}"
        );
    }
    engine.close().await;
}

/// A state whose checkpoint is lost (here a window function's) is rebuilt after a restart,
/// once AUTO has measured that rebuilding pays.
#[tokio::test]
async fn a_state_without_a_checkpoint_is_rebuilt_once_that_pays() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open_at(dir.path(), &clock).await;
    engine
        .sql(
            "CREATE TABLE t (id INT PRIMARY KEY, g INT, v INT);
             INSERT INTO t SELECT value, value % 3, value * 10 FROM generate_series(1, 40);
             CREATE MATERIALIZED TABLE m FRESHNESS = INTERVAL '1' HOUR
             AS SELECT id, v, sum(v) OVER (PARTITION BY g ORDER BY id) AS running FROM t",
        )
        .await
        .unwrap();
    engine.sql("DELETE FROM t WHERE id = 40").await.unwrap();
    engine.sql("ALTER MATERIALIZED TABLE m REFRESH").await.unwrap();
    let state = dir
        .path()
        .join("tables")
        .join(engine.table("m").unwrap().id())
        .join("state");
    engine.close().await;
    let lost = std::fs::read_dir(&state)
        .unwrap()
        .map(|f| std::fs::remove_file(f.unwrap().path()).unwrap())
        .count();
    assert_eq!(lost, 1, "the state had a checkpoint");
    let engine = open_at(dir.path(), &clock).await;
    engine.sql("INSERT INTO t VALUES (42, 3, 500)").await.unwrap();
    // AUTO does not rebuild the state in a process that has not measured what that costs: a
    // process refreshing once would never get it back. It recomputes, then rebuilds.
    engine.sql("ALTER MATERIALIZED TABLE m REFRESH").await.unwrap();
    let (_, algorithm, reason) = last_refresh(&engine, "m").await;
    assert_eq!(algorithm, "full", "{reason}");
    assert!(reason.contains("not measured yet"), "{reason}");
    engine.sql("INSERT INTO t VALUES (43, 3, 600)").await.unwrap();
    engine.sql("ALTER MATERIALIZED TABLE m REFRESH").await.unwrap();
    let (_, algorithm, reason) = last_refresh(&engine, "m").await;
    assert_eq!(algorithm, "incremental");
    assert!(reason.contains("rebuilt"), "{reason}");
    let maintained = multiset(&engine.sql("SELECT * FROM m").await.unwrap());
    let expected = multiset(
        &engine
            .sql("SELECT id, v, sum(v) OVER (PARTITION BY g ORDER BY id) AS running FROM t")
            .await
            .unwrap(),
    );
    assert_eq!(maintained, expected);
    engine.close().await;
}

/// The first value of a one-row, one-column query, as text.
pub(crate) async fn value(engine: &Engine, sql: &str) -> String {
    let batches = engine.sql(sql).await.unwrap();
    let batch = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    array_value_to_string(batch.column(0), 0).unwrap()
}

async fn open_at(dir: &std::path::Path, clock: &ManualClock) -> Engine {
    Engine::builder()
        .location(dir.display().to_string())
        .clock(std::sync::Arc::new(clock.clone()))
        .open()
        .await
        .unwrap()
}

/// The trigger, algorithm and reason of the newest refresh attempt of `name`.
pub(crate) async fn last_refresh(engine: &Engine, name: &str) -> (String, String, String) {
    let batches = engine
        .sql(&format!(
            "SELECT trigger, coalesce(algorithm, outcome), coalesce(reason, detail, '') FROM freshet.refreshes \
             WHERE name = '{name}'"
        ))
        .await
        .unwrap();
    let batch = batches.iter().rev().find(|b| b.num_rows() > 0).expect("a refresh");
    let at = |c: usize| array_value_to_string(batch.column(c), batch.num_rows() - 1).unwrap();
    (at(0), at(1), at(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_table_follows_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open_at(dir.path(), &clock).await;
    engine
        .sql(
            "CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR, amount INT);
             INSERT INTO orders VALUES (1, 'ann', 10), (2, 'bob', 5);
             CREATE MATERIALIZED TABLE totals FRESHNESS = INTERVAL '10' SECOND
             AS SELECT customer, sum(amount) AS total FROM orders GROUP BY customer",
        )
        .await
        .unwrap();
    let mut versions = engine.table("totals").unwrap().subscribe();
    versions.borrow_and_update();
    engine.sql("INSERT INTO orders VALUES (3, 'ann', 7)").await.unwrap();
    // No time passes: the commit alone triggers the refresh.
    engine.wait_for_refreshes().await;
    assert!(
        versions.has_changed().unwrap(),
        "the commit made a new version of totals"
    );
    assert_eq!(
        value(&engine, "SELECT total FROM totals WHERE customer = 'ann'").await,
        "17"
    );
    let (trigger, algorithm, reason) = last_refresh(&engine, "totals").await;
    assert_eq!(
        (trigger.as_str(), algorithm.as_str()),
        ("continuous", "incremental"),
        "{reason}"
    );

    engine.sql("DELETE FROM orders WHERE customer = 'bob'").await.unwrap();
    engine.wait_for_refreshes().await;
    assert_eq!(value(&engine, "SELECT count(*) FROM totals").await, "1");
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_change_of_freshness_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open_at(dir.path(), &clock).await;
    engine
        .sql(
            "CREATE TABLE t (id INT PRIMARY KEY, g INT, v INT);
             INSERT INTO t SELECT value, value % 3, value * 10 FROM generate_series(1, 40);
             CREATE MATERIALIZED TABLE m FRESHNESS = INTERVAL '10' SECOND
             AS SELECT g, min(v) AS low, count(*) AS n FROM t GROUP BY g",
        )
        .await
        .unwrap();
    engine.sql("DELETE FROM t WHERE id = 1").await.unwrap();
    engine.wait_for_refreshes().await;
    let (_, algorithm, reason) = last_refresh(&engine, "m").await;
    assert_eq!(algorithm, "incremental");
    assert!(
        reason.contains("rebuilt"),
        "the first incremental refresh builds the state: {reason}"
    );

    // From continuous to scheduled: the state is handed over, not rebuilt.
    engine
        .sql("ALTER MATERIALIZED TABLE m SET FRESHNESS = INTERVAL '1' HOUR")
        .await
        .unwrap();
    assert_eq!(
        value(&engine, "SELECT refresh_mode FROM freshet.materialized_tables").await,
        "AUTO"
    );
    engine.sql("INSERT INTO t VALUES (41, 2, 5)").await.unwrap();
    engine.sql("ALTER MATERIALIZED TABLE m REFRESH").await.unwrap();
    let (trigger, algorithm, reason) = last_refresh(&engine, "m").await;
    assert_eq!(
        (trigger.as_str(), algorithm.as_str()),
        ("manual", "incremental"),
        "{reason}"
    );
    assert!(!reason.contains("rebuilt"), "the state was kept: {reason}");
    assert_eq!(value(&engine, "SELECT low FROM m WHERE g = 2").await, "5");

    // Changes committed before closing are caught up after reopening, once. The state comes
    // back from the table's checkpoint, not from reading every input again.
    engine.sql("UPDATE t SET v = 1 WHERE id = 2").await.unwrap();
    engine.close().await;
    let engine = open_at(dir.path(), &clock).await;
    engine.sql("INSERT INTO t VALUES (42, 3, 50)").await.unwrap();
    engine.sql("ALTER MATERIALIZED TABLE m REFRESH").await.unwrap();
    let (_, algorithm, reason) = last_refresh(&engine, "m").await;
    assert_eq!(algorithm, "incremental", "{reason}");
    assert!(reason.contains("restored from the table's checkpoint"), "{reason}");
    engine.sql("INSERT INTO t VALUES (43, 3, 60)").await.unwrap();
    engine.sql("ALTER MATERIALIZED TABLE m REFRESH").await.unwrap();
    let (_, algorithm, reason) = last_refresh(&engine, "m").await;
    assert_eq!(algorithm, "incremental");
    assert!(!reason.contains("restored") && !reason.contains("rebuilt"), "{reason}");
    let maintained = multiset(&engine.sql("SELECT * FROM m").await.unwrap());
    let expected = multiset(
        &engine
            .sql("SELECT g, min(v), count(*) FROM t GROUP BY g")
            .await
            .unwrap(),
    );
    assert_eq!(maintained, expected);
    assert_eq!(value(&engine, "SELECT low FROM m WHERE g = 3").await, "50");
    assert_eq!(value(&engine, "SELECT low FROM m WHERE g = 2").await, "1");

    // EXPLAIN: the mode, the operators with their state, and where the state stands.
    let explained = multiset(&engine.sql("EXPLAIN MATERIALIZED TABLE m").await.unwrap()).join("\n");
    assert!(explained.contains("mode | AUTO every INTERVAL '1' HOUR"), "{explained}");
    assert!(explained.contains("Aggregate: group=[g@0]"), "{explained}");
    assert!(
        explained.contains("[state: per group: row count, accumulators and the multiset"),
        "{explained}"
    );
    assert!(explained.contains("Scan: t"), "{explained}");
    assert!(explained.contains("state | in memory: 4 entries"), "{explained}");
    // Retractions find their rows through an index keyed by the GROUP BY column alone.
    assert!(
        explained.contains("row_index | by unique key (g): 4 keys"),
        "{explained}"
    );

    // A forced recompute has its own form.
    engine.sql("ALTER MATERIALIZED TABLE m REFRESH FULL").await.unwrap();
    let (_, algorithm, _) = last_refresh(&engine, "m").await;
    assert_eq!(algorithm, "full");
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_state_over_the_memory_limit_is_an_error_of_that_table() {
    let engine = Engine::builder()
        .location("memory://")
        .clock(std::sync::Arc::new(ManualClock::new(START_MS)))
        .memory_limit(1 << 20)
        .open()
        .await
        .unwrap();
    engine
        .sql(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT);
             CREATE MATERIALIZED TABLE wide FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL
             AS SELECT id, count(DISTINCT v) AS n FROM t GROUP BY id;
             CREATE MATERIALIZED TABLE narrow FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL
             AS SELECT count(*) AS n FROM t;
             INSERT INTO t SELECT value, value * 2 FROM generate_series(1, 50000);",
        )
        .await
        .unwrap();
    let error = engine
        .sql("ALTER MATERIALIZED TABLE wide REFRESH")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("materialized table \"wide\": its operator state needs") && error.contains("emory"),
        "{error}"
    );
    // The table keeps its last contents; a table whose state fits is not affected.
    assert_eq!(value(&engine, "SELECT count(*) FROM wide").await, "0");
    engine.sql("ALTER MATERIALIZED TABLE narrow REFRESH").await.unwrap();
    assert_eq!(value(&engine, "SELECT n FROM narrow").await, "50000");
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_and_key_indexes_over_the_memory_limit_fail_and_commit_nothing() {
    let engine = Engine::builder()
        .location("memory://")
        .memory_limit(1 << 20)
        .open()
        .await
        .unwrap();
    engine
        .sql(
            "CREATE TABLE t (id BIGINT, v BIGINT);
             INSERT INTO t SELECT value, value * 2 FROM generate_series(1, 200000);",
        )
        .await
        .unwrap();
    let total = "SELECT sum(v) FROM t";
    let before = value(&engine, total).await;
    // An UPDATE holds its new rows until every old one is deleted.
    let error = engine.sql("UPDATE t SET v = v + 1").await.unwrap_err().to_string();
    assert!(
        error.contains("UPDATE of \"t\"") && error.contains("memory limit"),
        "{error}"
    );
    assert_eq!(value(&engine, total).await, before);
    engine.sql("UPDATE t SET v = v + 1 WHERE id <= 10").await.unwrap();
    assert_eq!(value(&engine, "SELECT sum(v) FROM t WHERE id <= 10").await, "120");

    // An upsert holds its input and its keys.
    engine
        .sql("CREATE TABLE u (id BIGINT PRIMARY KEY, v BIGINT); INSERT INTO u VALUES (1, 1)")
        .await
        .unwrap();
    let error = engine
        .sql("INSERT OR REPLACE INTO u SELECT value, 0 FROM generate_series(1, 200000)")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("upsert into \"u\"") && error.contains("memory limit"),
        "{error}"
    );
    assert_eq!(value(&engine, "SELECT count(*) FROM u").await, "1");
    engine
        .sql("INSERT OR REPLACE INTO u VALUES (1, 0), (2, 0)")
        .await
        .unwrap();
    assert_eq!(value(&engine, "SELECT count(*) FROM u WHERE v = 0").await, "2");

    // A primary-key index is accounted too: a table whose keys outgrow the limit takes no
    // insert that needs it until there is room (its rows stay readable) — one of more rows than
    // are looked up in the table itself; a few rows are, duplicates still refused.
    engine
        .sql("CREATE TABLE k (id BIGINT PRIMARY KEY, v BIGINT); INSERT INTO k SELECT value, 0 FROM generate_series(1, 200000)")
        .await
        .unwrap();
    let error = engine
        .sql("INSERT INTO k SELECT value, 0 FROM generate_series(300001, 302000)")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("table \"k\": its primary-key index needs") && error.contains("memory limit"),
        "{error}"
    );
    assert_eq!(value(&engine, "SELECT count(*) FROM k").await, "200000");
    engine.sql("INSERT INTO k VALUES (0, 0)").await.unwrap();
    let error = engine.sql("INSERT INTO k VALUES (7, 1)").await.unwrap_err().to_string();
    assert!(error.contains("duplicate") || error.contains("Duplicate"), "{error}");
    assert_eq!(value(&engine, "SELECT count(*) FROM k").await, "200001");
    engine.close().await;
}

/// Epochs of more than `freshet_common::PARALLEL_MIN_ROWS` changes step the aggregates' and the
/// joins' parts, and the row index's, on threads of their own: the results still equal batch
/// evaluation, with integer and row-encoded group and join keys, NULL keys, multisets
/// (MIN/MAX/DISTINCT), groups that vanish and groups that appear, rows that repeat, and joins of
/// every kind (residual conditions, NOT IN's one part) whose sides change apart or together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_epochs_step_in_parallel_parts_and_equal_batch_evaluation() {
    let engine = Engine::builder()
        .location("memory://")
        .clock(std::sync::Arc::new(ManualClock::new(START_MS)))
        .target_partitions(2)
        .open()
        .await
        .unwrap();
    engine
        .sql(
            "CREATE TABLE t (id INT PRIMARY KEY, k INT, g VARCHAR, v INT, f DOUBLE);
             INSERT INTO t SELECT value, CASE WHEN value % 101 = 0 THEN NULL ELSE value % 3000 END,
               'g' || (value % 700), value % 50, value / 8.0 FROM generate_series(1, 30000);
             CREATE TABLE u (k INT, w INT, name VARCHAR);
             INSERT INTO u SELECT CASE WHEN value % 97 = 0 THEN NULL ELSE value % 3500 END, value % 60,
               'g' || (value % 5000) FROM generate_series(1, 4000);",
        )
        .await
        .unwrap();
    let corpus = [
        (
            "by_int",
            "SELECT k, count(*) AS c, sum(v) AS s, min(v) AS mn, max(f) AS mx, count(DISTINCT v) AS cd, avg(f) AS a \
             FROM t GROUP BY k",
        ),
        (
            "by_text",
            "SELECT g, k % 2 AS odd, count(*) AS c, sum(f) AS s FROM t GROUP BY g, k % 2 HAVING count(*) > 3",
        ),
        // Tens of thousands of retractions a refresh: the row index's parts take them at once,
        // keyed by the unique key here and by the whole (repeated) row below.
        (
            "by_bucket",
            "SELECT id % 20000 AS bucket, count(*) AS c, sum(v) AS s FROM t GROUP BY id % 20000",
        ),
        ("rows", "SELECT k, v FROM t WHERE v < 40"),
        (
            "inner_join",
            "SELECT t.id, t.v, u.w FROM t JOIN u ON t.k = u.k WHERE u.w < 30",
        ),
        (
            "left_residual",
            "SELECT t.id, u.w FROM t LEFT JOIN u ON t.k = u.k AND u.w > t.v",
        ),
        (
            "full_by_text",
            "SELECT t.id, t.g, u.k FROM t FULL JOIN u ON t.g = u.name",
        ),
        ("semi", "SELECT id FROM t WHERE k IN (SELECT k FROM u WHERE w % 2 = 0)"),
        (
            "anti",
            "SELECT id FROM t WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.k = t.k)",
        ),
        (
            "not_in",
            "SELECT id FROM t WHERE v NOT IN (SELECT w FROM u WHERE w > 20)",
        ),
        (
            "join_then_group",
            "SELECT u.w, count(*) AS c, sum(t.v) AS s FROM t JOIN u ON t.k = u.k GROUP BY u.w",
        ),
    ];
    create_corpus(&engine, &corpus).await;
    check(&engine, &corpus, 0, "the first refresh").await;
    let statements = [
        "UPDATE t SET v = v + 1, f = f * 2 WHERE id % 3 <> 0",
        "DELETE FROM t WHERE id % 5 < 3",
        "UPDATE t SET k = k + 3000, g = g || 'x' WHERE id % 2 = 0",
        "INSERT INTO t SELECT value, value % 9000, 'h' || (value % 10), value % 7, value * 1.0 FROM generate_series(30001, 45000)",
        // The other side alone, in an epoch too small to step the parts at once.
        "UPDATE u SET w = w + 7, k = k + 1 WHERE k % 4 = 0",
        "DELETE FROM u WHERE k % 7 = 0 OR w = 25",
        "INSERT INTO u SELECT value % 9000, value % 61, 'h' || (value % 10) FROM generate_series(1, 2000)",
        // Both sides in one epoch.
        "UPDATE t SET k = k + 1 WHERE id % 3 = 0; UPDATE u SET k = k - 1 WHERE w % 3 = 0",
    ];
    for (step, statement) in statements.iter().enumerate() {
        engine.sql(statement).await.unwrap();
        check(&engine, &corpus, step + 1, statement).await;
    }
    engine.close().await;
}
