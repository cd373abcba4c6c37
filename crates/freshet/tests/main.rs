//! Integration tests of the engine: one test binary (link time matters on small machines).

mod api;
mod properties;
mod slt;
