//! Prometheus metrics at `/metrics`, read from the engine when scraped: each materialized
//! table's lag, status, refreshes (counts by outcome and algorithm, a duration histogram, rows
//! and changes processed) and state; each job's rows, epochs and state; each source's rows,
//! watermark and late rows; the engine's storage (commits, bytes read and written,
//! compactions, vacuum) and memory; the server's running statements. Reading at scrape time
//! keeps the engine free of a metrics dependency and the figures exactly what `SHOW
//! MATERIALIZED TABLES`, `SHOW JOBS` and `freshet.sources` say.
//!
//! The engine keeps the refresh durations as histogram buckets already; they are written out
//! in the exposition format here, after the series the `metrics` recorder renders.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;

use freshet::{REFRESH_DURATION_BUCKETS, RefreshStatistics};
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge, with_local_recorder};
use metrics_exporter_prometheus::PrometheusBuilder;

use super::{ApiError, AppState};

fn describe() {
    describe_gauge!(
        "freshet_materialized_table_data_lag_seconds",
        Unit::Seconds,
        "Now minus the commit time of the oldest input change the table does not reflect"
    );
    describe_gauge!(
        "freshet_materialized_table_freshness_seconds",
        Unit::Seconds,
        "The declared freshness"
    );
    describe_gauge!(
        "freshet_materialized_table_status",
        "1 for the table's status (ACTIVE, SUSPENDED, FAILED), by status"
    );
    describe_gauge!("freshet_materialized_table_version", "The table's current version");
    describe_gauge!(
        "freshet_materialized_table_last_refresh_duration_seconds",
        Unit::Seconds,
        "How long the last refresh took"
    );
    describe_gauge!(
        "freshet_materialized_table_last_refresh_rows",
        "Rows of the table after its last refresh"
    );
    describe_gauge!(
        "freshet_materialized_table_consecutive_failures",
        "Failed refreshes since the last successful one"
    );
    describe_counter!(
        "freshet_materialized_table_late_rows_total",
        "Rows dropped as later than the watermark"
    );
    describe_gauge!(
        "freshet_materialized_table_watermark_seconds",
        Unit::Seconds,
        "The event-time watermark"
    );
    describe_counter!(
        "freshet_materialized_table_refreshes_total",
        "Refresh attempts, by outcome (committed, skipped, failed)"
    );
    describe_counter!(
        "freshet_materialized_table_committed_refreshes_total",
        "Committed refreshes, by algorithm (incremental, full)"
    );
    describe_gauge!(
        "freshet_materialized_table_last_refresh_algorithm",
        "1 for the algorithm of the last committed refresh, by algorithm"
    );
    describe_counter!(
        "freshet_materialized_table_rows_written_total",
        "Rows refreshes wrote (inserted, plus deleted by incremental refreshes)"
    );
    describe_counter!(
        "freshet_materialized_table_input_changes_total",
        "Input change rows incremental refreshes processed"
    );
    describe_counter!(
        "freshet_materialized_table_corrected_rows_total",
        "Rows corrected because the table had drifted from its query (zero unless it had)"
    );
    describe_gauge!(
        "freshet_materialized_table_state_bytes",
        Unit::Bytes,
        "Bytes of the table's incremental operator state in memory"
    );
    describe_gauge!("freshet_job_running", "1 while the job runs, by status");
    describe_counter!("freshet_job_rows_in_total", "Rows the job has read");
    describe_counter!("freshet_job_rows_out_total", "Rows the job has written");
    describe_counter!("freshet_job_epochs_total", "Epochs the job has committed");
    describe_gauge!(
        "freshet_job_state_bytes",
        Unit::Bytes,
        "Bytes of the job's operator state"
    );
    describe_gauge!("freshet_job_state_rows", "Rows of the job's operator state");
    describe_gauge!(
        "freshet_source_rows",
        "Rows the source table holds (ingested, less retention)"
    );
    describe_gauge!(
        "freshet_source_version",
        "The source table's version (one per ingestion)"
    );
    describe_gauge!(
        "freshet_source_last_ingest_timestamp_seconds",
        Unit::Seconds,
        "When the source last committed an ingestion (Unix time)"
    );
    describe_gauge!(
        "freshet_source_watermark_seconds",
        Unit::Seconds,
        "The source's event-time watermark (Unix time)"
    );
    describe_counter!(
        "freshet_source_late_rows_total",
        "Rows dropped as later than the watermark"
    );
    describe_counter!("freshet_source_skipped_rows_total", "Rows skipped as malformed");
    describe_counter!("freshet_storage_commits_total", "Table versions committed");
    describe_counter!("freshet_storage_compactions_total", "Compactions committed");
    describe_counter!(
        "freshet_storage_read_bytes_total",
        Unit::Bytes,
        "Bytes read from the store"
    );
    describe_counter!("freshet_storage_reads_total", "Read requests to the store");
    describe_counter!(
        "freshet_storage_written_bytes_total",
        Unit::Bytes,
        "Bytes written to the store"
    );
    describe_counter!("freshet_storage_writes_total", "Write requests to the store");
    describe_counter!("freshet_storage_vacuumed_files_total", "Files VACUUM removed");
    describe_counter!(
        "freshet_storage_vacuumed_bytes_total",
        Unit::Bytes,
        "Bytes of the files VACUUM removed"
    );
    describe_gauge!(
        "freshet_engine_memory_reserved_bytes",
        Unit::Bytes,
        "Bytes queries and operator states hold in the engine's memory pool"
    );
    describe_gauge!(
        "freshet_server_statements_running",
        "Statements running now, across protocols"
    );
}

