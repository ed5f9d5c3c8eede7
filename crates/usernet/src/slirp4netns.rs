//! slirp4netns compatibility: its command line (1.2's options, defaults and
//! `--help` text, which podman greps to detect features), for when usernet
//! runs as `slirp4netns` (argv\[0\]) or as `usernet slirp4netns ...`.
//!
//! The parser is a small getopt_long look-alike rather than clap, because
//! the help text, the `-e3`/`--exit-fd=3`/`--exit-fd 3` forms and bundled
//! short flags (`-c6`) must behave as slirp4netns's do. Defaults: network
//! 10.0.2.0/24, namespace address .100, gateway .2, DNS .3, MTU 1500, tap
//! `tap0`, target a PID.
//!
//! The sandbox differs: usernet's seccomp filter is on in every mode, so
//! `--enable-seccomp` changes nothing; `--enable-sandbox` adds, as in
//! slirp4netns, a new mount namespace with an empty root and the drop of
//! every capability but `CAP_NET_BIND_SERVICE`
//! ([`usernet_host::sandbox`]). usernet's own `--no-sandbox` (accepted
//! here, not listed in the help, which is slirp4netns's) turns both off.
use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use usernet_core::config::{Ipv4Net, parse_mac};

/// slirp4netns 1.2.0's `--help` text after the usage line, byte for byte
/// (tabs included).
pub const HELP_BODY: &str = "User-mode networking for unprivileged network namespaces.

-c, --configure          bring up the interface
-e, --exit-fd=FD         specify the FD for terminating slirp4netns
-r, --ready-fd=FD        specify the FD to write to when the network is configured
-m, --mtu=MTU            specify MTU (default=1500, max=65521)
-6, --enable-ipv6        enable IPv6 (experimental)
-a, --api-socket=PATH    specify API socket path
--cidr=CIDR              specify network address CIDR (default=10.0.2.0/24)
--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace
--netns-type=TYPE \t specify network namespace type ([path|pid], default=pid)
--userns-path=PATH\t specify user namespace path
--enable-sandbox         create a new mount namespace (and drop all caps except CAP_NET_BIND_SERVICE if running as the root)
--enable-seccomp         enable seccomp to limit syscalls (experimental)
--outbound-addr=IPv4     sets outbound ipv4 address to bound to (experimental)
--outbound-addr6=IPv6    sets outbound ipv6 address to bound to (experimental)
--disable-dns            disables 10.0.2.3 (or configured internal ip) to host dns redirect (experimental)
--macaddress=MAC         specify the MAC address of the TAP (only valid with -c)
--target-type=TYPE       specify the target type ([netns|bess], default=netns)
-h, --help               show this help and exit
-v, --version            show version and exit
";

/// The full `--help` output for program name `argv0`.
pub fn help(argv0: &str) -> String {
    format!("Usage: {argv0} [OPTION]... PID|PATH [TAPNAME]\n{HELP_BODY}")
}

/// `--version` output: slirp4netns's shape, saying what answers.
pub fn version() -> String {
    format!(
        "slirp4netns version 1.2.0 (usernet {})\ncommit: none\nlibslirp: none (usernet-core)\nSLIRP_CONFIG_VERSION_MAX: 4\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// A slirp4netns command line, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// `-c`: set address, route and link up.
    pub configure: bool,
    /// `-e FD`: exit when it becomes readable or is closed.
    pub exit_fd: Option<i32>,
    /// `-r FD`: write "1" to it when ready.
    pub ready_fd: Option<i32>,
    /// `-m MTU`.
    pub mtu: u32,
    /// `-6`.
    pub enable_ipv6: bool,
    /// `-a PATH`.
    pub api_socket: Option<PathBuf>,
    /// `--cidr`.
    pub cidr: Ipv4Net,
    /// `--disable-host-loopback`.
    pub disable_host_loopback: bool,
    /// `--netns-type=path`: the target is a path, not a PID.
    pub netns_is_path: bool,
    /// `--userns-path`.
    pub userns_path: Option<PathBuf>,
    /// `--enable-sandbox`.
    pub enable_sandbox: bool,
    /// `--enable-seccomp`.
    pub enable_seccomp: bool,
    /// `--no-sandbox` (usernet's own, not in slirp4netns's `--help`).
    pub no_sandbox: bool,
    /// `--outbound-addr`.
    pub outbound_addr: Option<Ipv4Addr>,
    /// `--outbound-addr6`.
    pub outbound_addr6: Option<Ipv6Addr>,
    /// `--disable-dns`.
    pub disable_dns: bool,
    /// `--macaddress`.
    pub macaddress: Option<[u8; 6]>,
    /// PID or path of the network namespace.
    pub target: String,
    /// Tap name (default `tap0`).
    pub tapname: String,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Serve.
    Run(Box<Args>),
    /// `-h`.
    Help,
    /// `-v`.
    Version,
}

fn parse_fd(opt: &str, v: &str) -> Result<i32, String> {
    v.parse::<i32>()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| format!("{opt}: bad FD '{v}'"))
}

