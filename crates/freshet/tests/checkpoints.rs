//! Checkpoints of materialized tables' operator state: a restart restores the state instead of
//! reading every input, replays the changes since the checkpoint, and falls back to a rebuild
//! when the checkpoint cannot be used.

use std::sync::Arc;

use freshet::storage::instrumented::{InstrumentedStore, Instruments};
use freshet::{Engine, ManualClock};

use crate::incremental::{last_refresh, multiset};

/// 2026-11-20 00:00:00 UTC.
const START_MS: i64 = 1_795_132_800_000;

/// Aggregates of every kind of accumulator, one with enough groups to be restored on both
/// cores, a join, a top-N, a NOT IN, an outer join and a query reading one aggregate twice
/// (shared), each with its query.
const TABLES: [(&str, &str); 8] = [
    (
        "totals",
        "SELECT customer, count(*) AS n, sum(amount) AS total, avg(price) AS mean_price FROM orders GROUP BY customer",
    ),
    (
        "by_customer",
        "SELECT customer, count(*) AS n, sum(amount) AS total, min(amount) AS low, max(note) AS last_note, \
         avg(price) AS mean_price, count(DISTINCT amount % 7) AS kinds, bool_or(amount > 990) AS big \
         FROM orders GROUP BY customer",
    ),
    (
        "by_tenth",
        "SELECT id % 20000 AS tenth, count(*) AS n, sum(amount) AS total FROM orders GROUP BY id % 20000",
    ),
    (
        "by_region",
        "SELECT c.region, sum(o.amount) AS total, count(*) AS n FROM orders o JOIN customers c ON o.customer = c.id \
         GROUP BY c.region",
    ),
    (
        "top_orders",
        "SELECT id, amount FROM orders ORDER BY amount DESC, id LIMIT 5",
    ),
    (
        "without_big_orders",
        "SELECT id, region FROM customers WHERE id NOT IN (SELECT customer FROM orders WHERE amount > 990)",
    ),
    (
        "unmatched",
        "SELECT c.id, c.region, o.id AS order_id FROM customers c LEFT JOIN orders o ON o.customer = c.id AND o.amount > 995",
    ),
    (
        "busiest_customers",
        "SELECT a.region, a.customer, a.n FROM \
         (SELECT c.region, o.customer, count(*) AS n FROM orders o JOIN customers c ON o.customer = c.id \
          GROUP BY c.region, o.customer) a \
         JOIN (SELECT region, max(n) AS top FROM \
           (SELECT c.region, o.customer, count(*) AS n FROM orders o JOIN customers c ON o.customer = c.id \
            GROUP BY c.region, o.customer) x GROUP BY region) b \
         ON a.region = b.region AND a.n >= b.top",
    ),
];

async fn open(dir: &std::path::Path, clock: &ManualClock, instruments: &Instruments) -> Engine {
    let instruments = instruments.clone();
    Engine::builder()
        .location(dir.display().to_string())
        .clock(Arc::new(clock.clone()))
        .store_layer(move |store| Arc::new(InstrumentedStore::new(store, instruments)))
        .open()
        .await
        .unwrap()
}

async fn setup(dir: &std::path::Path, clock: &ManualClock, instruments: &Instruments) -> Engine {
    let engine = open(dir, clock, instruments).await;
    engine
        .sql(
            "CREATE TABLE customers (id INT PRIMARY KEY, region TEXT);
             INSERT INTO customers SELECT value, 'r' || CAST(value % 5 AS TEXT) FROM generate_series(0, 120);
             CREATE TABLE orders (id BIGINT PRIMARY KEY, customer INT, amount BIGINT, price DOUBLE, note TEXT);
             INSERT INTO orders SELECT value, CAST(value % 100 AS INT), value % 1000, CAST(value % 97 AS DOUBLE) / 8, \
               'n' || CAST(value % 13 AS TEXT) FROM generate_series(1, 100000)",
        )
        .await
        .unwrap();
    for (name, query) in TABLES {
        engine
            .sql(&format!(
                "CREATE MATERIALIZED TABLE {name} FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL AS {query}"
            ))
            .await
            .unwrap();
    }
    engine
}

