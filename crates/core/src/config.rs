//! The stack's configuration, with QEMU's names and defaults, and its
//! validation.
//!
//! Every field mirrors a QEMU `-nic user` option (`net=`, `host=`, `dns=`,
//! `dhcpstart=`, `hostname=`, `domainname=`, `dnssearch=`, `hostfwd=`,
//! `tftp=`, `bootfile=`, `guestfwd=`) or a slirp4netns flag (`--mtu`,
//! `--disable-host-loopback`), and `restrict=` grows usernet's own egress
//! rules (`--allow`/`--deny`, [`EgressRule`]). [`Config::validate`]
//! turns an inconsistent configuration into a [`ConfigError`] that names the
//! offending flag, so the binary can print it as one line.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::host::{GuestFwdTarget, Proto};

/// An IPv4 network: address and prefix length (`10.0.2.0/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The network address as written (host bits may be set).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Net {
    /// The netmask (`255.255.255.0` for /24).
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }
    /// The network address with host bits cleared.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.mask()))
    }
    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !u32::from(self.mask()))
    }
    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask()) == u32::from(self.network())
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "24"));
        let addr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IPv4 network (expected ADDR/PREFIX)"))?;
        let prefix = match prefix.parse::<u8>() {
            Ok(p) if p <= 30 => p,
            _ => match prefix.parse::<Ipv4Addr>() {
                Ok(mask) if u32::from(mask).leading_ones() == u32::from(mask).count_ones() => {
                    u32::from(mask).count_ones() as u8
                }
                _ => {
                    return Err(format!(
                        "'{s}' has a bad prefix (expected 0-30 or a netmask)"
                    ));
                }
            },
        };
        if prefix > 30 {
            return Err(format!(
                "'{s}' is too small a network (expected /30 or larger)"
            ));
        }
        Ok(Ipv4Net { addr, prefix })
    }
}

/// An IPv6 network: prefix and length (`fec0::/64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Net {
    /// The prefix as written (host bits may be set).
    pub addr: Ipv6Addr,
    /// Prefix length, 0..=126.
    pub prefix: u8,
}

impl Ipv6Net {
    fn mask(&self) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0)
    }
    /// The prefix with host bits cleared.
    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & self.mask())
    }
    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.network())
    }
}

impl FromStr for Ipv6Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "64"));
        let addr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IPv6 prefix (expected ADDR/LEN)"))?;
        match prefix.parse::<u8>() {
            Ok(prefix) if prefix <= 126 => Ok(Ipv6Net { addr, prefix }),
            _ => Err(format!("'{s}' has a bad prefix length (expected 0-126)")),
        }
    }
}

/// A port forward from a host socket to the guest (QEMU's `hostfwd=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostFwd {
    /// TCP or UDP.
    pub proto: Proto,
    /// Where the host listens.
    pub host: SocketAddr,
    /// Guest address; `None` means the guest's own address of the host
    /// address's family (the DHCP lease, or its SLAAC address for IPv6).
    pub guest_addr: Option<IpAddr>,
    /// Guest port.
    pub guest_port: u16,
}

impl FromStr for HostFwd {
    type Err = String;
    /// Parses `tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT` (`udp:` too;
    /// the protocol defaults to TCP as in QEMU).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("'{s}': {why} (expected [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT)")
        };
        let (proto, rest) = match s.split_once(':') {
            Some(("tcp", r)) | Some(("", r)) => (Proto::Tcp, r),
            Some(("udp", r)) => (Proto::Udp, r),
            _ => return Err(bad("unknown protocol")),
        };
        let (host, guest) = rest.split_once('-').ok_or_else(|| bad("missing '-'"))?;
        let (haddr, hport) = host
            .rsplit_once(':')
            .ok_or_else(|| bad("missing host port"))?;
        let haddr = haddr.trim_start_matches('[').trim_end_matches(']');
        let haddr: IpAddr = if haddr.is_empty() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            haddr.parse().map_err(|_| bad("bad host address"))?
        };
        let hport: u16 = hport.parse().map_err(|_| bad("bad host port"))?;
        let (gaddr, gport) = guest
            .rsplit_once(':')
            .ok_or_else(|| bad("missing guest port"))?;
        let gaddr = gaddr.trim_start_matches('[').trim_end_matches(']');
        let guest_addr = if gaddr.is_empty() {
            None
        } else {
            Some(gaddr.parse().map_err(|_| bad("bad guest address"))?)
        };
        let guest_port = match gport.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(bad("bad guest port")),
        };
        Ok(HostFwd {
            proto,
            host: SocketAddr::new(haddr, hport),
            guest_addr,
            guest_port,
        })
    }
}

