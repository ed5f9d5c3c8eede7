//! The whole stack in process: a scripted guest against fake host sockets
//! (`usernet_core::testing::FakeHost`), with a virtual clock. Each test
//! plays frames in and checks the frames and socket calls that come out.
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    UdpPacket, UdpRepr,
};
use usernet_core::testing::FakeHost;
use usernet_core::{Config, HostEvent, Stack, Token};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// A stack, its fake host and a virtual clock.
struct Rig {
    stack: Stack,
    host: FakeHost,
    now: Instant,
}

/// A parsed frame the stack sent to the guest.
#[derive(Debug)]
enum Out {
    Tcp(Ipv4Addr, Ipv4Addr, TcpOwned),
    Udp(SocketAddr, SocketAddr, Vec<u8>),
    Icmp(Ipv4Addr, Ipv4Addr, Vec<u8>),
    Other,
}

#[derive(Debug)]
#[allow(dead_code)] // fields are read through Debug on failures
struct TcpOwned {
    src_port: u16,
    dst_port: u16,
    control: TcpControl,
    seq: TcpSeqNumber,
    ack: Option<TcpSeqNumber>,
    window: u16,
    wscale: Option<u8>,
    mss: Option<u16>,
    payload: Vec<u8>,
}

impl Rig {
    fn new(cfg: Config) -> Rig {
        let now = Instant::now();
        let mut rig = Rig {
            stack: Stack::new(cfg, now),
            host: FakeHost::default(),
            now,
        };
        rig.stack.start(&mut rig.host).expect("start");
        rig
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.stack.handle_timeout(self.now, &mut self.host);
    }

    fn frame(&mut self, frame: &[u8]) {
        self.stack.handle_frame(self.now, frame, &mut self.host);
    }

    fn event(&mut self, token: Token, readable: bool, writable: bool, error: bool) {
        let ev = HostEvent {
            token,
            readable,
            writable,
            error,
        };
        self.stack.handle_host(self.now, ev, &mut self.host);
    }

    fn drain(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; self.stack.config().max_frame()];
        while let Some(n) = self.stack.poll_frame(self.now, &mut buf, &mut self.host) {
            out.push(parse_out(&buf[..n]));
            assert!(out.len() < 10_000, "runaway output");
        }
        out
    }

    fn tcp_in(
        &mut self,
        dst: SocketAddr,
        sport: u16,
        control: TcpControl,
        seq: u32,
        ack: Option<u32>,
        payload: &[u8],
    ) {
        let repr = TcpRepr {
            src_port: sport,
            dst_port: dst.port(),
            control,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
            window_len: 64000,
            window_scale: (control == TcpControl::Syn).then_some(7),
            max_seg_size: (control == TcpControl::Syn).then_some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let std::net::IpAddr::V4(dip) = dst.ip() else {
            panic!("v4 only")
        };
        let f = ip_frame(GUEST_IP, dip, IpProtocol::Tcp, repr.buffer_len(), |b| {
            repr.emit(
                &mut TcpPacket::new_unchecked(b),
                &IpAddress::Ipv4(GUEST_IP),
                &IpAddress::Ipv4(dip),
                &ChecksumCapabilities::default(),
            )
        });
        self.frame(&f);
    }
}

fn ip_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    len: usize,
    body: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + len];
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress(Config::default().mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: len,
        hop_limit: 64,
    }
    .emit(
        &mut Ipv4Packet::new_unchecked(&mut f[14..34]),
        &ChecksumCapabilities::default(),
    );
    body(&mut f[34..]);
    f
}

fn udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("v4")
    };
    let repr = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    ip_frame(s, d, IpProtocol::Udp, 8 + payload.len(), |b| {
        repr.emit(
            &mut UdpPacket::new_unchecked(b),
            &IpAddress::Ipv4(s),
            &IpAddress::Ipv4(d),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        )
    })
}

