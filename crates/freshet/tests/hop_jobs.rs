//! Jobs aggregating HOP windows, which compute them per slide where they can (each row
//! aggregated once into its slide, the slides combined into the windows holding them): their
//! output equals batch evaluation over the windows closed, and late rows reach the windows
//! still open as they would without slices.

use freshet::Engine;
use proptest::prelude::*;

use crate::windows::{at, engine_in, event_files};

/// Jobs aggregating HOP windows, the sink table of each (created from the query's columns),
/// and whether the job computes it per slide.
const HOP_JOBS: &[(&str, &str, bool)] = &[
    (
        "per_key",
        "SELECT k, count(*) AS n, window_start, window_end \
         FROM TABLE(HOP(TABLE ev, DESCRIPTOR(ts), INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND)) \
         GROUP BY k, window_start, window_end",
        true,
    ),
    (
        "every_kind",
        "SELECT window_start, window_end, window_time, count(*) AS n, sum(v) AS total, min(v) AS low, \
                max(v) AS high, count(v) FILTER (WHERE v > 5) AS big, bool_or(v < 0) AS negative \
         FROM TABLE(HOP(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' SECOND, INTERVAL '3' SECOND, INTERVAL '200' MILLISECOND)) \
         GROUP BY window_start, window_end, window_time",
        true,
    ),
    (
        "by_expression",
        "SELECT k % 2 AS odd, window_end, sum(v * 2) AS doubled \
         FROM TABLE(HOP(TABLE ev, DESCRIPTOR(ts), INTERVAL '250' MILLISECOND, INTERVAL '1' SECOND)) \
         WHERE v > 0 GROUP BY k % 2, window_end",
        true,
    ),
    // A filter on a window's bound differs from window to window, and AVG does not combine:
    // both aggregate every window's rows.
    (
        "late_windows",
        "SELECT k, window_start, window_end, count(*) AS n \
         FROM TABLE(HOP(TABLE ev, DESCRIPTOR(ts), INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND)) \
         WHERE window_start >= TIMESTAMP '2024-01-01 00:00:01' GROUP BY k, window_start, window_end",
        false,
    ),
    (
        "average",
        "SELECT k, window_end, avg(v) AS mean \
         FROM TABLE(HOP(TABLE ev, DESCRIPTOR(ts), INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND)) \
         GROUP BY k, window_end",
        false,
    ),
];

/// Starts the jobs of `HOP_JOBS` over the followed directory `input` as table `ev`, each
/// writing into a table of its name.
async fn start_hop_jobs(engine: &Engine, input: &std::path::Path, delay_ms: i64) {
    followed_stream(engine, "ev", input, delay_ms).await;
    for (name, query, sliced) in HOP_JOBS {
        start_job(engine, name, query, *sliced).await;
    }
}

/// Declares `name`, a stream of events (key, time, value) as JSON lines in the followed
/// directory `input`, its watermark `delay_ms` behind its times.
async fn followed_stream(engine: &Engine, name: &str, input: &std::path::Path, delay_ms: i64) {
    engine
        .sql(&format!(
            "CREATE TABLE {name} (k BIGINT, ts TIMESTAMP(3), v BIGINT, \
               WATERMARK FOR ts AS ts - INTERVAL '{delay_ms}' MILLISECOND) \
             WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json', \
                   'source.monitor-interval' = '10 ms')",
            input.display()
        ))
        .await
        .unwrap();
}

/// Starts `query` as a job into a new table `name` of its columns, after checking that its plan
/// computes HOP windows per slide (`sliced`) or not.
async fn start_job(engine: &Engine, name: &str, query: &str, sliced: bool) {
    engine
        .sql(&format!("CREATE TABLE {name} AS SELECT * FROM ({query}) WHERE false"))
        .await
        .unwrap();
    let explained = engine
        .sql(&format!("EXPLAIN INSERT INTO {name} {query}"))
        .await
        .unwrap();
    let plan = freshet::datafusion::arrow::util::pretty::pretty_format_batches(&explained)
        .unwrap()
        .to_string();
    assert_eq!(plan.contains("Hop windows"), sliced, "{name}: {plan}");
    engine.sql(&format!("INSERT INTO {name} {query}")).await.unwrap();
}

/// Writes `events` (key, ms, value) as the next file of `input` and waits until every job has
/// processed it.
async fn feed(engine: &Engine, input: &std::path::Path, file: usize, events: &[(i64, i64, i64)]) {
    let lines: String = events
        .iter()
        .map(|(k, ms, v)| format!("{{\"k\": {k}, \"ts\": \"{}\", \"v\": {v}}}\n", at(*ms)))
        .collect();
    let hidden = input.join(format!(".part-{file:03}.json"));
    std::fs::write(&hidden, lines).unwrap();
    std::fs::rename(&hidden, input.join(format!("part-{file:03}.json"))).unwrap();
    processed(engine, "ev").await;
}

/// Waits until every running job has processed what has arrived in the source `table`: a
/// statement reading the table ingests it (a file may hold only late rows, which add nothing),
/// then each job's input reaches the table's version.
async fn processed(engine: &Engine, table: &str) {
    engine.sql(&format!("SELECT count(*) FROM {table}")).await.unwrap();
    let version = engine.table(table).unwrap().snapshot().version();
    for job in engine.jobs() {
        let info = engine
            .job(&job.id)
            .unwrap()
            .subscribe()
            .wait_for(|info| info.inputs.get(table).is_some_and(|&v| v >= version) || info.status.is_terminal())
            .await
            .unwrap()
            .clone();
        assert_eq!(info.status, freshet::JobStatus::Running, "{info:?}");
    }
}

