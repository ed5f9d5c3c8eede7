//! Egress rules (`--restrict`, `--allow`, `--deny`) through the whole
//! stack, against fake host sockets (`usernet_core::testing::Harness`):
//! a refused flow opens no host socket, is answered with a TCP reset or
//! ICMP "administratively prohibited" (IPv4 type 3 code 13, IPv6 type 1
//! code 1) and is counted in `Counters::egress_refused`; allowed flows,
//! the stack's own services and port forwards work as before.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Message, Icmpv4Packet,
    Icmpv4Repr, Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
    UdpRepr,
};
use usernet_core::testing;
use usernet_core::testing::{Behaviour, Harness, SockKind};
use usernet_core::{Config, Token};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const G4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const G6: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0x15);

/// What the stack answered, as far as these tests care.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A TCP reset from `from` acknowledging `ack`.
    Rst {
        from: SocketAddr,
        ack: Option<u32>,
    },
    /// Another TCP segment.
    Tcp {
        from: SocketAddr,
        control: TcpControl,
        seq: u32,
    },
    /// ICMP(v6) destination unreachable with `code`, from `from`, quoting
    /// a packet to `quoted_dst`.
    Unreachable {
        from: IpAddr,
        code: u8,
        quoted_dst: IpAddr,
    },
    /// ICMP(v6) echo reply from `from`.
    EchoReply {
        from: IpAddr,
    },
    /// UDP from `from`.
    Udp {
        from: SocketAddr,
    },
    Other,
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A harness for `cfg` whose guest MAC and addresses are known.
fn harness(cfg: Config) -> Harness {
    let mut h = Harness::new(cfg, Behaviour::default(), Instant::now());
    h.record = true;
    h
}

/// `restrict` and these rules (`+` allows, `-` denies), in order, with a
/// DNS upstream.
fn config(restrict: bool, rules: &[&str]) -> Config {
    Config {
        dns_upstreams: vec![sa("127.0.0.1:5353")],
        ..testing::egress_config(restrict, rules)
    }
}

/// An Ethernet frame from the guest carrying `l4` (already checksummed)
/// from `src` to `dst`.
fn ip_frame(src: IpAddr, dst: IpAddr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    let (ethertype, ip_len) = match dst {
        IpAddr::V4(_) => (EthernetProtocol::Ipv4, 20),
        IpAddr::V6(_) => (EthernetProtocol::Ipv6, 40),
    };
    let mut f = vec![0u8; 14 + ip_len + l4.len()];
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress(Config::default().mac),
        ethertype,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    let ip = &mut f[14..];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ipv4Repr {
            src_addr: s,
            dst_addr: d,
            next_header: proto,
            payload_len: l4.len(),
            hop_limit: 64,
        }
        .emit(
            &mut Ipv4Packet::new_unchecked(&mut ip[..]),
            &ChecksumCapabilities::default(),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ipv6Repr {
            src_addr: s,
            dst_addr: d,
            next_header: proto,
            payload_len: l4.len(),
            hop_limit: 64,
        }
        .emit(&mut Ipv6Packet::new_unchecked(&mut ip[..])),
        _ => panic!("mixed families"),
    }
    ip[ip_len..].copy_from_slice(l4);
    f
}

/// The guest's address of `dst`'s family.
fn guest_of(dst: IpAddr) -> IpAddr {
    match dst {
        IpAddr::V4(_) => G4.into(),
        IpAddr::V6(_) => G6.into(),
    }
}

fn tcp_seg(
    from: SocketAddr,
    dst: SocketAddr,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: from.port(),
        dst_port: dst.port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64000,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let mut l4 = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        &IpAddress::from(from.ip()),
        &IpAddress::from(dst.ip()),
        &ChecksumCapabilities::default(),
    );
    ip_frame(from.ip(), dst.ip(), IpProtocol::Tcp, &l4)
}

/// A SYN from the guest (port 40000, sequence 1000) to `dst`.
fn syn(dst: SocketAddr) -> Vec<u8> {
    let from = SocketAddr::new(guest_of(dst.ip()), 40000);
    tcp_seg(from, dst, TcpControl::Syn, 1000, None)
}

