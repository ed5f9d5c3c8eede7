//! What an operator sees of a running stack: per-flow and per-guest
//! traffic counts, and the snapshots [`crate::Stack::flows`],
//! [`crate::Stack::guests`] and [`Counters::fields`] that the API and the
//! metrics exporter read.
//!
//! # Theory of operation
//! Counting happens on the data path, so it is a few additions on state the
//! path touches anyway: the flow table keeps a [`FlowStats`] in each slot
//! (beside the flow, not inside the protocol state machines), and the
//! stack adds to it where it already holds the flow's id: when a guest
//! segment or datagram has been handed to the flow, and when the flow has
//! produced a frame for the guest. Nothing is allocated or formatted until
//! someone asks for a snapshot; a snapshot is then one walk of the table.
//!
//! What is counted, per flow and direction: **bytes** are transport
//! payload (TCP data, UDP payload, the whole ICMP message); **packets**
//! are the payload-carrying segments for TCP (pure ACKs and handshake
//! segments are not counted) and every datagram for UDP and ICMP. With
//! segmentation offload (a tap with TSO) one guest frame is one packet
//! however many segments it carries. Retransmissions count again.
//!
//! Per guest, [`LinkStats`] counts whole Ethernet frames each way and when
//! the guest was first seen; [`GuestLink`] is its snapshot. Today a stack
//! serves one guest, so [`crate::Stack::guests`] lists at most one; a
//! stack or transport serving several (a switch, one port per guest)
//! reports one [`GuestLink`] per port, and the API and metrics take any
//! number of them.
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::nat::Proto;
use crate::packet::ETH_LEN;
use crate::stack::Counters;
use crate::tcp::State;

/// Packets and bytes, one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets (see the module doc for what counts as one).
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Traffic {
    /// Counts one packet of `bytes`.
    #[inline]
    pub fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// What the flow table keeps per flow for [`FlowInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowStats {
    /// When the flow was made.
    pub opened: Instant,
    /// The last packet either way.
    pub last: Instant,
    /// The host address the flow's socket talks to, when it is not the
    /// address the guest sees (NAT to loopback, the DNS upstream, a port
    /// forward's client).
    pub host: Option<SocketAddr>,
    /// Whether the host opened it (a port forward).
    pub inbound: bool,
    /// The MAC of the guest the flow belongs to.
    pub guest_mac: Option<[u8; 6]>,
    /// Guest to host.
    pub to_host: Traffic,
    /// Host to guest.
    pub to_guest: Traffic,
}

impl FlowStats {
    /// A flow opened at `now`.
    pub fn new(
        now: Instant,
        host: Option<SocketAddr>,
        inbound: bool,
        mac: Option<[u8; 6]>,
    ) -> Self {
        FlowStats {
            opened: now,
            last: now,
            host,
            inbound,
            guest_mac: mac,
            to_host: Traffic::default(),
            to_guest: Traffic::default(),
        }
    }
}

/// Where a flow stands, for listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// A TCP connection, in this state.
    Tcp(State),
    /// A UDP or ICMP echo association (open until idle).
    Open,
}

impl FlowState {
    /// A short lower-case name (`established`, `syn-sent`, `open`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FlowState::Tcp(State::Connecting) => "connecting",
            FlowState::Tcp(State::SynAckSent) => "syn-ack-sent",
            FlowState::Tcp(State::SynSent) => "syn-sent",
            FlowState::Tcp(State::Established) => "established",
            FlowState::Tcp(State::Lingering) => "lingering",
            FlowState::Open => "open",
        }
    }
}

