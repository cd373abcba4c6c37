//! The oracle of window table functions: random events (key, event time, value) inserted,
//! moved in time, revalued and deleted; after every step each windowed materialized table,
//! refreshed incrementally, must equal DataFusion's batch evaluation of its query.

use freshet::Engine;
use proptest::prelude::*;

use crate::incremental::{check, create_corpus, multiset};

const CORPUS: &[(&str, &str)] = &[
    (
        "tumbling",
        "SELECT k, window_start, window_end, count(*) AS n, sum(v) AS total, max(v) AS top \
         FROM TABLE(TUMBLE(TABLE e, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY k, window_start, window_end",
    ),
    (
        "hopping",
        "SELECT window_start, window_end, window_time, count(*) AS n, min(v) AS low \
         FROM TABLE(HOP(DATA => TABLE e, TIMECOL => DESCRIPTOR(ts), SLIDE => INTERVAL '5' SECOND, \
                        SIZE => INTERVAL '15' SECOND)) \
         GROUP BY window_start, window_end, window_time",
    ),
    (
        "cumulating",
        "SELECT k, window_start, window_end, sum(v) AS total \
         FROM TABLE(CUMULATE(TABLE e, DESCRIPTOR(ts), INTERVAL '4' SECOND, INTERVAL '12' SECOND)) \
         GROUP BY k, window_start, window_end",
    ),
    (
        "offset",
        "SELECT window_start, count(*) AS n \
         FROM TABLE(TUMBLE(TABLE e, DESCRIPTOR(ts), INTERVAL '10' SECOND, INTERVAL '3' SECOND)) \
         GROUP BY window_start",
    ),
    (
        "group_window",
        "SELECT k, TUMBLE_START(ts, INTERVAL '20' SECOND) AS s, TUMBLE_END(ts, INTERVAL '20' SECOND) AS e, \
                TUMBLE_ROWTIME(ts, INTERVAL '20' SECOND) AS r, count(*) AS n \
         FROM e GROUP BY k, TUMBLE(ts, INTERVAL '20' SECOND)",
    ),
    (
        "window_top",
        "SELECT window_start, k, v FROM ( \
           SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY v DESC, id) AS rn \
           FROM TABLE(TUMBLE(TABLE e, DESCRIPTOR(ts), INTERVAL '10' SECOND))) \
         WHERE rn <= 2",
    ),
    (
        "window_join",
        "SELECT a.k, a.window_start, a.n, b.total FROM \
           (SELECT k, window_start, window_end, count(*) AS n \
              FROM TABLE(TUMBLE(TABLE e, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY k, window_start, window_end) a \
         JOIN \
           (SELECT k, window_start, window_end, sum(v) AS total \
              FROM TABLE(TUMBLE(TABLE e, DESCRIPTOR(ts), INTERVAL '10' SECOND)) WHERE v > 0 \
              GROUP BY k, window_start, window_end) b \
         ON a.k = b.k AND a.window_start = b.window_start AND a.window_end = b.window_end",
    ),
    (
        "window_rollup",
        "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS total \
         FROM TABLE(TUMBLE(TABLE e, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
         GROUP BY window_start, window_end, ROLLUP (k)",
    ),
    (
        "sessions",
        "SELECT k, window_start, window_end, count(*) AS n, sum(v) AS total \
         FROM TABLE(SESSION(TABLE e PARTITION BY k, DESCRIPTOR(ts), INTERVAL '4' SECOND)) \
         GROUP BY k, window_start, window_end",
    ),
    (
        "global_sessions",
        "SELECT window_start, window_time, count(*) AS n \
         FROM TABLE(SESSION(TABLE e, DESCRIPTOR(ts), INTERVAL '3' SECOND)) GROUP BY window_start, window_time",
    ),
    (
        "over_range",
        "SELECT id, k, sum(v) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '10' SECOND PRECEDING \
           AND CURRENT ROW) AS recent, count(*) OVER (PARTITION BY k ORDER BY ts, id ROWS BETWEEN 2 PRECEDING \
           AND CURRENT ROW) AS last3 FROM e",
    ),
];

#[derive(Debug, Clone)]
enum Step {
    /// Rows (key, seconds, value).
    Insert(Vec<(i32, i64, i64)>),
    Shift {
        modulus: i32,
        remainder: i32,
        seconds: i64,
    },
    Revalue {
        modulus: i32,
        remainder: i32,
        value: i64,
    },
    Delete {
        modulus: i32,
        remainder: i32,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        // Times around a few windows, often on a window's bound.
        4 => proptest::collection::vec((0..3i32, prop_oneof![0..40i64, (0..8i64).prop_map(|w| w * 5)], -5..20i64), 1..6)
            .prop_map(Step::Insert),
        1 => (2..4i32, 0..3i32, -12..12i64)
            .prop_map(|(modulus, remainder, seconds)| Step::Shift { modulus, remainder, seconds }),
        1 => (2..4i32, 0..3i32, -5..20i64)
            .prop_map(|(modulus, remainder, value)| Step::Revalue { modulus, remainder, value }),
        1 => (2..5i32, 0..3i32).prop_map(|(modulus, remainder)| Step::Delete { modulus, remainder }),
    ]
}

