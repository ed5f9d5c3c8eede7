//! Malformed guest frames, as a table: each is built from a good frame
//! (`smoltcp::wire`) with one thing broken, fed to a fresh stack, and must
//! be dropped with exactly the right counter raised, no flow or host socket
//! opened, nothing (or only the reset RFC 9293 asks for) sent back, and the
//! stack must answer ARP and ping to the gateway right after.
mod common;

use common::{
    GUEST_IP, GUEST_IP6, GW, GW6, Reply, Seg, arp_request, assert_serving, complete, connect, eth,
    harness, ipv4, ipv6, ping4, ping6, replies, stack_mac, tcp4, udp4,
};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpControl, TcpPacket, UdpPacket,
};
use usernet_core::{Config, Counters};

/// Which counter a case must raise (by one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counter {
    Malformed,
    Ignored,
    Fragments,
    TcpNoFlow,
}

impl Counter {
    fn of(self, c: &Counters) -> u64 {
        match self {
            Counter::Malformed => c.malformed,
            Counter::Ignored => c.ignored,
            Counter::Fragments => c.fragments,
            Counter::TcpNoFlow => c.tcp_no_flow,
        }
    }
}

const ALL: [Counter; 4] = [
    Counter::Malformed,
    Counter::Ignored,
    Counter::Fragments,
    Counter::TcpNoFlow,
];

/// Offsets into a frame built by `common`: IPv4 header, its payload.
const IP: usize = 14;
const L4: usize = 14 + 20;
const L4_6: usize = 14 + 40;

/// `f` with its bytes from `at` on cut off.
fn cut(mut f: Vec<u8>, at: usize) -> Vec<u8> {
    f.truncate(at);
    f
}

/// `f` with `edit` applied to its IPv4 header, whose checksum is then
/// fixed so only the edit is wrong.
fn ip_edit(mut f: Vec<u8>, edit: impl FnOnce(&mut Ipv4Packet<&mut [u8]>)) -> Vec<u8> {
    let mut ip = Ipv4Packet::new_unchecked(&mut f[IP..]);
    edit(&mut ip);
    ip.fill_checksum();
    f
}

/// `f` with its TCP header edited and the checksum fixed.
fn tcp_edit(mut f: Vec<u8>, edit: impl FnOnce(&mut TcpPacket<&mut [u8]>)) -> Vec<u8> {
    let mut tcp = TcpPacket::new_unchecked(&mut f[L4..]);
    edit(&mut tcp);
    tcp.fill_checksum(&GUEST_IP.into(), &GW.into());
    f
}

/// `f` with one byte flipped.
fn flip(mut f: Vec<u8>, at: usize) -> Vec<u8> {
    f[at] ^= 0x5a;
    f
}

fn syn() -> Vec<u8> {
    tcp4(GW, Seg::syn(40000, 80))
}

fn udp() -> Vec<u8> {
    udp4(40000, GW, 9, b"datagram")
}

/// A DHCP "request" of `len` bytes of BOOTREQUEST header, then `rest`.
fn dhcp(len: usize, cookie: [u8; 4]) -> Vec<u8> {
    let mut msg = vec![0u8; 240];
    msg[..3].copy_from_slice(&[1, 1, 6]);
    msg[236..240].copy_from_slice(&cookie);
    msg.extend_from_slice(&[53, 1, 1, 255]);
    msg.truncate(len);
    udp4(68, std::net::Ipv4Addr::BROADCAST, 67, &msg)
}

/// A guest frame with one thing wrong, the counter it must raise, and the
/// reply it may get (`None`: silence).
struct Case {
    name: &'static str,
    frame: Vec<u8>,
    counter: Counter,
    reply: Option<Reply>,
}

fn case(name: &'static str, frame: Vec<u8>, counter: Counter) -> Case {
    Case {
        name,
        frame,
        counter,
        reply: None,
    }
}