/// One flow, as [`crate::Stack::flows`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowInfo {
    /// Protocol.
    pub proto: Proto,
    /// The guest's endpoint (ICMP: the echo identifier as the port).
    pub guest: SocketAddr,
    /// The peer as the guest addressed it (or, for a port forward, as the
    /// guest sees the host client).
    pub remote: SocketAddr,
    /// Where it goes on the host, when that differs from `remote`.
    pub host: Option<SocketAddr>,
    /// Whether the host opened it (a port forward).
    pub inbound: bool,
    /// Where it stands.
    pub state: FlowState,
    /// The guest it belongs to.
    pub guest_mac: Option<[u8; 6]>,
    /// Guest to host.
    pub to_host: Traffic,
    /// Host to guest.
    pub to_guest: Traffic,
    /// Time since it was opened.
    pub age: Duration,
    /// Time since its last packet.
    pub idle: Duration,
}

impl FlowInfo {
    /// The listing of a flow with `stats`, at `now` (a flow without
    /// stats shows as new and empty).
    pub(crate) fn new(
        (proto, guest, remote): (Proto, SocketAddr, SocketAddr),
        state: FlowState,
        stats: Option<&FlowStats>,
        now: Instant,
    ) -> Self {
        let s = stats
            .copied()
            .unwrap_or_else(|| FlowStats::new(now, None, false, None));
        FlowInfo {
            proto,
            guest,
            remote,
            host: s.host.filter(|h| *h != remote),
            inbound: s.inbound,
            state,
            guest_mac: s.guest_mac,
            to_host: s.to_host,
            to_guest: s.to_guest,
            age: now.saturating_duration_since(s.opened),
            idle: now.saturating_duration_since(s.last),
        }
    }
}

/// Frames each way on one guest link, since the guest was first seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// When the first frame of this guest arrived.
    pub since: Option<Instant>,
    /// Frames (and their bytes) from the guest.
    pub from_guest: Traffic,
    /// Frames (and their bytes) to the guest.
    pub to_guest: Traffic,
}

impl LinkStats {
    /// Counts a frame from the guest at `now`.
    #[inline]
    pub fn received(&mut self, now: Instant, len: usize) {
        self.since.get_or_insert(now);
        self.from_guest.add(len);
    }
}

/// One guest, as [`crate::Stack::guests`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLink {
    /// Its MAC, once learnt.
    pub mac: Option<[u8; 6]>,
    /// Its IPv4 address, once learnt (DHCP, ARP).
    pub ipv4: Option<Ipv4Addr>,
    /// Its IPv6 address, once learnt (SLAAC, NDP).
    pub ipv6: Option<Ipv6Addr>,
    /// Frames from the guest.
    pub from_guest: Traffic,
    /// Frames to the guest.
    pub to_guest: Traffic,
    /// How long it has been connected (since its first frame).
    pub connected: Duration,
}

/// One counter of [`Counters`]: a stable name (snake case, used as the
/// API's key and in the metric's name), its help text (one phrase, no
/// final period: the encoder adds one), and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Name (`frames_in`, ...).
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// Its value.
    pub value: u64,
}

impl Counters {
    /// Every counter, in declaration order (a new counter must be added
    /// here too, which the build enforces: the API and the metrics list
    /// exactly these).
    pub fn fields(&self) -> [Field; 12] {
        // No `..`: a new counter fails to build here until it is listed.
        let Counters {
            frames_in,
            frames_out,
            malformed,
            ignored,
            flows_refused,
            flows_evicted,
            fragments,
            tcp_no_flow,
            policy_refused,
            egress_refused,
            out_dropped,
            tcp_dropped,
        } = *self;
        let f = |name, help, value| Field { name, help, value };
        [
            f("frames_in", "Frames received from the guest", frames_in),
            f("frames_out", "Frames sent to the guest", frames_out),
            f("malformed", "Guest frames dropped as malformed", malformed),
            f(
                "ignored",
                "Guest frames dropped as not for us or unsupported",
                ignored,
            ),
            f(
                "flows_refused",
                "Flows refused because the flow table was full",
                flows_refused,
            ),
            f(
                "flows_evicted",
                "Flows evicted to make room for a new one",
                flows_evicted,
            ),
            f("fragments", "IP fragments dropped", fragments),
            f(
                "tcp_no_flow",
                "TCP segments matching no flow, answered with a reset",
                tcp_no_flow,
            ),
            f(
                "policy_refused",
                "Flows refused by policy (e.g. host loopback disabled)",
                policy_refused,
            ),
            f(
                "egress_refused",
                "Flows refused by --restrict, --allow or --deny",
                egress_refused,
            ),
            f(
                "out_dropped",
                "Frames to the guest dropped because the output queue was full",
                out_dropped,
            ),
            f(
                "tcp_dropped",
                "Guest TCP segments dropped (the guest retransmits them)",
                tcp_dropped,
            ),
        ]
    }
}

