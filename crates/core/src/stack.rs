//! The stack: one guest link, its services, and its NAT'ed flows.
//!
//! The link may carry several guests (a virtual switch in the driver): a
//! frame for a flow goes to the MAC that owns the flow's guest address in
//! the [`Neighbors`] table, DHCP leases are kept by MAC, and a guest that
//! leaves is forgotten with [`Stack::guest_gone`]. With one guest, that
//! guest's MAC is also the fallback for an address not yet learnt, as it
//! always was.
//!
//! # Theory of operation
//! A driver owns the guest transport (QEMU stream socket, tap) and the host
//! sockets (a [`HostIo`]). It calls, in any order and as often as it likes:
//! - [`Stack::handle_frame`] for each Ethernet frame from the guest;
//! - [`Stack::handle_host`] for each readiness event of a host socket;
//! - [`Stack::handle_timeout`] once `now` reaches [`Stack::poll_timeout`];
//!
//! and after each batch of those, [`Stack::poll_frame`] until it returns
//! `None` (or the guest transport is full: back-pressure is the driver not
//! polling), writing each frame to the guest. [`Stack::poll_timeout`] then
//! says when to call back if nothing happens. `now` is always an argument.
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4DstUnreachable, Icmpv4Packet,
    Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, Ipv6Repr, NdiscRepr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    UdpPacket, UdpRepr,
};

use crate::config::{Config, ConfigError, DnsHost, GuestFwd, HostFwd};
use crate::flow::{Evict, FLOW_TOKEN_LIMIT, FlowId, Key, Table};
use crate::host::{HostEvent, HostIo, Proto as HostProto, Token};
use crate::icmp::{self, IcmpFlow};
use crate::nat::{self, Proto, Verdict};
use crate::neighbors::Neighbors;
use crate::offload::Offload;
use crate::output::Output;
use crate::packet::{self, Macs};
use crate::stats::{self, FlowInfo, FlowState, FlowStats, GuestLink, LinkStats};
use crate::tcp::{self, Env, State, Status, TcpFlow};
use crate::udp::{self, UdpFlow};
use crate::{arp, dhcp, dhcpv6, dns, ndp, tftp};

/// What the stack has seen and done, for logs and tests. Untrusted input
/// never produces an error, only a count here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames received from the guest.
    pub frames_in: u64,
    /// Frames sent to the guest.
    pub frames_out: u64,
    /// Frames dropped as malformed (truncated, bad checksum, bad length).
    pub malformed: u64,
    /// Frames dropped as not for us or of an unsupported protocol.
    pub ignored: u64,
    /// Flows refused because the flow table was full and no flow could be
    /// evicted (TCP: a reset; UDP: ICMP host unreachable; ICMP: dropped).
    pub flows_refused: u64,
    /// Flows evicted to make room for a new one (see [`crate::flow::Evict`]).
    pub flows_evicted: u64,
    /// IPv4 and IPv6 fragments, dropped: nothing is reassembled, so no
    /// memory waits for missing pieces.
    pub fragments: u64,
    /// TCP segments matching no flow and not opening one, answered with a
    /// reset (RFC 9293 3.10.7.1).
    pub tcp_no_flow: u64,
    /// Flows refused by policy (e.g. host loopback disabled).
    pub policy_refused: u64,
    /// Flows refused by the egress rules (`--restrict`, `--allow`,
    /// `--deny`), answered with a reset or "administratively prohibited".
    pub egress_refused: u64,
    /// Frames dropped because the output queue was full.
    pub out_dropped: u64,
    /// Guest TCP segments dropped: refused by a full host socket beyond
    /// what the flow keeps, or out of order after such a drop. The guest
    /// retransmits them; on a healthy link this stays 0.
    pub tcp_dropped: u64,
}

/// Opening the stack's own host sockets failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port forward's host socket could not listen.
    #[error("--hostfwd {spec}: cannot listen")]
    Listen {
        /// The forward, as the user wrote it.
        spec: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A flow of any protocol.
enum Flow {
    Tcp(TcpFlow),
    Udp(UdpFlow),
    Icmp(IcmpFlow),
}

impl Flow {
    fn wants_output(&self) -> bool {
        match self {
            Flow::Tcp(f) => f.wants_output(),
            Flow::Udp(f) => f.wants_output(),
            Flow::Icmp(f) => f.wants_output(),
        }
    }

    fn deadline(&self) -> Instant {
        match self {
            Flow::Tcp(f) => f.deadline(),
            Flow::Udp(f) => f.deadline(),
            Flow::Icmp(f) => f.deadline(),
        }
    }

    /// Whether, and since when, the flow may give up its place in a full
    /// table.
    fn eviction(&self) -> Option<(Evict, Instant)> {
        match self {
            Flow::Udp(f) => Some((Evict::Datagram, f.last_active())),
            Flow::Icmp(f) => Some((Evict::Datagram, f.last_active())),
            Flow::Tcp(f) => match f.state {
                State::Lingering => Some((Evict::Finished, f.since())),
                State::Connecting | State::SynAckSent | State::SynSent => {
                    Some((Evict::Embryonic, f.since()))
                }
                State::Established => None,
            },
        }
    }

    fn owns_socket(&self) -> bool {
        match self {
            Flow::Tcp(f) => f.host_open(),
            Flow::Udp(f) => f.owns_socket(),
            Flow::Icmp(_) => true,
        }
    }
}

/// A port forward's listening socket.
struct Listener {
    fwd: HostFwd,
    /// A UDP listener with datagrams waiting.
    readable: bool,
}

/// Token of the `i`th listener.
fn listener_token(i: usize) -> Token {
    Token(FLOW_TOKEN_LIMIT + i as u64)
}

/// The user-mode network stack for one guest link.
pub struct Stack {
    cfg: Config,
    counters: Counters,
    /// What the guest link offloads (see [`Stack::set_offload`]).
    offload: Offload,
    /// The MAC of the guest that sent last, learnt from its frames: where
    /// frames for a guest address not in `neighbors` go.
    guest_mac: Option<EthernetAddress>,
    /// Which guest MAC owns which guest address (several guests on a
    /// switch).
    neighbors: Neighbors,
    /// The guest's address, learnt from DHCP or ARP.
    guest_ip: Option<Ipv4Addr>,
    /// The guest's IPv6 address in the prefix (SLAAC), learnt from NDP or
    /// its traffic.
    guest_ip6: Option<Ipv6Addr>,
    /// When the next unsolicited router advertisement is due (IPv6 link
    /// up).
    next_ra: Option<Instant>,
    dhcp: dhcp::Server,
    flows: Table<Flow>,
    out: Output,
    /// Port-forward listeners by id; removed ones leave a hole.
    listeners: Vec<Option<Listener>>,
    /// State of the generator for initial sequence numbers.
    rng: u64,
    /// The host forbids ping sockets (logged once).
    ping_denied: bool,
    /// The TFTP server's transfers.
    tftp: tftp::Server,
    /// The guest link's frame counts (see [`Stack::guests`]).
    link: LinkStats,
}

/// splitmix64: a small, seedable generator for sequence numbers.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn macs(cfg: &Config, guest: Option<EthernetAddress>) -> Macs {
    Macs {
        src: EthernetAddress(cfg.mac),
        dst: guest.unwrap_or(EthernetAddress::BROADCAST),
    }
}

