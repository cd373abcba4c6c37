//! Tests of the `freshet` binary: the command line run as a program, and the interactive shell
//! driven through a pseudo-terminal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod command_line;
mod connect;
mod crash;
mod shell;
