//! Guest frames for the integration tests, built with `smoltcp::wire`, and
//! a light parse of what the stack sends back. Tests that need a malformed
//! frame build a good one here and then break the one field they test.
#![allow(dead_code)] // each test file uses its own subset

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};
use usernet_core::Config;
use usernet_core::testing::{Behaviour, Harness};

pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const GUEST_IP6: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0x15);
pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2);

/// The stack's MAC under the default configuration.
pub fn stack_mac() -> EthernetAddress {
    EthernetAddress(Config::default().mac)
}

/// A started harness recording its output, with a passive host.
pub fn harness(cfg: Config) -> Harness {
    let mut h = Harness::new(cfg, Behaviour::default(), Instant::now());
    h.record = true;
    h
}

/// An Ethernet frame from the guest to `dst` around a payload of `len`
/// bytes written by `body`.
pub fn eth(
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    len: usize,
    body: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut f = vec![0u8; 14 + len];
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: dst,
        ethertype,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
    body(&mut f[14..]);
    f
}

/// An IPv4 packet from the guest to the stack's MAC.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    len: usize,
    body: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    eth(stack_mac(), EthernetProtocol::Ipv4, 20 + len, |b| {
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: proto,
            payload_len: len,
            hop_limit: 64,
        }
        .emit(
            &mut Ipv4Packet::new_unchecked(&mut b[..20]),
            &ChecksumCapabilities::default(),
        );
        body(&mut b[20..]);
    })
}

/// An IPv6 packet from the guest to the stack's MAC.
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: IpProtocol,
    len: usize,
    body: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    eth(stack_mac(), EthernetProtocol::Ipv6, 40 + len, |b| {
        Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: proto,
            payload_len: len,
            hop_limit: 64,
        }
        .emit(&mut Ipv6Packet::new_unchecked(&mut b[..40]));
        body(&mut b[40..]);
    })
}

/// A TCP segment's fields (no options but MSS and window scale on SYN).
#[derive(Clone, Copy, Debug)]
pub struct Seg {
    pub sport: u16,
    pub dport: u16,
    pub control: TcpControl,
    pub seq: u32,
    pub ack: Option<u32>,
    pub window: u16,
}

impl Seg {
    /// A SYN from guest port `sport` to `dport`.
    pub fn syn(sport: u16, dport: u16) -> Seg {
        Seg {
            sport,
            dport,
            control: TcpControl::Syn,
            seq: 1000,
            ack: None,
            window: 64000,
        }
    }

    fn repr(&self) -> TcpRepr<'static> {
        let syn = self.control == TcpControl::Syn;
        TcpRepr {
            src_port: self.sport,
            dst_port: self.dport,
            control: self.control,
            seq_number: TcpSeqNumber(self.seq as i32),
            ack_number: self.ack.map(|a| TcpSeqNumber(a as i32)),
            window_len: self.window,
            window_scale: syn.then_some(7),
            max_seg_size: syn.then_some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        }
    }
}

/// A TCP segment from the guest to `dst` over IPv4.
pub fn tcp4(dst: Ipv4Addr, seg: Seg) -> Vec<u8> {
    let repr = seg.repr();
    ipv4(GUEST_IP, dst, IpProtocol::Tcp, repr.buffer_len(), |b| {
        repr.emit(
            &mut TcpPacket::new_unchecked(b),
            &IpAddress::Ipv4(GUEST_IP),
            &IpAddress::Ipv4(dst),
            &ChecksumCapabilities::default(),
        )
    })
}

/// A UDP datagram from the guest's `sport` to `dst:dport` over IPv4.
pub fn udp4(sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr {
        src_port: sport,
        dst_port: dport,
    };
    ipv4(GUEST_IP, dst, IpProtocol::Udp, 8 + payload.len(), |b| {
        repr.emit(
            &mut UdpPacket::new_unchecked(b),
            &IpAddress::Ipv4(GUEST_IP),
            &IpAddress::Ipv4(dst),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        )
    })
}

/// An echo request from the guest to `dst`.
pub fn ping4(dst: Ipv4Addr, ident: u16, seq_no: u16) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest {
        ident,
        seq_no,
        data: b"ping",
    };
    ipv4(GUEST_IP, dst, IpProtocol::Icmp, repr.buffer_len(), |b| {
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(b),
            &ChecksumCapabilities::default(),
        )
    })
}

/// An ICMPv6 echo request from the guest to `dst`.
pub fn ping6(dst: Ipv6Addr, ident: u16, seq_no: u16) -> Vec<u8> {
    let repr = Icmpv6Repr::EchoRequest {
        ident,
        seq_no,
        data: b"ping",
    };
    ipv6(GUEST_IP6, dst, IpProtocol::Icmpv6, repr.buffer_len(), |b| {
        repr.emit(
            &GUEST_IP6,
            &dst,
            &mut Icmpv6Packet::new_unchecked(b),
            &ChecksumCapabilities::default(),
        )
    })
}

/// An ARP request from the guest for `target`.
pub fn arp_request(dst: EthernetAddress, target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    eth(dst, EthernetProtocol::Arp, repr.buffer_len(), |b| {
        repr.emit(&mut ArpPacket::new_unchecked(b))
    })
}

