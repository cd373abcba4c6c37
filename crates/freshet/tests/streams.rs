//! Sources and jobs over real files and directories, with files appearing while a job runs.

use freshet::datafusion::arrow::array::{Array, Int64Array};
use freshet::{Engine, JobStatus};

async fn engine(dir: &std::path::Path) -> Engine {
    Engine::builder()
        .location(dir.join("data").display().to_string())
        .target_partitions(2)
        .open()
        .await
        .unwrap()
}

fn lines(from: i64, to: i64) -> String {
    (from..to)
        .map(|i| format!("{{\"id\": {i}, \"v\": {}}}\n", i * 10))
        .collect()
}

async fn count(engine: &Engine, sql: &str) -> i64 {
    let batches = engine.sql(sql).await.unwrap();
    let column = batches[0].column(0);
    column.as_any().downcast_ref::<Int64Array>().unwrap().value(0)
}

/// `s (id, v)`: JSON lines in `input`, a directory followed every 20 ms.
async fn monitored_source(engine: &Engine, input: &std::path::Path) {
    engine
        .sql(&format!(
            "CREATE TABLE s (id BIGINT, v BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', \
             'format' = 'json', 'source.monitor-interval' = '20 ms')",
            input.display()
        ))
        .await
        .unwrap();
}

/// An engine over `dir/data` on a manual clock, with two partitions.
async fn clocked_engine(dir: &std::path::Path, clock: &freshet::ManualClock) -> Engine {
    Engine::builder()
        .location(dir.join("data").display().to_string())
        .clock(std::sync::Arc::new(clock.clone()))
        .target_partitions(2)
        .open()
        .await
        .unwrap()
}

/// A temporary directory, an engine over it on a manual clock, and the monitored source `s`
/// reading its directory `input`.
struct ClockedStream {
    _dir: tempfile::TempDir,
    input: std::path::PathBuf,
    clock: freshet::ManualClock,
    engine: Engine,
}

async fn clocked_stream() -> ClockedStream {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let clock = freshet::ManualClock::new(1_795_132_800_000);
    let engine = clocked_engine(dir.path(), &clock).await;
    monitored_source(&engine, &input).await;
    ClockedStream {
        _dir: dir,
        input,
        clock,
        engine,
    }
}

/// Waits until a job's count (`count` of its info: rows in or out) reaches `n`.
async fn wait_for_rows(job: &freshet::Job, n: u64, count: impl Fn(&freshet::JobInfo) -> u64) {
    job.subscribe().wait_for(|info| count(info) >= n).await.unwrap();
}

/// The operator state entries of the first job (`freshet.jobs`).
async fn job_state_rows(engine: &Engine) -> u64 {
    let state = engine.sql("SELECT state_rows FROM freshet.jobs").await.unwrap();
    state[0]
        .column(0)
        .as_any()
        .downcast_ref::<freshet::datafusion::arrow::array::UInt64Array>()
        .unwrap()
        .value(0)
}

