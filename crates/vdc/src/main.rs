//! `vdc`: one binary for every role of the virtual datacenter.
//!
//! - `vdc server` runs the control plane, `vdc agent` a host's agent and
//!   `vdc lab` a whole cluster on this machine; their arguments and code live
//!   in the crates that implement them. `vdc vm-supervisor` (hidden) is the
//!   process the agent keeps beside each VM's QEMU (`vdc-supervisor`).
//! - Every other subcommand is a client of the REST API (`vdc vm create`,
//!   `vdc host list`…): it prints tables for people or the API's JSON for
//!   scripts, waits for tasks with a progress bar, and exits with a code that
//!   says what kind of failure happened (see [`error`]).
//!
//! Steps: parse the command line (usage errors exit 2, printed as JSON too
//! with `-o json`); put `--url`/`--token` into the environment the client
//! reads, before any thread exists; start the async runtime; run the
//! subcommand; print `error: ...` and exit with the mapped code on failure.

mod backup;
mod backup_sync;
mod cli;
mod clone_cli;
mod commands;
mod console;
mod error;
mod format;
mod ha;
mod ha_groups;
mod join;
mod maintenance;
mod migration_tls;
mod nics;
mod plan;
mod replication;
mod site;
mod snapshot;
mod switches;
mod vm_commands;
mod wait;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, Output};
use crate::commands::Ctx;
use crate::error::{CliError, EXIT_OTHER, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    // Single-threaded here: the runtime starts below, so changing the
    // environment cannot race with a reader.
    if let Some(url) = &cli.url {
        std::env::set_var("VDC_URL", url);
    }
    if let Some(token) = &cli.token {
        std::env::set_var("VDC_TOKEN", token);
    }
    let output = cli.output;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_OTHER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, output),
    }
}

/// Runs the parsed command.
async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Server(args) => {
            init_tracing();
            vdc_api::run_server(*args).await.map_err(CliError::Process)
        }
        Command::Agent(args) => {
            init_tracing();
            let config = args
                .into_config()
                .map_err(|e| CliError::Process(e.into()))?;
            vdc_agent::run(config)
                .await
                .map_err(|e| CliError::Process(e.into()))
        }
        Command::Lab(args) => vdc_lab::run(*args).await.map_err(CliError::Process),
        Command::Bench(args) => vdc_bench::run(*args, cli.output == Output::Json)
            .await
            .map_err(|e| CliError::Process(e.into())),
        Command::VmSupervisor(args) => {
            init_tracing();
            vdc_supervisor::run(*args)
                .await
                .map_err(|e| CliError::Process(e.into()))
        }
        command => {
            let client = vdc_client::Client::from_env()?;
            let ctx = Ctx {
                client,
                output: cli.output,
            };
            commands::run(&ctx, command).await
        }
    }
}

/// Logs of the long-running processes go to stderr, filtered by `RUST_LOG`
/// (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Prints a failure and returns its exit code.
fn report(e: &CliError, output: Output) -> ExitCode {
    if let CliError::Io(_, io) = e {
        if io.kind() == std::io::ErrorKind::BrokenPipe {
            // Whoever read our output has gone; there is no one to tell.
            return ExitCode::from(EXIT_OTHER);
        }
    }
    eprintln!("error: {e}");
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
    if output == Output::Json {
        println!("{}", e.to_json());
    }
    ExitCode::from(e.exit_code())
}

/// Prints a command-line error (or the help/version text clap produced) and
/// returns clap's exit code: 0 for help and version, 2 for usage errors.
fn usage_error(e: &clap::Error) -> ExitCode {
    let code = e.exit_code();
    if code != 0 && wants_json(std::env::args_os().skip(1)) {
        let rendered = e.render().to_string();
        let first = rendered.lines().next().unwrap_or("invalid command line");
        let message = first.strip_prefix("error: ").unwrap_or(first).to_string();
        println!(
            "{}",
            serde_json::json!({ "code": "invalid_input", "message": message })
        );
    }
    let _ = e.print();
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_USAGE))
}

/// Whether raw arguments ask for JSON output (`-o json`, `--output json`,
/// `-ojson`, `--output=json`), for when they could not be parsed.
fn wants_json(args: impl IntoIterator<Item = OsString>) -> bool {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.iter().enumerate().any(|(i, a)| match a.as_str() {
        "-o" | "--output" => args.get(i + 1).is_some_and(|v| v == "json"),
        "-ojson" | "--output=json" | "-o=json" => true,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::wants_json;

    fn w(args: &[&str]) -> bool {
        wants_json(args.iter().map(|a| a.into()))
    }

    #[test]
    fn json_flag_is_found_in_raw_arguments() {
        assert!(w(&["vm", "list", "-o", "json"]));
        assert!(w(&["--output=json", "vm"]));
        assert!(w(&["vm", "-ojson"]));
        assert!(!w(&["vm", "list", "-o", "table"]));
        assert!(!w(&["vm", "list", "-o"]));
        assert!(!w(&["vm", "create", "json"]));
    }
}
