//! Issue 4: NAT to the host's loopback, the DNS forwarder, ICMP echo, port
//! forwards and many connections, against a real QEMU guest.
//!
//! The host side of every check is a real server (or client) this test runs
//! on 127.0.0.1 in a thread; the guest reaches it through the gateway
//! 10.0.2.2. Run through `scripts/test.sh`, which provides the guest (with
//! `/bin/connloop`) and the isolated network namespace.
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::bulk::{
    BULK, RETRY, fetch_with_retry, field, free_port, guest_sha, has_address, hash_stream, join,
    prng_bytes, send_with_retry, sha256,
};
use common::{DHCP, Guest, SCENARIO_OK, Usernet};

#[test]
fn tcp_64mib_download_and_upload_via_gateway() {
    let mut un = Usernet::spawn(&[]);
    let data = prng_bytes(0x5eed_0004, BULK);
    let want_down = sha256(&data);

    // A one-shot HTTP/1.0 server for the download.
    let http = TcpListener::bind("127.0.0.1:0").expect("bind http");
    let http_port = http.local_addr().expect("addr").port();
    let http_thread = thread::spawn(move || {
        let (mut conn, peer) = http.accept().expect("accept http");
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut b).expect("read request");
            assert!(n > 0, "request ended early: {req:?}");
            req.extend_from_slice(&b[..n]);
        }
        let head = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            data.len()
        );
        conn.write_all(head.as_bytes()).expect("write head");
        conn.write_all(&data).expect("write body");
        peer
    });

    // A one-shot sink that hashes the upload.
    let sink = TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let sink_port = sink.local_addr().expect("addr").port();
    let sink_thread = thread::spawn(move || {
        let (mut conn, _) = sink.accept().expect("accept upload");
        hash_stream(&mut conn)
    });

    let scenario = format!(
        "{DHCP}set -e
timeout 240 wget -q -O - http://10.0.2.2:{http_port}/blob | sha256sum | sed 's/ .*/ download/'
dd if=/dev/urandom of=/tmp/up bs=1M count=64 2>/dev/null
sha256sum /tmp/up
timeout 240 socat -u FILE:/tmp/up TCP:10.0.2.2:{sink_port}
echo upload=done
"
    );
    let started = Instant::now();
    let out = Guest::run(un.socket(), &scenario, Duration::from_secs(600));
    eprintln!(
        "bulk transfers took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    un.assert_running();
    assert!(out.contains(SCENARIO_OK), "scenario failed:\n{out}");

    let peer = join(http_thread, "http");
    assert_eq!(
        peer.ip().to_string(),
        "127.0.0.1",
        "the gateway connects from loopback"
    );
    assert_eq!(
        guest_sha(&out, "download"),
        Some(want_down.as_str()),
        "download hash differs:\n{out}"
    );
    let (got_len, got_up) = join(sink_thread, "upload sink");
    assert_eq!(got_len, BULK, "upload length");
    assert_eq!(
        guest_sha(&out, "/tmp/up"),
        Some(got_up.as_str()),
        "upload hash differs:\n{out}"
    );
}

