//! The TFTP server and guestfwd through the whole stack, against the fake
//! host (`usernet_core::testing`), with a virtual clock: transfers with
//! options, loss and retransmission, short reads, refusals and bounds; a
//! guestfwd connection carried to its target both ways.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use smoltcp::wire::{EthernetAddress, TcpControl, TcpRepr, TcpSeqNumber};
use usernet_core::testing::{self, Behaviour, Harness};
use usernet_core::tftp::{self, Options, Packet, Request};
use usernet_core::{Config, GuestFwdTarget};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn tftp_config() -> Config {
    Config {
        tftp_root: Some(PathBuf::from("/srv/tftp")),
        ..Config::default()
    }
}

/// A harness recording its output, with `files` in the TFTP root.
fn rig(cfg: Config, files: &[(&str, Vec<u8>)]) -> Harness {
    let mut h = Harness::new(cfg, Behaviour::default(), Instant::now());
    h.record = true;
    for (name, data) in files {
        h.host.files.insert((*name).to_owned(), data.clone());
    }
    h
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Sends a TFTP packet from `client` to the gateway's port 69.
fn send(h: &mut Harness, client: SocketAddr, p: &Packet) {
    let mut buf = vec![0u8; 2048];
    let n = p.emit(&mut buf).expect("fits");
    let server = match client.ip() {
        IpAddr::V4(_) => sa("10.0.2.2:69"),
        IpAddr::V6(_) => sa("[fec0::2]:69"),
    };
    let f = testing::guest_udp(h.stack.config(), GUEST_MAC, client, server, &buf[..n]);
    h.frame(&f);
}

/// The TFTP packets the stack sent since the last call, as owned bytes,
/// each checked to come from the gateway's port 69 to `client`.
fn replies(h: &mut Harness, client: SocketAddr) -> Vec<Vec<u8>> {
    h.drain();
    h.take_output()
        .iter()
        .filter_map(|f| testing::parse_udp(f))
        .map(|(src, dst, payload)| {
            assert_eq!(src.port(), tftp::PORT, "replies come from port 69");
            assert_eq!(dst, client);
            payload
        })
        .collect()
}

/// The one reply, parsed by `check`.
fn one<T>(h: &mut Harness, client: SocketAddr, check: impl Fn(Packet) -> T) -> T {
    let r = replies(h, client);
    assert_eq!(r.len(), 1, "expected one reply: {r:02x?}");
    check(Packet::parse(&r[0]).expect("a valid TFTP packet"))
}

fn data(p: Packet) -> (u16, Vec<u8>) {
    match p {
        Packet::Data { block, data } => (block, data.to_vec()),
        other => panic!("expected DATA, got {other:?}"),
    }
}

fn error_code(p: Packet) -> u16 {
    match p {
        Packet::Error { code, .. } => code,
        other => panic!("expected ERROR, got {other:?}"),
    }
}

fn rrq<'a>(name: &'a str, options: Options) -> Packet<'a> {
    Packet::Rrq(Request {
        filename: name,
        mode: "octet",
        options,
    })
}

