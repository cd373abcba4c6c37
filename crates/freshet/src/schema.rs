//! The engine's tables as DataFusion's catalog: one catalog (`freshet`) with one schema
//! (`public`) backed by the persistent catalog of the location.
//!
//! Besides plain names, the schema resolves internal forms that the engine's rewrites produce:
//! `name@v<N>` (version N, for time travel), `name@positions` (the newest version with each
//! row's file and position, for UPDATE and DELETE) and `name@insert` (the INSERT target).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};

use freshet_common::FreshetError;
use freshet_storage::{Catalog, CatalogEntry, SnapshotTable};

use crate::materialized::SystemSchema;
use crate::materialized::status::SYSTEM_SCHEMA;

/// Name of the engine's catalog.
pub const CATALOG_NAME: &str = "freshet";
/// Name of the engine's schema.
pub const SCHEMA_NAME: &str = "public";

/// Suffix of the internal name of a table's insert target (all columns nullable).
pub(crate) const INSERT_SUFFIX: &str = "@insert";

/// Suffix of the internal name of a table's position scan.
pub(crate) const POSITIONS_SUFFIX: &str = "@positions";

/// The internal name of version `version` of `table`.
pub(crate) fn version_name(table: &str, version: u64) -> String {
    format!("{table}@v{version}")
}

/// The catalog provider.
#[derive(Debug)]
pub(crate) struct FreshetCatalog {
    schema: Arc<FreshetSchema>,
    system: Arc<SystemSchema>,
}

impl FreshetCatalog {
    pub(crate) fn new(schema: Arc<FreshetSchema>, system: Arc<SystemSchema>) -> Self {
        Self { schema, system }
    }
}

impl CatalogProvider for FreshetCatalog {
    fn schema_names(&self) -> Vec<String> {
        vec![SCHEMA_NAME.to_string(), SYSTEM_SCHEMA.to_string()]
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        match name {
            SCHEMA_NAME => Some(self.schema.clone() as Arc<dyn SchemaProvider>),
            SYSTEM_SCHEMA => Some(self.system.clone() as Arc<dyn SchemaProvider>),
            _ => None,
        }
    }
}

/// An object defined by a statement (an external table or a view), as DataFusion built it.
#[derive(Debug, Clone)]
pub(crate) enum Defined {
    Ready(Arc<dyn TableProvider>),
    Broken(Arc<FreshetError>),
}

/// The schema provider.
#[derive(Debug)]
pub(crate) struct FreshetSchema {
    catalog: Arc<Catalog>,
    /// Providers of external tables and views, registered by DataFusion when their defining
    /// statement runs (at creation, and again each time the engine opens).
    defined: RwLock<HashMap<String, Defined>>,
}

impl FreshetSchema {
    pub(crate) fn new(catalog: Arc<Catalog>) -> Self {
        Self {
            catalog,
            defined: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn mark_broken(&self, name: &str, error: FreshetError) {
        self.defined_mut().insert(name.into(), Defined::Broken(Arc::new(error)));
    }

    pub(crate) fn forget(&self, name: &str) {
        self.defined_mut().remove(name);
    }

    fn defined(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Defined>> {
        self.defined.read().unwrap_or_else(|p| p.into_inner())
    }

    fn defined_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Defined>> {
        self.defined.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SchemaProvider for FreshetSchema {
    fn table_names(&self) -> Vec<String> {
        self.catalog.manifest().entries.keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some((base, suffix)) = name.split_once('@') {
            let table = match self.catalog.table(base) {
                Ok(t) => t,
                Err(FreshetError::TableNotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let writes = format!("@{suffix}") == INSERT_SUFFIX || format!("@{suffix}") == POSITIONS_SUFFIX;
            if writes
                && matches!(
                    self.catalog.manifest().entries.get(base),
                    Some(CatalogEntry::MaterializedTable { .. })
                )
            {
                return Err(FreshetError::InvalidStatement(format!(
                    "\"{base}\" is a materialized table: its rows come from its query (change the query with \
                     ALTER MATERIALIZED TABLE {base} AS ..., or refresh it with ALTER MATERIALIZED TABLE {base} REFRESH)"
                ))
                .into());
            }
            if format!("@{suffix}") == INSERT_SUFFIX {
                return Ok(Some(Arc::new(SnapshotTable::insert_target(table))));
            }
            if format!("@{suffix}") == POSITIONS_SUFFIX {
                let snapshot = table.snapshot();
                return Ok(Some(Arc::new(SnapshotTable::with_positions(table, snapshot))));
            }
            if let Some(version) = suffix.strip_prefix('v').and_then(|v| v.parse::<u64>().ok()) {
                let snapshot = table.snapshot_at(version).await?;
                return Ok(Some(Arc::new(SnapshotTable::at(table, snapshot))));
            }
            return Ok(None);
        }
        if let Some(defined) = self.defined().get(name) {
            return match defined {
                Defined::Ready(provider) => Ok(Some(provider.clone())),
                Defined::Broken(e) => Err(DataFusionError::External(Box::new(FreshetError::InvalidStatement(
                    format!("\"{name}\" cannot be read: {e}"),
                )))),
            };
        }
        match self.catalog.table(name) {
            Ok(table) => Ok(Some(Arc::new(SnapshotTable::current(table)))),
            Err(FreshetError::TableNotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if name.contains('@') {
            return Err(
                FreshetError::InvalidStatement(format!("invalid name \"{name}\": names cannot contain '@'")).into(),
            );
        }
        let previous = self.defined_mut().insert(name, Defined::Ready(table));
        Ok(previous.and_then(|d| match d {
            Defined::Ready(p) => Some(p),
            Defined::Broken(_) => None,
        }))
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.defined_mut().remove(name).and_then(|d| match d {
            Defined::Ready(p) => Some(p),
            Defined::Broken(_) => None,
        }))
    }

    /// Whether a provider exists now. A stored definition not yet restored does not count,
    /// so that restoring it (at open) can register it; creating a new object checks the
    /// catalog first.
    fn table_exist(&self, name: &str) -> bool {
        self.catalog.table(name).is_ok() || self.defined().contains_key(name)
    }
}