fn parse_out(f: &[u8]) -> Out {
    let caps = ChecksumCapabilities::default();
    let eth = EthernetFrame::new_checked(f).expect("ethernet");
    assert_eq!(eth.src_addr(), EthernetAddress(Config::default().mac));
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Out::Other;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).expect("ipv4");
    let ipr = Ipv4Repr::parse(&ip, &caps).expect("valid ipv4 with checksum");
    let (s, d) = (IpAddress::Ipv4(ipr.src_addr), IpAddress::Ipv4(ipr.dst_addr));
    match ipr.next_header {
        IpProtocol::Tcp => {
            let p = TcpPacket::new_checked(ip.payload()).expect("tcp");
            let r = TcpRepr::parse(&p, &s, &d, &caps).expect("valid tcp with checksum");
            Out::Tcp(
                ipr.src_addr,
                ipr.dst_addr,
                TcpOwned {
                    src_port: r.src_port,
                    dst_port: r.dst_port,
                    control: r.control,
                    seq: r.seq_number,
                    ack: r.ack_number,
                    window: r.window_len,
                    wscale: r.window_scale,
                    mss: r.max_seg_size,
                    payload: r.payload.to_vec(),
                },
            )
        }
        IpProtocol::Udp => {
            let p = UdpPacket::new_checked(ip.payload()).expect("udp");
            UdpRepr::parse(&p, &s, &d, &caps).expect("valid udp with checksum");
            Out::Udp(
                SocketAddr::new(ipr.src_addr.into(), p.src_port()),
                SocketAddr::new(ipr.dst_addr.into(), p.dst_port()),
                p.payload().to_vec(),
            )
        }
        IpProtocol::Icmp => {
            let p = Icmpv4Packet::new_checked(ip.payload()).expect("icmp");
            assert!(p.verify_checksum());
            Out::Icmp(ipr.src_addr, ipr.dst_addr, ip.payload().to_vec())
        }
        _ => Out::Other,
    }
}

fn only_tcp(out: Vec<Out>) -> TcpOwned {
    let mut segs: Vec<_> = out
        .into_iter()
        .map(|o| match o {
            Out::Tcp(_, _, t) => t,
            other => panic!("expected TCP, got {other:?}"),
        })
        .collect();
    assert_eq!(segs.len(), 1, "expected one segment: {segs:?}");
    segs.remove(0)
}

fn gw(port: u16) -> SocketAddr {
    SocketAddr::new(GW.into(), port)
}

/// Opens a guest connection to the gateway's `port` and returns the host
/// socket's token and our initial sequence number + 1.
fn established(rig: &mut Rig, port: u16) -> (Token, u32) {
    rig.tcp_in(gw(port), 40000, TcpControl::Syn, 1000, None, &[]);
    assert!(
        rig.drain().is_empty(),
        "no SYN-ACK before the host connect completes"
    );
    let tok = rig.host.only(|s| s.connect_to.is_some());
    assert_eq!(
        rig.host.socks[&tok].connect_to,
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    );
    rig.event(tok, false, true, false);
    let synack = only_tcp(rig.drain());
    assert_eq!(synack.control, TcpControl::Syn);
    assert_eq!(synack.ack, Some(TcpSeqNumber(1001)));
    assert_eq!(synack.mss, Some(1460));
    assert_eq!(synack.wscale, Some(7));
    let iss1 = synack.seq.0.wrapping_add(1) as u32;
    rig.tcp_in(gw(port), 40000, TcpControl::None, 1001, Some(iss1), &[]);
    assert!(rig.drain().is_empty());
    (tok, iss1)
}

