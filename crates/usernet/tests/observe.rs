//! Seeing inside a running usernet, end to end: `list_flows`,
//! `list_guests` and `stats` on the API socket, `usernet flows|guests|
//! stats`, and `--metrics` scraped and parsed by the Prometheus client
//! library's OpenMetrics parser (Debian's python3-prometheus-client),
//! with the sandbox on; and hostile clients of both sockets (1 MiB of
//! junk, a client that never reads, a slowloris) that must not stall the
//! stack.
//!
//! The namespace test holds a TCP connection to a host server, a UDP
//! association and a ping (to 192.0.2.7, put on this network namespace's
//! loopback so a ping leaves through a host ping socket) open while it
//! looks; the QEMU test does the same from a guest.
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::ns::{Proc, Server, api, free_port, wait_for_socket};
use common::{Guest, TempDir, TestResolver, Usernet, assert_isolated_netns, usernet_output};
use serde_json::Value;

/// What the host TCP server sends back to each client, and then holds the
/// connection open.
const REPLY_BYTES: usize = 3000;

/// A TCP server on 127.0.0.1 that reads a line, answers with
/// [`REPLY_BYTES`] bytes and keeps the connection open until its client
/// closes it (or 60 s pass).
fn holding_server() -> (u16, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let h = thread::spawn(move || {
        let Ok((mut c, _)) = l.accept() else { return };
        let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
        let mut buf = [0u8; 64];
        let _ = c.read(&mut buf);
        let _ = c.write_all(&[b'x'; REPLY_BYTES]);
        // Until the client goes.
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    });
    (port, h)
}

/// Flows in the namespace test beyond the three it looks at: enough for
/// a `list_flows` reply (~300 bytes a flow) to overflow a unix socket's
/// buffer (~200 KiB) even if half of them are lost, so that a client that never reads it keeps usernet from
/// finishing the write.
const MANY_FLOWS: usize = 2000;

