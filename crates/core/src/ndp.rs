//! IPv6 neighbour discovery (RFC 4861) and router advertisements with DNS
//! options (RFC 8106), for SLAAC (RFC 4862).
//!
//! The stack is the guest's router: it answers neighbour solicitations for
//! its own addresses (the gateway, the DNS forwarder and its link-local
//! address), never for anything else, so duplicate address detection
//! probes (source `::`) never see a conflict. Router advertisements, on
//! solicitation and periodically, carry the prefix (on-link, autonomous),
//! the MTU, our link-layer address and an RDNSS option naming the DNS
//! forwarder; the "other configuration" flag points the guest at stateless
//! DHCPv6 ([`crate::dhcpv6`]) for the search list.
use std::net::Ipv6Addr;

use smoltcp::time::Duration;
use smoltcp::wire::{
    EthernetAddress, Icmpv6Repr, NdiscNeighborFlags, NdiscPrefixInfoFlags, NdiscPrefixInformation,
    NdiscRepr, NdiscRouterFlags, RawHardwareAddress,
};

use crate::config::Config;
use crate::icmp;
use crate::packet::Macs;

/// All-nodes multicast address.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Seconds between unsolicited router advertisements.
pub const RA_INTERVAL_SECS: u64 = 200;
/// RDNSS option (RFC 8106) type.
const OPT_RDNSS: u8 = 25;
/// RDNSS option length with one address, in bytes.
const RDNSS_LEN: usize = 24;

/// The stack's link-local address, from its MAC by EUI-64 (RFC 4291).
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let b = [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ];
    Ipv6Addr::from(b)
}

/// The Ethernet multicast address for an IPv6 multicast group (RFC 2464).
pub fn multicast_mac(ip: Ipv6Addr) -> EthernetAddress {
    let o = ip.octets();
    EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// Whether `target` is one of the stack's own IPv6 addresses.
pub fn is_ours(cfg: &Config, target: Ipv6Addr) -> bool {
    target == cfg.ipv6_host || target == cfg.ipv6_dns || target == link_local(cfg.mac)
}

/// A router advertisement to `dst` (the soliciting guest or all nodes).
pub fn router_advert(buf: &mut [u8], cfg: &Config, macs: Macs, dst: Ipv6Addr) -> Option<usize> {
    let n6 = cfg.ipv6_net;
    let ra = NdiscRepr::RouterAdvert {
        hop_limit: 64,
        flags: NdiscRouterFlags::OTHER,
        router_lifetime: Duration::from_secs(1800),
        reachable_time: Duration::from_millis(0),
        retrans_time: Duration::from_millis(0),
        lladdr: Some(RawHardwareAddress::from(EthernetAddress(cfg.mac))),
        mtu: Some(cfg.mtu),
        prefix_info: Some(NdiscPrefixInformation {
            prefix_len: n6.prefix,
            // SLAAC forms addresses only in a /64.
            flags: if n6.prefix == 64 {
                NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF
            } else {
                NdiscPrefixInfoFlags::ON_LINK
            },
            valid_lifetime: Duration::from_secs(86400),
            preferred_lifetime: Duration::from_secs(14400),
            prefix: n6.network(),
        }),
    };
    let mut rdnss = [0u8; RDNSS_LEN];
    rdnss[0] = OPT_RDNSS;
    rdnss[1] = (RDNSS_LEN / 8) as u8;
    rdnss[4..8].copy_from_slice(&1800u32.to_be_bytes());
    rdnss[8..].copy_from_slice(&cfg.ipv6_dns.octets());
    icmp::emit6(
        buf,
        macs,
        link_local(cfg.mac),
        dst,
        &Icmpv6Repr::Ndisc(ra),
        &rdnss,
        255,
    )
}

/// A solicited neighbour advertisement for our address `target`.
pub fn neighbor_advert(
    buf: &mut [u8],
    cfg: &Config,
    macs: Macs,
    target: Ipv6Addr,
    dst: Ipv6Addr,
) -> Option<usize> {
    let na = NdiscRepr::NeighborAdvert {
        flags: NdiscNeighborFlags::ROUTER
            | NdiscNeighborFlags::SOLICITED
            | NdiscNeighborFlags::OVERRIDE,
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(EthernetAddress(cfg.mac))),
    };
    icmp::emit6(buf, macs, target, dst, &Icmpv6Repr::Ndisc(na), &[], 255)
}

