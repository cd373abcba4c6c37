//! Freshet's SQL front end.
//!
//! DataFusion's parser handles every statement it knows; Freshet adds its own statements
//! (`ALTER TABLE ... COMPACT`, `VACUUM`, and the materialized-table statements in Apache
//! Flink's grammar) and a dialect with time-travel clauses. The result is a
//! list of [`ParsedStatement`]s, each with the text it came from, for the engine to plan.

mod connector_table;
mod dialect;
mod field_names;
mod grammar;
mod materialized;
mod statement;
mod window_tvf;

pub use connector_table::{ColumnKind, CreateConnectorTable, TableColumn, Watermark};
pub use dialect::FreshetDialect;
pub use materialized::{AlterMaterializedTable, CreateMaterializedTable, Freshness, FreshnessUnit, RefreshMode};
pub use statement::{FreshetStatement, ParsedStatement, VacuumRetain, parse_statements};
