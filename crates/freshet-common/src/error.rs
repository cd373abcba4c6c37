//! Errors with a domain.

use std::sync::Arc;

use datafusion::error::DataFusionError;

/// Who is responsible for an error, and so what a caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDomain {
    /// The statement or the call was wrong: fix it and try again.
    User,
    /// Something outside the engine failed: the object store, a file, the network.
    External,
    /// A bug in Freshet: please report it.
    Internal,
}

impl std::fmt::Display for ErrorDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorDomain::User => "user error",
            ErrorDomain::External => "external error",
            ErrorDomain::Internal => "internal error",
        })
    }
}

/// The result type of Freshet's crates.
pub type Result<T, E = FreshetError> = std::result::Result<T, E>;

/// Every error Freshet reports.
#[derive(Debug, thiserror::Error)]
pub enum FreshetError {
    /// A table that does not exist was named.
    #[error("table \"{name}\" does not exist")]
    TableNotFound {
        /// The name as written.
        name: String,
    },
    /// A materialized table that does not exist was named.
    #[error("materialized table \"{name}\" does not exist")]
    MaterializedTableNotFound {
        /// The name as written.
        name: String,
    },
    /// A table was created under a name already taken.
    #[error("table \"{name}\" already exists")]
    TableExists {
        /// The name as written.
        name: String,
    },
    /// A row would repeat a primary key value.
    #[error("table \"{table}\": duplicate primary key ({columns}) = ({key})")]
    DuplicateKey {
        /// The table written to.
        table: String,
        /// The key's columns, comma-separated.
        columns: String,
        /// The repeated key, rendered as SQL literals.
        key: String,
    },
    /// A NULL was written into a NOT NULL column.
    #[error("table \"{table}\": column \"{column}\" is NOT NULL but a NULL was written to it")]
    NullViolation {
        /// The table written to.
        table: String,
        /// The column.
        column: String,
    },
    /// A version that was never committed, or that was removed by VACUUM, was asked for.
    #[error("table \"{table}\": version {version} does not exist ({reason})")]
    VersionNotFound {
        /// The table.
        table: String,
        /// The version asked for.
        version: u64,
        /// Why it is not there.
        reason: String,
    },
    /// The statement is valid SQL but asks for something that is not right here.
    #[error("{0}")]
    InvalidStatement(String),
    /// Freshet does not support this (yet).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// Another process or engine holds the location.
    #[error("the location {location} is in use by another Freshet engine ({detail})")]
    Locked {
        /// The location.
        location: String,
        /// What holds it.
        detail: String,
    },
    /// Another writer committed first; nothing of this statement was committed.
    #[error(
        "table \"{table}\": version {version} was committed by another writer; nothing of this statement was committed"
    )]
    ConcurrentCommit {
        /// The table.
        table: String,
        /// The version both tried to commit.
        version: u64,
    },
    /// A file of the store cannot be read or does not say what it must.
    #[error("corrupt or unreadable file {path}: {reason}")]
    CorruptFile {
        /// The file's path in the store.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object store failed.
    #[error("storage failure at {path}: {source}")]
    Storage {
        /// The path the operation was on.
        path: String,
        /// The store's error.
        #[source]
        source: datafusion::object_store::Error,
    },
    /// A statement named a file outside the directories the engine allows.
    #[error("{what} \"{path}\" is outside the directories this engine may read and write ({allowed})")]
    FileNotAllowed {
        /// What the file is for (`COPY target`, `external table location`, ...).
        what: String,
        /// The path as written.
        path: String,
        /// The allowed directories, or how to allow some.
        allowed: String,
    },
    /// The location given to open an engine cannot be used.
    #[error("invalid location \"{location}\": {reason}")]
    InvalidLocation {
        /// The location.
        location: String,
        /// Why.
        reason: String,
    },
    /// A source's data cannot be read: a missing file, a malformed line, a value of the wrong
    /// type. `at` says where (`file /data/bid.jsonl, line 17, column 5`).
    #[error("table \"{table}\": {at}: {reason}")]
    BadSourceData {
        /// The source table.
        table: String,
        /// Where in the source.
        at: String,
        /// What is wrong.
        reason: String,
    },
    /// An error raised by DataFusion while planning or running a statement.
    #[error(transparent)]
    DataFusion(DataFusionError),
    /// A bug in Freshet.
    #[error("internal error: {0}")]
    Internal(String),
    /// An error with the statement or object it happened in.
    #[error("{context}: {source}")]
    Context {
        /// Where it happened.
        context: String,
        /// What happened.
        #[source]
        source: Box<FreshetError>,
    },
}

