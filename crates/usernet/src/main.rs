//! `usernet`: the binary. Parses the command line ([`cli`]), sets up
//! logging, and runs the event loop of `usernet-host` for the chosen mode:
//! - `qemu`: a QEMU guest over a unix stream socket;
//! - `ns`: a command in new user + network namespaces, through a tap;
//! - `attach`: an existing network namespace, through a tap;
//! - `slirp4netns` (also when argv\[0\] is `slirp4netns`): `attach` with
//!   slirp4netns 1.2's command line ([`slirp4netns`]).
//!
//! Any mode can serve the slirp4netns JSON API ([`api`], in the library
//! part so it can be fuzzed, and [`control`]), which also lists flows,
//! guests and counters; `usernet flows|guests|stats` ask it ([`client`]).
//! `qemu`, `ns` and `attach` can serve Prometheus metrics
//! ([`metrics_server`]).
//! Every mode enters the sandbox ([`usernet_host::sandbox`]) once it is
//! set up, just before it serves the first event ([`Lockdown`]), unless
//! `--no-sandbox`.
//!
//! Exit codes: 0 after SIGINT/SIGTERM, 1 when serving fails (cannot bind
//! the socket, cannot listen for a port forward, cannot set up the tap or
//! enter the sandbox), 159 when the sandbox denied a system call, 2
//! for a bad command line or configuration (1 in slirp4netns mode, as
//! slirp4netns); `ns` exits with its command's status (128 + signal if it
//! was killed). Errors are one line on stderr, starting `usernet: `.
mod cli;
mod client;
mod conns;
mod control;
mod metrics_server;
mod slirp4netns;

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;
use usernet::api;
use usernet_core::host::{GuestFwdTarget, Proto};
use usernet_core::{Config, Stack};
use usernet_host::pcap::Pcap;
use usernet_host::sandbox::Sandbox;
use usernet_host::sockets::MioPoller;
use usernet_host::splice::{self, Side, SpliceFwd, Splicer};
use usernet_host::tap::{LinkConfig, Tap};
use usernet_host::{Control, Sockets, Stopped, StreamServer};
use usernet_host::{limits, netns};

/// The most connections the splice path carries at once (6 descriptors
/// each), also bounded by the flow limit.
const MAX_SPLICED: usize = 1024;

