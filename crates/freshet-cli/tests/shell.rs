//! The interactive shell, driven through a pseudo-terminal as a person would use it.

use std::path::Path;
use std::process::Command;

use rexpect::session::PtySession;

/// How long to wait for any expected output: generous, as tests share two cores.
const TIMEOUT_MS: u64 = 60_000;

/// Starts the shell on `data` with `home` as its home (where history is kept), in a terminal
/// of 30 lines and 120 columns. Results are not paged unless `pager` is given.
fn shell(data: &Path, home: &Path, pager: &str) -> PtySession {
    let mut command = Command::new("sh");
    command
        .args(["-c", "stty rows 30 cols 120 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_freshet"))
        .arg("--data-dir")
        .arg(data)
        .env("HOME", home)
        .env("TERM", "xterm")
        .env("PAGER", pager);
    let mut session = rexpect::session::spawn_command(command, Some(TIMEOUT_MS)).unwrap();
    session.exp_string("Type \\? for help").unwrap();
    prompt(&mut session);
    session
}

fn prompt(session: &mut PtySession) {
    session.exp_string("freshet> ").unwrap();
}

/// Runs `freshet` on `data` as another program would while the shell has it open.
fn other_session(data: &Path, sql: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_freshet"))
        .arg("--data-dir")
        .arg(data)
        .args(["--format", "csv", "-c", sql])
        .output()
        .unwrap()
}

#[test]
fn multi_line_statements_completion_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let (data, home) = (dir.path().join("data"), dir.path().join("home"));
    std::fs::create_dir(&home).unwrap();
    let mut shell = shell(&data, &home, "");
    shell
        .send_line("CREATE TABLE zorders (id INT PRIMARY KEY, amount INT);")
        .unwrap();
    shell.exp_string("OK").unwrap();
    prompt(&mut shell);

    // A statement runs at its terminating `;`, not at one inside a string or a comment.
    shell
        .send_line("INSERT INTO zorders VALUES (1, 10), -- first;")
        .unwrap();
    shell.exp_string("-> ").unwrap();
    shell.send_line("(2, 32);").unwrap();
    shell.exp_regex(r"\| 2 +\|").unwrap();
    prompt(&mut shell);
    shell.send_line("SELECT 'a;b' AS s,").unwrap();
    shell.exp_string("-> ").unwrap();
    shell.send_line("sum(amount) AS total FROM zorders;").unwrap();
    shell.exp_regex(r"\| a;b \| 42 +\|").unwrap();
    prompt(&mut shell);

    // Tab completes a column and a table name.
    shell.send("SELECT max(amou").unwrap();
    shell.send("\t").unwrap();
    shell.flush().unwrap();
    shell.send(") AS biggest FROM zord").unwrap();
    shell.send("\t").unwrap();
    shell.flush().unwrap();
    shell.send_line(";").unwrap();
    shell.exp_regex(r"\| 32 +\|").unwrap();
    prompt(&mut shell);
    shell.send_line("\\q").unwrap();
    shell.exp_eof().unwrap();

    // History survives the shell: the up arrow brings back the statement before `\q`.
    let mut shell = self::shell(&data, &home, "");
    shell.send("\x1b[A\x1b[A\r").unwrap();
    shell.flush().unwrap();
    shell.exp_regex(r"\| 32 +\|").unwrap();
    prompt(&mut shell);
    shell.send_control('d').unwrap();
    shell.exp_eof().unwrap();
}

#[test]
fn ctrl_c_cancels_the_running_statement_and_keeps_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let mut shell = shell(&dir.path().join("data"), dir.path(), "");
    shell
        .send_line("SELECT max(value) FROM generate_series(1, 1000000000000000);")
        .unwrap();
    // After a second, the progress indicator: then the statement is surely running.
    shell.exp_string("running:").unwrap();
    shell.send_control('c').unwrap();
    shell.exp_string("cancelled").unwrap();
    prompt(&mut shell);
    // A cancelled write commits nothing.
    shell.send_line("CREATE TABLE big (x BIGINT);").unwrap();
    shell.exp_string("OK").unwrap();
    prompt(&mut shell);
    shell
        .send_line("INSERT INTO big SELECT value FROM generate_series(1, 1000000000000000) WHERE value % 100000 = 1;")
        .unwrap();
    shell.exp_string("running:").unwrap();
    shell.send_control('c').unwrap();
    shell.exp_string("cancelled").unwrap();
    prompt(&mut shell);
    shell.send_line("SELECT count(*) AS n FROM big;").unwrap();
    shell.exp_regex(r"\| n +\|[^|]+\| 0 +\|").unwrap();
    prompt(&mut shell);
    // Ctrl-C at the prompt drops the unfinished input.
    shell.send_line("SELECT 'unfinished'").unwrap();
    shell.exp_string("-> ").unwrap();
    shell.send_control('c').unwrap();
    prompt(&mut shell);
    shell.send_line("SELECT 41 + 1 AS answer;").unwrap();
    shell.exp_regex(r"\| 42 +\|").unwrap();
    prompt(&mut shell);
    shell.send_control('d').unwrap();
    shell.exp_eof().unwrap();
}