/// Options that take a value: (short, long).
const WITH_VALUE: &[(Option<char>, &str)] = &[
    (Some('e'), "exit-fd"),
    (Some('r'), "ready-fd"),
    (Some('m'), "mtu"),
    (Some('a'), "api-socket"),
    (None, "cidr"),
    (None, "netns-type"),
    (None, "userns-path"),
    (None, "outbound-addr"),
    (None, "outbound-addr6"),
    (None, "macaddress"),
    (None, "target-type"),
];

/// Flags: (short, long).
const FLAGS: &[(Option<char>, &str)] = &[
    (Some('c'), "configure"),
    (Some('6'), "enable-ipv6"),
    (None, "disable-host-loopback"),
    (None, "enable-sandbox"),
    (None, "enable-seccomp"),
    (None, "no-sandbox"),
    (None, "disable-dns"),
    (Some('h'), "help"),
    (Some('v'), "version"),
];

fn long_name(short: char) -> Option<(&'static str, bool)> {
    WITH_VALUE
        .iter()
        .find(|(s, _)| *s == Some(short))
        .map(|(_, l)| (*l, true))
        .or_else(|| {
            FLAGS
                .iter()
                .find(|(s, _)| *s == Some(short))
                .map(|(_, l)| (*l, false))
        })
}