impl std::fmt::Display for HostFwd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        let host = match self.host {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let guest = match self.guest_addr {
            Some(IpAddr::V6(a)) => format!("[{a}]"),
            Some(a) => a.to_string(),
            None => String::new(),
        };
        write!(
            f,
            "{proto}:{host}:{}-{guest}:{}",
            self.host.port(),
            self.guest_port
        )
    }
}

/// A guest TCP service carried to a host command or socket (QEMU's
/// `guestfwd=`): the guest's connections to `addr:port` are not NAT'ed but
/// handed to `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFwd {
    /// The address in the guest network; `None` means host 4 of `--net`
    /// (10.0.2.4), as libslirp.
    pub addr: Option<Ipv4Addr>,
    /// The port.
    pub port: u16,
    /// Where each connection goes.
    pub target: GuestFwdTarget,
}

impl GuestFwd {
    /// The guest-side address for network `net`.
    pub fn addr_in(&self, net: Ipv4Net) -> Ipv4Addr {
        self.addr.unwrap_or_else(|| {
            Ipv4Addr::from(u32::from(net.network()) | (0x204 & !u32::from(net.mask())))
        })
    }
}

impl FromStr for GuestFwd {
    type Err = String;
    /// Parses `tcp:[ADDR]:PORT-cmd:CMD` or `tcp:[ADDR]:PORT-unix:PATH`
    /// (the protocol may be left out; only TCP exists, as in QEMU).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "'{s}': {why} (expected tcp:[ADDR]:PORT-cmd:COMMAND or tcp:[ADDR]:PORT-unix:PATH)"
            )
        };
        let (guest, target) = s.split_once('-').ok_or_else(|| bad("missing '-'"))?;
        let rest = match guest.split_once(':') {
            Some(("tcp" | "", r)) if r.contains(':') => r,
            Some((p, _)) if guest.matches(':').count() >= 2 => {
                return Err(bad(&format!("protocol '{p}' is not tcp")));
            }
            _ => guest,
        };
        let (addr, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
        let addr = if addr.is_empty() {
            None
        } else {
            Some(addr.parse().map_err(|_| bad("bad IPv4 address"))?)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(bad("bad port")),
        };
        let target = match target.split_once(':') {
            Some(("cmd", c)) if !c.trim().is_empty() => GuestFwdTarget::Cmd(c.to_owned()),
            Some(("unix", p)) if !p.is_empty() => GuestFwdTarget::Unix(PathBuf::from(p)),
            _ => return Err(bad("bad target")),
        };
        Ok(GuestFwd { addr, port, target })
    }
}

impl std::fmt::Display for GuestFwd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addr = self.addr.map(|a| a.to_string()).unwrap_or_default();
        write!(f, "tcp:{addr}:{}-{}", self.port, self.target)
    }
}

/// Parses a MAC address written `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A DHCP lease pinned to a MAC (`--dhcp-host MAC=ADDR`): that guest always
/// gets `addr`, and no other guest does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhcpHost {
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// Its address, inside the network.
    pub addr: Ipv4Addr,
}

impl FromStr for DhcpHost {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mac, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not MAC=ADDR"))?;
        let mac = parse_mac(mac)
            .ok_or_else(|| format!("'{s}': '{mac}' is not a MAC (expected 52:54:00:12:34:56)"))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("'{s}': '{addr}' is not an IPv4 address"))?;
        Ok(DhcpHost { mac, addr })
    }
}

/// A name answered by the DNS forwarder itself (`--dns-host NAME=ADDR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsHost {
    /// Fully qualified name, lower case, without the trailing dot.
    pub name: String,
    /// The address answered.
    pub addr: IpAddr,
}

impl FromStr for DnsHost {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not NAME=ADDR"))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("'{s}': '{addr}' is not an IP address"))?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return Err(format!("'{s}': empty name (expected NAME=ADDR)"));
        }
        Ok(DnsHost { name, addr })
    }
}

/// Parses `ADDR[:PORT]` or `[V6ADDR]:PORT` with port 53 by default.
pub fn parse_dns_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("'{s}' is not ADDR[:PORT]"))
}