proptest! {
    #![proptest_config(crate::incremental::oracle_config(12))]

    #[test]
    fn window_table_functions_equal_batch_evaluation(steps in proptest::collection::vec(step(), 1..12)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let engine = Engine::builder()
                .location("memory://")
                .max_file_rows(8)
                .target_partitions(2)
                .open()
                .await
                .unwrap();
            engine.sql("CREATE TABLE e (id INT PRIMARY KEY, k INT, ts TIMESTAMP(3), v BIGINT)").await.unwrap();
            create_corpus(&engine, CORPUS).await;
            let mut next_id = 0;
            for (i, step) in steps.iter().enumerate() {
                let statement = match step {
                    Step::Insert(rows) => {
                        let rows: Vec<String> = rows
                            .iter()
                            .map(|(k, seconds, v)| {
                                next_id += 1;
                                format!("({next_id}, {k}, TIMESTAMP '2024-01-01 00:00:00' + INTERVAL '{seconds}' SECOND, {v})")
                            })
                            .collect();
                        format!("INSERT INTO e VALUES {}", rows.join(", "))
                    }
                    Step::Shift { modulus, remainder, seconds } => format!(
                        "UPDATE e SET ts = ts + INTERVAL '{seconds}' SECOND WHERE id % {modulus} = {remainder}"
                    ),
                    Step::Revalue { modulus, remainder, value } => {
                        format!("UPDATE e SET v = {value} WHERE id % {modulus} = {remainder}")
                    }
                    Step::Delete { modulus, remainder } => format!("DELETE FROM e WHERE id % {modulus} = {remainder}"),
                };
                engine.sql(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
                check(&engine, CORPUS, i, &statement).await;
            }
            engine.close().await;
        });
    }
}

/// An engine over `dir/data`, with two partitions.
pub(crate) async fn engine_in(dir: &std::path::Path) -> Engine {
    Engine::builder()
        .location(dir.join("data").display().to_string())
        .target_partitions(2)
        .open()
        .await
        .unwrap()
}

/// An engine over a new directory (see [`engine_in`]) with the JSON-lines source `ev` (of
/// `columns`) reading the directory's `in`, followed every 10 ms when `follow`; the directory
/// and `in` with it.
async fn stream_of(columns: &str, follow: bool) -> (tempfile::TempDir, std::path::PathBuf, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let engine = engine_in(dir.path()).await;
    let monitor = if follow {
        ", 'source.monitor-interval' = '10 ms'"
    } else {
        ""
    };
    engine
        .sql(&format!(
            "CREATE TABLE ev ({columns}) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json'{monitor})",
            input.display()
        ))
        .await
        .unwrap();
    (dir, input, engine)
}

