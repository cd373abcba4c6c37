//! The interactive shell: line editing with history, statements that run at their terminating
//! `;`, meta-commands, Ctrl-C to cancel a running statement.

use std::process::ExitCode;

use freshet::Engine;
use freshet::datafusion::sql::sqlparser::dialect::GenericDialect;
use freshet::datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Editor, ExternalPrinter};
use tokio::sync::broadcast::error::RecvError;

use crate::completion::SqlHelper;
use crate::connection::Connection;
use crate::output::{Destination, Format, Printer};
use crate::watch::{Display, watch};

const HELP: &str = "\
Statements end with ';'. Meta-commands:
  \\?              this help
  \\q              quit (or Ctrl-D)
  \\d              list tables and materialized tables
  \\d NAME         describe a table (for a materialized table: query, freshness, mode, status, lag)
  \\dm             materialized tables with their status and data lag
  \\watch NAME [changes]
                  show a table again at each commit (a materialized table at each refresh),
                  with its version and data lag, until Ctrl-C; with `changes`, print each
                  commit's rows marked + (inserted) and - (deleted) instead
  \\timing         toggle timing of statements
  \\x              toggle expanded display (a line per column)
  \\format FORMAT  table, csv, json or ndjson
  \\o FILE         send results to FILE; \\o alone: back to the terminal
  \\pager          toggle the pager for results taller or wider than the terminal
                  ($PAGER, else less)
  \\i FILE         run the statements in FILE
Ctrl-C cancels the running statement, or clears the current input.";

pub(crate) async fn run(connection: &Connection, mut printer: Printer) -> ExitCode {
    let mut editor: Editor<SqlHelper, DefaultHistory> = match Editor::new() {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("error: cannot start line editing: {e}");
            return ExitCode::FAILURE;
        }
    };
    let history = std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".freshet_history"));
    if let Some(path) = &history {
        // A missing history file is normal on the first run.
        let _ = editor.load_history(path);
    }
    println!(
        "Freshet {} on {}. Type \\? for help.",
        env!("CARGO_PKG_VERSION"),
        connection.location()
    );
    editor.set_helper(Some(SqlHelper::default()));
    // Ctrl-C must never end the shell: from now on SIGINT is handled (this listener ignores it;
    // a running statement or `\watch` listens for it to stop).
    tokio::spawn(async { while tokio::signal::ctrl_c().await.is_ok() {} });
    printer.pager = true;
    printer.progress = true;
    // Other `freshet` commands on this directory run in this engine while the shell is open.
    #[cfg(unix)]
    let _sessions = match connection.engine() {
        Some(engine) => crate::sessions::offer(engine).await,
        None => None,
    };
    let mut buffer = String::new();
    let mut failed = FailedTables::default();
    if let Some(engine) = connection.engine() {
        report_refresh_failures(engine, &mut editor);
    }
    if let Ok(out) = editor.create_external_printer() {
        crate::logging::print_through(out);
    }
    loop {
        if buffer.is_empty() {
            failed.report(connection).await;
            if let Some(helper) = editor.helper_mut() {
                helper.refresh(connection).await;
            }
        }
        let prompt = if buffer.is_empty() { "freshet> " } else { "      -> " };
        let line = tokio::task::block_in_place(|| editor.readline(prompt));
        match line {
            Ok(line) => {
                if buffer.is_empty() && line.trim_start().starts_with('\\') {
                    let _ = editor.add_history_entry(line.as_str());
                    match meta_command(line.trim(), connection, &mut printer).await {
                        MetaOutcome::Continue => continue,
                        MetaOutcome::Quit => break,
                    }
                }
                if !buffer.is_empty() {
                    buffer.push('\n');
                }
                buffer.push_str(&line);
                if is_complete(&buffer) {
                    let _ = editor.add_history_entry(buffer.as_str());
                    let sql = std::mem::take(&mut buffer);
                    run_cancellable(connection, &mut printer, "input", &sql).await;
                }
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: {e}");
                break;
            }
        }
    }
    // The editor goes: what is logged from now on (the engine's close) goes to standard error.
    crate::logging::print_to_stderr();
    if let Some(path) = &history
        && let Err(e) = editor.save_history(path)
    {
        eprintln!("warning: cannot save history to {}: {e}", path.display());
    }
    ExitCode::SUCCESS
}