#[test]
fn transfer_with_options_loss_and_short_reads() {
    let file = pattern(3000);
    let mut h = rig(tftp_config(), &[("boot/big", file.clone())]);
    h.host.read_chunk = Some(100);
    let client = sa("10.0.2.15:40000");
    let asked = Options {
        blksize: Some(1024),
        tsize: Some(0),
        timeout: Some(2),
    };
    send(&mut h, client, &rrq("boot/big", asked));
    let oack = one(&mut h, client, |p| match p {
        Packet::Oack(o) => o,
        other => panic!("expected OACK, got {other:?}"),
    });
    assert_eq!(
        oack,
        Options {
            blksize: Some(1024),
            timeout: Some(2),
            tsize: Some(3000),
        }
    );
    assert_eq!(h.host.file_root, Some(PathBuf::from("/srv/tftp")));

    // The OACK is lost: it comes again after the negotiated timeout.
    h.advance(Duration::from_millis(1900));
    assert!(replies(&mut h, client).is_empty(), "not before the timeout");
    h.advance(Duration::from_millis(200));
    let again = one(&mut h, client, |p| match p {
        Packet::Oack(o) => o,
        other => panic!("expected the OACK again, got {other:?}"),
    });
    assert_eq!(again, oack);

    send(&mut h, client, &Packet::Ack { block: 0 });
    let mut got = Vec::new();
    let (block, first) = one(&mut h, client, data);
    assert_eq!((block, first.len()), (1, 1024));
    // DATA 1 is lost: the same block again, read again from the file.
    h.advance(Duration::from_secs(2));
    let (block, again) = one(&mut h, client, data);
    assert_eq!((block, &again), (1, &first));
    got.extend_from_slice(&first);

    send(&mut h, client, &Packet::Ack { block: 1 });
    let (block, second) = one(&mut h, client, data);
    assert_eq!((block, second.len()), (2, 1024));
    // A duplicate ACK is not answered (no Sorcerer's Apprentice).
    send(&mut h, client, &Packet::Ack { block: 1 });
    assert!(replies(&mut h, client).is_empty());
    got.extend_from_slice(&second);

    send(&mut h, client, &Packet::Ack { block: 2 });
    let (block, last) = one(&mut h, client, data);
    assert_eq!((block, last.len()), (3, 3000 - 2048));
    got.extend_from_slice(&last);
    assert_eq!(got, file);
    assert_eq!(h.host.open_files.len(), 1);

    send(&mut h, client, &Packet::Ack { block: 3 });
    assert!(replies(&mut h, client).is_empty());
    assert!(h.host.open_files.is_empty(), "the file is closed when done");
    assert_eq!(h.stack.poll_timeout(), None, "nothing left to time");
}

#[test]
fn plain_transfer_over_ipv4_and_ipv6() {
    let file = pattern(1024);
    let mut h = rig(tftp_config(), &[("two", file.clone())]);
    for client in [sa("10.0.2.15:1069"), sa("[fec0::15]:1069")] {
        send(&mut h, client, &rrq("two", Options::default()));
        let (b1, d1) = one(&mut h, client, data);
        assert_eq!((b1, d1.as_slice()), (1, &file[..512]));
        send(&mut h, client, &Packet::Ack { block: 1 });
        let (b2, d2) = one(&mut h, client, data);
        assert_eq!((b2, d2.as_slice()), (2, &file[512..]));
        // A file of whole blocks ends with an empty one.
        send(&mut h, client, &Packet::Ack { block: 2 });
        let (b3, d3) = one(&mut h, client, data);
        assert_eq!((b3, d3.len()), (3, 0));
        send(&mut h, client, &Packet::Ack { block: 3 });
        assert!(replies(&mut h, client).is_empty());
        assert!(h.host.open_files.is_empty());
    }
}

#[test]
fn blksize_is_cut_to_the_link() {
    let mut h = rig(tftp_config(), &[("f", pattern(5000))]);
    let client = sa("10.0.2.15:2000");
    let asked = Options {
        blksize: Some(65464),
        ..Options::default()
    };
    send(&mut h, client, &rrq("f", asked));
    let oack = one(&mut h, client, |p| match p {
        Packet::Oack(o) => o,
        other => panic!("expected OACK, got {other:?}"),
    });
    assert_eq!(oack.blksize, Some(1500 - 20 - 8 - 4));
    send(&mut h, client, &Packet::Ack { block: 0 });
    let (_, d) = one(&mut h, client, data);
    assert_eq!(d.len(), 1468);
}