/// UDP echo, DNS through 10.0.2.3, ping of the gateway and a refused TCP
/// connection, in one boot.
#[test]
fn udp_dns_icmp_and_refused() {
    let mut un = Usernet::spawn(&["--dns-host", "foo.test=10.0.2.99"]);

    let echo = UdpSocket::bind("127.0.0.1:0").expect("bind udp echo");
    let echo_port = echo.local_addr().expect("addr").port();
    echo.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo_thread = thread::spawn(move || {
        let mut peers = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, peer)) = echo.recv_from(&mut buf) {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = echo.send_to(&reply, peer);
                peers.push(peer);
            }
        }
        peers
    });
    let closed = free_port();

    let scenario = format!(
        "{DHCP}echo udp=$(echo hello | timeout 10 socat - UDP:10.0.2.2:{echo_port})
nslookup x.usernet.test 10.0.2.3 | sed 's/^/dns.x: /'
nslookup foo.test 10.0.2.3 | sed 's/^/dns.foo: /'
nslookup host.internal 10.0.2.3 | sed 's/^/dns.host: /'
ping -c 3 -W 3 10.0.2.2
start=$(date +%s)
timeout 20 socat - TCP:10.0.2.2:{closed} </dev/null 2>&1 | sed 's/^/refused: /'
echo refused.secs=$(( $(date +%s) - start ))
"
    );
    let out = Guest::run(un.socket(), &scenario, Duration::from_secs(180));
    un.assert_running();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peers = join(echo_thread, "udp echo");
    assert!(out.contains(SCENARIO_OK), "scenario failed:\n{out}");

    // UDP round trip.
    assert_eq!(field(&out, "udp"), Some("echo:hello"), "udp echo:\n{out}");
    assert!(
        peers.iter().all(|p| p.ip() == Ipv4Addr::LOCALHOST),
        "{peers:?}"
    );

    // DNS: each answer on its own prefixed lines.
    let dns = |prefix: &str| -> String {
        out.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let x = dns("dns.x: ");
    assert!(has_address(&x, "10.0.2.77"), "forwarded name:\n{x}");
    let foo = dns("dns.foo: ");
    assert!(has_address(&foo, "10.0.2.99"), "--dns-host name:\n{foo}");
    let host = dns("dns.host: ");
    assert!(has_address(&host, "10.0.2.2"), "host.internal:\n{host}");
    let names = un.resolver().expect("test resolver").names();
    eprintln!("resolver saw {names:?}");
    assert!(
        names.iter().any(|(n, t)| n == "x.usernet.test" && *t == 1),
        "the forwarded A query never reached the resolver: {names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|(n, _)| n.starts_with("foo.test") || n.starts_with("host.internal")),
        "locally answered names were forwarded: {names:?}"
    );

    // ICMP echo to the gateway.
    assert!(
        out.contains("3 packets transmitted, 3 packets received"),
        "ping:\n{out}"
    );

    // Refused, fast.
    let refused = dns("refused: ");
    assert!(
        refused.contains("Connection refused"),
        "expected a refused connection:\n{out}"
    );
    let secs: u64 = field(&out, "refused.secs")
        .and_then(|s| s.parse().ok())
        .expect("refused.secs");
    assert!(secs <= 5, "refusal took {secs} s:\n{out}");
}

/// Host→guest TCP and UDP forwards: 64 MiB each way, a datagram round trip,
/// and the client address the guest sees.
#[test]
fn hostfwd_tcp_udp_and_peer_addresses() {
    let out_port = free_port(); // guest serves a file
    let in_port = free_port(); // guest receives a file
    let peer_port = free_port(); // guest reports the client address
    let done_port = free_port(); // the host says it is done
    let udp_port = free_port();
    let fwd = |proto: &str, addr: &str, p: u16| format!("{proto}:{addr}:{p}-:{p}");
    let args = [
        fwd("tcp", "127.0.0.1", out_port),
        fwd("tcp", "127.0.0.1", in_port),
        fwd("tcp", "0.0.0.0", peer_port),
        fwd("tcp", "127.0.0.1", done_port),
        fwd("udp", "127.0.0.1", udp_port),
    ];
    let mut argv = Vec::new();
    for a in &args {
        argv.push("--hostfwd");
        argv.push(a.as_str());
    }
    // A non-loopback address of this (private) namespace, for a client
    // the guest must see as itself.
    let ip = Command::new("ip")
        .args(["addr", "replace", "192.0.2.1/32", "dev", "lo"])
        .status()
        .expect("run ip");
    assert!(ip.success(), "ip addr replace 192.0.2.1/32 dev lo failed");

    let mut un = Usernet::spawn(&argv);
    let data = prng_bytes(0x05ee_df0d, BULK);
    let want_in = sha256(&data);

    let host = thread::spawn(move || {
        let lo = Ipv4Addr::LOCALHOST;
        // guest → host over the forward.
        let t = Instant::now();
        let got = fetch_with_retry((lo, out_port));
        let out_len = got.len();
        let out_sha = sha256(&got);
        drop(got);
        eprintln!("guest→host forward: {:.1} s", t.elapsed().as_secs_f64());
        // host → guest.
        let t = Instant::now();
        send_with_retry((lo, in_port), &data);
        eprintln!("host→guest forward: {:.1} s", t.elapsed().as_secs_f64());
        // UDP round trip.
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind udp client");
        u.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let deadline = Instant::now() + RETRY;
        let udp_reply = loop {
            u.send_to(b"ping-over-udp-forward\n", (lo, udp_port))
                .expect("send udp");
            let mut b = [0u8; 256];
            if let Ok((n, _)) = u.recv_from(&mut b) {
                break String::from_utf8_lossy(&b[..n]).into_owned();
            }
            if Instant::now() > deadline {
                break String::new();
            }
        };
        // Client addresses.
        let peer_far =
            String::from_utf8_lossy(&fetch_with_retry((Ipv4Addr::new(192, 0, 2, 1), peer_port)))
                .into_owned();
        let peer_lo = String::from_utf8_lossy(&fetch_with_retry((lo, peer_port))).into_owned();
        send_with_retry((lo, done_port), b"done\n");
        (out_len, out_sha, udp_reply, peer_far, peer_lo)
    });

    let scenario = format!(
        "{DHCP}dd if=/dev/urandom of=/tmp/f bs=1M count=64 2>/dev/null
sha256sum /tmp/f
socat TCP-LISTEN:{out_port},reuseaddr OPEN:/tmp/f,rdonly &
socat -T 10 UDP-LISTEN:{udp_port},reuseaddr,fork EXEC:cat &
socat TCP-LISTEN:{peer_port},reuseaddr,fork SYSTEM:'echo peer=$SOCAT_PEERADDR' &
echo ready
timeout 300 socat -u TCP-LISTEN:{in_port},reuseaddr - | sha256sum | sed 's/ .*/ in/'
timeout 120 socat -u TCP-LISTEN:{done_port},reuseaddr -
"
    );
    let out = Guest::run(un.socket(), &scenario, Duration::from_secs(600));
    un.assert_running();
    let (out_len, out_sha, udp_reply, peer_far, peer_lo) = join(host, "host client");
    assert!(out.contains(SCENARIO_OK), "scenario failed:\n{out}");

    assert_eq!(out_len, BULK, "guest→host length");
    assert_eq!(
        guest_sha(&out, "/tmp/f"),
        Some(out_sha.as_str()),
        "guest→host hash differs:\n{out}"
    );
    assert_eq!(
        guest_sha(&out, "in"),
        Some(want_in.as_str()),
        "host→guest hash differs:\n{out}"
    );
    assert_eq!(udp_reply, "ping-over-udp-forward\n", "udp forward");
    assert_eq!(peer_far.trim(), "peer=192.0.2.1", "non-loopback client");
    assert_eq!(peer_lo.trim(), "peer=10.0.2.2", "loopback client");
}