/// Runs a script (`-f`, standard input, `-c`) as the shell would read it: SQL statements, and
/// meta-commands (`\d`, `\i`, `\q`, ...) on lines of their own between statements, as psql
/// takes them in scripts. The first SQL error stops it; `\q` ends it.
pub(crate) async fn run_script_with_meta_commands(
    connection: &Connection,
    printer: &mut Printer,
    origin: &str,
    text: &str,
) -> Result<(), String> {
    let mut sql = String::new();
    // The line the pending SQL starts on, so that errors name the script's own lines.
    let mut first_line = 0;
    for (number, line) in text.lines().enumerate() {
        let between_statements = sql.trim().is_empty() || is_complete(&sql);
        if between_statements && line.trim_start().starts_with('\\') {
            if !sql.trim().is_empty() {
                let pending = format!("{}{}", "\n".repeat(first_line), std::mem::take(&mut sql));
                connection.run_script(printer, origin, &pending).await?;
            }
            sql.clear();
            if let MetaOutcome::Quit = meta_command(line.trim(), connection, printer).await {
                return Ok(());
            }
            first_line = number + 1;
            continue;
        }
        if sql.is_empty() {
            first_line = number;
        } else {
            sql.push('\n');
        }
        sql.push_str(line);
    }
    if sql.trim().is_empty() {
        return Ok(());
    }
    let pending = format!("{}{}", "\n".repeat(first_line), sql);
    connection.run_script(printer, origin, &pending).await
}

/// Whether the input ends with a `;` that is not inside a string or a comment (and, for
/// Flink's `BEGIN STATEMENT SET;`, with its `END;`).
pub(crate) fn is_complete(sql: &str) -> bool {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        // An unterminated string or comment: more input is coming.
        return false;
    };
    let words: Vec<&Token> = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    if words.last() != Some(&&Token::SemiColon) {
        return false;
    }
    let word = |i: usize| match words.get(i) {
        Some(Token::Word(w)) => w.value.to_ascii_uppercase(),
        _ => String::new(),
    };
    let is_set = word(0) == "BEGIN" && word(1) == "STATEMENT" && word(2) == "SET";
    !is_set || (words.len() >= 2 && word(words.len() - 2) == "END")
}

async fn run_cancellable(connection: &Connection, printer: &mut Printer, origin: &str, sql: &str) {
    let engine = match connection {
        Connection::Local(engine) => engine,
        Connection::Remote(remote) => {
            // Ctrl-C asks the server to cancel: the statement's error then says so.
            if let Err(message) = remote.run_cancellable(printer, origin, sql).await {
                eprintln!("{message}");
            }
            return;
        }
    };
    tokio::select! {
        result = crate::script::run_script(engine, printer, origin, sql) => {
            if let Err(message) = result {
                eprintln!("{message}");
                return;
            }
        }
        _ = tokio::signal::ctrl_c() => {
            // Dropping the running statement cancels it: what it had not begun to commit
            // leaves nothing behind, and a commit already under way runs to its end (a store
            // may have taken it already), so the statement may have landed.
            eprintln!("cancelled (a commit already under way completes: check before running it again)");
            return;
        }
    }
    // A query over a stream that does not end is followed as rows arrive, until Ctrl-C.
    let sources = engine.unbounded_sources_read(sql);
    if !sources.is_empty() {
        crate::watch::follow_query(engine, printer, sql, &sources).await;
    }
}