#[test]
fn tcp_data_both_ways_and_close() {
    let mut rig = Rig::new(Config::default());
    let (tok, iss1) = established(&mut rig, 8080);

    // Guest -> host: written at once, acknowledged once taken.
    rig.tcp_in(gw(8080), 40000, TcpControl::Psh, 1001, Some(iss1), b"hello");
    assert_eq!(rig.host.socks[&tok].sent, b"hello");
    let ack = only_tcp(rig.drain());
    assert_eq!(ack.ack, Some(TcpSeqNumber(1006)));

    // Host -> guest: peeked, kept until acknowledged.
    rig.host
        .socks
        .get_mut(&tok)
        .expect("sock")
        .rx
        .extend_from_slice(b"world!");
    rig.event(tok, true, false, false);
    let data = only_tcp(rig.drain());
    assert_eq!(data.payload, b"world!");
    assert_eq!(data.seq, TcpSeqNumber(iss1 as i32));
    assert_eq!(
        rig.host.socks[&tok].rx, b"world!",
        "not discarded before the ACK"
    );
    rig.tcp_in(gw(8080), 40000, TcpControl::None, 1006, Some(iss1 + 6), &[]);
    assert!(
        rig.host.socks[&tok].rx.is_empty(),
        "discarded once acknowledged"
    );

    // Guest FIN -> shutdown(SHUT_WR); host EOF -> FIN to the guest.
    rig.tcp_in(gw(8080), 40000, TcpControl::Fin, 1006, Some(iss1 + 6), &[]);
    assert!(rig.host.socks[&tok].shut_wr);
    rig.host.socks.get_mut(&tok).expect("sock").eof = true;
    rig.event(tok, true, false, false);
    let fin = only_tcp(rig.drain());
    assert_eq!(fin.control, TcpControl::Fin);
    assert_eq!(fin.ack, Some(TcpSeqNumber(1007)));
    rig.tcp_in(gw(8080), 40000, TcpControl::None, 1007, Some(iss1 + 7), &[]);
    assert!(
        rig.host.closed.contains(&tok),
        "host socket closed once both sides are done"
    );
    rig.advance(Duration::from_secs(10));
    assert_eq!(rig.stack.flow_count(), 0, "linger ends");
}

/// A host socket that takes only part of a segment inside the window we
/// advertised (the kernel's free-space figure is an estimate): the rest is
/// kept and acknowledged, the window shuts, and it is written first once
/// the socket drains. Dropping it made the guest resend a whole window at
/// MTU 65520 (the namespace ran at a tenth of its MTU 1500 speed).
#[test]
fn tcp_back_pressure_keeps_in_window_data_and_shuts_the_window() {
    let mut rig = Rig::new(Config::default());
    let (tok, iss1) = established(&mut rig, 8080);
    rig.host.socks.get_mut(&tok).expect("sock").send_room = 3;
    rig.tcp_in(
        gw(8080),
        40000,
        TcpControl::Psh,
        1001,
        Some(iss1),
        b"abcdef",
    );
    assert_eq!(rig.host.socks[&tok].sent, b"abc");
    let ack = only_tcp(rig.drain());
    assert_eq!((ack.ack, ack.window), (Some(TcpSeqNumber(1007)), 0));
    // A segment already in flight inside the old window is kept too.
    rig.tcp_in(gw(8080), 40000, TcpControl::Psh, 1007, Some(iss1), b"gh");
    let ack = only_tcp(rig.drain());
    assert_eq!((ack.ack, ack.window), (Some(TcpSeqNumber(1009)), 0));
    // A zero-window probe is answered with the (still shut) window.
    rig.tcp_in(gw(8080), 40000, TcpControl::None, 1008, Some(iss1), &[]);
    let ack = only_tcp(rig.drain());
    assert_eq!((ack.ack, ack.window), (Some(TcpSeqNumber(1009)), 0));
    // A FIN waits for the kept data.
    rig.tcp_in(gw(8080), 40000, TcpControl::Fin, 1009, Some(iss1), &[]);
    assert!(!rig.host.socks[&tok].shut_wr, "shutdown before the data");
    only_tcp(rig.drain());
    rig.host.socks.get_mut(&tok).expect("sock").send_room = 1000;
    rig.event(tok, false, true, false);
    assert_eq!(rig.host.socks[&tok].sent, b"abcdefgh");
    assert!(rig.host.socks[&tok].shut_wr, "shutdown after the data");
    let update = only_tcp(rig.drain());
    assert_eq!(update.ack, Some(TcpSeqNumber(1010)));
    assert!(update.window > 0, "window reopened: {update:?}");
    assert_eq!(rig.stack.counters().tcp_dropped, 0);
}