use crate::cli::{AttachArgs, CliError, Command, NsArgs, QemuArgs, StackArgs, TapArgs};
use crate::control::{ApiServer, Lockdown, ReadyFd, StopOn};
use crate::metrics_server::MetricsServer;

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let argv0 = argv.first().cloned().unwrap_or_default();
    if Path::new(&argv0).file_name() == Some("slirp4netns".as_ref()) {
        init_logging(0);
        return slirp4netns_main(&argv0.to_string_lossy(), &argv[1..]);
    }
    let cli = match cli::parse(argv) {
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
        Command::Ns(args) => ns(args),
        Command::Attach(args) => attach(args),
        Command::Slirp4netns(args) => slirp4netns_main("usernet slirp4netns", &args.args),
        Command::Flows(args) => client::run(client::Listing::Flows, &args),
        Command::Guests(args) => client::run(client::Listing::Guests, &args),
        Command::Stats(args) => client::run(client::Listing::Stats, &args),
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

/// Raises the descriptor limit and sets `cfg.max_flows` from it: an
/// explicit `--max-flows` wins, capped at what the descriptors allow (see
/// `usernet_host::limits`). Called once the configuration is valid (an
/// explicit 0 is refused there), so a bad flag stays a one-line error.
fn set_flow_limit(cfg: &mut Config, explicit: Option<usize>) {
    match limits::raise_nofile() {
        Ok(nofile) => {
            cfg.max_flows = limits::max_flows(explicit, nofile, cfg.hostfwd.len());
            tracing::info!("RLIMIT_NOFILE {nofile}: at most {} flows", cfg.max_flows);
        }
        Err(e) => tracing::warn!(%e, "cannot read RLIMIT_NOFILE; at most {} flows", cfg.max_flows),
    }
}

/// `usernet qemu`.
fn qemu(args: QemuArgs) -> ExitCode {
    let mut cfg = args.stack.config(resolv_conf);
    if let Err(e) = cfg.validate() {
        eprintln!("usernet: {e}");
        return ExitCode::from(2);
    }
    set_flow_limit(&mut cfg, args.stack.max_flows);
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
        .with_context(|| format!("--socket {}", path.display()))?
        .switch(cfg.mac, args.max_guests.into(), args.isolate);
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
    let mut api = match &args.api_socket {
        Some(p) => Some(
            ApiServer::bind(p, cfg.dhcpstart)
                .with_context(|| format!("--api-socket {}", p.display()))?,
        ),
        None => None,
    };
    let mut metrics = bind_metrics(args.stack.metrics)?;
    let mut lockdown = Lockdown(sandbox_for(args.stack.no_sandbox, &cfg, false));
    let mut controls: Vec<&mut dyn Control> = vec![&mut lockdown];
    if let Some(a) = &mut api {
        controls.push(a);
    }
    if let Some(m) = &mut metrics {
        controls.push(m);
    }
    let mut stack = Stack::new(cfg, Instant::now());
    let sockets = |r| Sockets::new(MioPoller::new(r));
    usernet_host::run_with(&mut stack, &mut server, pcap, sockets, &mut controls)?;
    Ok(())
}

/// A tap mode's configuration: the stack's, the namespace's address, and
/// the splice forwards.
struct TapConfig {
    cfg: Config,
    guest: Ipv4Addr,
    splice: Vec<SpliceFwd>,
}

/// Takes the forwards of the splice path out of `cfg`: `--hostfwd`s to a
/// loopback address (the namespace's own) and `--tcp-ns`.
fn splice_forwards(cfg: &mut Config, tap: &TapArgs) -> Result<Vec<SpliceFwd>, String> {
    let loopback = Ipv4Addr::LOCALHOST;
    let mut out = Vec::new();
    let mut err = None;
    cfg.hostfwd.retain(|f| {
        let Some(IpAddr::V4(g)) = f.guest_addr.filter(|g| g.is_loopback()) else {
            return true;
        };
        match (f.proto, f.host) {
            (Proto::Tcp, SocketAddr::V4(host)) => out.push(SpliceFwd {
                side: Side::Host,
                listen: host,
                target: SocketAddrV4::new(g, f.guest_port),
            }),
            _ => {
                err = Some(format!(
                    "--hostfwd to {g}:{}: the namespace's loopback takes only TCP from an IPv4 host address",
                    f.guest_port
                ));
            }
        }
        false
    });
    if let Some(e) = err {
        return Err(e);
    }
    out.extend(tap.tcp_ns.iter().map(|&(ns, host)| SpliceFwd {
        side: Side::Namespace,
        listen: SocketAddrV4::new(loopback, ns),
        target: SocketAddrV4::new(loopback, host),
    }));
    if out.len() > splice::MAX_LISTENERS {
        return Err(format!(
            "{} loopback forwards: at most {}",
            out.len(),
            splice::MAX_LISTENERS
        ));
    }
    Ok(out)
}

/// The configuration of a tap mode (`ns`, `attach`): the stack's, with the
/// namespace's address as the default port-forward target.
fn tap_config(stack: &StackArgs, tap: &TapArgs) -> Result<TapConfig, String> {
    let mut cfg = stack.config(resolv_conf);
    let splice = splice_forwards(&mut cfg, tap)?;
    let guest = tap.guest_addr(cfg.net);
    if !cfg.net.contains(guest)
        || guest == cfg.host
        || guest == cfg.dns
        || guest == cfg.net.network()
        || guest == cfg.net.broadcast()
    {
        return Err(format!(
            "--guest-addr {guest}: not a free host address of --net {}/{}",
            cfg.net.network(),
            cfg.net.prefix
        ));
    }
    // No DHCP in a namespace; the stack's fallback guest address (for
    // forwards before it saw the guest) is the namespace's.
    cfg.dhcpstart = guest;
    cfg.validate().map_err(|e| e.to_string())?;
    set_flow_limit(&mut cfg, stack.max_flows);
    Ok(TapConfig { cfg, guest, splice })
}

/// The splice path's control for `fwds` in the namespace at `netns`
/// (entered through `userns` when given), if there are any forwards.
fn splicer(
    fwds: &[SpliceFwd],
    netns: &Path,
    userns: Option<&Path>,
    max_flows: usize,
) -> anyhow::Result<Option<Splicer>> {
    if fwds.is_empty() {
        return Ok(None);
    }
    let ns = netns::NsSockets::open(netns, userns).context("splice path: namespace helper")?;
    let max = max_flows.min(MAX_SPLICED);
    Ok(Some(Splicer::new(ns, fwds, max).context("splice path")?))
}

/// The tap's link setup for `cfg` with the namespace at `guest`.
fn link_config(cfg: &Config, guest: Ipv4Addr, mac: Option<[u8; 6]>, up: bool) -> LinkConfig {
    LinkConfig {
        mtu: cfg.mtu,
        mac,
        ipv4: up.then_some((guest, cfg.net.prefix, cfg.host)),
    }
}

/// Whether we are root in our user namespace (else entering another
/// network namespace needs its user namespace too).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Serves `cfg` on the tap `fd` until a signal or a control stops it,
/// in `sandbox` (if any) once set up.
fn serve_tap(
    cfg: Config,
    fd: OwnedFd,
    tap_name: &str,
    pcap: Option<&Path>,
    outbound: (Option<Ipv4Addr>, Option<std::net::Ipv6Addr>),
    sandbox: Option<Sandbox>,
    controls: &mut [&mut dyn Control],
) -> anyhow::Result<Stopped> {
    let pcap = match pcap {
        Some(p) => Some(Pcap::create(p).with_context(|| format!("--pcap {}", p.display()))?),
        None => None,
    };
    tracing::info!(
        "serving {tap_name}: net {}/{} gateway {} dns {} mtu {}",
        cfg.net.network(),
        cfg.net.prefix,
        cfg.host,
        cfg.dns,
        cfg.mtu
    );
    let mut tap = Tap::new(fd, tap_name, cfg.max_frame());
    let mut stack = Stack::new(cfg, Instant::now());
    let sockets = |r| Sockets::new(MioPoller::new(r)).with_outbound(outbound.0, outbound.1);
    // The sandbox goes first (see Lockdown).
    let mut lockdown = Lockdown(sandbox);
    let mut all: Vec<&mut dyn Control> = vec![&mut lockdown];
    for c in controls.iter_mut() {
        all.push(&mut **c);
    }
    Ok(usernet_host::run_with(
        &mut stack, &mut tap, pcap, sockets, &mut all,
    )?)
}

fn bind_metrics(addr: Option<SocketAddr>) -> anyhow::Result<Option<MetricsServer>> {
    addr.map(|a| MetricsServer::bind(a).with_context(|| format!("--metrics {a}")))
        .transpose()
}

fn bind_api(path: Option<&PathBuf>, guest: Ipv4Addr) -> anyhow::Result<Option<ApiServer>> {
    path.map(|p| ApiServer::bind(p, guest).with_context(|| format!("--api-socket {}", p.display())))
        .transpose()
}

/// `usernet ns`.
fn ns(args: NsArgs) -> ExitCode {
    let tc = match tap_config(&args.stack, &args.tap) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("usernet: {e}");
            return ExitCode::from(2);
        }
    };
    let resolv = std::env::temp_dir().join(format!("usernet-{}.resolv.conf", std::process::id()));
    let result = serve_ns(&args, tc, &resolv);
    let _ = std::fs::remove_file(&resolv);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("usernet: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve_ns(args: &NsArgs, tc: TapConfig, resolv: &Path) -> anyhow::Result<ExitCode> {
    let TapConfig { cfg, guest, splice } = tc;
    std::fs::write(resolv, format!("nameserver {}\n", cfg.dns))
        .with_context(|| format!("{}", resolv.display()))?;
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    let waiting = netns::spawn_unshared(cmd, Some(resolv))
        .with_context(|| format!("cannot start {:?} in new namespaces", args.command[0]))?;
    let pid = waiting.pid();
    let userns = (!is_root()).then(|| PathBuf::from(format!("/proc/{pid}/ns/user")));
    let link = link_config(&cfg, guest, None, true);
    let netns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    // On failure `waiting` is dropped and the command exits unrun.
    // The splice path first: its helper sets the namespace's loopback up,
    // so it is up once the tap is.
    let mut spl = splicer(&splice, &netns_path, userns.as_deref(), cfg.max_flows)?;
    let fd = netns::open_tap(&netns_path, userns.as_deref(), &args.tap.tap, &link)?;
    let mut api = bind_api(args.tap.api_socket.as_ref(), guest)?;
    let mut metrics = bind_metrics(args.stack.metrics)?;
    let mut child = waiting.release().context("cannot run the command")?;
    let mut watch = StopOn::child(netns::pidfd_open(child.id()).context("pidfd_open")?);
    let mut controls: Vec<&mut dyn Control> = vec![&mut watch];
    if let Some(a) = &mut api {
        controls.push(a);
    }
    if let Some(m) = &mut metrics {
        controls.push(m);
    }
    if let Some(s) = &mut spl {
        controls.push(s);
    }
    // The command may be reaped and killed from inside the sandbox.
    let sandbox =
        sandbox_for(args.stack.no_sandbox, &cfg, !splice.is_empty()).map(|s| s.child(child.id()));
    let stopped = serve_tap(
        cfg,
        fd,
        &args.tap.tap,
        args.stack.pcap.as_deref(),
        (None, None),
        sandbox,
        &mut controls,
    );
    if !matches!(stopped, Ok(Stopped::Control)) {
        // A signal or an error: the command would be left without network.
        let _ = child.kill();
    }
    let status = child.wait().context("wait for the command")?;
    stopped?;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
}

