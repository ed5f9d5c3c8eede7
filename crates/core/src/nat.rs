//! NAT policy: where a guest's packet to a given destination goes.
//!
//! One pure function, [`outbound`], decides for every new guest flow; the
//! table in its tests is the policy's specification:
//!
//! | guest destination        | goes to                                   |
//! |--------------------------|-------------------------------------------|
//! | gateway (`--host`, `--ipv6-host`) | host loopback (127.0.0.1, ::1), same port (refused with `--disable-host-loopback`) |
//! | DNS address (`--dns`, `--ipv6-dns`), port 53 | the DNS forwarder (UDP answered locally or sent upstream; TCP to the upstream) |
//! | gateway/DNS, ICMP echo   | answered by the stack itself              |
//! | a `--guestfwd` address and port, TCP | that guestfwd's command or socket |
//! | other address in `--net`/`--ipv6-net` | refused (nobody is there) |
//! | loopback (127.0.0.0/8, `::1`) or IPv4-mapped IPv6 | refused: the host's loopback is reached only as the gateway, so `--disable-host-loopback` and the egress rules cannot be sidestepped |
//! | broadcast, multicast, other link-local | dropped                   |
//! | anything else            | the same address, through a host socket   |
//!
//! # Egress rules (`--restrict`, `--allow`, `--deny`)
//! A flow the table sends through a host socket ([`Verdict::Host`]: the
//! gateway's mapping to loopback and every outside address) is then checked
//! against the egress rules, in command-line order; the first rule that
//! matches the destination *as the guest addressed it* (`10.0.2.2:80`, not
//! `127.0.0.1:80`) decides, and with none matching `--restrict` refuses and
//! its absence allows. A refusal is [`Verdict::Prohibit`]: a TCP reset, or
//! ICMP "administratively prohibited". The stack's own services (DHCP, NDP
//! and router advertisements, DHCPv6, the DNS forwarder, echo replies from
//! its own addresses) are not egress and never checked, and neither are
//! port-forwarded connections, which the host opens. One service is half
//! egress: a query the DNS forwarder cannot answer from `--dns-host` goes
//! to the upstream resolver, and a guest could tunnel data out through
//! the names it asks for. So forwarding is checked too
//! ([`dns_forwarding_allowed`], the rules applied to the DNS address and
//! port 53): under `--restrict` the guest gets only the locally
//! configured names (REFUSED for the rest) unless `--allow 10.0.2.3:53`
//! (or `[fec0::3]:53`) lets its queries out, and `--deny 10.0.2.3:53`
//! stops forwarding without `--restrict`.
//!
//! [`guest_visible_source`] is the inbound half: the address the guest sees
//! a port-forwarded client connect from.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::Config;

/// Protocol of a guest flow, as far as policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP echo.
    Icmp,
}

/// The decision for a new guest flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Open a host socket to this address.
    Host(SocketAddr),
    /// A DNS query to the forwarder (UDP: maybe answered locally).
    Dns,
    /// Answered by the stack itself (ICMP echo to its own addresses).
    Local,
    /// Carried to the host command or socket of `Config::guestfwd[i]`.
    GuestFwd(usize),
    /// Refuse: RST for TCP, ICMP unreachable otherwise.
    Refuse,
    /// Refused by the egress rules (`--restrict`, `--deny`): RST for TCP,
    /// ICMP "administratively prohibited" otherwise.
    Prohibit,
    /// Drop silently.
    Drop,
}

/// Decides where a new guest flow to `dst` goes.
pub fn outbound(cfg: &Config, proto: Proto, dst: SocketAddr) -> Verdict {
    match route(cfg, proto, dst) {
        Verdict::Host(_) if !egress_allowed(cfg, proto, dst) => Verdict::Prohibit,
        verdict => verdict,
    }
}

/// Whether the egress rules let a flow to `dst` (as the guest addressed
/// it) leave: the first matching rule decides, else `--restrict` does.
fn egress_allowed(cfg: &Config, proto: Proto, dst: SocketAddr) -> bool {
    let port = match proto {
        Proto::Tcp | Proto::Udp => Some(dst.port()),
        Proto::Icmp => None,
    };
    cfg.egress
        .iter()
        .find(|rule| rule.matches(dst.ip(), port))
        .map_or(!cfg.restrict, |rule| rule.allow)
}

/// Whether a DNS query the guest sent to `dst` (the DNS address, port 53)
/// and that the forwarder cannot answer itself may go to the upstream
/// resolver: the egress rules, as for any flow to `dst`.
pub fn dns_forwarding_allowed(cfg: &Config, proto: Proto, dst: SocketAddr) -> bool {
    egress_allowed(cfg, proto, dst)
}