/// A host socket with less free space than one segment still gets a
/// window of a full segment (a smaller one would stall the guest until its
/// persist timer); what the socket then refuses waits in `pending`, and
/// the refusal shuts the window until the socket drains.
#[test]
fn tcp_small_free_space_still_offers_a_full_segment() {
    let mut rig = Rig::new(Config::default());
    let (tok, iss1) = established(&mut rig, 8080);
    rig.host.socks.get_mut(&tok).expect("sock").send_room = 300;
    rig.tcp_in(
        gw(8080),
        40000,
        TcpControl::Psh,
        1001,
        Some(iss1),
        &[b'a'; 100],
    );
    let ack = only_tcp(rig.drain());
    assert_eq!(ack.ack, Some(TcpSeqNumber(1101)));
    // 200 bytes free, but the window covers a whole default-MSS segment.
    let offered = usize::from(ack.window) << 7;
    assert!(offered >= 536, "window {offered} below one segment");
    // The guest fills it; the socket takes 200, the rest waits.
    rig.tcp_in(
        gw(8080),
        40000,
        TcpControl::Psh,
        1101,
        Some(iss1),
        &[b'b'; 536],
    );
    let ack = only_tcp(rig.drain());
    assert_eq!((ack.ack, ack.window), (Some(TcpSeqNumber(1637)), 0));
    assert_eq!(rig.host.socks[&tok].sent.len(), 300);
    rig.host.socks.get_mut(&tok).expect("sock").send_room = 10_000;
    rig.event(tok, false, true, false);
    assert_eq!(rig.host.socks[&tok].sent.len(), 636);
    let update = only_tcp(rig.drain());
    assert!(update.window > 0, "window reopened: {update:?}");
    assert_eq!(rig.stack.counters().tcp_dropped, 0);
}

#[test]
fn tcp_retransmits_from_the_socket_on_timeout() {
    let mut rig = Rig::new(Config::default());
    let (tok, _iss1) = established(&mut rig, 8080);
    rig.host
        .socks
        .get_mut(&tok)
        .expect("sock")
        .rx
        .extend_from_slice(b"lost?");
    rig.event(tok, true, false, false);
    let first = only_tcp(rig.drain());
    rig.advance(Duration::from_millis(1500));
    let again = only_tcp(rig.drain());
    assert_eq!((again.seq, again.payload), (first.seq, first.payload));
}

#[test]
fn tcp_refused_connect_resets_the_guest() {
    let mut rig = Rig::new(Config::default());
    rig.tcp_in(gw(9), 40001, TcpControl::Syn, 5000, None, &[]);
    let tok = rig.host.only(|s| s.connect_to.is_some());
    rig.host.socks.get_mut(&tok).expect("sock").error = Some(ErrorKind::ConnectionRefused);
    rig.event(tok, false, true, true);
    let rst = only_tcp(rig.drain());
    assert_eq!(rst.control, TcpControl::Rst);
    assert_eq!(rst.ack, Some(TcpSeqNumber(5001)));
    assert_eq!(rig.stack.flow_count(), 0);
    assert!(rig.host.closed.contains(&tok));
}

#[test]
fn tcp_guest_reset_aborts_the_host_socket() {
    let mut rig = Rig::new(Config::default());
    let (tok, iss1) = established(&mut rig, 8080);
    rig.tcp_in(gw(8080), 40000, TcpControl::Rst, 1001, Some(iss1), &[]);
    assert_eq!(rig.stack.flow_count(), 0);
    assert!(rig.host.closed.contains(&tok) || rig.host.socks[&tok].aborted);
}

#[test]
fn tcp_stray_segment_gets_a_reset_and_policy_refusals_count() {
    let mut rig = Rig::new(Config {
        disable_host_loopback: true,
        ..Config::default()
    });
    rig.tcp_in(gw(80), 40002, TcpControl::None, 1, Some(77), b"x");
    assert_eq!(only_tcp(rig.drain()).control, TcpControl::Rst);
    rig.tcp_in(gw(80), 40003, TcpControl::Syn, 1, None, &[]);
    assert_eq!(only_tcp(rig.drain()).control, TcpControl::Rst);
    assert_eq!(rig.stack.counters().policy_refused, 1);
    assert!(
        rig.host.socks.is_empty(),
        "no host socket for refused flows"
    );
}

