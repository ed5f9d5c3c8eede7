//! Issue 14: several QEMU guests on one socket, a port each of usernet's
//! virtual switch. Two real guests at once: distinct leases (one pinned
//! with `--dhcp-host`), ping between them over IPv4 and IPv6, a 4 MiB TCP
//! transfer from one to the other with matching SHA-256, both reaching the
//! host; one disconnects and comes back with the same MAC and gets the same
//! lease while the other keeps running; a port forward naming one guest's
//! address reaches that guest; a third client beyond
//! `--max-guests` is refused; `--isolate` keeps the guests apart but not
//! from the host; one guest's 8 MiB upload completes while the other
//! floods the gateway with UDP. Transfers end with an answer from the far
//! end, so no guest powers off with data still in its send buffer.
//!
//! Guests boot in parallel, as few times as the checks allow. Run through
//! `scripts/test.sh`, which provides the guest and the network namespace.
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Guest, Nic, SCENARIO_OK, Usernet, lease};

/// Generous: TCG boots take ~4 s each, slower with two at once.
const TIMEOUT: Duration = Duration::from_secs(240);

const MAC_A: &str = "52:54:00:00:00:0a";
const MAC_B: &str = "52:54:00:00:00:0b";
/// B's SLAAC address in fec0::/64 (EUI-64 of `MAC_B`).
const B6: &str = "fec0::5054:ff:fe00:b";
/// Pinned to B with `--dhcp-host`.
const B4: &str = "10.0.2.20";
/// What A asks for on its first boot (so that getting it again on the
/// second, without asking, shows the lease was kept by MAC).
const A4: &str = "10.0.2.30";

/// Lease without asking for anything.
const UDHCPC: &str = "udhcpc -i eth0 -n -q -t 5 -T 2";

/// Waits up to ~10 s for a usable SLAAC address on eth0.
const WAIT_SLAAC: &str = "i=0
while ! ip -6 addr show dev eth0 | grep 'inet6 fec0::' | grep -qv tentative && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
";

/// A TCP echo server on host loopback for `n` connections; its port.
fn echo_server(n: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let port = l.local_addr().expect("addr").port();
    thread::spawn(move || {
        for c in l.incoming().take(n) {
            let Ok(mut c) = c else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
            let mut buf = [0u8; 256];
            if let Ok(k) = c.read(&mut buf) {
                let _ = c.write_all(&buf[..k]);
            }
            let _ = c.shutdown(Shutdown::Both);
        }
    });
    port
}

/// The value of the first `key=VALUE` line in the console.
fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

/// Boots a guest with `mac` on `socket`; its console.
fn boot(socket: &std::path::Path, mac: &str, scenario: &str) -> String {
    let nic = Nic::Switch { socket, mac };
    Guest::run_on(&nic, scenario, &[], TIMEOUT, &mut |_| {})
}