/// The MAC frames to guest address `ip` go to: its owner if known, else
/// the last guest that sent.
fn guest_mac_for(
    neighbors: &Neighbors,
    fallback: Option<EthernetAddress>,
    ip: IpAddr,
) -> Option<EthernetAddress> {
    neighbors.mac_of(ip).map(EthernetAddress).or(fallback)
}

/// What flows see of the stack; borrows only the configuration, so the
/// flow table and output queue stay free to borrow mutably.
fn env(
    cfg: &Config,
    guest_mac: Option<EthernetAddress>,
    offload: Offload,
    now: Instant,
) -> Env<'_> {
    Env {
        cfg,
        macs: macs(cfg, guest_mac),
        now,
        offload,
    }
}

/// Interval of unsolicited router advertisements.
const RA_INTERVAL: std::time::Duration = std::time::Duration::from_secs(ndp::RA_INTERVAL_SECS);

/// Why a guest packet is refused with an ICMP error.
#[derive(Clone, Copy, Debug)]
enum Unreachable {
    /// No one at that address.
    Host,
    /// The address is ours but the port serves nothing.
    Port,
    /// The egress rules refuse it ("communication administratively
    /// prohibited").
    Prohibited,
}

/// What a guest TCP connection's host side is.
#[derive(Clone, Copy, Debug)]
enum Connect {
    /// A TCP connect to this address.
    Addr(SocketAddr),
    /// The `i`th guestfwd's command or socket.
    GuestFwd(usize),
}

/// DHCP server and client ports.
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;

/// Most control frames waiting for the guest at once.
const OUTPUT_LIMIT: usize = 1024;

impl Stack {
    /// Creates a stack for a configuration that passed [`Config::validate`].
    /// `host.internal` answers with the gateway unless configured otherwise.
    pub fn new(mut cfg: Config, now: Instant) -> Self {
        let _ = now;
        if !cfg.dns_hosts.iter().any(|h| h.name == "host.internal") {
            cfg.dns_hosts.push(DnsHost {
                name: "host.internal".into(),
                addr: cfg.host.into(),
            });
        }
        Stack {
            dhcp: dhcp::Server::new(&cfg),
            flows: Table::new(cfg.max_flows),
            out: Output::new(OUTPUT_LIMIT, cfg.max_frame()),
            listeners: Vec::new(),
            rng: cfg.seed,
            offload: Offload::default(),
            guest_mac: None,
            neighbors: Neighbors::default(),
            guest_ip: None,
            guest_ip6: None,
            next_ra: None,
            ping_denied: false,
            tftp: tftp::Server::default(),
            counters: Counters::default(),
            link: LinkStats::default(),
            cfg,
        }
    }

    /// Opens the port-forward listeners of the configuration. Call once,
    /// before the first event.
    pub fn start<H: HostIo>(&mut self, host: &mut H) -> Result<(), StartError> {
        for fwd in self.cfg.hostfwd.clone() {
            self.add_hostfwd(fwd, host)?;
        }
        Ok(())
    }