/// An address block of either family: `10.0.2.0/24`, `fec0::/64`, or a
/// bare address, which is a block of one (`/32`, `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The address as written (host bits may be set; they are ignored).
    pub addr: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this block; never for the other family.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{addr}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("bad prefix length '{p}' (0-{max})")),
            },
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An egress rule (`--allow` or `--deny`): which guest destinations it
/// matches and what it does with them. Rules match the destination as the
/// guest addressed it (`10.0.2.2:80`, not the host's `127.0.0.1:80` it
/// maps to); see [`crate::nat`] for where they apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRule {
    /// Let matching flows out (`--allow`) or refuse them (`--deny`).
    pub allow: bool,
    /// Destination addresses.
    pub dst: Cidr,
    /// Destination ports (TCP and UDP); `None` matches every port and ICMP
    /// echo too, a rule with ports never matches ICMP.
    pub ports: Option<RangeInclusive<u16>>,
}

impl EgressRule {
    /// The syntax, for error messages and help.
    pub const SYNTAX: &str = "CIDR[:PORT[-PORT]], IPv6 with a port as [CIDR]:PORT";

    /// Parses `CIDR[:PORT[-PORT]]`: `10.0.2.2`, `10.0.2.0/24:80`,
    /// `0.0.0.0/0:1000-2000`, `fec0::/64`, `[fec0::2]:80`. An IPv6 block
    /// takes a port only inside brackets, since its colons are ambiguous.
    pub fn parse(allow: bool, s: &str) -> Result<Self, String> {
        let bad = |why: String| format!("{why}; expected {}", Self::SYNTAX);
        let (dst, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (dst, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("missing ']'".into()))?;
            match after {
                "" => (dst, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (dst, Some(p)),
                    None => return Err(bad(format!("'{after}' after ']'"))),
                },
            }
        } else {
            match s.split(':').count() {
                2 => s.split_once(':').map_or((s, None), |(d, p)| (d, Some(p))),
                _ => (s, None),
            }
        };
        let dst: Cidr = dst.parse().map_err(bad)?;
        let port = |p: &str| match p.parse::<u16>() {
            Ok(n) if n != 0 => Ok(n),
            _ => Err(bad(format!("'{p}' is not a port (1-65535)"))),
        };
        let ports = match ports {
            None => None,
            Some(p) => {
                let (first, last) = p.split_once('-').unwrap_or((p, p));
                let (first, last) = (port(first)?, port(last)?);
                if first > last {
                    return Err(bad(format!("empty port range '{p}'")));
                }
                Some(first..=last)
            }
        };
        Ok(EgressRule { allow, dst, ports })
    }

    /// Whether a flow to `ip` (and `port`, for TCP and UDP; `None` for
    /// ICMP echo) matches.
    pub fn matches(&self, ip: IpAddr, port: Option<u16>) -> bool {
        self.dst.contains(ip)
            && match (&self.ports, port) {
                (None, _) => true,
                (Some(range), Some(port)) => range.contains(&port),
                (Some(_), None) => false,
            }
    }
}

impl std::fmt::Display for EgressRule {
    /// The rule as a flag: `--allow 10.0.2.2/32:80`, `--deny [::/0]:53`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flag = if self.allow { "--allow" } else { "--deny" };
        match (&self.ports, self.dst.addr) {
            (None, _) => write!(f, "{flag} {}", self.dst),
            (Some(r), addr) => {
                let ports = if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                };
                match addr {
                    IpAddr::V4(_) => write!(f, "{flag} {}:{ports}", self.dst),
                    IpAddr::V6(_) => write!(f, "{flag} [{}]:{ports}", self.dst),
                }
            }
        }
    }
}

