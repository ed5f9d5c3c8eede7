//! The stack: one guest link, its services, and its NAT'ed flows.
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
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4DstUnreachable, Icmpv4Packet,
    Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber, UdpPacket, UdpRepr,
};

use crate::config::{Config, DnsHost, HostFwd};
use crate::flow::{FLOW_TOKEN_LIMIT, FlowId, Key, Table};
use crate::host::{HostEvent, HostIo, Proto as HostProto, Token};
use crate::icmp::{self, IcmpFlow};
use crate::nat::{self, Proto, Verdict};
use crate::output::Output;
use crate::packet::{self, Macs};
use crate::tcp::{self, Env, Status, TcpFlow};
use crate::udp::{self, UdpFlow};
use crate::{arp, dhcp, dns};

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
    /// Flows refused because the flow table was full.
    pub flows_refused: u64,
    /// Flows refused by policy (e.g. host loopback disabled).
    pub policy_refused: u64,
    /// Frames dropped because the output queue was full.
    pub out_dropped: u64,
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
    /// The guest's MAC, learnt from its frames.
    guest_mac: Option<EthernetAddress>,
    /// The guest's address, learnt from DHCP or ARP.
    guest_ip: Option<Ipv4Addr>,
    dhcp: dhcp::Server,
    flows: Table<Flow>,
    out: Output,
    /// Port-forward listeners by id; removed ones leave a hole.
    listeners: Vec<Option<Listener>>,
    /// Lingering TCP flows, oldest first: the first to go when the table
    /// is full.
    lingering: VecDeque<FlowId>,
    /// State of the generator for initial sequence numbers.
    rng: u64,
    /// The host forbids ping sockets (logged once).
    ping_denied: bool,
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

