//! The REST control API: materialized tables, jobs and tables as resources, for automation.
//! Every route is described for OpenAPI by utoipa ([`ApiDoc`]); the spec is committed as
//! `docs/openapi.json` and a test checks it against this code.
//!
//! Changes go through the engine's SQL statements (the same checks, errors and history as the
//! shell); reads come from the engine's status APIs and system tables.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use freshet::{FreshetError, MaterializedTableInfo};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, Health, SqlRequest, SqlResponse, to_json};

/// The API's description, generated from the code.
#[derive(OpenApi)]
#[openapi(
    info(title = "Freshet", description = "Control and data API of a Freshet engine: SQL, materialized tables, jobs, tables, subscriptions, health."),
    paths(
        super::health,
        super::ready,
        super::run_sql,
        super::subscribe,
        list_materialized_tables,
        create_materialized_table,
        get_materialized_table,
        alter_materialized_table,
        drop_materialized_table,
        suspend_materialized_table,
        resume_materialized_table,
        refresh_materialized_table,
        materialized_table_refreshes,
        explain_materialized_table,
        list_jobs,
        stop_job,
        list_tables,
        get_table,
        table_versions,
    ),
    components(schemas(Health, SqlRequest, SqlResponse, ApiError, MaterializedTable, NewMaterializedTable, MaterializedTableChange, Job, Table, Column, Rows, ChangeEvent)),
    tags((name = "sql"), (name = "materialized tables"), (name = "jobs"), (name = "tables"), (name = "health")),
    modifiers(&BearerToken),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// The `bearer` security scheme: the server's `server.http-token`.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        openapi.components.get_or_insert_with(Default::default).add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The server's token (server.http-token or FRESHET_HTTP_TOKEN); required when the server has one. \
                         /health and /ready never need it.",
                    ))
                    .build(),
            ),
        );
        // Every operation that needs the token may answer 401.
        let unauthorized = ResponseBuilder::new()
            .description("No or a wrong bearer token (`code` 28000)")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ApiError")))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if matches!(path.as_str(), "/health" | "/ready") {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .responses
                    .responses
                    .insert("401".into(), unauthorized.clone().into());
            }
        }
    }
}

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

pub(crate) async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// The name in a resource's path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct NameParam {
    /// The table's (or materialized table's) name.
    #[param(min_length = 1)]
    pub(crate) name: String,
}

/// A job's id in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct IdParam {
    /// The job's id (SHOW JOBS lists them).
    #[param(min_length = 1)]
    id: String,
}

/// One server-sent event of a subscription.
#[derive(ToSchema)]
#[allow(dead_code)] // Only its schema is used: the events are written from record batches.
pub(crate) struct ChangeEvent {
    /// `changes`.
    event: String,
    /// The rows, a JSON array of objects: `_version` and `_weight` (+1 inserted, -1 deleted),
    /// then the table's columns.
    data: String,
}

/// A materialized table's definition and status.
#[derive(Serialize, ToSchema)]
pub(crate) struct MaterializedTable {
    /// Its name.
    name: String,
    /// The defining query.
    query: String,
    /// ACTIVE, SUSPENDED or FAILED.
    status: String,
    /// The freshness in force, as SQL (`INTERVAL '1' MINUTE`).
    freshness: String,
    /// The refresh mode in force: CONTINUOUS, FULL or INCREMENTAL.
    refresh_mode: String,
    /// Why this mode.
    reason: String,
    /// The newest version.
    version: u64,
    /// Milliseconds the contents lag their inputs (0 when up to date).
    data_lag_ms: Option<i64>,
    /// When the last refresh started (ms since the epoch).
    last_refresh_at_ms: Option<i64>,
    /// How long it took.
    last_refresh_duration_ms: Option<i64>,
    /// When the scheduler refreshes it next (ms since the epoch).
    next_refresh_at_ms: Option<i64>,
    /// Consecutive failed refreshes.
    failures: u32,
    /// The last refresh error, until a refresh succeeds.
    last_error: Option<String>,
    /// The event-time watermark of its inputs (ms since the epoch), if they have one.
    watermark_ms: Option<i64>,
    /// Rows dropped as late.
    late_rows: Option<u64>,
    /// The columns.
    columns: Vec<Column>,
}