/// `ms` after 2024-01-01 00:00:00 as JSON's timestamp text (within the hour).
pub(crate) fn at(ms: i64) -> String {
    format!(
        "2024-01-01 00:{:02}:{:02}.{:03}",
        ms / 60_000,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The operator state entries EXPLAIN shows for a materialized table (0 when none).
async fn state_entries(engine: &Engine, name: &str) -> u64 {
    let batches = engine.sql(&format!("EXPLAIN MATERIALIZED TABLE {name}")).await.unwrap();
    let text = freshet::datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    text.split("in memory: ")
        .nth(1)
        .and_then(|after| after.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Events arrive out of order in files, second by second; the windows the watermark closes are
/// final and forgotten: the state holds the open windows only, while the table keeps every
/// window and equals the query evaluated in batch, late rows dropped alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_windows_leave_the_state_and_the_result_equals_batch() {
    let (_dir, input, engine) = stream_of(
        "k BIGINT, ts TIMESTAMP(3), v BIGINT, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND",
        false,
    )
    .await;
    let query = "SELECT k, window_start, window_end, count(*) AS n, sum(v) AS total \
                 FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' SECOND)) GROUP BY k, window_start, window_end";
    engine
        .sql(&format!(
            "CREATE MATERIALIZED TABLE per_second FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL AS {query}"
        ))
        .await
        .unwrap();
    let mut most = 0;
    for second in 0..30i64 {
        // Each file: 40 events of its second and 10 of earlier ones (up to 4 s back: some
        // within the watermark's 2 s delay, some late).
        let lines: String = (0..50i64)
            .map(|i| {
                let ms = if i < 40 {
                    second * 1000 + i * 23
                } else {
                    (second - (i % 5)) * 1000 + i * 7
                };
                format!("{{\"k\": {}, \"ts\": \"{}\", \"v\": {i}}}\n", i % 10, at(ms.max(0)))
            })
            .collect();
        std::fs::write(input.join(format!("part-{second:03}.json")), lines).unwrap();
        engine.sql("ALTER MATERIALIZED TABLE per_second REFRESH").await.unwrap();
        let maintained = crate::incremental::multiset(&engine.sql("SELECT * FROM per_second").await.unwrap());
        let expected = crate::incremental::multiset(&engine.sql(query).await.unwrap());
        assert_eq!(maintained, expected, "after second {second}");
        if second > 1 {
            most = most.max(state_entries(&engine, "per_second").await);
        }
    }
    let windows = crate::incremental::multiset(&engine.sql("SELECT count(*) FROM per_second").await.unwrap());
    // 30 windows of 10 keys in the table; the state holds the few open windows (a 2 s delay
    // keeps about three of them open).
    assert!(format!("{windows:?}").contains("300"), "{windows:?}");
    let explain = engine.sql("EXPLAIN MATERIALIZED TABLE per_second").await.unwrap();
    let explain = freshet::datafusion::arrow::util::pretty::pretty_format_batches(&explain)
        .unwrap()
        .to_string();
    assert!(most > 0 && most <= 40, "state entries {most}: {explain}");
    // The windows closed: without a watermark, every group would stay.
    assert!(explain.contains("closing windows by window_end"), "{explain}");
    let late = engine
        .sql("SELECT late_rows FROM freshet.sources WHERE name = 'ev'")
        .await
        .unwrap();
    let late = freshet::datafusion::arrow::util::pretty::pretty_format_batches(&late)
        .unwrap()
        .to_string();
    assert!(!late.contains("| 0 "), "some rows are late: {late}");
    engine.close().await;
}

/// A job over a followed directory writes each window once, when the watermark has passed its
/// end, into an append-only table: what it has written equals the query's closed windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_writes_each_window_once_when_it_closes() {
    let (_dir, input, engine) = stream_of(
        "k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND",
        true,
    )
    .await;
    engine
        .sql("CREATE TABLE out (k BIGINT, window_end TIMESTAMP(3), n BIGINT)")
        .await
        .unwrap();
    engine
        .sql(
            "INSERT INTO out SELECT k, window_end, count(*) FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '2' SECOND)) \
             GROUP BY k, window_start, window_end",
        )
        .await
        .unwrap();
    let id = engine.jobs()[0].id.clone();
    let job = engine.job(&id).unwrap();
    for second in 0..10i64 {
        let lines: String = (0..6i64)
            .map(|i| {
                format!(
                    "{{\"k\": {}, \"ts\": \"2024-01-01 00:00:{second:02}.{:03}\"}}\n",
                    i % 2,
                    i * 150
                )
            })
            .collect();
        let hidden = input.join(format!(".part-{second}.json"));
        std::fs::write(&hidden, lines).unwrap();
        std::fs::rename(&hidden, input.join(format!("part-{second}.json"))).unwrap();
        // The watermark is at second + 0.75 - 1: windows ending at or before it are closed.
        let closed = (second - 1).max(0) / 2;
        job.subscribe()
            .wait_for(|info| info.rows_out >= (closed * 2) as u64)
            .await
            .unwrap();
    }
    // The last file: the watermark reaches 8.75 s; the windows ending at 2, 4, 6 and 8 s are
    // written, for both keys, each once.
    job.subscribe().wait_for(|info| info.rows_out >= 8).await.unwrap();
    engine.sql(&format!("STOP JOB '{id}'")).await.unwrap();
    let written = crate::incremental::multiset(&engine.sql("SELECT * FROM out").await.unwrap());
    let expected = crate::incremental::multiset(
        &engine
            .sql(
                "SELECT k, window_end, count(*) FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '2' SECOND)) \
                 WHERE window_end <= TIMESTAMP '2024-01-01 00:00:08.750' GROUP BY k, window_start, window_end",
            )
            .await
            .unwrap(),
    );
    assert_eq!(written, expected);
    assert_eq!(written.len(), 8);
    engine.close().await;
}

/// Flink's cascading window aggregation: a job's windows over the rows of a window aggregate
/// (by its `window_time`) close with the source's watermark, so an append-only sink takes them,
/// each once, equal to the same query in batch over the windows closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_windows_close_in_a_job() {
    let (dir, input, engine) = stream_of(
        "k BIGINT, ts TIMESTAMP(3), v BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND",
        true,
    )
    .await;
    engine
        .sql(
            "CREATE VIEW per_key AS SELECT k, window_start AS s, window_end AS e, window_time AS rowtime, \
             sum(v) AS partial FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' SECOND)) \
             GROUP BY k, window_start, window_end, window_time",
        )
        .await
        .unwrap();
    engine
        .sql(&format!(
            "CREATE TABLE out (window_end TIMESTAMP(3), total BIGINT, keys BIGINT) \
             WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json')",
            dir.path().join("out").display()
        ))
        .await
        .unwrap();
    let query = "SELECT window_end, sum(partial) AS total, count(*) AS keys \
                 FROM TABLE(TUMBLE(TABLE per_key, DESCRIPTOR(rowtime), INTERVAL '4' SECOND)) \
                 GROUP BY window_start, window_end";
    engine.sql(&format!("INSERT INTO out {query}")).await.unwrap();
    let id = engine.jobs()[0].id.clone();
    let job = engine.job(&id).unwrap();
    for second in 0..12i64 {
        let lines: String = (0..6i64)
            .map(|i| {
                format!(
                    "{{\"k\": {}, \"ts\": \"2024-01-01 00:00:{second:02}.{:03}\", \"v\": {}}}\n",
                    i % 3,
                    i * 150,
                    second * 10 + i
                )
            })
            .collect();
        let hidden = input.join(format!(".part-{second}.json"));
        std::fs::write(&hidden, lines).unwrap();
        std::fs::rename(&hidden, input.join(format!("part-{second}.json"))).unwrap();
        // The watermark is at second + 0.75 - 1: outer windows ending at or before it are closed.
        let closed = (second - 1).max(0) / 4;
        job.subscribe()
            .wait_for(|info| info.rows_out >= closed as u64)
            .await
            .unwrap();
    }
    // The watermark reaches 10.75 s: the windows ending at 4 and 8 s are written, each once.
    job.subscribe().wait_for(|info| info.rows_out >= 2).await.unwrap();
    engine.sql(&format!("STOP JOB '{id}'")).await.unwrap();
    let written = multiset(&engine.sql("SELECT * FROM out").await.unwrap());
    let expected = multiset(
        &engine
            .sql(&format!(
                "SELECT * FROM ({query}) WHERE window_end <= TIMESTAMP '2024-01-01 00:00:10.750'"
            ))
            .await
            .unwrap(),
    );
    assert_eq!(written, expected);
    assert_eq!(written.len(), 2);
    engine.close().await;
}

/// A windowed job stopped by the engine closing twice comes back from its checkpoint (the
/// windows it had open, the rows waiting for the watermark) and still writes each window once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_job_resumes_from_its_checkpoint_and_writes_each_window_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    // On a manual clock that passes a second per file, with a checkpoint due every second:
    // every file's epoch is checkpointed, so that the state restored holds open windows.
    let clock = freshet::ManualClock::new(1_795_132_800_000);
    let open = |dir: std::path::PathBuf, clock: freshet::ManualClock| async move {
        Engine::builder()
            .location(dir.join("data").display().to_string())
            .clock(std::sync::Arc::new(clock))
            .target_partitions(2)
            .open()
            .await
            .unwrap()
    };
    let mut engine = open(dir.path().to_path_buf(), clock.clone()).await;
    engine
        .sql(&format!(
            "CREATE TABLE ev (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
             WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json', 'source.monitor-interval' = '10 ms')",
            input.display()
        ))
        .await
        .unwrap();
    engine
        .sql("SET 'execution.checkpointing.interval' = '1 s'")
        .await
        .unwrap();
    engine
        .sql("CREATE TABLE out (k BIGINT, window_end TIMESTAMP(3), n BIGINT, top BIGINT)")
        .await
        .unwrap();
    // Windowed counts joined with each window's greatest key: a window join, whose rows wait
    // in window emitters for the watermark.
    let query = "SELECT c.k, c.window_end, c.n, m.top FROM \
         (SELECT k, window_start, window_end, count(*) AS n FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '2' SECOND)) \
          GROUP BY k, window_start, window_end) c \
         JOIN (SELECT window_start, window_end, max(k) AS top FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '2' SECOND)) \
          GROUP BY window_start, window_end) m \
         ON c.window_start = m.window_start AND c.window_end = m.window_end";
    engine.sql(&format!("INSERT INTO out {query}")).await.unwrap();
    let id = engine.jobs()[0].id.clone();
    let mut restarts = 0;
    for second in 0..10i64 {
        let lines: String = (0..6i64)
            .map(|i| {
                format!(
                    "{{\"k\": {}, \"ts\": \"2024-01-01 00:00:{second:02}.{:03}\"}}\n",
                    (i + second) % 3,
                    i * 150
                )
            })
            .collect();
        clock.advance(std::time::Duration::from_secs(1));
        let hidden = input.join(format!(".part-{second}.json"));
        std::fs::write(&hidden, lines).unwrap();
        std::fs::rename(&hidden, input.join(format!("part-{second}.json"))).unwrap();
        let job = engine.job(&id).expect("the job runs");
        // Wait for the file to be processed (the job's input reaches the table's version).
        let table = engine.table("ev").unwrap();
        let mut versions = table.subscribe();
        versions
            .wait_for(|_| table.snapshot().manifest().files.len() > second as usize)
            .await
            .unwrap();
        let version = table.snapshot().version();
        let info = job
            .subscribe()
            .wait_for(|info| info.inputs.get("ev").is_some_and(|&v| v >= version) || info.status.is_terminal())
            .await
            .unwrap()
            .clone();
        assert_eq!(info.status, freshet::JobStatus::Running, "{info:?}");
        if second == 4 || second == 7 {
            let checkpointed = job.info().checkpoint.expect("a checkpoint").1;
            assert_eq!(
                checkpointed,
                freshet::Clock::now_ms(&clock),
                "this epoch's state is checkpointed"
            );
            engine.close().await;
            // The job keeps the checkpoint interval it was started with.
            engine = open(dir.path().to_path_buf(), clock.clone()).await;
            let job = engine.job(&id).expect("resumed");
            let info = job
                .subscribe()
                .wait_for(|i| i.recovery.is_some() || i.status.is_terminal())
                .await
                .unwrap()
                .clone();
            let recovery = info.recovery.unwrap();
            assert!(recovery.contains("restored from its checkpoint"), "{recovery}");
            restarts += 1;
        }
    }
    assert_eq!(restarts, 2);
    engine.sql(&format!("STOP JOB '{id}'")).await.unwrap();
    let written = crate::incremental::multiset(&engine.sql("SELECT * FROM out").await.unwrap());
    let expected = crate::incremental::multiset(
        &engine
            .sql(&format!(
                "SELECT * FROM ({query}) WHERE window_end <= TIMESTAMP '2024-01-01 00:00:08.750'"
            ))
            .await
            .unwrap(),
    );
    assert_eq!(written, expected);
    assert_eq!(written.len(), 12, "four windows of three keys");
    engine.close().await;
}