/// What flows see of the stack; borrows only the configuration, so the
/// flow table and output queue stay free to borrow mutably.
fn env(cfg: &Config, guest_mac: Option<EthernetAddress>, now: Instant) -> Env<'_> {
    Env {
        cfg,
        macs: macs(cfg, guest_mac),
        now,
    }
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
            lingering: VecDeque::new(),
            rng: cfg.seed,
            guest_mac: None,
            guest_ip: None,
            ping_denied: false,
            counters: Counters::default(),
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

    /// The port forwards in force, with their ids.
    pub fn hostfwds(&self) -> impl Iterator<Item = (usize, &HostFwd)> {
        self.listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.as_ref().map(|l| (i, &l.fwd)))
    }

    fn macs(&self) -> Macs {
        macs(&self.cfg, self.guest_mac)
    }

    fn learn(&mut self, mac: EthernetAddress, ip: Ipv4Addr) {
        self.guest_mac = Some(mac);
        let ours = ip == self.cfg.host || ip == self.cfg.dns;
        if self.cfg.net.contains(ip) && !ours && !ip.is_unspecified() {
            self.guest_ip = Some(ip);
        }
    }

    /// Handles one Ethernet frame from the guest.
    pub fn handle_frame<H: HostIo>(&mut self, now: Instant, frame: &[u8], host: &mut H) {
        self.counters.frames_in += 1;
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
            EthernetProtocol::Arp => match arp::handle(&self.cfg, eth.payload()) {
                arp::Outcome::Reply(reply, mac, ip) => {
                    self.learn(mac, ip);
                    self.out.push(&reply);
                }
                arp::Outcome::Learn(mac, ip) => self.learn(mac, ip),
                arp::Outcome::Ignore => {}
                arp::Outcome::Malformed => self.counters.malformed += 1,
            },
            EthernetProtocol::Ipv4 => {
                self.guest_mac = Some(src);
                self.ipv4(now, src, eth.payload(), host);
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
        let caps = ChecksumCapabilities::default();
        let Ok(pkt) = Ipv4Packet::new_checked(payload) else {
            self.counters.malformed += 1;
            return;
        };
        if pkt.more_frags() || pkt.frag_offset() != 0 {
            // Fragments are not reassembled (yet): guests use PMTU discovery.
            self.counters.ignored += 1;
            return;
        }
        let Ok(ip) = Ipv4Repr::parse(&pkt, &caps) else {
            self.counters.malformed += 1;
            return;
        };
        let data = pkt.payload();
        let (src, dst) = (IpAddress::Ipv4(ip.src_addr), IpAddress::Ipv4(ip.dst_addr));
        match ip.next_header {
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(data) else {
                    self.counters.malformed += 1;
                    return;
                };
                if UdpRepr::parse(&udp, &src, &dst, &caps).is_err() {
                    self.counters.malformed += 1;
                    return;
                }
                let (sport, dport) = (udp.src_port(), udp.dst_port());
                let guest = SocketAddr::new(ip.src_addr.into(), sport);
                let remote = SocketAddr::new(ip.dst_addr.into(), dport);
                if dport == DHCP_SERVER_PORT {
                    self.dhcp(now, src_mac, udp.payload());
                } else {
                    self.udp(now, guest, remote, udp.payload(), host);
                }
            }
            IpProtocol::Tcp => {
                let Ok(tcp) = TcpPacket::new_checked(data) else {
                    self.counters.malformed += 1;
                    return;
                };
                let Ok(seg) = TcpRepr::parse(&tcp, &src, &dst, &caps) else {
                    self.counters.malformed += 1;
                    return;
                };
                let guest = SocketAddr::new(ip.src_addr.into(), seg.src_port);
                let remote = SocketAddr::new(ip.dst_addr.into(), seg.dst_port);
                self.tcp(now, guest, remote, &seg, host);
            }
            IpProtocol::Icmp => self.icmp(now, ip.src_addr, ip.dst_addr, data, host),
            _ => self.counters.ignored += 1,
        }
    }

    fn dhcp(&mut self, now: Instant, src_mac: EthernetAddress, payload: &[u8]) {
        let Some(reply) = self.dhcp.handle(&self.cfg, now, src_mac.0, payload) else {
            self.counters.ignored += 1;
            return;
        };
        if let Some(ip) = reply.leased {
            self.guest_ip = Some(ip);
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

    /// Makes room for one more flow, evicting a lingering TCP flow if the
    /// table is full. Returns whether there is room.
    fn make_room<H: HostIo>(&mut self, host: &mut H) -> bool {
        while self.flows.is_full() {
            let Some(id) = self.lingering.pop_front() else {
                self.counters.flows_refused += 1;
                return false;
            };
            if let Some((_, Flow::Tcp(f))) = self.flows.get(id)
                && f.is_lingering()
            {
                self.remove(id, host);
            }
        }
        true
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
        let (deadline, ready) = (flow.deadline(), flow.wants_output());
        if let Flow::Tcp(f) = flow
            && f.is_lingering()
            && !self.lingering.contains(&id)
        {
            self.lingering.push_back(id);
        }
        self.flows.schedule(id, deadline);
        if ready {
            self.flows.mark_ready(id);
        }
    }

    /// ICMP "destination unreachable" back to the guest for a packet it
    /// sent from `guest` to `remote` (`original`: its IP header and the
    /// first 8 bytes of its payload, rebuilt).
    fn unreachable(
        &mut self,
        code: Icmpv4DstUnreachable,
        proto: IpProtocol,
        guest: SocketAddr,
        remote: SocketAddr,
        l4: &[u8],
    ) {
        let (IpAddr::V4(g), IpAddr::V4(r)) = (guest.ip(), remote.ip()) else {
            return;
        };
        let header = Ipv4Repr {
            src_addr: g,
            dst_addr: r,
            next_header: proto,
            payload_len: l4.len(),
            hop_limit: 64,
        };
        let data = &l4[..l4.len().min(8)];
        let repr = Icmpv4Repr::DstUnreachable {
            reason: code,
            header,
            data,
        };
        let (macs, from) = (self.macs(), self.cfg.host);
        self.out
            .push_with(|buf| icmp::emit(buf, macs, from, g, &repr));
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
                    Verdict::Dns => {
                        if let Some(answer) = dns::local_answer(payload, &self.cfg.dns_hosts) {
                            let macs = self.macs();
                            self.out.push_with(|buf| {
                                packet::udp(
                                    buf,
                                    macs,
                                    (remote.ip(), 53),
                                    (guest.ip(), guest.port()),
                                    &answer,
                                )
                            });
                            return;
                        }
                        match self.cfg.dns_upstreams.first() {
                            Some(up) => udp::Kind::Dns(*up),
                            None => {
                                if let Some(fail) = dns::servfail(payload) {
                                    let macs = self.macs();
                                    self.out.push_with(|buf| {
                                        packet::udp(
                                            buf,
                                            macs,
                                            (remote.ip(), 53),
                                            (guest.ip(), guest.port()),
                                            &fail,
                                        )
                                    });
                                }
                                return;
                            }
                        }
                    }
                    Verdict::Refuse => {
                        self.counters.policy_refused += 1;
                        let code = if remote.ip() == IpAddr::V4(self.cfg.dns)
                            || remote.ip() == IpAddr::V4(self.cfg.host)
                        {
                            Icmpv4DstUnreachable::PortUnreachable
                        } else {
                            Icmpv4DstUnreachable::HostUnreachable
                        };
                        let mut l4 = [0u8; 8];
                        l4[..2].copy_from_slice(&guest.port().to_be_bytes());
                        l4[2..4].copy_from_slice(&remote.port().to_be_bytes());
                        self.unreachable(code, IpProtocol::Udp, guest, remote, &l4);
                        return;
                    }
                    Verdict::Local | Verdict::Drop => {
                        self.counters.ignored += 1;
                        return;
                    }
                };
                if !self.make_room(host) {
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
                id
            }
        };
        if let Some((_, Flow::Udp(f))) = self.flows.get_mut(id)
            && let Err(e) = f.send(id.token(), host, payload, now)
        {
            tracing::debug!(%e, %remote, "UDP send failed");
        }
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
            let env = env(&self.cfg, self.guest_mac, now);
            let Some((_, Flow::Tcp(f))) = self.flows.get_mut(id) else {
                return;
            };
            let status = f.on_segment(&env, id.token(), seg, host, &mut self.out);
            self.settle(id, status != Status::Open, host);
            return;
        }
        if seg.control != TcpControl::Syn || seg.ack_number.is_some() {
            self.reset(guest, remote, seg);
            return;
        }
        let target = match nat::outbound(&self.cfg, Proto::Tcp, remote) {
            Verdict::Host(dst) => dst,
            Verdict::Dns => match self.cfg.dns_upstreams.first() {
                Some(up) => *up,
                None => return self.reset(guest, remote, seg),
            },
            Verdict::Drop => return,
            Verdict::Refuse | Verdict::Local => {
                self.counters.policy_refused += 1;
                return self.reset(guest, remote, seg);
            }
        };
        if !self.make_room(host) {
            return self.reset(guest, remote, seg);
        }
        let iss = TcpSeqNumber(splitmix(&mut self.rng) as i32);
        let flow = TcpFlow::outbound(&self.cfg, &key, seg, iss, now);
        let Ok(id) = self.flows.insert(key, Flow::Tcp(flow)) else {
            return;
        };
        if let Err(e) = host.tcp_connect(id.token(), target) {
            tracing::debug!(%e, %target, "host connect failed at once");
            self.flows.remove(id);
            host.close(id.token());
            return self.reset(guest, remote, seg);
        }
        self.settle(id, false, host);
    }

    /// Answers a segment that has no flow with a reset.
    fn reset(&mut self, guest: SocketAddr, remote: SocketAddr, seg: &TcpRepr) {
        let Some(rst) = tcp::reset_for(seg) else {
            return;
        };
        let macs = self.macs();
        self.out
            .push_with(|buf| packet::tcp(buf, macs, remote.ip(), guest.ip(), &rst));
    }

    fn icmp<H: HostIo>(
        &mut self,
        now: Instant,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        data: &[u8],
        host: &mut H,
    ) {
        let caps = ChecksumCapabilities::default();
        let Ok(pkt) = Icmpv4Packet::new_checked(data) else {
            self.counters.malformed += 1;
            return;
        };
        let Ok(repr) = Icmpv4Repr::parse(&pkt, &caps) else {
            self.counters.malformed += 1;
            return;
        };
        let Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data: body,
        } = repr
        else {
            self.counters.ignored += 1;
            return;
        };
        let remote = SocketAddr::new(dst.into(), 0);
        let macs = self.macs();
        match nat::outbound(&self.cfg, Proto::Icmp, remote) {
            Verdict::Local => {
                let reply = Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data: body,
                };
                self.out
                    .push_with(|buf| icmp::emit(buf, macs, dst, src, &reply));
            }
            Verdict::Host(_) | Verdict::Dns => {
                let key = Key {
                    proto: Proto::Icmp,
                    guest: SocketAddr::new(src.into(), ident),
                    remote,
                };
                let id = match self.flows.lookup(&key) {
                    Some(id) => id,
                    None => {
                        if !self.make_room(host) {
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
                        id
                    }
                };
                if let Some((_, Flow::Icmp(f))) = self.flows.get_mut(id)
                    && let Err(e) = f.send(id.token(), host, data, now)
                {
                    tracing::debug!(%e, %dst, "ping send failed");
                    if e.kind() != ErrorKind::WouldBlock {
                        let l4 = &data[..data.len().min(8)];
                        let guest = SocketAddr::new(src.into(), 0);
                        self.unreachable(
                            Icmpv4DstUnreachable::HostUnreachable,
                            IpProtocol::Icmp,
                            guest,
                            remote,
                            l4,
                        );
                    }
                }
                self.settle(id, false, host);
            }
            Verdict::Refuse => {
                self.counters.policy_refused += 1;
                let l4 = &data[..data.len().min(8)];
                let guest = SocketAddr::new(src.into(), 0);
                self.unreachable(
                    Icmpv4DstUnreachable::HostUnreachable,
                    IpProtocol::Icmp,
                    guest,
                    remote,
                    l4,
                );
            }
            Verdict::Drop => self.counters.ignored += 1,
        }
    }

    /// Handles readiness of one host socket.
    pub fn handle_host<H: HostIo>(&mut self, now: Instant, ev: HostEvent, host: &mut H) {
        let Some(id) = FlowId::from_token(ev.token) else {
            return self.listener_event(now, ev, host);
        };
        let env = env(&self.cfg, self.guest_mac, now);
        let Some((_, flow)) = self.flows.get_mut(id) else {
            return;
        };
        let closed = match flow {
            Flow::Tcp(f) => match f.on_host(&env, id.token(), ev, host, &mut self.out) {
                Status::Open => false,
                Status::Closed => true,
                Status::Unreachable => {
                    let ((guest, remote), quote) = (f.endpoints(), f.syn_quote());
                    let code = Icmpv4DstUnreachable::HostUnreachable;
                    self.unreachable(code, IpProtocol::Tcp, guest, remote, &quote);
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

    /// The guest address a forward delivers to.
    fn forward_target(&self, fwd: &HostFwd) -> SocketAddr {
        let ip = fwd
            .guest_addr
            .or(self.guest_ip)
            .unwrap_or(self.cfg.dhcpstart);
        SocketAddr::new(ip.into(), fwd.guest_port)
    }

    fn accept_all<H: HostIo>(&mut self, now: Instant, fwd: HostFwd, listener: Token, host: &mut H) {
        // Bounded: at most one table's worth per event.
        for _ in 0..self.cfg.max_flows {
            if !self.make_room(host) {
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
            let remote = nat::guest_visible_source(&self.cfg, client);
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
            tracing::debug!(%client, %guest, "port forward connection");
            if self.guest_mac.is_none()
                && let IpAddr::V4(g) = guest.ip()
            {
                let req = arp::request(&self.cfg, g);
                self.out.push(&req);
            }
            let env = env(&self.cfg, self.guest_mac, now);
            if let Some((_, Flow::Tcp(f))) = self.flows.get_mut(new_id) {
                f.send_syn(&env, new_id.token(), host, &mut self.out);
            }
            self.settle(new_id, false, host);
        }
    }

    /// Runs timers due at `now` (retransmissions, idle flow expiry).
    pub fn handle_timeout<H: HostIo>(&mut self, now: Instant, host: &mut H) {
        while let Some(id) = self.flows.pop_due(now) {
            let env = env(&self.cfg, self.guest_mac, now);
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
        Some(n)
    }

    fn poll_flows<H: HostIo>(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        host: &mut H,
    ) -> Option<usize> {
        let gateway = IpAddr::V4(self.cfg.host);
        while let Some(id) = self.flows.next_ready() {
            let env = env(&self.cfg, self.guest_mac, now);
            let Some((_, flow)) = self.flows.get_mut(id) else {
                continue;
            };
            let token = id.token();
            let n = match flow {
                Flow::Tcp(f) => f.produce(&env, token, host, buf),
                Flow::Udp(f) => f.produce(env.macs, token, host, buf, gateway),
                Flow::Icmp(f) => f.produce(env.macs, token, host, buf),
            };
            self.settle(id, false, host);
            if n.is_some() {
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
                let remote = nat::guest_visible_source(&self.cfg, client);
                let key = Key {
                    proto: Proto::Udp,
                    guest,
                    remote,
                };
                let id = match self.flows.lookup(&key) {
                    Some(id) => id,
                    None => {
                        if !self.make_room(host) {
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
                        id
                    }
                };
                if let Some((_, Flow::Udp(f))) = self.flows.get_mut(id) {
                    f.set_readable(now);
                }
                self.settle(id, false, host);
                let macs = self.macs();
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
        self.flows.next_deadline()
    }

    /// The guest link went away (the QEMU client disconnected): every
    /// guest-facing flow is closed and the next guest starts afresh.
    pub fn reset_link<H: HostIo>(&mut self, host: &mut H) {
        for id in self.flows.ids() {
            self.remove(id, host);
        }
        self.lingering.clear();
        self.out.clear();
        self.guest_mac = None;
        self.guest_ip = None;
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
}