/// Everything the stack needs to know, with QEMU's defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Guest network (`net=`).
    pub net: Ipv4Net,
    /// Gateway address, which maps to the host's loopback (`host=`).
    pub host: Ipv4Addr,
    /// DNS forwarder address (`dns=`).
    pub dns: Ipv4Addr,
    /// First address the DHCP server leases (`dhcpstart=`).
    pub dhcpstart: Ipv4Addr,
    /// Hostname handed out in DHCP option 12 (`hostname=`).
    pub hostname: Option<String>,
    /// Domain name in DHCP option 15 (`domainname=`).
    pub domainname: Option<String>,
    /// Domain search list, DHCP option 119 (`dnssearch=`).
    pub dnssearch: Vec<String>,
    /// Serve IPv4 (`ipv4=`).
    pub ipv4: bool,
    /// Serve IPv6 (`ipv6=`).
    pub ipv6: bool,
    /// Guest IPv6 prefix, advertised for SLAAC (`ipv6-net=`).
    pub ipv6_net: Ipv6Net,
    /// IPv6 gateway address, which maps to the host's `::1` (`ipv6-host=`).
    pub ipv6_host: Ipv6Addr,
    /// IPv6 DNS forwarder address (`ipv6-dns=`).
    pub ipv6_dns: Ipv6Addr,
    /// Link MTU (IP packet size), 576..=65520.
    pub mtu: u32,
    /// DHCP lease time.
    pub lease_time: Duration,
    /// Refuse guest traffic to the gateway (which would reach host loopback).
    pub disable_host_loopback: bool,
    /// Do not serve DNS: the DNS addresses are like any other unused
    /// address of the network (slirp4netns `--disable-dns`).
    pub disable_dns: bool,
    /// Do not answer DHCPv4 (libslirp's `disable_dhcp`): the guest
    /// configures its address itself.
    pub disable_dhcp: bool,
    /// Upstream resolvers for the DNS forwarder.
    pub dns_upstreams: Vec<SocketAddr>,
    /// Names answered locally.
    pub dns_hosts: Vec<DnsHost>,
    /// Refuse every guest flow that would leave through a host socket
    /// (gateway to loopback included) unless an `egress` rule allows it
    /// (QEMU's `restrict=on`). The stack's own services stay reachable.
    pub restrict: bool,
    /// `--allow`/`--deny` rules in command-line order: the first that
    /// matches a new outbound flow decides; with none, `restrict` does.
    pub egress: Vec<EgressRule>,
    /// Port forwards from the host to the guest.
    pub hostfwd: Vec<HostFwd>,
    /// DHCP leases pinned to MACs (`--dhcp-host`).
    pub dhcp_hosts: Vec<DhcpHost>,
    /// The most flows (TCP, UDP, ICMP) open at once.
    pub max_flows: usize,
    /// Seed for initial sequence numbers and ids, so runs are reproducible.
    pub seed: u64,
    /// The MAC address the stack uses for itself.
    pub mac: [u8; 6],
    /// Directory served read-only by TFTP at the gateway addresses
    /// (`tftp=`); `None` turns the TFTP server off.
    pub tftp_root: Option<PathBuf>,
    /// Boot file name in DHCP replies' `file` field (`bootfile=`).
    pub bootfile: Option<String>,
    /// Guest TCP services carried to host commands or sockets
    /// (`guestfwd=`).
    pub guestfwd: Vec<GuestFwd>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            net: Ipv4Net {
                addr: Ipv4Addr::new(10, 0, 2, 0),
                prefix: 24,
            },
            host: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            dhcpstart: Ipv4Addr::new(10, 0, 2, 15),
            hostname: None,
            domainname: None,
            dnssearch: Vec::new(),
            ipv4: true,
            ipv6: true,
            ipv6_net: Ipv6Net {
                addr: Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
                prefix: 64,
            },
            ipv6_host: Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2),
            ipv6_dns: Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 3),
            mtu: 1500,
            lease_time: Duration::from_secs(86400),
            disable_host_loopback: false,
            disable_dns: false,
            disable_dhcp: false,
            dns_upstreams: Vec::new(),
            dns_hosts: Vec::new(),
            restrict: false,
            egress: Vec::new(),
            hostfwd: Vec::new(),
            dhcp_hosts: Vec::new(),
            max_flows: 4096,
            seed: 0x7573_6572_6e65_7421,
            // QEMU's slirp uses 52:55:0a:00:02:02 style addresses.
            mac: [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02],
            tftp_root: None,
            bootfile: None,
            guestfwd: Vec::new(),
        }
    }
}

