//! Table functions over a table's versions:
//!
//! - `table_changes('t', from [, to])`: the net changes made by versions `from+1 ..= to` (default:
//!   the newest), as the table's columns plus `_weight` (+n inserted, -n deleted);
//! - `table_history('t')`: one row per retained version: when, what, how many rows and files.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, TableReference};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use freshet_common::{ChangeBatch, FreshetError, Result};
use freshet_storage::{Catalog, Table};

use crate::engine::Engine;

pub(crate) fn register(engine: &Engine) {
    let catalog = engine.inner.catalog.clone();
    engine.inner.ctx.register_udtf(
        "table_changes",
        Arc::new(TableChanges {
            catalog: catalog.clone(),
        }),
    );
    engine
        .inner
        .ctx
        .register_udtf("table_history", Arc::new(TableHistory { catalog }));
}

#[derive(Debug)]
struct TableChanges {
    catalog: Arc<Catalog>,
}

impl TableFunctionImpl for TableChanges {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if !(2..=3).contains(&exprs.len()) {
            return Err(usage("table_changes('table', from_version [, to_version])").into());
        }
        let table = table_arg(&self.catalog, &exprs[0], "table_changes")?;
        let from = version_arg(&exprs[1], "table_changes")?;
        let to = match exprs.get(2) {
            Some(e) => version_arg(e, "table_changes")?,
            None => table.snapshot().version(),
        };
        let schema = ChangeBatch::schema_for(table.snapshot().schema());
        Ok(Arc::new(LazyTable {
            schema,
            source: Source::Changes { table, from, to },
        }))
    }
}

#[derive(Debug)]
struct TableHistory {
    catalog: Arc<Catalog>,
}

impl TableFunctionImpl for TableHistory {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if exprs.len() != 1 {
            return Err(usage("table_history('table')").into());
        }
        let table = table_arg(&self.catalog, &exprs[0], "table_history")?;
        Ok(Arc::new(LazyTable {
            schema: history_schema(),
            source: Source::History { table },
        }))
    }
}

fn history_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("version", DataType::UInt64, false),
        Field::new(
            "committed_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
            false,
        ),
        Field::new("operation", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("files", DataType::UInt64, false),
        Field::new("rows_inserted", DataType::UInt64, false),
        Field::new("rows_deleted", DataType::UInt64, false),
    ]))
}

fn usage(text: &str) -> FreshetError {
    FreshetError::InvalidStatement(format!("usage: {text}"))
}

fn table_arg(catalog: &Catalog, expr: &Expr, function: &str) -> Result<Arc<Table>> {
    let Expr::Literal(ScalarValue::Utf8(Some(name)) | ScalarValue::Utf8View(Some(name)), _) = expr else {
        return Err(FreshetError::InvalidStatement(format!(
            "{function}: the first argument must be a table name as a string, found {expr}"
        )));
    };
    let reference = TableReference::from(name.as_str());
    catalog.table(reference.table())
}

fn version_arg(expr: &Expr, function: &str) -> Result<u64> {
    let value = match expr {
        Expr::Literal(ScalarValue::Int64(Some(v)), _) => Some(*v),
        Expr::Literal(ScalarValue::Int32(Some(v)), _) => Some(i64::from(*v)),
        Expr::Literal(ScalarValue::UInt64(Some(v)), _) => i64::try_from(*v).ok(),
        _ => None,
    };
    value.and_then(|v| u64::try_from(v).ok()).ok_or_else(|| {
        FreshetError::InvalidStatement(format!(
            "{function}: a version must be a non-negative integer, found {expr}"
        ))
    })
}

/// What a [`LazyTable`] reads when scanned.
#[derive(Debug)]
enum Source {
    Changes { table: Arc<Table>, from: u64, to: u64 },
    History { table: Arc<Table> },
}

/// A table whose rows are computed when it is scanned.
#[derive(Debug)]
struct LazyTable {
    schema: SchemaRef,
    source: Source,
}

impl LazyTable {
    async fn rows(&self) -> Result<Vec<RecordBatch>> {
        match &self.source {
            Source::Changes { table, from, to } => {
                let changes = table.changes(*from, *to).await?;
                Ok(changes
                    .consolidated()
                    .await?
                    .map(ChangeBatch::into_batch)
                    .into_iter()
                    .collect())
            }
            Source::History { table } => {
                let history = table.history().await?;
                let column = |f: &dyn Fn(&freshet_storage::Manifest) -> u64| {
                    Arc::new(UInt64Array::from_iter_values(history.iter().map(f)))
                };
                let batch = RecordBatch::try_new(
                    self.schema.clone(),
                    vec![
                        column(&|m| m.version),
                        Arc::new(
                            TimestampMillisecondArray::from_iter_values(history.iter().map(|m| m.committed_at_ms))
                                .with_timezone("+00:00"),
                        ),
                        Arc::new(StringArray::from_iter_values(
                            history.iter().map(|m| m.operation.as_str()),
                        )),
                        column(&|m| m.live_rows()),
                        column(&|m| m.files.len() as u64),
                        column(&|m| m.changes.inserted.iter().map(|f| f.rows).sum()),
                        column(&|m| {
                            let retracted: u64 = m.changes.retracted.iter().map(|f| f.rows).sum();
                            let removed: u64 = m.changes.removed.iter().map(|f| f.live_rows()).sum();
                            retracted + removed
                        }),
                    ],
                )
                .map_err(|e| FreshetError::Internal(e.to_string()))?;
                Ok(vec![batch])
            }
        }
    }
}

#[async_trait]
impl TableProvider for LazyTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let rows = self.rows().await?;
        let batches: Vec<RecordBatch> = rows
            .into_iter()
            .map(|b| RecordBatch::try_new(self.schema.clone(), b.columns().to_vec()))
            .collect::<std::result::Result<_, _>>()?;
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}