/// A datagram from the guest (port 40001) to `dst`.
fn udp(dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let src = guest_of(dst.ip());
    let repr = UdpRepr {
        src_port: 40001,
        dst_port: dst.port(),
    };
    let mut l4 = vec![0u8; 8 + payload.len()];
    repr.emit(
        &mut UdpPacket::new_unchecked(&mut l4[..]),
        &IpAddress::from(src),
        &IpAddress::from(dst.ip()),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    ip_frame(src, dst.ip(), IpProtocol::Udp, &l4)
}

/// An echo request from the guest to `dst`.
fn ping(dst: IpAddr) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let data = b"ping!";
    match dst {
        IpAddr::V4(d) => {
            let repr = Icmpv4Repr::EchoRequest {
                ident: 7,
                seq_no: 1,
                data,
            };
            let mut l4 = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Icmpv4Packet::new_unchecked(&mut l4[..]), &caps);
            ip_frame(G4.into(), d.into(), IpProtocol::Icmp, &l4)
        }
        IpAddr::V6(d) => {
            let repr = Icmpv6Repr::EchoRequest {
                ident: 7,
                seq_no: 1,
                data,
            };
            let mut l4 = vec![0u8; repr.buffer_len()];
            repr.emit(
                &G6,
                &d,
                &mut Icmpv6Packet::new_unchecked(&mut l4[..]),
                &caps,
            );
            ip_frame(G6.into(), d.into(), IpProtocol::Icmpv6, &l4)
        }
    }
}

/// Parses one frame the stack sent.
fn parse(frame: &[u8]) -> Answer {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Answer::Other;
    };
    let (src, proto, l4): (IpAddr, IpProtocol, &[u8]) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).expect("IPv4");
            (ip.src_addr().into(), ip.next_header(), ip.payload())
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).expect("IPv6");
            (ip.src_addr().into(), ip.next_header(), ip.payload())
        }
        _ => return Answer::Other,
    };
    match proto {
        IpProtocol::Tcp => {
            let t = TcpPacket::new_checked(l4).expect("TCP");
            let from = SocketAddr::new(src, t.src_port());
            if t.rst() {
                let ack = t.ack().then(|| t.ack_number().0 as u32);
                Answer::Rst { from, ack }
            } else {
                let control = if t.syn() {
                    TcpControl::Syn
                } else {
                    TcpControl::None
                };
                Answer::Tcp {
                    from,
                    control,
                    seq: t.seq_number().0 as u32,
                }
            }
        }
        IpProtocol::Udp => {
            let u = UdpPacket::new_checked(l4).expect("UDP");
            Answer::Udp {
                from: SocketAddr::new(src, u.src_port()),
            }
        }
        IpProtocol::Icmp => {
            let p = Icmpv4Packet::new_checked(l4).expect("ICMP");
            match p.msg_type() {
                Icmpv4Message::DstUnreachable => {
                    let q = p.data();
                    let quoted: [u8; 4] = q[16..20].try_into().expect("quoted IPv4 header");
                    Answer::Unreachable {
                        from: src,
                        code: p.msg_code(),
                        quoted_dst: Ipv4Addr::from(quoted).into(),
                    }
                }
                Icmpv4Message::EchoReply => Answer::EchoReply { from: src },
                _ => Answer::Other,
            }
        }
        IpProtocol::Icmpv6 => {
            let p = Icmpv6Packet::new_checked(l4).expect("ICMPv6");
            match p.msg_type() {
                Icmpv6Message::DstUnreachable => {
                    let q = p.payload();
                    let quoted: [u8; 16] = q[24..40].try_into().expect("quoted IPv6 header");
                    Answer::Unreachable {
                        from: src,
                        code: p.msg_code(),
                        quoted_dst: Ipv6Addr::from(quoted).into(),
                    }
                }
                Icmpv6Message::EchoReply => Answer::EchoReply { from: src },
                _ => Answer::Other,
            }
        }
        _ => Answer::Other,
    }
}

/// Feeds `frame` and returns what the stack answered (router
/// advertisements and other chatter left out).
fn exchange(h: &mut Harness, frame: &[u8]) -> Vec<Answer> {
    h.frame(frame);
    h.drain();
    h.take_output()
        .iter()
        .map(|f| parse(f))
        .filter(|r| *r != Answer::Other)
        .collect()
}

/// Host sockets the stack opened, listeners left out.
fn flow_sockets(h: &Harness) -> Vec<(SockKind, Option<SocketAddr>, Vec<SocketAddr>)> {
    h.host
        .socks
        .values()
        .filter(|s| !matches!(s.kind, SockKind::Listener(_)))
        .map(|s| {
            let to = s.sent_to.iter().map(|(_, to)| *to).collect();
            (s.kind, s.connect_to, to)
        })
        .collect()
}

const V4_PROHIBITED: u8 = 13;
const V6_PROHIBITED: u8 = 1;