/// A neighbour solicitation asking for the guest's MAC (before a port
/// forward reaches a guest the stack has not heard from).
pub fn neighbor_solicit(buf: &mut [u8], cfg: &Config, target: Ipv6Addr) -> Option<usize> {
    let o = target.octets();
    let group = Ipv6Addr::from([
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ]);
    let macs = Macs {
        src: EthernetAddress(cfg.mac),
        dst: multicast_mac(group),
    };
    let ns = NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(EthernetAddress(cfg.mac))),
    };
    icmp::emit6(
        buf,
        macs,
        link_local(cfg.mac),
        group,
        &Icmpv6Repr::Ndisc(ns),
        &[],
        255,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{EthernetFrame, Icmpv6Packet, Ipv6Packet};

    const GUEST: Macs = Macs {
        src: EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
        dst: EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
    };

    #[test]
    fn link_local_is_eui64() {
        assert_eq!(
            link_local([0x52, 0x55, 10, 0, 2, 2]),
            "fe80::5055:aff:fe00:202".parse::<Ipv6Addr>().expect("v6")
        );
        assert_eq!(
            multicast_mac(ALL_NODES),
            EthernetAddress([0x33, 0x33, 0, 0, 0, 1])
        );
    }

    #[test]
    fn router_advert_bytes() {
        let cfg = Config::default();
        let mut buf = [0u8; 256];
        let n = router_advert(&mut buf, &cfg, GUEST, ALL_NODES).expect("fits");
        let eth = EthernetFrame::new_checked(&buf[..n]).expect("eth");
        let ip = Ipv6Packet::new_checked(eth.payload()).expect("ip");
        assert_eq!(ip.hop_limit(), 255);
        assert_eq!(ip.src_addr(), link_local(cfg.mac));
        let icmp = ip.payload();
        let pkt = Icmpv6Packet::new_checked(icmp).expect("icmp");
        assert!(pkt.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
        // Type 134, code 0, hop limit 64, O flag, lifetime 1800.
        assert_eq!(&icmp[..2], &[134, 0]);
        assert_eq!((icmp[4], icmp[5]), (64, 0x40));
        assert_eq!(&icmp[6..8], &1800u16.to_be_bytes());
        // Options after the 16-byte header: SLLA (8), MTU (8), prefix (32), RDNSS (24).
        let opts = &icmp[16..];
        assert_eq!(opts.len(), 8 + 8 + 32 + 24);
        let mut found = Vec::new();
        let mut o = opts;
        while o.len() >= 8 {
            let len = usize::from(o[1]) * 8;
            found.push((o[0], o[..len].to_vec()));
            o = &o[len..];
        }
        let get = |t: u8| {
            found
                .iter()
                .find(|(k, _)| *k == t)
                .map(|(_, v)| v.clone())
                .expect("option")
        };
        assert_eq!(&get(1)[2..8], &cfg.mac);
        assert_eq!(&get(5)[4..8], &1500u32.to_be_bytes());
        let prefix = get(3);
        assert_eq!(
            (prefix[2], prefix[3]),
            (64, 0xc0),
            "/64, on-link + autonomous"
        );
        assert_eq!(
            &prefix[16..32],
            &"fec0::".parse::<Ipv6Addr>().expect("v6").octets()
        );
        let rdnss = get(25);
        assert_eq!(&rdnss[8..24], &cfg.ipv6_dns.octets());
    }

    #[test]
    fn neighbor_advert_for_the_gateway() {
        let cfg = Config::default();
        let mut buf = [0u8; 128];
        let guest: Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().expect("v6");
        let n = neighbor_advert(&mut buf, &cfg, GUEST, cfg.ipv6_host, guest).expect("fits");
        let eth = EthernetFrame::new_checked(&buf[..n]).expect("eth");
        let ip = Ipv6Packet::new_checked(eth.payload()).expect("ip");
        let icmp = ip.payload();
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0xe0, "router, solicited, override");
        assert_eq!(&icmp[8..24], &cfg.ipv6_host.octets());
        assert!(is_ours(&cfg, cfg.ipv6_dns) && !is_ours(&cfg, guest));
    }
}
