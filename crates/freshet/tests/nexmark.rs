//! Nexmark's queries as jobs over a bounded run of the generator: each job's output (written
//! into a Freshet table in place of the blackhole) equals DataFusion's batch evaluation of the
//! query over the same events. At the end of the bounded input the watermark passes every
//! window, so windowed queries are compared whole.

use freshet::Engine;
use freshet::datafusion::arrow::array::Int64Array;
use freshet::nexmark::{QUERIES, Query};

/// The sink's key for the queries whose result updates (a Freshet table takes an updating
/// result by key, as an upsert sink does).
fn sink_key(query: &str) -> Option<&'static str> {
    Some(match query {
        "q4" => "id",
        "q9" => "id",
        "q15" => "`day`",
        "q16" => "channel, `day`",
        "q17" => "auction, `day`",
        "q18" => "auction, bidder",
        "q19" => "auction, rank_number",
        _ => return None,
    })
}

/// The query's statements with the blackhole replaced by a Freshet table (keyed when its
/// result updates).
fn into_table(query: &Query) -> String {
    let sql = query.sql.replace("WITH ('connector' = 'blackhole')", "");
    match sink_key(query.name) {
        Some(key) => {
            let create = format!("CREATE TABLE nexmark_{} (", query.name);
            let at = sql.find(&create).expect("the sink's CREATE TABLE");
            let end = at + sql[at..].find(";\n").expect("the end of the CREATE TABLE");
            let close = sql[..end].rfind(')').expect("the column list's end");
            format!("{}, PRIMARY KEY ({key}) NOT ENFORCED{}", &sql[..close], &sql[close..])
        }
        None => sql,
    }
}

/// Queries whose result updates and has no key: a keyless table cannot take it. The job runs
/// into its blackhole, and a materialized table of the query is what is compared.
const UPDATING_WITHOUT_KEY: &[&str] = &["q6"];

/// (rows written, rows differing from the batch evaluation).
async fn differences(engine: &Engine, query: &Query) -> Result<(i64, i64), String> {
    let sink = start(engine, query).await?;
    compare(engine, query, &sink).await
}

/// Starts the query's job into a Freshet table (or, for an updating result without a key,
/// its blackhole beside a materialized table of the query); returns the table compared.
async fn start(engine: &Engine, query: &Query) -> Result<String, String> {
    let run = |sql: String| async move { engine.sql(&sql).await.map_err(|e| format!("{sql}: {e}")) };
    let keyless = UPDATING_WITHOUT_KEY.contains(&query.name);
    let statements = if keyless {
        query.sql.to_string()
    } else {
        into_table(query)
    };
    for statement in statements.split(";\n").filter(|s| !s.trim().is_empty()) {
        run(statement.to_string()).await?;
    }
    let mut sink = format!("nexmark_{}", query.name);
    if keyless {
        sink.push_str("_table");
        run(format!(
            "CREATE MATERIALIZED TABLE {sink} REFRESH_MODE = CONTINUOUS AS {}",
            query.select()
        ))
        .await?;
    }
    Ok(sink)
}

/// (rows of `sink`, rows differing from the batch evaluation of the query).
async fn compare(engine: &Engine, query: &Query, sink: &str) -> Result<(i64, i64), String> {
    let run = |sql: String| async move { engine.sql(&sql).await.map_err(|e| format!("{sql}: {e}")) };
    // The query's rows as the sink takes them: by position, cast to its columns' types.
    let fields = engine.table(sink).map_err(|e| e.to_string())?.schema();
    let names: Vec<String> = (0..fields.fields().len()).map(|i| format!("c{i}")).collect();
    let casts: Vec<String> = fields
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| format!("arrow_cast(c{i}, '{}')", f.data_type()))
        .collect();
    let select = format!(
        "SELECT {} FROM ({}) AS q({})",
        casts.join(", "),
        query.select(),
        names.join(", ")
    );
    let batches = run(format!(
        "SELECT (SELECT count(*) FROM {sink}) AS written, (SELECT count(*) FROM ( \
           (SELECT * FROM {sink} EXCEPT ALL ({select})) \
           UNION ALL (({select}) EXCEPT ALL SELECT * FROM {sink}))) AS differences"
    ))
    .await?;
    let value = |column: usize| {
        batches
            .first()
            .and_then(|b| {
                b.column(column)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .map(|a| a.value(0))
            })
            .ok_or_else(|| "no count".to_string())
    };
    Ok((value(0)?, value(1)?))
}

