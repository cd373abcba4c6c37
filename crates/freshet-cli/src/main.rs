//! `freshet`: Freshet's SQL shell and command line.
//!
//! With `-c` or `-f`, runs the statements in order and exits (0 on success, 1 on the first
//! error, which goes to standard error). Without them, opens an interactive shell when standard
//! input is a terminal, or runs standard input as a script when it is not.

mod allocator;
mod completion;
mod connection;
mod logging;
mod output;
mod remote;
mod script;
mod serve;
#[cfg(unix)]
mod sessions;
mod shell;
mod watch;

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use clap::{Arg, ArgAction, Command, value_parser};
use freshet::{DEFAULT_LOCATION, Engine, FreshetError};

use crate::connection::Connection;
use crate::output::{Format, Printer};

/// One piece of SQL to run, from `-c` or `-f`, in command-line order.
enum Source {
    Command(String),
    File(String),
}

fn command() -> Command {
    Command::new("freshet")
        .about("Freshet: a streaming SQL engine with materialized tables")
        .version(concat!(env!("CARGO_PKG_VERSION"), " (", env!("FRESHET_COMMIT"), ")"))
        .arg(
            Arg::new("data-dir")
                .long("data-dir")
                .value_name("DIR")
                .help("Data directory (default ./freshet-data); also file:// or memory:// locations")
                .global(true)
                .conflicts_with("memory"),
        )
        .arg(
            Arg::new("memory")
                .long("memory")
                .action(ArgAction::SetTrue)
                .global(true)
                .help("Keep all data in memory; nothing is written to disk"),
        )
        .arg(
            Arg::new("memory-limit")
                .long("memory-limit")
                .value_name("SIZE")
                .global(true)
                .value_parser(|v: &str| freshet::parse_size(v).map(|b| usize::try_from(b).unwrap_or(usize::MAX)))
                .help(
                    "Memory the engine may use for queries, operator state and rows statements hold (e.g. 4gb); \
                     past it a statement or table fails with an error instead (default: no limit)",
                ),
        )
        .arg(
            Arg::new("connect")
                .long("connect")
                .value_name("URL")
                .conflicts_with_all(["data-dir", "memory"])
                .help(
                    "Run statements on a running `freshet serve` (postgres://[user[:password]@]host[:port]; \
                     password from FRESHET_PASSWORD or PGPASSWORD)",
                ),
        )
        .arg(
            Arg::new("command")
                .short('c')
                .long("command")
                .value_name("SQL")
                .action(ArgAction::Append)
                // SQL may start with a comment: `-c "-- why\nSELECT 1"`.
                .allow_hyphen_values(true)
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
        .subcommand(serve::command())
        .subcommand(
            Command::new("nexmark-export")
                .about("Write Nexmark events as JSON lines (DIR/person, DIR/auction, DIR/bid), for any engine to read")
                .arg(Arg::new("dir").value_name("DIR").required(true).help("Where to write"))
                .arg(
                    Arg::new("events")
                        .long("events")
                        .value_name("N")
                        .value_parser(value_parser!(u64).range(1..))
                        .default_value("1000000")
                        .help("Number of events (persons, auctions and bids 1:3:46)"),
                )
                .arg(
                    Arg::new("rate")
                        .long("rate")
                        .value_name("EVENTS_PER_SECOND")
                        .value_parser(value_parser!(u64).range(1..))
                        .default_value("10000")
                        .help("Events per second of event time"),
                )
                .arg(
                    Arg::new("base-time")
                        .long("base-time")
                        .value_name("TIMESTAMP")
                        .default_value("2015-07-15 00:00:00")
                        .help("Event time of the first event"),
                )
                .arg(
                    Arg::new("seed")
                        .long("seed")
                        .value_name("N")
                        .value_parser(value_parser!(u64))
                        .default_value("0")
                        .help("Seed of the random numbers (the same seed, the same events)"),
                ),
        )
}

/// `freshet nexmark-export DIR ...`.
async fn nexmark_export(matches: &clap::ArgMatches) -> ExitCode {
    let value = |name: &str| matches.get_one::<String>(name).cloned().unwrap_or_default();
    let number = |name: &str| matches.get_one::<u64>(name).copied().unwrap_or_default();
    let dir = std::path::PathBuf::from(value("dir"));
    let options = [
        ("events.num", number("events").to_string()),
        ("first-event.rate", number("rate").to_string()),
        ("event.base-time", value("base-time")),
        ("seed", number("seed").to_string()),
    ];
    match freshet::nexmark::export_json_lines(&options, &dir).await {
        Ok([persons, auctions, bids]) => {
            println!(
                "wrote {persons} persons, {auctions} auctions and {bids} bids as JSON lines into {}",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
    allocator::configure();
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
    let interactive = sources.is_empty() && std::io::stdin().is_terminal();
    logging::init(interactive && matches.subcommand().is_none());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(_), Some((name, _))) = (matches.get_one::<String>("connect"), matches.subcommand()) {
        eprintln!("error: --connect runs statements on a server; `freshet {name}` runs here: give one of them");
        return ExitCode::from(2);
    }
    match matches.subcommand() {
        Some(("nexmark-export", export)) => return runtime.block_on(nexmark_export(export)),
        Some(("serve", serve)) => return runtime.block_on(serve::run(&location, serve)),
        _ => {}
    }
    if let Some(url) = matches.get_one::<String>("connect") {
        return runtime.block_on(async move {
            match remote::Remote::connect(url).await {
                Ok(remote) => run(&Connection::Remote(Box::new(remote)), format, interactive, sources).await,
                Err(message) => {
                    eprintln!("{message}");
                    ExitCode::FAILURE
                }
            }
        });
    }
    runtime.block_on(async move {
        let mut builder = Engine::builder().location(&location);
        if let Some(&limit) = matches.get_one::<usize>("memory-limit") {
            builder = builder.memory_limit(limit);
        }
        let engine = match builder.open().await {
            Ok(engine) => engine,
            Err(FreshetError::Locked {
                location: directory,
                detail,
            }) => {
                return in_other_engine(&directory, &detail, format, interactive, sources).await;
            }
            Err(e) => {
                eprintln!("error: cannot open {location}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let connection = Connection::Local(engine);
        let code = run(&connection, format, interactive, sources).await;
        if let Connection::Local(engine) = connection {
            engine.close().await;
        }
        code
    })
}

/// The interactive shell, or the scripts.
async fn run(connection: &Connection, format: Format, interactive: bool, sources: Vec<Source>) -> ExitCode {
    let printer = Printer::new(format);
    if interactive {
        shell::run(connection, printer).await
    } else {
        run_scripts(connection, printer, sources).await
    }
}

/// The data directory is open in another engine: run the statements in it when it is a shell
/// or a server offering sessions.
async fn in_other_engine(
    directory: &str,
    detail: &str,
    format: Format,
    interactive: bool,
    sources: Vec<Source>,
) -> ExitCode {
    #[cfg(unix)]
    match sessions::attach(std::path::Path::new(directory)).await {
        Some(Ok(remote)) => return run(&Connection::Remote(Box::new(remote)), format, interactive, sources).await,
        Some(Err(message)) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
        None => {}
    }
    #[cfg(not(unix))]
    let _ = (format, interactive, sources);
    eprintln!(
        "error: {directory} is open in another program ({detail}); a freshet shell or `freshet serve` \
         that has it open runs the statements of another `freshet --data-dir ...` given while it runs"
    );
    ExitCode::FAILURE
}

/// The scripts to run: the `-c`/`-f` sources, or standard input when there are none.
fn scripts_of(sources: Vec<Source>) -> Vec<Source> {
    if sources.is_empty() {
        vec![Source::File("-".into())]
    } else {
        sources
    }
}

async fn run_scripts(connection: &Connection, mut printer: Printer, sources: Vec<Source>) -> ExitCode {
    for source in scripts_of(sources) {
        let (origin, sql) = match read_source(&source) {
            Ok(read) => read,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(message) = shell::run_script_with_meta_commands(connection, &mut printer, &origin, &sql).await {
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
