//! The embedding API: opening, concurrency, change reads, locking and damaged files.

use std::sync::Arc;

use freshet::datafusion::arrow::array::{Array, Int64Array};
use freshet::storage::instrumented::{InstrumentedStore, Instruments};
use freshet::{Engine, ErrorDomain, FreshetError};
use futures::TryStreamExt;

async fn count(engine: &Engine, sql: &str) -> i64 {
    let batches = engine.sql(sql).await.expect("query runs");
    let column = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("BIGINT");
    column.value(0)
}

#[tokio::test]
async fn many_tasks_share_one_engine() {
    // No background compaction, so that the versions are exactly the inserts.
    let engine = Engine::builder()
        .location("memory://")
        .compact_min_files(1000)
        .open()
        .await
        .unwrap();
    engine.sql("CREATE TABLE t (task INT, i INT)").await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..8 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                engine
                    .sql(&format!("INSERT INTO t VALUES ({task}, {i})"))
                    .await
                    .unwrap();
                // A reader never sees a partial commit: every task's rows arrive one at a time.
                let n = count(&engine, &format!("SELECT count(*) FROM t WHERE task = {task}")).await;
                assert_eq!(n, i + 1);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(count(&engine, "SELECT count(*) FROM t").await, 40);
    assert_eq!(engine.table("t").unwrap().snapshot().version(), 41);
}

/// An engine in memory whose store counts what it reads, with files of at most `max_file_rows`.
async fn instrumented_engine(max_file_rows: usize) -> (Engine, Instruments) {
    let instruments = Instruments::new();
    let layer = instruments.clone();
    let engine = Engine::builder()
        .location("memory://")
        .max_file_rows(max_file_rows)
        .store_layer(move |store| Arc::new(InstrumentedStore::new(store, layer)))
        .open()
        .await
        .unwrap();
    (engine, instruments)
}

/// Bytes read by a change read of a 10-row update on a table of `rows` rows.
async fn change_read_bytes(rows: usize) -> u64 {
    let (engine, instruments) = instrumented_engine(1000).await;
    engine
        .sql(&format!(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT); INSERT INTO t SELECT value, value AS v FROM generate_series(1, {rows})"
        ))
        .await
        .unwrap();
    engine.sql("UPDATE t SET v = v + 1 WHERE id <= 10").await.unwrap();
    instruments.reset_counters();
    let changes = engine.changes("t", 2, 3).await.unwrap();
    // One inserted file and one retraction file, each with 10 rows.
    assert_eq!(changes.files(), 2);
    let raw: Vec<_> = changes.stream().try_collect().await.unwrap();
    let changed: usize = raw.iter().map(|c| c.num_rows()).sum();
    assert_eq!(changed, 20);
    let weights: i64 = raw.iter().flat_map(|c| c.weights().values().to_vec()).sum();
    assert_eq!(weights, 0);
    let bytes = instruments.bytes_read();
    let whole = engine
        .changes("t", 0, 3)
        .await
        .unwrap()
        .consolidated()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(whole.num_rows(), rows);
    bytes
}

/// A change read of some columns returns those columns, with the same weights, and reads
/// fewer bytes than one of every column.
#[tokio::test]
async fn change_reads_of_some_columns_decode_only_those() {
    let (engine, instruments) = instrumented_engine(100_000).await;
    engine
        .sql(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT, note TEXT); \
             INSERT INTO t SELECT value, value * 10, repeat(CAST(value AS TEXT), 20) FROM generate_series(1, 50000); \
             UPDATE t SET v = v + 1 WHERE id <= 30000",
        )
        .await
        .unwrap();
    let changes = engine.changes("t", 2, 3).await.unwrap();
    // The UPDATE deleted most of a file: its compaction must not be counted with the reads.
    // (Files are larger than the footer's prefetch, which reads a small file whole.)
    engine.table("t").unwrap().wait_for_background_work().await;
    instruments.reset_counters();
    let all: Vec<_> = changes.stream().try_collect().await.unwrap();
    let all_bytes = instruments.bytes_read();
    instruments.reset_counters();
    let some: Vec<_> = changes.stream_columns(Some(&[1])).try_collect().await.unwrap();
    let some_bytes = instruments.bytes_read();
    assert!(some.iter().all(|c| c.data().num_columns() == 1));
    assert_eq!(weighted_values(&some, 0), weighted_values(&all, 1));
    assert_eq!(weighted_values(&some, 0).len(), 60000);
    assert!(
        some_bytes * 2 < all_bytes,
        "{some_bytes} bytes of one column, {all_bytes} of all"
    );
}