/// Two streams joined on a key and an interval of their times: rows the other stream's
/// watermark has left behind by more than the interval leave the join's state, and the table
/// equals the join evaluated in batch; a window join and a left interval join (whose
/// unmatched rows are padded) over the same streams likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_and_window_joins_forget_rows_that_can_no_longer_match() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path()).await;
    for name in ["a", "b"] {
        let input = dir.path().join(name);
        std::fs::create_dir(&input).unwrap();
        engine
            .sql(&format!(
                "CREATE TABLE {name} (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
                 WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json')",
                input.display()
            ))
            .await
            .unwrap();
    }
    let interval = "SELECT a.k, a.ts AS a_ts, b.ts AS b_ts FROM a JOIN b ON a.k = b.k \
                    AND a.ts BETWEEN b.ts - INTERVAL '2' SECOND AND b.ts";
    let left = "SELECT a.k, a.ts AS a_ts, b.ts AS b_ts FROM a LEFT JOIN b ON a.k = b.k \
                AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '300' MILLISECOND";
    let windows = "SELECT x.k, x.window_start, x.n AS a_rows, y.n AS b_rows FROM \
          (SELECT k, window_start, window_end, count(*) AS n FROM TABLE(TUMBLE(TABLE a, DESCRIPTOR(ts), INTERVAL '2' SECOND)) \
           GROUP BY k, window_start, window_end) x \
        JOIN \
          (SELECT k, window_start, window_end, count(*) AS n FROM TABLE(TUMBLE(TABLE b, DESCRIPTOR(ts), INTERVAL '2' SECOND)) \
           GROUP BY k, window_start, window_end) y \
        ON x.k = y.k AND x.window_start = y.window_start AND x.window_end = y.window_end";
    for (name, query) in [
        ("interval_join", interval),
        ("window_join", windows),
        ("left_join", left),
    ] {
        engine
            .sql(&format!(
                "CREATE MATERIALIZED TABLE {name} FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL AS {query}"
            ))
            .await
            .unwrap();
    }
    let mut most = [0, 0, 0];
    for second in 0..30i64 {
        for (name, shift) in [("a", 0), ("b", 400)] {
            let lines: String = (0..8i64)
                .map(|i| {
                    let ms = second * 1000 + i * 110 + shift;
                    format!("{{\"k\": {}, \"ts\": \"{}\"}}\n", i % 3, at(ms))
                })
                .collect();
            std::fs::write(dir.path().join(name).join(format!("part-{second:03}.json")), lines).unwrap();
        }
        for (n, (name, query)) in [
            ("interval_join", interval),
            ("window_join", windows),
            ("left_join", left),
        ]
        .into_iter()
        .enumerate()
        {
            engine
                .sql(&format!("ALTER MATERIALIZED TABLE {name} REFRESH"))
                .await
                .unwrap();
            let maintained = crate::incremental::multiset(&engine.sql(&format!("SELECT * FROM {name}")).await.unwrap());
            let expected = crate::incremental::multiset(&engine.sql(query).await.unwrap());
            assert_eq!(maintained, expected, "{name} after second {second}");
            if second > 1 {
                most[n] = most[n].max(state_entries(&engine, name).await);
            }
        }
    }
    // 480 rows came; the interval join keeps about 3 s of both streams, the window join the
    // open windows' groups and rows.
    assert!(most[0] > 0 && most[0] <= 80, "interval join state {most:?}");
    assert!(most[1] > 0 && most[1] <= 60, "window join state {most:?}");
    // The left join keeps about the same as the inner one (its right rows a little longer).
    assert!(most[2] > 0 && most[2] <= 100, "left interval join state {most:?}");
    let explain = engine.sql("EXPLAIN MATERIALIZED TABLE interval_join").await.unwrap();
    let explain = freshet::datafusion::arrow::util::pretty::pretty_format_batches(&explain)
        .unwrap()
        .to_string();
    assert!(explain.contains("dropping rows by"), "{explain}");
    engine.close().await;

    // Every checkpoint lost: each state is rebuilt from the inputs in epochs of 16 rows, all of
    // `a` before `b`. Rows are forgotten by the watermark only after the last epoch, so the
    // rebuilt joins find every match (had `a`'s rows been forgotten before `b`'s came, the
    // rebuild would have taken the table for drifted and "corrected" it).
    let tables = dir.path().join("data/tables");
    for table in std::fs::read_dir(&tables).unwrap() {
        let state = table.unwrap().path().join("state");
        if state.exists() {
            std::fs::remove_dir_all(state).unwrap();
        }
    }
    let engine = Engine::builder()
        .location(dir.path().join("data").display().to_string())
        .target_partitions(2)
        .setting("materialized-table.state-build.epoch-rows", "16")
        .unwrap()
        .open()
        .await
        .unwrap();
    for (name, shift) in [("a", 0), ("b", 400)] {
        let lines: String = (0..8i64)
            .map(|i| format!("{{\"k\": {}, \"ts\": \"{}\"}}\n", i % 3, at(30_000 + i * 110 + shift)))
            .collect();
        std::fs::write(dir.path().join(name).join("part-030.json"), lines).unwrap();
    }
    for (name, query) in [
        ("interval_join", interval),
        ("window_join", windows),
        ("left_join", left),
    ] {
        // The first of these two refreshes rebuilds the state.
        for _ in 0..2 {
            engine
                .sql(&format!("ALTER MATERIALIZED TABLE {name} REFRESH"))
                .await
                .unwrap();
        }
        let reason = engine
            .sql(&format!(
                "SELECT reason FROM (SELECT reason, version FROM freshet.refreshes WHERE name = '{name}' \
                 ORDER BY version DESC LIMIT 2) ORDER BY version LIMIT 1"
            ))
            .await
            .unwrap();
        let reason = crate::incremental::multiset(&reason).join(" ");
        assert!(reason.contains("rebuilt"), "{name}: {reason}");
        let maintained = crate::incremental::multiset(&engine.sql(&format!("SELECT * FROM {name}")).await.unwrap());
        let expected = crate::incremental::multiset(&engine.sql(query).await.unwrap());
        assert_eq!(maintained, expected, "{name} after its state was rebuilt");
    }
    engine.close().await;
}