/// Places a file as writers should: written under a hidden name, then renamed.
fn place(dir: &std::path::Path, name: &str, text: &str) {
    let hidden = dir.join(format!(".{name}"));
    std::fs::write(&hidden, text).unwrap();
    std::fs::rename(hidden, dir.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_a_monitored_directory_follows_files_as_they_appear() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    place(&input, "a.json", &lines(0, 100));
    let engine = engine(dir.path()).await;
    monitored_source(&engine, &input).await;
    engine.sql("CREATE TABLE out (id BIGINT, v BIGINT)").await.unwrap();
    engine
        .sql("INSERT INTO out SELECT id, v FROM s WHERE v % 20 = 0")
        .await
        .unwrap();
    let jobs = engine.jobs();
    assert_eq!(jobs.len(), 1);
    let job = engine.job(&jobs[0].id).unwrap();
    let mut progress = job.subscribe();
    progress.wait_for(|i| i.rows_out == 50).await.unwrap();

    place(&input, "b.json", &lines(100, 300));
    progress.wait_for(|i| i.rows_out == 150).await.unwrap();
    assert_eq!(job.info().status, JobStatus::Running);
    assert_eq!(count(&engine, "SELECT count(*) FROM out").await, 150);
    assert_eq!(count(&engine, "SELECT count(*) FROM s").await, 300);

    // A running job has a lag (how far behind its inputs it is); an ended one has none.
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM freshet.jobs WHERE status = 'RUNNING' AND lag_ms >= 0"
        )
        .await,
        1
    );
    // What a running job reads or writes cannot be dropped from under it.
    for table in ["s", "out"] {
        let err = engine
            .sql(&format!("DROP TABLE {table}"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("running job") && err.contains("STOP JOB"), "{err}");
    }
    engine.sql(&format!("STOP JOB '{}'", jobs[0].id)).await.unwrap();
    assert_eq!(job.info().status, JobStatus::Canceled);
    // A file that appears after the stop is not written by the job.
    place(&input, "c.json", &lines(300, 310));
    assert_eq!(count(&engine, "SELECT count(*) FROM s").await, 310);
    assert_eq!(count(&engine, "SELECT count(*) FROM out").await, 150);
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_stop_the_job_with_file_and_line_or_are_skipped_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let mut text = lines(0, 3);
    text.push_str("{\"id\": 3, \"v\": \n");
    text.push_str(&lines(4, 6));
    place(&input, "a.json", &text);
    let engine = engine(dir.path()).await;
    for (name, ignore) in [("strict", false), ("lenient", true)] {
        engine
            .sql(&format!(
                "CREATE TABLE {name} (id BIGINT, v BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', \
                 'format' = 'json', 'json.ignore-parse-errors' = '{ignore}')",
                input.display()
            ))
            .await
            .unwrap();
    }
    let err = engine.sql("SELECT count(*) FROM strict").await.unwrap_err().to_string();
    assert!(err.contains("a.json, line 4, column"), "{err}");
    // Nothing of the file was ingested: a failed ingestion commits nothing.
    engine
        .sql("CREATE TABLE sink (id BIGINT) WITH ('connector' = 'blackhole')")
        .await
        .unwrap();
    engine.sql("INSERT INTO sink SELECT id FROM strict").await.unwrap();
    let job = engine.job(&engine.jobs()[0].id).unwrap();
    let info = job.wait().await;
    assert_eq!(info.status, JobStatus::Failed);
    assert!(info.error.unwrap().contains("line 4"));

    assert_eq!(count(&engine, "SELECT count(*) FROM lenient").await, 5);
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_tables_over_a_stream_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    place(&input, "a.json", &lines(0, 10));
    let engine = engine(dir.path()).await;
    monitored_source(&engine, &input).await;
    engine
        .sql("CREATE VIEW evens AS SELECT * FROM s WHERE id % 2 = 0")
        .await
        .unwrap();
    engine
        .sql("CREATE MATERIALIZED TABLE live FRESHNESS = INTERVAL '1' SECOND AS SELECT count(*) AS n, sum(v) AS total FROM s")
        .await
        .unwrap();
    engine
        .sql("CREATE MATERIALIZED TABLE hourly FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = FULL AS SELECT count(*) AS n FROM evens")
        .await
        .unwrap();
    assert_eq!(count(&engine, "SELECT n FROM live").await, 10);
    assert_eq!(count(&engine, "SELECT n FROM hourly").await, 5);

    // The source is ingested in the background; the continuous table follows its commits.
    let table = engine.table("s").unwrap();
    let mut versions = table.subscribe();
    let before = table.snapshot().version();
    place(&input, "b.json", &lines(10, 30));
    versions.wait_for(|v| *v > before).await.unwrap();
    engine.wait_for_refreshes().await;
    assert_eq!(count(&engine, "SELECT n FROM live").await, 30);
    // A scheduled table reads what has arrived when it refreshes (through the view too).
    engine.sql("ALTER MATERIALIZED TABLE hourly REFRESH").await.unwrap();
    assert_eq!(count(&engine, "SELECT n FROM hourly").await, 15);
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_resumes_after_a_restart_without_losing_or_repeating_rows() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    place(&input, "a.json", &lines(0, 50));
    let engine = engine(dir.path()).await;
    monitored_source(&engine, &input).await;
    engine.sql("CREATE TABLE out (id BIGINT, v BIGINT)").await.unwrap();
    engine.sql("INSERT INTO out SELECT id, v FROM s").await.unwrap();
    let id = engine.jobs()[0].id.clone();
    engine
        .job(&id)
        .unwrap()
        .subscribe()
        .wait_for(|i| i.rows_out == 50)
        .await
        .unwrap();
    engine.close().await;

    // Rows that arrive while the engine is closed are read when it opens again.
    place(&input, "b.json", &lines(50, 80));
    let engine = self::engine(dir.path()).await;
    let job = engine.job(&id).expect("the job is resumed under its id");
    assert_eq!(job.info().status, JobStatus::Running);
    job.subscribe().wait_for(|i| i.rows_out == 30).await.unwrap();
    assert_eq!(count(&engine, "SELECT count(*) FROM out").await, 80);
    assert_eq!(count(&engine, "SELECT count(DISTINCT id) FROM out").await, 80);

    // A stopped job stays stopped.
    engine.sql(&format!("STOP JOB '{id}'")).await.unwrap();
    engine.close().await;
    let engine = self::engine(dir.path()).await;
    assert!(engine.job(&id).is_none());
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_set_is_one_job_writing_every_sink_and_resumes_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    place(&input, "a.json", &lines(0, 40));
    let engine = engine(dir.path()).await;
    monitored_source(&engine, &input).await;
    engine.sql("CREATE TABLE evens (id BIGINT, v BIGINT)").await.unwrap();
    engine
        .sql("CREATE TABLE totals (parity BIGINT, n BIGINT, PRIMARY KEY (parity))")
        .await
        .unwrap();
    engine
        .sql(
            "EXECUTE STATEMENT SET BEGIN \
               INSERT INTO evens SELECT id, v FROM s WHERE id % 2 = 0; \
               INSERT INTO totals SELECT id % 2, count(*) FROM s GROUP BY id % 2; \
             END",
        )
        .await
        .unwrap();
    let jobs = engine.jobs();
    assert_eq!(jobs.len(), 1, "the statement set runs as one job");
    let id = jobs[0].id.clone();
    assert!(
        jobs[0].statement.starts_with("EXECUTE STATEMENT SET"),
        "{}",
        jobs[0].statement
    );
    let totals = |engine: &Engine| {
        let engine = engine.clone();
        async move { count(&engine, "SELECT sum(n) FROM totals").await }
    };
    // Each epoch reads the input once for both inserts: 40 rows in, 20 + 2 out.
    let job = engine.job(&id).unwrap();
    let info = job.subscribe().wait_for(|i| i.rows_out >= 22).await.unwrap().clone();
    assert_eq!(info.rows_in, 40);
    assert_eq!(count(&engine, "SELECT count(*) FROM evens").await, 20);
    assert_eq!(totals(&engine).await, 40);
    engine.close().await;

    place(&input, "b.json", &lines(40, 70));
    let engine = self::engine(dir.path()).await;
    let job = engine
        .job(&id)
        .expect("the statement set's job is resumed under its id");
    // 15 new evens, and the two parities' counts updated (a retraction and an insertion each).
    job.subscribe().wait_for(|i| i.rows_out >= 19).await.unwrap();
    assert_eq!(count(&engine, "SELECT count(*) FROM evens").await, 35);
    assert_eq!(count(&engine, "SELECT count(DISTINCT id) FROM evens").await, 35);
    assert_eq!(totals(&engine).await, 70);
    assert_eq!(count(&engine, "SELECT count(*) FROM totals").await, 2);
    engine.close().await;
}