/// A change read for a reader of some columns leaves out an UPDATE of other columns (its rows
/// would cancel) and marks the rows of an UPDATE of a column read; inserts and deletes are
/// read as they are, unmarked, all in version order.
#[tokio::test]
async fn change_reads_for_a_reader_leave_out_updates_of_other_columns() {
    let (engine, _) = instrumented_engine(100_000).await;
    engine
        .sql(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT, note TEXT); \
             INSERT INTO t SELECT value, value * 10, 'n' FROM generate_series(1, 100); \
             UPDATE t SET note = 'm' WHERE id <= 30; \
             UPDATE t SET v = v + 1 WHERE id <= 20; \
             DELETE FROM t WHERE id = 100",
        )
        .await
        .unwrap();
    let changes = engine.changes("t", 1, 5).await.unwrap();
    let read = |columns: &'static [usize]| {
        let changes = &changes;
        async move {
            let read: Vec<(freshet::ChangeBatch, bool)> =
                changes.stream_read(Some(columns)).try_collect().await.unwrap();
            read.iter()
                .map(|(batch, updated)| (weighted_values(std::slice::from_ref(batch), 0), *updated))
                .collect::<Vec<_>>()
        }
    };
    // Of `v`: the inserts, the second UPDATE's rows (marked), the delete; not the first UPDATE.
    let of_v = read(&[1]).await;
    let unmarked: usize = of_v.iter().filter(|(_, u)| !u).map(|(rows, _)| rows.len()).sum();
    let marked: Vec<(i64, i64)> = of_v
        .iter()
        .filter(|(_, u)| *u)
        .flat_map(|(rows, _)| rows.clone())
        .collect();
    assert_eq!(unmarked, 101, "100 inserts and one delete");
    assert_eq!(marked.len(), 40, "the second UPDATE's 20 rows, deleted and inserted");
    assert!(marked.contains(&(11, 1)) && marked.contains(&(10, -1)), "{marked:?}");
    // Of `id` alone, neither UPDATE is read.
    let of_id = read(&[0]).await;
    assert!(of_id.iter().all(|(_, u)| !u));
    assert_eq!(of_id.iter().map(|(rows, _)| rows.len()).sum::<usize>(), 101);
    // Of every column, both UPDATEs are read, marked.
    let every: Vec<(freshet::ChangeBatch, bool)> = changes.stream_read(None).try_collect().await.unwrap();
    assert_eq!(
        every
            .iter()
            .filter(|(_, u)| *u)
            .map(|(b, _)| b.num_rows())
            .sum::<usize>(),
        100
    );
    // The plain change read has every row, as before.
    let all: Vec<_> = changes.stream().try_collect().await.unwrap();
    assert_eq!(all.iter().map(freshet::ChangeBatch::num_rows).sum::<usize>(), 201);
}

#[tokio::test]
async fn change_reads_cost_the_change_not_the_table() {
    let small = change_read_bytes(2_000).await;
    let large = change_read_bytes(40_000).await;
    // The change files are the same size; only the version's manifest grows, by one entry
    // (under 200 bytes) per data file: 40 files instead of 2 here.
    assert!(
        large < small + 38 * 200,
        "change read of the larger table read {large} bytes, the smaller {small}"
    );
}

#[tokio::test]
async fn a_second_engine_on_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().display().to_string();
    let first = Engine::builder().location(&location).open().await.unwrap();
    let err = Engine::builder().location(&location).open().await.unwrap_err();
    assert!(matches!(err, FreshetError::Locked { .. }), "{err}");
    assert_eq!(err.domain(), ErrorDomain::External);
    drop(first);
    Engine::builder().location(&location).open().await.unwrap();
}