/// A batch of events of one file: (key, ms after the start, value).
type EventFile = Vec<(i64, i64, i64)>;

pub(crate) fn event_files() -> impl Strategy<Value = (i64, Vec<EventFile>)> {
    // A watermark delay, then files whose events move forward in time with a random spread
    // around the front: some within the delay, some beyond it (late), some far ahead.
    (
        prop_oneof![Just(0i64), 1..3000i64],
        proptest::collection::vec(
            (
                0..4000i64,
                proptest::collection::vec((0..3i64, -4000..1500i64, -5..20i64), 0..8),
            ),
            1..10,
        ),
    )
        .prop_map(|(delay, steps)| {
            let mut front = 0;
            let files = steps
                .into_iter()
                .map(|(advance, events)| {
                    front += advance;
                    events
                        .into_iter()
                        .map(|(k, offset, v)| (k, (front + offset).max(0), v))
                        .collect()
                })
                .collect();
            (delay, files)
        })
}

proptest! {
    #![proptest_config(crate::incremental::oracle_config(10))]

    /// Out-of-order events arrive file by file; after each, windowed materialized tables over
    /// the stream (whose closed windows leave the state, whose late rows the source drops)
    /// equal their queries evaluated in batch over the same versions.
    #[test]
    fn windows_over_out_of_order_streams_equal_batch_evaluation((delay, files) in event_files()) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let input = dir.path().join("in");
            std::fs::create_dir(&input).unwrap();
            let engine = Engine::builder().location("memory://").target_partitions(2).open().await.unwrap();
            engine
                .sql(&format!(
                    "CREATE TABLE ev (k BIGINT, ts TIMESTAMP(3), v BIGINT, \
                       WATERMARK FOR ts AS ts - INTERVAL '{delay}' MILLISECOND) \
                     WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json')",
                    input.display()
                ))
                .await
                .unwrap();
            let corpus = [
                ("tumbling", "SELECT k, window_start, window_end, count(*) AS n, sum(v) AS total, max(v) AS top \
                  FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' SECOND)) GROUP BY k, window_start, window_end"),
                ("hopping", "SELECT window_start, window_end, count(*) AS n, min(v) AS low \
                  FROM TABLE(HOP(TABLE ev, DESCRIPTOR(ts), INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND)) \
                  GROUP BY window_start, window_end"),
                ("nested", "SELECT window_end, max(n) AS busiest FROM (SELECT k, window_end, count(*) AS n \
                  FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' SECOND)) GROUP BY k, window_end) GROUP BY window_end"),
                // Outer interval joins (a self join): preserved rows go once final, the others
                // once every row they matched is.
                ("left_interval", "SELECT a.k, a.ts AS a_ts, a.v, b.ts AS b_ts FROM ev a LEFT JOIN ev b \
                  ON a.k = b.k AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '400' MILLISECOND AND b.v > a.v"),
                ("full_interval", "SELECT a.ts AS a_ts, b.ts AS b_ts FROM ev a FULL JOIN ev b \
                  ON a.k = b.k AND a.v = b.v + 1 AND b.ts BETWEEN a.ts - INTERVAL '300' MILLISECOND AND a.ts"),
                ("window_top", "SELECT window_start, k, v FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY \
                  window_start, window_end ORDER BY v DESC, k) AS rn FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), \
                  INTERVAL '1' SECOND))) WHERE rn <= 2"),
                ("window_dedup", "SELECT window_end, k, ts FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY \
                  window_start, window_end, k ORDER BY ts) AS rn FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), \
                  INTERVAL '1' SECOND))) WHERE rn = 1"),
                ("cube", "SELECT window_end, k, v % 2 AS odd, count(*) AS n FROM TABLE(TUMBLE(TABLE ev, \
                  DESCRIPTOR(ts), INTERVAL '1' SECOND)) GROUP BY window_start, window_end, CUBE (k, v % 2)"),
                ("sessions", "SELECT k, window_start, window_end, count(*) AS n, sum(v) AS total \
                  FROM TABLE(SESSION(TABLE ev PARTITION BY k, DESCRIPTOR(ts), INTERVAL '700' MILLISECOND)) \
                  GROUP BY k, window_start, window_end"),
                ("over_range", "SELECT k, ts, v, sum(v) OVER (PARTITION BY k ORDER BY ts \
                  RANGE BETWEEN INTERVAL '1' SECOND PRECEDING AND CURRENT ROW) AS recent, \
                  max(v) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '300' MILLISECOND PRECEDING \
                  AND CURRENT ROW) AS top FROM ev"),
                // MIN and MAX over rows only inserted keep the extreme alone: texts, floats and
                // NULLs, in windows and in groups that never close.
                ("extremes", "SELECT k, window_end, min(CAST(v AS VARCHAR)) AS low_text, \
                  max(CASE WHEN v > 3 THEN v END) AS top_big, max(CAST(v AS DOUBLE) / 3) AS top_ratio \
                  FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' SECOND)) GROUP BY k, window_start, window_end"),
                ("extremes_ever", "SELECT k, min(ts) AS first_ts, max(ts) AS last_ts, max(v) AS top, \
                  min(CASE WHEN v < 0 THEN CAST(v AS VARCHAR) END) AS low_negative FROM ev GROUP BY k"),
                // Flink's cascading windows: windows over a window aggregate's window_time.
                ("cascade", "SELECT window_start, window_end, sum(partial) AS total, sum(n) AS n, max(top) AS top \
                  FROM TABLE(TUMBLE(TABLE per_key, DESCRIPTOR(rowtime), INTERVAL '2' SECOND)) \
                  GROUP BY window_start, window_end"),
                ("cascade_hop", "SELECT window_end, count(*) AS windows, sum(n) AS n \
                  FROM TABLE(TUMBLE(TABLE sliding, DESCRIPTOR(rowtime), INTERVAL '1' SECOND)) \
                  GROUP BY window_start, window_end"),
                // Nexmark q5's shape: the busiest keys of each window (a semi join on the window).
                ("busiest", "SELECT c.k, c.window_end, c.n FROM \
                  (SELECT k, window_start, window_end, count(*) AS n FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' SECOND)) \
                   GROUP BY k, window_start, window_end) c \
                  JOIN (SELECT window_start, window_end, max(n) AS top FROM (SELECT k, window_start, window_end, count(*) AS n \
                   FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' SECOND)) GROUP BY k, window_start, window_end) \
                   GROUP BY window_start, window_end) m \
                  ON c.window_start = m.window_start AND c.window_end = m.window_end AND c.n >= m.top"),
            ];
            engine
                .sql("CREATE VIEW per_key AS SELECT k, window_start AS s, window_time AS rowtime, sum(v) AS partial, \
                      count(*) AS n, max(v) AS top FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '500' MILLISECOND)) \
                      GROUP BY k, window_start, window_end, window_time")
                .await
                .unwrap();
            engine
                .sql("CREATE VIEW sliding AS SELECT window_end AS e, window_time AS rowtime, count(*) AS n \
                      FROM TABLE(HOP(TABLE ev, DESCRIPTOR(ts), INTERVAL '250' MILLISECOND, INTERVAL '500' MILLISECOND)) \
                      GROUP BY window_start, window_end, window_time")
                .await
                .unwrap();
            create_corpus(&engine, &corpus).await;
            for cascade in ["cascade", "cascade_hop"] {
                let explained =
                    multiset(&engine.sql(&format!("EXPLAIN MATERIALIZED TABLE {cascade}")).await.unwrap()).join("\n");
                assert_eq!(explained.matches("closing windows by").count(), 2, "{explained}");
            }
            let explained =
                multiset(&engine.sql("EXPLAIN MATERIALIZED TABLE extremes_ever").await.unwrap()).join("\n");
            assert!(explained.contains("max(ev.v) of inserts"), "{explained}");
            for (i, events) in files.iter().enumerate() {
                let lines: String = events
                    .iter()
                    .map(|(k, ms, v)| {
                        format!("{{\"k\": {k}, \"ts\": \"{}\", \"v\": {v}}}\n", at(*ms))
                    })
                    .collect();
                std::fs::write(input.join(format!("part-{i:03}.json")), lines).unwrap();
                check(&engine, &corpus, i, &format!("file {i}")).await;
            }
            engine.close().await;
        });
    }
}

