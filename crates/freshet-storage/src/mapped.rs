//! Checkpoint files of a local location, mapped into memory rather than read.
//!
//! Restoring a large operator state from its checkpoint read the whole file into a fresh
//! buffer: for TPC-H Q9's 755 MB join state at scale factor 1, 0.43 s of a 0.98 s command-line
//! refresh, most of it the kernel zeroing and faulting in new pages and copying the page
//! cache into them. Mapped, the file's pages are the page cache's own; a join's rows are then
//! decoded in place from them (`freshet.state.read_in_place`) and paged in as they are used.
//!
//! This is one of the workspace's three uses of `unsafe` (the lint is `deny`, allowed here). A
//! mapping is sound only while no one changes the file under it. Freshet never does: a state
//! file is written once, under a new name, before the commit that names it, and is only ever
//! deleted afterwards (unlinking a mapped file keeps its pages until the mapping goes). The
//! location's lock keeps a second engine out. What remains is a person or another program
//! truncating or rewriting a file inside a data directory Freshet has open: the process may
//! then be stopped by SIGBUS, or read the changed bytes, as a database's own files would.
//! The file's checksum is checked after mapping, as for a read.
#![allow(unsafe_code)]

use std::path::Path;

/// Maps the file at `path` read-only. Its pages are mapped as they are first touched (by the
/// checksum, which reads them in order): asking the kernel to map them all at once
/// (`MAP_POPULATE`) cost about as much as the checksum itself, which with fault-around maps
/// 16 pages per fault. An empty file, which cannot be mapped, is read as empty bytes.
pub(crate) fn map(path: &Path) -> std::io::Result<bytes::Bytes> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(bytes::Bytes::new());
    }
    // SAFETY: the file is a state file, written once and never modified in place (see the
    // module's documentation); the mapping lives as long as the `Bytes` that own it.
    let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
    Ok(bytes::Bytes::from_owner(map))
}

/// An error mapping the file at `location`, as the store would have reported reading it.
pub(crate) fn error(
    location: &datafusion::object_store::path::Path,
    e: std::io::Error,
) -> freshet_common::FreshetError {
    use datafusion::object_store::Error;
    let source = match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound {
            path: location.to_string(),
            source: Box::new(e),
        },
        _ => Error::Generic {
            store: "LocalFileSystem (mapped)",
            source: Box::new(e),
        },
    };
    freshet_common::FreshetError::storage(location, source)
}