impl From<MaterializedTableInfo> for MaterializedTable {
    fn from(info: MaterializedTableInfo) -> Self {
        Self {
            columns: columns(&info.schema),
            name: info.name,
            query: info.query,
            status: info.status.to_string(),
            freshness: info.freshness.to_string(),
            refresh_mode: info.mode.to_string(),
            reason: info.reason,
            version: info.version,
            data_lag_ms: info.data_lag_ms,
            last_refresh_at_ms: info.last_refresh.as_ref().map(|r| r.started_at_ms),
            last_refresh_duration_ms: info.last_refresh.as_ref().map(|r| r.duration_ms),
            next_refresh_at_ms: info.next_refresh_ms,
            failures: info.failures,
            last_error: info.last_error,
            watermark_ms: info.watermark_ms,
            late_rows: info.late_rows,
        }
    }
}

/// A column.
#[derive(Serialize, ToSchema)]
pub(crate) struct Column {
    name: String,
    /// Arrow's name of its type.
    data_type: String,
    nullable: bool,
}

fn columns(schema: &freshet::datafusion::arrow::datatypes::Schema) -> Vec<Column> {
    schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
            nullable: f.is_nullable(),
        })
        .collect()
}

/// A new materialized table: `CREATE MATERIALIZED TABLE name [FRESHNESS = ...]
/// [REFRESH_MODE = ...] AS query`.
#[derive(Deserialize, ToSchema)]
pub(crate) struct NewMaterializedTable {
    #[schema(min_length = 1)]
    name: String,
    /// The query.
    query: String,
    /// As SQL: `INTERVAL '1' MINUTE`. The default is Flink's.
    freshness: Option<String>,
    /// CONTINUOUS, FULL or INCREMENTAL; the engine chooses when absent.
    refresh_mode: Option<String>,
}

/// A change to a materialized table: a new freshness and/or refresh mode.
#[derive(Deserialize, ToSchema)]
pub(crate) struct MaterializedTableChange {
    /// As SQL: `INTERVAL '5' MINUTE`.
    freshness: Option<String>,
    /// CONTINUOUS, FULL or INCREMENTAL.
    refresh_mode: Option<String>,
}

/// Rows as JSON objects, with their column names.
#[derive(Serialize, ToSchema)]
pub(crate) struct Rows {
    columns: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    rows: serde_json::Value,
}

/// A job: a running (or ended) `INSERT INTO` pipeline.
#[derive(Serialize, ToSchema)]
pub(crate) struct Job {
    id: String,
    statement: String,
    /// RUNNING, FINISHED, FAILED or CANCELED.
    status: String,
    started_at_ms: i64,
    ended_at_ms: Option<i64>,
    rows_in: u64,
    rows_out: u64,
    epochs: u64,
    state_rows: u64,
    state_bytes: u64,
    error: Option<String>,
}

/// A table (or materialized table): its columns and newest version.
#[derive(Serialize, ToSchema)]
pub(crate) struct Table {
    name: String,
    version: u64,
    rows: u64,
    primary_key: Vec<String>,
    columns: Vec<Column>,
}

/// A name as a quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A keyword-like value (a refresh mode) checked before it goes into SQL.
fn keyword(value: &str, what: &str) -> Result<String, ApiError> {
    if value.chars().all(|c| c.is_ascii_alphabetic() || c == '_') {
        Ok(value.to_ascii_uppercase())
    } else {
        Err(ApiError::from(FreshetError::InvalidStatement(format!(
            "{what}: not a keyword: {value}"
        ))))
    }
}

async fn run(state: &AppState, sql: &str) -> Result<Vec<freshet::datafusion::arrow::array::RecordBatch>, ApiError> {
    let _running = state.activity.start();
    state.engine.sql(sql).await.map_err(ApiError::from)
}

async fn materialized(state: &AppState, name: &str) -> Result<Json<MaterializedTable>, ApiError> {
    Ok(Json(
        state
            .engine
            .materialized_table(name)
            .await
            .map_err(not_materialized(name))?
            .into(),
    ))
}

/// A name that is no materialized table (a plain table, or nothing) is not the resource.
fn not_materialized(name: &str) -> impl FnOnce(FreshetError) -> ApiError + '_ {
    move |e| match e {
        FreshetError::InvalidStatement(message) if message.contains("is not a materialized table") => {
            ApiError::not_found(format!("materialized table \"{name}\" does not exist"))
        }
        other => ApiError::from(other),
    }
}