/// Reports each failed background refresh as it happens, above the prompt (rustyline's
/// external printer keeps the line being typed intact), from the engine's stream of refresh
/// attempts. Manual refreshes report their errors as statement errors instead.
fn report_refresh_failures(engine: &Engine, editor: &mut Editor<SqlHelper, DefaultHistory>) {
    let Ok(mut out) = editor.create_external_printer() else {
        return;
    };
    let mut attempts = engine.refresh_attempts();
    tokio::spawn(async move {
        loop {
            let attempt = match attempts.recv().await {
                Ok(attempt) => attempt,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            if attempt.outcome == "failed" && attempt.trigger != freshet::Trigger::Manual {
                let message = format!(
                    "notice: {} refresh of \"{}\" failed: {}\n",
                    attempt.trigger,
                    attempt.table,
                    attempt.detail.unwrap_or_default()
                );
                if out.print(message).is_err() {
                    return;
                }
            }
        }
    });
}

/// Reports, at the prompt, materialized tables that have stopped refreshing (FAILED after too
/// many failures in a row) since the last prompt.
#[derive(Default)]
struct FailedTables {
    reported: std::collections::HashSet<String>,
}

impl FailedTables {
    async fn report(&mut self, connection: &Connection) {
        let sql = "SELECT name, status, CAST(failures AS VARCHAR), last_error FROM freshet.materialized_tables";
        let Some(tables) = connection.rows(sql).await else {
            return;
        };
        for table in tables {
            let [Some(name), Some(status), failures, last_error] =
                <[Option<String>; 4]>::try_from(table).unwrap_or_default()
            else {
                continue;
            };
            if status != freshet::Status::Failed.to_string() {
                self.reported.remove(&name);
            } else if self.reported.insert(name.clone()) {
                eprintln!(
                    "notice: \"{name}\" is FAILED after {} failed refreshes and no longer refreshes; \
                     ALTER MATERIALIZED TABLE {name} RESUME after fixing it. Last error: {}",
                    failures.unwrap_or_default(),
                    last_error.as_deref().unwrap_or("unknown")
                );
            }
        }
    }
}

enum MetaOutcome {
    Continue,
    Quit,
}

async fn meta_command(line: &str, connection: &Connection, printer: &mut Printer) -> MetaOutcome {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or_default();
    let argument = words.next();
    match (command, argument) {
        ("\\q", _) => return MetaOutcome::Quit,
        ("\\?" | "\\help", _) => println!("{HELP}"),
        ("\\timing", _) => {
            printer.timing = !printer.timing;
            println!("Timing is {}.", if printer.timing { "on" } else { "off" });
        }
        ("\\x", _) => {
            printer.expanded = !printer.expanded;
            println!("Expanded display is {}.", if printer.expanded { "on" } else { "off" });
        }
        ("\\pager", _) => {
            printer.pager = !printer.pager;
            println!("Pager is {}.", if printer.pager { "on" } else { "off" });
        }
        ("\\o", None) => printer.destination = Destination::Stdout,
        ("\\o", Some(path)) => match std::fs::File::create(path) {
            Ok(file) => printer.destination = Destination::File(file),
            Err(e) => eprintln!("error: cannot write {path}: {e}"),
        },
        ("\\i", Some(path)) => match std::fs::read_to_string(path) {
            Ok(sql) => run_cancellable(connection, printer, path, &sql).await,
            Err(e) => eprintln!("error: cannot read {path}: {e}"),
        },
        ("\\format", Some(name)) => match <Format as clap::ValueEnum>::from_str(name, true) {
            Ok(format) => printer.format = format,
            Err(_) => eprintln!("error: unknown format {name}: use table, csv, json or ndjson"),
        },
        ("\\d", None) => {
            let sql = "SELECT t.table_name AS name, CASE WHEN m.name IS NULL THEN t.table_type \
                       ELSE 'MATERIALIZED TABLE' END AS type FROM information_schema.tables t \
                       LEFT JOIN freshet.materialized_tables m ON m.name = t.table_name \
                       WHERE t.table_schema = 'public' ORDER BY t.table_name;";
            run_cancellable(connection, printer, "\\d", sql).await;
        }
        ("\\d", Some(name)) => {
            let materialized = connection.is_materialized(name).await;
            let sql = if materialized {
                format!("DESCRIBE MATERIALIZED TABLE {name};")
            } else {
                format!("DESCRIBE {name};")
            };
            run_cancellable(connection, printer, "\\d", &sql).await;
            // A materialized table's description names its key; a table's columns do not.
            if !materialized
                && let Some(engine) = connection.engine()
                && let Ok(table) = engine.table(name).or_else(|_| engine.table(&name.to_lowercase()))
                && !table.snapshot().primary_key().is_empty()
            {
                println!("Primary key: ({})", table.snapshot().primary_key().join(", "));
            }
        }
        ("\\watch", Some(name)) => match (Display::parse(words.next()), connection) {
            (Some(display), Connection::Local(engine)) => watch(engine, printer, name, display).await,
            // Over a server, a table is followed by its changes.
            (Some(_), Connection::Remote(remote)) => remote.watch(name).await,
            (None, _) => eprintln!("error: \\watch NAME [changes]: unknown display {line}"),
        },
        ("\\dm", _) => {
            let sql = "SELECT name, status, refresh_mode, freshness, \
                       CASE WHEN data_lag_ms IS NULL THEN NULL ELSE CAST(data_lag_ms / 1000 AS TEXT) || ' s' END AS data_lag, \
                       last_refresh_at, next_refresh_at, last_error FROM freshet.materialized_tables ORDER BY name;";
            run_cancellable(connection, printer, "\\dm", sql).await;
        }
        _ => eprintln!("error: unknown command {line}: type \\? for help"),
    }
    MetaOutcome::Continue
}

#[cfg(test)]
mod tests {
    use super::is_complete;

    #[test]
    fn a_statement_set_ends_at_its_end() {
        assert!(!is_complete("BEGIN STATEMENT SET;"));
        assert!(!is_complete("BEGIN STATEMENT SET;\nINSERT INTO a SELECT 1;"));
        assert!(is_complete("BEGIN STATEMENT SET;\nINSERT INTO a SELECT 1;\nEND;"));
    }

    #[test]
    fn statements_end_at_a_semicolon_outside_strings_and_comments() {
        assert!(is_complete("SELECT 1;"));
        assert!(is_complete("SELECT 1;  "));
        assert!(!is_complete("SELECT 1"));
        assert!(!is_complete("SELECT ';"));
        assert!(!is_complete("SELECT 1 /* ; */"));
        assert!(!is_complete("SELECT 1 -- ;"));
        assert!(is_complete("SELECT 'a;b';"));
    }
}
