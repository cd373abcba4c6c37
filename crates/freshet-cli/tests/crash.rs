//! The kill -9 harness: the `freshet` binary runs scripts of transactions, refreshes,
//! compactions and vacuums on one data directory, beside a continuous materialized table and a
//! streaming job, and is killed with SIGKILL at a random moment; after each kill a new process
//! checks that
//! - the base table holds exactly a prefix of the committed transactions (whole ones),
//! - every materialized table equals its query over its inputs once refreshed (its state
//!   restored from a checkpoint, rebuilt, or recomputed),
//! - the streaming jobs' sinks (a Freshet table, and files written by the filesystem sink)
//!   hold each source event at most once, and only events of the source; a job aggregating
//!   the events into a keyed table (its state checkpointed and restored across the kills)
//!   counts none twice.
//!
//! `CRASH_TRIALS` trials (default 6, for CI); `CRASH_SEED` picks the random moments. The
//! documented long run: `CRASH_TRIALS=1000 cargo nextest run -p freshet-cli --test main crash`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const TRANSACTION_ROWS: i64 = 3;
/// Transactions per script (the process is usually killed before the end).
const TRANSACTIONS: i64 = 120;

/// A tiny deterministic generator (xorshift), so that a failing trial can be replayed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn freshet(data: &Path, sql: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_freshet"))
        .arg("--data-dir")
        .arg(data)
        .args(["--format", "csv", "-c", sql])
        .output()
        .expect("freshet runs");
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The data lines of a CSV result (its header dropped).
fn rows(csv: &str) -> Vec<String> {
    csv.lines().skip(1).map(str::to_string).collect()
}

const AGGREGATE: &str = "SELECT g, count(*) AS n, sum(v) AS total FROM t GROUP BY g";
const JOINED: &str = "SELECT t.g, d.label, count(*) AS n FROM t JOIN d ON t.g = d.g GROUP BY t.g, d.label";

fn setup(data: &Path, events: &Path, out: &Path) {
    freshet(
        data,
        &format!(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, g BIGINT, v BIGINT);
             CREATE TABLE d (g BIGINT PRIMARY KEY, label TEXT);
             INSERT INTO d SELECT value, 'd' || CAST(value AS TEXT) FROM generate_series(0, 6);
             CREATE MATERIALIZED TABLE agg FRESHNESS = INTERVAL '1' SECOND AS {AGGREGATE};
             CREATE MATERIALIZED TABLE joined FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL AS {JOINED};
             CREATE TABLE events (id BIGINT, payload VARCHAR) WITH ('connector' = 'filesystem', 'path' = '{}',
               'format' = 'json', 'source.monitor-interval' = '20 ms');
             CREATE TABLE received (id BIGINT, payload VARCHAR);
             INSERT INTO received SELECT id, payload FROM events;
             CREATE TABLE written (id BIGINT, payload VARCHAR) WITH ('connector' = 'filesystem', 'path' = '{}',
               'format' = 'json');
             INSERT INTO written SELECT id, payload FROM events;
             CREATE TABLE tally (k BIGINT PRIMARY KEY, n BIGINT, ids BIGINT);
             INSERT INTO tally SELECT id % 5, count(*), count(DISTINCT id) FROM events GROUP BY id % 5",
            events.display(),
            out.display()
        ),
    );
}

/// A script of transactions inserting ids from `first` on, `TRANSACTION_ROWS` at a time,
/// with refreshes, compactions and vacuums among them.
fn script(first: i64, random: &mut Random) -> String {
    let mut sql = String::new();
    for n in 0..TRANSACTIONS {
        let start = first + n * TRANSACTION_ROWS;
        let values: Vec<String> = (start..start + TRANSACTION_ROWS)
            .map(|id| format!("({id}, {}, {})", id % 7, id % 100))
            .collect();
        sql.push_str(&format!("INSERT INTO t VALUES {};\n", values.join(", ")));
        match random.below(12) {
            0 => sql.push_str("ALTER MATERIALIZED TABLE joined REFRESH;\n"),
            1 => sql.push_str("ALTER TABLE t COMPACT;\n"),
            2 => sql.push_str("VACUUM t RETAIN 3 VERSIONS;\n"),
            3 => sql.push_str("ALTER MATERIALIZED TABLE agg REFRESH;\n"),
            _ => {}
        }
    }
    sql
}

/// Writes a file of `count` events from id `first` on into the source directory, as writers
/// of such directories do: written aside, then renamed into place.
fn write_events(events: &Path, file: usize, first: i64, count: i64) {
    let lines: Vec<String> = (first..first + count)
        .map(|id| format!("{{\"id\": {id}, \"payload\": \"e{id}\"}}"))
        .collect();
    let hidden = events.join(format!(".part-{file}.json"));
    std::fs::write(&hidden, lines.join("\n") + "\n").unwrap();
    std::fs::rename(&hidden, events.join(format!("part-{file}.json"))).unwrap();
}

/// The ids of the events in the files the filesystem sink placed in `out` (hidden files, still
/// staged, left out as every reader of the directory leaves them out).
fn placed_events(out: &Path) -> Vec<i64> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            ids.push(value["id"].as_i64().unwrap());
        }
    }
    ids
}

