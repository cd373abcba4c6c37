//! The vocabulary every Freshet crate shares.
//!
//! - [`FreshetError`]: one error type whose every variant belongs to an [`ErrorDomain`] — the
//!   user's mistake, a failure of something outside the engine (storage, files), or a bug in the
//!   engine itself. User errors name what is wrong and where.
//! - [`ChangeBatch`]: an Arrow batch of rows with an Int64 weight column, the Z-set representation
//!   of changes (DBSP). Positive weights insert copies of a row, negative weights delete them; an
//!   update is a retraction of the old row and an insertion of the new one.
//! - [`RowKey`]: a row-encoded key as operator state holds it, inline when short; [`KeyMap`]:
//!   a map keyed by the values of some columns ([`KeyCodec`]), by `i64` when they are one
//!   integer column.
//! - [`Clock`]: the engine's time, injectable so that tests advance it instead of sleeping.

mod change;
mod clock;
mod durations;
mod error;
mod hop;
mod key_map;
mod parallel;
mod probe_order;
mod row_key;

pub use change::{ChangeBatch, WEIGHT_COLUMN, consolidate};
pub use clock::{Clock, ManualClock, SharedClock, Sleep, SystemClock};
pub use durations::intervals_as_durations;
pub use error::{ErrorDomain, FreshetError, Result, WINDOW_INPUT};
pub use hop::{HopBound, HopWindow};
pub use key_map::{Key, KeyCodec, KeyMap, Keys, Probe};
pub use parallel::{PARALLEL_MIN_ROWS, by_part, part_of, part_of_hash, run_parts, run_parts_by_key};
pub use probe_order::{CACHED_BYTES, sweep_order};
pub use row_key::RowKey;