/// The transport payload length of a frame the stack built for a flow of
/// `proto` (bounds-checked: a frame too short for its headers has none).
pub(crate) fn payload_len(frame: &[u8], proto: Proto) -> usize {
    let ip = frame.get(ETH_LEN..).unwrap_or_default();
    let ip_len = match ip.first().map(|b| b >> 4) {
        Some(4) => usize::from(ip[0] & 0x0f) * 4,
        Some(6) => 40,
        _ => return 0,
    };
    let l4 = ip.get(ip_len..).unwrap_or_default();
    let header = match proto {
        Proto::Tcp => l4.get(12).map_or(l4.len(), |b| usize::from(b >> 4) * 4),
        Proto::Udp => 8,
        Proto::Icmp => 0,
    };
    l4.len().saturating_sub(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_lengths_of_built_frames() {
        let mut v4 = vec![0u8; ETH_LEN + 20 + 20 + 5];
        v4[ETH_LEN] = 0x45;
        v4[ETH_LEN + 20 + 12] = 5 << 4;
        assert_eq!(payload_len(&v4, Proto::Tcp), 5);
        assert_eq!(payload_len(&v4, Proto::Udp), 20 + 20 + 5 - 20 - 8);
        assert_eq!(payload_len(&v4, Proto::Icmp), 25);
        let mut v6 = vec![0u8; ETH_LEN + 40 + 8 + 3];
        v6[ETH_LEN] = 0x60;
        assert_eq!(payload_len(&v6, Proto::Udp), 3);
        // Truncated or not IP: nothing, never a panic.
        assert_eq!(payload_len(&v4[..ETH_LEN + 21], Proto::Tcp), 0);
        assert_eq!(payload_len(&[], Proto::Tcp), 0);
        assert_eq!(payload_len(&[0u8; ETH_LEN + 1], Proto::Udp), 0);
    }

    #[test]
    fn flow_info_hides_a_host_equal_to_remote() {
        let t0 = Instant::now();
        let remote: SocketAddr = "10.0.2.2:80".parse().expect("addr");
        let host: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        let guest: SocketAddr = "10.0.2.15:4000".parse().expect("addr");
        let mut s = FlowStats::new(t0, Some(host), false, Some([2, 0, 0, 0, 0, 1]));
        s.to_host.add(10);
        s.last = t0 + Duration::from_secs(1);
        let info = FlowInfo::new(
            (Proto::Tcp, guest, remote),
            FlowState::Tcp(State::Established),
            Some(&s),
            t0 + Duration::from_secs(3),
        );
        assert_eq!(info.host, Some(host));
        assert_eq!(info.age, Duration::from_secs(3));
        assert_eq!(info.idle, Duration::from_secs(2));
        assert_eq!(
            info.to_host,
            Traffic {
                packets: 1,
                bytes: 10
            }
        );
        assert_eq!(info.state.name(), "established");
        s.host = Some(remote);
        let info = FlowInfo::new((Proto::Udp, guest, remote), FlowState::Open, Some(&s), t0);
        assert_eq!(info.host, None);
        assert_eq!(info.idle, Duration::ZERO, "a clock behind saturates");
    }

    #[test]
    fn counter_names_are_unique() {
        let fields = Counters::default().fields();
        let mut names: Vec<_> = fields.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), fields.len());
    }
}