/// OVER aggregations, SESSION windows and a window top-N over a stream, second by second: the
/// tables equal their queries in batch, while the state keeps only the rows open frames,
/// sessions and windows still reach — a few seconds' worth, not the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_and_session_state_stays_bounded_on_a_long_stream() {
    let (_dir, input, engine) = stream_of(
        "k BIGINT, ts TIMESTAMP(3), v BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND",
        false,
    )
    .await;
    let corpus = [
        (
            "over_range",
            "SELECT k, ts, v, sum(v) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '500' MILLISECOND \
             PRECEDING AND CURRENT ROW) AS recent FROM ev",
        ),
        (
            "over_rows",
            "SELECT k, ts, avg(v) OVER (PARTITION BY k ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS a, \
             lag(v, 2) OVER (PARTITION BY k ORDER BY ts) AS before FROM ev",
        ),
        (
            "sessions",
            "SELECT k, window_start, window_end, count(*) AS n FROM TABLE(SESSION(TABLE ev PARTITION BY k, \
             DESCRIPTOR(ts), INTERVAL '300' MILLISECOND)) GROUP BY k, window_start, window_end",
        ),
        (
            "window_top",
            "SELECT * FROM (SELECT k, ts, v, window_end, ROW_NUMBER() OVER (PARTITION BY window_start, window_end \
             ORDER BY v DESC, ts) AS rn FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '500' MILLISECOND))) \
             WHERE rn <= 3",
        ),
    ];
    create_corpus(&engine, &corpus).await;
    let mut most = [0; 4];
    for second in 0..30i64 {
        // Per key, a burst of 10 rows in the first 200 ms of the second (distinct times), and
        // a few rows of the previous seconds (some within the delay, some late).
        let lines: String = (0..44i64)
            .map(|i| {
                let ms = if i < 40 {
                    second * 1000 + (i / 4) * 20 + i % 4
                } else {
                    (second - 1 - i % 2).max(0) * 1000 + 150 + i
                };
                format!("{{\"k\": {}, \"ts\": \"{}\", \"v\": {}}}\n", i % 4, at(ms), i % 7)
            })
            .collect();
        std::fs::write(input.join(format!("part-{second:03}.json")), lines).unwrap();
        check(&engine, &corpus, second as usize, &format!("second {second}")).await;
        if second > 2 {
            for (n, (name, _)) in corpus.iter().enumerate() {
                most[n] = most[n].max(state_entries(&engine, name).await);
            }
        }
    }
    // 1,300 rows came; each keeps about two seconds of them (80 rows) and its open groups.
    assert!(most.iter().all(|&m| m > 0 && m <= 200), "state entries {most:?}");
    engine.close().await;
}

