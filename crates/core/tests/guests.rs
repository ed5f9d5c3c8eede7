//! Several guests on one link (a virtual switch in the driver): frames for
//! a flow go to the MAC of its guest, a port forward with a guest address
//! reaches that guest, ARP for another guest's address is left to it, and
//! a guest that leaves takes only its own flows with it.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr,
};
use usernet_core::Config;
use usernet_core::testing::{Behaviour, Harness, guest_udp, parse_tcp, parse_udp};

const A: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x0a]);
const B: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x0b]);
const A4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const B4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 16);

/// The shared harness, recording, with a host that echoes datagrams.
struct Rig(Harness);

impl Rig {
    fn new(cfg: Config) -> Rig {
        let echo = Behaviour {
            udp_echo: true,
            ..Behaviour::default()
        };
        let mut h = Harness::new(cfg, echo, Instant::now());
        h.record = true;
        Rig(h)
    }

    fn frame(&mut self, f: &[u8]) {
        self.0.frame(f);
    }

    /// Delivers the host's events, then returns every frame for the guests.
    fn drain(&mut self) -> Vec<Vec<u8>> {
        self.0.deliver();
        self.0.drain();
        self.0.take_output()
    }

    /// Guest `mac` at `ip` sends a datagram to the gateway's echo port.
    fn udp_from(&mut self, mac: EthernetAddress, ip: Ipv4Addr, sport: u16) {
        let cfg = self.0.stack.config().clone();
        let src = SocketAddr::new(ip.into(), sport);
        let f = guest_udp(&cfg, mac, src, "10.0.2.2:7".parse().expect("addr"), b"hi");
        self.frame(&f);
    }
}

fn dst_mac(f: &[u8]) -> EthernetAddress {
    EthernetFrame::new_checked(f).expect("ethernet").dst_addr()
}

fn arp_request(from: EthernetAddress, sip: Ipv4Addr, tip: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 28];
    EthernetRepr {
        src_addr: from,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: from,
        source_protocol_addr: sip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: tip,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
    f
}

#[test]
fn replies_go_to_the_guest_that_owns_the_flow() {
    let mut rig = Rig::new(Config::default());
    rig.udp_from(A, A4, 1000);
    rig.udp_from(B, B4, 1000);
    let out = rig.drain();
    let mut seen: Vec<(IpAddr, EthernetAddress)> = out
        .iter()
        .filter_map(|f| parse_udp(f).map(|(_, dst, _)| (dst.ip(), dst_mac(f))))
        .collect();
    seen.sort_by_key(|(ip, _)| *ip);
    assert_eq!(seen, vec![(A4.into(), A), (B4.into(), B)]);
    // B spoke last, yet A's next reply still goes to A.
    rig.udp_from(A, A4, 1000);
    let out = rig.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(dst_mac(&out[0]), A);
}

#[test]
fn a_port_forward_with_a_guest_address_reaches_that_guest() {
    let cfg = Config {
        hostfwd: vec!["tcp:127.0.0.1:2222-10.0.2.16:22".parse().expect("fwd")],
        ..Config::default()
    };
    let mut rig = Rig::new(cfg);
    rig.udp_from(B, B4, 1000);
    rig.udp_from(A, A4, 1000);
    rig.drain();
    rig.0
        .host
        .pending_accept
        .push_back("127.0.0.1:50000".parse().expect("addr"));
    let out = rig.drain();
    let syn = out
        .iter()
        .find(|f| parse_tcp(f).is_some())
        .expect("a SYN to the guest");
    assert_eq!(dst_mac(syn), B);
    let seg = parse_tcp(syn).expect("tcp");
    assert_eq!(seg.dst, SocketAddr::new(B4.into(), 22));
}

#[test]
fn arp_for_another_guest_is_left_to_that_guest() {
    let mut rig = Rig::new(Config::default());
    rig.udp_from(B, B4, 1000);
    rig.drain();
    // A asks who has B's address: B answers, not the stack.
    rig.frame(&arp_request(A, A4, B4));
    assert!(rig.drain().is_empty(), "the stack answered for B");
    // B asks for its own gateway: answered, to B.
    rig.frame(&arp_request(B, B4, Ipv4Addr::new(10, 0, 2, 2)));
    let out = rig.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(dst_mac(&out[0]), B);
    // An address no guest has is answered as before.
    rig.frame(&arp_request(A, A4, Ipv4Addr::new(10, 0, 2, 99)));
    assert_eq!(rig.drain().len(), 1);
}

#[test]
fn a_guest_leaving_takes_only_its_flows() {
    let mut rig = Rig::new(Config::default());
    rig.udp_from(A, A4, 1000);
    rig.udp_from(A, A4, 1001);
    rig.udp_from(B, B4, 1000);
    rig.drain();
    assert_eq!(rig.0.stack.flow_count(), 3);
    assert_eq!(rig.0.stack.addresses_of(A.0), vec![IpAddr::from(A4)]);
    rig.0.stack.guest_gone(A.0, &mut rig.0.host);
    assert_eq!(rig.0.stack.flow_count(), 1, "B's flow stays");
    assert!(rig.0.stack.addresses_of(A.0).is_empty());
    assert_eq!(rig.0.stack.addresses_of(B.0), vec![IpAddr::from(B4)]);
    // B still gets its replies.
    rig.udp_from(B, B4, 1000);
    let out = rig.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(dst_mac(&out[0]), B);
    // The last guest leaving resets the link.
    rig.0.stack.guest_gone(B.0, &mut rig.0.host);
    assert_eq!(rig.0.stack.flow_count(), 0);
    assert_eq!(rig.0.stack.guest_addresses(), (None, None, None));
}
