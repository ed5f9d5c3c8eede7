//! Replays captured guest traffic, and the fuzzers' regressions, through the
//! whole stack against the fake host of `usernet_core::testing`.
//!
//! The captures are libslirp's fuzzing seeds (`corpus/libslirp-fuzzing/`,
//! BSD-3-Clause, see its README): ARP, DHCP, ping, DNS, TCP and TFTP frames
//! a QEMU guest sent, over IPv4 and IPv6. Some go to public addresses, so
//! they are only ever replayed into the sans-IO core with fake sockets,
//! never through real ones. Every frame of every capture goes in, the host
//! answers plausibly (connects succeed, new connections have a greeting,
//! datagrams and pings are echoed), the virtual clock moves on, and every
//! output frame is checked to parse back with valid checksums. The guest's
//! ARP requests for the gateway, DHCP DISCOVERs and pings to the gateway
//! must be answered by the frames that follow them. IPv6 frames go in too,
//! but nothing is asserted about their answers yet.
//!
//! The `fuzz_regression_*` tests replay the inputs saved under
//! `fuzz/regressions/` (see `fuzz/README.md`).
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Decoder};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, UdpPacket,
};
use usernet_core::Config;
use usernet_core::testing::{
    Behaviour, Harness, capture_files as files, capture_frames, check_frame, fix_checksums,
};

/// The MAC QEMU gives its first guest NIC (used for captures without one).
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Ethernet frames of a capture, as the MAC of QEMU's first NIC sends
/// them to the stack.
fn frames(path: &Path) -> Vec<Vec<u8>> {
    capture_frames(path, GUEST_MAC, Config::default().mac)
}

/// What a guest frame asks for that the stack must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// An ARP reply for the gateway to this MAC.
    ArpReply(EthernetAddress),
    /// A DHCP OFFER with this transaction id.
    Offer(u32),
    /// An echo reply from the gateway with this id, sequence and data.
    EchoReply(u16, u16, Vec<u8>),
}

/// What the guest frame `f` expects, if anything we assert on.
fn expectation(f: &[u8]) -> Option<Expect> {
    let caps = ChecksumCapabilities::default();
    let eth = EthernetFrame::new_checked(f).ok()?;
    if eth.src_addr() == EthernetAddress(Config::default().mac) {
        return None; // the capture's answer, not the guest's question
    }
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let r = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()?;
            match r {
                ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    source_hardware_addr,
                    target_protocol_addr,
                    ..
                } if target_protocol_addr == GW => Some(Expect::ArpReply(source_hardware_addr)),
                _ => None,
            }
        }
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            match ip.next_header() {
                IpProtocol::Udp => {
                    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
                    if udp.dst_port() != 67 {
                        return None;
                    }
                    let m = Message::decode(&mut Decoder::new(udp.payload())).ok()?;
                    (m.opts().msg_type() == Some(MessageType::Discover))
                        .then(|| Expect::Offer(m.xid()))
                }
                IpProtocol::Icmp if ip.dst_addr() == GW => {
                    let p = Icmpv4Packet::new_checked(ip.payload()).ok()?;
                    match Icmpv4Repr::parse(&p, &caps).ok()? {
                        Icmpv4Repr::EchoRequest {
                            ident,
                            seq_no,
                            data,
                        } => Some(Expect::EchoReply(ident, seq_no, data.to_vec())),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether output frame `f` is the answer `e` waits for.
fn answers(e: &Expect, f: &[u8]) -> bool {
    let caps = ChecksumCapabilities::default();
    let Ok(eth) = EthernetFrame::new_checked(f) else {
        return false;
    };
    match e {
        Expect::ArpReply(mac) => {
            let Ok(p) = ArpPacket::new_checked(eth.payload()) else {
                return false;
            };
            matches!(ArpRepr::parse(&p), Ok(ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_protocol_addr,
                source_hardware_addr,
                target_hardware_addr,
                ..
            }) if source_protocol_addr == GW
                && source_hardware_addr == EthernetAddress(Config::default().mac)
                && target_hardware_addr == *mac)
        }
        Expect::Offer(xid) => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return false;
            };
            let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                return false;
            };
            if ip.next_header() != IpProtocol::Udp || udp.src_port() != 67 {
                return false;
            }
            Message::decode(&mut Decoder::new(udp.payload()))
                .is_ok_and(|m| m.xid() == *xid && m.opts().msg_type() == Some(MessageType::Offer))
        }
        Expect::EchoReply(id, seq, data) => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return false;
            };
            if ip.next_header() != IpProtocol::Icmp || ip.src_addr() != GW {
                return false;
            }
            let Ok(p) = Icmpv4Packet::new_checked(ip.payload()) else {
                return false;
            };
            matches!(Icmpv4Repr::parse(&p, &caps), Ok(Icmpv4Repr::EchoReply {
                ident, seq_no, data: d
            }) if ident == *id && seq_no == *seq && d == &data[..])
        }
    }
}