/// `usernet attach`.
fn attach(args: AttachArgs) -> ExitCode {
    let TapConfig { cfg, guest, splice } = match tap_config(&args.stack, &args.tap) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("usernet: {e}");
            return ExitCode::from(2);
        }
    };
    let run = || -> anyhow::Result<()> {
        let netns_path = match (&args.netns, args.pid) {
            (Some(p), _) => p.clone(),
            (None, Some(pid)) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            (None, None) => anyhow::bail!("a PID or --netns is required"),
        };
        let userns = args.userns_path.clone().or_else(|| {
            args.pid
                .filter(|_| !is_root())
                .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/user")))
        });
        let link = link_config(&cfg, guest, None, true);
        let mut spl = splicer(&splice, &netns_path, userns.as_deref(), cfg.max_flows)?;
        let fd = netns::open_tap(&netns_path, userns.as_deref(), &args.tap.tap, &link)?;
        let mut api = bind_api(args.tap.api_socket.as_ref(), guest)?;
        let mut metrics = bind_metrics(args.stack.metrics)?;
        let mut controls: Vec<&mut dyn Control> = Vec::new();
        if let Some(a) = &mut api {
            controls.push(a);
        }
        if let Some(m) = &mut metrics {
            controls.push(m);
        }
        if let Some(s) = &mut spl {
            controls.push(s);
        }
        let sandbox = sandbox_for(args.stack.no_sandbox, &cfg, !splice.is_empty());
        serve_tap(
            cfg,
            fd,
            &args.tap.tap,
            args.stack.pcap.as_deref(),
            (None, None),
            sandbox,
            &mut controls,
        )?;
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("usernet: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// slirp4netns mode: `prog` is the name to show in messages.
fn slirp4netns_main(prog: &str, args: &[OsString]) -> ExitCode {
    let a = match slirp4netns::parse(args) {
        Ok(slirp4netns::Parsed::Run(a)) => a,
        Ok(slirp4netns::Parsed::Help) => {
            print!("{}", slirp4netns::help(prog));
            return ExitCode::SUCCESS;
        }
        Ok(slirp4netns::Parsed::Version) => {
            print!("{}", slirp4netns::version());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{prog}: {e} (see --help)");
            return ExitCode::from(1);
        }
    };
    match serve_slirp4netns(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{prog}: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The sandbox for a stack serving `cfg` (and the splice path, if
/// `splice`), unless `--no-sandbox`: TFTP
/// needs read-only opens, a `unix:` guestfwd unix sockets. A `cmd:`
/// guestfwd would run its command under the filter (seccomp is inherited
/// across `execve`), where no shell can work, so it turns the filter off.
fn sandbox_for(no_sandbox: bool, cfg: &Config, splice: bool) -> Option<Sandbox> {
    if no_sandbox {
        return None;
    }
    if cfg
        .guestfwd
        .iter()
        .any(|g| matches!(g.target, GuestFwdTarget::Cmd(_)))
    {
        tracing::warn!(
            "--guestfwd ...-cmd: runs commands, which a seccomp filter would break: running without the sandbox"
        );
        return None;
    }
    let mut sandbox = Sandbox::new();
    if cfg.tftp_root.is_some() {
        sandbox = sandbox.read_files();
    }
    if cfg
        .guestfwd
        .iter()
        .any(|g| matches!(g.target, GuestFwdTarget::Unix(_)))
    {
        sandbox = sandbox.unix_sockets();
    }
    if splice {
        sandbox = sandbox.splice();
    }
    Some(sandbox)
}

fn serve_slirp4netns(a: &slirp4netns::Args) -> anyhow::Result<()> {
    // The seccomp filter is on whether or not --enable-seccomp asks for
    // it; --enable-sandbox adds slirp4netns's mount namespace and
    // capability drop; usernet's own --no-sandbox turns both off.
    let sandbox = if a.no_sandbox {
        if a.enable_sandbox || a.enable_seccomp {
            tracing::warn!("--no-sandbox: ignoring --enable-sandbox and --enable-seccomp");
        }
        None
    } else {
        Some(Sandbox::new().isolate(a.enable_sandbox))
    };
    let net = a.cidr;
    let host_n = |n: u32| Ipv4Addr::from(u32::from(net.network()) | (n & !u32::from(net.mask())));
    let guest = host_n(100);
    let mut cfg = Config {
        net,
        host: host_n(2),
        dns: host_n(3),
        dhcpstart: guest,
        mtu: a.mtu,
        // slirp4netns serves IPv6 only when asked.
        ipv6: a.enable_ipv6,
        disable_host_loopback: a.disable_host_loopback,
        disable_dns: a.disable_dns,
        dns_upstreams: resolv_conf(),
        ..Config::default()
    };
    cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    set_flow_limit(&mut cfg, None);
    if a.exit_fd.is_some() && a.exit_fd == a.ready_fd {
        anyhow::bail!("--exit-fd and --ready-fd must differ");
    }
    let exit_fd = a
        .exit_fd
        .map(|fd| netns::inherited_fd(fd).with_context(|| format!("--exit-fd {fd}")))
        .transpose()?;
    let ready_fd = a
        .ready_fd
        .map(|fd| netns::inherited_fd(fd).with_context(|| format!("--ready-fd {fd}")))
        .transpose()?;
    let netns_path = if a.netns_is_path {
        PathBuf::from(&a.target)
    } else {
        PathBuf::from(format!("/proc/{}/ns/net", a.target))
    };
    let link = link_config(&cfg, guest, a.macaddress, a.configure);
    let fd = netns::open_tap(&netns_path, a.userns_path.as_deref(), &a.tapname, &link)?;
    let mut api = bind_api(a.api_socket.as_ref(), guest)?;
    let mut ready = ReadyFd(ready_fd.map(std::fs::File::from));
    let mut exit = exit_fd.map(StopOn::exit_fd);
    let mut controls: Vec<&mut dyn Control> = vec![&mut ready];
    if let Some(e) = &mut exit {
        controls.push(e);
    }
    if let Some(api) = &mut api {
        controls.push(api);
    }
    serve_tap(
        cfg,
        fd,
        &a.tapname,
        None,
        (a.outbound_addr, a.outbound_addr6),
        sandbox,
        &mut controls,
    )?;
    Ok(())
}