/// The checkpoint files of a job (`_freshet/jobs/<id>/state/`).
fn job_checkpoints(dir: &std::path::Path, id: &str) -> Vec<std::path::PathBuf> {
    let state = dir.join("data/_freshet/jobs").join(id).join("state");
    match std::fs::read_dir(state) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_job_restores_its_state_from_a_checkpoint_instead_of_reading_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    place(&input, "a.json", &lines(0, 40));
    let engine = engine(dir.path()).await;
    monitored_source(&engine, &input).await;
    engine.sql("CREATE TABLE evens (id BIGINT, v BIGINT)").await.unwrap();
    engine
        .sql("CREATE TABLE totals (k BIGINT, n BIGINT, total BIGINT, PRIMARY KEY (k))")
        .await
        .unwrap();
    engine
        .sql(
            "EXECUTE STATEMENT SET BEGIN \
               INSERT INTO evens SELECT id, v FROM s WHERE id % 2 = 0; \
               INSERT INTO totals SELECT id % 3, count(*), sum(v) FROM s GROUP BY id % 3; \
             END",
        )
        .await
        .unwrap();
    let id = engine.jobs()[0].id.clone();
    let job = engine.job(&id).unwrap();
    wait_for_rows(&job, 40, |i| i.rows_in).await;
    // The state's first epoch is checkpointed; then whenever the changes since reach eight times
    // the state's three groups.
    place(&input, "b.json", &lines(40, 100));
    wait_for_rows(&job, 100, |i| i.rows_in).await;
    let checkpointed = job
        .subscribe()
        .wait_for(|i| i.checkpoint.is_some())
        .await
        .unwrap()
        .clone();
    let named = checkpointed.checkpoint.unwrap().0;
    assert!(named > 0);
    // The files of its checkpoint (a whole state, and deltas after it) and no others.
    let on_disk: u64 = job_checkpoints(dir.path(), &id)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(on_disk, named, "checkpoint files no progress names are removed");
    // Five more rows are too few for another checkpoint: a restore replays them.
    place(&input, "b2.json", &lines(100, 105));
    wait_for_rows(&job, 105, |i| i.rows_in).await;
    let info = job.info();
    assert!(
        info.restart_inputs["s"] < info.inputs["s"],
        "the checkpoint is older than the input processed: {info:?}"
    );
    engine.close().await;

    let expect = |engine: Engine, rows: i64| async move {
        assert_eq!(count(&engine, "SELECT sum(n) FROM totals").await, rows);
        assert_eq!(
            count(&engine, "SELECT sum(total) FROM totals").await,
            (0..rows).map(|i| i * 10).sum::<i64>()
        );
        assert_eq!(count(&engine, "SELECT count(*) FROM totals").await, 3);
        assert_eq!(
            count(&engine, "SELECT count(DISTINCT id) FROM evens").await,
            (rows + 1) / 2
        );
        assert_eq!(count(&engine, "SELECT count(*) FROM evens").await, (rows + 1) / 2);
    };
    place(&input, "c.json", &lines(105, 130));
    let engine = self::engine(dir.path()).await;
    let job = engine.job(&id).expect("resumed");
    wait_for_rows(&job, 25, |i| i.rows_in).await;
    let recovery = job.info().recovery.unwrap();
    // The aggregate comes back from its checkpoint and the rows since; the filter has no state
    // to rebuild.
    assert!(
        recovery.contains("restored from its checkpoint") && recovery.contains("5 input changes replayed"),
        "{recovery}"
    );
    assert!(recovery.contains("no operator state to rebuild"), "{recovery}");
    assert!(!recovery.contains("rebuilt from the inputs"), "{recovery}");
    let shown = engine
        .sql(&format!("SELECT recovery FROM freshet.jobs WHERE job_id = '{id}'"))
        .await
        .unwrap();
    assert_eq!(shown[0].num_rows(), 1);
    expect(engine.clone(), 130).await;
    engine.close().await;

    // A damaged checkpoint is not restored: the state is rebuilt from the inputs, and right.
    for file in job_checkpoints(dir.path(), &id) {
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
    }
    place(&input, "d.json", &lines(130, 140));
    let engine = self::engine(dir.path()).await;
    let job = engine.job(&id).expect("resumed");
    wait_for_rows(&job, 10, |i| i.rows_in).await;
    let recovery = job.info().recovery.unwrap();
    assert!(recovery.contains("rebuilt from the inputs (130 rows)"), "{recovery}");
    expect(engine.clone(), 140).await;
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_state_outgrows_the_memory_limit_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .location(dir.path().join("data").display().to_string())
        .memory_limit(2 << 20)
        .open()
        .await
        .unwrap();
    engine
        .sql(
            "CREATE TABLE g (id BIGINT, v INT) WITH ('connector' = 'datagen', 'rows-per-second' = '100000000', \
             'number-of-rows' = '300000', 'fields.id.kind' = 'sequence', 'fields.id.start' = '1', \
             'fields.id.end' = '300000')",
        )
        .await
        .unwrap();
    engine
        .sql("CREATE TABLE per_id (id BIGINT PRIMARY KEY, n BIGINT)")
        .await
        .unwrap();
    engine.sql("SET 'table.dml-sync' = 'true'").await.unwrap();
    let result = engine
        .sql("INSERT INTO per_id SELECT id, count(*) FROM g GROUP BY id")
        .await;
    let err = match result {
        Ok(_) => panic!("{:?}", engine.jobs()),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("operator state needs"), "{err}");
    assert_eq!(engine.jobs()[0].status, JobStatus::Failed);
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_events_exported_as_json_lines_read_back_as_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let options = [
        ("events.num", "5000".to_string()),
        ("event.base-time", "2015-07-15 00:00:00".to_string()),
        ("seed", "3".to_string()),
    ];
    let written = freshet::nexmark::export_json_lines(&options, &dir.path().join("json"))
        .await
        .unwrap();
    assert_eq!(written, [100, 300, 4600]);
    let engine = engine(dir.path()).await;
    engine
        .sql(&freshet::nexmark::generator_ddl("generated", &options))
        .await
        .unwrap();
    for view in freshet::nexmark::views_ddl("generated") {
        engine.sql(&view).await.unwrap();
    }
    for (kind, columns) in [
        ("person", freshet::nexmark::PERSON_COLUMNS),
        ("auction", freshet::nexmark::AUCTION_COLUMNS),
        ("bid", freshet::nexmark::BID_COLUMNS),
    ] {
        engine
            .sql(&format!(
                "CREATE TABLE {kind}_file ({columns}, WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND) \
                 WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json')",
                dir.path().join("json").join(kind).display()
            ))
            .await
            .unwrap();
    }
    // The generator's rows are made again whenever they are read: its table lists where they
    // start and writes no data file.
    assert_views_equal_the_files(&engine).await;
    let table = engine.table("generated").unwrap();
    let manifest = table.snapshot().manifest().clone();
    assert_eq!(manifest.live_rows(), 5000);
    assert!(
        manifest.files.iter().all(|f| f.generated.is_some() && f.bytes == 0),
        "{:?}",
        manifest.files
    );
    let parquet = walkdir(&dir.path().join("data").join("tables").join(table.id()))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    assert_eq!(parquet, 0);
    // A volatile computed column makes rows that cannot be made again: they are written.
    let volatile =
        freshet::nexmark::generator_ddl("volatile", &options).replace("WATERMARK FOR", "r AS random(), WATERMARK FOR");
    engine.sql(&volatile).await.unwrap();
    assert_eq!(count(&engine, "SELECT count(*) FROM volatile").await, 5000);
    let files = engine.table("volatile").unwrap().snapshot().manifest().files.clone();
    assert!(files.iter().all(|f| f.generated.is_none()), "{files:?}");
    // Opened again, the table's generator is registered with it before anything reads it.
    engine.close().await;
    let engine = self::engine(dir.path()).await;
    assert_views_equal_the_files(&engine).await;
    engine.close().await;
}

