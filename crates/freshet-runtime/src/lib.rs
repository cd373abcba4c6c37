//! Freshet's runtime: where streams come in, where results go out, and the jobs in between.
//!
//! A **connector table** (`CREATE TABLE ... WITH ('connector' = ...)`, Flink's DDL) is a
//! Freshet table whose rows come from outside. Its source is *ingested*: what the connector
//! has made available (new files of a directory, ...) is appended to the table in one
//! transaction, together with the source's position (which files, how far), so a version of
//! the table says exactly how much of the stream it holds, a restart resumes after it, and a
//! row is never ingested twice. Everything that reads tables — queries, materialized tables,
//! time travel, change reads — therefore reads streams too, and any range of a stream can be
//! replayed from the table's versions.
//!
//! A **job** (`INSERT INTO sink SELECT ...` over a stream) is an incremental pipeline
//! (`freshet-incremental`) stepped over the changes of its input tables, after asking their
//! sources to ingest what is new; its output goes to a [`sink::Sink`]: a Freshet table, or an
//! external sink (`blackhole`, `print`).

pub mod connector;
pub mod job;
mod partitions;
pub mod sink;
pub mod source;

pub use connector::{Connector, ConnectorOptions, EventTimeOptions, FileFormat, LateData};
pub use job::{
    Job, JobBranch, JobCheckpoint, JobInfo, JobInput, JobProgress, JobStart, JobStatus, Jobs, Restored, SavedProgress,
};
pub use sink::Sink;
pub use source::{EventTime, IngestReport, Source, SourceColumn, SourceProgress};
