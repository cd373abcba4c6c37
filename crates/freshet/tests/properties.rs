//! Property tests of the table format against a model: random transactions (inserts, updates,
//! deletes, key moves, compactions, reopens) on a table with a primary key, small files and
//! eager background compaction. After every statement the table must equal the model; at the end
//! every version must read as the model did then, and the changes between any two versions must
//! equal the difference of the model's two states.

use std::collections::BTreeMap;

use freshet::datafusion::arrow::array::{Array, Int32Array, Int64Array, RecordBatch, StringViewArray};
use freshet::{Engine, FreshetError};
use proptest::prelude::*;

type Row = (i32, i32, Option<String>);

#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<Row>),
    Update { modulus: i32, remainder: i32, delta: i32 },
    MoveKey { from: i32, to: i32 },
    Delete { above: i32 },
    Compact,
    Reopen,
}

fn row() -> impl Strategy<Value = Row> {
    (0..40i32, -50..50i32, proptest::option::of("[a-c]{0,2}"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(row(), 1..6).prop_map(Op::Insert),
        2 => (2..5i32, 0..5i32, -3..4i32).prop_map(|(modulus, remainder, delta)| Op::Update { modulus, remainder, delta }),
        1 => (0..40i32, 0..45i32).prop_map(|(from, to)| Op::MoveKey { from, to }),
        2 => (-60..60i32).prop_map(|above| Op::Delete { above }),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

fn literal(value: &Option<String>) -> String {
    match value {
        Some(s) => format!("'{s}'"),
        None => "NULL".into(),
    }
}

async fn open(dir: &std::path::Path) -> Engine {
    Engine::builder()
        .location(dir.display().to_string())
        .max_file_rows(3)
        .compact_min_files(4)
        .target_partitions(2)
        .open()
        .await
        .expect("engine opens")
}

fn rows_of(batches: &[RecordBatch]) -> Vec<Row> {
    let mut rows = Vec::new();
    for batch in batches {
        let k = batch.column(0).as_any().downcast_ref::<Int32Array>().expect("k");
        let a = batch.column(1).as_any().downcast_ref::<Int32Array>().expect("a");
        let b = batch.column(2).as_any().downcast_ref::<StringViewArray>().expect("b");
        for i in 0..batch.num_rows() {
            rows.push((k.value(i), a.value(i), (!b.is_null(i)).then(|| b.value(i).to_string())));
        }
    }
    rows
}

async fn read(engine: &Engine, sql: &str) -> Vec<Row> {
    let mut rows = rows_of(&engine.sql(sql).await.expect("query runs"));
    rows.sort();
    rows
}

/// Applies one operation to the engine and the model; checks that the engine fails exactly when
/// the model says the statement is invalid.
async fn apply(engine: &Engine, model: &mut BTreeMap<i32, Row>, op: &Op) {
    match op {
        Op::Insert(rows) => {
            let values: Vec<String> = rows
                .iter()
                .map(|(k, a, b)| format!("({k}, {a}, {})", literal(b)))
                .collect();
            let result = engine.sql(&format!("INSERT INTO t VALUES {}", values.join(", "))).await;
            let mut next = model.clone();
            let mut duplicate = false;
            for r in rows {
                duplicate |= next.insert(r.0, r.clone()).is_some();
            }
            match result {
                Ok(_) => {
                    assert!(!duplicate, "insert of a duplicate key succeeded");
                    *model = next;
                }
                Err(FreshetError::DuplicateKey { .. }) => assert!(duplicate, "spurious duplicate key"),
                Err(e) => panic!("insert failed: {e}"),
            }
        }
        Op::Update {
            modulus,
            remainder,
            delta,
        } => {
            engine
                .sql(&format!(
                    "UPDATE t SET a = a + {delta}, b = b || 'u' WHERE k % {modulus} = {remainder}"
                ))
                .await
                .expect("update");
            for r in model.values_mut().filter(|r| r.0 % modulus == *remainder) {
                r.1 += delta;
                r.2 = r.2.as_ref().map(|s| format!("{s}u"));
            }
        }
        Op::MoveKey { from, to } => {
            let result = engine.sql(&format!("UPDATE t SET k = {to} WHERE k = {from}")).await;
            let conflict = from != to && model.contains_key(from) && model.contains_key(to);
            match result {
                Ok(_) => {
                    assert!(!conflict, "key move onto an existing key succeeded");
                    if let Some(mut r) = model.remove(from) {
                        r.0 = *to;
                        model.insert(*to, r);
                    }
                }
                Err(FreshetError::DuplicateKey { .. }) => assert!(conflict, "spurious duplicate key"),
                Err(e) => panic!("key move failed: {e}"),
            }
        }
        Op::Delete { above } => {
            engine
                .sql(&format!("DELETE FROM t WHERE a > {above}"))
                .await
                .expect("delete");
            model.retain(|_, r| r.1 <= *above);
        }
        Op::Compact => {
            engine.sql("ALTER TABLE t COMPACT").await.expect("compact");
        }
        Op::Reopen => unreachable!("reopening replaces the engine: see `check`"),
    }
}

async fn check(ops: Vec<Op>, pairs: Vec<(usize, usize)>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(dir.path()).await;
    engine
        .sql("CREATE TABLE t (k INT PRIMARY KEY, a INT NOT NULL, b TEXT)")
        .await
        .expect("create");
    let mut model: BTreeMap<i32, Row> = BTreeMap::new();
    // The model's state at every table version (index = version).
    let mut states: Vec<Vec<Row>> = vec![Vec::new(), Vec::new()];
    for op in &ops {
        if let Op::Reopen = op {
            engine.close().await;
            engine = open(dir.path()).await;
        } else {
            apply(&engine, &mut model, op).await;
        }
        let table = engine.table("t").expect("table");
        table.wait_for_background_work().await;
        let expected: Vec<Row> = model.values().cloned().collect();
        assert_eq!(read(&engine, "SELECT * FROM t").await, expected, "after {op:?}");
        let version = table.snapshot().version() as usize;
        while states.len() <= version {
            states.push(expected.clone());
        }
    }
    let newest = states.len() - 1;
    for (version, state) in states.iter().enumerate().skip(1) {
        let rows = read(&engine, &format!("SELECT * FROM t VERSION AS OF {version}")).await;
        assert_eq!(&rows, state, "version {version}");
    }
    for (x, y) in pairs {
        let (from, to) = (x % (newest + 1), y % (newest + 1));
        let (from, to) = (from.min(to), from.max(to));
        let batches = engine
            .sql(&format!(
                "SELECT k, a, b, _weight FROM table_changes('t', {from}, {to})"
            ))
            .await
            .expect("changes");
        let mut actual: BTreeMap<Row, i64> = BTreeMap::new();
        for batch in &batches {
            let weights = batch.column(3).as_any().downcast_ref::<Int64Array>().expect("weight");
            for (row, w) in rows_of(&[batch.project(&[0, 1, 2]).expect("project")])
                .into_iter()
                .zip(weights.values())
            {
                *actual.entry(row).or_default() += w;
            }
        }
        let mut expected: BTreeMap<Row, i64> = BTreeMap::new();
        for row in &states[to] {
            *expected.entry(row.clone()).or_default() += 1;
        }
        for row in &states[from] {
            *expected.entry(row.clone()).or_default() -= 1;
        }
        expected.retain(|_, w| *w != 0);
        assert_eq!(actual, expected, "changes from {from} to {to}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn tables_match_the_model(
        ops in proptest::collection::vec(op(), 1..14),
        pairs in proptest::collection::vec((0usize..64, 0usize..64), 4),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        runtime.block_on(check(ops, pairs));
    }
}