/// Every row of the JSON-lines files is a row of the generator's view, and as many.
async fn assert_views_equal_the_files(engine: &Engine) {
    for kind in ["person", "auction", "bid"] {
        let differ = format!(
            "SELECT count(*) FROM ((SELECT * FROM {kind} EXCEPT ALL SELECT * FROM {kind}_file) \
             UNION ALL (SELECT * FROM {kind}_file EXCEPT ALL SELECT * FROM {kind}))"
        );
        assert_eq!(count(engine, &differ).await, 0, "{kind}");
    }
}

/// Every file under `dir`, recursively.
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walkdir(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// `SET 'table.exec.state.ttl'`: a job's aggregate forgets the groups no row has touched for
/// that long (on the engine's clock); a later row of such a group starts it anew, as in Flink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_ttl_forgets_idle_groups_of_a_job() {
    let ClockedStream {
        _dir,
        input,
        clock,
        engine,
    } = clocked_stream().await;
    engine
        .sql("CREATE TABLE counts (id BIGINT, n BIGINT, PRIMARY KEY (id))")
        .await
        .unwrap();
    engine.sql("SET 'table.exec.state.ttl' = '1 h'").await.unwrap();
    engine
        .sql("INSERT INTO counts SELECT id, count(*) FROM s GROUP BY id")
        .await
        .unwrap();
    let job = engine.job(&engine.jobs()[0].id).unwrap();
    let written = |n: u64| wait_for_rows(&job, n, |i| i.rows_out);
    let n_of = |id: i64| {
        let engine = engine.clone();
        async move { count(&engine, &format!("SELECT n FROM counts WHERE id = {id}")).await }
    };
    place(&input, "a.json", &lines(1, 3));
    written(2).await;
    // Two hours later, a row of another group: the idle groups 1 and 2 are forgotten after it.
    clock.advance(std::time::Duration::from_secs(2 * 3600));
    place(&input, "b.json", &lines(3, 4));
    written(3).await;
    // Group 1 again: it starts anew (its count is 1, not 2), and the table is upserted.
    place(&input, "c.json", &lines(1, 2));
    written(4).await;
    assert_eq!(n_of(1).await, 1);
    assert_eq!(n_of(2).await, 1);
    assert_eq!(n_of(3).await, 1);
    let state = job_state_rows(&engine).await;
    assert_eq!(state, 2, "groups 3 and 1 are kept; 2 was forgotten");
    engine.close().await;
}