proptest! {
    #![proptest_config(crate::incremental::oracle_config(6))]

    /// Out-of-order events arrive file by file into jobs aggregating HOP windows, some per
    /// slide, some per window; once an event far ahead has closed every earlier window, each
    /// job has written exactly its query's rows for them, evaluated in batch.
    #[test]
    fn hop_window_jobs_per_slide_equal_batch_evaluation((delay, files) in event_files()) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let input = dir.path().join("in");
            std::fs::create_dir(&input).unwrap();
            let engine = engine_in(dir.path()).await;
            start_hop_jobs(&engine, &input, delay).await;
            let mut front = 0;
            for (i, events) in files.iter().enumerate() {
                let events: Vec<_> = events.iter().filter(|(_, ms, _)| *ms < 3_000_000).copied().collect();
                front = events.iter().map(|e| e.1).chain([front]).max().unwrap();
                feed(&engine, &input, i, &events).await;
            }
            let far = front + 100_000;
            feed(&engine, &input, files.len(), &[(0, far, 1)]).await;
            let closed = at(far - delay);
            for (name, query, _) in HOP_JOBS {
                let written = crate::incremental::multiset(&engine.sql(&format!("SELECT * FROM {name}")).await.unwrap());
                let expected = crate::incremental::multiset(
                    &engine
                        .sql(&format!("SELECT * FROM ({query}) WHERE window_end <= TIMESTAMP '{closed}'"))
                        .await
                        .unwrap(),
                );
                assert_eq!(written, expected, "{name}");
            }
            engine.close().await;
        });
    }
}

/// A row that reaches a HOP window aggregate after some of its windows closed (a row of one
/// stream joining an old row of the other) counts in the windows still open, whether the
/// aggregate is computed per slide or per window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_row_counts_in_the_hop_windows_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path()).await;
    for name in ["a", "b"] {
        let input = dir.path().join(name);
        std::fs::create_dir(&input).unwrap();
        followed_stream(&engine, name, &input, 1_000).await;
    }
    engine
        .sql("CREATE VIEW ev AS SELECT a.k, a.ts, b.v FROM a JOIN b ON a.k = b.k")
        .await
        .unwrap();
    // Windows of 10 s every 2 s; the same counts per slide and (with AVG) per window.
    let hop = "FROM TABLE(HOP(TABLE ev, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND)) \
               GROUP BY window_start, window_end";
    let jobs = [
        ("sliced", format!("SELECT window_end, count(*) AS n {hop}"), true),
        (
            "whole",
            format!("SELECT window_end, count(*) AS n, avg(v) AS mean {hop}"),
            false,
        ),
    ];
    for (name, query, sliced) in &jobs {
        start_job(&engine, name, query, *sliced).await;
    }
    // A job runs until stopped: there is nothing to analyze by running it to its end.
    let analyze = engine
        .sql(&format!("EXPLAIN ANALYZE INSERT INTO sliced {}", jobs[0].1))
        .await
        .unwrap_err();
    assert!(analyze.to_string().contains("SHOW JOBS"), "{analyze}");
    assert_eq!(engine.jobs().len(), 2);
    let mut files = std::collections::HashMap::new();
    let mut write = |table: &'static str, rows: &[(i64, i64)]| {
        let file = files.entry(table).or_insert(0usize);
        *file += 1;
        let input = dir.path().join(table);
        let hidden = input.join(format!(".part-{file}.json"));
        let lines: String = rows
            .iter()
            .map(|(k, ms)| format!("{{\"k\": {k}, \"ts\": \"{}\", \"v\": 1}}\n", at(*ms)))
            .collect();
        std::fs::write(&hidden, lines).unwrap();
        std::fs::rename(&hidden, input.join(format!("part-{file}.json"))).unwrap();
    };
    // `b` at 20 s with key 1; `a` at 1 s (key 1), 5 s (key 2) and 10.5 s (key 3): the
    // watermark (a's, 9.5 s) closes the windows ending at 2, 4, 6 and 8 s, which hold the row
    // at 1 s joined.
    write("b", &[(1, 20_000)]);
    processed(&engine, "b").await;
    write("a", &[(1, 1_000), (2, 5_000), (3, 10_500)]);
    processed(&engine, "a").await;
    // `b` with key 2: the row at 5 s joins now, in the windows ending at 6 to 14 s, of which 6
    // and 8 s have closed.
    write("b", &[(2, 20_000), (3, 20_000)]);
    processed(&engine, "b").await;
    // Both far ahead: every window up to 20 s closes.
    write("a", &[(9, 40_000)]);
    processed(&engine, "a").await;
    write("b", &[(9, 40_000)]);
    processed(&engine, "b").await;
    let counts = |table: &str| {
        let engine = &engine;
        let sql = format!(
            "SELECT CAST(date_part('second', window_end) AS BIGINT), n FROM {table} \
             WHERE window_end <= TIMESTAMP '2024-01-01 00:00:20'"
        );
        async move { crate::incremental::multiset(&engine.sql(&sql).await.unwrap()) }
    };
    let sliced = counts("sliced").await;
    assert_eq!(sliced, counts("whole").await);
    // 1 s is in the windows ending at 2 to 10 s, 5 s in those ending at 10 to 14 s (not 6 and
    // 8: closed before it came), 10.5 s in those ending at 12 to 20 s.
    let mut expected: Vec<String> = [
        (2, 1),
        (4, 1),
        (6, 1),
        (8, 1),
        (10, 2),
        (12, 2),
        (14, 2),
        (16, 1),
        (18, 1),
        (20, 1),
    ]
    .iter()
    .map(|(s, n)| format!("{s} | {n}"))
    .collect();
    expected.sort();
    assert_eq!(sliced, expected);
    engine.close().await;
}