#[test]
fn flow_table_is_bounded() {
    let mut rig = Rig::new(Config {
        max_flows: 4,
        ..Config::default()
    });
    for port in 0..10 {
        rig.tcp_in(gw(80), 41000 + port, TcpControl::Syn, 1, None, &[]);
    }
    assert_eq!(rig.stack.flow_count(), 4);
    // Connects still pending are embryonic: the oldest make room for the
    // newest (see tests/flood.rs for refusal when nothing can go).
    assert_eq!(rig.stack.counters().flows_evicted, 6);
    assert_eq!(rig.stack.counters().flows_refused, 0);
    assert_eq!(rig.host.socks.len(), 4, "evicted flows' sockets are gone");
    let resets = rig.drain().len();
    assert_eq!(resets, 6, "evicted SYNs are answered with RST");
}

#[test]
fn port_forward_connects_to_the_guest() {
    let mut rig = Rig::new(Config {
        hostfwd: vec!["tcp:127.0.0.1:2222-:22".parse().expect("fwd")],
        ..Config::default()
    });
    let (ltok, _, _) = rig.host.listening[0];
    rig.host
        .pending_accept
        .push_back("192.0.2.7:5555".parse().expect("addr"));
    rig.event(ltok, true, false, false);
    let out = rig.drain();
    let syn = out
        .into_iter()
        .find_map(|o| match o {
            Out::Tcp(src, dst, t) => Some((src, dst, t)),
            _ => None,
        })
        .expect("a SYN to the guest");
    assert_eq!(
        syn.0,
        Ipv4Addr::new(192, 0, 2, 7),
        "the guest sees the real client"
    );
    assert_eq!(
        (syn.1, syn.2.dst_port, syn.2.control),
        (GUEST_IP, 22, TcpControl::Syn)
    );
    let iss = syn.2.seq.0 as u32;
    let client = SocketAddr::from(([192, 0, 2, 7], 5555));
    // Guest answers SYN-ACK; the stack ACKs; data flows.
    rig.tcp_in(
        client,
        22,
        TcpControl::Syn,
        9000,
        Some(iss.wrapping_add(1)),
        &[],
    );
    let ack = only_tcp(rig.drain());
    assert_eq!(ack.ack, Some(TcpSeqNumber(9001)));
    let tok = rig.host.only(|s| s.send_room == usize::MAX);
    rig.tcp_in(
        client,
        22,
        TcpControl::Psh,
        9001,
        Some(iss.wrapping_add(1)),
        b"SSH-2.0",
    );
    assert_eq!(rig.host.socks[&tok].sent, b"SSH-2.0");
}

