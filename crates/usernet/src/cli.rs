//! The command line: clap types, their conversion to a [`Config`], and
//! one-line usage errors.
//!
//! Option names and defaults are QEMU's (`-nic user,net=...,host=...`) and
//! slirp4netns's. As in QEMU, `--host`, `--dns` and `--dhcpstart` default to
//! host numbers 2, 3 and 15 (`0x202`, `0x203`, `0x20f` masked) inside
//! `--net`, so `--net 192.168.76.0/24` alone moves them all. A bad value
//! gives one line on stderr naming the flag and exit code 2 (clap's own
//! errors run to several lines; [`parse`] folds them).
use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use usernet_core::Config;
use usernet_core::config::{
    DhcpHost, DnsHost, EgressRule, GuestFwd, HostFwd, Ipv4Net, Ipv6Net, parse_dns_upstream,
};

/// A memory-safe user-mode network stack for QEMU guests.
#[derive(Debug, Parser)]
#[command(name = "usernet", version)]
pub struct Cli {
    /// More logging: -v logs every frame (debug), -vv everything (trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to serve.
    #[command(subcommand)]
    pub command: Command,
}

/// The modes usernet runs in.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a QEMU guest over `-netdev stream` on a unix socket.
    Qemu(QemuArgs),
    /// Run a command in a new user and network namespace served by usernet
    /// through a tap; exit with the command's status.
    Ns(NsArgs),
    /// Serve an existing network namespace through a tap (as
    /// `slirp4netns --configure PID tap0`).
    Attach(AttachArgs),
    /// slirp4netns's command line (`usernet slirp4netns --help`); also
    /// used when usernet runs under the name `slirp4netns`.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Slirp4netns(Slirp4netnsArgs),
    /// Print a running usernet's flows (through its --api-socket).
    Flows(ShowArgs),
    /// Print a running usernet's guests (through its --api-socket).
    Guests(ShowArgs),
    /// Print a running usernet's counters (through its --api-socket).
    Stats(ShowArgs),
}

/// `usernet flows`, `guests`, `stats`: which usernet to ask.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The API socket of the running usernet.
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// Print the API's JSON reply as it is instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `usernet slirp4netns`: its arguments are parsed by [`crate::slirp4netns`].
#[derive(Debug, Args)]
pub struct Slirp4netnsArgs {
    /// slirp4netns's options and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// The namespace side of `ns` and `attach`.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// The namespace's address [default: host 100 of --net, 10.0.2.100].
    #[arg(long, value_name = "ADDR")]
    pub guest_addr: Option<Ipv4Addr>,
    /// Name of the tap device inside the namespace.
    #[arg(long, value_name = "NAME", default_value = "tap0")]
    pub tap: String,
    /// Serve the slirp4netns JSON API (port forwards) on this unix socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Forward TCP connections to the namespace's 127.0.0.1:PORT to the
    /// host's 127.0.0.1:HOSTPORT [default: PORT], socket to socket with
    /// splice(2) (pasta's -T/--tcp-ns) (repeatable).
    #[arg(long = "tcp-ns", value_name = "PORT[:HOSTPORT]", value_parser = parse_tcp_ns)]
    pub tcp_ns: Vec<(u16, u16)>,
}

/// `--tcp-ns PORT[:HOSTPORT]`.
fn parse_tcp_ns(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{p}' is not a port (1-65535)")),
    };
    match s.split_once(':') {
        Some((ns, host)) => Ok((port(ns)?, port(host)?)),
        None => port(s).map(|p| (p, p)),
    }
}

impl TapArgs {
    /// The namespace's address within `net`.
    pub fn guest_addr(&self, net: Ipv4Net) -> Ipv4Addr {
        self.guest_addr.unwrap_or_else(|| in_net(net, 100))
    }
}