/// A new location with [`setup`]'s tables, on a manual clock and an instrumented store, after
/// running `settings` (SQL; may be empty).
async fn fresh(settings: &str) -> (tempfile::TempDir, ManualClock, Instruments, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let instruments = Instruments::new();
    let engine = setup(dir.path(), &clock, &instruments).await;
    if !settings.is_empty() {
        engine.sql(settings).await.unwrap();
    }
    (dir, clock, instruments, engine)
}

/// Opens the location again, runs `changes`, and refreshes every table, each of which must
/// restore its state from its checkpoint.
async fn reopen_restored(
    dir: &std::path::Path,
    clock: &ManualClock,
    instruments: &Instruments,
    changes: &str,
) -> Engine {
    let engine = open(dir, clock, instruments).await;
    engine.sql(changes).await.unwrap();
    for (name, _) in TABLES {
        refresh_restored(&engine, name).await;
    }
    engine
}

/// A round's changes: updates, deletions (all of a customer's orders among them), an insert.
fn changes(round: i64) -> String {
    format!(
        "UPDATE orders SET amount = amount + {round}, note = 'u{round}' WHERE id % 1000 = {round};
         DELETE FROM orders WHERE id % 1000 = {round} + 500;
         DELETE FROM orders WHERE customer = 90 + {round};
         INSERT INTO orders VALUES ({id}, {round}, 1000 + {round}, 1.5, NULL);
         UPDATE customers SET region = 'moved' WHERE id = {round}",
        id = 100_000 + round
    )
}

async fn round(engine: &Engine, round: i64) {
    engine.sql(&changes(round)).await.unwrap();
    for (name, _) in TABLES {
        engine
            .sql(&format!("ALTER MATERIALIZED TABLE {name} REFRESH"))
            .await
            .unwrap();
    }
}

/// Refreshes a table of an engine just opened, and checks that its state came back from its
/// checkpoint.
async fn refresh_restored(engine: &Engine, name: &str) {
    engine
        .sql(&format!("ALTER MATERIALIZED TABLE {name} REFRESH"))
        .await
        .unwrap();
    let (_, algorithm, reason) = last_refresh(engine, name).await;
    assert_eq!(algorithm, "incremental", "{name}: {reason}");
    assert!(
        reason.contains("restored from the table's checkpoint"),
        "{name}: {reason}"
    );
}

/// The table's checkpoint of its operator state (it must have one).
fn checkpoint_of(engine: &Engine, name: &str) -> freshet::storage::StateCheckpoint {
    engine
        .table(name)
        .unwrap()
        .snapshot()
        .manifest()
        .state
        .clone()
        .expect("a checkpoint")
}

