//! Integration tests of the engine: one test binary (link time matters on small machines).

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod checkpoints;
mod durability;
mod floats;
mod hop_jobs;
mod incremental;
mod keys;
mod materialized;
mod nexmark;
mod properties;
mod random_schemas;
mod slt;
mod streams;
mod temporal;
mod tpch;
mod windows;