/// Why a configuration is unusable; each variant names the flag at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--host` is not inside `--net`.
    #[error("--host {0}: not inside --net {1}/{2}")]
    HostOutsideNet(Ipv4Addr, Ipv4Addr, u8),
    /// `--dns` is not inside `--net`.
    #[error("--dns {0}: not inside --net {1}/{2}")]
    DnsOutsideNet(Ipv4Addr, Ipv4Addr, u8),
    /// `--dhcpstart` is not inside `--net`.
    #[error("--dhcpstart {0}: not inside --net {1}/{2}")]
    DhcpStartOutsideNet(Ipv4Addr, Ipv4Addr, u8),
    /// A `--dhcp-host` address is outside the network or one of the
    /// stack's own, or its MAC or address is pinned twice.
    #[error("--dhcp-host {0}: must be a free address inside --net, once per MAC and address")]
    DhcpHost(String),
    /// `--dhcpstart` collides with the gateway or DNS address.
    #[error("--dhcpstart {0}: must differ from --host and --dns")]
    DhcpStartTaken(Ipv4Addr),
    /// An address is the network or broadcast address.
    #[error("--{0} {1}: is the network or broadcast address of --net")]
    Reserved(&'static str, Ipv4Addr),
    /// `--host` equals `--dns`.
    #[error("--dns {0}: must differ from --host")]
    DnsIsHost(Ipv4Addr),
    /// MTU out of range.
    #[error("--mtu {0}: out of range (expected 576-65520)")]
    Mtu(u32),
    /// `--ipv6-host` is not inside `--ipv6-net`.
    #[error("--ipv6-host {0}: not inside --ipv6-net {1}/{2}")]
    Ipv6HostOutsideNet(Ipv6Addr, Ipv6Addr, u8),
    /// `--ipv6-dns` is not inside `--ipv6-net`.
    #[error("--ipv6-dns {0}: not inside --ipv6-net {1}/{2}")]
    Ipv6DnsOutsideNet(Ipv6Addr, Ipv6Addr, u8),
    /// `--ipv6-dns` equals `--ipv6-host`.
    #[error("--ipv6-dns {0}: must differ from --ipv6-host")]
    Ipv6DnsIsHost(Ipv6Addr),
    /// Both families turned off.
    #[error("--ipv4 off and --ipv6 off: nothing left to serve")]
    NoFamily,
    /// IPv6 needs an MTU of at least 1280 (RFC 8200).
    #[error("--mtu {0}: IPv6 needs at least 1280 (or --ipv6 off)")]
    Ipv6Mtu(u32),
    /// `--max-flows` of zero.
    #[error("--max-flows 0: expected at least 1")]
    MaxFlows,
    /// The boot file name does not fit the BOOTP `file` field.
    #[error("--bootfile {0}: longer than 127 bytes or holds a NUL")]
    Bootfile(String),
    /// A guestfwd address outside the network or taken by the stack.
    #[error("--guestfwd {0}: {1} is not a free address of --net {2}/{3}")]
    GuestFwdAddr(String, Ipv4Addr, Ipv4Addr, u8),
    /// Two guestfwds on the same address and port.
    #[error("--guestfwd {0}: address and port given twice")]
    GuestFwdTwice(String),
}

/// The longest boot file name: the BOOTP `file` field is 128 bytes with
/// its terminating NUL.
pub const BOOTFILE_MAX: usize = 127;

/// The smallest MTU accepted (IPv4's minimum datagram size).
pub const MIN_MTU: u32 = 576;
/// The largest MTU accepted (what QEMU's stream netdev and tap carry).
pub const MAX_MTU: u32 = 65520;

impl Config {
    /// Checks the configuration for consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.net;
        let (na, np) = (n.network(), n.prefix);
        if !n.contains(self.host) {
            return Err(ConfigError::HostOutsideNet(self.host, na, np));
        }
        if !n.contains(self.dns) {
            return Err(ConfigError::DnsOutsideNet(self.dns, na, np));
        }
        if !n.contains(self.dhcpstart) {
            return Err(ConfigError::DhcpStartOutsideNet(self.dhcpstart, na, np));
        }
        for (flag, ip) in [
            ("host", self.host),
            ("dns", self.dns),
            ("dhcpstart", self.dhcpstart),
        ] {
            if ip == na || ip == n.broadcast() {
                return Err(ConfigError::Reserved(flag, ip));
            }
        }
        if self.dns == self.host {
            return Err(ConfigError::DnsIsHost(self.dns));
        }
        if self.dhcpstart == self.host || self.dhcpstart == self.dns {
            return Err(ConfigError::DhcpStartTaken(self.dhcpstart));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if self.max_flows == 0 {
            return Err(ConfigError::MaxFlows);
        }
        if !self.ipv4 && !self.ipv6 {
            return Err(ConfigError::NoFamily);
        }
        if let Some(b) = &self.bootfile
            && (b.len() > BOOTFILE_MAX || b.contains('\0'))
        {
            return Err(ConfigError::Bootfile(b.clone()));
        }
        self.validate_guestfwd()?;
        self.validate_dhcp_hosts()?;
        if self.ipv6 {
            let n6 = self.ipv6_net;
            if !n6.contains(self.ipv6_host) {
                return Err(ConfigError::Ipv6HostOutsideNet(
                    self.ipv6_host,
                    n6.network(),
                    n6.prefix,
                ));
            }
            if !n6.contains(self.ipv6_dns) {
                return Err(ConfigError::Ipv6DnsOutsideNet(
                    self.ipv6_dns,
                    n6.network(),
                    n6.prefix,
                ));
            }
            if self.ipv6_dns == self.ipv6_host {
                return Err(ConfigError::Ipv6DnsIsHost(self.ipv6_dns));
            }
            if self.mtu < 1280 {
                return Err(ConfigError::Ipv6Mtu(self.mtu));
            }
        }
        Ok(())
    }

