//! A fixed [`Snapshot`] for the unit tests of the replies, tables and
//! metrics: one established TCP flow NAT'ed to loopback, one ping, one
//! guest.
use std::time::Duration;

use usernet_core::Counters;
use usernet_core::nat::Proto;
use usernet_core::stats::{FlowInfo, FlowState, GuestLink, Traffic};
use usernet_core::tcp::State;

use crate::api::Snapshot;

/// The fixture (see the module doc).
pub fn snapshot() -> Snapshot {
    let addr = |s: &str| s.parse().expect("address");
    let traffic = |packets, bytes| Traffic { packets, bytes };
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    Snapshot {
        counters: Counters {
            frames_in: 10,
            frames_out: 20,
            malformed: 1,
            ..Counters::default()
        },
        flows: vec![
            FlowInfo {
                proto: Proto::Tcp,
                guest: addr("10.0.2.15:40000"),
                remote: addr("10.0.2.2:8080"),
                host: Some(addr("127.0.0.1:8080")),
                inbound: false,
                state: FlowState::Tcp(State::Established),
                guest_mac: Some(mac),
                to_host: traffic(2, 300),
                to_guest: traffic(1, 4096),
                age: Duration::from_secs(5),
                idle: Duration::from_millis(250),
            },
            FlowInfo {
                proto: Proto::Icmp,
                guest: addr("10.0.2.15:7"),
                remote: addr("127.0.0.1:0"),
                host: None,
                inbound: false,
                state: FlowState::Open,
                guest_mac: None,
                to_host: traffic(1, 64),
                to_guest: traffic(0, 0),
                age: Duration::from_secs(1),
                idle: Duration::from_secs(1),
            },
        ],
        guests: vec![GuestLink {
            mac: Some(mac),
            ipv4: Some("10.0.2.15".parse().expect("address")),
            ipv6: None,
            from_guest: traffic(10, 1000),
            to_guest: traffic(20, 30000),
            connected: Duration::from_secs(61),
        }],
    }
}
