//! Floods against the real binary: `usernet attach` serving a namespace
//! whose tap gets raw frames from a sender in the namespace (python3 with
//! an `AF_PACKET` socket on tap0): 100 000 SYNs, 100 000 UDP flows, 100 000
//! IPv4 fragments that never complete. usernet runs with its default flow
//! limit (derived from RLIMIT_NOFILE); after each flood it must still be
//! serving (a new TCP connection from the namespace to a host server on
//! 127.0.0.1 through 10.0.2.2 works) and its peak RSS (`VmHWM`) must stay
//! under 64 MiB.
//!
//! The floods come from spoofed neighbours (10.0.2.101 and up), so the
//! namespace's kernel drops the answers instead of resetting them, and
//! SYNs half go to a host port that listens but never accepts: the flow
//! table fills with embryonic TCP flows or UDP flows, and eviction has to
//! make room. The sender backs off when the tap drops frames, and every
//! loop is bounded in count and time.
//!
//! Also here: the descriptor limit those floods rely on is raised for
//! usernet but not for the command `usernet ns` runs.
//!
//! Runs as root inside `scripts/test.sh`'s network namespace; one flood at
//! a time (a lock), as each wants the CPU.
mod common;

use std::net::TcpListener;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::ns::{HttpServer, Proc, attach, in_ns, namespace, wait_for_tap};
use common::{TempDir, assert_isolated_netns, counter, stopped_counters};

/// Frames per flood.
const FLOOD: u32 = 100_000;
/// The bound on usernet's peak resident set.
const MAX_HWM_KIB: u64 = 64 * 1024;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The sender: `python3 flood.py KIND COUNT SINK_PORT SKIP_PORT`. Builds
/// frames by hand (python has no smoltcp), sends them on tap0 to the
/// gateway's MAC, doubles its pause whenever the tap dropped frames, and
/// prints how many frames the tap passed on.
const SENDER: &str = r#"
import fcntl, socket, struct, sys, time

kind, count, sink, skip = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# /sys shows the outer namespace; /proc/net follows ours.
def stat(name):
    with open("/proc/net/dev") as f:
        for line in f:
            if line.strip().startswith("tap0:"):
                fields = line.split(":", 1)[1].split()
                return int(fields[{"tx_packets": 9, "tx_dropped": 11}[name]])
    raise SystemExit("no tap0 in /proc/net/dev")
def mac(text):
    return bytes(int(x, 16) for x in text.strip().split(":"))
dst_mac = mac(sys.argv[5])

def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def ipv4(src, dst, proto, payload, ident=0, frag=0x4000):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0, src, dst)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return dst_mac + src_mac + b"\x08\x00" + h + payload

def l4(src, dst, proto, segment, at):
    pseudo = src + dst + struct.pack("!BBH", 0, proto, len(segment))
    c = csum(pseudo + segment)
    return segment[:at] + struct.pack("!H", c) + segment[at + 2:]