#[test]
fn restrict_refuses_every_protocol_and_family_and_counts() {
    let mut h = harness(config(true, &[]));
    let gw4: IpAddr = Ipv4Addr::new(10, 0, 2, 2).into();
    let gw6: IpAddr = "fec0::2".parse().expect("v6");
    for (frame, want) in [
        (
            syn(sa("10.0.2.2:80")),
            Answer::Rst {
                from: sa("10.0.2.2:80"),
                ack: Some(1001),
            },
        ),
        (
            syn(sa("[fec0::2]:80")),
            Answer::Rst {
                from: sa("[fec0::2]:80"),
                ack: Some(1001),
            },
        ),
        (
            udp(sa("10.0.2.2:7"), b"x"),
            Answer::Unreachable {
                from: gw4,
                code: V4_PROHIBITED,
                quoted_dst: gw4,
            },
        ),
        (
            udp(sa("[fec0::2]:7"), b"x"),
            Answer::Unreachable {
                from: gw6,
                code: V6_PROHIBITED,
                quoted_dst: gw6,
            },
        ),
        (
            ping("192.0.2.1".parse().expect("v4")),
            Answer::Unreachable {
                from: gw4,
                code: V4_PROHIBITED,
                quoted_dst: "192.0.2.1".parse().expect("v4"),
            },
        ),
        (
            ping("2001:db8::1".parse().expect("v6")),
            Answer::Unreachable {
                from: gw6,
                code: V6_PROHIBITED,
                quoted_dst: "2001:db8::1".parse().expect("v6"),
            },
        ),
    ] {
        assert_eq!(exchange(&mut h, &frame), [want]);
    }
    assert_eq!(h.stack.counters().egress_refused, 6);
    assert_eq!(h.stack.counters().policy_refused, 0);
    assert_eq!(flow_sockets(&h), [], "no host socket for refused flows");
}

#[test]
fn restrict_keeps_the_stacks_own_services() {
    let mut h = harness(config(true, &[]));
    for dst in ["10.0.2.2", "10.0.2.3", "fec0::2", "fec0::3"] {
        let dst: IpAddr = dst.parse().expect("ip");
        assert_eq!(
            exchange(&mut h, &ping(dst)),
            [Answer::EchoReply { from: dst }],
            "ping {dst}"
        );
    }
    // Forwarding a query upstream is egress: under --restrict a name the
    // forwarder does not know itself is REFUSED, and nothing reaches the
    // upstream...
    let query = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1,
    ];
    for dns in ["10.0.2.3:53", "[fec0::3]:53"] {
        let (answers, payload) = dns_exchange(&mut h, sa(dns), &query);
        assert_eq!(answers, [Answer::Udp { from: sa(dns) }], "{dns}");
        assert_eq!(payload[3] & 0xf, 5, "RCODE REFUSED from {dns}");
    }
    assert_eq!(flow_sockets(&h), []);
    assert_eq!(h.stack.counters().egress_refused, 2);
    // ... while configured names (host.internal by default) are answered.
    let mut local = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    local.extend(b"\x04host\x08internal\x00\x00\x01\x00\x01");
    let (answers, payload) = dns_exchange(&mut h, sa("10.0.2.3:53"), &local);
    assert_eq!(
        answers,
        [Answer::Udp {
            from: sa("10.0.2.3:53")
        }]
    );
    assert_eq!(payload[3] & 0xf, 0, "NOERROR");
    assert!(payload.ends_with(&[10, 0, 2, 2]), "the gateway's address");
    assert_eq!(h.stack.counters().egress_refused, 2);

    // An --allow for the DNS address lets queries go upstream.
    let mut h = harness(config(true, &["+10.0.2.3:53", "+[fec0::3]:53"]));
    assert_eq!(exchange(&mut h, &udp(sa("10.0.2.3:53"), &query)), []);
    assert_eq!(exchange(&mut h, &udp(sa("[fec0::3]:53"), &query)), []);
    let sockets = flow_sockets(&h);
    assert_eq!(
        sockets,
        [
            (SockKind::Udp, None, vec![sa("127.0.0.1:5353")]),
            (SockKind::Udp, None, vec![sa("127.0.0.1:5353")]),
        ]
    );
    assert_eq!(h.stack.counters().egress_refused, 0);
    // TCP to the forwarder follows the same rule.
    let mut h = harness(config(true, &[]));
    let refused = exchange(&mut h, &syn(sa("10.0.2.3:53")));
    assert!(matches!(refused[..], [Answer::Rst { .. }]), "{refused:?}");
}