impl FreshetError {
    /// Who is responsible for this error.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            FreshetError::TableNotFound { .. }
            | FreshetError::MaterializedTableNotFound { .. }
            | FreshetError::TableExists { .. }
            | FreshetError::DuplicateKey { .. }
            | FreshetError::NullViolation { .. }
            | FreshetError::VersionNotFound { .. }
            | FreshetError::InvalidStatement(_)
            | FreshetError::Unsupported(_)
            | FreshetError::InvalidLocation { .. }
            | FreshetError::FileNotAllowed { .. } => ErrorDomain::User,
            FreshetError::Locked { .. }
            | FreshetError::ConcurrentCommit { .. }
            | FreshetError::CorruptFile { .. }
            | FreshetError::BadSourceData { .. }
            | FreshetError::Storage { .. } => ErrorDomain::External,
            FreshetError::Internal(_) => ErrorDomain::Internal,
            FreshetError::Context { source, .. } => source.domain(),
            FreshetError::DataFusion(e) => datafusion_domain(e),
        }
    }

    /// Wraps the error with a description of where it happened.
    pub fn context(self, context: impl Into<String>) -> Self {
        FreshetError::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// Builds a storage error for `path`.
    pub fn storage(path: impl std::fmt::Display, source: datafusion::object_store::Error) -> Self {
        FreshetError::Storage {
            path: path.to_string(),
            source,
        }
    }

    /// Builds a corrupt-file error for `path`.
    pub fn corrupt(path: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        FreshetError::CorruptFile {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }
}

fn datafusion_domain(e: &DataFusionError) -> ErrorDomain {
    match e {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Configuration(_)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ResourcesExhausted(_)
        | DataFusionError::ArrowError(..) => ErrorDomain::User,
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) | DataFusionError::ParquetError(_) => {
            ErrorDomain::External
        }
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => datafusion_domain(inner),
        DataFusionError::Shared(inner) => datafusion_domain(inner),
        DataFusionError::External(inner) => match inner.downcast_ref::<FreshetError>() {
            Some(f) => f.domain(),
            None => ErrorDomain::External,
        },
        DataFusionError::Collection(errors) => errors.first().map(datafusion_domain).unwrap_or(ErrorDomain::Internal),
        _ => ErrorDomain::Internal,
    }
}

/// The alias under which a window table function's rewrite (`freshet-sql`) reads its table.
pub const WINDOW_INPUT: &str = "__window_input";

/// The error for a window table function over a table that already has a column it adds:
/// DataFusion's ambiguity between the table's column and the added one, said as Flink does.
fn window_column_taken(e: &DataFusionError) -> Option<FreshetError> {
    let DataFusionError::SchemaError(schema, _) = e.find_root() else {
        return None;
    };
    let datafusion::common::SchemaError::AmbiguousReference { field } = schema.as_ref() else {
        return None;
    };
    (field.relation.as_ref()?.table() == WINDOW_INPUT).then(|| {
        FreshetError::InvalidStatement(format!(
            "a window table function (TUMBLE, HOP, CUMULATE, SESSION) adds the columns window_start, window_end \
             and window_time to its table's, which already has a column {}: select it under another name \
             (window_start AS inner_start), as Flink requires",
            field.name
        ))
    })
}

/// Freshet errors travel through DataFusion (from a table provider or a sink) boxed in
/// `DataFusionError::External`; this unboxes them again so callers see the typed error.
impl From<DataFusionError> for FreshetError {
    fn from(e: DataFusionError) -> Self {
        if let Some(taken) = window_column_taken(&e) {
            return taken;
        }
        match e {
            DataFusionError::External(inner) => match inner.downcast::<FreshetError>() {
                Ok(f) => *f,
                Err(other) => FreshetError::DataFusion(DataFusionError::External(other)),
            },
            DataFusionError::Shared(inner) => match Arc::try_unwrap(inner) {
                Ok(e) => FreshetError::from(e),
                Err(shared) => FreshetError::DataFusion(DataFusionError::Shared(shared)),
            },
            DataFusionError::Context(context, inner) => match *inner {
                DataFusionError::External(boxed) if boxed.is::<FreshetError>() => {
                    FreshetError::from(DataFusionError::External(boxed)).context(context)
                }
                other => FreshetError::DataFusion(DataFusionError::Context(context, Box::new(other))),
            },
            DataFusionError::ArrowError(arrow, ctx) => match *arrow {
                datafusion::arrow::error::ArrowError::ExternalError(inner) => {
                    FreshetError::from(DataFusionError::External(inner))
                }
                other => FreshetError::DataFusion(DataFusionError::ArrowError(Box::new(other), ctx)),
            },
            other => FreshetError::DataFusion(other),
        }
    }
}

impl From<FreshetError> for DataFusionError {
    fn from(e: FreshetError) -> Self {
        match e {
            FreshetError::DataFusion(inner) => inner,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshet_errors_survive_a_trip_through_datafusion() {
        let original = FreshetError::TableNotFound { name: "t".into() };
        let through: DataFusionError = original.into();
        let back = FreshetError::from(through);
        assert!(matches!(back, FreshetError::TableNotFound { ref name } if name == "t"));
        assert_eq!(back.domain(), ErrorDomain::User);
    }

    #[test]
    fn datafusion_errors_get_a_domain() {
        let plan = FreshetError::from(DataFusionError::Plan("no such column".into()));
        assert_eq!(plan.domain(), ErrorDomain::User);
        let internal = FreshetError::from(DataFusionError::Internal("bug".into()));
        assert_eq!(internal.domain(), ErrorDomain::Internal);
    }
}