async fn assert_equal_batch(engine: &Engine) {
    for (name, query) in TABLES {
        let maintained = multiset(&engine.sql(&format!("SELECT * FROM {name}")).await.unwrap());
        let expected = multiset(&engine.sql(query).await.unwrap());
        assert_eq!(maintained, expected, "{name} differs from its query");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_the_state_from_its_checkpoint_without_reading_the_inputs() {
    let (dir, clock, instruments, engine) = fresh("").await;
    // The first incremental refresh builds the state and checkpoints it; the next few change
    // too little of it to be worth another checkpoint.
    for r in 1..=4 {
        round(&engine, r).await;
    }
    assert_equal_batch(&engine).await;
    let join = engine.table("by_region").unwrap();
    let checkpoint = join.snapshot().manifest().state.clone().expect("a checkpoint");
    let checkpointed = checkpoint.meta["inputs"]["orders"].as_u64().unwrap();
    let orders_version = engine.table("orders").unwrap().snapshot().version();
    assert!(
        checkpointed < orders_version,
        "the checkpoint ({checkpointed}) is older than the inputs ({orders_version}) until the engine closes"
    );
    let explained = multiset(&engine.sql("EXPLAIN MATERIALIZED TABLE by_region").await.unwrap()).join("\n");
    assert!(
        explained.contains("checkpoint | ") && explained.contains(&format!("orders@{checkpointed}")),
        "{explained}"
    );
    let input_bytes: u64 = engine
        .table("orders")
        .unwrap()
        .snapshot()
        .manifest()
        .files
        .iter()
        .map(|f| f.bytes)
        .sum();
    let deltas = checkpoint.meta["deltas"].as_array().map_or(0, Vec::len);
    engine.close().await;

    let engine = open(dir.path(), &clock, &instruments).await;
    // Closing wrote what the refreshes since the checkpoint changed as a delta of its own
    // version: the restore has nothing to replay.
    let closed = engine.table("by_region").unwrap();
    let closed_checkpoint = closed.snapshot().manifest().state.clone().expect("a checkpoint");
    assert_eq!(
        closed_checkpoint.meta["inputs"]["orders"].as_u64(),
        Some(orders_version)
    );
    assert_eq!(
        closed_checkpoint.meta["deltas"].as_array().map_or(0, Vec::len),
        deltas + 1
    );
    assert_eq!(closed.snapshot().manifest().operation, "CHECKPOINT");
    engine
        .sql("INSERT INTO orders VALUES (200000, 7, 5, 2.5, 'late')")
        .await
        .unwrap();
    for (name, _) in TABLES {
        instruments.reset_counters();
        engine
            .sql(&format!("ALTER MATERIALIZED TABLE {name} REFRESH"))
            .await
            .unwrap();
        // Sums and counts are a row per group: restoring them reads far less than the input.
        // (A join's state is its inputs' rows, and MIN/MAX keep every distinct value: their
        // checkpoints are that large.) Counted before `freshet.refreshes` is read, which
        // reads the refreshes committed before the engine opened from their manifests.
        let read = instruments.bytes_read();
        let (_, algorithm, reason) = last_refresh(&engine, name).await;
        assert_eq!(algorithm, "incremental", "{name}: {reason}");
        assert!(
            reason.contains("restored from the table's checkpoint"),
            "{name}: {reason}"
        );
        if name == "totals" {
            assert!(
                read * 10 < input_bytes,
                "restoring read {read} bytes; the orders alone are {input_bytes}"
            );
        }
    }
    assert_equal_batch(&engine).await;
    round(&engine, 5).await;
    assert_equal_batch(&engine).await;
    // A restored state is never found to differ from the table.
    let drifted = engine
        .sql("SELECT name FROM freshet.refreshes WHERE corrected_rows > 0")
        .await
        .unwrap();
    assert!(multiset(&drifted).is_empty());
    engine.close().await;
}

/// A large state's checkpoints are written after their refresh returned, and committed as
/// versions of their own that change no row — the first (the whole state) and the deltas
/// after it; the next refresh builds on them, and a restart restores from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_states_checkpoints_land_after_their_refresh_as_versions_of_their_own() {
    let (dir, clock, instruments, engine) = fresh(
        "SET 'materialized-table.checkpoint.background-rows' = '0'; SET 'execution.checkpointing.interval' = '1 s'",
    )
    .await;
    round(&engine, 1).await;
    let mut checkpointed = std::collections::HashMap::new();
    for (name, _) in TABLES {
        engine.wait_for_materialized_state(name).await;
        let snapshot = engine.table(name).unwrap().snapshot();
        let manifest = snapshot.manifest();
        assert_eq!(manifest.operation, "CHECKPOINT", "{name}");
        assert!(manifest.state.is_some(), "{name}: no checkpoint");
        assert!(
            manifest.changes.inserted.is_empty() && manifest.changes.retracted.is_empty(),
            "{name}"
        );
        // The refresh before it: its record stays the table's.
        let refreshed = engine
            .table(name)
            .unwrap()
            .snapshot_at(snapshot.version() - 1)
            .await
            .unwrap();
        assert_eq!(
            freshet::RefreshRecord::of(&snapshot),
            freshet::RefreshRecord::of(&refreshed),
            "{name}"
        );
        checkpointed.insert(name, manifest.state.clone());
    }
    assert_equal_batch(&engine).await;
    // Due by the interval: a delta over the first, after its refresh too.
    clock.advance(std::time::Duration::from_secs(2));
    round(&engine, 2).await;
    assert_equal_batch(&engine).await;
    let mut deltas = 0;
    for (name, _) in TABLES {
        engine.wait_for_materialized_state(name).await;
        let table = engine.table(name).unwrap();
        let snapshot = table.snapshot();
        let manifest = snapshot.manifest();
        if manifest.operation != "CHECKPOINT" {
            // Nothing changed at its inputs: no refresh, no checkpoint.
            assert_eq!(manifest.state, checkpointed[name], "{name}");
            continue;
        }
        let refreshed = table.snapshot_at(snapshot.version() - 1).await.unwrap();
        assert_eq!(
            freshet::RefreshRecord::of(&snapshot),
            freshet::RefreshRecord::of(&refreshed),
            "{name}"
        );
        assert_eq!(
            refreshed.manifest().state,
            checkpointed[name],
            "{name}: written within its refresh"
        );
        // A delta when it fits over the first (else the whole state again).
        deltas += usize::from(manifest.state.as_ref().is_some_and(|state| state.files.len() > 1));
    }
    assert!(deltas > 0, "no checkpoint after the first was a delta");
    engine.close().await;

    let engine = reopen_restored(
        dir.path(),
        &clock,
        &instruments,
        "INSERT INTO orders VALUES (200000, 7, 5, 2.5, 'late')",
    )
    .await;
    round(&engine, 3).await;
    assert_equal_batch(&engine).await;
    engine.close().await;
}

/// A join's checkpoint saved in three parts, restored into two: its rows are indexed again
/// (not taken with their saved index, which would leave the third part's out), and the tables
/// go on equal to their queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_restores_under_another_parallelism() {
    let (dir, clock, _instruments, engine) =
        fresh("SET datafusion.execution.target_partitions = 3; SET 'execution.checkpointing.interval' = '1 s'").await;
    round(&engine, 1).await;
    // A delta too (a customer's orders all deleted, customers moved), applied into two parts.
    clock.advance(std::time::Duration::from_secs(2));
    round(&engine, 2).await;
    let checkpoint = checkpoint_of(&engine, "by_region");
    assert!(
        checkpoint.meta["deltas"].as_array().is_some_and(|d| !d.is_empty()),
        "{}",
        checkpoint.meta
    );
    assert_eq!(engine.session().state().config().target_partitions(), 3);
    engine.close().await;
    let engine = Engine::builder()
        .location(dir.path().display().to_string())
        .clock(Arc::new(clock.clone()))
        .target_partitions(2)
        .open()
        .await
        .unwrap();
    engine
        .sql(
            "INSERT INTO orders VALUES (200000, 7, 5, 2.5, 'late'); DELETE FROM customers WHERE id = 4;
             UPDATE customers SET region = 'again' WHERE id >= 90;
             UPDATE orders SET amount = amount + 1 WHERE id % 1000 < 100",
        )
        .await
        .unwrap();
    for (name, _) in TABLES {
        refresh_restored(&engine, name).await;
    }
    assert_equal_batch(&engine).await;
    round(&engine, 3).await;
    assert_equal_batch(&engine).await;
    for (name, _) in TABLES {
        let (_, algorithm, reason) = last_refresh(&engine, name).await;
        assert_eq!(algorithm, "incremental", "{name}: {reason}");
    }
    engine.close().await;
}

