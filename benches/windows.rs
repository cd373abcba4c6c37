//! Window aggregation and joins over the `nexmark` source, as continuous jobs into a blackhole
//! sink: throughput, and the operator state over a long run, which stays flat because closed
//! windows and rows that can no longer match leave it.
//!
//! EVENTS Nexmark events (default 2,000,000) at RATE events per second of event time (default
//! 10,000, so 200 s of event time: twenty 10-second windows), generated as fast as they are
//! read. Each query RUNS times (default 3, median reported) on a fresh engine:
//! - `tumble`: bids per auction in 10-second tumbling windows;
//! - `hop`: bids per auction in 10-second windows every 2 seconds (five windows per bid);
//! - `window join`: the tumbling counts of bids per auction joined with the windows' largest
//!   count (Nexmark q5's shape, with tumbling windows);
//! - `interval join`: each bid joined with its auction when placed in the auction's first 10
//!   seconds.
//!
//! Each line: events per second of wall time and per CPU-second, the CPU time, and the
//! operator state's peak in entries (groups, rows kept) and bytes. (Memory freed by closed
//! windows is reused, not returned: the bytes are the high-water mark.)
//!
//! Run: `cargo bench -p freshet --bench windows`. Prints what it measured, the machine and the
//! commit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support.rs"]
mod support;

use std::time::Instant;

use freshet::Engine;
use support::{commit, cpu_time, env_usize, machine, median};

fn sources(events: usize, rate: usize) -> Vec<String> {
    let options = [
        ("events.num", events.to_string()),
        ("first-event.rate", rate.to_string()),
        ("next-event.rate", rate.to_string()),
        ("event.base-time", "2015-07-15 00:00:00".to_string()),
    ];
    let mut statements = vec![freshet::nexmark::generator_ddl("datagen", &options)];
    statements.extend(freshet::nexmark::views_ddl("datagen"));
    statements
}

const QUERIES: [(&str, &str, &str); 4] = [
    (
        "tumble",
        "auction BIGINT, window_end TIMESTAMP(3), bids BIGINT",
        "SELECT auction, window_end, count(*) FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND)) \
         GROUP BY auction, window_start, window_end",
    ),
    (
        "hop",
        "auction BIGINT, window_end TIMESTAMP(3), bids BIGINT",
        "SELECT auction, window_end, count(*) FROM TABLE(HOP(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND, \
         INTERVAL '10' SECOND)) GROUP BY auction, window_start, window_end",
    ),
    (
        "window join",
        "auction BIGINT, bids BIGINT",
        "SELECT c.auction, c.n FROM \
           (SELECT auction, window_start, window_end, count(*) AS n FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(`dateTime`), \
            INTERVAL '10' SECOND)) GROUP BY auction, window_start, window_end) c \
         JOIN \
           (SELECT window_start, window_end, max(n) AS top FROM (SELECT auction, window_start, window_end, count(*) AS n \
            FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND)) GROUP BY auction, window_start, window_end) \
            GROUP BY window_start, window_end) m \
         ON c.window_start = m.window_start AND c.window_end = m.window_end AND c.n >= m.top",
    ),
    (
        "interval join",
        "auction BIGINT, price BIGINT",
        "SELECT B.auction, B.price FROM bid B JOIN auction A ON B.auction = A.id \
         AND B.`dateTime` BETWEEN A.`dateTime` AND A.`dateTime` + INTERVAL '10' SECOND",
    ),
];

fn main() {
    support::allocator::configure();
    let events = env_usize("EVENTS", 2_000_000);
    let rate = env_usize("RATE", 10_000);
    let runs = env_usize("RUNS", 3).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("machine: {}; commit: {}", machine(), commit());
    println!(
        "{events} Nexmark events at {rate} events/s of event time ({} s); median of {runs} runs",
        events / rate.max(1)
    );
    println!("| query | events/s | events/s per CPU-second | CPU time | peak state entries | peak state bytes |");
    println!("|---|---|---|---|---|---|");
    runtime.block_on(async {
        let root = tempfile::tempdir().unwrap();
        for (name, columns, query) in QUERIES {
            let mut walls = Vec::new();
            let mut cpus = Vec::new();
            let mut states = Vec::new();
            for _ in 0..runs {
                let dir = root.path().join("run");
                let _ = std::fs::remove_dir_all(&dir);
                let engine = Engine::builder()
                    .location(dir.display().to_string())
                    .open()
                    .await
                    .unwrap();
                for statement in sources(events, rate) {
                    engine.sql(&statement).await.unwrap();
                }
                engine
                    .sql(&format!(
                        "CREATE TABLE sink ({columns}) WITH ('connector' = 'blackhole')"
                    ))
                    .await
                    .unwrap();
                engine.sql("SET 'table.dml-sync' = 'true'").await.unwrap();
                let cpu = cpu_time();
                let start = Instant::now();
                engine
                    .sql(&format!("INSERT INTO sink {query}"))
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                walls.push(start.elapsed());
                cpus.push(cpu_time().saturating_sub(cpu));
                let job = engine.jobs().pop().unwrap();
                states.push((job.peak_state_rows, job.peak_state_bytes));
                engine.close().await;
            }
            let (wall, cpu) = (median(walls), median(cpus));
            let (rows, bytes) = states[states.len() / 2];
            println!(
                "| {name} | {:.0} | {:.0} | {:.2} s | {} | {} |",
                events as f64 / wall.as_secs_f64(),
                events as f64 / cpu.as_secs_f64().max(1e-9),
                cpu.as_secs_f64(),
                rows,
                human(bytes)
            );
        }
    });
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}