#[test]
fn ten_thousand_connections() {
    let mut un = Usernet::spawn(&[]);
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    l.set_nonblocking(true).expect("nonblocking");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = thread::spawn(move || {
        let mut accepted = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match l.accept() {
                Ok((c, _)) => {
                    accepted += 1;
                    drop(c);
                }
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
        accepted
    });
    let before = un.rss();
    let started = Instant::now();
    let out = Guest::run(
        un.socket(),
        &format!("{DHCP}connloop 10.0.2.2 {port} 10000\n"),
        Duration::from_secs(600),
    );
    let after = un.rss();
    un.assert_running();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let accepted = join(server, "accept loop");
    eprintln!(
        "10000 connections: {:.1} s; usernet before {before:?}, after {after:?}; host accepted {accepted}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.contains("connloop: 10000 connected, 0 failed"),
        "connloop:\n{out}"
    );
    assert!(out.contains(SCENARIO_OK), "scenario failed:\n{out}");
    assert!(
        after.hwm_kib < 64 * 1024,
        "usernet's peak RSS {} KiB is over 64 MiB",
        after.hwm_kib
    );
}

/// `iperf3 -s -1` on 127.0.0.1, killed (by PID) on drop.
struct Iperf(Child);

impl Drop for Iperf {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn iperf3_both_directions() {
    let mut un = Usernet::spawn(&[]);
    let server = |port: u16| {
        Iperf(
            Command::new("iperf3")
                .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start iperf3 -s"),
        )
    };
    let (up, down) = (free_port(), free_port());
    let _servers = (server(up), server(down));
    thread::sleep(Duration::from_millis(500));
    let scenario = format!(
        "{DHCP}timeout 60 iperf3 -c 10.0.2.2 -p {up} -t 5 && echo iperf.up=ok
timeout 60 iperf3 -c 10.0.2.2 -p {down} -t 5 -R && echo iperf.down=ok
"
    );
    let out = Guest::run(un.socket(), &scenario, Duration::from_secs(300));
    un.assert_running();
    for l in out
        .lines()
        .filter(|l| l.contains("sender") || l.contains("receiver"))
    {
        eprintln!("iperf3: {l}");
    }
    assert_eq!(field(&out, "iperf.up"), Some("ok"), "iperf3 -c:\n{out}");
    assert_eq!(
        field(&out, "iperf.down"),
        Some("ok"),
        "iperf3 -c -R:\n{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("receiver")).count(),
        2,
        "two iperf3 summaries:\n{out}"
    );
}
