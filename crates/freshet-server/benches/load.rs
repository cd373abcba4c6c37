//! Load on `freshet serve`: concurrent Postgres clients running point queries, inserts and
//! reads of a continuous materialized table while it stays fresh.
//!
//! ```sh
//! CLIENTS=16 SECONDS=60 cargo bench -p freshet-server --bench load
//! ```
//!
//! Prints statements per second, p50/p99 latency per kind, errors, and the materialized table's
//! data lag sampled during the load (its freshness is one second).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use freshet::Engine;
use freshet_server::{Server, ServerOptions};

/// The allocator the `freshet` binary ships with, set up as it is, so that figures are the
/// binary's.
#[path = "../../freshet-cli/src/allocator.rs"]
mod allocator;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[derive(Default)]
struct Latencies {
    point: Vec<Duration>,
    insert: Vec<Duration>,
    read_mt: Vec<Duration>,
    errors: u64,
}

fn main() {
    allocator::configure();
    let clients = env("CLIENTS", 16);
    let seconds = env("SECONDS", 60);
    let rows = env("ROWS", 100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::builder()
            .location(dir.path().to_str().unwrap())
            .open()
            .await
            .unwrap();
        engine
            .sql(&format!(
                "CREATE TABLE accounts (id BIGINT PRIMARY KEY, region VARCHAR, balance BIGINT);
                 INSERT INTO accounts SELECT value, 'r' || CAST(value % 10 AS VARCHAR), value % 1000 FROM range({rows});
                 CREATE TABLE events (account BIGINT, amount BIGINT);
                 CREATE MATERIALIZED TABLE per_region FRESHNESS = INTERVAL '1' SECOND AS
                   SELECT a.region, COUNT(*) AS n, SUM(e.amount) AS total
                   FROM events e JOIN accounts a ON e.account = a.id GROUP BY a.region"
            ))
            .await
            .unwrap();
        let options = ServerOptions {
            pg_listen: Some("127.0.0.1:0".into()),
            http_listen: None,
            ..ServerOptions::default()
        };
        let server = Server::start(engine.clone(), options).await.unwrap();
        let address = server.pg_address().unwrap();
        let config = format!("host={} port={} user=load dbname=freshet", address.ip(), address.port());
        let deadline = Instant::now() + Duration::from_secs(seconds);

        let mut tasks = Vec::new();
        for client_id in 0..clients {
            let config = config.clone();
            tasks.push(tokio::spawn(async move {
                let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                let point = client
                    .prepare("SELECT balance FROM accounts WHERE id = $1")
                    .await
                    .unwrap();
                let insert = client.prepare("INSERT INTO events VALUES ($1, $2)").await.unwrap();
                let read = client.prepare("SELECT region, n, total FROM per_region").await.unwrap();
                let mut latencies = Latencies::default();
                let mut i: i64 = 0;
                while Instant::now() < deadline {
                    i += 1;
                    let id = (i * 7919 + client_id as i64 * 104_729) % rows as i64;
                    let started = Instant::now();
                    let (result, bucket) = match i % 10 {
                        0..=5 => (client.query(&point, &[&id]).await.map(drop), &mut latencies.point),
                        6..=8 => (
                            client.execute(&insert, &[&id, &(i % 100)]).await.map(drop),
                            &mut latencies.insert,
                        ),
                        _ => (client.query(&read, &[]).await.map(drop), &mut latencies.read_mt),
                    };
                    match result {
                        Ok(()) => bucket.push(started.elapsed()),
                        Err(e) => {
                            latencies.errors += 1;
                            eprintln!("error: {e}");
                        }
                    }
                }
                latencies
            }));
        }
        // The materialized table's lag, sampled while the clients run.
        let mut lags = Vec::new();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(info) = engine.materialized_table("per_region").await {
                lags.push(info.data_lag_ms.unwrap_or(0));
            }
        }
        let mut all = Latencies::default();
        for task in tasks {
            let l = task.await.unwrap();
            all.point.extend(l.point);
            all.insert.extend(l.insert);
            all.read_mt.extend(l.read_mt);
            all.errors += l.errors;
        }
        let total = all.point.len() + all.insert.len() + all.read_mt.len();
        println!("## freshet serve under load");
        println!();
        println!(
            "{clients} clients for {seconds} s over {rows} accounts (machine: {} cores); commit {}",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            option_env!("FRESHET_COMMIT").unwrap_or("see git log")
        );
        println!();
        println!("| statement | count | per second | p50 ms | p99 ms |");
        println!("|---|---|---|---|---|");
        for (name, latencies) in [
            ("point query by key", &mut all.point),
            ("insert", &mut all.insert),
            ("read of the continuous MT", &mut all.read_mt),
        ] {
            latencies.sort();
            println!(
                "| {name} | {} | {:.0} | {:.2} | {:.2} |",
                latencies.len(),
                latencies.len() as f64 / seconds as f64,
                percentile(latencies, 0.5),
                percentile(latencies, 0.99)
            );
        }
        println!("| all | {total} | {:.0} | | |", total as f64 / seconds as f64);
        lags.sort();
        println!();
        println!(
            "errors: {}; materialized table data lag while loaded (freshness 1 s): p50 {} ms, max {} ms",
            all.errors,
            lags.get(lags.len() / 2).copied().unwrap_or(0),
            lags.last().copied().unwrap_or(0)
        );
        server.shutdown().await;
    });
}
