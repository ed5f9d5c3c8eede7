//! Issue 7: `--restrict`, `--allow` and `--deny` end to end.
//!
//! Each blocked destination has a live host server behind it, so a
//! refusal cannot be mistaken for "nobody there": the test asserts the
//! server saw nothing, the client saw the refusal (a reset, or an ICMP
//! error turned into "No route to host" / "Permission denied"), and the
//! capture (`--pcap`) holds the stack's ICMP "administratively prohibited"
//! (IPv4 type 3 code 13, IPv6 type 1 code 1) for UDP and ping. Allowed
//! destinations, the DNS forwarder, pings of the gateway and port forwards
//! keep working.
//!
//! The namespace modes (`attach`, `ns`) carry most checks, since they need
//! no boot; one QEMU guest covers TCP, UDP and ping under `--restrict`.
//! Blocked pings go to documentation addresses (192.0.2.1, 2001:db8::1):
//! refused inside usernet, and had they leaked they would have met the
//! isolated test namespace, which has no route for them.
mod common;

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::ns::{Proc, Server, free_port, in_ns, namespace, wait_for_tap};
use common::{
    DHCP, Guest, SCENARIO_OK, TEST_ANSWER, TempDir, TestResolver, Usernet, assert_isolated_netns,
    read_pcap, usernet_output,
};

/// ICMP "communication administratively prohibited" (RFC 1812 5.2.7.1).
const V4_PROHIBITED: u8 = 13;
/// ICMPv6 "communication with destination administratively prohibited"
/// (RFC 4443 3.1).
const V6_PROHIBITED: u8 = 1;

/// The ICMP(v6) destination-unreachable messages in a capture, as (code,
/// destination of the quoted packet).
fn unreachables(pcap: &Path) -> Vec<(u8, IpAddr)> {
    let mut found = Vec::new();
    for f in read_pcap(pcap) {
        let (Some(ethertype), Some(ip)) = (f.get(12..14), f.get(14..)) else {
            continue;
        };
        let hit = match ethertype {
            [0x08, 0x00] => {
                let ihl = usize::from(ip.first().map_or(0, |b| b & 0x0f)) * 4;
                let icmp = ip.get(ihl..).filter(|_| ip.get(9) == Some(&1));
                icmp.filter(|m| m.first() == Some(&3)).and_then(|m| {
                    let dst: [u8; 4] = m.get(8 + 16..8 + 20)?.try_into().ok()?;
                    Some((m[1], IpAddr::from(Ipv4Addr::from(dst))))
                })
            }
            [0x86, 0xdd] => {
                let icmp = ip.get(40..).filter(|_| ip.get(6) == Some(&58));
                icmp.filter(|m| m.first() == Some(&1)).and_then(|m| {
                    let dst: [u8; 16] = m.get(8 + 24..8 + 40)?.try_into().ok()?;
                    Some((m[1], IpAddr::from(Ipv6Addr::from(dst))))
                })
            }
            _ => None,
        };
        found.extend(hit);
    }
    found
}

/// The value of the first `key=value` line.
fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
}

