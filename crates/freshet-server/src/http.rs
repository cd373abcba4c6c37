//! HTTP: health and readiness, SQL over JSON, and Prometheus metrics.

mod metrics;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use freshet::datafusion::arrow::array::RecordBatch;
use freshet::datafusion::arrow::json::ArrayWriter;
use freshet::{Engine, FreshetError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::sqlstate;
use crate::{Activity, ServerError};

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    engine: Engine,
    activity: Arc<Activity>,
}

impl AppState {
    pub(crate) fn new(engine: Engine, activity: Arc<Activity>) -> Result<Self, ServerError> {
        Ok(Self { engine, activity })
    }
}

/// The HTTP routes.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::render))
        .route("/api/v1/sql", post(run_sql))
        .route("/api/v1/tables/{name}/changes", get(subscribe))
        .with_state(state)
}

/// `{"status": "ok"}`.
#[derive(Serialize)]
struct Health {
    status: &'static str,
}

async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready when the engine answers a query.
async fn ready(State(state): State<AppState>) -> Response {
    match state.engine.sql("SELECT 1").await {
        Ok(_) => Json(Health { status: "ready" }).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A request to run SQL.
#[derive(Deserialize)]
struct SqlRequest {
    /// One or more statements; the rows of the last are returned.
    sql: String,
}

/// The rows of the last statement.
#[derive(Serialize)]
struct SqlResponse {
    columns: Vec<String>,
    rows: serde_json::Value,
}

async fn run_sql(State(state): State<AppState>, Json(request): Json<SqlRequest>) -> Response {
    let _running = state.activity.start();
    match state.engine.sql(&request.sql).await {
        Ok(batches) => match to_json(&batches) {
            Ok(response) => Json(response).into_response(),
            Err(e) => ApiError::from(e).into_response(),
        },
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn to_json(batches: &[RecordBatch]) -> Result<SqlResponse, FreshetError> {
    let columns = batches
        .first()
        .map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect())
        .unwrap_or_default();
    let mut writer = ArrayWriter::new(Vec::new());
    for batch in batches {
        writer
            .write(batch)
            .map_err(|e| FreshetError::Internal(format!("rows as JSON: {e}")))?;
    }
    writer
        .finish()
        .map_err(|e| FreshetError::Internal(format!("rows as JSON: {e}")))?;
    let bytes = writer.into_inner();
    let rows = if bytes.is_empty() {
        serde_json::Value::Array(Vec::new())
    } else {
        serde_json::from_slice(&bytes).map_err(|e| FreshetError::Internal(format!("rows as JSON: {e}")))?
    };
    Ok(SqlResponse { columns, rows })
}

/// Whether a subscription starts with the table's rows.
#[derive(Deserialize)]
struct SubscribeParams {
    #[serde(default = "default_snapshot")]
    snapshot: bool,
}

fn default_snapshot() -> bool {
    true
}

/// A table's changes as server-sent events: one `changes` event per batch, its data the rows as
/// a JSON array with `_version` and `_weight`, until the client disconnects.
async fn subscribe(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<SubscribeParams>,
) -> Response {
    let stream = match state.engine.subscribe(&name, params.snapshot).await {
        Ok(stream) => stream,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let events = stream.map(|batch| {
        let batch = batch.map_err(FreshetError::from)?;
        let rows = to_json(std::slice::from_ref(&batch))?.rows;
        Ok::<_, FreshetError>(Event::default().event("changes").data(rows.to_string()))
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// An error as JSON: a stable code (the SQLSTATE), the domain and the message.
#[derive(Serialize)]
struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    code: &'static str,
    domain: String,
    message: String,
}

impl From<FreshetError> for ApiError {
    fn from(e: FreshetError) -> Self {
        let status = match e.domain() {
            freshet::ErrorDomain::User => StatusCode::BAD_REQUEST,
            freshet::ErrorDomain::External => StatusCode::SERVICE_UNAVAILABLE,
            freshet::ErrorDomain::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            code: sqlstate(&e),
            domain: e.domain().to_string(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}
