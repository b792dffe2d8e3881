//! `vdc vm console`: a VM's serial console, interactive or scripted.
//!
//! Output always comes from the console log through the API, read on from
//! the offset the previous read returned (`X-Console-Offset`), so nothing
//! is missed or shown twice; input is posted to the API, which types it on
//! the guest's ttyS0.
//!
//! Modes:
//! - **interactive** (stdin and stdout are terminals, no `--bytes`,
//!   `--follow`, `--send`, `-o json`), like `virsh console`:
//!   1. print how to detach, then the current (prompt) line;
//!   2. put the terminal in raw mode — a guard restores it on every way
//!      out, errors and panics included;
//!   3. a thread reads keystrokes; every 50 ms what was typed is sent in
//!      one request (Ctrl-C, arrows… go to the guest too);
//!   4. every 200 ms new output is printed;
//!   5. Ctrl-] (or end of input, SIGTERM, SIGHUP, the VM stopping)
//!      detaches.
//! - **tail**: print the end of the log (`--bytes`); `--follow` keeps
//!   printing new output until Ctrl-C.
//! - **send** (`--send TEXT`): type TEXT and a newline, print what the
//!   console shows during the next `--wait` seconds — for scripts.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use vdc_types::api::CONSOLE_INPUT_MAX_BYTES;
use vdc_types::VmPowerState;

use crate::commands::Ctx;
use crate::error::CliError;

/// Ctrl-], the detach key.
const DETACH: u8 = 0x1d;
/// How long keystrokes are gathered before being sent.
const INPUT_BATCH: Duration = Duration::from_millis(50);
/// How often new output is fetched.
const OUTPUT_POLL: Duration = Duration::from_millis(200);
/// How often an interactive session checks that the VM still runs.
const STATE_POLL: Duration = Duration::from_secs(2);
/// Default tail.
const DEFAULT_TAIL: u64 = 16 * 1024;
/// How much of the log's end is searched for the current line on attach.
const PROMPT_WINDOW: u64 = 512;

/// What `vdc vm console` was asked to do.
pub struct ConsoleArgs {
    /// VM name.
    pub name: String,
    /// Tail size, if given.
    pub bytes: Option<u64>,
    /// Follow the output.
    pub follow: bool,
    /// Line to send.
    pub send: Option<String>,
    /// Seconds to collect output after `send`.
    pub wait: u64,
}

/// Runs `vdc vm console` in the mode the arguments and the terminal ask for.
pub async fn run(ctx: &Ctx, args: ConsoleArgs) -> Result<(), CliError> {
    if let Some(text) = &args.send {
        return send(ctx, &args.name, text, Duration::from_secs(args.wait)).await;
    }
    let interactive = args.bytes.is_none()
        && !args.follow
        && !ctx.json()
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    if interactive {
        return interactive_session(ctx, &args.name).await;
    }
    let (text, mut offset) = ctx
        .client
        .console_tail(&args.name, args.bytes.unwrap_or(DEFAULT_TAIL))
        .await?;
    print_output(ctx, &args.name, &text)?;
    if !args.follow {
        return Ok(());
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tokio::time::sleep(OUTPUT_POLL) => {}
        }
        offset = print_new(ctx, &args.name, offset).await?;
    }
}

/// Prints the output after `offset`; returns the offset to read on from.
async fn print_new(ctx: &Ctx, name: &str, offset: u64) -> Result<u64, CliError> {
    let (text, next) = ctx.client.console_from(name, offset).await?;
    print_output(ctx, name, &text)?;
    Ok(next)
}

fn print_output(ctx: &Ctx, name: &str, text: &str) -> Result<(), CliError> {
    if text.is_empty() {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    let res = if ctx.json() {
        let line = serde_json::json!({ "vm": name, "console": text });
        writeln!(stdout, "{line}")
    } else {
        stdout.write_all(text.as_bytes())
    };
    res.and_then(|()| stdout.flush())
        .map_err(|e| CliError::Io("write the console output", e))
}

/// `--send`: type `text` + newline, then print the output of `wait`.
async fn send(ctx: &Ctx, name: &str, text: &str, wait: Duration) -> Result<(), CliError> {
    let line = format!("{text}\n");
    if line.len() > CONSOLE_INPUT_MAX_BYTES {
        return Err(CliError::Usage(format!(
            "--send text is {} bytes; at most {} fit in one console input",
            text.len(),
            CONSOLE_INPUT_MAX_BYTES - 1
        )));
    }
    let (_, mut offset) = ctx.client.console_tail(name, 0).await?;
    ctx.client.console_input(name, &line).await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        offset = print_new(ctx, name, offset).await?;
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(());
        }
        tokio::time::sleep(OUTPUT_POLL.min(deadline - now)).await;
    }
}

/// The terminal in raw mode; dropping it restores the saved settings.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Result<RawMode, CliError> {
        let err = |e: nix::Error| CliError::Io("put the terminal in raw mode", e.into());
        let saved = tcgetattr(std::io::stdin()).map_err(err)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw).map_err(err)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Why an interactive session ended.
enum Detach {
    Key,
    EndOfInput,
    Signal,
    Stopped(VmPowerState),
}