fn cases() -> Vec<Case> {
    use Counter::*;
    let other_mac = EthernetAddress([0x52, 0x54, 0, 9, 9, 9]);
    let rst = |dport| {
        Some(Reply::Tcp {
            dport,
            control: TcpControl::Rst,
        })
    };
    vec![
        // Ethernet.
        case("empty frame", Vec::new(), Malformed),
        case("ethernet header cut", cut(syn(), 10), Malformed),
        case(
            "broadcast source MAC",
            {
                let mut f = syn();
                EthernetFrame::new_unchecked(&mut f[..]).set_src_addr(EthernetAddress::BROADCAST);
                f
            },
            Malformed,
        ),
        case(
            "unicast to another MAC",
            arp_request(other_mac, GW),
            Ignored,
        ),
        case(
            "unknown ethertype",
            eth(stack_mac(), EthernetProtocol::Unknown(0x88b5), 46, |_| {}),
            Ignored,
        ),
        // ARP.
        case(
            "ARP cut",
            cut(arp_request(EthernetAddress::BROADCAST, GW), 14 + 10),
            Malformed,
        ),
        // IPv4.
        case("IPv4 header cut", cut(syn(), IP + 12), Malformed),
        case("IPv4 header checksum", flip(syn(), IP + 10), Malformed),
        case(
            "IPv4 total length beyond the frame",
            ip_edit(syn(), |ip| ip.set_total_len(1400)),
            Malformed,
        ),
        case(
            "IPv4 total length below its header",
            ip_edit(syn(), |ip| ip.set_total_len(12)),
            Malformed,
        ),
        case(
            "IPv4 header length below 20",
            ip_edit(syn(), |ip| ip.set_header_len(16)),
            Malformed,
        ),
        case(
            "IPv4 version 5",
            ip_edit(syn(), |ip| ip.set_version(5)),
            Malformed,
        ),
        case(
            "IPv4 first fragment",
            ip_edit(udp(), |ip| ip.set_more_frags(true)),
            Fragments,
        ),
        case(
            "IPv4 later fragment",
            ip_edit(udp(), |ip| ip.set_frag_offset(1480)),
            Fragments,
        ),
        case(
            "IPv4 unknown protocol",
            ipv4(GUEST_IP, GW, IpProtocol::Unknown(253), 8, |_| {}),
            Ignored,
        ),
        // IPv6.
        case("IPv6 header cut", cut(ping6(GW6, 1, 1), 14 + 30), Malformed),
        case(
            "IPv6 payload length beyond the frame",
            {
                let mut f = ping6(GW6, 1, 1);
                Ipv6Packet::new_unchecked(&mut f[IP..]).set_payload_len(1400);
                f
            },
            Malformed,
        ),
        case(
            "ICMPv6 checksum",
            flip(ping6(GW6, 1, 1), L4_6 + 2),
            Malformed,
        ),
        case(
            "IPv6 fragment",
            // smoltcp does not export the fragment header's emitter: next
            // header, reserved, offset 0 with "more", identification 7.
            ipv6(GUEST_IP6, GW6, IpProtocol::Ipv6Frag, 8 + 8, |b| {
                b[..8].copy_from_slice(&[u8::from(IpProtocol::Udp), 0, 0, 1, 0, 0, 0, 7]);
            }),
            Fragments,
        ),
        // TCP.
        case(
            "TCP header cut",
            ip_edit(cut(syn(), L4 + 10), |ip| ip.set_total_len(30)),
            Malformed,
        ),
        case("TCP checksum", flip(syn(), L4 + 16), Malformed),
        case(
            "TCP data offset below 20",
            tcp_edit(syn(), |t| t.set_header_len(16)),
            Malformed,
        ),
        case(
            "TCP data offset beyond the segment",
            tcp_edit(syn(), |t| t.set_header_len(60)),
            Malformed,
        ),
        case(
            "TCP SYN+FIN",
            tcp_edit(syn(), |t| t.set_fin(true)),
            Malformed,
        ),
        case(
            "TCP SYN+RST",
            tcp_edit(syn(), |t| t.set_rst(true)),
            Malformed,
        ),
        Case {
            reply: rst(40000),
            ..case(
                "TCP no flags, no flow",
                tcp_edit(syn(), |t| t.set_syn(false)),
                TcpNoFlow,
            )
        },
        Case {
            reply: rst(40000),
            ..case(
                "TCP FIN without ACK, no flow",
                tcp_edit(syn(), |t| {
                    t.set_syn(false);
                    t.set_fin(true);
                }),
                TcpNoFlow,
            )
        },
        Case {
            reply: rst(40000),
            ..case(
                "TCP SYN+ACK, no flow",
                tcp_edit(syn(), |t| t.set_ack(true)),
                TcpNoFlow,
            )
        },
        // UDP.
        case(
            "UDP header cut",
            ip_edit(cut(udp(), L4 + 4), |ip| ip.set_total_len(24)),
            Malformed,
        ),
        case(
            "UDP length beyond the packet",
            {
                let mut f = udp();
                UdpPacket::new_unchecked(&mut f[L4..]).set_len(200);
                f
            },
            Malformed,
        ),
        case(
            "UDP length below its header",
            {
                let mut f = udp();
                UdpPacket::new_unchecked(&mut f[L4..]).set_len(4);
                f
            },
            Malformed,
        ),
        case("UDP checksum", flip(udp(), L4 + 6), Malformed),
        case("UDP source port 0", udp4(0, GW, 9, b"x"), Malformed),
        case(
            "UDP destination port 0",
            udp4(40000, GW, 0, b"x"),
            Malformed,
        ),
        // ICMP.
        case(
            "ICMP header cut",
            ip_edit(cut(ping4(GW, 1, 1), L4 + 3), |ip| ip.set_total_len(23)),
            Malformed,
        ),
        case("ICMP checksum", flip(ping4(GW, 1, 1), L4 + 2), Malformed),
        // DHCP.
        case("DHCP cut", dhcp(100, [99, 130, 83, 99]), Malformed),
        case("DHCP bad cookie", dhcp(244, [1, 2, 3, 4]), Malformed),
        case(
            "DHCP options unterminated",
            dhcp(243, [99, 130, 83, 99]),
            Malformed,
        ),
    ]
}