/// Fails with 404 unless `name` is a materialized table.
async fn ensure_materialized(state: &AppState, name: &str) -> Result<(), ApiError> {
    state
        .engine
        .materialized_table(name)
        .await
        .map_err(not_materialized(name))?;
    Ok(())
}

/// Every materialized table with its status.
#[utoipa::path(get, path = "/api/v1/materialized-tables", tag = "materialized tables",
    responses((status = 200, body = Vec<MaterializedTable>), (status = "default", body = ApiError)))]
pub(crate) async fn list_materialized_tables(
    State(state): State<AppState>,
) -> Result<Json<Vec<MaterializedTable>>, ApiError> {
    let tables = state.engine.materialized_tables().await?;
    Ok(Json(tables.into_iter().map(Into::into).collect()))
}

/// Creates a materialized table (its first refresh done).
#[utoipa::path(post, path = "/api/v1/materialized-tables", tag = "materialized tables", request_body = NewMaterializedTable,
    responses((status = 201, body = MaterializedTable), (status = "default", body = ApiError)))]
pub(crate) async fn create_materialized_table(
    State(state): State<AppState>,
    ApiJson(new): ApiJson<NewMaterializedTable>,
) -> Result<(StatusCode, Json<MaterializedTable>), ApiError> {
    if new.name.is_empty() {
        return Err(ApiError::from(FreshetError::InvalidStatement("name: empty".into())));
    }
    let mut sql = format!("CREATE MATERIALIZED TABLE {}", ident(&new.name));
    if let Some(freshness) = &new.freshness {
        sql.push_str(&format!(" FRESHNESS = {freshness}"));
    }
    if let Some(mode) = &new.refresh_mode {
        sql.push_str(&format!(" REFRESH_MODE = {}", keyword(mode, "refresh_mode")?));
    }
    sql.push_str(&format!(" AS {}", new.query));
    // One statement only: the query must not smuggle in another.
    if state.engine.parse(&sql)?.len() != 1 {
        return Err(ApiError::from(FreshetError::InvalidStatement(
            "query: one query, without `;`".into(),
        )));
    }
    run(&state, &sql).await?;
    Ok((StatusCode::CREATED, materialized(&state, &new.name).await?))
}

/// One materialized table's status.
#[utoipa::path(get, path = "/api/v1/materialized-tables/{name}", tag = "materialized tables",
    params(NameParam),
    responses((status = 200, body = MaterializedTable), (status = "default", body = ApiError)))]
pub(crate) async fn get_materialized_table(
    State(state): State<AppState>,
    ApiPath(NameParam { name }): ApiPath<NameParam>,
) -> Result<Json<MaterializedTable>, ApiError> {
    materialized(&state, &name).await
}

/// Changes a materialized table's freshness and/or refresh mode.
#[utoipa::path(patch, path = "/api/v1/materialized-tables/{name}", tag = "materialized tables", request_body = MaterializedTableChange,
    params(NameParam),
    responses((status = 200, body = MaterializedTable), (status = "default", body = ApiError)))]
pub(crate) async fn alter_materialized_table(
    State(state): State<AppState>,
    ApiPath(NameParam { name }): ApiPath<NameParam>,
    ApiJson(change): ApiJson<MaterializedTableChange>,
) -> Result<Json<MaterializedTable>, ApiError> {
    ensure_materialized(&state, &name).await?;
    let mut statements = Vec::new();
    if let Some(freshness) = &change.freshness {
        statements.push(format!(
            "ALTER MATERIALIZED TABLE {} SET FRESHNESS = {freshness}",
            ident(&name)
        ));
    }
    if let Some(mode) = &change.refresh_mode {
        statements.push(format!(
            "ALTER MATERIALIZED TABLE {} SET REFRESH_MODE = {}",
            ident(&name),
            keyword(mode, "refresh_mode")?
        ));
    }
    for sql in statements {
        if state.engine.parse(&sql)?.len() != 1 {
            return Err(ApiError::from(FreshetError::InvalidStatement(
                "freshness: one interval".into(),
            )));
        }
        run(&state, &sql).await?;
    }
    materialized(&state, &name).await
}