/// Checks every invariant; returns the number of rows of `t`.
fn check(data: &Path, out: &Path, trial: usize, events_written: i64) -> i64 {
    let found = rows(&freshet(
        data,
        "SELECT count(*), coalesce(min(id), 1), coalesce(max(id), 0) FROM t",
    ));
    let numbers: Vec<i64> = found[0].split(',').map(|x| x.parse().unwrap()).collect();
    let (count, min, max) = (numbers[0], numbers[1], numbers[2]);
    assert!(
        count == 0 || (min == 1 && max == count),
        "trial {trial}: t holds ids {min}..={max} ({count} rows), not a prefix of the transactions"
    );
    assert_eq!(
        count % TRANSACTION_ROWS,
        0,
        "trial {trial}: t holds part of a transaction ({count} rows)"
    );
    // Each materialized table equals its query once refreshed.
    for (name, query) in [("agg", AGGREGATE), ("joined", JOINED)] {
        let differing = rows(&freshet(
            data,
            &format!(
                "ALTER MATERIALIZED TABLE {name} REFRESH;
                 SELECT count(*) FROM ((SELECT * FROM {name} EXCEPT ALL {query}) UNION ALL ({query} EXCEPT ALL SELECT * FROM {name}))"
            ),
        ));
        assert_eq!(
            differing.last().map(String::as_str),
            Some("0"),
            "trial {trial}: {name} differs from its query"
        );
    }
    // The job's sink: no event twice, none that was not written.
    let sink = rows(&freshet(
        data,
        "SELECT count(*), count(DISTINCT id), coalesce(max(id), 0) FROM received",
    ));
    let numbers: Vec<i64> = sink[0].split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(numbers[0], numbers[1], "trial {trial}: the sink holds an event twice");
    assert!(
        numbers[2] <= events_written,
        "trial {trial}: the sink holds events never written"
    );
    // The stateful job (its state checkpointed, restored and replayed across the kills):
    // no event counted twice (its ids are distinct), none that was not written.
    let tally = rows(&freshet(
        data,
        "SELECT count(*), coalesce(sum(n), 0) FROM tally WHERE n <> ids UNION ALL SELECT 0, coalesce(sum(n), 0) FROM tally",
    ));
    let numbers: Vec<Vec<i64>> = tally
        .iter()
        .map(|line| line.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    let twice = numbers.iter().find(|n| n[0] != 0);
    assert!(
        twice.is_none(),
        "trial {trial}: the aggregate counted an event twice: {tally:?}"
    );
    let counted = numbers.iter().map(|n| n[1]).max().unwrap_or(0);
    assert!(
        counted <= events_written,
        "trial {trial}: the aggregate counted {counted} events of {events_written}"
    );
    let mut placed = placed_events(out);
    let total = placed.len();
    placed.sort_unstable();
    placed.dedup();
    assert_eq!(placed.len(), total, "trial {trial}: the files hold an event twice");
    assert!(
        placed.last().is_none_or(|&id| id <= events_written),
        "trial {trial}: the files hold events never written"
    );
    count
}

#[test]
fn killed_at_random_moments_the_data_stays_whole_and_consistent() {
    let trials: usize = std::env::var("CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_CAFE);
    let mut random = Random(seed.max(1));
    let dir = tempfile::tempdir().unwrap();
    let (data, events, out) = (
        dir.path().join("data"),
        dir.path().join("events"),
        dir.path().join("out"),
    );
    std::fs::create_dir_all(&events).unwrap();
    setup(&data, &events, &out);
    let mut rows_of_t = 0;
    let mut events_written = 0;
    for trial in 0..trials {
        // New events for the job, then a script of transactions, killed at a random moment.
        let count = 1 + random.below(50) as i64;
        write_events(&events, trial, events_written + 1, count);
        events_written += count;
        let script_path = dir.path().join("script.sql");
        std::fs::write(&script_path, script(rows_of_t + 1, &mut random)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_freshet"))
            .arg("--data-dir")
            .arg(&data)
            .arg("-f")
            .arg(&script_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The moment of the kill is the point of the test, not a wait for something.
        std::thread::sleep(Duration::from_millis(random.below(1_500)));
        // SIGKILL: no destructor, no flush, no close.
        let _ = child.kill();
        child.wait().unwrap();
        rows_of_t = check(&data, &out, trial, events_written);
    }
    // The jobs did run between the kills (else the checks of their sinks prove nothing).
    let received = rows(&freshet(&data, "SELECT count(*) FROM received"));
    let counted = rows(&freshet(&data, "SELECT coalesce(sum(n), 0) FROM tally"));
    let placed = placed_events(&out).len();
    assert!(
        received[0] != "0" && counted[0] != "0" && placed > 0,
        "the jobs wrote nothing: {received:?} rows received, {counted:?} counted, {placed} events in files"
    );
    eprintln!(
        "{trials} trials (seed {seed}): {rows_of_t} rows committed, {events_written} events written, \
         {} received by the table sink, {} counted by the aggregate, {placed} placed in files",
        received[0], counted[0]
    );
}