/// The refresh-duration histogram of each table, in the exposition format.
fn refresh_durations(tables: &[(String, RefreshStatistics)]) -> String {
    const NAME: &str = "freshet_materialized_table_refresh_duration_seconds";
    let mut out = String::new();
    if tables.is_empty() {
        return out;
    }
    let _ = writeln!(out, "# HELP {NAME} How long committed refreshes took");
    let _ = writeln!(out, "# TYPE {NAME} histogram");
    for (table, statistics) in tables {
        let table = label_value(table);
        let mut cumulative = 0;
        for (bound, count) in REFRESH_DURATION_BUCKETS.iter().zip(&statistics.duration_buckets) {
            cumulative += count;
            let _ = writeln!(out, "{NAME}_bucket{{table=\"{table}\",le=\"{bound}\"}} {cumulative}");
        }
        let total = statistics.committed_total();
        let _ = writeln!(out, "{NAME}_bucket{{table=\"{table}\",le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{NAME}_sum{{table=\"{table}\"}} {}",
            statistics.duration_sum_seconds
        );
        let _ = writeln!(out, "{NAME}_count{{table=\"{table}\"}} {total}");
    }
    out
}

/// A label value escaped as the exposition format wants it.
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub(crate) async fn render(State(state): State<AppState>) -> Response {
    let tables = match state.engine.materialized_tables().await {
        Ok(tables) => tables,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let jobs = state.engine.jobs();
    let sources = state.engine.sources();
    let storage = state.engine.storage_statistics();
    let running = state.activity.running();
    let refreshes: Vec<(String, RefreshStatistics)> = tables
        .iter()
        .map(|table| (table.name.clone(), state.engine.refresh_statistics(&table.name)))
        .collect();
    // A recorder per scrape: the series are exactly the objects that exist now.
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    with_local_recorder(&recorder, || {
        describe();
        for table in &tables {
            let name = table.name.clone();
            if let Some(lag) = table.data_lag_ms {
                gauge!("freshet_materialized_table_data_lag_seconds", "table" => name.clone()).set(lag as f64 / 1000.0);
            }
            gauge!("freshet_materialized_table_freshness_seconds", "table" => name.clone())
                .set(table.freshness.duration().as_secs_f64());
            gauge!("freshet_materialized_table_status", "table" => name.clone(), "status" => table.status.to_string())
                .set(1.0);
            gauge!("freshet_materialized_table_version", "table" => name.clone()).set(table.version as f64);
            if let Some(last) = &table.last_refresh {
                gauge!("freshet_materialized_table_last_refresh_duration_seconds", "table" => name.clone())
                    .set(last.duration_ms as f64 / 1000.0);
                gauge!("freshet_materialized_table_last_refresh_rows", "table" => name.clone()).set(last.rows as f64);
            }
            gauge!("freshet_materialized_table_consecutive_failures", "table" => name.clone())
                .set(f64::from(table.failures));
            if let Some(late) = table.late_rows {
                counter!("freshet_materialized_table_late_rows_total", "table" => name.clone()).absolute(late);
            }
            if let Some(watermark) = table.watermark_ms {
                gauge!("freshet_materialized_table_watermark_seconds", "table" => name.clone())
                    .set(watermark as f64 / 1000.0);
            }
            gauge!("freshet_materialized_table_state_bytes", "table" => name.clone())
                .set(state.engine.materialized_state_bytes(&name) as f64);
        }
        for (name, statistics) in &refreshes {
            for (outcome, count) in &statistics.attempts {
                counter!("freshet_materialized_table_refreshes_total", "table" => name.clone(), "outcome" => outcome.clone())
                    .absolute(*count);
            }
            for (algorithm, count) in &statistics.committed {
                counter!(
                    "freshet_materialized_table_committed_refreshes_total",
                    "table" => name.clone(),
                    "algorithm" => algorithm.clone()
                )
                .absolute(*count);
            }
            if let Some(algorithm) = &statistics.last_algorithm {
                gauge!(
                    "freshet_materialized_table_last_refresh_algorithm",
                    "table" => name.clone(),
                    "algorithm" => algorithm.clone()
                )
                .set(1.0);
            }
            counter!("freshet_materialized_table_rows_written_total", "table" => name.clone())
                .absolute(statistics.rows_written);
            counter!("freshet_materialized_table_input_changes_total", "table" => name.clone())
                .absolute(statistics.input_changes);
            counter!("freshet_materialized_table_corrected_rows_total", "table" => name.clone())
                .absolute(statistics.corrected_rows);
        }
        for job in &jobs {
            let id = job.id.clone();
            gauge!("freshet_job_running", "job" => id.clone(), "status" => job.status.as_str()).set(
                if matches!(job.status, freshet::JobStatus::Running) {
                    1.0
                } else {
                    0.0
                },
            );
            counter!("freshet_job_rows_in_total", "job" => id.clone()).absolute(job.rows_in);
            counter!("freshet_job_rows_out_total", "job" => id.clone()).absolute(job.rows_out);
            counter!("freshet_job_epochs_total", "job" => id.clone()).absolute(job.epochs);
            gauge!("freshet_job_state_bytes", "job" => id.clone()).set(job.state_bytes as f64);
            gauge!("freshet_job_state_rows", "job" => id.clone()).set(job.state_rows as f64);
        }
        for source in &sources {
            let name = source.name.clone();
            gauge!("freshet_source_rows", "source" => name.clone(), "connector" => source.connector.clone())
                .set(source.rows as f64);
            gauge!("freshet_source_version", "source" => name.clone()).set(source.version as f64);
            gauge!("freshet_source_last_ingest_timestamp_seconds", "source" => name.clone())
                .set(source.ingested_at_ms as f64 / 1000.0);
            // An ended source's watermark is +infinity, as Prometheus writes it.
            if let Some(watermark) = source.watermark_ms {
                let seconds = if watermark == i64::MAX {
                    f64::INFINITY
                } else {
                    watermark as f64 / 1000.0
                };
                gauge!("freshet_source_watermark_seconds", "source" => name.clone()).set(seconds);
            }
            counter!("freshet_source_late_rows_total", "source" => name.clone()).absolute(source.late_rows);
            counter!("freshet_source_skipped_rows_total", "source" => name.clone()).absolute(source.skipped_rows);
        }
        counter!("freshet_storage_commits_total").absolute(storage.commits);
        counter!("freshet_storage_compactions_total").absolute(storage.compactions);
        counter!("freshet_storage_read_bytes_total").absolute(storage.bytes_read);
        counter!("freshet_storage_reads_total").absolute(storage.reads);
        counter!("freshet_storage_written_bytes_total").absolute(storage.bytes_written);
        counter!("freshet_storage_writes_total").absolute(storage.writes);
        counter!("freshet_storage_vacuumed_files_total").absolute(storage.vacuumed_files);
        counter!("freshet_storage_vacuumed_bytes_total").absolute(storage.vacuumed_bytes);
        gauge!("freshet_engine_memory_reserved_bytes").set(state.engine.memory_reserved() as f64);
        gauge!("freshet_server_statements_running").set(running as f64);
    });
    let mut body = handle.render();
    body.push_str(&refresh_durations(&refreshes));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
