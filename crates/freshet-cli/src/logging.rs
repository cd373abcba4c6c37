//! The binary's log: the engine's warnings (a checkpoint that cannot be used and a state
//! rebuilt, an operator state dropped, a background vacuum that failed, a server stopped) on
//! standard error.
//!
//! Without a subscriber the engine's `tracing` events went nowhere: a shell or a server fell
//! back to a rebuild or dropped a state without a word. `RUST_LOG` chooses what is written
//! (`RUST_LOG=freshet=debug` adds each incremental refresh's phases, say); by default the
//! engine's warnings and errors, and nothing of the libraries under it. While the interactive
//! shell reads a line, events go through its line editor (see [`print_through`]), which prints
//! them above the prompt and keeps the line being typed intact; the shell's own notices of
//! failed background refreshes stand for their warnings there.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use rustyline::ExternalPrinter;
use tracing_subscriber::EnvFilter;

/// What is logged when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "freshet=warn";

/// Where events go instead of standard error, while the shell is open.
static PRINTER: Mutex<Option<Box<dyn ExternalPrinter + Send>>> = Mutex::new(None);

/// Installs the log; called once, early in `main`. The interactive `shell` reports failed
/// background refreshes as notices of its own, and leaves their warnings out unless `RUST_LOG`
/// asks for them.
pub fn init(shell: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| match shell {
        true => EnvFilter::new(format!("{DEFAULT_FILTER},{}=off", freshet::REFRESH_FAILED_TARGET)),
        false => EnvFilter::new(DEFAULT_FILTER),
    });
    // A second subscriber (none is set before this) would be refused; the log is then simply
    // the first one's.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Event(Vec::new()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Sends the log through `printer` (the shell's line editor's) until [`print_to_stderr`].
pub fn print_through(printer: impl ExternalPrinter + Send + 'static) {
    *lock() = Some(Box::new(printer));
}

/// Sends the log to standard error again (the shell is closing).
pub fn print_to_stderr() {
    *lock() = None;
}

fn lock() -> std::sync::MutexGuard<'static, Option<Box<dyn ExternalPrinter + Send>>> {
    // A printer that panicked mid-print is still a printer: the log keeps going.
    PRINTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One event's text, written out whole when the formatter is done with it.
struct Event(Vec<u8>);

impl Write for Event {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        if let Some(printer) = lock().as_mut()
            && printer.print(String::from_utf8_lossy(&self.0).into_owned()).is_ok()
        {
            return;
        }
        // Nowhere else to report a failed write of the log.
        let _ = std::io::stderr().write_all(&self.0);
    }
}