/// What the stack sent, parsed just enough for the tests' questions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// An ARP reply saying who has this address.
    Arp(Ipv4Addr),
    /// An echo reply (either family) with this identifier.
    Echo(u16),
    /// A TCP segment to this guest port.
    Tcp { dport: u16, control: TcpControl },
    /// ICMP destination unreachable (IPv4) with this code.
    Unreachable(Icmpv4DstUnreachable),
    /// A UDP datagram to this guest port.
    Udp(u16),
    /// Anything else (router advertisements and the like).
    Other,
}

/// Parses one frame of the stack's (already checked by the harness).
pub fn reply(frame: &[u8]) -> Reply {
    let caps = ChecksumCapabilities::default();
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Reply::Other;
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            match ArpPacket::new_checked(eth.payload()).and_then(|p| ArpRepr::parse(&p)) {
                Ok(ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    source_protocol_addr,
                    ..
                }) => Reply::Arp(source_protocol_addr),
                _ => Reply::Other,
            }
        }
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return Reply::Other;
            };
            let Ok(r) = Ipv4Repr::parse(&ip, &caps) else {
                return Reply::Other;
            };
            let (s, d) = (IpAddress::Ipv4(r.src_addr), IpAddress::Ipv4(r.dst_addr));
            match r.next_header {
                IpProtocol::Icmp => match Icmpv4Packet::new_checked(ip.payload())
                    .and_then(|p| Icmpv4Repr::parse(&p, &caps))
                {
                    Ok(Icmpv4Repr::EchoReply { ident, .. }) => Reply::Echo(ident),
                    Ok(Icmpv4Repr::DstUnreachable { reason, .. }) => Reply::Unreachable(reason),
                    _ => Reply::Other,
                },
                IpProtocol::Tcp => match TcpPacket::new_checked(ip.payload()).and_then(|p| {
                    TcpRepr::parse(&p, &s, &d, &caps).map(|t| (t.dst_port, t.control))
                }) {
                    Ok((dport, control)) => Reply::Tcp { dport, control },
                    Err(_) => Reply::Other,
                },
                IpProtocol::Udp => match UdpPacket::new_checked(ip.payload()) {
                    Ok(p) => Reply::Udp(p.dst_port()),
                    Err(_) => Reply::Other,
                },
                _ => Reply::Other,
            }
        }
        EthernetProtocol::Ipv6 => {
            let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
                return Reply::Other;
            };
            let Ok(r) = Ipv6Repr::parse(&ip) else {
                return Reply::Other;
            };
            if r.next_header != IpProtocol::Icmpv6 {
                return Reply::Other;
            }
            match Icmpv6Packet::new_checked(ip.payload())
                .and_then(|p| Icmpv6Repr::parse(&r.src_addr, &r.dst_addr, &p, &caps))
            {
                Ok(Icmpv6Repr::EchoReply { ident, .. }) => Reply::Echo(ident),
                _ => Reply::Other,
            }
        }
        _ => Reply::Other,
    }
}

/// Drains the stack's output and parses it, leaving out router
/// advertisements and other frames the tests do not ask about.
pub fn replies(h: &mut Harness) -> Vec<Reply> {
    h.drain();
    h.take_output()
        .iter()
        .map(|f| reply(f))
        .filter(|r| *r != Reply::Other)
        .collect()
}

/// Asserts that the stack still serves: an ARP request and a ping to the
/// gateway are answered.
pub fn assert_serving(h: &mut Harness, ident: u16) {
    h.frame(&arp_request(EthernetAddress::BROADCAST, GW));
    h.frame(&ping4(GW, ident, 1));
    assert_eq!(
        replies(h),
        vec![Reply::Arp(GW), Reply::Echo(ident)],
        "the stack answers ARP and ping afterwards"
    );
}

/// Opens a guest TCP connection from `sport` to the gateway's `dport`
/// through the (passive) fake host, up to the SYN-ACK the guest would
/// acknowledge; returns the guest's ACK number for the handshake's end.
/// `dport` must be one no other pending connect uses: only this connect
/// is completed.
pub fn connect(h: &mut Harness, sport: u16, dport: u16) -> Option<u32> {
    h.frame(&tcp4(GW, Seg::syn(sport, dport)));
    h.drain();
    h.take_output();
    let to = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, dport));
    let token = h
        .host
        .socks
        .iter()
        .find(|(_, s)| s.connecting && s.connect_to == Some(to))
        .map(|(t, _)| *t)?;
    if let Ok(s) = h.host.sock(token) {
        s.connecting = false;
    }
    h.event(token, false, true, false);
    h.drain();
    h.take_output().iter().find_map(|f| {
        let eth = EthernetFrame::new_checked(&f[..]).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        (tcp.dst_port() == sport && tcp.syn() && tcp.ack()).then(|| (tcp.seq_number() + 1).0 as u32)
    })
}

/// Completes the handshake `connect` began: the guest's ACK.
pub fn complete(h: &mut Harness, sport: u16, dport: u16, ack: u32) {
    let seg = Seg {
        control: TcpControl::None,
        seq: 1001,
        ack: Some(ack),
        ..Seg::syn(sport, dport)
    };
    h.frame(&tcp4(GW, seg));
}