/// A job whose aggregate forgot idle groups comes back from its checkpoint (a whole state that
/// still has them, then a delta) without them: a row of such a group replayed after the restore
/// starts it anew, as it did before the job stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_job_has_forgotten_what_its_state_ttl_forgot() {
    let ClockedStream {
        _dir,
        input,
        clock,
        engine,
    } = clocked_stream().await;
    engine
        .sql("CREATE TABLE counts (id BIGINT, n BIGINT, PRIMARY KEY (id))")
        .await
        .unwrap();
    engine.sql("SET 'table.exec.state.ttl' = '1 h'").await.unwrap();
    // The first rows are there when the job starts: its first checkpoint holds their groups.
    place(&input, "a.json", &lines(1, 3));
    engine
        .sql("INSERT INTO counts SELECT id, count(*) FROM s GROUP BY id")
        .await
        .unwrap();
    let id = engine.jobs()[0].id.clone();
    let job = engine.job(&id).unwrap();
    let n_of = |engine: &Engine, id: i64| {
        let engine = engine.clone();
        async move { count(&engine, &format!("SELECT n FROM counts WHERE id = {id}")).await }
    };
    wait_for_rows(&job, 2, |i| i.rows_out).await;
    // Two hours later a row of group 3; groups 1 and 2 are forgotten, and the checkpoint after
    // it is a delta over the first (which holds them).
    clock.advance(std::time::Duration::from_secs(2 * 3600));
    place(&input, "b.json", &lines(3, 4));
    let now = freshet::Clock::now_ms(&clock);
    job.subscribe()
        .wait_for(|i| i.rows_out >= 3 && i.checkpoint.is_some_and(|(_, at)| at == now))
        .await
        .unwrap();
    assert_eq!(job_checkpoints(_dir.path(), &id).len(), 2, "a whole state and a delta");
    // Group 1 again, too soon for another checkpoint: it starts anew.
    place(&input, "c.json", &lines(1, 2));
    wait_for_rows(&job, 4, |i| i.rows_out).await;
    assert_eq!(n_of(&engine, 1).await, 1);
    engine.close().await;

    // The restore replays that row over the chain, and counts it once.
    let engine = clocked_engine(_dir.path(), &clock).await;
    let job = engine.job(&id).expect("resumed");
    place(&input, "d.json", &lines(1, 2));
    wait_for_rows(&job, 1, |i| i.rows_out).await;
    let recovery = job.info().recovery.unwrap_or_default();
    assert!(
        recovery.contains("restored from its checkpoint") && recovery.contains("1 input changes replayed"),
        "{recovery}"
    );
    assert_eq!(
        n_of(&engine, 1).await,
        2,
        "group 1: the row before the restart and this one"
    );
    assert_eq!(job_state_rows(&engine).await, 2, "groups 3 and 1");
    engine.close().await;
}