/// A job computing an OVER aggregation over a followed directory writes each row once, when
/// the watermark has passed its time, into an append-only table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_writes_over_rows_once_the_watermark_passes_them() {
    let (_dir, input, engine) = stream_of(
        "k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND",
        true,
    )
    .await;
    engine
        .sql("CREATE TABLE out (k BIGINT, ts TIMESTAMP(3), n BIGINT)")
        .await
        .unwrap();
    let query = "SELECT k, ts, count(*) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '2' SECOND \
                 PRECEDING AND CURRENT ROW) FROM ev";
    engine.sql(&format!("INSERT INTO out {query}")).await.unwrap();
    let id = engine.jobs()[0].id.clone();
    let job = engine.job(&id).unwrap();
    for second in 0..8i64 {
        let lines: String = (0..6i64)
            .map(|i| format!("{{\"k\": {}, \"ts\": \"{}\"}}\n", i % 2, at(second * 1000 + i * 150)))
            .collect();
        let hidden = input.join(format!(".part-{second}.json"));
        std::fs::write(&hidden, lines).unwrap();
        std::fs::rename(&hidden, input.join(format!("part-{second}.json"))).unwrap();
        // The watermark is at second - 0.25 s: the rows of the seconds before are final.
        let mut watch = job.subscribe();
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            watch.wait_for(|info| info.rows_out >= (second * 6 - 2).max(0) as u64),
        )
        .await
        .is_ok();
        assert!(waited, "second {second}: {:?}", engine.job(&id).unwrap().info());
    }
    engine.sql(&format!("STOP JOB '{id}'")).await.unwrap();
    let written = crate::incremental::multiset(&engine.sql("SELECT * FROM out").await.unwrap());
    let expected = crate::incremental::multiset(
        &engine
            .sql(&format!(
                "SELECT * FROM ({query}) WHERE ts < TIMESTAMP '2024-01-01 00:00:06.750'"
            ))
            .await
            .unwrap(),
    );
    assert_eq!(written, expected);
    assert_eq!(written.len(), 7 * 6 - 1);
    engine.close().await;
}