/// Nexmark's options for a test run: 20,000 events at 500 events/s of event time (40 s, several
/// windows of every size).
fn options() -> [(&'static str, String); 4] {
    [
        ("events.num", "20000".to_string()),
        ("first-event.rate", "500".to_string()),
        ("next-event.rate", "500".to_string()),
        ("event.base-time", "2015-07-15 00:00:00".to_string()),
    ]
}

/// Runs every supported query on `engine` (whose `person`, `auction` and `bid` exist) and
/// checks each against its batch evaluation.
async fn check_every_query(engine: &Engine) {
    engine.sql("SET 'table.dml-sync' = 'true'").await.unwrap();
    let mut failures = Vec::new();
    for query in QUERIES.iter().filter(|q| q.unsupported.is_none()) {
        match differences(engine, query).await {
            Ok((written, 0)) if written > 0 => {}
            Ok((written, differing)) => {
                failures.push(format!("{}: {written} rows written, {differing} differ", query.name))
            }
            Err(e) => failures.push(format!("{}: {e}", query.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// q5's two readers of one HOP window count share it, and it is computed per slide (each
/// bid counted once): its job's plan (EXPLAIN of its INSERT, once its sink exists) says so.
async fn assert_q5_counts_each_slide_once(engine: &Engine) {
    let q5 = QUERIES.iter().find(|q| q.name == "q5").expect("q5");
    let insert = &q5.sql[q5.sql.find("INSERT INTO").expect("q5's INSERT")..];
    let batches = engine.sql(&format!("EXPLAIN {insert}")).await.unwrap();
    let plan = freshet::datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert_eq!(plan.matches("Hop windows").count(), 1, "{plan}");
    assert!(plan.contains("Reuse of the shared"), "{plan}");
}

/// Over the `nexmark` connector, declared as Flink users declare it, with nexmark-flink's views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_over_the_generator_equals_its_batch_evaluation() {
    let engine = Engine::builder().location("memory://").open().await.unwrap();
    engine
        .sql(&freshet::nexmark::generator_ddl("datagen", &options()))
        .await
        .unwrap();
    for view in freshet::nexmark::views_ddl("datagen") {
        engine.sql(&view).await.unwrap();
    }
    check_every_query(&engine).await;
    assert_q5_counts_each_slide_once(&engine).await;
    engine.close().await;
}

/// Over three JSON-lines `filesystem` tables holding the same events (Freshet's export).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_over_json_lines_files_equals_its_batch_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let written = freshet::nexmark::export_json_lines(&options(), dir.path())
        .await
        .unwrap();
    assert_eq!(written.iter().sum::<u64>(), 20_000);
    let engine = Engine::builder().location("memory://").open().await.unwrap();
    for table in freshet::nexmark::files_ddl(dir.path()) {
        engine.sql(&table).await.unwrap();
    }
    check_every_query(&engine).await;
    assert_q5_counts_each_slide_once(&engine).await;
    engine.close().await;
}

/// Every query's job stopped halfway by the engine closing and resumed when it opens again:
/// each branch comes back from its checkpoint of operator state (or has none to rebuild), and
/// the output equals the batch evaluation, each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_resumed_from_its_checkpoint_halfway_equals_its_batch_evaluation() {
    resumed_halfway(false).await;
}

/// The same with every checkpoint lost: each stateful branch rebuilds its state from the
/// inputs, in epochs of 1,000 rows (all but the last building ones), and the output still
/// equals the batch evaluation, each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_rebuilt_from_its_inputs_halfway_equals_its_batch_evaluation() {
    resumed_halfway(true).await;
}

async fn resumed_halfway(lose_checkpoints: bool) {
    let dir = tempfile::tempdir().unwrap();
    // On a manual clock from the events' base time: the generator's events come due as it
    // passes (500 a second; the whole run is 40 s).
    let clock = freshet::ManualClock::new(1_436_918_400_000);
    let open = || async {
        Engine::builder()
            .location(dir.path().join("data").display().to_string())
            .clock(std::sync::Arc::new(clock.clone()))
            .target_partitions(2)
            .setting("materialized-table.state-build.epoch-rows", "1000")
            .unwrap()
            .open()
            .await
            .unwrap()
    };
    let engine = open().await;
    let mut options = options().to_vec();
    options.push(("rate.limited", "true".to_string()));
    engine
        .sql(&freshet::nexmark::generator_ddl("datagen", &options))
        .await
        .unwrap();
    for view in freshet::nexmark::views_ddl("datagen") {
        engine.sql(&view).await.unwrap();
    }
    // A checkpoint is due a second after the last: every step of the clock below writes one.
    engine
        .sql("SET 'execution.checkpointing.interval' = '1 s'")
        .await
        .unwrap();
    let queries: Vec<&Query> = QUERIES.iter().filter(|q| q.unsupported.is_none()).collect();
    let mut sinks = Vec::new();
    for query in &queries {
        sinks.push(start(&engine, query).await.unwrap());
    }
    // Every job follows the generator to the halfway point, a few seconds at a time.
    let table = engine.table("datagen").unwrap();
    for _ in 0..4 {
        clock.advance(std::time::Duration::from_secs(5));
        // A statement reading the source ingests every event due.
        engine.sql("SELECT count(*) FROM datagen").await.unwrap();
        let version = table.snapshot().version();
        for info in engine.jobs() {
            let job = engine.job(&info.id).unwrap();
            let info = job
                .subscribe()
                .wait_for(|i| i.inputs.get("datagen").is_some_and(|&v| v >= version) || i.status.is_terminal())
                .await
                .unwrap()
                .clone();
            assert_eq!(info.status, freshet::JobStatus::Running, "{info:?}");
        }
    }
    let ids: Vec<String> = engine.jobs().iter().map(|j| j.id.clone()).collect();
    engine.close().await;
    if lose_checkpoints {
        for id in &ids {
            let state = dir.path().join("data/_freshet/jobs").join(id).join("state");
            if state.exists() {
                std::fs::remove_dir_all(state).unwrap();
            }
        }
    }

    let engine = open().await;
    let mut failures = Vec::new();
    let mut rebuilt_branches = 0;
    for id in &ids {
        let job = engine.job(id).expect("every job resumes");
        let info = job
            .subscribe()
            .wait_for(|i| i.recovery.is_some() || i.status.is_terminal())
            .await
            .unwrap()
            .clone();
        let recovery = info.recovery.clone().unwrap_or_default();
        let restored = recovery.contains("restored from its checkpoint");
        let rebuilt = recovery.contains("rebuilt from the inputs");
        rebuilt_branches += recovery.matches("rebuilt from the inputs").count();
        if (if lose_checkpoints { restored } else { rebuilt }) || info.status != freshet::JobStatus::Running {
            failures.push(format!("{}: {recovery} {:?}", info.statement, info.error));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        rebuilt_branches > 0,
        lose_checkpoints,
        "branches rebuilt: {rebuilt_branches}"
    );
    clock.advance(std::time::Duration::from_secs(60));
    for id in &ids {
        let info = engine.job(id).unwrap().wait().await;
        assert_eq!(info.status, freshet::JobStatus::Finished, "{info:?}");
    }
    engine.wait_for_refreshes().await;
    for (query, sink) in queries.iter().zip(&sinks) {
        match compare(&engine, query, sink).await {
            Ok((written, 0)) if written > 0 => {}
            Ok((written, differing)) => {
                failures.push(format!("{}: {written} rows written, {differing} differ", query.name))
            }
            Err(e) => failures.push(format!("{}: {e}", query.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    engine.close().await;
}