gw = socket.inet_aton("10.0.2.2")
def frame(i):
    src = socket.inet_aton("10.0.2.%d" % (101 + i // 60000))
    sport = 1024 + i % 60000
    dport = 1 + i % 65000
    if dport >= skip:
        dport += 1
    if kind == "syn":
        if i % 2 == 0:
            dport = sink
        seg = struct.pack("!HHIIBBHHH", sport, dport, i, 0, 5 << 4, 0x02, 64000, 0, 0)
        return ipv4(src, gw, 6, l4(src, gw, 6, seg, 16))
    if kind == "udp":
        seg = struct.pack("!HHHH", sport, dport, 12, 0) + b"floo"
        return ipv4(src, gw, 17, l4(src, gw, 17, seg, 6))
    seg = struct.pack("!HHHH", sport, dport, 8 + 64, 0) + bytes(64)
    return ipv4(src, gw, 17, seg, ident=i & 0xffff, frag=0x2000)

s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("tap0", 0))
src_mac = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", b"tap0"))[18:24]  # SIOCGIFHWADDR
start_tx, start_drop = stat("tx_packets"), stat("tx_dropped")
deadline = time.time() + 80  # the namespace lives 120 s
pause, batch, sent = 0.0005, 200, 0
while sent < count and time.time() < deadline:
    dropped = stat("tx_dropped")
    for i in range(sent, min(sent + batch, count)):
        try:
            s.send(frame(i))
        except OSError:
            time.sleep(0.01)
    sent = min(sent + batch, count)
    if stat("tx_dropped") > dropped:
        pause = min(pause * 2, 0.2)
    else:
        pause = max(pause * 0.9, 0.0002)
    time.sleep(pause)
print("sent %d passed %d dropped %d" % (sent, stat("tx_packets") - start_tx, stat("tx_dropped") - start_drop))
"#;

/// `VmHWM` of a process, in KiB.
fn hwm_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("usernet is running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// The gateway's MAC as the namespace learnt it (after a ping).
fn gateway_mac(pid: u32) -> String {
    let (ok, out) = in_ns(
        pid,
        "busybox ping -c 1 -W 5 10.0.2.2 >/dev/null; ip neigh show 10.0.2.2",
    );
    assert!(ok, "ping the gateway: {out}");
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_else(|| panic!("no lladdr for 10.0.2.2: {out}"))
        .to_owned()
}

/// A new connection from the namespace to `http` through the gateway;
/// retried (the tail of a flood may still be queued) for at most 30 s.
fn assert_connects(pid: u32, http: &HttpServer, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let script = format!(
        "timeout 10 busybox wget -q -O- http://10.0.2.2:{}/",
        http.port()
    );
    loop {
        let (ok, out) = in_ns(pid, &script);
        if ok && out.contains("hello after the flood") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no connection after the flood: {out}\nlog:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(500));
    }
}

fn flood(kind: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert_isolated_netns();
    let http = HttpServer::start("hello after the flood");
    // Listens, never accepts: connects to it stay embryonic in usernet.
    let sink = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
    let sink_port = sink.local_addr().expect("addr").port();
    let ns = namespace();
    let dir = TempDir::new("flood");
    let script = dir.join("flood.py");
    std::fs::write(&script, SENDER).expect("write the sender");
    let pid = ns.pid().to_string();
    let usernet: Proc = attach(&dir, &["--dns-upstream", "127.0.0.1:9", &pid]);
    let log = || std::fs::read_to_string(dir.join("usernet.log")).unwrap_or_default();
    wait_for_tap(ns.pid(), "tap0", &log);
    let mac = gateway_mac(ns.pid());
    assert_connects(ns.pid(), &http, &log);
    let before = hwm_kib(usernet.pid());

    let cmd = format!(
        "timeout 100 python3 {} {kind} {FLOOD} {sink_port} {} {mac}",
        script.display(),
        http.port()
    );
    let (ok, out) = in_ns(ns.pid(), &cmd);
    assert!(ok, "sender failed: {out}");
    assert_connects(ns.pid(), &http, &log);
    let hwm = hwm_kib(usernet.pid());
    let limit = log()
        .lines()
        .find(|l| l.contains("RLIMIT_NOFILE"))
        .map(str::to_owned)
        .unwrap_or_default();
    eprintln!(
        "flood {kind}: {} ; usernet VmHWM {before} KiB before, {hwm} KiB after; {limit}",
        out.trim()
    );
    assert!(
        hwm < MAX_HWM_KIB,
        "peak RSS {hwm} KiB after the {kind} flood, above {MAX_HWM_KIB} KiB"
    );
    let counters = stop(usernet, &log);
    eprintln!("flood {kind}: {counters}");
    let name = if kind == "frag" {
        "fragments"
    } else {
        "flows_evicted"
    };
    assert!(
        counter(&counters, name).unwrap_or(0) > 0,
        "the {kind} flood raised no {name}: {counters}"
    );
    drop(sink);
}

/// Stops usernet with SIGTERM (bounded wait) and returns the counters it
/// logs as it stops.
fn stop(mut usernet: Proc, log: &dyn Fn() -> String) -> String {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &usernet.pid().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(usernet.0.try_wait(), Ok(None)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let text = log();
    stopped_counters(&text)
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no counters logged at exit; log:\n{text}"))
}

#[test]
fn syn_flood() {
    flood("syn");
}

#[test]
fn udp_flood() {
    flood("udp");
}

#[test]
fn fragment_flood() {
    flood("frag");
}

/// usernet raises its own descriptor limit to the hard limit (and sizes
/// the flow table from it), but the command `usernet ns` runs keeps the
/// soft limit usernet was started with.
#[test]
fn ns_raises_its_own_descriptor_limit_not_its_commands() {
    assert_isolated_netns();
    let out = std::process::Command::new("timeout")
        .args(["60", "sh", "-c"])
        .arg(r#"ulimit -Sn 1000 && exec "$0" ns --dns-upstream 127.0.0.1:9 -- sh -c 'echo soft=$(ulimit -Sn) hard=$(ulimit -Hn)'"#)
        .arg(env!("CARGO_BIN_EXE_usernet"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run usernet ns");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stdout}\n{stderr}", out.status);
    let hard = stdout
        .split_once("hard=")
        .map(|(_, h)| h.trim().to_owned())
        .unwrap_or_default();
    assert!(
        stdout.contains("soft=1000 "),
        "the command's limit: {stdout}"
    );
    // An unlimited hard limit is raised to usernet_host::limits::MAX_NOFILE.
    let hard = if hard == "unlimited" {
        (1u64 << 20).to_string()
    } else {
        hard
    };
    assert!(
        stderr.contains(&format!("RLIMIT_NOFILE {hard}: at most")),
        "usernet runs at the hard limit {hard}:\n{stderr}"
    );
}
