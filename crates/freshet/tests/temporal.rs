//! The oracle of temporal filters: rows with times around the engine's clock, random inserts,
//! updates and deletes, and the clock moving forward by random amounts; after every step each
//! materialized table, refreshed incrementally, must equal DataFusion's batch evaluation of its
//! query at the same time. Full refreshes in between make the next refresh rebuild the state
//! at the time of the full refresh and carry it forward.

use std::sync::Arc;
use std::time::Duration;

use freshet::{Engine, ManualClock};
use proptest::prelude::*;

use crate::incremental::{check, create_corpus};

/// 2026-11-20 00:00:00 UTC.
const START_MS: i64 = 1_795_132_800_000;

const CORPUS: &[(&str, &str)] = &[
    (
        "window",
        "SELECT id, g FROM e WHERE ts > now() - INTERVAL '2' DAY AND ts <= now()",
    ),
    ("future", "SELECT id FROM e WHERE ts >= current_timestamp"),
    (
        "between",
        "SELECT id, g FROM e WHERE ts BETWEEN now() - INTERVAL '36' HOUR AND now() + INTERVAL '90' MINUTE AND g > 0",
    ),
    (
        "by_day",
        "SELECT id FROM e WHERE d >= current_date - INTERVAL '2' DAY AND d < current_date",
    ),
    (
        "today",
        "SELECT g, count(*) AS n FROM e WHERE d = current_date GROUP BY g",
    ),
    (
        "per_group",
        "SELECT g, count(*) AS n, max(ts) AS last FROM e WHERE now() - INTERVAL '1' DAY < ts GROUP BY g",
    ),
    (
        "joined",
        "SELECT a.id AS a, b.id AS b FROM e a JOIN e b ON a.g = b.g WHERE a.ts < now() - INTERVAL '12' HOUR AND b.id > a.id",
    ),
];

#[derive(Debug, Clone)]
enum Step {
    /// Rows (group, minutes from now).
    Insert(Vec<(i32, i64)>),
    Shift {
        modulus: i32,
        remainder: i32,
        minutes: i64,
    },
    Delete {
        modulus: i32,
        remainder: i32,
    },
    Advance(u64),
    RefreshFull,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        // Times and steps in half hours, so that rows often sit exactly on a bound.
        4 => proptest::collection::vec((0..3i32, -150..100i64), 1..5)
            .prop_map(|rows| Step::Insert(rows.into_iter().map(|(g, h)| (g, h * 30)).collect())),
        1 => (2..4i32, 0..3i32, -20..20i64)
            .prop_map(|(modulus, remainder, h)| Step::Shift { modulus, remainder, minutes: h * 30 }),
        1 => (2..5i32, 0..3i32).prop_map(|(modulus, remainder)| Step::Delete { modulus, remainder }),
        4 => prop_oneof![0..4u64, 0..100u64].prop_map(|h| Step::Advance(h * 30)),
        1 => Just(Step::RefreshFull),
    ]
}

proptest! {
    #![proptest_config(crate::incremental::oracle_config(16))]

    #[test]
    fn temporal_filters_equal_batch_evaluation_as_time_passes(steps in proptest::collection::vec(step(), 1..14)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let clock = ManualClock::new(START_MS);
            let engine = Engine::builder()
                .location("memory://")
                .clock(Arc::new(clock.clone()))
                .max_file_rows(8)
                .target_partitions(2)
                .open()
                .await
                .unwrap();
            engine.sql("CREATE TABLE e (id INT PRIMARY KEY, g INT, ts TIMESTAMP, d DATE)").await.unwrap();
            create_corpus(&engine, CORPUS).await;
            let mut next_id = 0;
            for (i, step) in steps.iter().enumerate() {
                let statement = match step {
                    Step::Insert(rows) => {
                        let rows: Vec<String> = rows
                            .iter()
                            .map(|(g, minutes)| {
                                next_id += 1;
                                let at = format!("now() + INTERVAL '{minutes}' MINUTE");
                                format!("({next_id}, {g}, CAST({at} AS TIMESTAMP), CAST({at} AS DATE))")
                            })
                            .collect();
                        format!("INSERT INTO e VALUES {}", rows.join(", "))
                    }
                    Step::Shift { modulus, remainder, minutes } => format!(
                        "UPDATE e SET ts = ts + INTERVAL '{minutes}' MINUTE, d = CAST(ts + INTERVAL '{minutes}' MINUTE AS DATE) \
                         WHERE id % {modulus} = {remainder}"
                    ),
                    Step::Delete { modulus, remainder } => format!("DELETE FROM e WHERE id % {modulus} = {remainder}"),
                    Step::Advance(minutes) => {
                        clock.advance(Duration::from_secs(minutes * 60));
                        format!("-- {minutes} minutes later")
                    }
                    Step::RefreshFull => {
                        for (name, _) in CORPUS {
                            engine.sql(&format!("ALTER MATERIALIZED TABLE {name} REFRESH FULL")).await.unwrap();
                        }
                        "-- refreshed in full".to_string()
                    }
                };
                if !statement.starts_with("--") {
                    engine.sql(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
                }
                check(&engine, CORPUS, i, &statement).await;
            }
            engine.close().await;
        });
    }
}