#[test]
fn refusals() {
    let mut h = rig(tftp_config(), &[("f", pattern(10))]);
    let client = sa("10.0.2.15:3000");
    let wrq = Packet::Wrq(Request {
        filename: "f",
        mode: "octet",
        options: Options::default(),
    });
    send(&mut h, client, &wrq);
    assert_eq!(one(&mut h, client, error_code), 2, "write refused");
    for name in ["../../etc/passwd", "/etc/passwd", "a/../../b"] {
        send(&mut h, client, &rrq(name, Options::default()));
        assert_eq!(one(&mut h, client, error_code), 2, "{name}");
    }
    assert_eq!(h.host.file_root, None, "never asked the host");
    send(&mut h, client, &rrq("missing", Options::default()));
    assert_eq!(one(&mut h, client, error_code), 1, "not found");
    let netascii = Packet::Rrq(Request {
        filename: "f",
        mode: "netascii",
        options: Options::default(),
    });
    send(&mut h, client, &netascii);
    assert_eq!(one(&mut h, client, error_code), 4);
    send(
        &mut h,
        client,
        &Packet::Data {
            block: 1,
            data: b"x",
        },
    );
    assert_eq!(one(&mut h, client, error_code), 4);
    // An ACK for no transfer is not answered.
    send(&mut h, client, &Packet::Ack { block: 1 });
    assert!(replies(&mut h, client).is_empty());
    assert!(h.host.open_files.is_empty());
}

#[test]
fn without_a_root_port_69_is_nated() {
    let mut h = rig(Config::default(), &[]);
    let client = sa("10.0.2.15:3000");
    send(&mut h, client, &rrq("f", Options::default()));
    h.drain();
    assert!(h.take_output().is_empty());
    let t = h.host.only(|s| s.kind == testing::SockKind::Udp);
    let sent = &h.host.socks[&t].sent_to;
    assert_eq!(sent[0].1, sa("127.0.0.1:69"), "to the host's loopback");
}

#[test]
fn unacknowledged_transfers_give_up_and_are_bounded() {
    let mut h = rig(tftp_config(), &[("f", pattern(600))]);
    let client = sa("10.0.2.15:4000");
    send(&mut h, client, &rrq("f", Options::default()));
    assert_eq!(replies(&mut h, client).len(), 1);
    for _ in 0..tftp::MAX_RETRIES {
        h.advance(tftp::DEFAULT_TIMEOUT);
        assert_eq!(replies(&mut h, client).len(), 1, "a retransmission");
    }
    h.advance(tftp::DEFAULT_TIMEOUT);
    assert!(replies(&mut h, client).is_empty());
    assert!(h.host.open_files.is_empty(), "given up");

    for port in 0..tftp::MAX_SESSIONS as u16 {
        let c = SocketAddr::new(client.ip(), 5000 + port);
        send(&mut h, c, &rrq("f", Options::default()));
        assert_eq!(one(&mut h, c, data).0, 1);
    }
    let c = SocketAddr::new(client.ip(), 6000);
    send(&mut h, c, &rrq("f", Options::default()));
    assert_eq!(one(&mut h, c, error_code), 0, "busy");
    assert_eq!(h.host.open_files.len(), tftp::MAX_SESSIONS);
    // A new RRQ from a running transfer's port restarts it in place.
    let c = SocketAddr::new(client.ip(), 5000);
    send(&mut h, c, &rrq("f", Options::default()));
    assert_eq!(one(&mut h, c, data).0, 1);
    assert_eq!(h.host.open_files.len(), tftp::MAX_SESSIONS);
    h.stack.reset_link(&mut h.host);
    assert!(h.host.open_files.is_empty());
}

fn seg(
    sport: u16,
    dport: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> TcpRepr<'_> {
    TcpRepr {
        src_port: sport,
        dst_port: dport,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64000,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    }
}

