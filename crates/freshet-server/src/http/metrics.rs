//! Prometheus metrics at `/metrics`, read from the engine when scraped: each materialized
//! table's lag, last refresh and status, each job's rows, epochs and state, and the server's
//! running statements. Reading at scrape time keeps the engine free of a metrics dependency
//! and the figures exactly what `SHOW MATERIALIZED TABLES` and `SHOW JOBS` say.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
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
        "freshet_server_statements_running",
        "Statements running now, across protocols"
    );
}

pub(crate) async fn render(State(state): State<AppState>) -> Response {
    let tables = match state.engine.materialized_tables().await {
        Ok(tables) => tables,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let jobs = state.engine.jobs();
    let running = state.activity.running();
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
        gauge!("freshet_server_statements_running").set(running as f64);
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}