/// Drops a materialized table.
#[utoipa::path(delete, path = "/api/v1/materialized-tables/{name}", tag = "materialized tables",
    params(NameParam),
    responses((status = 204), (status = "default", body = ApiError)))]
pub(crate) async fn drop_materialized_table(
    State(state): State<AppState>,
    ApiPath(NameParam { name }): ApiPath<NameParam>,
) -> Result<StatusCode, ApiError> {
    ensure_materialized(&state, &name).await?;
    run(&state, &format!("DROP MATERIALIZED TABLE {}", ident(&name))).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `ALTER MATERIALIZED TABLE name <action>` on a materialized table, then its status.
async fn alter_then_show(state: &AppState, name: &str, action: &str) -> Result<Json<MaterializedTable>, ApiError> {
    ensure_materialized(state, name).await?;
    run(state, &format!("ALTER MATERIALIZED TABLE {} {action}", ident(name))).await?;
    materialized(state, name).await
}

/// Suspends a materialized table's refreshes.
#[utoipa::path(post, path = "/api/v1/materialized-tables/{name}/suspend", tag = "materialized tables",
    params(NameParam),
    responses((status = 200, body = MaterializedTable), (status = "default", body = ApiError)))]
pub(crate) async fn suspend_materialized_table(
    State(state): State<AppState>,
    ApiPath(NameParam { name }): ApiPath<NameParam>,
) -> Result<Json<MaterializedTable>, ApiError> {
    alter_then_show(&state, &name, "SUSPEND").await
}

/// Resumes a suspended (or failed) materialized table.
#[utoipa::path(post, path = "/api/v1/materialized-tables/{name}/resume", tag = "materialized tables",
    params(NameParam),
    responses((status = 200, body = MaterializedTable), (status = "default", body = ApiError)))]
pub(crate) async fn resume_materialized_table(
    State(state): State<AppState>,
    ApiPath(NameParam { name }): ApiPath<NameParam>,
) -> Result<Json<MaterializedTable>, ApiError> {
    alter_then_show(&state, &name, "RESUME").await
}

/// Refreshes a materialized table now (returns when the refresh has committed).
#[utoipa::path(post, path = "/api/v1/materialized-tables/{name}/refresh", tag = "materialized tables",
    params(NameParam),
    responses((status = 200, body = MaterializedTable), (status = "default", body = ApiError)))]
pub(crate) async fn refresh_materialized_table(
    State(state): State<AppState>,
    ApiPath(NameParam { name }): ApiPath<NameParam>,
) -> Result<Json<MaterializedTable>, ApiError> {
    alter_then_show(&state, &name, "REFRESH").await
}

/// The table's refreshes, newest last: trigger, algorithm and why, duration, rows, outcome.
#[utoipa::path(get, path = "/api/v1/materialized-tables/{name}/refreshes", tag = "materialized tables",
    params(NameParam),
    responses((status = 200, body = Rows), (status = "default", body = ApiError)))]
pub(crate) async fn materialized_table_refreshes(
    State(state): State<AppState>,
    ApiPath(NameParam { name }): ApiPath<NameParam>,
) -> Result<Json<Rows>, ApiError> {
    ensure_materialized(&state, &name).await?;
    let literal = name.replace('\'', "''");
    let batches = run(
        &state,
        &format!("SELECT * FROM freshet.refreshes WHERE name = '{literal}' ORDER BY started_at"),
    )
    .await?;
    rows(&batches)
}

/// The incremental plan: operators, the state each keeps, the mode and its reason.
#[utoipa::path(get, path = "/api/v1/materialized-tables/{name}/explain", tag = "materialized tables",
    params(NameParam),
    responses((status = 200, body = Rows), (status = "default", body = ApiError)))]
pub(crate) async fn explain_materialized_table(
    State(state): State<AppState>,
    ApiPath(NameParam { name }): ApiPath<NameParam>,
) -> Result<Json<Rows>, ApiError> {
    ensure_materialized(&state, &name).await?;
    let batches = run(&state, &format!("EXPLAIN MATERIALIZED TABLE {}", ident(&name))).await?;
    rows(&batches)
}

fn rows(batches: &[freshet::datafusion::arrow::array::RecordBatch]) -> Result<Json<Rows>, ApiError> {
    let SqlResponse { columns, rows } = to_json(batches)?;
    Ok(Json(Rows { columns, rows }))
}

