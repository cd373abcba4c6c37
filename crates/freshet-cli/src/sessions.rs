//! Other sessions of a running shell's engine.
//!
//! A data directory is opened by one engine at a time (it is locked). So that statements can
//! still be run against a directory while a shell has it open — a script inserting rows while
//! the shell `\watch`es a materialized table — the interactive shell listens on a Unix socket
//! in the directory (`_freshet/sessions.sock`), and a `freshet -c/-f` that finds the directory
//! locked sends its statements there instead. They run in the shell's engine as a session of
//! their own; results come back in the requested format, errors on standard error, and the
//! exit status is what it would have been.
//!
//! The protocol is newline-delimited JSON: one [`Request`], then [`Reply`] lines.

use std::path::{Path, PathBuf};

use freshet::Engine;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::output::{Destination, Format, Printer};

/// The socket's place in a data directory.
fn socket_path(directory: &Path) -> PathBuf {
    directory.join("_freshet").join("sessions.sock")
}

/// What a session asks for: scripts to run in order, results in `format`.
#[derive(Serialize, Deserialize)]
struct Request {
    format: Format,
    scripts: Vec<Script>,
}

/// SQL text and where it came from (for error messages).
#[derive(Serialize, Deserialize)]
pub(crate) struct Script {
    pub origin: String,
    pub sql: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply {
    /// Output for standard output.
    Out(String),
    /// A message for standard error.
    Err(String),
    /// The end: the exit status.
    Exit(u8),
}

/// The listening side, for as long as it is kept; dropping it stops listening and removes the
/// socket.
pub(crate) struct Listener {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts accepting sessions for the engine's data directory. `None` when the engine's location
/// is not a local directory or the socket cannot be created (then sessions are simply not
/// offered; the shell works as before).
pub(crate) fn listen(engine: &Engine) -> Option<Listener> {
    let directory = Path::new(engine.location());
    if !directory.join("_freshet").is_dir() {
        return None;
    }
    let path = socket_path(directory);
    // This engine holds the directory's lock, so a socket already there was left by an engine
    // that was killed.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).ok()?;
    let engine = engine.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(engine.clone(), stream));
        }
    });
    Some(Listener { path, task })
}

/// Runs one session's request and sends back its output.
async fn serve(engine: Engine, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let request = match lines.next_line().await {
        Ok(Some(line)) => serde_json::from_str::<Request>(&line),
        _ => return,
    };
    let request = match request {
        Ok(request) => request,
        Err(e) => {
            let _ = send(
                &mut write,
                &Reply::Err(format!("error: a malformed session request: {e}")),
            )
            .await;
            let _ = send(&mut write, &Reply::Exit(2)).await;
            return;
        }
    };
    let (sender, mut results) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(async move {
        let mut printer = Printer::new(request.format);
        printer.destination = Destination::Channel(sender);
        for script in request.scripts {
            crate::script::run_script(&engine, &mut printer, &script.origin, &script.sql).await?;
        }
        Ok::<(), String>(())
    });
    while let Some(result) = results.recv().await {
        let text = String::from_utf8_lossy(&result).into_owned();
        if send(&mut write, &Reply::Out(text)).await.is_err() {
            // The other side has gone: cancel what it was running.
            run.abort();
            return;
        }
    }
    let status = match run.await {
        Ok(Ok(())) => 0,
        Ok(Err(message)) => {
            let _ = send(&mut write, &Reply::Err(message)).await;
            1
        }
        Err(e) => {
            let _ = send(&mut write, &Reply::Err(format!("error: the session failed: {e}"))).await;
            1
        }
    };
    let _ = send(&mut write, &Reply::Exit(status)).await;
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// Runs `scripts` in the engine of the shell that has `directory` open. `None` when no shell
/// listens there (the directory is held by another program); otherwise the exit status.
pub(crate) async fn attach(directory: &Path, format: Format, scripts: Vec<Script>) -> Option<u8> {
    let stream = UnixStream::connect(socket_path(directory)).await.ok()?;
    let (read, mut write) = stream.into_split();
    let request = Request { format, scripts };
    let status = async {
        let mut line = serde_json::to_vec(&request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        write.write_all(&line).await?;
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await? {
            match serde_json::from_str::<Reply>(&line).map_err(std::io::Error::other)? {
                Reply::Out(text) => {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                }
                Reply::Err(message) => eprintln!("{message}"),
                Reply::Exit(status) => return Ok(status),
            }
        }
        Err(std::io::Error::other("the shell closed the session"))
    };
    Some(status.await.unwrap_or_else(|e: std::io::Error| {
        eprintln!(
            "error: session with the shell that has {} open: {e}",
            directory.display()
        );
        1
    }))
}