/// An engine on a manual clock with the monitored sources `l` and `r` (in `dir/l`, `dir/r`),
/// the table `pairs`, and a state TTL of an hour.
async fn ttl_join_tables(dir: &std::path::Path, clock: &freshet::ManualClock) -> Engine {
    let engine = clocked_engine(dir, clock).await;
    for name in ["l", "r"] {
        std::fs::create_dir(dir.join(name)).unwrap();
        engine
            .sql(&format!(
                "CREATE TABLE {name} (id BIGINT, v BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', \
                 'format' = 'json', 'source.monitor-interval' = '20 ms')",
                dir.join(name).display()
            ))
            .await
            .unwrap();
    }
    engine
        .sql("CREATE TABLE pairs (id BIGINT, lv BIGINT, rv BIGINT)")
        .await
        .unwrap();
    engine.sql("SET 'table.exec.state.ttl' = '1 h'").await.unwrap();
    engine
}

/// `SET 'table.exec.state.ttl'`: a regular join over streams forgets the rows it has kept for
/// longer, on both sides; a later row no longer matches them, fresh rows do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_ttl_forgets_old_rows_of_a_join() {
    let dir = tempfile::tempdir().unwrap();
    let clock = freshet::ManualClock::new(1_795_132_800_000);
    let engine = ttl_join_tables(dir.path(), &clock).await;
    engine
        .sql("INSERT INTO pairs SELECT l.id, l.v, r.v FROM l JOIN r ON l.id = r.id")
        .await
        .unwrap();
    let job = engine.job(&engine.jobs()[0].id).unwrap();
    let read = |n: u64| wait_for_rows(&job, n, |i| i.rows_in);
    place(&dir.path().join("l"), "a.json", &lines(1, 3));
    read(2).await;
    place(&dir.path().join("r"), "a.json", &lines(1, 2));
    read(3).await;
    // Two hours later: the rows kept so far are forgotten at the next epoch.
    clock.advance(std::time::Duration::from_secs(2 * 3600));
    place(&dir.path().join("r"), "b.json", &lines(2, 3));
    read(4).await;
    place(&dir.path().join("l"), "b.json", &lines(2, 3));
    read(5).await;
    let pairs = crate::incremental::multiset(&engine.sql("SELECT * FROM pairs").await.unwrap());
    // (1, 10, 10) before; (2, 20, 20) from the fresh rows of both sides; the old left row 2
    // no longer met the right row 2.
    assert_eq!(pairs.len(), 2, "{pairs:?}");
    let explain = engine.sql("SHOW JOBS").await.unwrap();
    let explain = freshet::datafusion::arrow::util::pretty::pretty_format_batches(&explain)
        .unwrap()
        .to_string();
    let state = job_state_rows(&engine).await;
    assert_eq!(state, 2, "the fresh rows of both sides are kept: {explain}");
    engine.close().await;
}