/// A Python program sending one datagram from each of [`MANY_FLOWS`]
/// sockets (one flow each) to the gateway's `port`.
fn many_udp_flows(port: u16) -> String {
    format!(
        "import socket, time
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range({MANY_FLOWS})]
for i, s in enumerate(socks):
    s.sendto(b\"x\", (\"10.0.2.2\", {port}))
    if i % 100 == 99: time.sleep(0.02)
print(\"sent\", len(socks))"
    )
}

/// Puts 192.0.2.7 on this (the test's own) network namespace's loopback.
fn ping_target() {
    assert_isolated_netns();
    let _ = Command::new("ip")
        .args(["addr", "add", "192.0.2.7/32", "dev", "lo"])
        .stderr(Stdio::null())
        .status();
}

/// The start of a long text for a failure message (a `list_flows` reply
/// of the namespace test runs to 600 KB).
fn brief(text: &dyn std::fmt::Display) -> String {
    let text = text.to_string();
    match text.char_indices().nth(2000) {
        Some((i, _)) => format!("{}... ({} bytes)", &text[..i], text.len()),
        None => text,
    }
}

/// An API request's reply, parsed.
fn ask(sock: &Path, cmd: &str) -> Value {
    let reply = api(sock, &format!(r#"{{"execute": "{cmd}"}}"#));
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{cmd}: {e}: {}", brief(&reply)))
}

/// The flows of `proto` in a `list_flows` reply.
fn flows_of<'a>(flows: &'a Value, proto: &str) -> Vec<&'a Value> {
    flows["return"]["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .filter(|f| f["proto"] == proto)
        .collect()
}

/// `GET path` on the metrics port: status line and body.
fn http_get(addr: SocketAddr, request: &str) -> (String, String) {
    let mut c = TcpStream::connect(addr).expect("connect to --metrics");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(request.as_bytes()).expect("write");
    let mut text = String::new();
    c.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// Scrapes /metrics and parses it with the Prometheus client's
/// OpenMetrics parser: sample name + sorted labels -> value.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = http_get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    const PARSE: &str = "
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ','.join('%s=%s' % kv for kv in sorted(s.labels.items()))
        out[s.name + '{' + labels + '}'] = s.value
print(json.dumps(out))
";
    // Debian's python3 (where python3-prometheus-client is), not another
    // one on PATH.
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup.sh installs python3-prometheus-client)");
    py.stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = py.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

/// Checks the metrics against `list_flows` and `stats` taken around the
/// scrape (retrying while flows come and go), and returns the scrape.
fn check_metrics_agree(sock: &Path, addr: SocketAddr) -> BTreeMap<String, f64> {
    for _ in 0..10 {
        let before = ask(sock, "list_flows");
        let stats = ask(sock, "stats");
        let m = scrape(addr);
        let after = ask(sock, "list_flows");
        let count = |v: &Value, p| flows_of(v, p).len() as f64;
        if ["tcp", "udp", "icmp"]
            .iter()
            .any(|p| count(&before, p) != count(&after, p))
        {
            thread::sleep(Duration::from_millis(200));
            continue;
        }
        for p in ["tcp", "udp", "icmp"] {
            let key = format!("usernet_open_flows{{proto={p}}}");
            assert_eq!(
                m.get(&key),
                Some(&count(&before, p)),
                "{key}: {}",
                brief(&format!("{m:?}"))
            );
        }
        // Counters only grow: the scrape is at least what stats said.
        let counters = stats["return"]["counters"].as_object().expect("counters");
        for (name, v) in counters {
            let key = format!("usernet_{name}_total{{}}");
            let scraped = *m
                .get(&key)
                .unwrap_or_else(|| panic!("no {key}: {}", brief(&format!("{m:?}"))));
            assert!(
                scraped >= v.as_f64().expect("number"),
                "{key} {scraped} < {v}"
            );
        }
        let guests = stats["return"]["guests"].as_f64();
        assert_eq!(m.get("usernet_guests{}").copied(), guests);
        return m;
    }
    panic!("flows kept changing");
}

/// Hostile clients of the API and metrics sockets, then a check that both
/// still answer promptly.
fn hostile_clients(sock: &Path, metrics: SocketAddr) {
    // 1 MiB of junk on the API socket, written from a thread (usernet
    // stops reading at its bound; the writer gives up then).
    let junk_api = {
        let c = UnixStream::connect(sock).expect("connect");
        thread::spawn(move || {
            let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
            let _ = (&c).write_all(&vec![b'{'; 1 << 20]);
            let mut s = String::new();
            let _ = (&c).read_to_string(&mut s);
            s
        })
    };
    // Clients that ask for the biggest reply and never read it, more of
    // them than usernet keeps open.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut c = UnixStream::connect(sock).expect("connect");
        c.write_all(br#"{"execute": "list_flows"}"#).expect("write");
        idle.push(c);
    }
    // The same against the metrics port, plus a slowloris that never
    // ends its request head.
    let junk_http = thread::spawn(move || {
        let mut c = TcpStream::connect(metrics).expect("connect");
        let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = c.write_all(&vec![b'a'; 1 << 20]);
    });
    let mut slow = TcpStream::connect(metrics).expect("connect");
    slow.write_all(b"GET /metr").expect("write");
    let mut idle_http = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(metrics).expect("connect");
        c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .expect("write");
        idle_http.push(c);
    }
    let started = Instant::now();
    assert!(ask(sock, "stats")["return"]["counters"].is_object());
    let _ = scrape(metrics);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answers took {:?} beside hostile clients",
        started.elapsed()
    );
    let junk_reply = junk_api.join().expect("junk writer");
    assert!(
        junk_reply.is_empty() || junk_reply.contains("bad request"),
        "{junk_reply}"
    );
    let _ = junk_http.join();
    // Other paths and methods.
    assert_eq!(
        http_get(metrics, "GET / HTTP/1.1\r\n\r\n").0,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        http_get(metrics, "POST /metrics HTTP/1.1\r\n\r\n").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        http_get(metrics, "\u{16}\u{3}\u{1}junk\r\n\r\n").0,
        "HTTP/1.1 400 Bad Request"
    );
    // Unknown commands and bad JSON keep slirp4netns's replies.
    assert_eq!(
        api(sock, r#"{"execute": "list_everything"}"#),
        r#"{"error":{"desc":"bad request: unknown execute"}}"#
    );
    assert_eq!(
        api(sock, "{"),
        r#"{"error":{"desc":"bad request: cannot parse JSON"}}"#
    );
    drop((slow, idle, idle_http));
}

/// Waits until the TCP flow has its reply and the ping and UDP are
/// answered; `log` (which may panic itself) is shown if they never are.
fn wait_for_flows(sock: &Path, timeout: Duration, log: &mut dyn FnMut() -> String) {
    let deadline = Instant::now() + timeout;
    loop {
        let flows = ask(sock, "list_flows");
        let answered = |p, key: &str, n: u64| {
            flows_of(&flows, p)
                .iter()
                .any(|f| f["to_guest"][key].as_u64() >= Some(n))
        };
        if answered("tcp", "bytes", REPLY_BYTES as u64)
            && answered("udp", "packets", 1)
            && answered("icmp", "packets", 1)
        {
            return;
        }
        let text = log();
        assert!(
            Instant::now() < deadline,
            "flows never came up: {}\n{text}",
            brief(&flows)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `usernet flows|guests|stats ARGS` and returns its stdout, checking
/// it succeeded.
fn show(cmd: &str, sock: &Path, json: bool) -> String {
    let mut args = vec![cmd, "--api-socket", sock.to_str().expect("path")];
    if json {
        args.push("--json");
    }
    let out = usernet_output(&args, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "usernet {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The checks shared by both modes, while the guest holds its flows.
fn check_everything(sock: &Path, metrics: SocketAddr, tcp_port: u16, udp_port: u16, guest: &str) {
    let flows = ask(sock, "list_flows");
    let tcp: Vec<_> = flows_of(&flows, "tcp")
        .into_iter()
        .filter(|f| f["remote_port"] == tcp_port && f["state"] == "established")
        .collect();
    assert_eq!(tcp.len(), 1, "{}", brief(&flows));
    let t = tcp[0];
    assert_eq!(t["guest_addr"], guest, "{t}");
    assert_eq!(t["remote_addr"], "10.0.2.2", "{t}");
    assert_eq!(t["host_addr"], "127.0.0.1", "{t}");
    assert_eq!(t["direction"], "out", "{t}");
    assert!(t["guest_mac"].is_string(), "{t}");
    assert_eq!(t["to_host"]["bytes"], 6, "\"hello\\n\": {t}");
    assert_eq!(t["to_guest"]["bytes"], REPLY_BYTES, "{t}");
    assert!(t["to_guest"]["packets"].as_u64() >= Some(1), "{t}");
    assert!(t["age_ms"].as_u64() >= t["idle_ms"].as_u64(), "{t}");
    let udp = flows_of(&flows, "udp");
    assert!(
        udp.iter()
            .any(|f| f["remote_port"] == udp_port && f["to_guest"]["packets"] == 1),
        "{}",
        brief(&flows)
    );
    let icmp = flows_of(&flows, "icmp");
    assert!(
        icmp.iter().any(
            |f| f["remote_addr"] == "192.0.2.7" && f["to_guest"]["packets"].as_u64() >= Some(1)
        ),
        "{}",
        brief(&flows)
    );

    let guests = ask(sock, "list_guests");
    let g = &guests["return"]["guests"];
    assert_eq!(g.as_array().map(Vec::len), Some(1), "{guests}");
    assert_eq!(g[0]["ipv4"], guest, "{guests}");
    assert_eq!(g[0]["mac"], t["guest_mac"], "{guests}");
    assert!(g[0]["from_guest"]["frames"].as_u64() > Some(3), "{guests}");

    let stats = ask(sock, "stats");
    let c = &stats["return"]["counters"];
    assert!(
        c["frames_in"].as_u64() >= g[0]["from_guest"]["frames"].as_u64(),
        "{stats}"
    );
    assert!(
        stats["return"]["open_flows"]["tcp"].as_u64() >= Some(1),
        "{stats}"
    );

    // The commands: tables, and --json as the API replied.
    let table = show("flows", sock, false);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.starts_with("PROTO  DIR  STATE"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&format!("10.0.2.2:{tcp_port}")))
        .unwrap_or_else(|| panic!("no row for the TCP flow:\n{table}"));
    assert!(row.starts_with("tcp    out  established"), "{table}");
    assert!(row.contains(&format!("127.0.0.1:{tcp_port}")), "{table}");
    assert!(row.contains(" 1/6 "), "{table}");
    // Columns line up: every row's REMOTE column starts where the header's does.
    let col = header.find("REMOTE").expect("REMOTE");
    for l in table.lines().skip(1) {
        assert_eq!(l.as_bytes().get(col - 2), Some(&b' '), "{table}");
    }
    let json: Value = serde_json::from_str(&show("flows", sock, true)).expect("--json");
    assert!(json["return"]["flows"].is_array());
    let guests_table = show("guests", sock, false);
    assert!(guests_table.contains(guest), "{guests_table}");
    let stats_table = show("stats", sock, false);
    assert!(
        stats_table.lines().any(|l| l.starts_with("frames_in ")),
        "{stats_table}"
    );

    let first = check_metrics_agree(sock, metrics);
    let mac = t["guest_mac"].as_str().expect("mac");
    let key = format!("usernet_guest_frames_from_guest_total{{mac={mac}}}");
    assert!(first.get(&key).copied() > Some(3.0), "{key}: {first:?}");
    hostile_clients(sock, metrics);
    let second = check_metrics_agree(sock, metrics);
    for (k, v) in &first {
        if k.contains("_total") {
            assert!(second.get(k).copied() >= Some(*v), "{k} went down");
        }
    }
}

/// A client of the API that is gone: one line, exit status 1.
#[test]
fn show_commands_fail_in_one_line() {
    let dir = TempDir::new("observe-cli");
    let missing = dir.join("nothing.sock");
    let out = usernet_output(
        &["flows", "--api-socket", missing.to_str().expect("path")],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("usernet: --api-socket "), "{err}");
    let out = usernet_output(&["stats"], Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(2),
        "no --api-socket is a usage error"
    );
}

#[test]
fn ns_flows_stats_and_metrics() {
    ping_target();
    let resolver = TestResolver::start();
    let dir = TempDir::new("observe-ns");
    let sock = dir.join("api.sock");
    let done = dir.join("done");
    let (tcp_port, tcp_server) = holding_server();
    let udp = Server::udp_echo("127.0.0.1:0");
    let mport = free_port();
    let metrics: SocketAddr = ([127, 0, 0, 1], mport).into();
    // Flows held open until the test touches `done` (at most 60 s).
    let script = format!(
        "(echo hello; while [ ! -e {done} ]; do sleep 0.1; done) | socat -u - TCP:10.0.2.2:{tcp_port} &
echo ping | socat -u - UDP:10.0.2.2:{udp} &
busybox ping -c 2 -W 5 192.0.2.7
/usr/bin/python3 -c '{many}'
for i in $(seq 600); do [ -e {done} ] && break; sleep 0.1; done
wait
",
        done = done.display(),
        udp = udp.port(),
        many = many_udp_flows(udp.port()),
    );
    let log = std::fs::File::create(dir.join("usernet.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_usernet"))
        .args(["ns", "--api-socket"])
        .arg(&sock)
        .args(["--metrics", &mport.to_string()])
        .args([
            "--dns-upstream",
            &resolver.upstream_arg(),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("start usernet ns");
    let mut proc = Proc(child);
    let read_log = || std::fs::read_to_string(dir.join("usernet.log")).unwrap_or_default();
    wait_for_socket(&sock, &read_log);
    wait_for_flows(&sock, Duration::from_secs(30), &mut || read_log());
    let deadline = Instant::now() + Duration::from_secs(30);
    // Half of them will do (a burst from the namespace may lose some in
    // the tap's queue before usernet reads them).
    loop {
        let n = flows_of(&ask(&sock, "list_flows"), "udp").len();
        if n > MANY_FLOWS / 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} UDP flows\n{}", read_log());
        thread::sleep(Duration::from_millis(100));
    }
    check_everything(&sock, metrics, tcp_port, udp.port(), "10.0.2.100");
    std::fs::write(&done, b"").expect("done");
    let status = common::wait_timeout(&mut proc.0, Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", read_log());
    let _ = tcp_server.join();
    assert!(!read_log().contains("denied"), "{}", read_log());
}

#[test]
fn qemu_flows_stats_and_metrics() {
    ping_target();
    let (tcp_port, tcp_server) = holding_server();
    let udp = Server::udp_echo("127.0.0.1:0");
    let mport = free_port();
    let metrics: SocketAddr = ([127, 0, 0, 1], mport).into();
    let sock_dir = TempDir::new("observe-qemu");
    let sock = sock_dir.join("api.sock");
    let mut un = Usernet::spawn(&[
        "--api-socket",
        sock.to_str().expect("path"),
        "--metrics",
        &format!("127.0.0.1:{mport}"),
    ]);
    // The guest holds its flows for 25 s: the host side looks meanwhile.
    let scenario = format!(
        "udhcpc -i eth0 -q -n -t 5 >/dev/null 2>&1
(echo hello; sleep 25) | socat -u - TCP:10.0.2.2:{tcp_port} &
echo ping | socat -u - UDP:10.0.2.2:{udp} &
ping -c 2 -W 5 192.0.2.7
wait
",
        udp = udp.port(),
    );
    let socket = un.socket().to_owned();
    let guest = thread::spawn(move || Guest::run(&socket, &scenario, Duration::from_secs(120)));
    wait_for_flows(&sock, Duration::from_secs(90), &mut || {
        un.assert_running();
        un.log()
    });
    check_everything(&sock, metrics, tcp_port, udp.port(), "10.0.2.15");
    let console = guest.join().expect("guest");
    assert!(console.contains("2 packets received"), "{console}");
    un.assert_running();
    assert!(un.stop().success(), "{}", un.log());
    let _ = tcp_server.join();
}
