//! Issue 6: IPv6 against a real guest. SLAAC from usernet's router
//! advertisements, a default route via its link-local address, ICMPv6 echo
//! to the gateway, TCP and UDP to host servers on `[::1]` through
//! `[fec0::2]`, DNS through `fec0::3` (v4 and v6 upstreams), a host→guest
//! v6 port forward, `--ipv6=off`, `--ipv4=off`, and namespace mode.
//!
//! Checks are grouped into few guest boots. Run through `scripts/test.sh`,
//! which provides the guest and the isolated network namespace.
mod common;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{
    DHCP, Guest, SCENARIO_OK, TEST_ANSWER, TestResolver, Usernet, assert_isolated_netns,
    dns_answer, ns_script,
};

/// Generous: a TCG boot takes ~4 s; 64 MiB each way takes a few seconds.
const TIMEOUT: Duration = Duration::from_secs(180);

/// The size of each bulk transfer.
const BULK: usize = 64 << 20;

/// A scenario fragment that waits up to ~10 s for a usable SLAAC address
/// in fec0::/64 on `dev` (past duplicate address detection: a tentative
/// address cannot be a source), then prints the addresses and routes.
fn wait_slaac(dev: &str) -> String {
    format!(
        "i=0
while ! ip -6 addr show dev {dev} | grep 'inet6 fec0::' | grep -qv tentative && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo slaac_waited=$i
ip -6 addr show dev {dev}
ip -6 route
"
    )
}

/// `BULK` deterministic, non-repeating bytes (xorshift64).
fn bulk_data() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(BULK);
    while v.len() < BULK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(BULK);
    v
}

/// The hex SHA-256 of `data`, from the host's `sha256sum`.
fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let writer = thread::spawn(move || {
        stdin.write_all(&data).expect("feed sha256sum");
    });
    let out = child.wait_with_output().expect("sha256sum output");
    writer.join().expect("writer");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .expect("sha256sum printed a hash")
        .to_string()
}

/// The value of the first `key=VALUE` line in the console.
fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

/// Stops a background thread on drop.
struct Bg {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP server on [::1] sending `data` to every connection, then closing.
fn tcp6_source(data: Arc<Vec<u8>>) -> (u16, Bg) {
    let l = TcpListener::bind("[::1]:0").expect("bind [::1] tcp");
    l.set_nonblocking(true).expect("nonblocking");
    let port = l.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let data = data.clone();
                    thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let _ = c.write_all(&data);
                        let _ = c.shutdown(Shutdown::Write);
                        // Drain so the close is graceful.
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = [0u8; 1024];
                        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (
        port,
        Bg {
            stop,
            thread: Some(thread),
        },
    )
}

/// A UDP echo server on [::1]; counts the datagrams it echoed.
fn udp6_echo() -> (u16, Arc<AtomicUsize>, Bg) {
    let sock = UdpSocket::bind("[::1]:0").expect("bind [::1] udp");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let port = sock.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, c) = (stop.clone(), count.clone());
    let thread = thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                if sock.send_to(&reply, peer).is_ok() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    (
        port,
        count,
        Bg {
            stop,
            thread: Some(thread),
        },
    )
}

/// A UDP DNS responder on [::1] answering like [`TestResolver`]; counts
/// the queries it answered.
fn resolver6() -> (SocketAddr, Arc<AtomicUsize>, Bg) {
    let sock = UdpSocket::bind("[::1]:0").expect("bind [::1] dns");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let addr = sock.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, c) = (stop.clone(), count.clone());
    let thread = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf)
                && let Some((reply, _)) = dns_answer(&buf[..n], TEST_ANSWER)
                && sock.send_to(&reply, peer).is_ok()
            {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (
        addr,
        count,
        Bg {
            stop,
            thread: Some(thread),
        },
    )
}