/// Parses slirp4netns's arguments (without the program name). Errors are
/// one line, without the `slirp4netns: ` prefix.
pub fn parse(args: &[OsString]) -> Result<Parsed, String> {
    let mut opts: Vec<(&'static str, Option<String>)> = Vec::new();
    let mut positional = Vec::new();
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.to_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("argument {a:?} is not UTF-8"))
        })
        .collect::<Result<_, _>>()?;
    let mut i = 0;
    let mut only_positional = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_positional || a == "-" || !a.starts_with('-') {
            positional.push(a.clone());
        } else if a == "--" {
            only_positional = true;
        } else if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            if let Some((_, l)) = WITH_VALUE.iter().find(|(_, l)| *l == name) {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        let v = args
                            .get(i)
                            .ok_or_else(|| format!("option '--{name}' requires an argument"))?;
                        i += 1;
                        v.clone()
                    }
                };
                opts.push((l, Some(v)));
            } else if let Some((_, l)) = FLAGS.iter().find(|(_, l)| *l == name) {
                if inline.is_some() {
                    return Err(format!("option '--{name}' doesn't allow an argument"));
                }
                opts.push((l, None));
            } else {
                return Err(format!("unrecognized option '{a}'"));
            }
        } else {
            for (at, c) in a[1..].char_indices() {
                let (name, takes) =
                    long_name(c).ok_or_else(|| format!("invalid option -- '{c}'"))?;
                if takes {
                    let rest = &a[1 + at + c.len_utf8()..];
                    let v = if rest.is_empty() {
                        let v = args
                            .get(i)
                            .ok_or_else(|| format!("option requires an argument -- '{c}'"))?;
                        i += 1;
                        v.clone()
                    } else {
                        rest.to_owned()
                    };
                    opts.push((name, Some(v)));
                    break;
                }
                opts.push((name, None));
            }
        }
    }

    let mut out = Args {
        configure: false,
        exit_fd: None,
        ready_fd: None,
        mtu: 1500,
        enable_ipv6: false,
        api_socket: None,
        cidr: Ipv4Net {
            addr: Ipv4Addr::new(10, 0, 2, 0),
            prefix: 24,
        },
        disable_host_loopback: false,
        netns_is_path: false,
        userns_path: None,
        enable_sandbox: false,
        enable_seccomp: false,
        no_sandbox: false,
        outbound_addr: None,
        outbound_addr6: None,
        disable_dns: false,
        macaddress: None,
        target: String::new(),
        tapname: "tap0".to_owned(),
    };
    for (name, value) in opts {
        let v = value.unwrap_or_default();
        match name {
            "help" => return Ok(Parsed::Help),
            "version" => return Ok(Parsed::Version),
            "configure" => out.configure = true,
            "enable-ipv6" => out.enable_ipv6 = true,
            "disable-host-loopback" => out.disable_host_loopback = true,
            "enable-sandbox" => out.enable_sandbox = true,
            "enable-seccomp" => out.enable_seccomp = true,
            "no-sandbox" => out.no_sandbox = true,
            "disable-dns" => out.disable_dns = true,
            "exit-fd" => out.exit_fd = Some(parse_fd("--exit-fd", &v)?),
            "ready-fd" => out.ready_fd = Some(parse_fd("--ready-fd", &v)?),
            "mtu" => {
                out.mtu = v
                    .parse()
                    .ok()
                    .filter(|m| {
                        (usernet_core::config::MIN_MTU..=usernet_core::config::MAX_MTU).contains(m)
                    })
                    .ok_or_else(|| {
                        format!(
                            "MTU must be a positive integer (< {}), got '{v}'",
                            usernet_core::config::MAX_MTU + 1
                        )
                    })?;
            }
            "api-socket" => out.api_socket = Some(PathBuf::from(v)),
            "cidr" => out.cidr = v.parse().map_err(|e| format!("--cidr: {e}"))?,
            "netns-type" => match v.as_str() {
                "pid" => out.netns_is_path = false,
                "path" => out.netns_is_path = true,
                _ => {
                    return Err(format!(
                        "--netns-type must be \"pid\" or \"path\", got '{v}'"
                    ));
                }
            },
            "userns-path" => out.userns_path = Some(PathBuf::from(v)),
            "outbound-addr" => {
                out.outbound_addr = Some(v.parse().map_err(|_| {
                    format!("--outbound-addr: '{v}' is not an IPv4 address (interface names are not supported yet)")
                })?);
            }
            "outbound-addr6" => {
                out.outbound_addr6 = Some(v.parse().map_err(|_| {
                    format!("--outbound-addr6: '{v}' is not an IPv6 address (interface names are not supported yet)")
                })?);
            }
            "macaddress" => {
                out.macaddress =
                    Some(parse_mac(&v).ok_or_else(|| format!("--macaddress: bad MAC '{v}'"))?);
            }
            "target-type" => match v.as_str() {
                "netns" => {}
                "bess" => return Err("--target-type=bess is not supported".to_owned()),
                _ => {
                    return Err(format!(
                        "--target-type must be \"netns\" or \"bess\", got '{v}'"
                    ));
                }
            },
            _ => return Err(format!("unhandled option --{name}")),
        }
    }
    if out.macaddress.is_some() && !out.configure {
        return Err("--macaddress can only be used with -c".to_owned());
    }
    match positional.as_slice() {
        [target] => out.target = target.clone(),
        [target, tap] => {
            out.target = target.clone();
            out.tapname = tap.clone();
        }
        [] => return Err("PID|PATH must be specified".to_owned()),
        _ => return Err("too many arguments".to_owned()),
    }
    if !out.netns_is_path && out.target.parse::<u32>().map_or(true, |p| p == 0) {
        return Err(format!(
            "PID must be a positive integer, got '{}'",
            out.target
        ));
    }
    Ok(Parsed::Run(Box::new(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Args {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match parse(&args) {
            Ok(Parsed::Run(a)) => *a,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match parse(&args) {
            Err(e) => e,
            other => panic!("{args:?}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let a = run(&["1234"]);
        assert_eq!(a.target, "1234");
        assert_eq!(a.tapname, "tap0");
        assert_eq!(a.mtu, 1500);
        assert_eq!(
            (a.cidr.addr, a.cidr.prefix),
            (Ipv4Addr::new(10, 0, 2, 0), 24)
        );
        assert!(!a.configure && !a.enable_ipv6 && !a.disable_dns && !a.netns_is_path);
    }

    /// podman's invocation (libpod/networking_slirp4netns.go).
    #[test]
    fn podmans_command_line() {
        let a = run(&[
            "--disable-host-loopback",
            "--mtu=65520",
            "--enable-sandbox",
            "--enable-seccomp",
            "--enable-ipv6",
            "-c",
            "-r",
            "3",
            "-e",
            "4",
            "--netns-type=path",
            "/run/netns/x",
            "tap0",
        ]);
        assert!(a.disable_host_loopback && a.enable_sandbox && a.enable_seccomp);
        assert!(!a.no_sandbox);
        assert!(a.enable_ipv6 && a.configure && a.netns_is_path);
        assert_eq!((a.mtu, a.ready_fd, a.exit_fd), (65520, Some(3), Some(4)));
        assert_eq!(a.target, "/run/netns/x");
    }

    #[test]
    fn short_forms_bundle_and_attach_values() {
        let a = run(&[
            "-c6e3",
            "-r4",
            "-m",
            "9000",
            "--api-socket",
            "/a",
            "42",
            "eth9",
        ]);
        assert!(a.configure && a.enable_ipv6);
        assert_eq!((a.exit_fd, a.ready_fd, a.mtu), (Some(3), Some(4), 9000));
        assert_eq!(a.api_socket, Some(PathBuf::from("/a")));
        assert_eq!(a.tapname, "eth9");
        let a = run(&[
            "--cidr=192.168.5.0/24",
            "--outbound-addr=127.0.0.1",
            "--macaddress=02:00:00:00:00:01",
            "-c",
            "--userns-path=/proc/1/ns/user",
            "1",
        ]);
        assert_eq!(a.cidr.addr, Ipv4Addr::new(192, 168, 5, 0));
        assert_eq!(a.outbound_addr, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(a.macaddress, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(a.userns_path, Some(PathBuf::from("/proc/1/ns/user")));
    }

    #[test]
    fn no_sandbox_is_ours() {
        let a = run(&["--no-sandbox", "--enable-seccomp", "7"]);
        assert!(a.no_sandbox && a.enable_seccomp && !a.enable_sandbox);
        assert!(!help("slirp4netns").contains("--no-sandbox"));
        assert!(err(&["--no-sandbox=1", "7"]).contains("--no-sandbox"));
    }

    #[test]
    fn errors() {
        assert!(err(&[]).contains("PID|PATH"));
        assert!(err(&["abc"]).contains("PID"));
        assert!(err(&["--bogus", "1"]).contains("--bogus"));
        assert!(err(&["-m", "70000", "1"]).contains("MTU"));
        assert!(err(&["--netns-type=x", "1"]).contains("netns-type"));
        assert!(err(&["--macaddress=02:00:00:00:00:01", "1"]).contains("-c"));
        assert!(err(&["-e"]).contains("'e'"));
        assert!(err(&["1", "tap0", "x"]).contains("too many"));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&["-h".into()]), Ok(Parsed::Help));
        assert_eq!(parse(&["--version".into()]), Ok(Parsed::Version));
        let h = help("slirp4netns");
        for opt in [
            "--configure",
            "--exit-fd",
            "--ready-fd",
            "--mtu",
            "--enable-ipv6",
            "--api-socket",
            "--cidr",
            "--disable-host-loopback",
            "--netns-type",
            "--userns-path",
            "--enable-sandbox",
            "--enable-seccomp",
            "--outbound-addr",
            "--outbound-addr6",
            "--disable-dns",
            "--macaddress",
            "--target-type",
        ] {
            assert!(h.contains(opt), "{opt}");
        }
    }
}
