//! `\watch NAME [changes]`: a table followed live, driven by its commits (no polling) until
//! Ctrl-C. By default the whole table is shown again at each new version, in place on a
//! terminal; with `changes`, each new version's changes are printed as rows marked `+` (inserted)
//! and `-` (deleted), a changelog.

use freshet::Engine;

use crate::output::Printer;

/// What `\watch` shows at each version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Display {
    /// The whole table.
    Table,
    /// The rows inserted and deleted since the previous version.
    Changes,
}

impl Display {
    pub(crate) fn parse(word: Option<&str>) -> Option<Self> {
        match word.map(str::to_lowercase).as_deref() {
            None | Some("table") => Some(Self::Table),
            Some("changes") => Some(Self::Changes),
            Some(_) => None,
        }
    }
}

/// Follows `name` until Ctrl-C (or until the table is dropped).
pub(crate) async fn watch(engine: &Engine, printer: &mut Printer, name: &str, display: Display) {
    let table = match engine.table(name).or_else(|_| engine.table(&name.to_lowercase())) {
        Ok(table) => table,
        Err(e) => {
            eprintln!("error: {e}");
            return;
        }
    };
    let name = table.name().to_string();
    let mut versions = table.subscribe();
    drop(table);
    // Results come too often to page, and in place only on a terminal.
    let pager = std::mem::replace(&mut printer.pager, false);
    let in_place = printer.to_terminal() && display == Display::Table;
    let mut shown = *versions.borrow_and_update();
    if display == Display::Changes {
        println!("{name}: changes after version {shown} (Ctrl-C to stop)");
    }
    let mut first = true;
    loop {
        let version = *versions.borrow_and_update();
        let result = match display {
            Display::Table => {
                if in_place {
                    // Clear the screen and go home: the table updates in place.
                    print!("\x1b[2J\x1b[H");
                }
                println!(
                    "{name} at version {version}{} (Ctrl-C to stop)",
                    lag(engine, &name).await
                );
                crate::script::run_script(engine, printer, "\\watch", &table_query(&name)).await
            }
            Display::Changes if first || version == shown => Ok(()),
            Display::Changes => {
                let started = std::time::Instant::now();
                match engine.sql(&changes_query(&name, shown, version)).await {
                    Ok(batches) => match batches.iter().find(|b| b.num_rows() > 0) {
                        // A version without logical changes (a compaction) shows nothing.
                        None => Ok(()),
                        Some(batch) => {
                            println!("{name} version {version}{}:", lag(engine, &name).await);
                            printer
                                .print(&batch.schema(), &batches, started.elapsed())
                                .map_err(|e| format!("error: {e}"))
                        }
                    },
                    Err(e) => Err(format!("error: {e}")),
                }
            }
        };
        if let Err(message) = result {
            eprintln!("{message}");
            break;
        }
        first = false;
        shown = version;
        tokio::select! {
            changed = versions.changed() => {
                if changed.is_err() {
                    eprintln!("{name} was dropped");
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    printer.pager = pager;
}

/// `, data lag 1.2 s` for a materialized table.
async fn lag(engine: &Engine, name: &str) -> String {
    match engine.materialized_table(name).await {
        Ok(info) => info
            .data_lag_ms
            .map_or(String::new(), |ms| format!(", data lag {:.1} s", ms as f64 / 1000.0)),
        Err(_) => String::new(),
    }
}

fn table_query(name: &str) -> String {
    format!("SELECT * FROM \"{}\";", name.replace('"', "\"\""))
}

/// The changes of versions `from+1 ..= to`, deletions first, each row marked with `+`/`-` (and
/// its multiplicity when a version inserts or deletes several equal rows).
fn changes_query(name: &str, from: u64, to: u64) -> String {
    format!(
        "SELECT CASE WHEN _weight = 1 THEN '+' WHEN _weight = -1 THEN '-' \
         WHEN _weight > 0 THEN '+' || CAST(_weight AS TEXT) ELSE CAST(_weight AS TEXT) END AS \"+/-\", \
         * EXCLUDE (_weight) FROM table_changes('{}', {from}, {to}) ORDER BY _weight",
        name.replace('\'', "''")
    )
}

/// Follows a query over unbounded sources (Flink's SQL client shows such a result as it
/// changes): the query runs again at each commit of those sources' tables — new rows ingested —
/// until Ctrl-C. Its first result has been printed already.
pub(crate) async fn follow_query(engine: &Engine, printer: &mut Printer, sql: &str, sources: &[String]) {
    let mut versions = Vec::new();
    for name in sources {
        match engine.table(name) {
            Ok(table) => versions.push(table.subscribe()),
            Err(e) => {
                eprintln!("error: {e}");
                return;
            }
        }
    }
    let pager = std::mem::replace(&mut printer.pager, false);
    let in_place = printer.to_terminal();
    let names = sources.join(", ");
    println!("(following {names}: the result is shown again as rows arrive; Ctrl-C to stop)");
    loop {
        for v in &mut versions {
            v.borrow_and_update();
        }
        let changed = futures::future::select_all(versions.iter_mut().map(|v| Box::pin(v.changed())));
        tokio::select! {
            (changed, _, _) = changed => {
                if changed.is_err() {
                    eprintln!("a source was dropped");
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
        if in_place {
            print!("\x1b[2J\x1b[H");
        }
        println!("(following {names}; Ctrl-C to stop)");
        if let Err(message) = crate::script::run_script(engine, printer, "query", sql).await {
            eprintln!("{message}");
            break;
        }
    }
    printer.pager = pager;
}