/// The lines starting with `prefix`, without it.
fn prefixed(out: &str, prefix: &str) -> String {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits (bounded) for a SLAAC address on `dev` past duplicate address
/// detection, so IPv6 checks do not race it.
fn wait_slaac(dev: &str) -> String {
    format!(
        "i=0
while ! ip -6 addr show dev {dev} | grep 'inet6 fec0::' | grep -qv tentative && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
"
    )
}

/// A TCP client line printing `NAME=` and what `dst` sent (or the error).
fn tcp_line(name: &str, dst: &str) -> String {
    format!("echo {name}=$(timeout 10 socat -T 5 - {dst} </dev/null 2>&1)\n")
}

/// A UDP client line printing `NAME=` and the reply (or the error).
fn udp_line(name: &str, dst: &str) -> String {
    format!("echo {name}=$(echo hi | timeout 10 socat -T 3 - {dst} 2>&1)\n")
}

/// Asserts that the busybox ping whose output lines start with `label: `
/// got `received` replies.
fn assert_pings(out: &str, label: &str, received: u32, ctx: &dyn Fn() -> String) {
    let lines = prefixed(out, &format!("{label}: "));
    assert!(
        lines.contains(&format!("{received} packets received")),
        "{label}: want {received} replies\n{}",
        ctx()
    );
}

/// Whether `nslookup` output has an answer line `Address: ADDR`.
fn has_address(nslookup: &str, addr: &str) -> bool {
    nslookup
        .lines()
        .any(|l| l.strip_prefix("Address:").map(str::trim) == Some(addr))
}

/// Connects to 127.0.0.1:`port` until the peer sends something (the
/// server in the namespace may not listen yet); returns it.
fn fetch_with_retry(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut got = String::new();
            if c.read_to_string(&mut got).is_ok() && !got.is_empty() {
                return got;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing through the forward on {port}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// `usernet attach --restrict` with holes for one TCP and one UDP port on
/// the gateway and one TCP port on the IPv6 gateway: those pass, the
/// other ports and outside pings are refused in both families, gateway
/// pings and local DNS names are served but other names are not forwarded,
/// and a port forward from the host works.
#[test]
fn attach_restrict_allows_only_the_holes() {
    assert_isolated_netns();
    let resolver = TestResolver::start();
    let tcp4_ok = Server::tcp_banner("127.0.0.1:0", "tcp4-ok");
    let tcp4_no = Server::tcp_banner("127.0.0.1:0", "tcp4-leaked");
    let udp4_ok = Server::udp_echo("127.0.0.1:0");
    let udp4_no = Server::udp_echo("127.0.0.1:0");
    let tcp6_ok = Server::tcp_banner("[::1]:0", "tcp6-ok");
    let tcp6_no = Server::tcp_banner("[::1]:0", "tcp6-leaked");
    let udp6_no = Server::udp_echo("[::1]:0");
    let fwd = free_port();

    let ns = namespace();
    let dir = TempDir::new("restrict");
    let pcap = dir.join("link.pcap");
    let pid = ns.pid().to_string();
    let args: Vec<String> = [
        "attach".into(),
        "--dns-upstream".into(),
        resolver.upstream_arg(),
        "--restrict".into(),
        format!("--allow=10.0.2.2:{}", tcp4_ok.port()),
        format!("--allow=10.0.2.2:{}", udp4_ok.port()),
        format!("--allow=[fec0::2]:{}", tcp6_ok.port()),
        format!("--hostfwd=tcp:127.0.0.1:{fwd}-:80"),
        format!("--pcap={}", pcap.display()),
        pid.clone(),
    ]
    .into();
    let log_file = std::fs::File::create(dir.join("usernet.log")).expect("log");
    let _usernet = Proc(
        Command::new(env!("CARGO_BIN_EXE_usernet"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup"))
            .stderr(log_file)
            .spawn()
            .expect("start usernet attach"),
    );
    let log = || std::fs::read_to_string(dir.join("usernet.log")).unwrap_or_default();
    wait_for_tap(ns.pid(), "tap0", &log);

    let mut script = wait_slaac("tap0");
    script += &tcp_line("tcp4_ok", &format!("TCP:10.0.2.2:{}", tcp4_ok.port()));
    script += &tcp_line("tcp4_no", &format!("TCP:10.0.2.2:{}", tcp4_no.port()));
    script += &udp_line("udp4_ok", &format!("UDP:10.0.2.2:{}", udp4_ok.port()));
    script += &udp_line("udp4_no", &format!("UDP:10.0.2.2:{}", udp4_no.port()));
    script += &tcp_line("tcp6_ok", &format!("TCP6:[fec0::2]:{}", tcp6_ok.port()));
    script += &tcp_line("tcp6_no", &format!("TCP6:[fec0::2]:{}", tcp6_no.port()));
    script += &udp_line("udp6_no", &format!("UDP6:[fec0::2]:{}", udp6_no.port()));
    script += "busybox ping -c 1 -W 3 192.0.2.1 2>&1 | sed 's/^/ping4_no: /'
busybox ping -6 -c 1 -W 3 2001:db8::1 2>&1 | sed 's/^/ping6_no: /'
busybox ping -c 1 -W 5 10.0.2.2 2>&1 | sed 's/^/ping4_gw: /'
busybox ping -6 -c 1 -W 5 fec0::2 2>&1 | sed 's/^/ping6_gw: /'
busybox nslookup www.usernet.test 10.0.2.3 2>&1 | sed 's/^/dns_fwd: /'
busybox nslookup host.internal 10.0.2.3 2>&1 | sed 's/^/dns_local: /'
";
    let (_, out) = in_ns(ns.pid(), &script);
    let ctx = || format!("{out}\nlog:\n{}", log());

    // Holes pass.
    assert_eq!(field(&out, "tcp4_ok"), Some("tcp4-ok"), "{}", ctx());
    assert_eq!(field(&out, "udp4_ok"), Some("echo:hi"), "{}", ctx());
    assert_eq!(field(&out, "tcp6_ok"), Some("tcp6-ok"), "{}", ctx());
    // Everything else is refused at once, and never reaches its server.
    let tcp4 = field(&out, "tcp4_no").unwrap_or_default();
    assert!(tcp4.contains("Connection refused"), "{}", ctx());
    let tcp6 = field(&out, "tcp6_no").unwrap_or_default();
    assert!(tcp6.contains("Connection refused"), "{}", ctx());
    let udp4 = field(&out, "udp4_no").unwrap_or_default();
    assert!(udp4.contains("No route to host"), "{}", ctx());
    let udp6 = field(&out, "udp6_no").unwrap_or_default();
    assert!(udp6.contains("Permission denied"), "{}", ctx());
    for (name, server) in [
        ("tcp4", &tcp4_no),
        ("udp4", &udp4_no),
        ("tcp6", &tcp6_no),
        ("udp6", &udp6_no),
    ] {
        assert_eq!(server.served(), 0, "{name} leaked past --restrict");
    }
    assert_pings(&out, "ping4_no", 0, &ctx);
    assert_pings(&out, "ping6_no", 0, &ctx);
    // The stack's own services still answer.
    assert_pings(&out, "ping4_gw", 1, &ctx);
    assert_pings(&out, "ping6_gw", 1, &ctx);
    // DNS: configured names are answered; forwarding upstream is egress,
    // which no --allow opened here, so the resolver never hears a query.
    let dns = prefixed(&out, "dns_local: ");
    assert!(has_address(&dns, "10.0.2.2"), "{dns}\n{}", ctx());
    let dns = prefixed(&out, "dns_fwd: ");
    assert!(
        !has_address(&dns, &TEST_ANSWER.to_string()) && dns.contains("REFUSED"),
        "{dns}\n{}",
        ctx()
    );
    assert_eq!(resolver.queries(), 0, "{}", ctx());
    // The refusals on the wire: administratively prohibited, per family.
    let icmp = unreachables(&pcap);
    let gw4: IpAddr = Ipv4Addr::new(10, 0, 2, 2).into();
    let gw6: IpAddr = "fec0::2".parse().expect("v6");
    for want in [
        (V4_PROHIBITED, gw4),
        (V4_PROHIBITED, "192.0.2.1".parse().expect("v4")),
        (V6_PROHIBITED, gw6),
        (V6_PROHIBITED, "2001:db8::1".parse().expect("v6")),
    ] {
        assert!(icmp.contains(&want), "{want:?} not in {icmp:?}\n{}", ctx());
    }

    // A port forward from the host still reaches the namespace.
    let _server = Proc(
        Command::new("nsenter")
            .args(["-t", &pid, "-U", "-n", "--preserve-credentials"])
            .args([
                "socat",
                "TCP-LISTEN:80,reuseaddr,fork",
                "SYSTEM:echo fwd-ok",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start socat in the namespace"),
    );
    assert_eq!(fetch_with_retry(fwd).trim(), "fwd-ok", "{}", log());
}

/// `usernet ns --deny` without `--restrict`: the denied TCP and UDP ports
/// of either gateway are refused, their neighbours pass.
#[test]
fn ns_deny_blocks_only_the_named_ports() {
    assert_isolated_netns();
    let resolver = TestResolver::start();
    let tcp4_ok = Server::tcp_banner("127.0.0.1:0", "tcp4-ok");
    let tcp4_no = Server::tcp_banner("127.0.0.1:0", "tcp4-leaked");
    let udp4_ok = Server::udp_echo("127.0.0.1:0");
    let udp4_no = Server::udp_echo("127.0.0.1:0");
    let tcp6_ok = Server::tcp_banner("[::1]:0", "tcp6-ok");
    let tcp6_no = Server::tcp_banner("[::1]:0", "tcp6-leaked");
    let dir = TempDir::new("deny");
    let pcap = dir.join("link.pcap");

    let mut script = wait_slaac("tap0");
    script += &tcp_line("tcp4_ok", &format!("TCP:10.0.2.2:{}", tcp4_ok.port()));
    script += &tcp_line("tcp4_no", &format!("TCP:10.0.2.2:{}", tcp4_no.port()));
    script += &udp_line("udp4_ok", &format!("UDP:10.0.2.2:{}", udp4_ok.port()));
    script += &udp_line("udp4_no", &format!("UDP:10.0.2.2:{}", udp4_no.port()));
    script += &tcp_line("tcp6_ok", &format!("TCP6:[fec0::2]:{}", tcp6_ok.port()));
    script += &tcp_line("tcp6_no", &format!("TCP6:[fec0::2]:{}", tcp6_no.port()));
    script += "busybox ping -c 1 -W 5 10.0.2.2 2>&1 | sed 's/^/ping4_gw: /'
busybox ping -c 1 -W 3 192.0.2.1 2>&1 | sed 's/^/ping4_no: /'
";
    let args: Vec<String> = [
        "ns".into(),
        "--dns-upstream".into(),
        resolver.upstream_arg(),
        format!("--deny=10.0.2.2:{}", tcp4_no.port()),
        format!("--deny=10.0.2.2:{}", udp4_no.port()),
        format!("--deny=[fec0::2]:{}", tcp6_no.port()),
        "--deny=192.0.2.0/24".into(),
        format!("--pcap={}", pcap.display()),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script,
    ]
    .into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = usernet_output(&args, Duration::from_secs(60));
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{}:\n{out}", run.status);

    assert_eq!(field(&out, "tcp4_ok"), Some("tcp4-ok"), "{out}");
    assert_eq!(field(&out, "udp4_ok"), Some("echo:hi"), "{out}");
    assert_eq!(field(&out, "tcp6_ok"), Some("tcp6-ok"), "{out}");
    let tcp4 = field(&out, "tcp4_no").unwrap_or_default();
    assert!(tcp4.contains("Connection refused"), "{out}");
    let tcp6 = field(&out, "tcp6_no").unwrap_or_default();
    assert!(tcp6.contains("Connection refused"), "{out}");
    let udp4 = field(&out, "udp4_no").unwrap_or_default();
    assert!(udp4.contains("No route to host"), "{out}");
    for (name, server) in [("tcp4", &tcp4_no), ("udp4", &udp4_no), ("tcp6", &tcp6_no)] {
        assert_eq!(server.served(), 0, "{name} leaked past --deny");
    }
    assert!(
        prefixed(&out, "ping4_gw: ").contains("1 packets received"),
        "{out}"
    );
    let icmp = unreachables(&pcap);
    for dst in ["10.0.2.2", "192.0.2.1"] {
        let want = (V4_PROHIBITED, dst.parse().expect("v4"));
        assert!(icmp.contains(&want), "{want:?} not in {icmp:?}\n{out}");
    }
}

/// A QEMU guest under `--restrict` with one TCP and one UDP hole: TCP,
/// UDP and ping beyond the holes are refused, the holes, DNS through
/// 10.0.2.3 (opened by `--allow 10.0.2.3:53`) and pings of the gateway
/// work.
#[test]
fn qemu_guest_restrict() {
    let tcp_ok = Server::tcp_banner("127.0.0.1:0", "tcp-ok");
    let tcp_no = Server::tcp_banner("127.0.0.1:0", "tcp-leaked");
    let udp_ok = Server::udp_echo("127.0.0.1:0");
    let udp_no = Server::udp_echo("127.0.0.1:0");
    let dir = TempDir::new("restrict-qemu");
    let pcap = dir.join("link.pcap");
    let allow_tcp = format!("10.0.2.2:{}", tcp_ok.port());
    let allow_udp = format!("10.0.2.2:{}", udp_ok.port());
    let pcap_arg = pcap.display().to_string();
    let mut un = Usernet::spawn(&[
        "--restrict",
        "--allow",
        &allow_tcp,
        "--allow",
        &allow_udp,
        "--allow",
        "10.0.2.3:53",
        "--pcap",
        &pcap_arg,
    ]);
    let mut scenario = DHCP.to_owned();
    scenario += &tcp_line("tcp_ok", &format!("TCP:10.0.2.2:{}", tcp_ok.port()));
    scenario += &tcp_line("tcp_no", &format!("TCP:10.0.2.2:{}", tcp_no.port()));
    scenario += &udp_line("udp_ok", &format!("UDP:10.0.2.2:{}", udp_ok.port()));
    scenario += &udp_line("udp_no", &format!("UDP:10.0.2.2:{}", udp_no.port()));
    scenario += "ping -c 1 -W 3 192.0.2.1 2>&1 | sed 's/^/ping_no: /'
ping -c 1 -W 5 10.0.2.2 2>&1 | sed 's/^/ping_gw: /'
nslookup www.usernet.test 10.0.2.3 2>&1 | sed 's/^/dns: /'
";
    let out = Guest::run(un.socket(), &scenario, Duration::from_secs(180));
    un.assert_running();
    let ctx = || format!("{out}\nlog:\n{}", un.log());
    assert!(out.contains(SCENARIO_OK), "scenario failed:\n{}", ctx());

    assert_eq!(field(&out, "tcp_ok"), Some("tcp-ok"), "{}", ctx());
    assert_eq!(field(&out, "udp_ok"), Some("echo:hi"), "{}", ctx());
    let tcp = field(&out, "tcp_no").unwrap_or_default();
    assert!(tcp.contains("Connection refused"), "{}", ctx());
    let udp = field(&out, "udp_no").unwrap_or_default();
    assert!(udp.contains("No route to host"), "{}", ctx());
    assert_eq!(
        tcp_no.served() + udp_no.served(),
        0,
        "leaked past --restrict"
    );
    assert_pings(&out, "ping_no", 0, &ctx);
    assert_pings(&out, "ping_gw", 1, &ctx);
    let dns = prefixed(&out, "dns: ");
    assert!(
        has_address(&dns, &TEST_ANSWER.to_string()),
        "{dns}\n{}",
        ctx()
    );
    let icmp = unreachables(&pcap);
    for dst in ["10.0.2.2", "192.0.2.1"] {
        let want = (V4_PROHIBITED, dst.parse().expect("v4"));
        assert!(icmp.contains(&want), "{want:?} not in {icmp:?}\n{}", ctx());
    }
}