    /// The `--dhcp-host` part of [`Config::validate`].
    fn validate_dhcp_hosts(&self) -> Result<(), ConfigError> {
        let n = self.net;
        let taken = [self.host, self.dns, n.network(), n.broadcast()];
        for (i, h) in self.dhcp_hosts.iter().enumerate() {
            let twice = self.dhcp_hosts[..i]
                .iter()
                .any(|o| o.mac == h.mac || o.addr == h.addr);
            if !n.contains(h.addr) || taken.contains(&h.addr) || twice {
                let mac = h.mac.map(|b| format!("{b:02x}")).join(":");
                return Err(ConfigError::DhcpHost(format!("{mac}={}", h.addr)));
            }
        }
        Ok(())
    }

    /// The guestfwd part of [`Config::validate`] (also for forwards added
    /// at run time).
    pub(crate) fn validate_guestfwd(&self) -> Result<(), ConfigError> {
        let n = self.net;
        let taken = [
            self.host,
            self.dns,
            self.dhcpstart,
            n.network(),
            n.broadcast(),
        ];
        for (i, g) in self.guestfwd.iter().enumerate() {
            let ip = g.addr_in(n);
            if !n.contains(ip) || taken.contains(&ip) {
                return Err(ConfigError::GuestFwdAddr(
                    g.to_string(),
                    ip,
                    n.network(),
                    n.prefix,
                ));
            }
            let same = |o: &GuestFwd| o.addr_in(n) == ip && o.port == g.port;
            if self.guestfwd[..i].iter().any(same) {
                return Err(ConfigError::GuestFwdTwice(g.to_string()));
            }
        }
        Ok(())
    }

    /// The largest Ethernet frame (MTU plus the 14-byte header).
    pub fn max_frame(&self) -> usize {
        self.mtu as usize + 14
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_qemus_and_valid() {
        let c = Config::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.net.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.net.broadcast(), Ipv4Addr::new(10, 0, 2, 255));
    }

    #[test]
    fn net_parsing() {
        assert_eq!(
            "192.168.76.0/24".parse::<Ipv4Net>().map(|n| n.prefix),
            Ok(24)
        );
        assert_eq!(
            "10.0.0.0/255.255.0.0".parse::<Ipv4Net>().map(|n| n.prefix),
            Ok(16)
        );
        assert!("10.0.0.0/31".parse::<Ipv4Net>().is_err());
        assert!("10.0.0/24".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0/255.0.255.0".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn validation_names_the_flag() {
        let mut c = Config {
            host: Ipv4Addr::new(10, 0, 3, 2),
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("--host 10.0.3.2")
        );
        c.host = Ipv4Addr::new(10, 0, 2, 2);
        c.dhcpstart = c.host;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("--dhcpstart")
        );
        c.dhcpstart = Ipv4Addr::new(10, 0, 2, 15);
        c.mtu = 70000;
        assert_eq!(c.validate(), Err(ConfigError::Mtu(70000)));
    }

