//! The vocabulary every Freshet crate shares.
//!
//! - [`FreshetError`]: one error type whose every variant belongs to an [`ErrorDomain`] — the
//!   user's mistake, a failure of something outside the engine (storage, files), or a bug in the
//!   engine itself. User errors name what is wrong and where.
//! - [`ChangeBatch`]: an Arrow batch of rows with an Int64 weight column, the Z-set representation
//!   of changes (DBSP). Positive weights insert copies of a row, negative weights delete them; an
//!   update is a retraction of the old row and an insertion of the new one.

mod change;
mod error;

pub use change::{ChangeBatch, WEIGHT_COLUMN, consolidate};
pub use error::{ErrorDomain, FreshetError, Result};