/// One process after another, as from the command line: each restores the whole state and
/// every delta the ones before it closed with, refreshes a round, and closes with one more
/// delta; every table stays equal to its query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_one_after_another_each_restore_the_deltas_of_those_before() {
    let (dir, clock, instruments, engine) = fresh("").await;
    round(&engine, 1).await;
    engine.close().await;
    for r in 2..=5 {
        let engine = reopen_restored(dir.path(), &clock, &instruments, &changes(r)).await;
        assert_equal_batch(&engine).await;
        engine.close().await;
    }
    let engine = open(dir.path(), &clock, &instruments).await;
    let checkpoint = checkpoint_of(&engine, "by_region");
    assert_eq!(
        checkpoint.meta["deltas"].as_array().map_or(0, Vec::len),
        4,
        "a delta per process after the first: {}",
        checkpoint.meta
    );
    // The customers whose orders were all deleted, and every customer's orders (the moved
    // customers among them), match again: a restore that left a deleted or replaced row in a
    // join's state shows here.
    engine
        .sql(
            "UPDATE customers SET region = 'again' WHERE id >= 90;
             UPDATE orders SET amount = amount + 1 WHERE id % 1000 < 100",
        )
        .await
        .unwrap();
    round(&engine, 6).await;
    assert_equal_batch(&engine).await;
    for (name, _) in TABLES {
        let (_, algorithm, reason) = last_refresh(&engine, name).await;
        assert_eq!(algorithm, "incremental", "{name}: {reason}");
    }
    let drifted = engine
        .sql("SELECT name FROM freshet.refreshes WHERE corrected_rows > 0")
        .await
        .unwrap();
    assert!(multiset(&drifted).is_empty());
    engine.close().await;
}