#[test]
fn watch_follows_commits_made_in_another_session() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut shell = shell(&data, dir.path(), "");
    shell.send_line("CREATE TABLE readings (x INT);").unwrap();
    shell.exp_string("OK").unwrap();
    prompt(&mut shell);
    shell
        .send_line(
            "CREATE MATERIALIZED TABLE totals FRESHNESS = INTERVAL '1' SECOND \
             AS SELECT count(*) AS n, sum(x) AS total FROM readings;",
        )
        .unwrap();
    shell.exp_string("OK").unwrap();
    prompt(&mut shell);

    shell.send_line("\\watch totals").unwrap();
    shell.exp_string("totals at version").unwrap();
    shell.exp_regex(r"\| 0 +\| +\|").unwrap();
    // Another `freshet` on the same directory runs its statements in the shell's engine.
    let insert = other_session(&data, "INSERT INTO readings VALUES (5), (7)");
    assert!(insert.status.success(), "{}", String::from_utf8_lossy(&insert.stderr));
    assert_eq!(String::from_utf8_lossy(&insert.stdout), "count\n2\n");
    // The continuous refresh commits a new version of totals, and the watch shows it.
    shell.exp_string("totals at version").unwrap();
    shell.exp_regex(r"\| 2 +\| 12 +\|").unwrap();
    shell.send_control('c').unwrap();
    prompt(&mut shell);

    // The changelog: each version's rows marked - and +.
    shell.send_line("\\watch totals changes").unwrap();
    shell.exp_string("changes after version").unwrap();
    let update = other_session(&data, "UPDATE readings SET x = 10 WHERE x = 7");
    assert!(update.status.success(), "{}", String::from_utf8_lossy(&update.stderr));
    shell.exp_regex(r"\| - +\| 2 +\| 12 +\|").unwrap();
    shell.exp_regex(r"\| \+ +\| 2 +\| 15 +\|").unwrap();
    shell.send_control('c').unwrap();
    prompt(&mut shell);

    // Errors in another session are that session's, with their position.
    let failed = other_session(&data, "SELECT 1;\nSELECT nope FROM readings");
    assert_eq!(failed.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&failed.stdout), "Int64(1)\n1\n");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("line 2") && stderr.contains("nope"), "{stderr}");
    shell.send_line("\\q").unwrap();
    shell.exp_eof().unwrap();

    // With the shell gone, the directory opens directly again.
    let after = other_session(&data, "SELECT n, total FROM totals");
    assert_eq!(String::from_utf8_lossy(&after.stdout), "n,total\n2,15\n");
}

#[test]
fn results_taller_than_the_terminal_go_through_the_pager() {
    let dir = tempfile::tempdir().unwrap();
    let mut shell = shell(&dir.path().join("data"), dir.path(), "sed s/^/paged:/");
    shell.send_line("SELECT value FROM generate_series(1, 5);").unwrap();
    shell.exp_string("(5 rows)").unwrap();
    prompt(&mut shell);
    shell.send_line("SELECT value FROM generate_series(1, 50);").unwrap();
    shell.exp_string("paged:(50 rows)").unwrap();
    prompt(&mut shell);
    shell.send_control('d').unwrap();
    shell.exp_eof().unwrap();
}

#[test]
fn background_refresh_failures_are_reported_at_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let mut shell = shell(&dir.path().join("data"), dir.path(), "");
    shell
        .send_line("CREATE TABLE src (id INT PRIMARY KEY, x INT NOT NULL);")
        .unwrap();
    shell.exp_string("OK").unwrap();
    prompt(&mut shell);
    shell.send_line("\\d src").unwrap();
    shell.exp_string("Primary key: (id)").unwrap();
    prompt(&mut shell);
    shell
        .send_line(
            "CREATE MATERIALIZED TABLE by_x (PRIMARY KEY (x) NOT ENFORCED) \
             FRESHNESS = INTERVAL '1' SECOND AS SELECT x FROM src;",
        )
        .unwrap();
    shell.exp_string("OK").unwrap();
    prompt(&mut shell);
    // The continuous refresh this commit triggers fails (two rows with one key): the shell
    // says so while it sits at the prompt, without a key being pressed.
    shell.send_line("INSERT INTO src VALUES (1, 7), (2, 7);").unwrap();
    shell.exp_regex(r"\| 2 +\|").unwrap();
    prompt(&mut shell);
    shell
        .exp_string("notice: continuous refresh of \"by_x\" failed")
        .unwrap();
    shell.send_line("SELECT 1 AS still_here;").unwrap();
    shell.exp_string("still_here").unwrap();
    prompt(&mut shell);
    shell.send_control('d').unwrap();
    shell.exp_eof().unwrap();
}

#[test]
fn a_query_over_a_stream_is_followed_as_rows_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let (data, input) = (dir.path().join("data"), dir.path().join("in"));
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.json"), "{\"x\": 5}\n{\"x\": 7}\n").unwrap();
    let mut shell = shell(&data, dir.path(), "");
    shell
        .send_line(&format!(
            "CREATE TABLE s (x INT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json', \
             'source.monitor-interval' = '50 ms');",
            input.display()
        ))
        .unwrap();
    shell.exp_string("OK").unwrap();
    prompt(&mut shell);
    shell
        .send_line("SELECT count(*) AS n, sum(x) AS total FROM s;")
        .unwrap();
    shell.exp_regex(r"\| 2 +\| 12 +\|").unwrap();
    shell.exp_string("(following s").unwrap();
    // A file placed in the directory (whole, by rename) is ingested and the result shown again.
    std::fs::write(input.join(".b.json"), "{\"x\": 30}\n").unwrap();
    std::fs::rename(input.join(".b.json"), input.join("b.json")).unwrap();
    shell.exp_regex(r"\| 3 +\| 42 +\|").unwrap();
    shell.send_control('c').unwrap();
    prompt(&mut shell);
    shell.send_line("\\q").unwrap();
    shell.exp_eof().unwrap();

    // In a script, the same query reads what has arrived and returns.
    let scripted = other_session(&data, "SELECT count(*) AS n FROM s");
    assert_eq!(String::from_utf8_lossy(&scripted.stdout), "n\n3\n");
}