#[test]
fn guestfwd_connection_reaches_its_target_both_ways() {
    let cfg = Config {
        guestfwd: vec!["tcp:10.0.2.100:4321-cmd:cat".parse().expect("guestfwd")],
        ..Config::default()
    };
    let mut h = rig(cfg, &[]);
    let (guest, fwd): (IpAddr, IpAddr) = (
        Ipv4Addr::new(10, 0, 2, 15).into(),
        Ipv4Addr::new(10, 0, 2, 100).into(),
    );
    let tcp = |h: &mut Harness, repr: &TcpRepr| {
        let f = testing::guest_tcp(h.stack.config(), GUEST_MAC, guest, fwd, repr);
        h.frame(&f);
    };
    tcp(&mut h, &seg(50000, 4321, TcpControl::Syn, 1000, None, b""));
    let t = h.host.only(|s| s.guestfwd.is_some());
    assert_eq!(
        h.host.socks[&t].guestfwd,
        Some(GuestFwdTarget::Cmd("cat".into()))
    );
    assert_eq!(h.host.socks[&t].connect_to, None, "no TCP connect");
    h.deliver();
    h.drain();
    let out = h.take_output();
    let synack = testing::parse_tcp(&out[0]).expect("SYN-ACK");
    assert_eq!(synack.src, SocketAddr::new(fwd, 4321));
    assert_eq!(synack.control, TcpControl::Syn);
    let iss = synack.seq.0 as u32;
    tcp(
        &mut h,
        &seg(50000, 4321, TcpControl::None, 1001, Some(iss + 1), b"ping"),
    );
    h.drain();
    assert_eq!(h.host.socks[&t].sent, b"ping");

    h.host.socks.get_mut(&t).expect("socket").push_rx(b"pong");
    h.deliver();
    h.drain();
    let got: Vec<_> = h
        .take_output()
        .iter()
        .filter_map(|f| testing::parse_tcp(f))
        .filter(|s| !s.payload.is_empty())
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].payload, b"pong");
    assert_eq!(got[0].src, SocketAddr::new(fwd, 4321));

    // Another port of the same address is refused with a reset.
    tcp(&mut h, &seg(50001, 4322, TcpControl::Syn, 7, None, b""));
    h.drain();
    let rst = testing::parse_tcp(&h.take_output()[0]).expect("RST");
    assert_eq!(rst.control, TcpControl::Rst);
}

#[test]
fn guestfwd_target_failing_at_once_resets_the_guest() {
    let cfg = Config {
        guestfwd: vec![
            "tcp:10.0.2.100:22-unix:/nonexistent"
                .parse()
                .expect("guestfwd"),
        ],
        ..Config::default()
    };
    let mut h = rig(cfg, &[]);
    h.host.behaviour.connect_error = Some(std::io::ErrorKind::NotFound);
    let f = testing::guest_tcp(
        h.stack.config(),
        GUEST_MAC,
        Ipv4Addr::new(10, 0, 2, 15).into(),
        Ipv4Addr::new(10, 0, 2, 100).into(),
        &seg(50000, 22, TcpControl::Syn, 1, None, b""),
    );
    h.frame(&f);
    h.drain();
    let rst = testing::parse_tcp(&h.take_output()[0]).expect("RST");
    assert_eq!(rst.control, TcpControl::Rst);
    assert!(h.host.socks.is_empty());
}

#[test]
fn scripts_with_config_bit_7_reach_the_tftp_server() {
    let mut frame_buf = [0u8; 64];
    let n = rrq("small", Options::default())
        .emit(&mut frame_buf)
        .expect("fits");
    let cfg = Harness::from_script_config(0x80);
    let f = testing::guest_udp(
        &cfg,
        GUEST_MAC,
        sa("10.0.2.15:1000"),
        sa("10.0.2.2:69"),
        &frame_buf[..n],
    );
    let mut script = vec![0x80];
    script.extend(testing::Op::encode_frame(&f));
    // Time passes past every retransmission.
    script.extend([testing::Op::Time as u8, 255].repeat(usize::from(tftp::MAX_RETRIES) + 2));
    let h = Harness::run_script(Instant::now(), &script);
    assert!(h.host.file_reads > 0, "the transfer read the file");
    assert!(h.host.open_files.is_empty(), "and gave up in the end");
}
