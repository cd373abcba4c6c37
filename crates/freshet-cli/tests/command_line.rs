//! The non-interactive command line: output formats, scripts, errors and exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn freshet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_freshet"))
        .args(args)
        .output()
        .expect("freshet runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

const SETUP: &str = "CREATE TABLE t (id INT PRIMARY KEY, name TEXT); INSERT INTO t VALUES (1, 'a'), (2, NULL)";

#[test]
fn table_format_is_aligned_with_a_row_count() {
    let out = freshet(&["--memory", "-c", SETUP, "-c", "SELECT * FROM t ORDER BY id"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "OK\n+-------+\n| count |\n+-------+\n| 2     |\n+-------+\n(1 row)\n\
         +----+------+\n| id | name |\n+----+------+\n| 1  | a    |\n| 2  |      |\n+----+------+\n(2 rows)\n"
    );
}

#[test]
fn csv_json_and_ndjson_have_no_decoration() {
    let query = "SELECT * FROM t ORDER BY id";
    let csv = freshet(&["--memory", "--format", "csv", "-c", SETUP, "-c", query]);
    assert_eq!(stdout(&csv), "count\n2\nid,name\n1,a\n2,\n");
    let json = freshet(&["--memory", "--format", "json", "-c", SETUP, "-c", query]);
    assert_eq!(
        stdout(&json),
        "[{\"count\":2}]\n[{\"id\":1,\"name\":\"a\"},{\"id\":2}]\n"
    );
    let ndjson = freshet(&["--memory", "--format", "ndjson", "-c", SETUP, "-c", query]);
    assert_eq!(
        stdout(&ndjson),
        "{\"count\":2}\n{\"id\":1,\"name\":\"a\"}\n{\"id\":2}\n"
    );
    let empty = freshet(&[
        "--memory",
        "--format",
        "json",
        "-c",
        "CREATE TABLE e (x INT)",
        "-c",
        "SELECT * FROM e",
    ]);
    assert_eq!(stdout(&empty), "[]\n");
}

#[test]
fn commands_and_files_run_in_order_and_data_persists() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let script = dir.path().join("script.sql");
    std::fs::write(
        &script,
        "INSERT INTO t VALUES (3, 'c');\n-- a comment; with a semicolon\nUPDATE t SET name = 'z' WHERE id = 1;\n",
    )
    .unwrap();
    let data = data.to_str().unwrap();
    let out = freshet(&[
        "--data-dir",
        data,
        "--format",
        "csv",
        "-c",
        SETUP,
        "-f",
        script.to_str().unwrap(),
        "-c",
        "SELECT count(*) AS n FROM t",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).ends_with("n\n3\n"), "{}", stdout(&out));
    let again = freshet(&[
        "--data-dir",
        data,
        "--format",
        "csv",
        "-c",
        "SELECT name FROM t ORDER BY id",
    ]);
    // A NULL alone on a line is quoted, so that it is not an empty line.
    assert_eq!(stdout(&again), "name\nz\n\"\"\nc\n");
}

#[test]
fn standard_input_is_a_script() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_freshet"))
        .args(["--memory", "--format", "csv", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT 1 + 1 AS two;\nSELECT 'x' AS y;")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(stdout(&out), "two\n2\ny\nx\n");
}

#[test]
fn the_first_error_stops_with_its_position_on_stderr() {
    let out = freshet(&[
        "--memory",
        "--format",
        "csv",
        "-c",
        SETUP,
        "-c",
        "SELECT 1 AS one;\nINSERT INTO t VALUES (1, 'dup');\nSELECT 2 AS two",
    ]);
    assert_eq!(out.status.code(), Some(1));
    // Statements before the error ran and printed; nothing after it did.
    assert_eq!(stdout(&out), "count\n2\none\n1\n");
    let err = stderr(&out);
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("duplicate primary key (id) = (1)"), "{err}");
    assert!(err.contains("INSERT INTO t VALUES (1, 'dup')"), "{err}");
}

#[test]
fn usage_errors_are_reported() {
    let parse = freshet(&["--memory", "-c", "SELEC 1"]);
    assert_eq!(parse.status.code(), Some(1));
    assert!(stderr(&parse).contains("SQL error"), "{}", stderr(&parse));
    let missing = freshet(&["--memory", "-f", "/nonexistent/script.sql"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("cannot read /nonexistent/script.sql"));
    let format = freshet(&["--memory", "--format", "xml", "-c", "SELECT 1"]);
    assert!(!format.status.success());
    assert!(stdout(&format).is_empty());
}

#[test]
fn the_readme_walkthrough_scripted() {
    let out = freshet(&[
        "--memory",
        "--format",
        "csv",
        "-c",
        "CREATE TABLE readings (x INT)",
        "-c",
        "CREATE MATERIALIZED TABLE totals FRESHNESS = INTERVAL '1' SECOND \
         AS SELECT count(*) AS n, sum(x) AS total FROM readings",
        "-c",
        "INSERT INTO readings VALUES (5), (7)",
        "-c",
        "ALTER MATERIALIZED TABLE totals REFRESH",
        "-c",
        "SELECT * FROM totals",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).ends_with("n,total\n2,12\n"), "{}", stdout(&out));
}

#[test]
fn sql_given_with_c_may_start_with_a_comment() {
    let out = freshet(&[
        "--memory",
        "--format",
        "csv",
        "-c",
        "-- why this query\nSELECT 1 AS one",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "one\n1\n");
}

#[test]
fn scripts_take_meta_commands_between_statements() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_freshet"))
        .args(["--memory", "--format", "csv", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = "CREATE TABLE t (id INT);\n\\d\nINSERT INTO t\n  VALUES (1);\n\\x\nSELECT id FROM t;\n\\q\nSELECT nothing FROM nowhere;\n";
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    // \d listed the table; \q ended the script before the failing statement.
    assert!(printed.contains("t,BASE TABLE"), "{printed}");
    assert!(printed.contains("Expanded display is on."), "{printed}");
    assert!(!stderr(&out).contains("nowhere"), "{}", stderr(&out));

    // An error's line is the script's own, after meta-commands.
    let out = freshet(&["--memory", "-c", "\\x\nSELECT 1;\n\nSELECT * FROM nowhere;"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 4"), "{}", stderr(&out));
}

#[test]
fn version_names_the_commit() {
    let out = freshet(&["--version"]);
    let version = stdout(&out);
    assert!(version.starts_with("freshet 0."), "{version}");
    assert!(version.contains('(') && version.contains(')'), "{version}");
}

/// The engine's warnings reach the user: a materialized table whose checkpoint is corrupt is
/// refreshed from a rebuilt state, right, and standard error says why.
#[test]
fn an_unusable_checkpoint_is_a_warning_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let run = |sql: &str| {
        Command::new(env!("CARGO_BIN_EXE_freshet"))
            .args(["--data-dir", data_dir, "--format", "csv", "-c", sql])
            .env_remove("RUST_LOG")
            .output()
            .expect("freshet runs")
    };
    let out = run(
        "CREATE TABLE kv (k INT, v BIGINT); INSERT INTO kv VALUES (1, 10), (2, 20);
         CREATE MATERIALIZED TABLE s FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL
           AS SELECT k, SUM(v) AS t FROM kv GROUP BY k;
         INSERT INTO kv VALUES (1, 5); ALTER MATERIALIZED TABLE s REFRESH",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "nothing to warn about yet");
    let mut corrupted = 0;
    for table in std::fs::read_dir(dir.path().join("tables")).unwrap() {
        let Ok(states) = std::fs::read_dir(table.unwrap().path().join("state")) else {
            continue;
        };
        for file in states {
            let path = file.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            corrupted += 1;
        }
    }
    assert!(corrupted > 0, "the refresh left a checkpoint");
    let out = run("INSERT INTO kv VALUES (2, 2); ALTER MATERIALIZED TABLE s REFRESH; SELECT * FROM s ORDER BY k");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).ends_with("k,t\n1,15\n2,22\n"), "{}", stdout(&out));
    let warning = stderr(&out);
    assert!(
        warning.contains("WARN") && warning.contains("checkpoint cannot be used") && warning.contains("rebuilt"),
        "{warning}"
    );
}
