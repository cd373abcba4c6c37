//! A directory of numbered JSON files, each written once: the commit log of the catalog and of
//! every table. A version exists once its file exists; it is created with a conditional put, so
//! two writers can never both commit the same version.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use futures::TryStreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use freshet_common::{FreshetError, Result};

use crate::layout::{parse_version_file, version_file};

/// The outcome of trying to create a version.
pub(crate) enum Created {
    /// The version is committed.
    Yes,
    /// Another writer created it first.
    AlreadyExists,
}

/// A versioned log in one directory.
#[derive(Debug, Clone)]
pub(crate) struct VersionLog {
    store: Arc<dyn ObjectStore>,
    dir: Path,
}

impl VersionLog {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, dir: Path) -> Self {
        Self { store, dir }
    }

    /// All versions present, ascending.
    pub(crate) async fn versions(&self) -> Result<Vec<u64>> {
        let mut versions: Vec<u64> = self
            .store
            .list(Some(&self.dir))
            .map_ok(|meta| parse_version_file(&meta.location))
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| FreshetError::storage(&self.dir, e))?
            .into_iter()
            .flatten()
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The newest version, if any.
    pub(crate) async fn latest(&self) -> Result<Option<u64>> {
        Ok(self.versions().await?.last().copied())
    }

    /// The path of a version's file.
    pub(crate) fn path(&self, version: u64) -> Path {
        version_file(&self.dir, version)
    }

    /// Reads and parses one version; `Ok(None)` when it does not exist.
    pub(crate) async fn read<T: DeserializeOwned>(&self, version: u64) -> Result<Option<T>> {
        let path = self.path(version);
        let bytes = match self.store.get(&path).await {
            Ok(result) => result.bytes().await.map_err(|e| FreshetError::storage(&path, e))?,
            Err(datafusion::object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(FreshetError::storage(&path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| FreshetError::corrupt(&path, e))
    }

    /// Writes a version if no writer has written it yet.
    pub(crate) async fn create<T: Serialize>(&self, version: u64, value: &T) -> Result<Created> {
        let path = self.path(version);
        let json = serde_json::to_vec_pretty(value)
            .map_err(|e| FreshetError::Internal(format!("cannot serialize {path}: {e}")))?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(Bytes::from(json)), options)
            .await
        {
            Ok(_) => Ok(Created::Yes),
            Err(datafusion::object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExists),
            Err(e) => Err(FreshetError::storage(&path, e)),
        }
    }

    /// Writes a version carrying `transaction` (a fresh id that `id_of` reads back), and tells
    /// whether it landed even when the put's answer does not: a put that failed may have
    /// written (a timeout after the store took it), and one that found the version taken may
    /// have found its own earlier attempt (a client retrying a put that had landed). Either
    /// way the version's file decides — ours if it carries our id. `Err` only when neither the
    /// put nor the read-back can say.
    pub(crate) async fn create_resolved<T: Serialize + DeserializeOwned>(
        &self,
        version: u64,
        value: &T,
        transaction: &str,
        id_of: impl Fn(&T) -> Option<&str>,
    ) -> Result<Created> {
        let put_error = match self.create(version, value).await {
            Ok(Created::Yes) => return Ok(Created::Yes),
            Ok(Created::AlreadyExists) => None,
            Err(e) => Some(e),
        };
        match self.read::<T>(version).await {
            Ok(Some(found)) if id_of(&found) == Some(transaction) => {
                if let Some(e) = &put_error {
                    tracing::warn!(path = %self.path(version), error = %e, "a put reported an error but had landed");
                }
                Ok(Created::Yes)
            }
            Ok(Some(_)) => Ok(Created::AlreadyExists),
            Ok(None) => match put_error {
                Some(e) => Err(e),
                // Taken, then removed (a vacuum of another engine): still not ours.
                None => Ok(Created::AlreadyExists),
            },
            Err(read_error) => Err(put_error.unwrap_or(read_error).context(format!(
                "{} may or may not have been written (its read-back failed too)",
                self.path(version)
            ))),
        }
    }

    /// Deletes a version's file (retention).
    pub(crate) async fn remove(&self, version: u64) -> Result<()> {
        let path = self.path(version);
        match self.store.delete(&path).await {
            Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(FreshetError::storage(&path, e)),
        }
    }
}
