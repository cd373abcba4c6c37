//! `freshet --connect`: the shell and scripts against a running `freshet serve`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

const PASSWORD: &str = "open sesame";

/// A `freshet serve` child, stopped when dropped (also when a test fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `freshet serve` on a port the system picks, with a password; the server and the port.
fn serve() -> (Server, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_freshet"))
        .args([
            "--memory",
            "serve",
            "--pg-listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
        ])
        .env("FRESHET_PASSWORD", PASSWORD)
        .stderr(Stdio::piped())
        .spawn()
        .expect("freshet serve starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // "Postgres protocol on 127.0.0.1:PORT: psql ..."
    let port = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            let rest = line.strip_prefix("Postgres protocol on 127.0.0.1:")?;
            rest.split(':').next()?.parse::<u16>().ok()
        })
        .expect("serve names its port");
    // The server keeps writing to stderr; keep reading so that it never blocks.
    std::thread::spawn(move || for _ in lines {});
    (Server(child), port)
}

fn connect(port: u16, password: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_freshet"))
        .arg("--connect")
        .arg(format!("postgres://127.0.0.1:{port}"))
        .args(args)
        .env("FRESHET_PASSWORD", password)
        .env_remove("PGPASSWORD")
        .output()
        .unwrap()
}

#[test]
fn scripts_and_meta_commands_run_on_the_server() {
    let (_server, port) = serve();
    let out = connect(
        port,
        PASSWORD,
        &[
            "--format",
            "csv",
            "-c",
            "CREATE TABLE t (id BIGINT PRIMARY KEY, name VARCHAR); INSERT INTO t VALUES (1, 'a'), (2, NULL)",
            "-c",
            "CREATE MATERIALIZED TABLE n FRESHNESS = INTERVAL '1' HOUR AS SELECT COUNT(*) AS c FROM t",
            "-c",
            "SELECT id, name FROM t ORDER BY id",
            "-c",
            "\\dm",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("count\n2\n"), "{stdout}");
    assert!(stdout.contains("id,name\n1,a\n2,\n"), "{stdout}");
    assert!(stdout.contains("n,ACTIVE"), "{stdout}");

    // The same data from a second connection: it lives in the server.
    let out = connect(port, PASSWORD, &["--format", "csv", "-c", "SELECT c FROM n"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "c\n2\n");

    // Numbers and booleans keep their types (the server describes the query's columns).
    let out = connect(
        port,
        PASSWORD,
        &[
            "--format",
            "json",
            "-c",
            "SELECT id, name, id > 1 AS later FROM t ORDER BY id",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"[{"id":1,"name":"a","later":false},{"id":2,"later":true}]"#
    );

    // Errors stop the script with the server's message and SQLSTATE, as locally.
    let out = connect(port, PASSWORD, &["-c", "SELECT 1;\nSELECT * FROM nowhere"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("nowhere") && stderr.contains("42P01"),
        "{stderr}"
    );

    // A wrong password is refused before anything runs.
    let out = connect(port, "guess", &["-c", "SELECT 1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect") && stderr.contains("28P01"),
        "{stderr}"
    );
}

#[test]
fn the_interactive_shell_watches_over_the_server() {
    let (_server, port) = serve();
    let setup = connect(
        port,
        PASSWORD,
        &[
            "-c",
            "CREATE TABLE w (id BIGINT PRIMARY KEY, name VARCHAR); INSERT INTO w VALUES (1, 'first')",
        ],
    );
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));

    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", "stty rows 30 cols 120 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_freshet"))
        .arg("--connect")
        .arg(format!("postgres://127.0.0.1:{port}"))
        .env("FRESHET_PASSWORD", PASSWORD)
        .env("HOME", dir.path())
        .env("TERM", "xterm")
        .env("PAGER", "");
    let mut shell = rexpect::session::spawn_command(command, Some(60_000)).unwrap();
    shell.exp_string(&format!("on the server at 127.0.0.1:{port}")).unwrap();
    shell.exp_string("freshet> ").unwrap();
    shell.send_line("SELECT name FROM w;").unwrap();
    shell.exp_string("first").unwrap();
    shell.exp_string("freshet> ").unwrap();
    shell.send_line("\\d w").unwrap();
    shell.exp_string("name").unwrap();
    shell.exp_string("freshet> ").unwrap();

    shell.send_line("\\watch w").unwrap();
    shell.exp_string("Watching w").unwrap();
    let insert = connect(port, PASSWORD, &["-c", "INSERT INTO w VALUES (2, 'second')"]);
    assert!(insert.status.success(), "{}", String::from_utf8_lossy(&insert.stderr));
    shell.exp_string("+ 2 | second").unwrap();
    shell.send_control('c').unwrap();
    shell.exp_string("freshet> ").unwrap();

    // Ctrl-C cancels a running statement on the server and keeps the shell.
    shell.send_line("SELECT COUNT(*) FROM range(100000000000) a;").unwrap();
    // After a second, the progress indicator: then the statement is surely running.
    shell.exp_string("running:").unwrap();
    shell.send_control('c').unwrap();
    shell.exp_string("57014").unwrap();
    shell.exp_string("freshet> ").unwrap();
    shell.send_control('d').unwrap();
    shell.exp_eof().unwrap();
}