/// The table without the egress rules.
fn route(cfg: &Config, proto: Proto, dst: SocketAddr) -> Verdict {
    let ip = match dst.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => return outbound6(cfg, proto, ip, dst.port()),
    };
    if ip.is_broadcast() || ip.is_multicast() || ip == cfg.net.broadcast() || ip.is_unspecified() {
        return Verdict::Drop;
    }
    if ip.is_loopback() {
        return Verdict::Refuse;
    }
    if ip == cfg.host {
        return match proto {
            Proto::Icmp => Verdict::Local,
            _ if cfg.disable_host_loopback => Verdict::Refuse,
            _ => Verdict::Host(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dst.port())),
        };
    }
    if ip == cfg.dns && !cfg.disable_dns {
        return match proto {
            Proto::Icmp => Verdict::Local,
            _ if dst.port() == 53 => Verdict::Dns,
            _ => Verdict::Refuse,
        };
    }
    if proto == Proto::Tcp
        && let Some(i) = cfg
            .guestfwd
            .iter()
            .position(|g| g.addr_in(cfg.net) == ip && g.port == dst.port())
    {
        return Verdict::GuestFwd(i);
    }
    if cfg.net.contains(ip) {
        return Verdict::Refuse;
    }
    Verdict::Host(dst)
}

/// [`route`] for IPv6: the same table with `--ipv6-host` (mapped to the
/// host's `::1`) and `--ipv6-dns`; link-local and multicast destinations
/// other than the stack's own stay on the link.
fn outbound6(cfg: &Config, proto: Proto, ip: Ipv6Addr, port: u16) -> Verdict {
    let ours = ip == crate::ndp::link_local(cfg.mac);
    if ip == cfg.ipv6_host || ours {
        return match proto {
            Proto::Icmp => Verdict::Local,
            _ if cfg.disable_host_loopback || ours => Verdict::Refuse,
            _ => Verdict::Host(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)),
        };
    }
    if ip == cfg.ipv6_dns && !cfg.disable_dns {
        return match proto {
            Proto::Icmp => Verdict::Local,
            _ if port == 53 => Verdict::Dns,
            _ => Verdict::Refuse,
        };
    }
    if ip.is_multicast() || ip.is_unspecified() || ip.is_unicast_link_local() {
        return Verdict::Drop;
    }
    if cfg.ipv6_net.contains(ip) || ip.is_loopback() || ip.to_ipv4_mapped().is_some() {
        return Verdict::Refuse;
    }
    Verdict::Host(SocketAddr::new(ip.into(), port))
}