/// `usernet ns`.
#[derive(Debug, Args)]
pub struct NsArgs {
    /// The network and its services.
    #[command(flatten)]
    pub stack: StackArgs,
    /// The namespace's tap.
    #[command(flatten)]
    pub tap: TapArgs,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `usernet attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The network and its services.
    #[command(flatten)]
    pub stack: StackArgs,
    /// The namespace's tap.
    #[command(flatten)]
    pub tap: TapArgs,
    /// The network namespace as a path (e.g. /run/netns/NAME) instead of a
    /// PID.
    #[arg(long, value_name = "PATH", conflicts_with = "pid")]
    pub netns: Option<PathBuf>,
    /// Enter this user namespace first (a namespace owned by another user).
    #[arg(long, value_name = "PATH")]
    pub userns_path: Option<PathBuf>,
    /// A process in the network namespace to serve.
    #[arg(value_name = "PID", required_unless_present = "netns")]
    pub pid: Option<u32>,
}

/// `usernet qemu`.
#[derive(Debug, Args)]
pub struct QemuArgs {
    /// Unix socket to listen on; QEMU connects with
    /// `-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH`.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Serve the slirp4netns JSON API (port forwards) on this unix socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// The most QEMU guests connected at once, each a port of one virtual
    /// switch; one more is refused (logged, its connection closed).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=254))]
    pub max_guests: u16,
    /// Keep the guests apart: each reaches the stack (NAT, DNS, DHCP) but
    /// no other guest.
    #[arg(long)]
    pub isolate: bool,
    /// The network and its services.
    #[command(flatten)]
    pub stack: StackArgs,
}

/// Options every mode shares: the guest network, its services, capture,
/// the sandbox.
#[derive(Debug, Args)]
pub struct StackArgs {
    /// Guest network.
    #[arg(long, value_name = "ADDR/PREFIX", default_value = "10.0.2.0/24")]
    pub net: Ipv4Net,
    /// Gateway address, which reaches the host's loopback [default: host 2
    /// of --net, 10.0.2.2].
    #[arg(long, value_name = "ADDR")]
    pub host: Option<Ipv4Addr>,
    /// DNS forwarder address [default: host 3 of --net, 10.0.2.3].
    #[arg(long, value_name = "ADDR")]
    pub dns: Option<Ipv4Addr>,
    /// First address leased by DHCP [default: host 15 of --net, 10.0.2.15].
    #[arg(long, value_name = "ADDR")]
    pub dhcpstart: Option<Ipv4Addr>,
    /// Hostname handed out by DHCP.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Domain name handed out by DHCP.
    #[arg(long, value_name = "NAME")]
    pub domainname: Option<String>,
    /// DNS search domain handed out by DHCP (repeatable).
    #[arg(long, value_name = "NAME")]
    pub dnssearch: Vec<String>,
    /// Link MTU.
    #[arg(long, value_name = "BYTES", default_value_t = 1500)]
    pub mtu: u32,
    /// Serve IPv4.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = ArgAction::Set)]
    pub ipv4: bool,
    /// Serve IPv6 (router advertisements for SLAAC, DHCPv6, v6 NAT).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = ArgAction::Set)]
    pub ipv6: bool,
    /// Guest IPv6 prefix.
    #[arg(
        long = "ipv6-net",
        value_name = "PREFIX/LEN",
        default_value = "fec0::/64"
    )]
    pub ipv6_net: Ipv6Net,
    /// IPv6 gateway, which reaches the host's ::1 [default: ::2 in --ipv6-net].
    #[arg(long = "ipv6-host", value_name = "ADDR")]
    pub ipv6_host: Option<Ipv6Addr>,
    /// IPv6 DNS forwarder address [default: ::3 in --ipv6-net].
    #[arg(long = "ipv6-dns", value_name = "ADDR")]
    pub ipv6_dns: Option<Ipv6Addr>,
    /// Port forward from the host to the guest (repeatable).
    #[arg(long, value_name = "tcp|udp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT")]
    pub hostfwd: Vec<HostFwd>,
    /// Refuse guest connections to the gateway (the host's loopback).
    #[arg(long)]
    pub disable_host_loopback: bool,
    /// Upstream resolver for the DNS forwarder (repeatable) [default: the
    /// nameservers of /etc/resolv.conf].
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_dns_upstream)]
    pub dns_upstream: Vec<SocketAddr>,
    /// Lease this address to the guest with this MAC, and to no other
    /// (repeatable).
    #[arg(long, value_name = "MAC=ADDR")]
    pub dhcp_host: Vec<DhcpHost>,
    /// A name the DNS forwarder answers itself (repeatable).
    #[arg(long, value_name = "NAME=ADDR")]
    pub dns_host: Vec<DnsHost>,
    /// The most flows (TCP, UDP, ICMP) open at once [default: what
    /// RLIMIT_NOFILE allows, less a reserve; capped at that].
    #[arg(long, value_name = "N")]
    pub max_flows: Option<usize>,
    /// Capture every frame on the guest link to this pcap file.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Serve this directory read-only by TFTP on the gateway addresses.
    #[arg(long, value_name = "DIR", value_parser = parse_dir)]
    pub tftp: Option<PathBuf>,
    /// Boot file name handed out by DHCP (the BOOTP file field).
    #[arg(long, value_name = "NAME")]
    pub bootfile: Option<String>,
    /// Carry guest TCP connections to ADDR:PORT (default ADDR: host 4 of
    /// --net) to a command's stdin/stdout or a unix socket (repeatable).
    #[arg(long, value_name = "tcp:[ADDR]:PORT-cmd:CMD|unix:PATH")]
    pub guestfwd: Vec<GuestFwd>,
    /// Do not enter the sandbox (no-new-privs and a seccomp filter) once
    /// set up.
    #[arg(long)]
    pub no_sandbox: bool,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (a bare PORT
    /// listens on 127.0.0.1; other addresses only when named).
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = parse_metrics)]
    pub metrics: Option<SocketAddr>,
    /// `--restrict`, `--allow`, `--deny`.
    #[command(flatten)]
    pub egress: EgressArgs,
}

/// `--restrict[=on|off]`, `--allow RULE`, `--deny RULE`: the egress rules.
///
/// clap keeps each flag's values apart, but the rules are evaluated in
/// command-line order across both flags (the first match wins), so this
/// group implements [`Args`] by hand to merge them by their indices.
#[derive(Clone, Debug, Default)]
pub struct EgressArgs {
    /// Refuse outbound flows no `--allow` rule lets out.
    pub restrict: bool,
    /// `--allow` and `--deny` rules, in command-line order.
    pub rules: Vec<EgressRule>,
}

impl Args for EgressArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let restrict = Arg::new("restrict")
            .long("restrict")
            .value_name("on|off")
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("on")
            .default_value("off")
            .value_parser(parse_on_off)
            .help(
                "Let the guest reach only usernet's own services (DHCP, NDP, DNS, \
                 echo replies) and --allow rules; port forwards still work",
            );
        let rule = |name: &'static str, allow: bool, help: &'static str| {
            Arg::new(name)
                .long(name)
                .value_name("CIDR[:PORT]")
                .action(ArgAction::Append)
                .value_parser(move |s: &str| EgressRule::parse(allow, s))
                .help(help)
        };
        cmd.arg(restrict)
            .arg(rule(
                "allow",
                true,
                "Let guest traffic to this destination out (repeatable; the first \
                 --allow/--deny that matches decides); IPv6 with a port as [CIDR]:PORT",
            ))
            .arg(rule(
                "deny",
                false,
                "Refuse guest traffic to this destination (repeatable; the first \
                 --allow/--deny that matches decides); IPv6 with a port as [CIDR]:PORT",
            ))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for EgressArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = EgressArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(restrict) = matches.get_one::<bool>("restrict") {
            self.restrict = *restrict;
        }
        let mut rules: Vec<(usize, EgressRule)> = Vec::new();
        for id in ["allow", "deny"] {
            if let (Some(indices), Some(values)) =
                (matches.indices_of(id), matches.get_many::<EgressRule>(id))
            {
                rules.extend(indices.zip(values.cloned()));
            }
        }
        if !rules.is_empty() {
            rules.sort_by_key(|(index, _)| *index);
            self.rules = rules.into_iter().map(|(_, rule)| rule).collect();
        }
        Ok(())
    }
}

/// An existing directory, made absolute.
fn parse_dir(s: &str) -> Result<PathBuf, String> {
    match std::fs::canonicalize(s) {
        Ok(p) if p.is_dir() => Ok(p),
        Ok(_) => Err(format!("'{s}' is not a directory")),
        Err(e) => Err(format!("'{s}': {e}")),
    }
}

/// `--metrics`: `ADDR:PORT`, or a bare `PORT` on loopback.
fn parse_metrics(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?}: expected PORT or ADDR:PORT (e.g. 127.0.0.1:9100)"))
}

/// QEMU's `on|off` switches.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("'{s}' is not on or off")),
    }
}

/// Host number `n` inside an IPv6 prefix.
fn in_net6(net: Ipv6Net, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) | n)
}

/// Host number `n` inside `net`, as QEMU derives its default addresses.
fn in_net(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) | (n & !u32::from(net.mask())))
}

impl StackArgs {
    /// The stack's configuration; `resolv` supplies the upstream resolvers
    /// when no `--dns-upstream` is given. Not yet validated.
    pub fn config(&self, resolv: impl FnOnce() -> Vec<SocketAddr>) -> Config {
        let net = self.net;
        let dns_upstreams = if self.dns_upstream.is_empty() {
            resolv()
        } else {
            self.dns_upstream.clone()
        };
        Config {
            net,
            host: self.host.unwrap_or_else(|| in_net(net, 0x202)),
            dns: self.dns.unwrap_or_else(|| in_net(net, 0x203)),
            dhcpstart: self.dhcpstart.unwrap_or_else(|| in_net(net, 0x20f)),
            hostname: self.hostname.clone(),
            domainname: self.domainname.clone(),
            dnssearch: self.dnssearch.clone(),
            mtu: self.mtu,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            ipv6_net: self.ipv6_net,
            ipv6_host: self.ipv6_host.unwrap_or_else(|| in_net6(self.ipv6_net, 2)),
            ipv6_dns: self.ipv6_dns.unwrap_or_else(|| in_net6(self.ipv6_net, 3)),
            disable_host_loopback: self.disable_host_loopback,
            dns_upstreams,
            dns_hosts: self.dns_host.clone(),
            hostfwd: self.hostfwd.clone(),
            dhcp_hosts: self.dhcp_host.clone(),
            max_flows: self.max_flows.unwrap_or(Config::default().max_flows),
            restrict: self.egress.restrict,
            egress: self.egress.rules.clone(),
            tftp_root: self.tftp.clone(),
            bootfile: self.bootfile.clone(),
            guestfwd: self.guestfwd.clone(),
            ..Config::default()
        }
    }
}

/// Why the command line did not yield a [`Cli`].
#[derive(Debug)]
pub enum CliError {
    /// `--help` or `--version`: print it and exit successfully
    /// (`err.exit()`).
    Display(clap::Error),
    /// A usage error, as one line starting with `usernet: `; exit code 2.
    Usage(String),
}

/// Folds a clap error's first paragraph into one line.
fn one_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let para: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = para.join(" ");
    format!("usernet: {}", line.strip_prefix("error: ").unwrap_or(&line))
}

/// Parses the command line (`args` includes the program name).
pub fn parse<I, T>(args: I) -> Result<Cli, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Cli::try_parse_from(args).map_err(|e| match e.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
            CliError::Display(e)
        }
        // clap prints the whole help for a missing mode; one line will do.
        clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        | clap::error::ErrorKind::MissingSubcommand => CliError::Usage(
            "usernet: a mode (qemu, ns, attach, slirp4netns) or a command (flows, guests, stats) is required; try --help".to_owned(),
        ),
        _ => CliError::Usage(one_line(&e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu(extra: &[&str]) -> Result<StackArgs, CliError> {
        let args = ["usernet", "qemu", "--socket", "/tmp/u.sock"];
        let cli = parse(args.iter().chain(extra))?;
        let Command::Qemu(q) = cli.command else {
            panic!("not qemu");
        };
        assert_eq!(q.socket, PathBuf::from("/tmp/u.sock"));
        Ok(q.stack)
    }

    fn usage(extra: &[&str]) -> String {
        match qemu(extra) {
            Err(CliError::Usage(line)) => line,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn switch_options() {
        let args = ["usernet", "qemu", "--socket", "/tmp/u.sock"];
        let q = |extra: &[&str]| match parse(args.iter().chain(extra)) {
            Ok(Cli {
                command: Command::Qemu(q),
                ..
            }) => Some((q.max_guests, q.isolate)),
            _ => None,
        };
        assert_eq!(q(&[]), Some((16, false)));
        assert_eq!(q(&["--max-guests", "2", "--isolate"]), Some((2, true)));
        assert_eq!(q(&["--max-guests", "0"]), None);
        assert_eq!(q(&["--max-guests", "255"]), None);
        let pinned = qemu(&["--dhcp-host", "52:54:00:00:00:0b=10.0.2.20"]).expect("valid");
        assert_eq!(pinned.dhcp_host.len(), 1);
        assert!(qemu(&["--dhcp-host", "52:54:00:00:00:0b"]).is_err());
    }

    #[test]
    fn defaults_are_qemus() {
        let args = qemu(&[]).expect("parses");
        let c = args.config(|| vec!["192.0.2.1:53".parse().expect("addr")]);
        let d = Config::default();
        assert_eq!(
            (c.net, c.host, c.dns, c.dhcpstart),
            (d.net, d.host, d.dns, d.dhcpstart)
        );
        assert_eq!((c.mtu, c.max_flows), (1500, d.max_flows));
        assert_eq!(c.dns_upstreams, vec!["192.0.2.1:53".parse().expect("addr")]);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn every_option_reaches_the_config() {
        let args = qemu(&[
            "--net=192.168.76.0/24",
            "--hostname=vm",
            "--domainname=example.test",
            "--dnssearch=a.test",
            "--dnssearch=b.test",
            "--mtu=65520",
            "--hostfwd=tcp:127.0.0.1:2222-:22",
            "--hostfwd=udp::5353-192.168.76.20:53",
            "--disable-host-loopback",
            "--dns-upstream=1.1.1.1",
            "--dns-upstream=[::1]:5353",
            "--dns-host=foo.test=10.9.9.9",
            "--max-flows=10",
            "--pcap=/tmp/x.pcap",
            "--tftp=/",
            "--bootfile=pxelinux.0",
            "--guestfwd=tcp:192.168.76.100:8080-cmd:nc -U /run/x",
            "--guestfwd=tcp::22-unix:/run/ssh.sock",
            "-vv",
        ])
        .expect("parses");
        assert_eq!(args.pcap, Some(PathBuf::from("/tmp/x.pcap")));
        let c = args.config(|| panic!("resolv.conf not read when upstreams are given"));
        assert_eq!(c.host, Ipv4Addr::new(192, 168, 76, 2));
        assert_eq!(c.dns, Ipv4Addr::new(192, 168, 76, 3));
        assert_eq!(c.dhcpstart, Ipv4Addr::new(192, 168, 76, 15));
        assert_eq!(c.hostname.as_deref(), Some("vm"));
        assert_eq!(c.domainname.as_deref(), Some("example.test"));
        assert_eq!(c.dnssearch, ["a.test", "b.test"]);
        assert_eq!(c.mtu, 65520);
        assert_eq!(c.hostfwd.len(), 2);
        assert_eq!(
            c.hostfwd[1].guest_addr,
            Some(Ipv4Addr::new(192, 168, 76, 20).into())
        );
        assert!(c.disable_host_loopback);
        assert_eq!(c.dns_upstreams.len(), 2);
        assert_eq!(c.dns_upstreams[0], "1.1.1.1:53".parse().expect("addr"));
        assert_eq!(c.dns_hosts[0].name, "foo.test");
        assert_eq!(c.max_flows, 10);
        assert_eq!(c.tftp_root, Some(PathBuf::from("/")));
        assert_eq!(c.bootfile.as_deref(), Some("pxelinux.0"));
        assert_eq!(c.guestfwd.len(), 2);
        assert_eq!(
            c.guestfwd[0].to_string(),
            "tcp:192.168.76.100:8080-cmd:nc -U /run/x"
        );
        assert_eq!(c.guestfwd[1].addr_in(c.net), Ipv4Addr::new(192, 168, 76, 4));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn explicit_addresses_win_and_wide_nets_follow_qemu() {
        let c = qemu(&["--net", "10.1.0.0/16", "--dns", "10.1.0.53"])
            .expect("parses")
            .config(Vec::new);
        assert_eq!(c.host, Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(c.dns, Ipv4Addr::new(10, 1, 0, 53));
        assert_eq!(c.dhcpstart, Ipv4Addr::new(10, 1, 2, 15));
    }

    #[test]
    fn metrics_address_defaults_to_loopback() {
        assert_eq!(qemu(&[]).expect("parses").metrics, None);
        let m = |a: &str| qemu(&["--metrics", a]).expect("parses").metrics;
        assert_eq!(m("9100"), Some("127.0.0.1:9100".parse().expect("addr")));
        assert_eq!(
            m("0.0.0.0:9100"),
            Some("0.0.0.0:9100".parse().expect("addr"))
        );
        assert_eq!(m("[::1]:9100"), Some("[::1]:9100".parse().expect("addr")));
        assert!(usage(&["--metrics", "localhost:1"]).contains("--metrics"));
        let cli = parse(["usernet", "flows", "--api-socket", "/a", "--json"]).expect("parses");
        assert!(
            matches!(cli.command, Command::Flows(a) if a.json && a.api_socket == std::path::Path::new("/a"))
        );
        assert!(
            parse(["usernet", "stats"]).is_err(),
            "--api-socket is required"
        );
    }

    #[test]
    fn sandbox_is_on_unless_no_sandbox() {
        assert!(!qemu(&[]).expect("parses").no_sandbox);
        assert!(qemu(&["--no-sandbox"]).expect("parses").no_sandbox);
        let cli = parse(["usernet", "ns", "--no-sandbox", "--", "true"]).expect("parses");
        assert!(matches!(cli.command, Command::Ns(n) if n.stack.no_sandbox));
        assert!(usage(&["--no-sandbox=yes"]).contains("--no-sandbox"));
    }

    #[test]
    fn tcp_ns_takes_a_port_and_an_optional_host_port() {
        let cli = parse([
            "usernet",
            "ns",
            "--tcp-ns",
            "8080",
            "--tcp-ns",
            "5432:15432",
            "--",
            "true",
        ])
        .expect("parses");
        let Command::Ns(ns) = cli.command else {
            panic!("not ns");
        };
        assert_eq!(ns.tap.tcp_ns, [(8080, 8080), (5432, 15432)]);
        for bad in ["0", "x", "1:70000", "1:", ":2"] {
            let err = match parse(["usernet", "ns", "--tcp-ns", bad, "--", "true"]) {
                Err(CliError::Usage(line)) => line,
                other => panic!("{bad}: expected a usage error, got {other:?}"),
            };
            assert!(err.contains("--tcp-ns") && !err.contains('\n'), "{err:?}");
        }
    }

    #[test]
    fn verbose_is_counted_before_or_after_the_mode() {
        let cli = parse(["usernet", "-vv", "qemu", "--socket", "s"]).expect("parses");
        assert_eq!(cli.verbose, 2);
        let cli = parse(["usernet", "qemu", "--socket", "s", "-v"]).expect("parses");
        assert_eq!(cli.verbose, 1);
    }

    #[test]
    fn bad_values_are_one_line_naming_the_flag() {
        for (extra, flag) in [
            (&["--net", "10.0.2/24"][..], "--net"),
            (&["--mtu", "big"], "--mtu"),
            (&["--hostfwd", "sctp::1-:2"], "--hostfwd"),
            (&["--dns-upstream", "resolver"], "--dns-upstream"),
            (&["--dns-host", "nothing"], "--dns-host"),
            (&["--host", "10.0.2.300"], "--host"),
            (&["--tftp", "/nonexistent/usernet"], "--tftp"),
            (&["--tftp", "/etc/passwd"], "--tftp"),
            (&["--guestfwd", "tcp:10.0.2.100:80"], "--guestfwd"),
            (&["--guestfwd", "udp:10.0.2.100:80-cmd:cat"], "--guestfwd"),
            (&["--guestfwd", "tcp:10.0.2.100:80-exec:cat"], "--guestfwd"),
            (&["--bogus"], "--bogus"),
        ] {
            let line = usage(extra);
            assert!(!line.contains('\n'), "{line:?}");
            assert!(line.starts_with("usernet: "), "{line:?}");
            assert!(line.contains(flag), "{line:?} should name {flag}");
        }
        let missing = match parse(["usernet", "qemu"]) {
            Err(CliError::Usage(line)) => line,
            other => panic!("expected a usage error, got {other:?}"),
        };
        assert!(
            !missing.contains('\n') && missing.contains("--socket"),
            "{missing:?}"
        );
        assert!(matches!(parse(["usernet"]), Err(CliError::Usage(l)) if l.contains("qemu")));
    }

    #[test]
    fn ns_attach_and_slirp4netns_modes() {
        let cli =
            parse(["usernet", "ns", "--mtu", "9000", "--", "sh", "-c", "true"]).expect("parses");
        let Command::Ns(ns) = cli.command else {
            panic!("not ns");
        };
        assert_eq!(ns.command, ["sh", "-c", "true"]);
        assert_eq!(ns.stack.mtu, 9000);
        assert_eq!(ns.tap.tap, "tap0");
        assert_eq!(
            ns.tap.guest_addr(ns.stack.net),
            Ipv4Addr::new(10, 0, 2, 100)
        );
        let cli = parse(["usernet", "ns", "sleep", "-x"]).expect("parses");
        assert!(matches!(cli.command, Command::Ns(n) if n.command == ["sleep", "-x"]));
        assert!(matches!(parse(["usernet", "ns"]), Err(CliError::Usage(_))));

        let cli = parse(["usernet", "attach", "--guest-addr", "10.0.2.9", "77"]).expect("parses");
        let Command::Attach(a) = cli.command else {
            panic!("not attach");
        };
        assert_eq!((a.pid, a.netns), (Some(77), None));
        assert_eq!(a.tap.guest_addr(a.stack.net), Ipv4Addr::new(10, 0, 2, 9));
        let cli = parse(["usernet", "attach", "--netns", "/run/netns/x"]).expect("parses");
        assert!(matches!(cli.command, Command::Attach(a) if a.pid.is_none()));
        assert!(matches!(
            parse(["usernet", "attach"]),
            Err(CliError::Usage(_))
        ));

        let cli = parse(["usernet", "slirp4netns", "--help", "-c", "1"]).expect("parses");
        assert!(matches!(cli.command, Command::Slirp4netns(s) if s.args == ["--help", "-c", "1"]));
    }

    #[test]
    fn egress_rules_keep_command_line_order_in_every_mode() {
        let c = qemu(&[
            "--deny=10.0.2.2:22",
            "--allow",
            "10.0.2.0/24",
            "--mtu=1500",
            "--deny",
            "[fec0::2]:80-90",
            "--allow=::/0",
        ])
        .expect("parses")
        .config(Vec::new);
        assert!(!c.restrict);
        let rules: Vec<String> = c.egress.iter().map(ToString::to_string).collect();
        assert_eq!(
            rules,
            [
                "--deny 10.0.2.2/32:22",
                "--allow 10.0.2.0/24",
                "--deny [fec0::2/128]:80-90",
                "--allow ::/0",
            ]
        );
        assert!(qemu(&["--restrict"]).expect("parses").egress.restrict);
        assert!(qemu(&["--restrict=on"]).expect("parses").egress.restrict);
        assert!(!qemu(&["--restrict=off"]).expect("parses").egress.restrict);

        // A bare --restrict does not swallow the command or the PID.
        let cli = parse([
            "usernet",
            "ns",
            "--restrict",
            "--allow",
            "10.0.2.2:80",
            "sh",
            "-c",
            "true",
        ])
        .expect("parses");
        let Command::Ns(ns) = cli.command else {
            panic!("not ns");
        };
        assert_eq!(ns.command, ["sh", "-c", "true"]);
        let c = ns.stack.config(Vec::new);
        assert!(c.restrict);
        assert_eq!(c.egress.len(), 1);
        let cli =
            parse(["usernet", "attach", "--restrict", "--deny", "::/0", "77"]).expect("parses");
        let Command::Attach(a) = cli.command else {
            panic!("not attach");
        };
        assert_eq!(a.pid, Some(77));
        assert!(a.stack.egress.restrict);
        assert!(!a.stack.egress.rules[0].allow);
    }

    #[test]
    fn bad_egress_rules_are_one_line_naming_the_flag() {
        for (extra, flag) in [
            (&["--allow", "10.0.2.2:0"][..], "--allow"),
            (&["--allow", "fec0::/64:80"], "--allow"),
            (&["--deny", "10.0.2.0/33"], "--deny"),
            (&["--deny", "[fec0::/64]80"], "--deny"),
            (&["--restrict=maybe"], "--restrict"),
        ] {
            let line = usage(extra);
            assert!(!line.contains('\n'), "{line:?}");
            assert!(line.starts_with("usernet: "), "{line:?}");
            assert!(line.contains(flag), "{line:?} should name {flag}");
        }
    }

    #[test]
    fn help_is_not_an_error() {
        assert!(matches!(
            parse(["usernet", "--help"]),
            Err(CliError::Display(_))
        ));
        assert!(matches!(
            parse(["usernet", "--version"]),
            Err(CliError::Display(_))
        ));
    }
}
