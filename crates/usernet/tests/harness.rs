//! Self-tests of the test harness in `common`, independent of the stack:
//! the guest boots and runs a scenario, the fake resolver answers, and the
//! frame helpers parse what they should.
mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use common::{
    BOOT_MARKER, Guest, GuestFile, SCENARIO_OK, TEST_ANSWER, TempDir, TestResolver,
    dhcp_message_type, dns_answer, lease, udp_in_frame,
};

/// A DNS query for `name` (type `qtype`) with id 0x1234 and RD set.
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).expect("short label"));
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

#[test]
fn resolver_answers_test_names_and_refuses_others() {
    let (reply, asked) = dns_answer(&query("Www.Usernet.Test", 1), TEST_ANSWER).expect("a reply");
    assert_eq!(asked, ("www.usernet.test".to_string(), 1));
    assert_eq!(&reply[..4], &[0x12, 0x34, 0x85, 0x80]); // QR AA RD, RA, NOERROR
    assert_eq!(&reply[6..8], &[0, 1]); // one answer
    assert_eq!(&reply[reply.len() - 4..], &TEST_ANSWER.octets());

    let (reply, _) = dns_answer(&query("usernet.test", 28), TEST_ANSWER).expect("a reply");
    assert_eq!((reply[3] & 0x0f, &reply[6..8]), (0, &[0u8, 0][..])); // NODATA

    let (reply, _) = dns_answer(&query("example.com", 1), TEST_ANSWER).expect("a reply");
    assert_eq!((reply[3] & 0x0f, &reply[6..8]), (3, &[0u8, 0][..])); // NXDOMAIN

    assert!(dns_answer(&[0; 11], TEST_ANSWER).is_none());
    assert!(
        dns_answer(&reply, TEST_ANSWER).is_none(),
        "a response is not a query"
    );
}

#[test]
fn resolver_serves_udp_and_tcp() {
    let r = TestResolver::start_with(Ipv4Addr::new(10, 0, 2, 99));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    sock.send_to(&query("a.usernet.test", 1), r.addr())
        .expect("send");
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a UDP reply");
    assert_eq!(&buf[n - 4..n], &[10, 0, 2, 99]);

    let mut tcp = std::net::TcpStream::connect(r.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let q = query("nope.example", 1);
    let mut framed = u16::try_from(q.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    framed.extend_from_slice(&q);
    std::io::Write::write_all(&mut tcp, &framed).expect("write");
    let mut reply = [0u8; 2 + 12];
    std::io::Read::read_exact(&mut tcp, &mut reply).expect("a TCP reply");
    assert_eq!(reply[2 + 3] & 0x0f, 3);
    assert_eq!(r.queries(), 2);
    assert_eq!(r.names()[1], ("nope.example".to_string(), 1));
}

#[test]
fn frame_helpers_find_dhcp() {
    // Ethernet + IPv4 (20) + UDP (8) + BOOTP (240) + options 53=1, end.
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x00]);
    let udp_len: u16 = 8 + 240 + 4;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
    ];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0, 68, 0, 67]);
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    let mut bootp = vec![0u8; 236];
    bootp[0] = 1;
    bootp.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 255]);
    f.extend_from_slice(&bootp);
    let u = udp_in_frame(&f).expect("a UDP datagram");
    assert_eq!(
        (u.src, u.dst, u.sport, u.dport),
        (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67)
    );
    assert_eq!(dhcp_message_type(u.payload), Some(1));
    assert_eq!(
        lease("x\nlease.ip=1.2.3.4\nlease.mtu=\n")
            .get("ip")
            .map(String::as_str),
        Some("1.2.3.4")
    );
}

/// Boots the guest against a listener that accepts and ignores the
/// connection: checks the kernel, the initramfs and the scenario plumbing.
#[test]
fn guest_boots_and_runs_the_scenario() {
    let dir = TempDir::new("harness");
    let socket = dir.join("sock");
    let listener = UnixListener::bind(&socket).expect("bind unix socket");
    let holder = std::thread::spawn(move || listener.accept().map(|(conn, _)| conn));
    let out = Guest::run_with_files(
        &socket,
        "echo scenario says $(cat /etc/usernet/greeting)\nip link show eth0\n",
        &[GuestFile {
            path: "/etc/usernet/greeting",
            data: b"hello\n",
            mode: 0o644,
        }],
        Duration::from_secs(120),
    );
    let _conn = holder.join().expect("accept thread");
    assert!(out.contains(BOOT_MARKER));
    assert!(out.contains("scenario says hello"), "{out}");
    assert!(out.contains("eth0:"), "no eth0 in the guest:\n{out}");
    assert!(out.contains(SCENARIO_OK), "{out}");
}