#[test]
fn udp_dns_local_names_and_forwarding() {
    let mut rig = Rig::new(Config {
        dns_upstreams: vec!["127.0.0.1:5353".parse().expect("addr")],
        ..Config::default()
    });
    let dns = SocketAddr::from(([10, 0, 2, 3], 53));
    let guest = SocketAddr::from((GUEST_IP, 33333));
    // A query for host.internal, type A.
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["host", "internal"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    rig.frame(&udp_frame(guest, dns, &q));
    let out = rig.drain();
    let [Out::Udp(src, dst, reply)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((*src, *dst), (dns, guest));
    assert_eq!(
        &reply[reply.len() - 4..],
        &[10, 0, 2, 2],
        "host.internal is the gateway"
    );
    // Another name goes upstream, and the reply comes back from 10.0.2.3.
    let mut q2 = q.clone();
    q2[13] = b'x';
    rig.frame(&udp_frame(guest, dns, &q2));
    let tok = rig.host.only(|s| !s.sent_to.is_empty());
    assert_eq!(
        rig.host.socks[&tok].sent_to[0].1,
        "127.0.0.1:5353".parse().expect("a")
    );
    let upstream = "127.0.0.1:5353".parse().expect("a");
    rig.host
        .socks
        .get_mut(&tok)
        .expect("s")
        .datagrams
        .push_back((b"answer".to_vec(), upstream));
    rig.event(tok, true, false, false);
    let out = rig.drain();
    let [Out::Udp(src, dst, reply)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((*src, *dst, &reply[..]), (dns, guest, &b"answer"[..]));
    rig.advance(Duration::from_secs(30));
    assert_eq!(rig.stack.flow_count(), 0, "idle UDP flows expire");
}

#[test]
fn udp_to_the_gateway_reaches_host_loopback() {
    let mut rig = Rig::new(Config::default());
    let guest = SocketAddr::from((GUEST_IP, 40000));
    rig.frame(&udp_frame(guest, gw(7), b"ping"));
    let tok = rig.host.only(|s| !s.sent_to.is_empty());
    assert_eq!(
        rig.host.socks[&tok].sent_to[0],
        (b"ping".to_vec(), "127.0.0.1:7".parse().expect("a"))
    );
    let lo = "127.0.0.1:7".parse().expect("a");
    rig.host
        .socks
        .get_mut(&tok)
        .expect("s")
        .datagrams
        .push_back((b"pong".to_vec(), lo));
    rig.event(tok, true, false, false);
    let out = rig.drain();
    let [Out::Udp(src, dst, reply)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((*src, *dst, &reply[..]), (gw(7), guest, &b"pong"[..]));
}

#[test]
fn ping_to_the_gateway_is_answered_locally() {
    let mut rig = Rig::new(Config::default());
    let repr = Icmpv4Repr::EchoRequest {
        ident: 0x42,
        seq_no: 1,
        data: b"abcdefgh",
    };
    let f = ip_frame(GUEST_IP, GW, IpProtocol::Icmp, repr.buffer_len(), |b| {
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(b),
            &ChecksumCapabilities::default(),
        )
    });
    rig.frame(&f);
    let out = rig.drain();
    let [Out::Icmp(src, dst, msg)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((*src, *dst), (GW, GUEST_IP));
    assert_eq!(msg[0], 0, "echo reply");
    assert_eq!(&msg[8..], b"abcdefgh");
}

#[test]
fn malformed_frames_are_counted_and_the_next_good_one_served() {
    let mut rig = Rig::new(Config::default());
    let good = udp_frame(SocketAddr::from((GUEST_IP, 1)), gw(7), b"x");
    let mut bad_csum = good.clone();
    bad_csum[24] ^= 0xff;
    let cases: Vec<Vec<u8>> = vec![vec![], good[..10].to_vec(), good[..30].to_vec(), bad_csum];
    for c in &cases {
        rig.frame(c);
    }
    assert_eq!(rig.stack.counters().malformed, cases.len() as u64);
    rig.frame(&good);
    assert_eq!(rig.stack.flow_count(), 1);
}

#[test]
fn tcp_unreachable_host_is_an_icmp_error() {
    let mut rig = Rig::new(Config::default());
    let far = SocketAddr::from(([192, 0, 2, 1], 80));
    rig.tcp_in(far, 40004, TcpControl::Syn, 77, None, &[]);
    let tok = rig.host.only(|s| s.connect_to.is_some());
    rig.host.socks.get_mut(&tok).expect("sock").error = Some(ErrorKind::HostUnreachable);
    rig.event(tok, false, true, true);
    let out = rig.drain();
    let [Out::Icmp(src, dst, msg)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((*src, *dst), (GW, GUEST_IP));
    assert_eq!((msg[0], msg[1]), (3, 1), "destination unreachable, host");
    assert_eq!(
        &msg[8 + 20..8 + 22],
        &40004u16.to_be_bytes(),
        "quotes the SYN"
    );
    assert_eq!(rig.stack.flow_count(), 0);
}

#[test]
fn port_forwards_are_added_and_removed_at_run_time() {
    let mut rig = Rig::new(Config::default());
    let fwd: usernet_core::config::HostFwd = "udp:127.0.0.1:5353-:53".parse().expect("fwd");
    let id = rig.stack.add_hostfwd(fwd, &mut rig.host).expect("listens");
    assert!(
        rig.stack.add_hostfwd(fwd, &mut rig.host).is_err(),
        "the same host address twice"
    );
    assert_eq!(rig.stack.hostfwds().collect::<Vec<_>>(), vec![(id, &fwd)]);
    let (ltok, _, _) = rig.host.listening[0];
    rig.host
        .socks
        .get_mut(&ltok)
        .expect("l")
        .datagrams
        .push_back((b"q".to_vec(), "127.0.0.1:999".parse().expect("a")));
    rig.event(ltok, true, false, false);
    let out = rig.drain();
    let [Out::Udp(src, dst, data)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (*src, *dst, &data[..]),
        (gw(999), SocketAddr::from(([10, 0, 2, 15], 53)), &b"q"[..])
    );
    assert!(rig.stack.remove_hostfwd(id, &mut rig.host));
    assert!(!rig.stack.remove_hostfwd(id, &mut rig.host));
    assert!(rig.host.closed.contains(&ltok));
    assert_eq!(rig.stack.hostfwds().count(), 0);
}

/// `Stack::flows` counts payload each way (TCP: data segments only) and
/// `Stack::guests` whole frames; time since the flow opened and since its
/// last packet come from the virtual clock; a link reset forgets the guest.
#[test]
fn flows_and_guests_count_traffic() {
    use usernet_core::stats::{FlowState, Traffic};
    let mut rig = Rig::new(Config::default());
    assert!(
        rig.stack.guests(rig.now).is_empty(),
        "no guest before a frame"
    );
    let (tok, iss1) = established(&mut rig, 8080);
    rig.advance(Duration::from_secs(2));
    rig.tcp_in(gw(8080), 40000, TcpControl::Psh, 1001, Some(iss1), b"hello");
    rig.drain();
    let sock = rig.host.socks.get_mut(&tok).expect("sock");
    sock.rx.extend_from_slice(b"world!");
    rig.event(tok, true, false, false);
    rig.drain();
    rig.advance(Duration::from_secs(1));
    let guest = SocketAddr::from((GUEST_IP, 40001));
    rig.frame(&udp_frame(guest, gw(7), b"ping"));

    let flows: Vec<_> = rig.stack.flows(rig.now).collect();
    assert_eq!(flows.len(), 2, "{flows:?}");
    let tcp = flows
        .iter()
        .find(|f| f.state == FlowState::Tcp(usernet_core::tcp::State::Established))
        .expect("the TCP flow");
    assert_eq!(tcp.remote, gw(8080));
    assert_eq!(tcp.host, Some("127.0.0.1:8080".parse().expect("addr")));
    assert_eq!(tcp.guest_mac, Some(GUEST_MAC.0));
    assert_eq!(
        tcp.to_host,
        Traffic {
            packets: 1,
            bytes: 5
        }
    );
    assert_eq!(
        tcp.to_guest,
        Traffic {
            packets: 1,
            bytes: 6
        }
    );
    assert_eq!(tcp.age, Duration::from_secs(3));
    assert_eq!(tcp.idle, Duration::from_secs(1));
    let udp = flows
        .iter()
        .find(|f| f.state == FlowState::Open)
        .expect("UDP");
    assert_eq!(
        udp.to_host,
        Traffic {
            packets: 1,
            bytes: 4
        }
    );
    assert_eq!((udp.age, udp.idle), (Duration::ZERO, Duration::ZERO));

    let guests = rig.stack.guests(rig.now);
    let [g] = &guests[..] else {
        panic!("{guests:?}")
    };
    assert_eq!(g.mac, Some(GUEST_MAC.0));
    let c = rig.stack.counters();
    assert_eq!(g.from_guest.packets, c.frames_in);
    assert_eq!(g.to_guest.packets, c.frames_out);
    assert_eq!(g.connected, Duration::from_secs(3));
    rig.stack.reset_link(&mut rig.host);
    assert!(rig.stack.guests(rig.now).is_empty());
    assert_eq!(rig.stack.flows(rig.now).count(), 0);
}
