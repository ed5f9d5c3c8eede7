//! `usernet`: the binary. Parses the command line ([`cli`]), sets up
//! logging, and runs the event loop of `usernet-host` for the chosen mode.
//!
//! Exit codes: 0 after SIGINT/SIGTERM, 1 when serving fails (cannot bind
//! the socket, cannot listen for a port forward), 2 for a bad command line
//! or configuration. Errors are one line on stderr, starting `usernet: `.
mod cli;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;
use usernet_core::{Config, Stack};
use usernet_host::StreamServer;
use usernet_host::pcap::Pcap;

use crate::cli::{CliError, Command, QemuArgs};

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(CliError::Display(e)) => e.exit(),
        Err(CliError::Usage(line)) => {
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.verbose);
    match cli.command {
        Command::Qemu(args) => qemu(args),
    }
}

/// Logs to stderr: info by default, `RUST_LOG` when set, and `-v`/`-vv`
/// (which win over `RUST_LOG`) for debug/trace of usernet's own crates.
fn init_logging(verbose: u8) {
    let ours =
        |level: &str| format!("info,usernet={level},usernet_core={level},usernet_host={level}");
    let filter = match verbose {
        0 => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        1 => EnvFilter::new(ours("debug")),
        _ => EnvFilter::new(ours("trace")),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// The upstream resolvers of `/etc/resolv.conf`, or none (with a warning).
fn resolv_conf() -> Vec<SocketAddr> {
    const PATH: &str = "/etc/resolv.conf";
    match std::fs::read_to_string(PATH) {
        Ok(text) => {
            let upstreams = usernet_core::dns::parse_resolv_conf(&text);
            if upstreams.is_empty() {
                tracing::warn!("{PATH} names no nameserver; DNS will fail (use --dns-upstream)");
            }
            upstreams
        }
        Err(e) => {
            tracing::warn!("{PATH}: {e}; DNS will fail (use --dns-upstream)");
            Vec::new()
        }
    }
}

/// `usernet qemu`.
fn qemu(args: QemuArgs) -> ExitCode {
    let cfg = args.stack.config(resolv_conf);
    if let Err(e) = cfg.validate() {
        eprintln!("usernet: {e}");
        return ExitCode::from(2);
    }
    match serve_qemu(&args, cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("usernet: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve_qemu(args: &QemuArgs, cfg: Config) -> anyhow::Result<()> {
    let path = &args.socket;
    let mut server = StreamServer::bind(path, cfg.max_frame())
        .with_context(|| format!("--socket {}", path.display()))?;
    let pcap = match &args.stack.pcap {
        Some(p) => Some(Pcap::create(p).with_context(|| format!("--pcap {}", p.display()))?),
        None => None,
    };
    tracing::info!(
        "listening on {}: net {}/{} gateway {} dns {} dhcp from {} mtu {}",
        path.display(),
        cfg.net.network(),
        cfg.net.prefix,
        cfg.host,
        cfg.dns,
        cfg.dhcpstart,
        cfg.mtu
    );
    let mut stack = Stack::new(cfg, Instant::now());
    usernet_host::run(&mut stack, &mut server, pcap)?;
    Ok(())
}