/// Every job started since the engine opened.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", responses((status = 200, body = Vec<Job>)))]
pub(crate) async fn list_jobs(State(state): State<AppState>) -> Json<Vec<Job>> {
    Json(
        state
            .engine
            .jobs()
            .into_iter()
            .map(|job| Job {
                id: job.id,
                statement: job.statement,
                status: job.status.as_str().into(),
                started_at_ms: job.started_at_ms,
                ended_at_ms: job.ended_at_ms,
                rows_in: job.rows_in,
                rows_out: job.rows_out,
                epochs: job.epochs,
                state_rows: job.state_rows,
                state_bytes: job.state_bytes,
                error: job.error,
            })
            .collect(),
    )
}

/// Stops a job (its committed output stays).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/stop", tag = "jobs",
    params(IdParam),
    responses((status = 200, body = Rows), (status = "default", body = ApiError)))]
pub(crate) async fn stop_job(
    State(state): State<AppState>,
    ApiPath(IdParam { id }): ApiPath<IdParam>,
) -> Result<Json<Rows>, ApiError> {
    if state.engine.job(&id).is_none() {
        return Err(ApiError::not_found(format!("no job with id '{id}'")));
    }
    let batches = run(&state, &format!("STOP JOB '{}'", id.replace('\'', "''"))).await?;
    rows(&batches)
}

/// Every table and materialized table.
#[utoipa::path(get, path = "/api/v1/tables", tag = "tables", responses((status = 200, body = Vec<Table>), (status = "default", body = ApiError)))]
pub(crate) async fn list_tables(State(state): State<AppState>) -> Result<Json<Vec<Table>>, ApiError> {
    let batches = run(
        &state,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
    )
    .await?;
    let mut tables = Vec::new();
    for batch in &batches {
        let names = freshet::datafusion::arrow::array::AsArray::as_string_view_opt(batch.column(0).as_ref())
            .map(|a| a.iter().flatten().map(String::from).collect::<Vec<_>>())
            .or_else(|| {
                freshet::datafusion::arrow::array::AsArray::as_string_opt::<i32>(batch.column(0).as_ref())
                    .map(|a| a.iter().flatten().map(String::from).collect())
            })
            .unwrap_or_default();
        for name in names {
            // Views and external tables are not Freshet tables.
            if let Ok(table) = table_of(&state, &name) {
                tables.push(table);
            }
        }
    }
    Ok(Json(tables))
}

fn table_of(state: &AppState, name: &str) -> Result<Table, ApiError> {
    let table = state.engine.table(name)?;
    let snapshot = table.snapshot();
    Ok(Table {
        name: name.into(),
        version: snapshot.version(),
        rows: snapshot.num_rows(),
        primary_key: snapshot.primary_key().to_vec(),
        columns: columns(snapshot.schema()),
    })
}

/// One table: its columns, newest version and rows.
#[utoipa::path(get, path = "/api/v1/tables/{name}", tag = "tables",
    params(NameParam),
    responses((status = 200, body = Table), (status = "default", body = ApiError)))]
pub(crate) async fn get_table(
    State(state): State<AppState>,
    ApiPath(NameParam { name }): ApiPath<NameParam>,
) -> Result<Json<Table>, ApiError> {
    Ok(Json(table_of(&state, &name)?))
}

/// Which versions of a table to list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct VersionsParams {
    /// At most this many, newest first (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
}

/// A table's versions: when each committed, what it did, rows inserted and deleted.
#[utoipa::path(get, path = "/api/v1/tables/{name}/versions", tag = "tables",
    params(NameParam, VersionsParams),
    responses((status = 200, body = Rows), (status = "default", body = ApiError)))]
pub(crate) async fn table_versions(
    State(state): State<AppState>,
    ApiPath(NameParam { name }): ApiPath<NameParam>,
    ApiQuery(params): ApiQuery<VersionsParams>,
) -> Result<Json<Rows>, ApiError> {
    state.engine.table(&name)?;
    let literal = name.replace('\'', "''");
    let limit = params.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::from(FreshetError::InvalidStatement(format!(
            "limit: 1 to 10000, not {limit}"
        ))));
    }
    let batches = run(
        &state,
        &format!("SELECT * FROM table_history('{literal}') ORDER BY version DESC LIMIT {limit}"),
    )
    .await?;
    rows(&batches)
}