    #[test]
    fn ipv6_validation() {
        assert_eq!("fec0::/64".parse::<Ipv6Net>().map(|n| n.prefix), Ok(64));
        assert!("fec0::/127".parse::<Ipv6Net>().is_err());
        assert!("10.0.2.0/24".parse::<Ipv6Net>().is_err());
        let c = Config {
            ipv6_host: "fec1::2".parse().expect("v6"),
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("--ipv6-host fec1::2")
        );
        let c = Config {
            ipv4: false,
            ipv6: false,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::NoFamily));
        let c = Config {
            mtu: 1000,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Ipv6Mtu(1000)));
    }

    #[test]
    fn hostfwd_parsing() {
        let f: HostFwd = "tcp:127.0.0.1:2222-:22".parse().expect("valid");
        assert_eq!(f.proto, Proto::Tcp);
        assert_eq!(f.host, "127.0.0.1:2222".parse().expect("addr"));
        assert_eq!((f.guest_addr, f.guest_port), (None, 22));
        assert_eq!(f.to_string(), "tcp:127.0.0.1:2222-:22");
        let f: HostFwd = "udp::5353-10.0.2.15:53".parse().expect("valid");
        assert_eq!(f.host, "127.0.0.1:5353".parse().expect("addr"));
        assert_eq!(f.guest_addr, Some(Ipv4Addr::new(10, 0, 2, 15).into()));
        let f: HostFwd = "tcp:[::1]:2222-[fec0::15]:22".parse().expect("valid");
        assert_eq!(f.guest_addr, Some("fec0::15".parse().expect("v6")));
        assert_eq!(f.to_string(), "tcp:[::1]:2222-[fec0::15]:22");
        let f: HostFwd = "tcp:[::1]:2222-:22".parse().expect("valid");
        assert_eq!(f.host, "[::1]:2222".parse().expect("addr"));
        assert!("sctp::1-:2".parse::<HostFwd>().is_err());
        assert!("tcp::1-:0".parse::<HostFwd>().is_err());
        assert!("tcp::99999-:2".parse::<HostFwd>().is_err());
    }

    #[test]
    fn egress_rule_parsing() {
        let rule = |s: &str| EgressRule::parse(true, s);
        let r = rule("10.0.2.2:8080").expect("valid");
        assert_eq!(r.dst, "10.0.2.2/32".parse().expect("cidr"));
        assert_eq!(r.ports, Some(8080..=8080));
        assert_eq!(r.to_string(), "--allow 10.0.2.2/32:8080");
        let r = rule("10.0.0.0/8").expect("valid");
        assert_eq!((r.dst.prefix, &r.ports), (8, &None));
        let r = EgressRule::parse(false, "0.0.0.0/0:1000-2000").expect("valid");
        assert_eq!(r.ports, Some(1000..=2000));
        assert_eq!(r.to_string(), "--deny 0.0.0.0/0:1000-2000");
        let r = rule("fec0::/64").expect("valid");
        assert_eq!((r.dst.prefix, &r.ports), (64, &None));
        let r = rule("[fec0::2]:80").expect("valid");
        assert_eq!((r.dst.prefix, &r.ports), (128, &Some(80..=80)));
        assert_eq!(r.to_string(), "--allow [fec0::2/128]:80");
        assert_eq!(rule("[::/0]").map(|r| r.dst.prefix), Ok(0));
        for bad in [
            "",
            "10.0.2.2:",
            "10.0.2.2:0",
            "10.0.2.2:70000",
            "10.0.2.2:90-80",
            "10.0.2.2/33",
            "10.0.2/24",
            "fec0::/129",
            "[fec0::2",
            "[fec0::2]80",
            "host.test:80",
        ] {
            let err = rule(bad).expect_err(bad);
            assert!(err.contains("; expected CIDR[:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn egress_rule_matching() {
        let r = EgressRule::parse(true, "10.0.2.0/24:80-81").expect("valid");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(r.matches(ip("10.0.2.2"), Some(80)));
        assert!(r.matches(ip("10.0.2.254"), Some(81)));
        assert!(!r.matches(ip("10.0.2.2"), Some(82)));
        assert!(!r.matches(ip("10.0.3.2"), Some(80)));
        assert!(!r.matches(ip("10.0.2.2"), None), "ports never match ICMP");
        assert!(!r.matches(ip("::ffff:10.0.2.2"), Some(80)));
        let any6 = EgressRule::parse(false, "::/0").expect("valid");
        assert!(any6.matches(ip("fec0::2"), None));
        assert!(any6.matches(ip("2001:db8::1"), Some(443)));
        assert!(!any6.matches(ip("10.0.2.2"), Some(443)));
        let all4 = EgressRule::parse(false, "0.0.0.0/0").expect("valid");
        assert!(all4.matches(ip("255.255.255.255"), None));
    }

    #[test]
    fn guestfwd_parsing_and_validation() {
        let g: GuestFwd = "tcp:10.0.2.100:4321-cmd:nc -U /run/a-b:c"
            .parse()
            .expect("valid");
        assert_eq!(g.addr, Some(Ipv4Addr::new(10, 0, 2, 100)));
        assert_eq!(g.port, 4321);
        assert_eq!(g.target, GuestFwdTarget::Cmd("nc -U /run/a-b:c".into()));
        assert_eq!(g.to_string(), "tcp:10.0.2.100:4321-cmd:nc -U /run/a-b:c");
        let g: GuestFwd = "tcp::22-unix:/run/ssh.sock".parse().expect("valid");
        assert_eq!(g.addr_in(Config::default().net), Ipv4Addr::new(10, 0, 2, 4));
        assert_eq!(g.target, GuestFwdTarget::Unix("/run/ssh.sock".into()));
        let g: GuestFwd = "10.0.2.9:7-cmd:cat".parse().expect("protocol left out");
        assert_eq!(g.port, 7);
        for bad in [
            "tcp:10.0.2.100:80",
            "udp:10.0.2.100:80-cmd:cat",
            "tcp:10.0.2.100:0-cmd:cat",
            "tcp:fec0::9:80-cmd:cat",
            "tcp:10.0.2.100:80-cmd:",
            "tcp:10.0.2.100:80-unix:",
            "tcp:10.0.2.100:80-dev:x",
        ] {
            assert!(bad.parse::<GuestFwd>().is_err(), "{bad}");
        }
        let with = |specs: &[&str]| Config {
            guestfwd: specs.iter().map(|s| s.parse().expect("valid")).collect(),
            ..Config::default()
        };
        assert_eq!(with(&["tcp::80-cmd:a", "tcp::81-cmd:b"]).validate(), Ok(()));
        for bad in [
            &["tcp:10.0.2.2:80-cmd:a"][..],
            &["tcp:10.0.2.3:80-cmd:a"],
            &["tcp:10.0.2.15:80-cmd:a"],
            &["tcp:10.0.2.255:80-cmd:a"],
            &["tcp:192.0.2.1:80-cmd:a"],
        ] {
            let e = with(bad).validate().expect_err("taken address");
            assert!(e.to_string().starts_with("--guestfwd"), "{e}");
        }
        assert!(matches!(
            with(&["tcp::80-cmd:a", "tcp:10.0.2.4:80-unix:/x"]).validate(),
            Err(ConfigError::GuestFwdTwice(_))
        ));
        let c = Config {
            bootfile: Some("x".repeat(BOOTFILE_MAX + 1)),
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Bootfile(_))));
    }

    #[test]
    fn dns_parsing() {
        assert_eq!(
            parse_dns_upstream("127.0.0.1"),
            Ok("127.0.0.1:53".parse().expect("a"))
        );
        assert_eq!(
            parse_dns_upstream("[::1]:5353"),
            Ok("[::1]:5353".parse().expect("a"))
        );
        assert!(parse_dns_upstream("resolver").is_err());
        let pin: DhcpHost = "52:54:00:00:00:0b=10.0.2.20".parse().expect("valid");
        assert_eq!(pin.mac, [0x52, 0x54, 0, 0, 0, 0x0b]);
        assert_eq!(pin.addr, Ipv4Addr::new(10, 0, 2, 20));
        assert!("52:54:00:00:0b=10.0.2.20".parse::<DhcpHost>().is_err());
        assert!("52:54:00:00:00:0b=fec0::1".parse::<DhcpHost>().is_err());
        assert!("52:54:00:00:00:0b".parse::<DhcpHost>().is_err());
        let mut c = Config {
            dhcp_hosts: vec![pin],
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
        for bad in ["52:54:00:00:00:0b=10.0.2.2", "52:54:00:00:00:0c=10.0.3.1"] {
            c.dhcp_hosts = vec![bad.parse().expect("parses")];
            assert!(c.validate().is_err(), "{bad}");
        }
        c.dhcp_hosts = vec![pin, "52:54:00:00:00:0c=10.0.2.20".parse().expect("parses")];
        assert!(c.validate().is_err(), "one address, two MACs");
        let h: DnsHost = "Foo.Test.=10.0.2.9".parse().expect("valid");
        assert_eq!(h.name, "foo.test");
    }
}