/// A regular join with a state TTL restored from its checkpoint (a whole state and a delta)
/// keeps each row for the rest of its TTL, counted from when it came, not from the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_join_keeps_its_rows_for_the_rest_of_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let clock = freshet::ManualClock::new(1_795_132_800_000);
    let engine = ttl_join_tables(dir.path(), &clock).await;
    // The first rows are there when the job starts: its first checkpoint holds them.
    place(&dir.path().join("l"), "a.json", &lines(1, 3));
    engine
        .sql("INSERT INTO pairs SELECT l.id, l.v, r.v FROM l JOIN r ON l.id = r.id")
        .await
        .unwrap();
    let id = engine.jobs()[0].id.clone();
    let job = engine.job(&id).unwrap();
    let minutes = |n: u64| clock.advance(std::time::Duration::from_secs(n * 60));
    let checkpointed = |rows: u64| {
        let now = freshet::Clock::now_ms(&clock);
        let mut info = job.subscribe();
        async move {
            info.wait_for(|i| i.rows_in >= rows && i.checkpoint.is_some_and(|(_, at)| at == now))
                .await
                .unwrap();
        }
    };
    checkpointed(2).await;
    // Left row 3 twenty minutes later, checkpointed as a delta over the first checkpoint.
    minutes(20);
    place(&dir.path().join("l"), "b.json", &lines(3, 4));
    checkpointed(3).await;
    assert_eq!(job_checkpoints(dir.path(), &id).len(), 2, "a whole state and a delta");
    engine.close().await;

    // Forty minutes after the first rows: all three left rows still match.
    minutes(20);
    let engine = clocked_engine(dir.path(), &clock).await;
    let job = engine.job(&id).expect("resumed");
    place(&dir.path().join("r"), "a.json", &lines(1, 4));
    wait_for_rows(&job, 3, |i| i.rows_in).await;
    let pairs = |engine: Engine| async move {
        let mut ids: Vec<i64> = engine
            .sql("SELECT id FROM pairs ORDER BY id")
            .await
            .unwrap()
            .iter()
            .flat_map(|b| {
                let ids = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<freshet::datafusion::arrow::array::Int64Array>()
                    .unwrap();
                ids.values().to_vec()
            })
            .collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(pairs(engine.clone()).await, [1, 2, 3]);
    // Seventy minutes after the first rows: those are forgotten, row 3 (fifty minutes old) not.
    minutes(30);
    place(&dir.path().join("r"), "b.json", &lines(1, 4));
    wait_for_rows(&job, 6, |i| i.rows_in).await;
    assert_eq!(pairs(engine.clone()).await, [1, 2, 3, 3]);
    engine.close().await;
}

/// `SET 'table.exec.state.ttl'` bounds a job's top-N per group too (Nexmark q19's shape): the
/// groups idle for longer are forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_ttl_forgets_idle_groups_of_a_top_n() {
    let ClockedStream {
        _dir,
        input,
        clock,
        engine,
    } = clocked_stream().await;
    engine
        .sql("CREATE TABLE best (id BIGINT, v BIGINT, rn BIGINT, PRIMARY KEY (id, rn))")
        .await
        .unwrap();
    engine.sql("SET 'table.exec.state.ttl' = '1 h'").await.unwrap();
    engine
        .sql(
            "INSERT INTO best SELECT * FROM (SELECT id, v, ROW_NUMBER() OVER (PARTITION BY id ORDER BY v DESC) AS rn \
             FROM s) WHERE rn <= 2",
        )
        .await
        .unwrap();
    let job = engine.job(&engine.jobs()[0].id).unwrap();
    let read = |n: u64| wait_for_rows(&job, n, |i| i.rows_in);
    place(&input, "a.json", &lines(1, 3));
    read(2).await;
    clock.advance(std::time::Duration::from_secs(2 * 3600));
    place(&input, "b.json", &lines(3, 4));
    read(3).await;
    place(&input, "c.json", &lines(1, 2));
    read(4).await;
    let state = job_state_rows(&engine).await;
    // Groups 3 and 1 (started anew, one row) are kept; group 2 was forgotten.
    assert_eq!(state, 2);
    engine.close().await;
}