/// The host side of the host→guest forward: connects to `[::1]:port`
/// until the guest's server greets with `R` (bounded by `deadline`), then
/// sends `data`, half-closes and returns how many greetings it saw.
fn forward_client(port: u16, data: Arc<Vec<u8>>, deadline: Instant) -> JoinHandle<String> {
    thread::spawn(move || {
        let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let mut attempts = 0;
        while Instant::now() < deadline {
            attempts += 1;
            let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                thread::sleep(Duration::from_millis(200));
                continue;
            };
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut greet = [0u8; 1];
            if c.read_exact(&mut greet).is_err() || greet[0] != b'R' {
                thread::sleep(Duration::from_millis(200));
                continue;
            }
            let _ = c.set_write_timeout(Some(Duration::from_secs(60)));
            if let Err(e) = c.write_all(&data) {
                return format!("write failed after {attempts} attempts: {e}");
            }
            let _ = c.shutdown(Shutdown::Write);
            let mut rest = Vec::new();
            let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = c.read_to_end(&mut rest);
            return format!("sent after {attempts} attempts");
        }
        format!("no greeting from the guest in {attempts} attempts")
    })
}

/// One boot with the defaults plus a v6 forward: SLAAC, route, ping, 64 MiB
/// guest←host over TCP, UDP echo, DNS through fec0::3 (v4 upstream), and
/// 64 MiB host→guest through `--hostfwd tcp:[::1]:P-:P`.
#[test]
fn ipv6_default_guest() {
    assert_isolated_netns();
    let data = Arc::new(bulk_data());
    let want = sha256_hex(&data);
    let (tcp_port, _tcp) = tcp6_source(data.clone());
    let (udp_port, udp_count, _udp) = udp6_echo();
    let fwd_port = common::ns::free_port();
    let hostfwd = format!("tcp:[::1]:{fwd_port}-:{fwd_port}");
    let mut un = Usernet::spawn(&["--hostfwd", &hostfwd]);
    let fwd = forward_client(
        fwd_port,
        data.clone(),
        Instant::now() + Duration::from_secs(120),
    );

    let scenario = format!(
        "socat TCP6-LISTEN:{fwd_port},reuseaddr SYSTEM:'echo R; sha256sum > /tmp/fwd.sha' &
{slaac}
ping -6 -c 3 -W 5 fec0::2 && echo ping=ok
echo dl_sha=$(timeout 90 socat -u TCP:[fec0::2]:{tcp_port} - 2>/tmp/dl.err | sha256sum)
echo dl_err=$(cat /tmp/dl.err)
echo udp=$(echo hello-v6 | timeout 10 socat -T 5 - UDP6:[fec0::2]:{udp_port})
timeout 15 nslookup x.usernet.test fec0::3
i=0
while [ ! -s /tmp/fwd.sha ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
echo fwd_sha=$(cat /tmp/fwd.sha)
",
        slaac = wait_slaac("eth0"),
    );
    let out = Guest::run(un.socket(), &scenario, TIMEOUT);
    un.assert_running();
    let fwd_result = fwd.join().expect("forward client");
    let log = un.log();
    let ctx = format!("forward client: {fwd_result}\nusernet log:\n{log}");

    // SLAAC address (scope site) and a default route via our link-local.
    assert!(
        out.lines().any(|l| l.contains("inet6 fec0::")
            && l.contains("scope site")
            && !l.contains("tentative")),
        "no SLAAC address in fec0::/64:\n{out}\n{ctx}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("default via fe80::") && l.contains("dev eth0")),
        "no default route via a link-local gateway:\n{out}\n{ctx}"
    );
    assert!(
        out.contains("default via fe80::5055:aff:fe00:202"),
        "default route not via usernet's link-local address:\n{out}"
    );
    assert!(
        out.contains("ping=ok"),
        "ping -6 fec0::2 failed:\n{out}\n{ctx}"
    );
    assert!(out.contains("3 packets received"), "ping:\n{out}");
    assert_eq!(
        field(&out, "dl_sha").and_then(|v| v.split_whitespace().next()),
        Some(want.as_str()),
        "64 MiB over TCP from [::1] via [fec0::2] not intact:\n{out}\n{ctx}"
    );
    assert_eq!(
        field(&out, "udp"),
        Some("echo:hello-v6"),
        "UDP echo over v6:\n{out}\n{ctx}"
    );
    assert!(udp_count.load(Ordering::Relaxed) >= 1);
    assert!(
        out.contains(&format!("Address: {TEST_ANSWER}"))
            || out.contains(&format!("Address 1: {TEST_ANSWER}")),
        "nslookup via fec0::3:\n{out}\n{ctx}"
    );
    let resolver = un.resolver().expect("spawn started a resolver");
    assert!(
        resolver.names().iter().any(|(n, _)| n == "x.usernet.test"),
        "resolver saw {:?}",
        resolver.names()
    );
    assert_eq!(
        field(&out, "fwd_sha").and_then(|v| v.split_whitespace().next()),
        Some(want.as_str()),
        "64 MiB through --hostfwd {hostfwd} not intact:\n{out}\n{ctx}"
    );
    assert!(out.contains(SCENARIO_OK), "{out}");
}

/// A DHCPv6 Information-request (xid 0x123456, client id DUID-LL
/// 52:54:00:12:34:56, ORO 23 and 24, elapsed time 0) as octal escapes for
/// the guest's `printf`.
const INFO_REQ: &str = "\\013\\022\\064\\126\\000\\001\\000\\012\\000\\003\\000\\001\\122\\124\\000\\022\\064\\126\\000\\006\\000\\004\\000\\027\\000\\030\\000\\010\\000\\002\\000\\000";

/// `--ipv4=off`: udhcpc gets no lease, v6 still works, DNS through
/// fec0::3 reaches a v6 upstream (`--dns-upstream [::1]:PORT`), the RA
/// carries `--mtu`, and stateless DHCPv6 answers an Information-request.
#[test]
fn ipv4_off_v6_still_works_with_v6_dns_upstream() {
    assert_isolated_netns();
    let (dns, dns_count, _dns) = resolver6();
    let upstream = dns.to_string();
    assert!(upstream.starts_with("[::1]:"), "{upstream}");
    let mut un = Usernet::spawn(&[
        "--ipv4",
        "off",
        "--dns-upstream",
        &upstream,
        "--dnssearch",
        "v6.test",
        "--mtu",
        "1400",
    ]);
    let scenario = format!(
        "udhcpc -i eth0 -n -q -t 2 -T 1 && echo dhcp=lease || echo dhcp=none
{slaac}
ping -6 -c 3 -W 5 fec0::2 && echo ping=ok
timeout 15 nslookup y.usernet.test fec0::3
echo v6mtu=$(cat /proc/sys/net/ipv6/conf/eth0/mtu)
ip -6 neigh flush dev eth0
ping -6 -c 2 -W 3 fe80::5055:aff:fe00:202%eth0 && echo llping=ok
ip -6 neigh show dev eth0 | sed 's/^/neigh: /'
echo dhcpv6=$(printf '{INFO_REQ}' | timeout 10 socat -t 3 - UDP6-DATAGRAM:[ff02::1:2]:547,bind=[::]:546 | od -An -tx1 -v | tr -d '\n')
",
        slaac = wait_slaac("eth0"),
    );
    let out = Guest::run(un.socket(), &scenario, TIMEOUT);
    un.assert_running();
    let log = un.log();
    assert!(out.contains("dhcp=none"), "udhcpc got a lease:\n{out}");
    assert!(
        !out.contains("lease.ip="),
        "udhcpc configured a lease:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("inet6 fec0::")
            && l.contains("scope site")
            && !l.contains("tentative")),
        "no SLAAC address:\n{out}\n{log}"
    );
    assert!(out.contains("ping=ok"), "ping -6 fec0::2:\n{out}\n{log}");
    assert!(out.contains("3 packets received"), "ping:\n{out}");
    assert!(
        out.contains(&format!("Address: {TEST_ANSWER}"))
            || out.contains(&format!("Address 1: {TEST_ANSWER}")),
        "nslookup via fec0::3 with a v6 upstream:\n{out}\n{log}"
    );
    assert!(dns_count.load(Ordering::Relaxed) >= 1);

    // The RA's MTU option (no DHCPv4 here to set it).
    assert_eq!(field(&out, "v6mtu"), Some("1400"), "RA MTU:\n{out}");

    // With the neighbour cache flushed, the guest resolves our link-local
    // address (its default router) again and pings it.
    assert!(
        out.contains("llping=ok"),
        "ping fe80::5055:aff:fe00:202:\n{out}"
    );
    assert!(
        out.lines().any(|l| l
            .starts_with("neigh: fe80::5055:aff:fe00:202 lladdr 52:55:0a:00:02:02")
            && l.contains("REACHABLE")),
        "router neighbour entry:\n{out}"
    );

    // Stateless DHCPv6: a Reply with our xid, the client id echoed, DNS
    // server fec0::3 and the search list.
    let reply = field(&out, "dhcpv6").unwrap_or_default();
    assert!(
        reply.starts_with("07 12 34 56"),
        "no DHCPv6 Reply:\n{out}\n{log}"
    );
    assert!(
        reply.contains("00 01 00 0a 00 03 00 01 52 54 00 12 34 56"),
        "client id not echoed: {reply}"
    );
    assert!(
        reply.contains("00 17 00 10 fe c0 00 00 00 00 00 00 00 00 00 00 00 00 00 03"),
        "no DNS server fec0::3: {reply}"
    );
    // "v6.test" as DNS labels: 02 'v' '6' 04 't' 'e' 's' 't' 00.
    assert!(
        reply.contains("02 76 36 04 74 65 73 74 00"),
        "no search list v6.test: {reply}"
    );
}

