//! Freshet's SQL front end.
//!
//! DataFusion's parser handles every statement it knows; Freshet adds its own statements
//! (`ALTER TABLE ... COMPACT`, `VACUUM`, and the materialized-table statements in Apache
//! Flink's grammar) and a dialect with time-travel clauses. The result is a
//! list of [`ParsedStatement`]s, each with the text it came from, for the engine to plan.

mod dialect;
mod materialized;
mod statement;

pub use dialect::FreshetDialect;
pub use materialized::{AlterMaterializedTable, CreateMaterializedTable, Freshness, FreshnessUnit, RefreshMode};
pub use statement::{FreshetStatement, ParsedStatement, parse_statements};