/// A restored aggregate keeps the groups no change has touched where its whole checkpoint
/// saved them, loading each when a change first does. A whole checkpoint taken then copies
/// the untouched ones from there: the next process restores every group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_checkpoint_of_a_restored_state_holds_the_groups_never_loaded() {
    let (dir, clock, instruments, engine) = fresh("").await;
    round(&engine, 1).await;
    engine.close().await;
    // Orders of 300 new customers: more groups changed than `totals` held (99), too many for
    // a delta, so the next refresh writes the whole state, most old groups never loaded.
    let many = format!(
        "{}; INSERT INTO orders SELECT 200000 + value, CAST(1000 + value AS INT), value, 2.5, 'new' \
         FROM generate_series(1, 300)",
        changes(2)
    );
    let engine = open(dir.path(), &clock, &instruments).await;
    engine
        .sql(&format!("SET 'execution.checkpointing.interval' = '1 s'; {many}"))
        .await
        .unwrap();
    clock.advance(std::time::Duration::from_secs(2));
    for (name, _) in TABLES {
        refresh_restored(&engine, name).await;
    }
    assert_equal_batch(&engine).await;
    let checkpoint = checkpoint_of(&engine, "totals");
    assert_eq!(
        checkpoint.meta["deltas"].as_array().map_or(0, Vec::len),
        0,
        "a whole checkpoint: {}",
        checkpoint.meta
    );
    assert!(
        checkpoint.meta["rows"].as_u64().unwrap_or(0) > 300,
        "{}",
        checkpoint.meta
    );
    engine.close().await;
    // Every group changed: one the whole checkpoint left out would be inserted again.
    let engine = reopen_restored(
        dir.path(),
        &clock,
        &instruments,
        "UPDATE orders SET amount = amount + 1, price = price + 0.5",
    )
    .await;
    assert_equal_batch(&engine).await;
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_cannot_be_read_falls_back_to_a_rebuild() {
    let (dir, clock, instruments, engine) = fresh("").await;
    round(&engine, 1).await;
    let mut damaged = Vec::new();
    for (name, _) in TABLES {
        let table = engine.table(name).unwrap();
        let checkpoint = table.snapshot().manifest().state.clone().expect("a checkpoint");
        for file in checkpoint.files {
            damaged.push(dir.path().join("tables").join(table.id()).join(&file.path));
        }
    }
    engine.close().await;
    for (i, path) in damaged.iter().enumerate() {
        let mut bytes = std::fs::read(path).unwrap();
        if i % 2 == 0 {
            // Cut short.
            bytes.truncate(bytes.len() / 2);
        } else {
            // Same length, one value changed (a data buffer, not the file's structure).
            let middle = bytes.len() / 2;
            bytes[middle] = bytes[middle].wrapping_add(1);
        }
        std::fs::write(path, bytes).unwrap();
    }
    let engine = open(dir.path(), &clock, &instruments).await;
    round(&engine, 2).await;
    for (name, _) in TABLES {
        let (_, algorithm, reason) = last_refresh(&engine, name).await;
        assert_eq!(algorithm, "incremental", "{name}: {reason}");
        assert!(reason.contains("rebuilt"), "{name}: {reason}");
    }
    assert_equal_batch(&engine).await;
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_after_the_first_write_only_the_changes_and_a_restart_applies_them() {
    let (dir, clock, instruments, engine) = fresh("SET 'execution.checkpointing.interval' = '1 s'").await;
    // Every refresh is a second after the last checkpoint: each one writes a checkpoint.
    for r in 1..=6 {
        clock.advance(std::time::Duration::from_secs(2));
        round(&engine, r).await;
    }
    assert_equal_batch(&engine).await;
    // The aggregates, the joins and the top-N keep the changes since the last checkpoint: after
    // the first (whole) one, each refresh's checkpoint is a file of those alone, a fraction of
    // the whole.
    for name in [
        "totals",
        "by_customer",
        "by_region",
        "top_orders",
        "unmatched",
        "busiest_customers",
    ] {
        let checkpoint = checkpoint_of(&engine, name);
        let deltas = checkpoint.meta["deltas"].as_array().map_or(0, Vec::len);
        assert_eq!(deltas, 5, "{name}: a delta per refresh after the first");
        assert_eq!(checkpoint.files.len(), deltas + 1, "{name}");
        if ["by_customer", "by_region", "top_orders"].contains(&name) {
            let whole = checkpoint.files[0].bytes;
            for delta in &checkpoint.files[1..] {
                assert!(
                    delta.bytes * 10 < whole,
                    "{name}: a delta of {} bytes beside a whole state of {whole}",
                    delta.bytes
                );
            }
        }
        let explained = multiset(&engine.sql(&format!("EXPLAIN MATERIALIZED TABLE {name}")).await.unwrap()).join("\n");
        assert!(explained.contains("a whole state and 5 deltas"), "{explained}");
        if name == "busiest_customers" {
            // Its aggregate is computed, kept and checkpointed once for both readers.
            assert!(explained.contains("Shared: computed once, read 2 times"), "{explained}");
        }
    }
    engine.close().await;

    // Restored: each operator takes its whole state and applies its deltas in order (groups
    // gone since the whole state stay gone: orders for their customers start them again).
    let engine = reopen_restored(
        dir.path(),
        &clock,
        &instruments,
        "INSERT INTO orders VALUES (200000, 7, 5, 2.5, 'late'), (200001, 91, 6, 2.5, 'back'), \
           (200002, 96, 7, 3.5, 'back'); DELETE FROM customers WHERE id = 3",
    )
    .await;
    assert_equal_batch(&engine).await;
    // And goes on adding deltas to the chain it was restored from.
    engine
        .sql("SET 'execution.checkpointing.interval' = '1 s'")
        .await
        .unwrap();
    clock.advance(std::time::Duration::from_secs(2));
    round(&engine, 7).await;
    assert_equal_batch(&engine).await;
    // Incrementally: a restored state that missed a delta fails its refresh, which recomputes.
    for (name, _) in TABLES {
        let (_, algorithm, reason) = last_refresh(&engine, name).await;
        assert_eq!(algorithm, "incremental", "{name}: {reason}");
    }
    let checkpoint = checkpoint_of(&engine, "by_region");
    assert_eq!(checkpoint.files.len(), 7, "the whole state and six deltas");
    let drifted = engine
        .sql("SELECT name FROM freshet.refreshes WHERE corrected_rows > 0")
        .await
        .unwrap();
    assert!(multiset(&drifted).is_empty());
    engine.close().await;
}