/// `--ipv6=off`: no fec0:: address after waiting, no ping; v4 still works.
#[test]
fn ipv6_off_no_slaac() {
    assert_isolated_netns();
    let mut un = Usernet::spawn(&["--ipv6", "off"]);
    // Linux sends up to 3 router solicitations 4 s apart: wait them out.
    let scenario = format!(
        "{DHCP}{slaac}sleep 3
ip -6 addr show dev eth0
ping -6 -c 1 -W 2 fec0::2 && echo ping6=ok || echo ping6=fail
ping -c 1 -W 5 10.0.2.2 && echo ping4=ok
",
        slaac = wait_slaac("eth0"),
    );
    let out = Guest::run(un.socket(), &scenario, TIMEOUT);
    un.assert_running();
    assert!(!out.contains("inet6 fec0::"), "fec0:: address:\n{out}");
    assert!(out.contains("ping6=fail"), "{out}");
    assert!(
        out.contains("ping4=ok"),
        "v4 broken with --ipv6=off:\n{out}"
    );
    // The guest did bring up IPv6 (a link-local address), so the absence
    // of fec0:: is usernet's doing.
    assert!(out.contains("inet6 fe80::"), "{out}");
    assert!(out.contains("slaac_waited=100"), "{out}");
}

/// `usernet ns`: tap0 gets a fec0:: SLAAC address and reaches a host
/// server on [::1] through [fec0::2].
#[test]
fn ns_tap_gets_slaac_and_reaches_host_v6() {
    assert_isolated_netns();
    let resolver = TestResolver::start();
    let body = "hello over v6 from the host";
    let reply = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let body = Arc::new(reply.into_bytes());
    let (port, _srv) = tcp6_source(body);
    let script = format!(
        "{slaac}echo body=$(timeout 20 busybox wget -q -O- http://[fec0::2]:{port}/ 2>&1)
",
        slaac = wait_slaac("tap0"),
    );
    let (status, text) = ns_script(&resolver.upstream_arg(), &script);
    assert!(status.success(), "{status}:\n{text}");
    assert!(
        text.lines().any(|l| l.contains("inet6 fec0::")
            && l.contains("scope site")
            && !l.contains("tentative")),
        "tap0 has no SLAAC address:\n{text}"
    );
    assert!(
        text.contains("body=hello over v6 from the host"),
        "[::1] via [fec0::2]:\n{text}"
    );
}
