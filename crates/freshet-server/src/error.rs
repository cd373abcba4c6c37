//! The server's errors, and how engine errors are told to clients: a Postgres SQLSTATE code,
//! which also says whose fault it was (classes 0A, 22, 23, 42 are the statement's; 58 and 55 the
//! environment's; XX Freshet's).

use freshet::FreshetError;
use freshet::datafusion::error::DataFusionError;

/// Why a server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An address could not be listened on.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Postgres catalog could not be set up.
    #[error("cannot set up pg_catalog: {0}")]
    Catalog(#[source] Box<DataFusionError>),
    /// A listener beyond loopback without the credentials that protect it.
    #[error(
        "refusing to listen on {address} without {missing}: beyond loopback, anyone who can reach the port could use the engine"
    )]
    Unprotected {
        /// The address.
        address: std::net::SocketAddr,
        /// What is missing and how to set it.
        missing: String,
    },
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {path}: {message}")]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// Why it cannot be used.
        message: String,
    },
    /// The metrics recorder could not be set up.
    #[error("cannot set up metrics: {0}")]
    Metrics(String),
}

/// The SQLSTATE for an engine error.
pub fn sqlstate(error: &FreshetError) -> &'static str {
    match error {
        FreshetError::TableNotFound { .. } | FreshetError::MaterializedTableNotFound { .. } => "42P01",
        FreshetError::TableExists { .. } => "42P07",
        FreshetError::DuplicateKey { .. } => "23505",
        FreshetError::NullViolation { .. } => "23502",
        FreshetError::VersionNotFound { .. } => "42704",
        FreshetError::InvalidStatement(_) => "42601",
        FreshetError::Unsupported(_) => "0A000",
        FreshetError::InvalidLocation { .. } => "22023",
        FreshetError::FileNotAllowed { .. } => "42501",
        FreshetError::Locked { .. } => "55006",
        FreshetError::ConcurrentCommit { .. } => "40001",
        FreshetError::CorruptFile { .. } => "XX001",
        FreshetError::Storage { .. } => "58030",
        FreshetError::BadSourceData { .. } => "22000",
        FreshetError::Internal(_) => "XX000",
        FreshetError::Context { source, .. } => sqlstate(source),
        FreshetError::DataFusion(e) => datafusion_sqlstate(e),
    }
}

fn datafusion_sqlstate(error: &DataFusionError) -> &'static str {
    use freshet::datafusion::arrow::error::ArrowError;
    match error {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::SchemaError(..) => "42703",
        DataFusionError::Plan(message) if message.contains("not found") => "42P01",
        DataFusionError::Plan(_) => "42000",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::Configuration(_) => "22023",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::DivideByZero => "22012",
            ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
            _ => "22000",
        },
        DataFusionError::Execution(_) => "22000",
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) | DataFusionError::ParquetError(_) => "58030",
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => datafusion_sqlstate(inner),
        DataFusionError::Shared(inner) => datafusion_sqlstate(inner),
        DataFusionError::External(inner) => match inner.downcast_ref::<FreshetError>() {
            Some(e) => sqlstate(e),
            None => "58000",
        },
        DataFusionError::Collection(errors) => errors.first().map(datafusion_sqlstate).unwrap_or("XX000"),
        _ => "XX000",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_errors_are_the_statements_class() {
        let missing = FreshetError::TableNotFound { name: "t".into() };
        assert_eq!(sqlstate(&missing), "42P01");
        assert_eq!(sqlstate(&missing.context("statement 2")), "42P01");
        let parse = FreshetError::from(DataFusionError::SQL(
            Box::new(freshet::datafusion::sql::sqlparser::parser::ParserError::ParserError(
                "x".into(),
            )),
            None,
        ));
        assert_eq!(sqlstate(&parse), "42601");
        assert_eq!(sqlstate(&FreshetError::Internal("bug".into())), "XX000");
    }
}