#[test]
fn malformed_frames_are_dropped_counted_and_survived() {
    for (i, c) in cases().into_iter().enumerate() {
        let mut h = harness(Config::default());
        h.frame(&c.frame);
        let got = replies(&mut h);
        let counters = h.stack.counters();
        for counter in ALL {
            let want = u64::from(counter == c.counter);
            assert_eq!(
                counter.of(&counters),
                want,
                "{}: {counter:?} (counters {counters:?})",
                c.name
            );
        }
        assert_eq!(
            got,
            c.reply.iter().cloned().collect::<Vec<_>>(),
            "{}",
            c.name
        );
        assert_eq!(h.stack.flow_count(), 0, "{}: no flow", c.name);
        assert!(h.host.socks.is_empty(), "{}: no host socket", c.name);
        assert_serving(&mut h, i as u16);
    }
}

#[test]
fn ip_options_are_skipped_not_refused() {
    // A ping with IPv4 options (here two NOPs and an end of list): the
    // options mean nothing to a stack that terminates the packet, so it is
    // answered as without them.
    let good = ping4(GW, 9, 1);
    let mut f = good[..L4].to_vec();
    f.extend_from_slice(&[1, 1, 0, 0]);
    f.extend_from_slice(&good[L4..]);
    let f = ip_edit(f, |ip| {
        ip.set_header_len(24);
        ip.set_total_len((good.len() - IP + 4) as u16);
    });
    let mut h = harness(Config::default());
    h.frame(&f);
    assert_eq!(replies(&mut h), vec![Reply::Echo(9)]);
    assert_eq!(h.stack.counters().malformed, 0);
}

#[test]
fn padding_after_the_ip_packet_is_ignored() {
    // Ethernet pads short frames: bytes past the IP total length are not
    // part of the packet.
    let mut f = ping4(GW, 10, 1);
    f.extend_from_slice(&[0xee; 18]);
    let mut h = harness(Config::default());
    h.frame(&f);
    assert_eq!(replies(&mut h), vec![Reply::Echo(10)]);
}

#[test]
fn segments_without_ack_do_not_touch_a_connection() {
    let mut h = harness(Config::default());
    let ack = connect(&mut h, 40000, 80).expect("SYN-ACK");
    complete(&mut h, 40000, 80, ack);
    assert!(replies(&mut h).is_empty());
    for control in [TcpControl::Fin, TcpControl::None, TcpControl::Psh] {
        let seg = Seg {
            control,
            seq: 1001,
            ..Seg::syn(40000, 80)
        };
        h.frame(&tcp4(GW, seg));
    }
    assert!(replies(&mut h).is_empty(), "dropped silently");
    assert_eq!(h.stack.counters().malformed, 3);
    let sock = h.host.only(|s| s.connect_to.is_some());
    assert!(
        !h.host.socks[&sock].shut_wr,
        "a FIN without ACK does not half-close the host socket"
    );
    assert_eq!(h.stack.flow_count(), 1);
    assert_serving(&mut h, 1);
}

#[test]
fn a_zero_window_holds_host_data_back() {
    let mut h = harness(Config::default());
    let ack = connect(&mut h, 40000, 80).expect("SYN-ACK");
    complete(&mut h, 40000, 80, ack);
    // The guest closes its window; the host has data.
    let zero = Seg {
        control: TcpControl::None,
        seq: 1001,
        ack: Some(ack),
        window: 0,
        ..Seg::syn(40000, 80)
    };
    h.frame(&tcp4(GW, zero));
    let sock = h.host.only(|s| s.connect_to.is_some());
    h.host.sock(sock).expect("socket").push_rx(b"waiting");
    h.event(sock, true, false, false);
    assert!(replies(&mut h).is_empty(), "no data into a zero window");
    // The window opens: the data flows.
    h.frame(&tcp4(
        GW,
        Seg {
            window: 1000,
            ..zero
        },
    ));
    let got = replies(&mut h);
    assert_eq!(
        got,
        vec![Reply::Tcp {
            dport: 40000,
            control: TcpControl::Psh
        }],
        "data once the window opens"
    );
    assert_serving(&mut h, 2);
}