async fn interactive_session(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let state = ctx.client.get_vm(name).await?.state;
    if !state.has_process() {
        return Err(CliError::Client(vdc_client::ClientError::Api(
            vdc_types::ApiError::invalid_state(format!(
                "VM '{name}' is {state}; start it to use its console ('vdc vm start {name}'), \
                 or print the console log with --bytes"
            )),
        )));
    }
    let (tail, offset) = ctx.client.console_tail(name, PROMPT_WINDOW).await?;
    eprintln!(
        "Connected to the serial console of VM '{name}'.\n\
         Escape character is ^] (Ctrl + ]). Press Enter if no prompt shows."
    );
    let current_line = tail.rsplit('\n').next().unwrap_or("");
    let raw = RawMode::enter()?;
    let result = async {
        print_output(ctx, name, current_line)?;
        session_loop(ctx, name, offset).await
    }
    .await;
    drop(raw);
    eprintln!();
    match result? {
        Detach::Key => eprintln!("Detached from VM '{name}'."),
        Detach::EndOfInput => eprintln!("End of input; detached from VM '{name}'."),
        Detach::Signal => eprintln!("Signalled; detached from VM '{name}'."),
        Detach::Stopped(state) => eprintln!("VM '{name}' is {state}; detached."),
    }
    Ok(())
}

async fn session_loop(ctx: &Ctx, name: &str, mut offset: u64) -> Result<Detach, CliError> {
    let sig_err = |e| CliError::Io("listen for signals", e);
    let mut term = signal(SignalKind::terminate()).map_err(sig_err)?;
    let mut hup = signal(SignalKind::hangup()).map_err(sig_err)?;
    let mut keys = spawn_stdin_reader();
    let mut pending: Vec<u8> = Vec::new();
    let mut input_tick = tokio::time::interval(INPUT_BATCH);
    let mut output_tick = tokio::time::interval(OUTPUT_POLL);
    let mut state_tick = tokio::time::interval(STATE_POLL);
    loop {
        tokio::select! {
            chunk = keys.recv() => match chunk {
                None => {
                    send_pending(ctx, name, &mut pending).await?;
                    return Ok(Detach::EndOfInput);
                }
                Some(bytes) => match bytes.iter().position(|b| *b == DETACH) {
                    Some(i) => {
                        pending.extend_from_slice(&bytes[..i]);
                        send_pending(ctx, name, &mut pending).await?;
                        return Ok(Detach::Key);
                    }
                    None => pending.extend_from_slice(&bytes),
                },
            },
            _ = input_tick.tick() => send_pending(ctx, name, &mut pending).await?,
            _ = output_tick.tick() => offset = print_new(ctx, name, offset).await?,
            _ = state_tick.tick() => {
                let state = ctx.client.get_vm(name).await?.state;
                if !state.has_process() && state != VmPowerState::Unknown {
                    // Show what the guest printed on its way down.
                    print_new(ctx, name, offset).await?;
                    return Ok(Detach::Stopped(state));
                }
            }
            _ = term.recv() => return Ok(Detach::Signal),
            _ = hup.recv() => return Ok(Detach::Signal),
        }
    }
}

/// Keystrokes from stdin, read by a plain thread (a blocked read must not
/// keep the runtime from shutting down); the channel closes at end of input.
fn spawn_stdin_reader() -> mpsc::UnboundedReceiver<Vec<u8>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Sends what was typed, in requests of at most the API's limit.
async fn send_pending(ctx: &Ctx, name: &str, pending: &mut Vec<u8>) -> Result<(), CliError> {
    loop {
        let text = take_text(pending, CONSOLE_INPUT_MAX_BYTES);
        if text.is_empty() {
            return Ok(());
        }
        ctx.client.console_input(name, &text).await?;
    }
}

/// Removes from `pending` and returns its longest prefix of whole UTF-8
/// characters that fits in `max` bytes. Invalid bytes are dropped; an
/// incomplete character at the end stays for the next call.
fn take_text(pending: &mut Vec<u8>, max: usize) -> String {
    let mut out = String::new();
    let mut consumed = 0;
    while consumed < pending.len() {
        let rest = &pending[consumed..];
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, None),
            Err(e) => (
                std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or_default(),
                Some(e.error_len()),
            ),
        };
        let room = max - out.len();
        let mut end = room.min(valid.len());
        while !valid.is_char_boundary(end) {
            end -= 1;
        }
        out.push_str(&valid[..end]);
        consumed += end;
        if end < valid.len() {
            break;
        }
        match bad {
            None => break,
            Some(Some(n)) => consumed += n,
            Some(None) => break,
        }
    }
    pending.drain(..consumed);
    out
}

#[cfg(test)]
mod tests {
    use super::take_text;

    #[test]
    fn keystrokes_are_cut_at_characters_and_limits() {
        let mut p = b"ls -l\r".to_vec();
        assert_eq!(take_text(&mut p, 4096), "ls -l\r");
        assert!(p.is_empty());

        // An incomplete "é" (C3 A9) waits for its second byte.
        let mut p = vec![b'a', 0xC3];
        assert_eq!(take_text(&mut p, 4096), "a");
        assert_eq!(p, vec![0xC3]);
        p.push(0xA9);
        assert_eq!(take_text(&mut p, 4096), "é");
        assert!(p.is_empty());

        // Invalid bytes are dropped, the rest goes.
        let mut p = vec![b'a', 0xFF, b'b'];
        assert_eq!(take_text(&mut p, 4096), "ab");
        assert!(p.is_empty());

        // The limit never splits a character.
        let mut p = "abé".as_bytes().to_vec();
        assert_eq!(take_text(&mut p, 3), "ab");
        assert_eq!(take_text(&mut p, 3), "é");
        assert_eq!(take_text(&mut p, 3), "");

        let mut p = vec![b'x'; 5000];
        assert_eq!(take_text(&mut p, 4096).len(), 4096);
        assert_eq!(take_text(&mut p, 4096).len(), 904);
    }
}