/// Sends a DNS query over UDP to `dst`; the answers, and the last reply's
/// DNS message (the frame's last bytes after the UDP header).
fn dns_exchange(h: &mut Harness, dst: SocketAddr, query: &[u8]) -> (Vec<Answer>, Vec<u8>) {
    h.frame(&udp(dst, query));
    h.drain();
    let out = h.take_output();
    let answers = out
        .iter()
        .map(|f| parse(f))
        .filter(|r| *r != Answer::Other)
        .collect();
    let payload = out
        .last()
        .map(|f| {
            let udp_len_at = if dst.is_ipv4() {
                14 + 20 + 4
            } else {
                14 + 40 + 4
            };
            let len = usize::from(u16::from_be_bytes([f[udp_len_at], f[udp_len_at + 1]]));
            f[udp_len_at + 4..udp_len_at - 4 + len].to_vec()
        })
        .unwrap_or_default();
    (answers, payload)
}

#[test]
fn allow_punches_holes_by_the_address_the_guest_sees() {
    let mut h = harness(config(
        true,
        &["+10.0.2.2:8080", "+[fec0::2]:8080", "+127.0.0.1"],
    ));
    assert_eq!(exchange(&mut h, &syn(sa("10.0.2.2:8080"))), []);
    assert_eq!(exchange(&mut h, &syn(sa("[fec0::2]:8080"))), []);
    assert_eq!(exchange(&mut h, &udp(sa("10.0.2.2:8080"), b"hi")), []);
    assert_eq!(
        flow_sockets(&h),
        [
            (SockKind::Tcp, Some(sa("127.0.0.1:8080")), vec![]),
            (SockKind::Tcp, Some(sa("[::1]:8080")), vec![]),
            (SockKind::Udp, None, vec![sa("127.0.0.1:8080")]),
        ]
    );
    // Another port, and the host-side address (which the guest cannot
    // address: a rule for 127.0.0.1 does not open the gateway).
    let refused = exchange(&mut h, &syn(sa("10.0.2.2:8081")));
    assert!(matches!(refused[..], [Answer::Rst { .. }]), "{refused:?}");
    let refused = exchange(&mut h, &udp(sa("10.0.2.2:9"), b"x"));
    assert!(
        matches!(
            refused[..],
            [Answer::Unreachable {
                code: V4_PROHIBITED,
                ..
            }]
        ),
        "{refused:?}"
    );
    assert_eq!(h.stack.counters().egress_refused, 2);
}

#[test]
fn deny_without_restrict_blocks_only_what_it_names() {
    let mut h = harness(config(false, &["-10.0.2.2:22", "-2001:db8::/32"]));
    let refused = exchange(&mut h, &syn(sa("10.0.2.2:22")));
    assert!(matches!(refused[..], [Answer::Rst { .. }]), "{refused:?}");
    let refused = exchange(&mut h, &ping("2001:db8::9".parse().expect("v6")));
    assert!(
        matches!(
            refused[..],
            [Answer::Unreachable {
                code: V6_PROHIBITED,
                ..
            }]
        ),
        "{refused:?}"
    );
    assert_eq!(exchange(&mut h, &syn(sa("10.0.2.2:23"))), []);
    assert_eq!(
        flow_sockets(&h),
        [(SockKind::Tcp, Some(sa("127.0.0.1:23")), vec![])]
    );
    assert_eq!(h.stack.counters().egress_refused, 2);
}

#[test]
fn port_forwards_work_under_restrict() {
    let mut h = harness(Config {
        hostfwd: vec!["tcp:127.0.0.1:2222-:22".parse().expect("fwd")],
        ..config(true, &[])
    });
    let (ltok, _, _) = h.host.listening[0];
    let client = sa("127.0.0.1:5555");
    h.host.pending_accept.push_back(client);
    h.event(ltok, true, false, false);
    h.drain();
    let out: Vec<Answer> = h.take_output().iter().map(|f| parse(f)).collect();
    // The guest sees the client as the gateway.
    let gw_client = sa("10.0.2.2:5555");
    let iss = out
        .iter()
        .find_map(|r| match r {
            Answer::Tcp {
                from,
                control: TcpControl::Syn,
                seq,
            } if *from == gw_client => Some(*seq),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no SYN from {gw_client} to the guest: {out:?}"));
    let accepted: Token = h.host.only(|s| s.kind == SockKind::Tcp);
    // The guest's SYN-ACK back to the "gateway" is part of the forwarded
    // connection, not a new egress flow.
    let synack = tcp_seg(
        SocketAddr::new(G4.into(), 22),
        gw_client,
        TcpControl::Syn,
        9000,
        Some(iss.wrapping_add(1)),
    );
    let out = exchange(&mut h, &synack);
    assert!(
        !out.iter().any(|r| matches!(r, Answer::Rst { .. })),
        "{out:?}"
    );
    assert_eq!(h.stack.counters().egress_refused, 0);
    assert!(!h.host.closed.contains(&accepted));
}