    /// Adds a port forward at run time; returns its id.
    pub fn add_hostfwd<H: HostIo>(
        &mut self,
        fwd: HostFwd,
        host: &mut H,
    ) -> Result<usize, StartError> {
        let listen_error = |source| StartError::Listen {
            spec: fwd.to_string(),
            source,
        };
        if self
            .hostfwds()
            .any(|(_, f)| f.proto == fwd.proto && f.host == fwd.host)
        {
            return Err(listen_error(ErrorKind::AddrInUse.into()));
        }
        let index = match self.listeners.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.listeners.push(None);
                self.listeners.len() - 1
            }
        };
        host.listen(listener_token(index), fwd.proto, fwd.host)
            .map_err(listen_error)?;
        self.listeners[index] = Some(Listener {
            fwd,
            readable: false,
        });
        Ok(index)
    }

    /// Removes the port forward `id`; connections it made stay up.
    pub fn remove_hostfwd<H: HostIo>(&mut self, id: usize, host: &mut H) -> bool {
        match self.listeners.get_mut(id).and_then(Option::take) {
            Some(_) => {
                host.close(listener_token(id));
                true
            }
            None => false,
        }
    }

    /// Adds a guest forward at run time (libslirp's `slirp_add_exec` and
    /// `slirp_add_unix`); refused if its address is not a free one of the
    /// network or it is there already.
    pub fn add_guestfwd(&mut self, fwd: GuestFwd) -> Result<(), ConfigError> {
        self.cfg.guestfwd.push(fwd);
        let checked = self.cfg.validate_guestfwd();
        if checked.is_err() {
            self.cfg.guestfwd.pop();
        }
        checked
    }

    /// Removes the guest forward serving `addr:port`; connections it made
    /// stay up. False if there is none.
    pub fn remove_guestfwd(&mut self, addr: Ipv4Addr, port: u16) -> bool {
        let net = self.cfg.net;
        let before = self.cfg.guestfwd.len();
        self.cfg
            .guestfwd
            .retain(|g| !(g.addr_in(net) == addr && g.port == port));
        self.cfg.guestfwd.len() != before
    }

    /// The port forwards in force, with their ids.
    pub fn hostfwds(&self) -> impl Iterator<Item = (usize, &HostFwd)> {
        self.listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.as_ref().map(|l| (i, &l.fwd)))
    }

    /// The MAC of the guest that owns `ip` (see [`guest_mac_for`]).
    fn mac_for(&self, ip: IpAddr) -> Option<EthernetAddress> {
        guest_mac_for(&self.neighbors, self.guest_mac, ip)
    }

    /// Our MAC and that of the guest owning `ip`.
    fn macs_for(&self, ip: IpAddr) -> Macs {
        macs(&self.cfg, self.mac_for(ip))
    }

    /// The guest at `mac` uses `ip` (from ARP, DHCP or its IPv4 packets).
    fn learn(&mut self, now: Instant, mac: EthernetAddress, ip: Ipv4Addr) {
        self.guest_mac = Some(mac);
        let ours = ip == self.cfg.host || ip == self.cfg.dns;
        if self.cfg.net.contains(ip) && !ours && !ip.is_unspecified() {
            self.guest_ip = Some(ip);
            self.neighbors.learn(ip.into(), mac.0, now);
        }
    }

    /// Whether `ip` belongs to a guest other than `asker` (a learnt
    /// neighbour, or a lease bound or pinned to another MAC): the stack
    /// leaves ARP requests for it to that guest.
    fn other_guest_has(&self, ip: Ipv4Addr, asker: EthernetAddress) -> bool {
        let other = |mac: [u8; 6]| mac != asker.0;
        self.neighbors.mac_of(ip.into()).is_some_and(other)
            || self.dhcp.bound().any(|(a, mac)| a == ip && other(mac))
            || self
                .cfg
                .dhcp_hosts
                .iter()
                .any(|h| h.addr == ip && other(h.mac))
    }

    /// Declares what the guest link offloads (none until called): with
    /// [`Offload::rx_trusted`], frames may be larger than the MTU and their
    /// checksums are not verified; with [`Offload::tso`], TCP segments to
    /// the guest may be up to 64 KiB and `poll_frame` needs a buffer of
    /// [`crate::offload::MAX_OFFLOAD_FRAME`] bytes. See [`crate::offload`].
    pub fn set_offload(&mut self, offload: Offload) {
        self.offload = offload;
    }

    /// Checksum checks for guest frames: none when the link vouches for
    /// them.
    fn rx_caps(&self) -> ChecksumCapabilities {
        if self.offload.rx_trusted {
            ChecksumCapabilities::ignored()
        } else {
            ChecksumCapabilities::default()
        }
    }

    /// Handles one Ethernet frame from the guest.
    pub fn handle_frame<H: HostIo>(&mut self, now: Instant, frame: &[u8], host: &mut H) {
        self.counters.frames_in += 1;
        self.link.received(now, frame.len());
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.counters.malformed += 1;
            return;
        };
        let dst = eth.dst_addr();
        if dst != EthernetAddress(self.cfg.mac) && !dst.is_broadcast() && !dst.is_multicast() {
            self.counters.ignored += 1;
            return;
        }
        let src = eth.src_addr();
        if !src.is_unicast() {
            self.counters.malformed += 1;
            return;
        }
        tracing::trace!(len = frame.len(), ethertype = %eth.ethertype(), "frame from guest");
        match eth.ethertype() {
            EthernetProtocol::Arp if self.cfg.ipv4 => match arp::handle(&self.cfg, eth.payload()) {
                arp::Outcome::Reply(reply, mac, ip) => {
                    self.learn(now, mac, ip);
                    if !self.other_guest_has(arp::target_of(&reply), mac) {
                        self.out.push(&reply);
                    }
                }
                arp::Outcome::Learn(mac, ip) => self.learn(now, mac, ip),
                arp::Outcome::Ignore => {}
                arp::Outcome::Malformed => self.counters.malformed += 1,
            },
            EthernetProtocol::Ipv4 if self.cfg.ipv4 => {
                self.guest_mac = Some(src);
                self.ipv4(now, src, eth.payload(), host);
            }
            EthernetProtocol::Ipv6 if self.cfg.ipv6 => {
                self.guest_mac = Some(src);
                if self.next_ra.is_none() {
                    // The link is up: advertise now, then periodically.
                    self.next_ra = Some(now);
                }
                self.ipv6(now, src, eth.payload(), host);
            }
            _ => self.counters.ignored += 1,
        }
    }

    fn ipv4<H: HostIo>(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        payload: &[u8],
        host: &mut H,
    ) {
        let Ok(pkt) = Ipv4Packet::new_checked(payload) else {
            self.counters.malformed += 1;
            return;
        };
        if pkt.more_frags() || pkt.frag_offset() != 0 {
            // Fragments are not reassembled: guests use PMTU discovery, and
            // no memory is held for pieces that may never come.
            self.counters.fragments += 1;
            return;
        }
        let Ok(ip) = Ipv4Repr::parse(&pkt, &self.rx_caps()) else {
            self.counters.malformed += 1;
            return;
        };
        let (src, dst) = (IpAddr::V4(ip.src_addr), IpAddr::V4(ip.dst_addr));
        self.learn(now, src_mac, ip.src_addr);
        if ip.next_header == IpProtocol::Icmp {
            let parsed = Icmpv4Packet::new_checked(pkt.payload())
                .and_then(|p| Icmpv4Repr::parse(&p, &ChecksumCapabilities::default()));
            match parsed {
                Ok(Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no,
                    data,
                }) => self.echo(now, src, dst, (ident, seq_no, data), pkt.payload(), host),
                Ok(_) => self.counters.ignored += 1,
                Err(_) => self.counters.malformed += 1,
            }
            return;
        }
        self.transport(now, src_mac, src, dst, ip.next_header, pkt.payload(), host);
    }

    fn ipv6<H: HostIo>(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        payload: &[u8],
        host: &mut H,
    ) {
        let Ok(pkt) = Ipv6Packet::new_checked(payload) else {
            self.counters.malformed += 1;
            return;
        };
        let Ok(ip) = Ipv6Repr::parse(&pkt) else {
            self.counters.malformed += 1;
            return;
        };
        let (s6, d6) = (ip.src_addr, ip.dst_addr);
        // DAD probes come from `::` and name the tentative address; any
        // other source in the prefix is the guest's own.
        self.learn6(now, src_mac, s6);
        let (src, dst) = (IpAddr::V6(s6), IpAddr::V6(d6));
        if ip.next_header == IpProtocol::Ipv6Frag {
            self.counters.fragments += 1;
            return;
        }
        if ip.next_header != IpProtocol::Icmpv6 {
            // Extension headers (hop-by-hop for MLD, fragments) are not
            // followed: transport is expected right after the header.
            return self.transport(now, src_mac, src, dst, ip.next_header, pkt.payload(), host);
        }
        let Ok(icmp) = Icmpv6Packet::new_checked(pkt.payload()) else {
            self.counters.malformed += 1;
            return;
        };
        let Ok(repr) = Icmpv6Repr::parse(&s6, &d6, &icmp, &ChecksumCapabilities::default()) else {
            self.counters.malformed += 1;
            return;
        };
        let macs = Macs {
            src: EthernetAddress(self.cfg.mac),
            dst: src_mac,
        };
        let cfg = &self.cfg;
        match repr {
            Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => self.echo(now, src, dst, (ident, seq_no, data), pkt.payload(), host),
            // NDP messages must come with hop limit 255 (RFC 4861 6.1).
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, .. })
                if ip.hop_limit == 255 =>
            {
                if s6.is_unspecified() {
                    self.learn6(now, src_mac, target_addr);
                } else if ndp::is_ours(cfg, target_addr) {
                    self.out
                        .push_with(|buf| ndp::neighbor_advert(buf, cfg, macs, target_addr, s6));
                }
            }
            Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit { .. }) if ip.hop_limit == 255 => {
                let to = if s6.is_unspecified() {
                    ndp::ALL_NODES
                } else {
                    s6
                };
                self.out
                    .push_with(|buf| ndp::router_advert(buf, cfg, macs, to));
                self.next_ra = Some(now + RA_INTERVAL);
            }
            _ => self.counters.ignored += 1,
        }
    }

    /// Whether `dst` is a gateway address the TFTP server answers on.
    fn serves_tftp(&self, dst: IpAddr) -> bool {
        self.cfg.tftp_root.is_some()
            && (dst == IpAddr::V4(self.cfg.host) || dst == IpAddr::V6(self.cfg.ipv6_host))
    }

    /// Remembers a guest IPv6 address in the prefix.
    fn learn6(&mut self, now: Instant, mac: EthernetAddress, ip: Ipv6Addr) {
        let ours = ip == self.cfg.ipv6_host || ip == self.cfg.ipv6_dns;
        if self.cfg.ipv6_net.contains(ip) && !ours {
            self.guest_ip6 = Some(ip);
            self.neighbors.learn(ip.into(), mac.0, now);
        }
    }

    /// UDP and TCP of either family.
    #[allow(clippy::too_many_arguments)]
    fn transport<H: HostIo>(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        src: IpAddr,
        dst: IpAddr,
        proto: IpProtocol,
        data: &[u8],
        host: &mut H,
    ) {
        let caps = self.rx_caps();
        let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
        match proto {
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(data) else {
                    self.counters.malformed += 1;
                    return;
                };
                if UdpRepr::parse(&udp, &s, &d, &caps).is_err() {
                    self.counters.malformed += 1;
                    return;
                }
                let (sport, dport) = (udp.src_port(), udp.dst_port());
                match (src, dport) {
                    (IpAddr::V4(_), DHCP_SERVER_PORT) if self.cfg.disable_dhcp => {
                        self.counters.ignored += 1;
                        return;
                    }
                    (IpAddr::V4(_), DHCP_SERVER_PORT) => {
                        return self.dhcp(now, src_mac, udp.payload());
                    }
                    (IpAddr::V6(s6), dhcpv6::SERVER_PORT) => {
                        return self.dhcpv6(src_mac, s6, sport, udp.payload());
                    }
                    (_, tftp::PORT) if self.serves_tftp(dst) && sport != 0 => {
                        let env = env(&self.cfg, Some(src_mac), self.offload, now);
                        let client = SocketAddr::new(src, sport);
                        let payload = udp.payload();
                        return self
                            .tftp
                            .handle(&env, client, dst, payload, host, &mut self.out);
                    }
                    _ => {}
                }
                if sport == 0 || dport == 0 || src.is_unspecified() {
                    self.counters.malformed += 1;
                    return;
                }
                let guest = SocketAddr::new(src, sport);
                self.udp(now, guest, SocketAddr::new(dst, dport), udp.payload(), host);
            }
            IpProtocol::Tcp => {
                let Ok(tcp) = TcpPacket::new_checked(data) else {
                    self.counters.malformed += 1;
                    return;
                };
                let Ok(seg) = TcpRepr::parse(&tcp, &s, &d, &caps) else {
                    self.counters.malformed += 1;
                    return;
                };
                if src.is_unspecified() {
                    self.counters.malformed += 1;
                    return;
                }
                let guest = SocketAddr::new(src, seg.src_port);
                self.tcp(now, guest, SocketAddr::new(dst, seg.dst_port), &seg, host);
            }
            _ => self.counters.ignored += 1,
        }
    }

    fn dhcpv6(&mut self, src_mac: EthernetAddress, src: Ipv6Addr, sport: u16, payload: &[u8]) {
        let Some(reply) = dhcpv6::handle(&self.cfg, payload) else {
            self.counters.ignored += 1;
            return;
        };
        let macs = Macs {
            src: EthernetAddress(self.cfg.mac),
            dst: src_mac,
        };
        let server = (
            IpAddr::V6(ndp::link_local(self.cfg.mac)),
            dhcpv6::SERVER_PORT,
        );
        let client = (IpAddr::V6(src), sport);
        self.out
            .push_with(|buf| packet::udp(buf, macs, server, client, &reply));
    }

    fn dhcp(&mut self, now: Instant, src_mac: EthernetAddress, payload: &[u8]) {
        if !dhcp::is_request(payload) {
            self.counters.malformed += 1;
            return;
        }
        let Some(reply) = self.dhcp.handle(&self.cfg, now, src_mac.0, payload) else {
            self.counters.ignored += 1;
            return;
        };
        if let Some(ip) = reply.leased {
            self.guest_ip = Some(ip);
            self.neighbors.learn(ip.into(), src_mac.0, now);
        }
        let macs = Macs {
            src: EthernetAddress(self.cfg.mac),
            dst: src_mac,
        };
        let server = (IpAddr::V4(self.cfg.host), DHCP_SERVER_PORT);
        let client = (IpAddr::V4(reply.dst), DHCP_CLIENT_PORT);
        self.out
            .push_with(|buf| packet::udp(buf, macs, server, client, &reply.payload));
    }

    /// Makes room for one more flow, evicting one if the table is full
    /// (see [`Evict`] for the order). Returns whether there is room; if
    /// not, the refusal is counted and the caller tells the guest.
    fn make_room<H: HostIo>(&mut self, now: Instant, host: &mut H) -> bool {
        if !self.flows.is_full() {
            return true;
        }
        let Some(id) = self.flows.pop_eviction() else {
            self.counters.flows_refused += 1;
            return false;
        };
        self.counters.flows_evicted += 1;
        let env = env(&self.cfg, self.flow_mac(id), self.offload, now);
        if let Some((_, Flow::Tcp(f))) = self.flows.get(id)
            && f.host_open()
        {
            // Tell both ends: a reset to the guest, an abort to the host.
            f.evict(&env, &mut self.out);
            host.tcp_abort(id.token());
            self.flows.remove(id);
        } else {
            self.remove(id, host);
        }
        !self.flows.is_full()
    }

    /// The MAC of flow `id`'s guest.
    fn flow_mac(&self, id: FlowId) -> Option<EthernetAddress> {
        let (key, _) = self.flows.get(id)?;
        self.mac_for(key.guest.ip())
    }

    fn remove<H: HostIo>(&mut self, id: FlowId, host: &mut H) {
        if let Some((_, flow)) = self.flows.remove(id)
            && flow.owns_socket()
        {
            host.close(id.token());
        }
    }

    /// After a flow handled something: remove it, or reschedule it and
    /// queue it for output.
    fn settle<H: HostIo>(&mut self, id: FlowId, closed: bool, host: &mut H) {
        if closed {
            self.remove(id, host);
            return;
        }
        let Some((_, flow)) = self.flows.get(id) else {
            return;
        };
        let (deadline, ready, evict) = (flow.deadline(), flow.wants_output(), flow.eviction());
        self.flows.set_eviction(id, evict);
        self.flows.schedule(id, deadline);
        if ready {
            self.flows.mark_ready(id);
        }
    }

    /// Where a UDP DNS query to `remote` (a DNS address) goes: the
    /// upstream resolver, or (`Err`) answered here with this reply (a
    /// `--dns-host` name; REFUSED when the egress rules keep queries from
    /// the upstream; SERVFAIL with no upstream; nothing if malformed).
    fn dns_upstream_for(
        &mut self,
        query: &[u8],
        remote: SocketAddr,
    ) -> Result<SocketAddr, Option<Vec<u8>>> {
        if let Some(answer) = dns::local_answer(query, &self.cfg.dns_hosts) {
            return Err(Some(answer));
        }
        if !nat::dns_forwarding_allowed(&self.cfg, Proto::Udp, remote) {
            self.egress_refused(Proto::Udp, remote);
            return Err(dns::refused(query));
        }
        self.cfg
            .dns_upstreams
            .first()
            .copied()
            .ok_or_else(|| dns::servfail(query))
    }

    /// ICMP(v6) "destination unreachable" back to the guest for a packet it
    /// sent from `guest` to `remote` (`l4`: the start of its transport
    /// header, quoted after a rebuilt IP header).
    fn unreachable(
        &mut self,
        why: Unreachable,
        proto: IpProtocol,
        guest: SocketAddr,
        remote: SocketAddr,
        l4: &[u8],
    ) {
        let macs = self.macs_for(guest.ip());
        let data = &l4[..l4.len().min(8)];
        match (guest.ip(), remote.ip()) {
            (IpAddr::V4(g), IpAddr::V4(r)) => {
                let header = Ipv4Repr {
                    src_addr: g,
                    dst_addr: r,
                    next_header: proto,
                    payload_len: l4.len(),
                    hop_limit: 64,
                };
                let reason = match why {
                    Unreachable::Host => Icmpv4DstUnreachable::HostUnreachable,
                    Unreachable::Port => Icmpv4DstUnreachable::PortUnreachable,
                    Unreachable::Prohibited => Icmpv4DstUnreachable::CommProhibited,
                };
                let repr = Icmpv4Repr::DstUnreachable {
                    reason,
                    header,
                    data,
                };
                let from = self.cfg.host;
                self.out
                    .push_with(|buf| icmp::emit(buf, macs, from, g, &repr));
            }
            (IpAddr::V6(g), IpAddr::V6(r)) => {
                let header = Ipv6Repr {
                    src_addr: g,
                    dst_addr: r,
                    next_header: proto,
                    payload_len: l4.len(),
                    hop_limit: 64,
                };
                let reason = match why {
                    Unreachable::Host => Icmpv6DstUnreachable::AddrUnreachable,
                    Unreachable::Port => Icmpv6DstUnreachable::PortUnreachable,
                    Unreachable::Prohibited => Icmpv6DstUnreachable::AdminProhibit,
                };
                let repr = Icmpv6Repr::DstUnreachable {
                    reason,
                    header,
                    data,
                };
                let from = self.cfg.ipv6_host;
                self.out
                    .push_with(|buf| icmp::emit6(buf, macs, from, g, &repr, &[], 64));
            }
            _ => {}
        }
    }

    fn udp<H: HostIo>(
        &mut self,
        now: Instant,
        guest: SocketAddr,
        remote: SocketAddr,
        payload: &[u8],
        host: &mut H,
    ) {
        let key = Key {
            proto: Proto::Udp,
            guest,
            remote,
        };
        let id = match self.flows.lookup(&key) {
            Some(id) => id,
            None => {
                let kind = match nat::outbound(&self.cfg, Proto::Udp, remote) {
                    Verdict::Host(dst) => udp::Kind::Outbound(dst),
                    Verdict::Dns => match self.dns_upstream_for(payload, remote) {
                        Ok(up) => udp::Kind::Dns(up),
                        Err(reply) => {
                            if let Some(reply) = reply {
                                let macs = self.macs_for(guest.ip());
                                self.out.push_with(|buf| {
                                    packet::udp(
                                        buf,
                                        macs,
                                        (remote.ip(), 53),
                                        (guest.ip(), guest.port()),
                                        &reply,
                                    )
                                });
                            }
                            return;
                        }
                    },
                    verdict @ (Verdict::Refuse | Verdict::Prohibit) => {
                        let code = if verdict == Verdict::Prohibit {
                            self.egress_refused(Proto::Udp, remote);
                            Unreachable::Prohibited
                        } else {
                            self.counters.policy_refused += 1;
                            let ours = [
                                self.cfg.dns.into(),
                                self.cfg.host.into(),
                                self.cfg.ipv6_dns.into(),
                                self.cfg.ipv6_host.into(),
                            ];
                            if ours.contains(&remote.ip()) {
                                Unreachable::Port
                            } else {
                                Unreachable::Host
                            }
                        };
                        let mut l4 = [0u8; 8];
                        l4[..2].copy_from_slice(&guest.port().to_be_bytes());
                        l4[2..4].copy_from_slice(&remote.port().to_be_bytes());
                        self.unreachable(code, IpProtocol::Udp, guest, remote, &l4);
                        return;
                    }
                    Verdict::Local | Verdict::Drop | Verdict::GuestFwd(_) => {
                        self.counters.ignored += 1;
                        return;
                    }
                };
                if !self.make_room(now, host) {
                    let mut l4 = [0u8; 8];
                    l4[..2].copy_from_slice(&guest.port().to_be_bytes());
                    l4[2..4].copy_from_slice(&remote.port().to_be_bytes());
                    self.unreachable(Unreachable::Host, IpProtocol::Udp, guest, remote, &l4);
                    return;
                }
                let Ok(id) = self
                    .flows
                    .insert(key, Flow::Udp(UdpFlow::new(guest, remote, kind, now)))
                else {
                    return;
                };
                let (udp::Kind::Outbound(dst) | udp::Kind::Dns(dst)) = kind else {
                    return;
                };
                if let Err(e) = host.udp_open(id.token(), dst) {
                    tracing::debug!(%e, %dst, "UDP socket failed");
                    self.flows.remove(id);
                    return;
                }
                self.open_stats(id, now, Some(dst), false);
                id
            }
        };
        if let Some((_, Flow::Udp(f))) = self.flows.get_mut(id)
            && let Err(e) = f.send(id.token(), host, payload, now)
        {
            tracing::debug!(%e, %remote, "UDP send failed");
        }
        self.flows.count(id, now, true, payload.len());
        self.settle(id, false, host);
    }

    fn tcp<H: HostIo>(
        &mut self,
        now: Instant,
        guest: SocketAddr,
        remote: SocketAddr,
        seg: &TcpRepr,
        host: &mut H,
    ) {
        let key = Key {
            proto: Proto::Tcp,
            guest,
            remote,
        };
        if let Some(id) = self.flows.lookup(&key) {
            let synchronizing = matches!(seg.control, TcpControl::Syn | TcpControl::Rst);
            if seg.ack_number.is_none() && !synchronizing {
                // RFC 9293 3.10.7.4: without ACK, only SYN and RST mean
                // anything to a connection.
                self.counters.malformed += 1;
                return;
            }
            let mac = self.mac_for(guest.ip());
            let env = env(&self.cfg, mac, self.offload, now);
            let Some((_, Flow::Tcp(f))) = self.flows.get_mut(id) else {
                return;
            };
            let status = f.on_segment(&env, id.token(), seg, host, &mut self.out);
            self.counters.tcp_dropped += f.take_dropped();
            if !seg.payload.is_empty() {
                self.flows.count(id, now, true, seg.payload.len());
            }
            self.settle(id, status != Status::Open, host);
            return;
        }
        if seg.control != TcpControl::Syn || seg.ack_number.is_some() {
            self.counters.tcp_no_flow += 1;
            self.reset(guest, remote, seg);
            return;
        }
        let target = match nat::outbound(&self.cfg, Proto::Tcp, remote) {
            Verdict::Host(dst) => Connect::Addr(dst),
            Verdict::GuestFwd(i) => Connect::GuestFwd(i),
            Verdict::Dns if !nat::dns_forwarding_allowed(&self.cfg, Proto::Tcp, remote) => {
                self.egress_refused(Proto::Tcp, remote);
                return self.reset(guest, remote, seg);
            }
            Verdict::Dns => match self.cfg.dns_upstreams.first() {
                Some(up) => Connect::Addr(*up),
                None => return self.reset(guest, remote, seg),
            },
            Verdict::Drop => return,
            Verdict::Refuse | Verdict::Local => {
                self.counters.policy_refused += 1;
                return self.reset(guest, remote, seg);
            }
            Verdict::Prohibit => {
                self.egress_refused(Proto::Tcp, remote);
                return self.reset(guest, remote, seg);
            }
        };
        if !self.make_room(now, host) {
            return self.reset(guest, remote, seg);
        }
        let iss = TcpSeqNumber(splitmix(&mut self.rng) as i32);
        let flow = TcpFlow::outbound(&self.cfg, &key, seg, iss, now);
        let Ok(id) = self.flows.insert(key, Flow::Tcp(flow)) else {
            return;
        };
        let started = match target {
            Connect::Addr(dst) => host.tcp_connect(id.token(), dst),
            Connect::GuestFwd(i) => match self.cfg.guestfwd.get(i) {
                Some(g) => host.tcp_connect_guestfwd(id.token(), &g.target),
                None => Err(ErrorKind::NotFound.into()),
            },
        };
        if let Err(e) = started {
            tracing::debug!(%e, %remote, "host connect failed at once");
            self.flows.remove(id);
            host.close(id.token());
            return self.reset(guest, remote, seg);
        }
        let to = match target {
            Connect::Addr(dst) => Some(dst),
            Connect::GuestFwd(_) => None,
        };
        self.open_stats(id, now, to, false);
        self.settle(id, false, host);
    }

    /// Starts counting a new flow's traffic.
    fn open_stats(&mut self, id: FlowId, now: Instant, host: Option<SocketAddr>, inbound: bool) {
        let mac = self.guest_mac.map(|m| m.0);
        self.flows
            .open_stats(id, FlowStats::new(now, host, inbound, mac));
    }

    /// Counts a frame a flow of `proto` produced for the guest (TCP: only
    /// if it carries data).
    fn count_to_guest(&mut self, id: FlowId, now: Instant, proto: Proto, frame: &[u8]) {
        let payload = stats::payload_len(frame, proto);
        if proto != Proto::Tcp || payload > 0 {
            self.flows.count(id, now, false, payload);
        }
    }

    /// Answers a segment that has no flow with a reset.
    fn reset(&mut self, guest: SocketAddr, remote: SocketAddr, seg: &TcpRepr) {
        let Some(rst) = tcp::reset_for(seg) else {
            return;
        };
        let macs = self.macs_for(guest.ip());
        let partial = self.offload.tx_csum;
        self.out
            .push_with(|buf| packet::tcp_link(buf, macs, remote.ip(), guest.ip(), &rst, partial));
    }

    /// An echo request of either family: answered for the stack's own
    /// addresses, else sent through a host ping socket. `msg` is the whole
    /// ICMP message, as the host socket wants it.
    fn echo<H: HostIo>(
        &mut self,
        now: Instant,
        src: IpAddr,
        dst: IpAddr,
        (ident, seq_no, body): (u16, u16, &[u8]),
        msg: &[u8],
        host: &mut H,
    ) {
        let remote = SocketAddr::new(dst, 0);
        let guest = SocketAddr::new(src, 0);
        let proto = match src {
            IpAddr::V4(_) => IpProtocol::Icmp,
            IpAddr::V6(_) => IpProtocol::Icmpv6,
        };
        let macs = self.macs_for(src);
        match nat::outbound(&self.cfg, Proto::Icmp, remote) {
            Verdict::Local => match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    let reply = Icmpv4Repr::EchoReply {
                        ident,
                        seq_no,
                        data: body,
                    };
                    self.out
                        .push_with(|buf| icmp::emit(buf, macs, d, s, &reply));
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    let reply = Icmpv6Repr::EchoReply {
                        ident,
                        seq_no,
                        data: body,
                    };
                    self.out
                        .push_with(|buf| icmp::emit6(buf, macs, d, s, &reply, &[], 64));
                }
                _ => {}
            },
            Verdict::Host(_) | Verdict::Dns => {
                let key = Key {
                    proto: Proto::Icmp,
                    guest: SocketAddr::new(src, ident),
                    remote,
                };
                let id = match self.flows.lookup(&key) {
                    Some(id) => id,
                    None => {
                        if !self.make_room(now, host) {
                            return;
                        }
                        let flow = Flow::Icmp(IcmpFlow::new(src, ident, dst, now));
                        let Ok(id) = self.flows.insert(key, flow) else {
                            return;
                        };
                        if let Err(e) = host.icmp_open(id.token(), remote) {
                            self.flows.remove(id);
                            if !self.ping_denied {
                                self.ping_denied = true;
                                tracing::warn!(
                                    %e,
                                    "cannot open ICMP echo sockets (net.ipv4.ping_group_range?): guest pings beyond the gateway go unanswered"
                                );
                            }
                            return;
                        }
                        self.open_stats(id, now, None, false);
                        id
                    }
                };
                self.flows.count(id, now, true, msg.len());
                if let Some((_, Flow::Icmp(f))) = self.flows.get_mut(id)
                    && let Err(e) = f.send(id.token(), host, msg, now)
                {
                    tracing::debug!(%e, %dst, "ping send failed");
                    if e.kind() != ErrorKind::WouldBlock {
                        self.unreachable(Unreachable::Host, proto, guest, remote, msg);
                    }
                }
                self.settle(id, false, host);
            }
            Verdict::Refuse => {
                self.counters.policy_refused += 1;
                self.unreachable(Unreachable::Host, proto, guest, remote, msg);
            }
            Verdict::Prohibit => {
                self.egress_refused(Proto::Icmp, remote);
                self.unreachable(Unreachable::Prohibited, proto, guest, remote, msg);
            }
            Verdict::Drop | Verdict::GuestFwd(_) => self.counters.ignored += 1,
        }
    }

    /// Counts (and traces) a new flow the egress rules refused.
    fn egress_refused(&mut self, proto: Proto, remote: SocketAddr) {
        self.counters.egress_refused += 1;
        tracing::debug!(?proto, %remote, "refused by --restrict/--allow/--deny");
    }

    /// Handles readiness of one host socket.
    pub fn handle_host<H: HostIo>(&mut self, now: Instant, ev: HostEvent, host: &mut H) {
        let Some(id) = FlowId::from_token(ev.token) else {
            return self.listener_event(now, ev, host);
        };
        let mac = self.flow_mac(id);
        let env = env(&self.cfg, mac, self.offload, now);
        let Some((_, flow)) = self.flows.get_mut(id) else {
            return;
        };
        let closed = match flow {
            Flow::Tcp(f) => match f.on_host(&env, id.token(), ev, host, &mut self.out) {
                Status::Open => false,
                Status::Closed => true,
                Status::Unreachable => {
                    let ((guest, remote), quote) = (f.endpoints(), f.syn_quote());
                    self.unreachable(Unreachable::Host, IpProtocol::Tcp, guest, remote, &quote);
                    true
                }
            },
            Flow::Udp(f) => {
                if ev.readable {
                    f.set_readable(now);
                }
                false
            }
            Flow::Icmp(f) => {
                if ev.readable {
                    f.set_readable(now);
                }
                false
            }
        };
        self.settle(id, closed, host);
    }

    fn listener_event<H: HostIo>(&mut self, now: Instant, ev: HostEvent, host: &mut H) {
        let index = (ev.token.0 - FLOW_TOKEN_LIMIT) as usize;
        let Some(Some(listener)) = self.listeners.get_mut(index) else {
            return;
        };
        if !ev.readable {
            return;
        }
        match listener.fwd.proto {
            HostProto::Udp => listener.readable = true,
            HostProto::Tcp => {
                let fwd = listener.fwd;
                self.accept_all(now, fwd, ev.token, host);
            }
        }
    }

    /// The guest address a forward delivers to: the configured one, else
    /// the guest's own address of the host address's family (with several
    /// guests, the one holding the first DHCP address).
    fn forward_target(&self, fwd: &HostFwd) -> SocketAddr {
        let v6_host = matches!(fwd.host.ip(), IpAddr::V6(ip) if ip.to_ipv4_mapped().is_none());
        let ip = match fwd.guest_addr {
            Some(ip) => ip,
            None if v6_host && self.cfg.ipv6 => {
                let fallback = Ipv6Addr::from(u128::from(self.cfg.ipv6_net.network()) | 0x15);
                self.guest_ip6.unwrap_or(fallback).into()
            }
            // QEMU's default is the first DHCP address; a guest without a
            // lease (a static address) is found by what it sent.
            None if self.neighbors.mac_of(self.cfg.dhcpstart.into()).is_some() => {
                self.cfg.dhcpstart.into()
            }
            None => self.guest_ip.unwrap_or(self.cfg.dhcpstart).into(),
        };
        SocketAddr::new(ip, fwd.guest_port)
    }

    fn accept_all<H: HostIo>(&mut self, now: Instant, fwd: HostFwd, listener: Token, host: &mut H) {
        // Bounded: at most one table's worth per event.
        for _ in 0..self.cfg.max_flows {
            if !self.make_room(now, host) {
                return;
            }
            // Accept under a provisional key; the real one needs the peer.
            let guest = self.forward_target(&fwd);
            let placeholder = Key {
                proto: Proto::Tcp,
                guest,
                remote: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            };
            let iss = TcpSeqNumber(splitmix(&mut self.rng) as i32);
            let Ok(id) = self.flows.insert(
                placeholder,
                Flow::Tcp(TcpFlow::inbound(&placeholder, iss, now)),
            ) else {
                return;
            };
            let client = match host.accept(listener, id.token()) {
                Ok(client) => client,
                Err(e) => {
                    self.flows.remove(id);
                    if e.kind() != ErrorKind::WouldBlock {
                        tracing::debug!(%e, "accept failed");
                    }
                    return;
                }
            };
            let remote = nat::guest_visible_source(&self.cfg, client, guest.ip());
            let key = Key {
                proto: Proto::Tcp,
                guest,
                remote,
            };
            if self.flows.rekey(id, key).is_err() {
                // The same client port again while the old flow lingers.
                self.flows.remove(id);
                host.tcp_abort(id.token());
                continue;
            }
            let new_id = id;
            if let Some((_, Flow::Tcp(f))) = self.flows.get_mut(id) {
                f.set_remote(remote);
            }
            self.open_stats(id, now, Some(client), true);
            tracing::debug!(%client, %guest, "port forward connection");
            if self.neighbors.mac_of(guest.ip()).is_none() {
                match guest.ip() {
                    IpAddr::V4(g) => self.out.push(&arp::request(&self.cfg, g)),
                    IpAddr::V6(g) => {
                        let cfg = &self.cfg;
                        self.out.push_with(|buf| ndp::neighbor_solicit(buf, cfg, g));
                    }
                }
            }
            let mac = self.mac_for(guest.ip());
            let env = env(&self.cfg, mac, self.offload, now);
            if let Some((_, Flow::Tcp(f))) = self.flows.get_mut(new_id) {
                f.send_syn(&env, new_id.token(), host, &mut self.out);
            }
            self.settle(new_id, false, host);
        }
    }

    /// Runs timers due at `now` (retransmissions, idle flow expiry).
    pub fn handle_timeout<H: HostIo>(&mut self, now: Instant, host: &mut H) {
        if self.next_ra.is_some_and(|at| now >= at) {
            let macs = Macs {
                src: EthernetAddress(self.cfg.mac),
                dst: ndp::multicast_mac(ndp::ALL_NODES),
            };
            let cfg = &self.cfg;
            self.out
                .push_with(|buf| ndp::router_advert(buf, cfg, macs, ndp::ALL_NODES));
            self.next_ra = Some(now + RA_INTERVAL);
        }
        let tftp_env = env(&self.cfg, self.guest_mac, self.offload, now);
        self.tftp.handle_timeout(&tftp_env, host, &mut self.out);
        while let Some(id) = self.flows.pop_due(now) {
            let mac = self.flow_mac(id);
            let env = env(&self.cfg, mac, self.offload, now);
            let Some((_, flow)) = self.flows.get_mut(id) else {
                continue;
            };
            let closed = match flow {
                Flow::Tcp(f) => f.on_timer(&env, id.token(), host, &mut self.out) != Status::Open,
                other => now >= other.deadline(),
            };
            self.settle(id, closed, host);
        }
    }

    /// Writes the next frame for the guest into `buf` (at least
    /// [`Config::max_frame`] bytes) and returns its length, or `None` when
    /// nothing is pending. TCP payload is peeked from the host socket
    /// straight into `buf`.
    pub fn poll_frame<H: HostIo>(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        host: &mut H,
    ) -> Option<usize> {
        let n = self
            .out
            .pop_into(buf)
            .or_else(|| self.poll_listeners(now, buf, host))
            .or_else(|| self.poll_flows(now, buf, host))?;
        self.counters.frames_out += 1;
        self.link.to_guest.add(n);
        Some(n)
    }

    fn poll_flows<H: HostIo>(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        host: &mut H,
    ) -> Option<usize> {
        while let Some(id) = self.flows.next_ready() {
            let mac = self.flow_mac(id);
            let env = env(&self.cfg, mac, self.offload, now);
            let Some((_, flow)) = self.flows.get_mut(id) else {
                continue;
            };
            let token = id.token();
            let (n, proto) = match flow {
                Flow::Tcp(f) => (f.produce(&env, token, host, buf), Proto::Tcp),
                Flow::Udp(f) => (f.produce(&env, token, host, buf), Proto::Udp),
                Flow::Icmp(f) => (f.produce(env.macs, token, host, buf), Proto::Icmp),
            };
            self.settle(id, false, host);
            if let Some(len) = n {
                self.count_to_guest(id, now, proto, buf.get(..len).unwrap_or_default());
                return n;
            }
        }
        None
    }

    fn poll_listeners<H: HostIo>(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        host: &mut H,
    ) -> Option<usize> {
        for i in 0..self.listeners.len() {
            while let Some(Some(listener)) = self.listeners.get(i)
                && listener.readable
            {
                let fwd = listener.fwd;
                let guest = self.forward_target(&fwd);
                let off = packet::udp_payload_offset(guest.ip());
                let token = listener_token(i);
                let (n, client) = match host.udp_recv_from(token, buf.get_mut(off..)?) {
                    Ok(r) => r,
                    Err(_) => {
                        if let Some(Some(l)) = self.listeners.get_mut(i) {
                            l.readable = false;
                        }
                        continue;
                    }
                };
                let remote = nat::guest_visible_source(&self.cfg, client, guest.ip());
                let key = Key {
                    proto: Proto::Udp,
                    guest,
                    remote,
                };
                let id = match self.flows.lookup(&key) {
                    Some(id) => id,
                    None => {
                        if !self.make_room(now, host) {
                            continue;
                        }
                        let kind = udp::Kind::Forwarded {
                            listener: token,
                            client,
                        };
                        let Ok(id) = self
                            .flows
                            .insert(key, Flow::Udp(UdpFlow::new(guest, remote, kind, now)))
                        else {
                            continue;
                        };
                        self.open_stats(id, now, Some(client), true);
                        id
                    }
                };
                if let Some((_, Flow::Udp(f))) = self.flows.get_mut(id) {
                    f.set_readable(now);
                }
                self.flows.count(id, now, false, n);
                self.settle(id, false, host);
                let macs = self.macs_for(guest.ip());
                return packet::udp_in_place(
                    buf,
                    macs,
                    (remote.ip(), remote.port()),
                    (guest.ip(), guest.port()),
                    n,
                );
            }
        }
        None
    }

    /// When [`Stack::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.flows.next_deadline(),
            self.next_ra,
            self.tftp.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The guest link went away (the QEMU client disconnected): every
    /// guest-facing flow is closed and the next guest starts afresh.
    pub fn reset_link<H: HostIo>(&mut self, host: &mut H) {
        for id in self.flows.ids() {
            self.remove(id, host);
        }
        self.tftp.clear(host);
        self.out.clear();
        self.guest_mac = None;
        self.neighbors.clear();
        self.guest_ip = None;
        self.guest_ip6 = None;
        self.next_ra = None;
        self.link = LinkStats::default();
    }

    /// The guest at `mac` left the switch (its QEMU disconnected): its
    /// flows are closed and its addresses forgotten; its DHCP lease stays,
    /// so that it gets the same address if it comes back within the lease.
    /// The other guests are untouched; when no guest is left, this is
    /// [`Stack::reset_link`].
    pub fn guest_gone<H: HostIo>(&mut self, mac: [u8; 6], host: &mut H) {
        let addrs = self.neighbors.forget(mac);
        if self.guest_mac == Some(EthernetAddress(mac)) {
            self.guest_mac = None;
        }
        if self.neighbors.is_empty() && self.guest_mac.is_none() {
            return self.reset_link(host);
        }
        if self.guest_ip.is_some_and(|ip| addrs.contains(&ip.into())) {
            self.guest_ip = None;
        }
        if self.guest_ip6.is_some_and(|ip| addrs.contains(&ip.into())) {
            self.guest_ip6 = None;
        }
        for id in self.flows.ids() {
            if self
                .flows
                .get(id)
                .is_some_and(|(key, _)| addrs.contains(&key.guest.ip()))
            {
                self.remove(id, host);
            }
        }
        self.tftp.forget(&addrs, host);
    }

    /// What the stack has counted so far.
    pub fn counters(&self) -> Counters {
        Counters {
            out_dropped: self.out.dropped,
            ..self.counters.clone()
        }
    }

    /// Number of flows in the table.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The flows open now, for listings such as QEMU's `info usernet`.
    pub fn connections(&self) -> Vec<Connection> {
        self.flows
            .ids()
            .into_iter()
            .filter_map(|id| self.flows.get(id).map(|entry| (id, entry)))
            .map(|(id, (key, flow))| Connection {
                token: id.token(),
                proto: key.proto,
                guest: key.guest,
                remote: key.remote,
                tcp_state: match flow {
                    Flow::Tcp(f) => Some(f.state),
                    _ => None,
                },
            })
            .collect()
    }

    /// Every flow with its traffic counts at `now` (see [`crate::stats`]).
    pub fn flows(&self, now: Instant) -> impl Iterator<Item = FlowInfo> + '_ {
        self.flows.iter().map(move |(_, key, flow, stats)| {
            let state = match flow {
                Flow::Tcp(f) => FlowState::Tcp(f.state),
                _ => FlowState::Open,
            };
            FlowInfo::new((key.proto, key.guest, key.remote), state, stats, now)
        })
    }

    /// The guests on the link at `now` (one stack serves one guest: at
    /// most one, once it sent a frame).
    pub fn guests(&self, now: Instant) -> Vec<GuestLink> {
        let Some(since) = self.link.since else {
            return Vec::new();
        };
        let (mac, ipv4, ipv6) = self.guest_addresses();
        vec![GuestLink {
            mac,
            ipv4,
            ipv6,
            from_guest: self.link.from_guest,
            to_guest: self.link.to_guest,
            connected: now.saturating_duration_since(since),
        }]
    }

    /// The DHCP leases bound now, as (address, client MAC).
    pub fn dhcp_leases(&self) -> Vec<(Ipv4Addr, [u8; 6])> {
        self.dhcp.bound().collect()
    }

    /// Takes over a DHCP lease from a saved state (migration), for a full
    /// lease time from `now`; false if `ip` is outside the pool.
    pub fn restore_dhcp_lease(&mut self, now: Instant, ip: Ipv4Addr, mac: [u8; 6]) -> bool {
        let expires = now.checked_add(self.cfg.lease_time);
        self.dhcp.restore(&self.cfg, ip, mac, expires)
    }

    /// The addresses the guest at `mac` uses (most recently used first, both
    /// families), and its DHCP lease if it has one that it does not use.
    pub fn addresses_of(&self, mac: [u8; 6]) -> Vec<IpAddr> {
        let mut addrs = self.neighbors.addrs_of(mac);
        if let Some(ip) = self.dhcp.lease_of(mac)
            && !addrs.contains(&ip.into())
        {
            addrs.push(ip.into());
        }
        addrs
    }

    /// What the stack learnt of the guest: its MAC, IPv4 and IPv6 address.
    pub fn guest_addresses(&self) -> (Option<[u8; 6]>, Option<Ipv4Addr>, Option<Ipv6Addr>) {
        (self.guest_mac.map(|m| m.0), self.guest_ip, self.guest_ip6)
    }
}

/// One open flow, as [`Stack::connections`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The token of its host socket.
    pub token: Token,
    /// Protocol.
    pub proto: Proto,
    /// The guest's endpoint (ICMP: the echo identifier as the port).
    pub guest: SocketAddr,
    /// The peer as the guest sees it.
    pub remote: SocketAddr,
    /// Where a TCP connection stands (`None` for UDP and ICMP).
    pub tcp_state: Option<tcp::State>,
}
