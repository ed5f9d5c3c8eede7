//! `usernet flows`, `usernet guests`, `usernet stats`: one request to a
//! running usernet's `--api-socket`, its reply printed as a table
//! ([`usernet::show`]) or, with `--json`, as it came.
//!
//! Exit codes: 0 when the reply was printed; 1 when the socket cannot be
//! reached, the reply is not what was asked for, or the server answered
//! with an error (one line on stderr, starting `usernet: `); 2 for a bad
//! command line (as every mode).
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use usernet::show;

use crate::cli::ShowArgs;

/// How long the server may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Which listing to ask for.
#[derive(Clone, Copy, Debug)]
pub enum Listing {
    /// `list_flows`.
    Flows,
    /// `list_guests`.
    Guests,
    /// `stats`.
    Stats,
}

/// Asks, prints, and returns the exit code.
pub fn run(what: Listing, args: &ShowArgs) -> ExitCode {
    match fetch(what, args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("usernet: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn fetch(what: Listing, args: &ShowArgs) -> anyhow::Result<String> {
    let path = &args.api_socket;
    let command = match what {
        Listing::Flows => "list_flows",
        Listing::Guests => "list_guests",
        Listing::Stats => "stats",
    };
    let ctx = || format!("--api-socket {}", path.display());
    let mut stream = UnixStream::connect(path).with_context(ctx)?;
    stream.set_read_timeout(Some(TIMEOUT)).with_context(ctx)?;
    stream.set_write_timeout(Some(TIMEOUT)).with_context(ctx)?;
    let request = format!(r#"{{"execute": "{command}"}}"#);
    stream.write_all(request.as_bytes()).with_context(ctx)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).with_context(ctx)?;
    let value: Value = serde_json::from_slice(&reply)
        .map_err(|e| anyhow::anyhow!("{}: bad reply ({e})", ctx()))?;
    if args.json {
        return Ok(format!("{}\n", String::from_utf8_lossy(&reply)));
    }
    let table = match what {
        Listing::Flows => show::flows(&value),
        Listing::Guests => show::guests(&value),
        Listing::Stats => show::stats(&value),
    };
    table.map_err(|e| anyhow::anyhow!("{}: {e}", ctx()))
}