#[tokio::test]
async fn a_damaged_table_does_not_take_the_others_down() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().display().to_string();
    {
        let engine = Engine::builder().location(&location).open().await.unwrap();
        engine
            .sql("CREATE TABLE good (a INT); INSERT INTO good VALUES (1); CREATE TABLE bad (a INT); INSERT INTO bad VALUES (2)")
            .await
            .unwrap();
        let bad = engine.table("bad").unwrap();
        let manifests = dir.path().join(bad.dir().as_ref()).join("manifests");
        for entry in std::fs::read_dir(&manifests).unwrap() {
            std::fs::write(entry.unwrap().path(), b"{ not json").unwrap();
        }
    }
    let engine = Engine::builder().location(&location).open().await.unwrap();
    assert_eq!(count(&engine, "SELECT count(*) FROM good").await, 1);
    let err = engine.sql("SELECT * FROM bad").await.unwrap_err().to_string();
    assert!(err.contains("manifests") && err.contains(".json"), "{err}");
    // The damaged table can still be dropped.
    engine.sql("DROP TABLE bad").await.unwrap();
}

/// An engine on a directory.
async fn open_in(dir: &tempfile::TempDir) -> Engine {
    Engine::builder()
        .location(dir.path().display().to_string())
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_missing_data_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_in(&dir).await;
    engine
        .sql("CREATE TABLE t (a INT); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let table = engine.table("t").unwrap();
    let file = table.snapshot().manifest().files[0].path.clone();
    std::fs::remove_file(dir.path().join(table.dir().as_ref()).join(&file)).unwrap();
    let err = engine.sql("SELECT * FROM t").await.unwrap_err().to_string();
    assert!(err.contains(&file), "{err}");
}

#[tokio::test]
async fn results_can_be_streamed() {
    let engine = Engine::builder().location("memory://").open().await.unwrap();
    engine
        .sql("CREATE TABLE t AS SELECT value AS v FROM generate_series(1, 100000)")
        .await
        .unwrap();
    let stream = engine.sql_stream("SELECT v FROM t").await.unwrap();
    let rows: usize = stream
        .map_ok(|b| b.num_rows())
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .sum();
    assert_eq!(rows, 100000);
    let _: Arc<freshet::Table> = engine.table("t").unwrap();
}

/// An engine in memory that compacts a table in the background beyond 3 small files, and its
/// table `t (x BIGINT)`.
async fn compacting_engine() -> (Engine, Arc<freshet::Table>) {
    let engine = Engine::builder()
        .location("memory://")
        .compact_min_files(3)
        .open()
        .await
        .unwrap();
    engine.sql("CREATE TABLE t (x BIGINT)").await.unwrap();
    let table = engine.table("t").unwrap();
    (engine, table)
}

#[tokio::test]
async fn background_compaction_bounds_the_files_and_keeps_the_contents() {
    let (engine, table) = compacting_engine().await;
    for x in 1..=10 {
        engine.sql(&format!("INSERT INTO t VALUES ({x})")).await.unwrap();
        table.wait_for_background_work().await;
        assert!(table.snapshot().manifest().files.len() <= 3);
    }
    assert_eq!(count(&engine, "SELECT sum(x) FROM t").await, 55);
    let operations = engine
        .sql("SELECT count(*) FROM table_history('t') WHERE operation = 'COMPACT'")
        .await
        .unwrap();
    let compactions = operations[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert!(compactions >= 2, "{compactions} compactions");
    // Compaction changed nothing: the changes since creation are the ten inserted rows.
    assert_eq!(
        count(&engine, "SELECT sum(_weight) FROM table_changes('t', 0)").await,
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_up_with_writers_that_delete_from_every_file() {
    // Each commit deletes rows of every file, as a continuously refreshed materialized table's
    // do: a compaction running alongside would find its files changed and be abandoned, so it
    // holds the writers off instead, and the files stay bounded.
    let (engine, table) = compacting_engine().await;
    let mut most = 0;
    for i in 0..60i64 {
        engine
            .sql(&format!(
                "INSERT INTO t SELECT {i} * 1000 + value FROM generate_series(1, 200); \
                 DELETE FROM t WHERE x % 97 = {}",
                i % 97
            ))
            .await
            .unwrap();
        most = most.max(table.snapshot().manifest().files.len());
    }
    table.wait_for_background_work().await;
    assert!(most <= 12, "{most} files at most");
    let expected: i64 = (0..60i64)
        .flat_map(|i| (1..=200).map(move |v| i * 1000 + v))
        .filter(|x| (0..60).all(|i| x % 97 != i % 97 || x / 1000 > i))
        .count() as i64;
    assert_eq!(count(&engine, "SELECT count(*) FROM t").await, expected);
}

/// Each live row of `snapshot` (a table of one BIGINT column `x`) by (file path, position).
async fn rows_by_location(snapshot: &Arc<freshet::storage::Snapshot>) -> std::collections::HashMap<(String, u64), i64> {
    use freshet::datafusion::arrow::array::AsArray;
    use freshet::datafusion::arrow::datatypes::{Int64Type, UInt32Type, UInt64Type};
    let batches: Vec<_> = snapshot.scan(None, true).try_collect().await.unwrap();
    let mut rows = std::collections::HashMap::new();
    for batch in batches {
        let (x, file, position) = (
            batch.column(0).as_primitive::<Int64Type>(),
            batch.column(1).as_primitive::<UInt32Type>(),
            batch.column(2).as_primitive::<UInt64Type>(),
        );
        for i in 0..batch.num_rows() {
            let path = snapshot.manifest().files[file.value(i) as usize].path.clone();
            rows.insert((path, position.value(i)), x.value(i));
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_and_compactions_say_where_every_row_went() {
    // Enough rows for parallel writers (each starts after 128 Ki rows) and small files, so
    // that rows are dealt among writers and files roll.
    let engine = Engine::builder()
        .location("memory://")
        .max_file_rows(50_000)
        .compact_min_files(1000)
        .open()
        .await
        .unwrap();
    engine.sql("CREATE TABLE t (x BIGINT NOT NULL)").await.unwrap();
    let table = engine.table("t").unwrap();
    let mut txn = table.begin("INSERT").await.unwrap();
    let schema = table.schema();
    for start in (0..300_000i64).step_by(7_500) {
        let x = Int64Array::from_iter_values(start..start + 7_500);
        let batch = freshet::datafusion::arrow::array::RecordBatch::try_new(schema.clone(), vec![Arc::new(x)]).unwrap();
        txn.insert(&batch).await.unwrap();
    }
    let info = txn.commit().await.unwrap();
    let inserted = table.snapshot();
    assert!(
        inserted.manifest().files.len() >= 6,
        "{} files",
        inserted.manifest().files.len()
    );
    let at = rows_by_location(&inserted).await;
    assert_eq!(at.len(), 300_000);
    for ((path, position), x) in &at {
        // Row x was the x-th row given to the transaction.
        assert_eq!(info.placements.locate(*x as u64), Some((path.as_str(), *position)));
    }
    assert_eq!(info.placements.locate(300_000), None);

    // Delete every third row, then compact: each surviving row's old location translates to
    // its new one, and a deleted row's to none.
    // (The delete leaves a third of the rows deleted: a background compaction may do it.)
    table.keep_compaction_moves();
    engine.sql("DELETE FROM t WHERE x % 3 = 0").await.unwrap();
    table.wait_for_background_work().await;
    let deleted = info.version + 1;
    let live = rows_by_location(&table.snapshot_at(deleted).await.unwrap()).await;
    let version = table.compact().await.unwrap().unwrap_or(deleted + 1);
    let compacted = table.snapshot_at(version).await.unwrap();
    assert_eq!(compacted.manifest().operation, "COMPACT");
    let after = rows_by_location(&compacted).await;
    let moves = table.compaction_moves(version).expect("moves kept");
    let by_file: std::collections::HashMap<&str, _> = inserted
        .manifest()
        .files
        .iter()
        .map(|f| (f.path.as_str(), moves.of_file(&f.path).expect("every file rewritten")))
        .collect();
    let mut checked = 0;
    for ((path, position), x) in &at {
        let moved = by_file[path.as_str()].locate(*position);
        match live.get(&(path.clone(), *position)) {
            Some(_) => {
                let (new_path, new_position) = moved.expect("a live row moved");
                assert_eq!(after.get(&(new_path.to_string(), new_position)), Some(x));
                checked += 1;
            }
            None => assert_eq!(moved, None, "deleted row {x}"),
        }
    }
    assert_eq!(checked, 200_000);
    assert_eq!(table.compaction_moves(version - 1).map(|m| m.version()), None);
}

#[tokio::test]
async fn unknown_locations_are_user_errors() {
    let err = Engine::builder()
        .location("memory://somewhere")
        .open()
        .await
        .unwrap_err();
    assert_eq!(err.domain(), ErrorDomain::User);
    assert!(err.to_string().contains("takes no path"), "{err}");
    if !cfg!(feature = "cloud") {
        let err = Engine::builder().location("s3://bucket/path").open().await.unwrap_err();
        assert!(err.to_string().contains("\"cloud\" feature"), "{err}");
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = Engine::builder()
        .location(file.path().display().to_string())
        .open()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot create the directory"), "{err}");
}

#[tokio::test]
async fn scans_return_columns_in_the_order_asked() {
    use freshet::datafusion::physical_plan::collect;
    let engine = Engine::builder().location("memory://").open().await.unwrap();
    engine
        .sql("CREATE TABLE t (a BIGINT, b TEXT, c BIGINT); INSERT INTO t VALUES (1, 'x', 3)")
        .await
        .unwrap();
    let provider = engine.session().table_provider("t").await.unwrap();
    let state = engine.session().state();
    let plan = provider.scan(&state, Some(&vec![2, 0]), &[], None).await.unwrap();
    let batches = collect(plan, engine.session().task_ctx()).await.unwrap();
    let schema = batches[0].schema();
    assert_eq!(schema.field(0).name(), "c");
    assert_eq!(schema.field(1).name(), "a");
    let c = batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(c.value(0), 3);
}

#[tokio::test]
async fn progress_counts_the_rows_a_statement_reads() {
    let engine = Engine::builder().location("memory://").open().await.unwrap();
    engine.sql("CREATE TABLE t (x BIGINT)").await.unwrap();
    engine
        .sql("INSERT INTO t SELECT value FROM generate_series(1, 1000)")
        .await
        .unwrap();
    let statements = engine
        .parse("SELECT count(*) FROM t WHERE x % 2 = 0; DELETE FROM t WHERE x <= 10")
        .unwrap();
    let progress = freshet::Progress::new();
    let rows: Vec<_> = engine
        .execute_with_progress(&statements[0], &progress)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        rows[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0),
        500
    );
    assert_eq!(progress.rows_read(), 1000);
    // Plans made inside a statement (a DELETE's scan for its rows) count too.
    let progress = freshet::Progress::new();
    let _: Vec<_> = engine
        .execute_with_progress(&statements[1], &progress)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(progress.rows_read() >= 10, "{}", progress.rows_read());
    assert_eq!(count(&engine, "SELECT count(*) FROM t").await, 990);
}

/// The Parquet codec of a file on disk.
fn codec_of(file: &std::path::Path) -> freshet::datafusion::parquet::basic::Compression {
    use freshet::datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
    reader.metadata().row_group(0).column(0).compression()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_may_write_its_files_uncompressed() {
    use freshet::datafusion::parquet::basic::Compression;
    let dir = tempfile::tempdir().unwrap();
    let engine = open_in(&dir).await;
    engine
        .sql("CREATE TABLE t (x BIGINT NOT NULL); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    let table = engine.table("t").unwrap();
    let table_dir = dir.path().join(table.dir().as_ref());
    let compressed = table.snapshot().manifest().files[0].path.clone();
    assert_eq!(codec_of(&table_dir.join(&compressed)), Compression::LZ4_RAW);

    let mut txn = table.begin("INSERT").await.unwrap();
    txn.write_uncompressed();
    let x = Int64Array::from(vec![3, 4]);
    let batch = freshet::datafusion::arrow::array::RecordBatch::try_new(table.schema(), vec![Arc::new(x)]).unwrap();
    txn.insert(&batch).await.unwrap();
    txn.commit().await.unwrap();
    let snapshot = table.snapshot();
    let added = snapshot.manifest().files.iter().find(|f| f.path != compressed).unwrap();
    assert_eq!(codec_of(&table_dir.join(&added.path)), Compression::UNCOMPRESSED);
    assert_eq!(count(&engine, "SELECT count(*) FROM t WHERE x > 2").await, 2);
    engine.close().await;
}

/// Compaction writes the engine's codec (ZSTD), but a source's table — a stream's log, read back
/// mostly once — keeps the fast codec of fresh files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_compresses_hard_except_a_streams_log() {
    use freshet::datafusion::parquet::basic::Compression;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let engine = open_in(&dir).await;
    engine.sql("CREATE TABLE t (id BIGINT)").await.unwrap();
    engine
        .sql(&format!(
            "CREATE TABLE s (id BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json')",
            input.display()
        ))
        .await
        .unwrap();
    for i in 0..3 {
        engine.sql(&format!("INSERT INTO t VALUES ({i})")).await.unwrap();
        std::fs::write(input.join(format!("{i}.json")), format!("{{\"id\": {i}}}\n")).unwrap();
        // A statement reading the source ingests the new file, one commit each.
        assert_eq!(count(&engine, "SELECT count(*) FROM s").await, i + 1);
    }
    for (name, codec) in [
        ("t", Compression::ZSTD(Default::default())),
        ("s", Compression::LZ4_RAW),
    ] {
        let table = engine.table(name).unwrap();
        table.compact().await.unwrap();
        let files = table.snapshot().manifest().files.clone();
        assert_eq!(files.len(), 1, "{name}");
        let found = codec_of(&dir.path().join(table.dir().as_ref()).join(&files[0].path));
        assert_eq!(
            std::mem::discriminant(&found),
            std::mem::discriminant(&codec),
            "{name}: {found:?}"
        );
    }
    engine.close().await;
}

/// The values of `x` in a change batch, each with its weight, sorted.
fn weighted_values(changes: &[freshet::ChangeBatch], column: usize) -> Vec<(i64, i64)> {
    use freshet::datafusion::arrow::array::AsArray;
    use freshet::datafusion::arrow::datatypes::Int64Type;
    let mut all: Vec<(i64, i64)> = changes
        .iter()
        .flat_map(|c| {
            let x = c.data().column(column).as_primitive::<Int64Type>().clone();
            (0..c.num_rows()).map(move |i| (x.value(i), c.weights().value(i)))
        })
        .collect();
    all.sort_unstable();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_positions_and_their_values_may_be_given_apart() {
    let engine = Engine::builder()
        .location("memory://")
        .compact_min_files(1000)
        .open()
        .await
        .unwrap();
    engine.sql("CREATE TABLE t (x BIGINT NOT NULL)").await.unwrap();
    let table = engine.table("t").unwrap();
    let batch = |values: Vec<i64>| {
        freshet::datafusion::arrow::array::RecordBatch::try_new(
            table.schema(),
            vec![Arc::new(Int64Array::from(values))],
        )
        .unwrap()
    };
    let mut txn = table.begin("INSERT").await.unwrap();
    txn.insert(&batch((0..10).collect())).await.unwrap();
    let first = txn.commit().await.unwrap().version;

    // The values first, in another order; files closed early; the positions last, unsorted.
    let mut txn = table.begin("UPDATE").await.unwrap();
    txn.retract(&batch(vec![7, 3])).await.unwrap();
    txn.insert(&batch(vec![100])).await.unwrap();
    txn.seal_files();
    txn.insert(&batch(vec![101])).await.unwrap();
    txn.delete_positions(0, vec![7, 3]).await.unwrap();
    let info = txn.commit().await.unwrap();
    let (sealed, later) = (info.placements.locate(0).unwrap(), info.placements.locate(1).unwrap());
    assert_ne!(sealed.0, later.0, "a row given after sealing goes to a new file");
    assert_eq!(table.snapshot().manifest().files.len(), 3);
    assert_eq!(
        count(&engine, "SELECT sum(x) FROM t").await,
        (0..10).sum::<i64>() - 10 + 201
    );
    let changes = table
        .changes(first, info.version)
        .await
        .unwrap()
        .consolidated()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        weighted_values(std::slice::from_ref(&changes), 0),
        vec![(3, -1), (7, -1), (100, 1), (101, 1)]
    );

    // Positions without their values, or values without positions, commit nothing.
    for (positions, values) in [(vec![0], vec![]), (vec![0], vec![0, 1]), (vec![], vec![0])] {
        let mut txn = table.begin("DELETE").await.unwrap();
        txn.delete_positions(0, positions).await.unwrap();
        txn.retract(&batch(values)).await.unwrap();
        let err = txn.commit().await.unwrap_err();
        assert_eq!(err.domain(), ErrorDomain::Internal, "{err}");
    }
    assert_eq!(table.snapshot().version(), info.version);

    // A position given twice, deleted already, or beyond the file is refused.
    let mut txn = table.begin("DELETE").await.unwrap();
    let twice = txn.delete_positions(0, vec![1, 2, 1]).await.unwrap_err();
    assert!(twice.to_string().contains("more than once"), "{twice}");
    txn.delete_positions(0, vec![2]).await.unwrap();
    let again = txn.delete_positions(0, vec![4, 2]).await.unwrap_err();
    assert!(again.to_string().contains("more than once"), "{again}");
    for gone in [3, 10] {
        let err = txn.delete_positions(0, vec![gone]).await.unwrap_err();
        assert!(err.to_string().contains("not a live row"), "{gone}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_queries_updates_and_deletes_skip_the_row_groups_they_do_not_touch() {
    let (engine, instruments) = instrumented_engine(100).await;
    engine
        .sql("CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT); INSERT INTO t SELECT value, value * 10 FROM generate_series(1, 2000)")
        .await
        .unwrap();
    // 2,000 rows in files of at most 100 rows: 20 files, each a range of ids.
    let files: u64 = 20;
    let reads = |sql: &'static str| {
        let (engine, instruments) = (&engine, &instruments);
        async move {
            instruments.reset_counters();
            let rows = engine.sql(sql).await.unwrap();
            (instruments.reads(), rows)
        }
    };
    let (whole, _) = reads("SELECT * FROM t").await;
    let (point, rows) = reads("SELECT v FROM t WHERE id = 1234").await;
    assert_eq!(crate::incremental::multiset(&rows), vec!["12340"]);
    // Every file's footer, and the data of one file only.
    assert!(
        point + files - 2 <= whole,
        "a point query made {point} reads, a whole scan {whole}"
    );
    let (update, _) = reads("UPDATE t SET v = v + 1 WHERE id = 1234").await;
    assert!(update + files - 2 <= whole, "an update by key made {update} reads");
    let (delete, _) = reads("DELETE FROM t WHERE id BETWEEN 1501 AND 1550").await;
    assert!(
        delete + files - 4 <= whole,
        "a delete of a key range made {delete} reads"
    );
    let check = engine
        .sql("SELECT count(*), sum(v) FROM t WHERE id >= 1200 AND id <= 1600")
        .await
        .unwrap();
    // 401 rows, less the 50 deleted; v = 10 * id, plus one for 1234.
    let expected_sum: i64 = (1200..=1600)
        .filter(|id| !(1501..=1550).contains(id))
        .map(|id| id * 10)
        .sum::<i64>()
        + 1;
    assert_eq!(
        crate::incremental::multiset(&check),
        vec![format!("351 | {expected_sum}")]
    );
    let plan = engine.sql("EXPLAIN SELECT v FROM t WHERE id = 1234").await.unwrap();
    let text = crate::incremental::multiset(&plan).join("\n");
    assert!(text.contains("pruning="), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_refresh_reads_the_rows_of_its_partition() {
    let (engine, instruments) = instrumented_engine(1000).await;
    engine
        .sql("CREATE TABLE orders (id BIGINT, ds TEXT NOT NULL, amount BIGINT)")
        .await
        .unwrap();
    // One file per day.
    for day in 1..=10 {
        engine
            .sql(&format!(
                "INSERT INTO orders SELECT value, '2026-11-{day:02}', value AS amount FROM generate_series({}, {})",
                day * 1000,
                day * 1000 + 99
            ))
            .await
            .unwrap();
    }
    engine
        .sql(
            "CREATE MATERIALIZED TABLE daily PARTITIONED BY (ds) FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = FULL
             AS SELECT ds, sum(amount) AS total, count(*) AS n FROM orders GROUP BY ds;
             INSERT INTO orders VALUES (1, '2026-11-05', 7), (2, '2026-11-06', 9);",
        )
        .await
        .unwrap();
    instruments.reset_counters();
    engine
        .sql("ALTER MATERIALIZED TABLE daily REFRESH PARTITION (ds = '2026-11-05')")
        .await
        .unwrap();
    let partition = instruments.reads();
    let rows = engine
        .sql("SELECT total, n FROM daily WHERE ds IN ('2026-11-05', '2026-11-06')")
        .await
        .unwrap();
    // Day 5 has its new row; day 6 waits for its own refresh.
    let day5: i64 = (5000..5100).sum::<i64>() + 7;
    let day6: i64 = (6000..6100).sum();
    assert_eq!(
        crate::incremental::multiset(&rows),
        vec![format!("{day5} | 101"), format!("{day6} | 100")]
    );
    instruments.reset_counters();
    engine.sql("ALTER MATERIALIZED TABLE daily REFRESH FULL").await.unwrap();
    let full = instruments.reads();
    // The full refresh reads every day's data; the partition's, one day's (and the footers).
    assert!(
        partition + 8 <= full,
        "a partition refresh made {partition} reads, a full one {full}"
    );
}
