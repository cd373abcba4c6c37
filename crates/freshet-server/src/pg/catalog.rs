//! `pg_catalog` for Postgres clients.
//!
//! psql's `\d`, drivers and BI tools introspect a server through `pg_catalog` (`pg_class`,
//! `pg_attribute`, `pg_namespace`, ...) with Postgres-only syntax (`OPERATOR(pg_catalog.~)`,
//! `'t'::regclass`). `datafusion-pg-catalog` provides both the tables, built from a DataFusion
//! catalog, and the rewrites of that syntax. They live in a session of the server's own that
//! reads the engine's catalog through an overlay, so the engine's session (what the shell and
//! embedders see) stays free of Postgres' objects.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use freshet::datafusion::catalog::{CatalogProvider, SchemaProvider};
use freshet::datafusion::error::{DataFusionError, Result as DFResult};
use freshet::datafusion::prelude::{SessionConfig, SessionContext};
use freshet::{CATALOG_NAME, Engine, SCHEMA_NAME};

/// A session that plans Postgres clients' catalog queries over the engine's tables.
pub(crate) fn catalog_session(engine: &Engine) -> Result<SessionContext, Box<DataFusionError>> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_create_default_catalog_and_schema(false)
        .with_default_catalog_and_schema(CATALOG_NAME, SCHEMA_NAME);
    let ctx = SessionContext::new_with_config(config);
    let inner = engine.session().catalog(CATALOG_NAME).ok_or_else(|| {
        Box::new(DataFusionError::Internal(format!(
            "the engine has no catalog {CATALOG_NAME}"
        )))
    })?;
    ctx.register_catalog(
        CATALOG_NAME,
        Arc::new(Overlay {
            inner,
            added: RwLock::default(),
        }),
    );
    datafusion_pg_catalog::setup_pg_catalog(&ctx, CATALOG_NAME, EmptyContextProvider)?;
    Ok(ctx)
}

/// The engine's catalog with schemas added beside its own (`pg_catalog`).
#[derive(Debug)]
struct Overlay {
    inner: Arc<dyn CatalogProvider>,
    added: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
}

impl CatalogProvider for Overlay {
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.inner.schema_names();
        names.extend(self.added.read().unwrap_or_else(|p| p.into_inner()).keys().cloned());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let added = self.added.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        added.or_else(|| self.inner.schema(name))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DFResult<Option<Arc<dyn SchemaProvider>>> {
        Ok(self
            .added
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.into(), schema))
    }
}
