//! Floods against the whole stack with fake host sockets: the flow table
//! never exceeds `max_flows` (nor do the host sockets), the queues behind
//! eviction stay bounded, and once the flood is over a fresh guest
//! connection is accepted. The same floods against the real binary are in
//! `crates/usernet/tests/flood.rs`.
mod common;

use std::time::Duration;

use common::{GW, Reply, Seg, assert_serving, complete, connect, harness, replies, tcp4, udp4};
use smoltcp::wire::{Icmpv4DstUnreachable, Ipv4Packet, TcpControl};
use usernet_core::Config;
use usernet_core::testing::Harness;

/// Flood size, as the end-to-end tests.
const FLOOD: u32 = 100_000;
/// A small table, so the flood overflows it many times over.
const MAX_FLOWS: usize = 256;

fn small_table() -> Harness {
    harness(Config {
        max_flows: MAX_FLOWS,
        ..Config::default()
    })
}

/// Feeds `n` frames made by `frame`, checking the bounds after each and
/// draining the output as a guest would.
fn flood(h: &mut Harness, n: u32, frame: impl Fn(u32) -> Vec<u8>) {
    for i in 0..n {
        h.frame(&frame(i));
        h.check_bounds();
        if i % 64 == 0 {
            h.drain();
            h.take_output();
        }
    }
    h.drain();
    h.take_output();
}

/// Port `i` of a flood: 60 000 distinct ports, clear of the well-known
/// ones the stack serves itself (DHCP) and of the legitimate connection's.
fn port(i: u32) -> u16 {
    (1000 + i % 60_000) as u16
}

/// After a flood: a new connection to the gateway's port 65000 completes
/// its handshake and is established.
fn assert_fresh_connection(h: &mut Harness) {
    let before = h.stack.flow_count();
    let ack = connect(h, 44444, 65000).expect("a SYN-ACK for the new connection");
    complete(h, 44444, 65000, ack);
    h.check_bounds();
    assert!(h.stack.flow_count() <= MAX_FLOWS);
    assert!(before <= MAX_FLOWS);
    assert_serving(h, 7);
}

#[test]
fn syn_flood_to_distinct_ports() {
    let mut h = small_table();
    flood(&mut h, FLOOD, |i| {
        tcp4(GW, Seg::syn(40000 + (i / 60_000) as u16, port(i)))
    });
    let c = h.stack.counters();
    assert_eq!(h.stack.flow_count(), MAX_FLOWS);
    assert_eq!(
        c.flows_evicted,
        u64::from(FLOOD) - MAX_FLOWS as u64,
        "every SYN beyond the table evicted the oldest embryonic flow"
    );
    assert_eq!(c.flows_refused, 0);
    assert_fresh_connection(&mut h);
}

#[test]
fn udp_flood_to_distinct_ports() {
    let mut h = small_table();
    flood(&mut h, FLOOD, |i| udp4(40000, GW, port(i), b"x"));
    let c = h.stack.counters();
    assert_eq!(h.stack.flow_count(), MAX_FLOWS);
    assert_eq!(c.flows_evicted, u64::from(FLOOD) - MAX_FLOWS as u64);
    assert_eq!(c.flows_refused, 0);
    assert_fresh_connection(&mut h);
}

#[test]
fn udp_eviction_takes_the_least_recently_active() {
    let mut h = small_table();
    for i in 0..MAX_FLOWS as u32 {
        h.frame(&udp4(40000, GW, port(i), b"x"));
        h.advance(Duration::from_millis(1));
    }
    // Flow 0 speaks again: flow 1 is now the least recently active.
    h.frame(&udp4(40000, GW, port(0), b"again"));
    h.advance(Duration::from_millis(1));
    h.frame(&udp4(40000, GW, 60001, b"new"));
    assert_eq!(h.stack.counters().flows_evicted, 1);
    let open: Vec<u16> = h
        .host
        .socks
        .values()
        .filter_map(|s| s.sent_to.first().map(|(_, to)| to.port()))
        .collect();
    assert!(open.contains(&port(0)), "the active flow stays");
    assert!(!open.contains(&port(1)), "the idlest flow went");
    assert!(open.contains(&60001));
}

#[test]
fn fragments_that_never_complete_hold_nothing() {
    let mut h = small_table();
    flood(&mut h, FLOOD, |i| {
        let mut f = udp4(40000, GW, port(i), &[0; 64]);
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.set_ident(i as u16);
        ip.set_more_frags(true);
        ip.fill_checksum();
        f
    });
    let c = h.stack.counters();
    assert_eq!(c.fragments, u64::from(FLOOD));
    assert_eq!(h.stack.flow_count(), 0);
    assert!(h.host.socks.is_empty());
    assert_fresh_connection(&mut h);
}

#[test]
fn a_table_of_established_flows_refuses_with_rst_and_unreachable() {
    let mut h = small_table();
    for i in 0..MAX_FLOWS as u16 {
        let ack = connect(&mut h, 20000 + i, 1000 + i).expect("SYN-ACK");
        complete(&mut h, 20000 + i, 1000 + i, ack);
    }
    h.drain();
    h.take_output();
    assert_eq!(h.stack.flow_count(), MAX_FLOWS);
    h.frame(&tcp4(GW, Seg::syn(30000, 9)));
    h.frame(&udp4(30001, GW, 9, b"x"));
    assert_eq!(
        replies(&mut h),
        vec![
            Reply::Tcp {
                dport: 30000,
                control: TcpControl::Rst
            },
            Reply::Unreachable(Icmpv4DstUnreachable::HostUnreachable),
        ]
    );
    let c = h.stack.counters();
    assert_eq!((c.flows_refused, c.flows_evicted), (2, 0));
    assert_eq!(h.stack.flow_count(), MAX_FLOWS);
}

#[test]
fn datagram_flows_go_before_embryonic_connections() {
    use usernet_core::testing::SockKind;
    let mut h = harness(Config {
        max_flows: 4,
        ..Config::default()
    });
    let kinds =
        |h: &Harness, kind: SockKind| h.host.socks.values().filter(|s| s.kind == kind).count();
    h.frame(&tcp4(GW, Seg::syn(30000, 7000)));
    h.frame(&tcp4(GW, Seg::syn(30001, 7001)));
    h.frame(&udp4(40000, GW, 9000, b"x"));
    h.frame(&udp4(40001, GW, 9001, b"x"));
    assert_eq!((kinds(&h, SockKind::Tcp), kinds(&h, SockKind::Udp)), (2, 2));
    // Two more connections push out both UDP flows, not the connects.
    h.frame(&tcp4(GW, Seg::syn(30002, 7002)));
    h.frame(&tcp4(GW, Seg::syn(30003, 7003)));
    assert_eq!((kinds(&h, SockKind::Tcp), kinds(&h, SockKind::Udp)), (4, 0));
    // Then the oldest connect goes, with a reset to the guest.
    h.drain();
    h.take_output();
    h.frame(&tcp4(GW, Seg::syn(30004, 7004)));
    assert_eq!(
        replies(&mut h),
        vec![Reply::Tcp {
            dport: 30000,
            control: TcpControl::Rst
        }]
    );
    assert_eq!(h.stack.counters().flows_evicted, 3);
    assert_eq!(h.stack.flow_count(), 4);
}