/// A left interval join whose right row has left the matching bound while the left row it
/// matched can still gain matches, and then gains one: the table equals the join in batch at
/// every step (the right row stays until the left one is final).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outer_interval_join_keeps_the_rows_its_open_rows_matched() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path()).await;
    for name in ["a", "b"] {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        engine
            .sql(&format!(
                "CREATE TABLE {name} (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) \
                 WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json')",
                dir.path().join(name).display()
            ))
            .await
            .unwrap();
    }
    let query = "SELECT a.k, a.ts AS a_ts, b.ts AS b_ts FROM a LEFT JOIN b ON a.k = b.k \
                 AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '300' MILLISECOND";
    engine
        .sql(&format!(
            "CREATE MATERIALIZED TABLE joined FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL AS {query}"
        ))
        .await
        .unwrap();
    // (file, [(table, key, ms)]): the left row at 1.000 s matches the right one at 1.100 s; the
    // watermarks reach 1.200 s (the right row can match no future left row, the left row can
    // still match right rows up to 1.300 s); a right row at 1.250 s matches it again.
    let steps: [&[(&str, i64, i64)]; 3] = [
        &[("a", 1, 1000), ("b", 1, 1100)],
        &[("a", 2, 1200), ("b", 2, 1200)],
        &[("b", 1, 1250)],
    ];
    for (i, rows) in steps.iter().enumerate() {
        for (table, key, ms) in rows.iter() {
            std::fs::write(
                dir.path().join(table).join(format!("part-{i}-{key}.json")),
                format!("{{\"k\": {key}, \"ts\": \"{}\"}}\n", at(*ms)),
            )
            .unwrap();
        }
        engine.sql("ALTER MATERIALIZED TABLE joined REFRESH").await.unwrap();
        let maintained = crate::incremental::multiset(&engine.sql("SELECT * FROM joined").await.unwrap());
        let expected = crate::incremental::multiset(&engine.sql(query).await.unwrap());
        assert_eq!(maintained, expected, "after step {i}");
    }
    engine.close().await;
}
