//! NAT policy: where a guest's packet to a given destination goes.
//!
//! One pure function, [`outbound`], decides for every new guest flow; the
//! table in its tests is the policy's specification:
//!
//! | guest destination        | goes to                                   |
//! |--------------------------|-------------------------------------------|
//! | gateway (`--host`)       | host loopback, same port (refused with `--disable-host-loopback`) |
//! | DNS address, port 53     | the DNS forwarder (UDP answered locally or sent upstream; TCP to the upstream) |
//! | gateway/DNS, ICMP echo   | answered by the stack itself              |
//! | other address in `--net` | refused (nobody is there)                 |
//! | broadcast, multicast     | dropped                                   |
//! | anything else            | the same address, through a host socket   |
//!
//! [`guest_visible_source`] is the inbound half: the address the guest sees
//! a port-forwarded client connect from.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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
    /// Refuse: RST for TCP, ICMP unreachable otherwise.
    Refuse,
    /// Drop silently.
    Drop,
}

/// Decides where a new guest flow to `dst` goes.
pub fn outbound(cfg: &Config, proto: Proto, dst: SocketAddr) -> Verdict {
    let IpAddr::V4(ip) = dst.ip() else {
        return Verdict::Host(dst);
    };
    if ip.is_broadcast() || ip.is_multicast() || ip == cfg.net.broadcast() || ip.is_unspecified() {
        return Verdict::Drop;
    }
    if ip == cfg.host {
        return match proto {
            Proto::Icmp => Verdict::Local,
            _ if cfg.disable_host_loopback => Verdict::Refuse,
            _ => Verdict::Host(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dst.port())),
        };
    }
    if ip == cfg.dns {
        return match proto {
            Proto::Icmp => Verdict::Local,
            _ if dst.port() == 53 => Verdict::Dns,
            _ => Verdict::Refuse,
        };
    }
    if cfg.net.contains(ip) {
        return Verdict::Refuse;
    }
    Verdict::Host(dst)
}

/// The address the guest sees a port-forwarded connection come from:
/// the real client, unless it is a loopback (or guest-network) address,
/// which would not route back, or of a family the guest link does not
/// carry, and then the gateway.
pub fn guest_visible_source(cfg: &Config, client: SocketAddr) -> SocketAddr {
    let hidden = match client.ip() {
        IpAddr::V4(ip) => ip.is_loopback() || ip.is_unspecified() || cfg.net.contains(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => v4.is_loopback() || cfg.net.contains(v4),
            // The guest link is IPv4 only for now: a v6 client cannot be
            // shown as itself.
            None => true,
        },
    };
    if hidden {
        SocketAddr::new(cfg.host.into(), client.port())
    } else if let IpAddr::V6(ip) = client.ip()
        && let Some(v4) = ip.to_ipv4_mapped()
    {
        SocketAddr::new(v4.into(), client.port())
    } else {
        client
    }
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
        let table: &[(&Config, Proto, &str, Verdict)] = &[
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
            (&cfg, Proto::Udp, "10.0.2.255:9", Verdict::Drop),
            (&cfg, Proto::Udp, "255.255.255.255:9", Verdict::Drop),
            (&cfg, Proto::Udp, "224.0.0.251:5353", Verdict::Drop),
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
    fn forwarded_clients_keep_their_address() {
        let cfg = Config::default();
        assert_eq!(
            guest_visible_source(&cfg, sa("127.0.0.1:5000")),
            sa("10.0.2.2:5000")
        );
        assert_eq!(
            guest_visible_source(&cfg, sa("[::1]:5000")),
            sa("10.0.2.2:5000")
        );
        assert_eq!(
            guest_visible_source(&cfg, sa("192.0.2.9:5000")),
            sa("192.0.2.9:5000")
        );
        assert_eq!(
            guest_visible_source(&cfg, sa("[::ffff:192.0.2.9]:5000")),
            sa("192.0.2.9:5000")
        );
        assert_eq!(
            guest_visible_source(&cfg, sa("10.0.2.99:5000")),
            sa("10.0.2.2:5000")
        );
    }
}
