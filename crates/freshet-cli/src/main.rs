//! `freshet`: Freshet's SQL shell and command line.
//!
//! With `-c` or `-f`, runs the statements in order and exits (0 on success, 1 on the first
//! error, which goes to standard error). Without them, opens an interactive shell when standard
//! input is a terminal, or runs standard input as a script when it is not.

mod completion;
mod output;
mod shell;

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use clap::{Arg, ArgAction, Command, value_parser};
use freshet::{DEFAULT_LOCATION, Engine};

use crate::output::{Format, Printer};

/// One piece of SQL to run, from `-c` or `-f`, in command-line order.
enum Source {
    Command(String),
    File(String),
}

fn command() -> Command {
    Command::new("freshet")
        .about("Freshet: a streaming SQL engine with materialized tables")
        .version(env!("CARGO_PKG_VERSION"))
        .arg(
            Arg::new("data-dir")
                .long("data-dir")
                .value_name("DIR")
                .help("Data directory (default ./freshet-data); also file:// or memory:// locations")
                .conflicts_with("memory"),
        )
        .arg(
            Arg::new("memory")
                .long("memory")
                .action(ArgAction::SetTrue)
                .help("Keep all data in memory; nothing is written to disk"),
        )
        .arg(
            Arg::new("command")
                .short('c')
                .long("command")
                .value_name("SQL")
                .action(ArgAction::Append)
                .help("Run SQL (may be given several times; runs in order with -f)"),
        )
        .arg(
            Arg::new("file")
                .short('f')
                .long("file")
                .value_name("FILE")
                .action(ArgAction::Append)
                .help("Run the SQL in FILE (- for standard input)"),
        )
        .arg(
            Arg::new("format")
                .long("format")
                .value_name("FORMAT")
                .value_parser(value_parser!(Format))
                .default_value("table")
                .help("Output format"),
        )
}

fn sources(matches: &clap::ArgMatches) -> Vec<Source> {
    let mut sources: Vec<(usize, Source)> = Vec::new();
    for (kind, make) in [
        ("command", Source::Command as fn(String) -> Source),
        ("file", Source::File),
    ] {
        if let (Some(values), Some(indices)) = (matches.get_many::<String>(kind), matches.indices_of(kind)) {
            sources.extend(indices.zip(values).map(|(i, v)| (i, make(v.clone()))));
        }
    }
    sources.sort_by_key(|(i, _)| *i);
    sources.into_iter().map(|(_, s)| s).collect()
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    let location = if matches.get_flag("memory") {
        "memory://".to_string()
    } else {
        matches
            .get_one::<String>("data-dir")
            .cloned()
            .unwrap_or_else(|| DEFAULT_LOCATION.to_string())
    };
    let format = matches.get_one::<Format>("format").copied().unwrap_or(Format::Table);
    let sources = sources(&matches);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let engine = match Engine::builder().location(&location).open().await {
            Ok(engine) => engine,
            Err(e) => {
                eprintln!("error: cannot open {location}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let printer = Printer::new(format);
        let code = if sources.is_empty() && std::io::stdin().is_terminal() {
            shell::run(&engine, printer).await
        } else {
            run_scripts(&engine, printer, sources).await
        };
        engine.close().await;
        code
    })
}

async fn run_scripts(engine: &Engine, mut printer: Printer, sources: Vec<Source>) -> ExitCode {
    let scripts = if sources.is_empty() {
        vec![Source::File("-".into())]
    } else {
        sources
    };
    for source in scripts {
        let (origin, sql) = match read_source(&source) {
            Ok(read) => read,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(message) = run_script(engine, &mut printer, &origin, &sql).await {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn read_source(source: &Source) -> Result<(String, String), String> {
    match source {
        Source::Command(sql) => Ok(("-c".into(), sql.clone())),
        Source::File(path) if path == "-" => {
            let mut sql = String::new();
            std::io::stdin()
                .read_to_string(&mut sql)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            Ok(("<stdin>".into(), sql))
        }
        Source::File(path) => std::fs::read_to_string(path)
            .map(|sql| (path.clone(), sql))
            .map_err(|e| format!("cannot read {path}: {e}")),
    }
}

/// Runs every statement of a script, printing each result; the first error stops it and is
/// returned with the statement's position.
pub(crate) async fn run_script(engine: &Engine, printer: &mut Printer, origin: &str, sql: &str) -> Result<(), String> {
    let statements = engine.parse(sql).map_err(|e| format!("error: {origin}: {e}"))?;
    for statement in statements {
        let started = std::time::Instant::now();
        let result = match engine.execute(&statement).await {
            Ok(stream) => printer.print(stream, started).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            return Err(format!(
                "error: {origin}, line {}: {e}\n  in: {}",
                statement.line,
                first_line(&statement.text)
            ));
        }
    }
    Ok(())
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.len() < text.len() {
        format!("{line} ...")
    } else {
        line.to_string()
    }
}