/// The address the guest sees a port-forwarded client connect from (for a
/// guest address of `guest`'s family): the real client, unless it is a
/// loopback (or guest-network) address, which would not route back, or of
/// the other family, and then the gateway of the guest's family.
pub fn guest_visible_source(cfg: &Config, client: SocketAddr, guest: IpAddr) -> SocketAddr {
    let client_ip = match client.ip() {
        IpAddr::V6(ip) => ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4),
        v4 => v4,
    };
    let visible = match (client_ip, guest) {
        (IpAddr::V4(ip), IpAddr::V4(_)) => {
            !(ip.is_loopback() || ip.is_unspecified() || cfg.net.contains(ip))
        }
        (IpAddr::V6(ip), IpAddr::V6(_)) => {
            !(ip.is_loopback() || ip.is_unspecified() || cfg.ipv6_net.contains(ip))
        }
        _ => false,
    };
    let ip = match guest {
        _ if visible => client_ip,
        IpAddr::V4(_) => cfg.host.into(),
        IpAddr::V6(_) => cfg.ipv6_host.into(),
    };
    SocketAddr::new(ip, client.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn policy_table() {
        let cfg = Config::default();
        let no_lo = Config {
            disable_host_loopback: true,
            ..Config::default()
        };
        let no_dns = Config {
            disable_dns: true,
            ..Config::default()
        };
        let fwd = Config {
            guestfwd: vec![
                "tcp:10.0.2.100:4321-cmd:cat".parse().expect("guestfwd"),
                "tcp::80-unix:/run/x.sock".parse().expect("guestfwd"),
            ],
            ..Config::default()
        };
        let table: &[(&Config, Proto, &str, Verdict)] = &[
            (&no_dns, Proto::Udp, "10.0.2.3:53", Verdict::Refuse),
            (&no_dns, Proto::Udp, "[fec0::3]:53", Verdict::Refuse),
            (
                &cfg,
                Proto::Tcp,
                "10.0.2.2:80",
                Verdict::Host(sa("127.0.0.1:80")),
            ),
            (
                &cfg,
                Proto::Udp,
                "10.0.2.2:7",
                Verdict::Host(sa("127.0.0.1:7")),
            ),
            (&cfg, Proto::Icmp, "10.0.2.2:0", Verdict::Local),
            (&no_lo, Proto::Tcp, "10.0.2.2:80", Verdict::Refuse),
            (&no_lo, Proto::Icmp, "10.0.2.2:0", Verdict::Local),
            (&cfg, Proto::Udp, "10.0.2.3:53", Verdict::Dns),
            (&cfg, Proto::Tcp, "10.0.2.3:53", Verdict::Dns),
            (&cfg, Proto::Tcp, "10.0.2.3:80", Verdict::Refuse),
            (&cfg, Proto::Icmp, "10.0.2.3:0", Verdict::Local),
            (&cfg, Proto::Tcp, "10.0.2.77:80", Verdict::Refuse),
            (&fwd, Proto::Tcp, "10.0.2.100:4321", Verdict::GuestFwd(0)),
            (&fwd, Proto::Tcp, "10.0.2.4:80", Verdict::GuestFwd(1)),
            (&fwd, Proto::Tcp, "10.0.2.100:4322", Verdict::Refuse),
            (&fwd, Proto::Udp, "10.0.2.100:4321", Verdict::Refuse),
            (&fwd, Proto::Icmp, "10.0.2.100:0", Verdict::Refuse),
            (
                &fwd,
                Proto::Tcp,
                "10.0.2.2:4321",
                Verdict::Host(sa("127.0.0.1:4321")),
            ),
            (&cfg, Proto::Udp, "10.0.2.255:9", Verdict::Drop),
            (&cfg, Proto::Udp, "255.255.255.255:9", Verdict::Drop),
            (&cfg, Proto::Udp, "224.0.0.251:5353", Verdict::Drop),
            (&cfg, Proto::Tcp, "127.0.0.1:22", Verdict::Refuse),
            (&cfg, Proto::Udp, "127.1.2.3:53", Verdict::Refuse),
            (&cfg, Proto::Icmp, "127.0.0.1:0", Verdict::Refuse),
            (&cfg, Proto::Tcp, "[::1]:22", Verdict::Refuse),
            (&cfg, Proto::Tcp, "[::ffff:127.0.0.1]:22", Verdict::Refuse),
            (&cfg, Proto::Udp, "[::ffff:192.0.2.1]:53", Verdict::Refuse),
            (
                &cfg,
                Proto::Tcp,
                "192.0.2.1:443",
                Verdict::Host(sa("192.0.2.1:443")),
            ),
        ];
        for (cfg, proto, dst, want) in table {
            assert_eq!(outbound(cfg, *proto, sa(dst)), *want, "{proto:?} to {dst}");
        }
    }

    #[test]
    fn dns_forwarding_follows_the_egress_rules() {
        use Proto::{Tcp, Udp};
        let table = [
            (rules(false, &[]), Udp, "10.0.2.3:53", true),
            (rules(true, &[]), Udp, "10.0.2.3:53", false),
            (rules(true, &[]), Tcp, "[fec0::3]:53", false),
            (rules(true, &["+10.0.2.3:53"]), Udp, "10.0.2.3:53", true),
            (rules(true, &["+10.0.2.3:53"]), Udp, "[fec0::3]:53", false),
            (rules(true, &["+10.0.2.0/24"]), Tcp, "10.0.2.3:53", true),
            (rules(false, &["-10.0.2.3:53"]), Udp, "10.0.2.3:53", false),
            (rules(false, &["-10.0.2.2"]), Udp, "10.0.2.3:53", true),
        ];
        for (cfg, proto, dst, want) in &table {
            assert_eq!(
                dns_forwarding_allowed(cfg, *proto, sa(dst)),
                *want,
                "{proto:?} to {dst} with restrict={} {:?}",
                cfg.restrict,
                cfg.egress
            );
        }
    }

    fn rules(restrict: bool, rules: &[&str]) -> Config {
        crate::testing::egress_config(restrict, rules)
    }

    #[test]
    fn egress_rules_table() {
        use Proto::{Icmp, Tcp, Udp};
        use Verdict::{Dns, Drop, Host, Local, Prohibit, Refuse};
        let restrict = rules(true, &[]);
        let holes = rules(
            true,
            &["+10.0.2.2:8080", "+[fec0::2]:8080", "+192.0.2.0/24"],
        );
        let deny = rules(false, &["-10.0.2.2:22", "-::/0"]);
        let allow_first = rules(false, &["+10.0.2.2:22", "-10.0.2.0/24"]);
        let deny_first = rules(false, &["-10.0.2.0/24", "+10.0.2.2:22"]);
        let no_lo = Config {
            disable_host_loopback: true,
            ..rules(true, &["+10.0.2.2:80"])
        };
        let table: &[(&Config, Proto, &str, Verdict)] = &[
            // --restrict: nothing leaves; the stack's own services answer.
            (&restrict, Tcp, "10.0.2.2:80", Prohibit),
            (&restrict, Udp, "10.0.2.2:7", Prohibit),
            (&restrict, Icmp, "10.0.2.2:0", Local),
            (&restrict, Udp, "10.0.2.3:53", Dns),
            (&restrict, Tcp, "10.0.2.3:53", Dns),
            (&restrict, Icmp, "10.0.2.3:0", Local),
            (&restrict, Tcp, "192.0.2.1:443", Prohibit),
            (&restrict, Icmp, "192.0.2.1:0", Prohibit),
            (&restrict, Tcp, "[fec0::2]:80", Prohibit),
            (&restrict, Udp, "[fec0::3]:53", Dns),
            (&restrict, Icmp, "[fec0::2]:0", Local),
            (&restrict, Icmp, "[2001:db8::1]:0", Prohibit),
            (&restrict, Udp, "[2001:db8::1]:53", Prohibit),
            (&restrict, Tcp, "10.0.2.77:80", Refuse),
            (&restrict, Udp, "10.0.2.255:9", Drop),
            // --allow punches holes, matching what the guest addressed.
            (&holes, Tcp, "10.0.2.2:8080", Host(sa("127.0.0.1:8080"))),
            (&holes, Udp, "10.0.2.2:8080", Host(sa("127.0.0.1:8080"))),
            (&holes, Tcp, "10.0.2.2:8081", Prohibit),
            (&holes, Tcp, "[fec0::2]:8080", Host(sa("[::1]:8080"))),
            (&holes, Tcp, "[fec0::2]:22", Prohibit),
            (&holes, Icmp, "192.0.2.9:0", Host(sa("192.0.2.9:0"))),
            (&holes, Tcp, "192.0.2.9:443", Host(sa("192.0.2.9:443"))),
            (&holes, Icmp, "198.51.100.1:0", Prohibit),
            // --deny without --restrict blocks only what it names.
            (&deny, Tcp, "10.0.2.2:22", Prohibit),
            (&deny, Udp, "10.0.2.2:22", Prohibit),
            (&deny, Tcp, "10.0.2.2:80", Host(sa("127.0.0.1:80"))),
            (&deny, Icmp, "192.0.2.1:0", Host(sa("192.0.2.1:0"))),
            (&deny, Tcp, "[2001:db8::1]:443", Prohibit),
            (&deny, Icmp, "[2001:db8::1]:0", Prohibit),
            (&deny, Udp, "[fec0::3]:53", Dns),
            (&deny, Icmp, "[fec0::2]:0", Local),
            // The first matching rule wins.
            (&allow_first, Tcp, "10.0.2.2:22", Host(sa("127.0.0.1:22"))),
            (&allow_first, Tcp, "10.0.2.2:80", Prohibit),
            (&deny_first, Tcp, "10.0.2.2:22", Prohibit),
            // The table refuses before the rules are asked.
            (&no_lo, Tcp, "10.0.2.2:80", Refuse),
        ];
        for (cfg, proto, dst, want) in table {
            assert_eq!(
                outbound(cfg, *proto, sa(dst)),
                *want,
                "{proto:?} to {dst} with restrict={} {:?}",
                cfg.restrict,
                cfg.egress
            );
        }
    }

    #[test]
    fn forwarded_clients_keep_their_address() {
        let cfg = Config::default();
        let v4: IpAddr = "10.0.2.15".parse().expect("v4");
        let v6: IpAddr = "fec0::15".parse().expect("v6");
        let table = [
            ("127.0.0.1:5000", v4, "10.0.2.2:5000"),
            ("[::1]:5000", v4, "10.0.2.2:5000"),
            ("192.0.2.9:5000", v4, "192.0.2.9:5000"),
            ("[::ffff:192.0.2.9]:5000", v4, "192.0.2.9:5000"),
            ("10.0.2.99:5000", v4, "10.0.2.2:5000"),
            ("[2001:db8::9]:5000", v4, "10.0.2.2:5000"),
            ("[2001:db8::9]:5000", v6, "[2001:db8::9]:5000"),
            ("[::1]:5000", v6, "[fec0::2]:5000"),
            ("192.0.2.9:5000", v6, "[fec0::2]:5000"),
        ];
        for (client, guest, want) in table {
            assert_eq!(
                guest_visible_source(&cfg, sa(client), guest),
                sa(want),
                "{client} to {guest}"
            );
        }
    }
}