/// Replays one capture; returns the expectations it checked.
fn replay(path: &Path) -> Vec<Expect> {
    let mut h = Harness::new(Config::default(), Behaviour::chatty(), Instant::now());
    h.record = true;
    let mut checked = Vec::new();
    for (i, f) in frames(path).iter().enumerate() {
        h.frame(f);
        h.drain();
        h.deliver();
        h.advance(Duration::from_millis(50));
        h.drain();
        h.check_bounds();
        let out = h.take_output();
        if let Some(e) = expectation(f) {
            assert!(
                out.iter().any(|o| answers(&e, o)),
                "{}: frame {i} ({e:?}) not answered; got {} frames",
                path.display(),
                out.len()
            );
            checked.push(e);
        }
    }
    // Let every timer run out: retransmissions, idle flows, lingering.
    for _ in 0..20 {
        h.deliver();
        h.advance(Duration::from_secs(30));
        h.drain();
        h.check_bounds();
    }
    checked
}

#[test]
fn libslirp_captures_replay_and_are_answered() {
    let mut paths = Vec::new();
    files(
        &repo().join("corpus/libslirp-fuzzing"),
        &["pcap", "pkt"],
        &mut paths,
    );
    assert!(paths.len() >= 19, "corpus missing: {paths:?}");
    let mut all = Vec::new();
    for p in &paths {
        all.extend(replay(p));
    }
    let count = |pred: fn(&Expect) -> bool| all.iter().filter(|e| pred(e)).count();
    assert!(
        count(|e| matches!(e, Expect::ArpReply(_))) > 0,
        "no ARP checked"
    );
    assert!(
        count(|e| matches!(e, Expect::Offer(_))) > 0,
        "no DHCP checked"
    );
    assert!(
        count(|e| matches!(e, Expect::EchoReply(..))) > 0,
        "no ping checked"
    );
}

/// The fuzzer's checksum fix-up restores what a corrupted capture frame
/// had: every IPv4 frame with valid checksums comes back byte for byte.
#[test]
fn fix_checksums_restores_captured_checksums() {
    let mut paths = Vec::new();
    files(
        &repo().join("corpus/libslirp-fuzzing"),
        &["pcap", "pkt"],
        &mut paths,
    );
    // check_frame wants the stack's MAC as the source: borrow it.
    let cfg = Config {
        mtu: 9000,
        ..Config::default()
    };
    let mut restored = 0;
    for f in paths.iter().flat_map(|p| frames(p)) {
        let mut g = f.clone();
        g[6..12].copy_from_slice(&cfg.mac);
        if g.len() < 14 + 20 || g[12..14] != [8, 0] || check_frame(&cfg, &g).is_err() {
            continue;
        }
        let want = g.clone();
        g[14 + 10] ^= 0x5a; // IPv4 header checksum
        let l4 = 14 + usize::from(g[14] & 0x0f) * 4;
        let at = match g[14 + 9] {
            1 => l4 + 2,
            6 => l4 + 16,
            17 => l4 + 6,
            _ => l4,
        };
        if at + 1 < g.len() {
            g[at + 1] ^= 0xa5;
        }
        fix_checksums(&mut g);
        assert_eq!(g, want);
        restored += 1;
    }
    assert!(restored >= 10, "only {restored} frames checked");
}

/// Replays one saved `frames` fuzzer input.
fn frames_regression(name: &str) {
    let path = repo().join("fuzz/regressions/frames").join(name);
    let script = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Harness::run_script(Instant::now(), &script);
}

/// Every saved `frames` input, including any without a test of its own.
#[test]
fn fuzz_regressions_frames_all() {
    let mut paths = Vec::new();
    files(
        &repo().join("fuzz/regressions/frames"),
        &["bin"],
        &mut paths,
    );
    for p in paths {
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        frames_regression(name);
    }
}

/// The fake host kept a socket the core had aborted: `tcp_abort` must close
/// it, as the real host does (a fake-host bug, fixed in `testing.rs`).
#[test]
fn fuzz_regression_abort_closes() {
    frames_regression("abort-closes.bin");
}

/// A guest UDP datagram from source port 0 (to the gateway, 10.0.2.2:10)
/// opens a flow, and what comes back is sent to the guest's port 0: a UDP
/// header smoltcp refuses to parse (destination port 0). Fixed: port 0 and
/// unspecified sources are counted as malformed.
#[test]
fn fuzz_regression_udp_dst_port_zero() {
    frames_regression("udp-dst-port-zero.bin");
}

/// The same from 0.0.0.0:0 to 255.255.255.0:65535: the reply goes out from
/// 255.255.255.0 to 0.0.0.0, port 0. Fixed as above.
#[test]
fn fuzz_regression_udp_dst_port_zero_broadcast() {
    frames_regression("udp-dst-port-zero-broadcast.bin");
}