/// A top-N over a stream's rows, which are only appended, keeps only the rows at its ranks
/// (a row below them can never rise): its state stays at groups × n however many rows come,
/// and the job writes what the query gives in batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_n_over_a_stream_keeps_only_its_top_rows() {
    let ClockedStream {
        _dir, input, engine, ..
    } = clocked_stream().await;
    engine
        .sql("CREATE TABLE best (g BIGINT, v BIGINT, rn BIGINT, PRIMARY KEY (g, rn))")
        .await
        .unwrap();
    let query = "SELECT * FROM (SELECT id % 5 AS g, v, ROW_NUMBER() OVER (PARTITION BY id % 5 ORDER BY v DESC, id) \
                 AS rn FROM s) WHERE rn <= 2";
    engine.sql(&format!("INSERT INTO best {query}")).await.unwrap();
    let job = engine.job(&engine.jobs()[0].id).unwrap();
    // Values rise and fall from file to file, so the top rows change now and then.
    let mut expected_rows = 0;
    for (file, (from, to)) in [(0, 200), (200, 300), (300, 600), (600, 650)].into_iter().enumerate() {
        let text: String = (from..to)
            .map(|i: i64| format!("{{\"id\": {i}, \"v\": {}}}\n", (i * 7919) % 1000))
            .collect();
        place(&input, &format!("{file}.json"), &text);
        expected_rows += (to - from) as u64;
        wait_for_rows(&job, expected_rows, |i| i.rows_in).await;
    }
    let state = job_state_rows(&engine).await;
    assert!(state <= 10, "5 groups of 2 rows, not every row: {state}");
    let got = crate::incremental::multiset(&engine.sql("SELECT g, v, rn FROM best").await.unwrap());
    let want = crate::incremental::multiset(&engine.sql(query).await.unwrap());
    assert_eq!(got, want);
    assert_eq!(got.len(), 10);
    engine.close().await;
}

/// `Engine::subscribe`: the rows at the start, then each version's consolidated changes in
/// commit order, deletions first, as they commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_follows_commits() {
    use freshet::datafusion::arrow::array::{AsArray, RecordBatch};
    use freshet::datafusion::arrow::datatypes::Int64Type;
    use futures::StreamExt;

    let engine = Engine::builder().location("memory://").open().await.unwrap();
    engine.sql("CREATE TABLE s (id BIGINT, v BIGINT)").await.unwrap();
    engine.sql("INSERT INTO s VALUES (1, 10), (2, 20)").await.unwrap();
    let mut stream = engine.subscribe("s", true).await.unwrap();
    let rows = |batch: &RecordBatch| -> Vec<[i64; 4]> {
        (0..batch.num_rows())
            .map(|r| std::array::from_fn(|c| batch.column(c).as_primitive::<Int64Type>().value(r)))
            .collect()
    };
    let snapshot = stream.next().await.unwrap().unwrap();
    let mut got = rows(&snapshot);
    got.sort();
    assert_eq!(got, [[2, 1, 1, 10], [2, 1, 2, 20]]);
    engine.sql("UPDATE s SET v = 11 WHERE id = 1").await.unwrap();
    engine.sql("DELETE FROM s WHERE id = 2").await.unwrap();
    assert_eq!(
        rows(&stream.next().await.unwrap().unwrap()),
        [[3, -1, 1, 10], [3, 1, 1, 11]]
    );
    assert_eq!(rows(&stream.next().await.unwrap().unwrap()), [[4, -1, 2, 20]]);
    // Without the snapshot, only what commits after.
    let mut later = engine.subscribe("s", false).await.unwrap();
    engine.sql("INSERT INTO s VALUES (3, 30)").await.unwrap();
    assert_eq!(rows(&later.next().await.unwrap().unwrap()), [[5, 1, 3, 30]]);
}
