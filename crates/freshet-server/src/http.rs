//! HTTP: health and readiness, SQL over JSON, and Prometheus metrics.

pub mod api;
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
use utoipa::{IntoParams, ToSchema};

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
        .route("/api/v1/openapi.json", get(api::openapi))
        .route("/api/v1/sql", post(run_sql))
        .route(
            "/api/v1/materialized-tables",
            get(api::list_materialized_tables).post(api::create_materialized_table),
        )
        .route(
            "/api/v1/materialized-tables/{name}",
            get(api::get_materialized_table)
                .patch(api::alter_materialized_table)
                .delete(api::drop_materialized_table),
        )
        .route(
            "/api/v1/materialized-tables/{name}/suspend",
            post(api::suspend_materialized_table),
        )
        .route(
            "/api/v1/materialized-tables/{name}/resume",
            post(api::resume_materialized_table),
        )
        .route(
            "/api/v1/materialized-tables/{name}/refresh",
            post(api::refresh_materialized_table),
        )
        .route(
            "/api/v1/materialized-tables/{name}/refreshes",
            get(api::materialized_table_refreshes),
        )
        .route(
            "/api/v1/materialized-tables/{name}/explain",
            get(api::explain_materialized_table),
        )
        .route("/api/v1/jobs", get(api::list_jobs))
        .route("/api/v1/jobs/{id}/stop", post(api::stop_job))
        .route("/api/v1/tables", get(api::list_tables))
        .route("/api/v1/tables/{name}", get(api::get_table))
        .route("/api/v1/tables/{name}/versions", get(api::table_versions))
        .route("/api/v1/tables/{name}/changes", get(subscribe))
        .with_state(state)
}

/// `{"status": "ok"}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    status: &'static str,
}

/// The server answers.
#[utoipa::path(get, path = "/health", tag = "health", security(()), responses((status = 200, body = Health)))]
pub(crate) async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready when the engine answers a query.
#[utoipa::path(get, path = "/ready", tag = "health", security(()), responses((status = 200, body = Health), (status = "default", body = ApiError)))]
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    match state.engine.sql("SELECT 1").await {
        Ok(_) => Json(Health { status: "ready" }).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A request to run SQL.
#[derive(Deserialize, ToSchema)]
pub(crate) struct SqlRequest {
    /// One or more statements; the rows of the last are returned.
    sql: String,
}

/// The rows of the last statement.
#[derive(Serialize, ToSchema)]
pub(crate) struct SqlResponse {
    columns: Vec<String>,
    /// One object per row, by column name (NULLs left out).
    #[schema(value_type = Vec<Object>)]
    rows: serde_json::Value,
}

/// Runs one or more statements (separated by `;`) and returns the rows of the last.
#[utoipa::path(post, path = "/api/v1/sql", tag = "sql", request_body = SqlRequest,
    responses((status = 200, body = SqlResponse), (status = "default", body = ApiError)))]
pub(crate) async fn run_sql(State(state): State<AppState>, ApiJson(request): ApiJson<SqlRequest>) -> Response {
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
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SubscribeParams {
    /// The table's rows first (default true).
    #[serde(default = "default_snapshot")]
    snapshot: bool,
}

fn default_snapshot() -> bool {
    true
}

/// A table's changes as server-sent events: one `changes` event per batch, its data the rows as
/// a JSON array with `_version` and `_weight`, until the client disconnects.
#[utoipa::path(get, path = "/api/v1/tables/{name}/changes", tag = "tables",
    params(api::NameParam, SubscribeParams),
    responses((status = 200, content_type = "text/event-stream", body = api::ChangeEvent), (status = "default", body = ApiError)))]
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    ApiPath(api::NameParam { name }): ApiPath<api::NameParam>,
    ApiQuery(params): ApiQuery<SubscribeParams>,
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
#[derive(Serialize, ToSchema)]
pub(crate) struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// Stable: the SQLSTATE Postgres clients get for the same error (`42P01`: no such table).
    code: &'static str,
    /// `user error` (fix the request), `external error` (storage, retry), `internal error`.
    domain: String,
    /// What went wrong and where.
    message: String,
}

impl From<FreshetError> for ApiError {
    fn from(e: FreshetError) -> Self {
        let code = sqlstate(&e);
        let status = match e.domain() {
            // A resource that does not exist.
            freshet::ErrorDomain::User if code == "42P01" || code == "42704" => StatusCode::NOT_FOUND,
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

impl ApiError {
    /// A request without the server's bearer token (SQLSTATE 28000, invalid authorization).
    pub(crate) fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "28000",
            domain: freshet::ErrorDomain::User.to_string(),
            message: "this server needs `Authorization: Bearer <token>` (its server.http-token)".into(),
        }
    }

    /// A resource that does not exist (SQLSTATE 42704, undefined object).
    pub(crate) fn not_found(message: String) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "42704",
            domain: freshet::ErrorDomain::User.to_string(),
            message,
        }
    }

    /// A request the server cannot read: its body, query or path (SQLSTATE 22023).
    fn unreadable(status: StatusCode, message: String) -> Self {
        Self {
            status,
            code: "22023",
            domain: freshet::ErrorDomain::User.to_string(),
            message,
        }
    }
}

/// axum's extractors, with their rejections as [`ApiError`]s (JSON, like every other error).
macro_rules! extractor {
    ($name:ident, $inner:ident, $trait:ident, $doc:literal) => {
        #[doc = $doc]
        pub(crate) struct $name<T>(pub T);

        impl<S, T> axum::extract::$trait<S> for $name<T>
        where
            $inner<T>: axum::extract::$trait<S>,
            <$inner<T> as axum::extract::$trait<S>>::Rejection: IntoResponse + std::fmt::Display,
            S: Send + Sync,
        {
            type Rejection = ApiError;

            extractor!(@body $trait, $inner);
        }
    };
    (@body FromRequestParts, $inner:ident) => {
        async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
            match $inner::<T>::from_request_parts(parts, state).await {
                Ok($inner(value)) => Ok(Self(value)),
                Err(rejection) => {
                    let message = rejection.to_string();
                    let status = rejection.into_response().status();
                    Err(ApiError::unreadable(status, message))
                }
            }
        }
    };
}

/// A JSON object as the body (serde would also take an array for a struct's fields).
pub(crate) struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let unreadable =
            |status| ApiError::unreadable(status, "the request's body is not what this operation takes".into());
        let value = match Json::<serde_json::Value>::from_request(request, state).await {
            Ok(Json(value)) if value.is_object() => value,
            Ok(_) => return Err(unreadable(StatusCode::UNPROCESSABLE_ENTITY)),
            Err(rejection) => return Err(unreadable(rejection.into_response().status())),
        };
        serde_json::from_value(value)
            .map(Self)
            .map_err(|e| ApiError::unreadable(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
    }
}
extractor!(ApiQuery, Query, FromRequestParts, "Query parameters.");
extractor!(ApiPath, Path, FromRequestParts, "Path parameters.");

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}