/// Waits until the log shows `n` lines containing `what`.
fn wait_log(un: &Usernet, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while un.log().matches(what).count() < n {
        assert!(Instant::now() < deadline, "no {n}× {what:?}:\n{}", un.log());
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_guests_on_one_switch() {
    let pin = format!("{MAC_B}={B4}");
    let fwd_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let fwd = format!("tcp:127.0.0.1:{fwd_port}-{B4}:7000");
    let mut un = Usernet::spawn(&["--max-guests", "2", "--dhcp-host", &pin, "--hostfwd", &fwd]);
    let port = echo_server(2);
    let a1 = format!(
        "{UDHCPC} -r {A4}
{WAIT_SLAAC}
i=0; while ! ping -c 1 -W 1 {B4} >/dev/null 2>&1 && [ $i -lt 60 ]; do i=$((i+1)); done
ping -c 3 -W 2 {B4} && echo ping4=ok
i=0; while ! ping -6 -c 1 -W 1 {B6} >/dev/null 2>&1 && [ $i -lt 30 ]; do i=$((i+1)); done
ping -6 -c 3 -W 2 {B6} && echo ping6=ok
echo host=$(echo hello-a | timeout 10 socat - TCP:10.0.2.2:{port})
dd if=/dev/urandom of=/tmp/f bs=1M count=4 2>/dev/null
echo sent_sha=$(sha256sum /tmp/f | cut -d' ' -f1)
i=0; ack=; while [ \"$ack\" != got ] && [ $i -lt 40 ]; do ack=$(timeout 60 socat -t 30 - TCP:{B4}:5000 </tmp/f); [ \"$ack\" = got ] || sleep 0.5; i=$((i+1)); done
echo ack=$ack
"
    );
    let a2 = format!(
        "{UDHCPC}
i=0; ack=; while [ \"$ack\" != got ] && [ $i -lt 40 ]; do ack=$(echo hello-again | timeout 10 socat -t 5 - TCP:{B4}:5001); [ \"$ack\" = got ] || sleep 0.5; i=$((i+1)); done
echo again_ack=$ack
"
    );
    let b = format!(
        "{UDHCPC}
socat TCP-LISTEN:7000,fork SYSTEM:'echo from-b' &
{WAIT_SLAAC}
echo host=$(echo hello-b | timeout 10 socat - TCP:10.0.2.2:{port})
timeout 120 socat TCP-LISTEN:5000,reuseaddr SYSTEM:'cat >/tmp/r; echo got'
echo recv_sha=$(sha256sum /tmp/r | cut -d' ' -f1)
timeout 120 socat TCP-LISTEN:5001,reuseaddr SYSTEM:'cat >/tmp/again; echo got'
echo again=$(cat /tmp/again)
"
    );
    let socket = un.socket().to_path_buf();
    let (out_a1, out_a2, out_b, forwarded) = thread::scope(|s| {
        let guest_b = s.spawn(|| boot(&socket, MAC_B, &b));
        let guest_a = s.spawn(|| {
            let first = boot(&socket, MAC_A, &a1);
            let second = boot(&socket, MAC_A, &a2);
            (first, second)
        });
        // Both connected: a third client is refused, the two keep going.
        wait_log(&un, "guest connected", 2);
        let mut extra = UnixStream::connect(&socket).expect("connect a third client");
        extra
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        let refused = extra.read(&mut byte);
        assert!(
            matches!(refused, Ok(0)),
            "the third client was not closed: {refused:?}\n{}",
            un.log()
        );
        // A forward naming B's address reaches B (not A).
        let deadline = Instant::now() + Duration::from_secs(90);
        let forwarded = loop {
            let mut got = String::new();
            if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", fwd_port)) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = c.read_to_string(&mut got);
            }
            if got.contains("from-b") || Instant::now() > deadline {
                break got;
            }
            thread::sleep(Duration::from_millis(500));
        };
        let (a1, a2) = guest_a.join().expect("guest A");
        (a1, a2, guest_b.join().expect("guest B"), forwarded)
    });
    let log = un.log();
    let ctx = format!("A1:\n{out_a1}\nA2:\n{out_a2}\nB:\n{out_b}\nusernet log:\n{log}");
    assert!(log.contains("guest refused: --max-guests 2"), "{ctx}");
    assert_eq!(
        forwarded.trim(),
        "from-b",
        "--hostfwd to B's address: {ctx}"
    );
    assert_eq!(
        lease(&out_b).get("ip").map(String::as_str),
        Some(B4),
        "{ctx}"
    );
    assert_eq!(
        lease(&out_a1).get("ip").map(String::as_str),
        Some(A4),
        "{ctx}"
    );
    assert_eq!(
        lease(&out_a2).get("ip").map(String::as_str),
        Some(A4),
        "same MAC, same lease after reconnecting: {ctx}"
    );
    assert!(out_a1.contains("ping4=ok"), "{ctx}");
    assert!(out_a1.contains("ping6=ok"), "{ctx}");
    assert_eq!(field(&out_a1, "host"), Some("hello-a"), "{ctx}");
    assert_eq!(field(&out_b, "host"), Some("hello-b"), "{ctx}");
    let sent = field(&out_a1, "sent_sha").expect("A's hash");
    assert_eq!(sent.len(), 64, "{ctx}");
    assert_eq!(field(&out_b, "recv_sha"), Some(sent), "{ctx}");
    assert_eq!(field(&out_b, "again"), Some("hello-again"), "{ctx}");
    assert_eq!(field(&out_a1, "ack"), Some("got"), "{ctx}");
    assert_eq!(field(&out_a2, "again_ack"), Some("got"), "{ctx}");
    for out in [&out_a1, &out_a2, &out_b] {
        assert!(out.contains(SCENARIO_OK), "{ctx}");
    }
    assert!(log.matches("guest disconnected").count() >= 2, "{ctx}");
    un.assert_running();
}

/// What [`sink`] read: bytes, and when the first and last came.
type Sunk = (usize, Option<(Instant, Instant)>);

/// A TCP sink on host loopback for one connection: its port, and a handle
/// giving the bytes it read and when the first and last came.
fn sink() -> (u16, thread::JoinHandle<Sunk>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let port = l.local_addr().expect("addr").port();
    let t = thread::spawn(move || {
        let Ok((mut c, _)) = l.accept() else {
            return (0, None);
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
        let (mut total, mut span) = (0, None::<(Instant, Instant)>);
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = c.read(&mut buf) {
            total += n;
            let now = Instant::now();
            span = Some((span.map_or(now, |s| s.0), now));
        }
        // Tell the guest how much arrived, so it does not power off with
        // data still in its send buffer.
        let _ = c.write_all(total.to_string().as_bytes());
        (total, span)
    });
    (port, t)
}

/// A UDP socket on host loopback counting what arrives for up to `secs`,
/// or until `stop`: its port, and a handle giving the arrival times.
fn flood_counter(secs: u64, stop: Arc<AtomicBool>) -> (u16, thread::JoinHandle<Vec<Instant>>) {
    let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let port = u.local_addr().expect("addr").port();
    u.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let t = thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < end && !stop.load(Ordering::Relaxed) && seen.len() < 1_000_000 {
            if u.recv(&mut buf).is_ok() {
                seen.push(Instant::now());
            }
        }
        seen
    });
    (port, t)
}

/// With `--isolate`, the guests cannot reach each other but each reaches
/// the host; and while one floods the gateway with UDP as fast as it can,
/// the other's 8 MiB TCP upload to the host still completes.
#[test]
fn isolate_keeps_guests_apart_but_not_from_the_host() {
    let pin = format!("{MAC_B}={B4}");
    let un = Usernet::spawn(&["--isolate", "--dhcp-host", &pin]);
    let port = echo_server(2);
    let (sink_port, sink) = sink();
    let stop = Arc::new(AtomicBool::new(false));
    let (flood_port, flood) = flood_counter(150, stop.clone());
    let common = |me: &str| {
        format!(
            "{UDHCPC}
ping -c 1 -W 2 10.0.2.2 >/dev/null && echo gw=ok
echo host=$(echo hello-{me} | timeout 10 socat - TCP:10.0.2.2:{port})
"
        )
    };
    let pings = |peer: &str| {
        format!(
            "ok=0; i=0; while [ $i -lt 8 ]; do ping -c 1 -W 1 {peer} >/dev/null 2>&1 && ok=$((ok+1)); i=$((i+1)); done
echo peer=$ok
"
        )
    };
    let a = format!(
        "{}{}echo upload=$(dd if=/dev/zero bs=1M count=8 2>/dev/null | timeout 90 socat -t 30 - TCP:10.0.2.2:{sink_port})\n",
        common("a"),
        pings(B4)
    );
    let b = format!(
        "{}(timeout 25 socat -u -b 1024 /dev/zero UDP:10.0.2.2:{flood_port}; echo flood=done) &\n{}wait\n",
        common("b"),
        pings("10.0.2.15")
    );
    let socket = un.socket().to_path_buf();
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| boot(&socket, MAC_A, &a));
        let b = s.spawn(|| boot(&socket, MAC_B, &b));
        (a.join().expect("A"), b.join().expect("B"))
    });
    stop.store(true, Ordering::Relaxed);
    let (bytes, span) = sink.join().expect("sink");
    let flood = flood.join().expect("flood counter");
    let ctx = format!(
        "A:\n{a}\nB:\n{b}\nsink: {bytes} bytes\nflood: {} datagrams\nusernet log:\n{}",
        flood.len(),
        un.log()
    );
    assert_eq!(
        lease(&a).get("ip").map(String::as_str),
        Some("10.0.2.15"),
        "{ctx}"
    );
    for (me, out) in [("a", &a), ("b", &b)] {
        assert!(out.contains("gw=ok"), "{ctx}");
        assert_eq!(field(out, "host"), Some(&*format!("hello-{me}")), "{ctx}");
        assert_eq!(field(out, "peer"), Some("0"), "{ctx}");
    }
    assert_eq!(bytes, 8 << 20, "{ctx}");
    assert_eq!(
        field(&a, "upload"),
        Some(&*(8usize << 20).to_string()),
        "{ctx}"
    );
    let (first, last) = span.expect("the upload arrived");
    let during = flood.iter().filter(|t| (first..=last).contains(t)).count();
    assert!(during > 0, "B did not flood during A's upload: {ctx}");
}
