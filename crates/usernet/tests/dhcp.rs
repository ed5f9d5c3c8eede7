//! Issue 3: DHCPv4 leases and ARP for the gateway, against a real guest.
//!
//! Each test boots the QEMU test guest on a fresh usernet and runs busybox
//! `udhcpc`, whose script prints the lease as `lease.FIELD=VALUE` lines (see
//! `common`). Run through `scripts/test.sh`, which provides the guest and
//! the isolated network namespace.
mod common;

use std::time::Duration;

use common::{
    DHCP, Guest, SCENARIO_OK, TempDir, Usernet, dhcp_message_type, lease, read_pcap, udp_in_frame,
};

/// Generous: a TCG boot takes ~4 s, udhcpc may retry, CI may be slow.
const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn default_network_lease() {
    let mut un = Usernet::spawn(&[
        "--hostname",
        "guest1",
        "--domainname",
        "example.test",
        "--dnssearch",
        "a.test",
        "--dnssearch",
        "b.test",
    ]);
    let out = Guest::run(un.socket(), DHCP, TIMEOUT);
    un.assert_running();
    let l = lease(&out);
    let log = un.log();
    assert_eq!(
        l.get("ip").map(String::as_str),
        Some("10.0.2.15"),
        "{l:?}\n{log}"
    );
    assert_eq!(l["subnet"], "255.255.255.0", "{l:?}");
    assert_eq!(l["router"], "10.0.2.2", "{l:?}");
    assert_eq!(l["dns"], "10.0.2.3", "{l:?}");
    assert_eq!(l["hostname"], "guest1", "{l:?}");
    assert_eq!(l["domain"], "example.test", "{l:?}");
    assert_eq!(l["mtu"], "1500", "{l:?}");
    let search: Vec<&str> = l["search"].split_whitespace().collect();
    assert!(
        search.contains(&"a.test") && search.contains(&"b.test"),
        "{l:?}"
    );
    assert_eq!(
        l.get("configured").map(String::as_str),
        Some("yes"),
        "{l:?}"
    );
    assert!(out.contains(SCENARIO_OK), "udhcpc failed:\n{out}");
}

#[test]
fn custom_network_lease() {
    let mut un = Usernet::spawn(&[
        "--net",
        "192.168.76.0/24",
        "--host",
        "192.168.76.1",
        "--dns",
        "192.168.76.53",
        "--dhcpstart",
        "192.168.76.100",
        "--mtu",
        "9000",
    ]);
    let scenario = format!("{DHCP}ip link show eth0\n");
    let out = Guest::run(un.socket(), &scenario, TIMEOUT);
    un.assert_running();
    let l = lease(&out);
    let log = un.log();
    assert_eq!(
        l.get("ip").map(String::as_str),
        Some("192.168.76.100"),
        "{l:?}\n{log}"
    );
    assert_eq!(l["subnet"], "255.255.255.0", "{l:?}");
    assert_eq!(l["router"], "192.168.76.1", "{l:?}");
    assert_eq!(l["dns"], "192.168.76.53", "{l:?}");
    assert_eq!(l["mtu"], "9000", "{l:?}");
    assert!(
        out.contains("mtu 9000"),
        "the guest did not apply the MTU:\n{out}"
    );
    assert!(out.contains(SCENARIO_OK), "udhcpc failed:\n{out}");
}

#[test]
fn gateway_answers_arp() {
    let mut un = Usernet::spawn(&[]);
    let scenario = format!("{DHCP}arping -c 2 -w 10 -I eth0 10.0.2.2\n");
    let out = Guest::run(un.socket(), &scenario, TIMEOUT);
    un.assert_running();
    assert_eq!(
        lease(&out).get("ip").map(String::as_str),
        Some("10.0.2.15"),
        "no lease:\n{}",
        un.log()
    );
    let rss = un.rss();
    assert!(rss.rss_kib > 0 && rss.hwm_kib >= rss.rss_kib, "{rss:?}");
    let replies = out
        .lines()
        .filter(|l| l.starts_with("Unicast reply from 10.0.2.2 "))
        .count();
    assert!(
        out.contains("Received 2 response") && replies == 2,
        "arping got no 2 replies from the gateway:\n{out}"
    );
}

#[test]
fn pcap_records_the_dhcp_handshake() {
    let dir = TempDir::new("pcap");
    let pcap = dir.join("usernet.pcap");
    let pcap_arg = pcap.to_str().expect("utf-8 temp path");
    let mut un = Usernet::spawn(&["--pcap", pcap_arg]);
    let out = Guest::run(un.socket(), DHCP, TIMEOUT);
    un.assert_running();
    assert!(out.contains(SCENARIO_OK), "udhcpc failed:\n{out}");
    un.stop();

    let frames = read_pcap(&pcap);
    let types: Vec<(u16, u16, u8)> = frames
        .iter()
        .filter_map(|f| udp_in_frame(f))
        .filter(|u| matches!((u.sport, u.dport), (68, 67) | (67, 68)))
        .filter_map(|u| Some((u.sport, u.dport, dhcp_message_type(u.payload)?)))
        .collect();
    // DISCOVER and REQUEST from the client, OFFER and ACK from the server,
    // in that order (other messages may come in between).
    let wanted = [(68, 67, 1), (67, 68, 2), (68, 67, 3), (67, 68, 5)];
    let mut it = types.iter();
    for w in wanted {
        assert!(
            it.any(|t| *t == w),
            "pcap lacks {w:?} in order; DHCP frames (sport, dport, type): {types:?}; {} frames in all",
            frames.len()
        );
    }
}
