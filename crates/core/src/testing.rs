//! Test support: a fake [`HostIo`] with in-memory sockets, a checker for the
//! frames the stack sends, and a byte-script driver shared by the fuzz
//! targets and the replay tests.
//!
//! Compiled only for this crate's unit tests and with the `testing` feature
//! (which the integration tests and `fuzz/` turn on); the release binary
//! never contains it.
//!
//! # Theory of operation
//! [`FakeHost`] stands in for the host's sockets. It never touches the
//! network: a TCP connect "succeeds" (or fails, per [`Behaviour`]) and its
//! completion is reported only when the test delivers an event, data the
//! "remote peer" sends is whatever the test pushed into a socket, and what
//! the stack sends is kept for the test to inspect. It is deterministic
//! (sockets are kept in token order, no clock, no randomness) and bounded:
//! every socket stores at most [`MAX_STORED`] bytes each way and
//! [`MAX_DATAGRAMS`] datagrams each way, and the closed-token log keeps the
//! last [`MAX_CLOSED`] tokens; what goes beyond is counted, not kept. It also
//! checks the [`HostIo`] contract as it goes and panics when the core breaks
//! it (a token reused while its socket is open, discarding more than was
//! received): under a fuzzer a panic is a finding.
//!
//! It also fakes the host's other services: guestfwd connections are fake
//! TCP sockets that record their [`GuestFwdTarget`], and the TFTP root is
//! [`FakeHost::files`], a map from names to contents (names with a `..`
//! component are refused, as the real host refuses paths leaving the
//! root).
//!
//! [`Harness`] is a stack, a fake host and a virtual clock. Its
//! [`Harness::run_script`] reads arbitrary bytes as a sequence of guest
//! frames and host happenings (see [`Op`] for the format) and checks after
//! every step that each output frame is well formed ([`check_frame`]), that
//! the flow table and the host's socket count stay within their bounds, and
//! that one poll never yields an unbounded number of frames.
//!
//! [`HostIo`]: crate::HostIo
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet,
    Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket,
    TcpRepr, UdpPacket, UdpRepr,
};

use crate::config::{GuestFwd, HostFwd};
use crate::host::{GuestFwdTarget, HostEvent, HostIo, Proto, Token};
use crate::{Config, Stack};

/// Most bytes a fake socket keeps in each direction.
pub const MAX_STORED: usize = 64 * 1024;
/// Most datagrams a fake socket keeps in each direction.
pub const MAX_DATAGRAMS: usize = 64;
/// Most closed tokens [`FakeHost::closed`] remembers.
pub const MAX_CLOSED: usize = 1024;
/// Most frames one drain of the stack may yield before the harness calls the
/// output runaway.
pub const MAX_FRAMES_PER_POLL: usize = 10_000;

/// What a fake socket is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SockKind {
    /// A TCP connection (connected out or accepted).
    #[default]
    Tcp,
    /// A UDP flow socket.
    Udp,
    /// An ICMP echo ("ping") socket.
    Icmp,
    /// A port forward's listener.
    Listener(Proto),
}

/// One fake host socket.
#[derive(Default, Debug)]
pub struct FakeSocket {
    /// What kind of socket this is.
    pub kind: SockKind,
    /// Where a TCP connect went.
    pub connect_to: Option<SocketAddr>,
    /// The guestfwd target a guestfwd connection went to.
    pub guestfwd: Option<GuestFwdTarget>,
    /// A connect is in progress: its completion has not been reported yet.
    pub connecting: bool,
    /// Bytes the stack sent (what the host peer received), up to
    /// [`MAX_STORED`].
    pub sent: Vec<u8>,
    /// Bytes the stack sent beyond what `sent` keeps.
    pub sent_dropped: usize,
    /// Bytes the host peer sent, not yet discarded by the stack.
    pub rx: Vec<u8>,
    /// The host peer finished sending.
    pub eof: bool,
    /// How many more bytes `tcp_send` accepts.
    pub send_room: usize,
    /// The stack shut down the sending direction.
    pub shut_wr: bool,
    /// The stack aborted the connection (set just before the socket is
    /// closed: see [`FakeHost::aborted`]).
    pub aborted: bool,
    /// Pending socket error, taken by `take_error`.
    pub error: Option<ErrorKind>,
    /// Datagrams waiting to be received, with their source.
    pub datagrams: VecDeque<(Vec<u8>, SocketAddr)>,
    /// Datagrams the stack sent, with their destination, up to
    /// [`MAX_DATAGRAMS`].
    pub sent_to: Vec<(Vec<u8>, SocketAddr)>,
}

impl FakeSocket {
    fn new(kind: SockKind) -> Self {
        FakeSocket {
            kind,
            ..FakeSocket::default()
        }
    }

    /// Queues bytes from the host peer, as many as fit under
    /// [`MAX_STORED`]; returns how many.
    pub fn push_rx(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(MAX_STORED.saturating_sub(self.rx.len()));
        self.rx.extend_from_slice(&data[..n]);
        n
    }

    /// Queues a datagram from `from` unless [`MAX_DATAGRAMS`] are waiting;
    /// returns whether it was queued.
    pub fn push_datagram(&mut self, data: &[u8], from: SocketAddr) -> bool {
        if self.datagrams.len() >= MAX_DATAGRAMS {
            return false;
        }
        self.datagrams.push_back((data.to_vec(), from));
        true
    }

    /// Whether the stack would find something to read.
    pub fn readable(&self) -> bool {
        !self.rx.is_empty() || self.eof || !self.datagrams.is_empty()
    }
}

/// How the fake host answers the stack's socket calls. The default is a
/// well-behaved but passive host: connects start fine and wait for the test,
/// ping sockets are forbidden, nothing arrives unless the test pushes it.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// The immediate result of `tcp_connect`: `None` starts the connect,
    /// `Some(kind)` fails it at once.
    pub connect_error: Option<ErrorKind>,
    /// The error a connect in progress ends with when
    /// [`FakeHost::pending_events`] reports it; `None` means it succeeds.
    pub connect_outcome: Option<ErrorKind>,
    /// `send_room` of new TCP sockets.
    pub send_room: usize,
    /// Bytes every new TCP socket has waiting from its peer.
    pub greeting: Vec<u8>,
    /// The peer closes right after the greeting.
    pub greeting_eof: bool,
    /// Every datagram the stack sends comes back as a reply from its
    /// destination (UDP echo).
    pub udp_echo: bool,
    /// Ping sockets are allowed (otherwise `icmp_open` is refused with
    /// `PermissionDenied`, as on hosts without `ping_group_range`); each echo
    /// request sent is answered.
    pub ping: bool,
    /// `udp_open` fails with this error.
    pub udp_open_error: Option<ErrorKind>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            connect_error: None,
            connect_outcome: None,
            send_room: usize::MAX,
            greeting: Vec::new(),
            greeting_eof: false,
            udp_echo: false,
            ping: false,
            udp_open_error: None,
        }
    }
}

impl Behaviour {
    /// A talkative host for replaying captures: connects succeed, each new
    /// connection has a greeting waiting, datagrams and pings are answered.
    pub fn chatty() -> Self {
        Behaviour {
            greeting: b"hello from the fake host\r\n".to_vec(),
            udp_echo: true,
            ping: true,
            ..Behaviour::default()
        }
    }
}

/// A fake [`HostIo`] with in-memory sockets; see the module documentation.
#[derive(Default, Debug)]
pub struct FakeHost {
    /// Open sockets by token.
    pub socks: BTreeMap<Token, FakeSocket>,
    /// The last [`MAX_CLOSED`] tokens closed, oldest first.
    pub closed: VecDeque<Token>,
    /// The last [`MAX_CLOSED`] tokens aborted (closed with a reset), oldest
    /// first; they are in `closed` too.
    pub aborted: VecDeque<Token>,
    /// Clients waiting to be accepted by a TCP listener.
    pub pending_accept: VecDeque<SocketAddr>,
    /// Listeners opened, in order.
    pub listening: Vec<(Token, Proto, SocketAddr)>,
    /// How the host answers.
    pub behaviour: Behaviour,
    /// The files below the TFTP root, by name.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Open files: token to name.
    pub open_files: BTreeMap<Token, String>,
    /// The root the last `file_open` named.
    pub file_root: Option<PathBuf>,
    /// Most bytes one `file_read_at` returns (short reads), if set.
    pub read_chunk: Option<usize>,
    /// `file_read_at` calls so far.
    pub file_reads: u64,
}

impl FakeHost {
    /// A host answering as `behaviour` says.
    pub fn new(behaviour: Behaviour) -> Self {
        FakeHost {
            behaviour,
            ..FakeHost::default()
        }
    }

    /// The open socket `token`.
    pub fn sock(&mut self, token: Token) -> io::Result<&mut FakeSocket> {
        self.socks
            .get_mut(&token)
            .ok_or_else(|| io::Error::from(ErrorKind::NotFound))
    }

    /// The one open socket matching `pred`; panics unless exactly one does.
    pub fn only(&self, pred: impl Fn(&FakeSocket) -> bool) -> Token {
        let found: Vec<_> = self
            .socks
            .iter()
            .filter(|(_, s)| pred(s))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one matching socket: {:?}",
            self.socks
        );
        found[0]
    }

    /// The `i`th open socket in token order (modulo their number).
    pub fn nth_token(&self, i: usize) -> Option<Token> {
        let n = self.socks.len();
        (n > 0).then(|| self.socks.keys().nth(i % n).copied())?
    }

    /// The events a poller would report now, one per socket with something
    /// to say, in token order: a connect in progress completes (writable, or
    /// an error per [`Behaviour::connect_outcome`]), data or end of stream
    /// waiting is readable, a pending error is an error, and a TCP listener
    /// with clients waiting is readable.
    pub fn pending_events(&mut self) -> Vec<HostEvent> {
        let outcome = self.behaviour.connect_outcome;
        let accepts = !self.pending_accept.is_empty();
        let mut events = Vec::new();
        for (&token, s) in &mut self.socks {
            let mut writable = false;
            if s.connecting {
                s.connecting = false;
                writable = true;
                if s.error.is_none() {
                    s.error = outcome;
                }
            }
            let readable = match s.kind {
                SockKind::Listener(Proto::Tcp) => accepts,
                _ => s.readable(),
            };
            let error = s.error.is_some();
            if readable || writable || error {
                events.push(HostEvent {
                    token,
                    readable,
                    writable,
                    error,
                });
            }
        }
        events
    }

    fn open(&mut self, token: Token, sock: FakeSocket) {
        let old = self.socks.insert(token, sock);
        assert!(
            old.is_none(),
            "HostIo contract: token {token:?} reused while its socket is open"
        );
    }

    fn new_tcp(&self) -> FakeSocket {
        let b = &self.behaviour;
        let mut s = FakeSocket {
            send_room: b.send_room,
            eof: b.greeting_eof,
            ..FakeSocket::new(SockKind::Tcp)
        };
        s.push_rx(&b.greeting);
        s
    }
}

/// The reply a ping socket gives to an echo request: the same message as
/// an echo reply (type 0), checksum fixed up.
fn echo_reply(request: &[u8]) -> Option<Vec<u8>> {
    if request.len() < 8 || request[0] != 8 {
        return None;
    }
    let mut reply = request.to_vec();
    reply[0] = 0;
    let mut p = Icmpv4Packet::new_unchecked(&mut reply[..]);
    p.fill_checksum();
    Some(reply)
}

impl HostIo for FakeHost {
    fn tcp_connect(&mut self, token: Token, dst: SocketAddr) -> io::Result<()> {
        if let Some(e) = self.behaviour.connect_error {
            return Err(e.into());
        }
        let sock = FakeSocket {
            connect_to: Some(dst),
            connecting: true,
            ..self.new_tcp()
        };
        self.open(token, sock);
        Ok(())
    }
    fn tcp_send(&mut self, token: Token, data: &[u8]) -> io::Result<usize> {
        let s = self.sock(token)?;
        let n = data.len().min(s.send_room);
        if n == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        s.send_room -= n;
        let keep = n.min(MAX_STORED - s.sent.len());
        s.sent.extend_from_slice(&data[..keep]);
        s.sent_dropped += n - keep;
        Ok(n)
    }
    fn tcp_peek(&mut self, token: Token, skip: usize, buf: &mut [u8]) -> io::Result<usize> {
        let s = self.sock(token)?;
        if skip >= s.rx.len() {
            return if s.eof {
                Ok(0)
            } else {
                Err(ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(s.rx.len() - skip);
        buf[..n].copy_from_slice(&s.rx[skip..skip + n]);
        Ok(n)
    }
    fn tcp_discard(&mut self, token: Token, n: usize) -> io::Result<()> {
        let s = self.sock(token)?;
        assert!(
            n <= s.rx.len(),
            "HostIo contract: discarding {n} bytes of {} received",
            s.rx.len()
        );
        s.rx.drain(..n);
        Ok(())
    }
    fn tcp_send_space(&mut self, token: Token) -> usize {
        self.sock(token).map_or(0, |s| s.send_room.min(1 << 20))
    }
    fn tcp_shutdown_write(&mut self, token: Token) {
        if let Ok(s) = self.sock(token) {
            s.shut_wr = true;
        }
    }
    fn tcp_abort(&mut self, token: Token) {
        // Like the real host: a reset closes the socket too.
        if let Ok(s) = self.sock(token) {
            s.aborted = true;
        }
        self.aborted.push_back(token);
        if self.aborted.len() > MAX_CLOSED {
            self.aborted.pop_front();
        }
        self.close(token);
    }
    fn udp_open(&mut self, token: Token, _dst: SocketAddr) -> io::Result<()> {
        if let Some(e) = self.behaviour.udp_open_error {
            return Err(e.into());
        }
        self.open(token, FakeSocket::new(SockKind::Udp));
        Ok(())
    }
    fn udp_send_to(&mut self, token: Token, data: &[u8], dst: SocketAddr) -> io::Result<usize> {
        let echo = self.behaviour.udp_echo;
        let s = self.sock(token)?;
        if s.sent_to.len() < MAX_DATAGRAMS {
            s.sent_to.push((data.to_vec(), dst));
        }
        if echo {
            s.push_datagram(data, dst);
        }
        Ok(data.len())
    }
    fn udp_recv_from(&mut self, token: Token, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (d, from) = self
            .sock(token)?
            .datagrams
            .pop_front()
            .ok_or(ErrorKind::WouldBlock)?;
        // Like recvfrom(2): a datagram longer than the buffer is truncated.
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok((n, from))
    }
    fn icmp_open(&mut self, token: Token, _dst: SocketAddr) -> io::Result<()> {
        if !self.behaviour.ping {
            return Err(ErrorKind::PermissionDenied.into());
        }
        self.open(token, FakeSocket::new(SockKind::Icmp));
        Ok(())
    }
    fn icmp_send_to(&mut self, token: Token, data: &[u8], dst: SocketAddr) -> io::Result<usize> {
        let s = self.sock(token)?;
        if s.sent_to.len() < MAX_DATAGRAMS {
            s.sent_to.push((data.to_vec(), dst));
        }
        if let Some(reply) = echo_reply(data) {
            s.push_datagram(&reply, dst);
        }
        Ok(data.len())
    }
    fn icmp_recv(&mut self, token: Token, buf: &mut [u8]) -> io::Result<usize> {
        let (d, _) = self
            .sock(token)?
            .datagrams
            .pop_front()
            .ok_or(ErrorKind::WouldBlock)?;
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok(n)
    }
    fn listen(&mut self, token: Token, proto: Proto, addr: SocketAddr) -> io::Result<()> {
        self.listening.push((token, proto, addr));
        self.open(token, FakeSocket::new(SockKind::Listener(proto)));
        Ok(())
    }
    fn accept(&mut self, _listener: Token, token: Token) -> io::Result<SocketAddr> {
        let peer = self
            .pending_accept
            .pop_front()
            .ok_or(ErrorKind::WouldBlock)?;
        let sock = self.new_tcp();
        self.open(token, sock);
        Ok(peer)
    }
    fn take_error(&mut self, token: Token) -> Option<io::Error> {
        self.sock(token).ok()?.error.take().map(io::Error::from)
    }
    fn close(&mut self, token: Token) {
        self.socks.remove(&token);
        self.open_files.remove(&token);
        if self.closed.len() >= MAX_CLOSED {
            self.closed.pop_front();
        }
        self.closed.push_back(token);
    }
    fn tcp_connect_guestfwd(&mut self, token: Token, target: &GuestFwdTarget) -> io::Result<()> {
        if let Some(e) = self.behaviour.connect_error {
            return Err(e.into());
        }
        let sock = FakeSocket {
            guestfwd: Some(target.clone()),
            connecting: true,
            ..self.new_tcp()
        };
        self.open(token, sock);
        Ok(())
    }
    fn file_open(&mut self, token: Token, root: &Path, path: &str) -> io::Result<u64> {
        assert!(
            !self.open_files.contains_key(&token),
            "HostIo contract: file token {token:?} reused while open"
        );
        self.file_root = Some(root.to_path_buf());
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(ErrorKind::PermissionDenied.into());
        }
        let len = self.files.get(path).ok_or(ErrorKind::NotFound)?.len();
        self.open_files.insert(token, path.to_owned());
        Ok(len as u64)
    }
    fn file_read_at(&mut self, token: Token, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file_reads += 1;
        let name = self.open_files.get(&token).ok_or(ErrorKind::NotFound)?;
        let data = self.files.get(name).ok_or(ErrorKind::NotFound)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = buf
            .len()
            .min(data.len() - start)
            .min(self.read_chunk.unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
}

/// Why an output frame is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

fn bad<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> Malformed {
    move |e| Malformed(format!("{what}: {e:?}"))
}

/// Checks that `frame`, sent by a stack configured with `cfg`, is well
/// formed: no longer than [`Config::max_frame`], from the stack's MAC, and
/// its ARP, IPv4 or IPv6 packet (with TCP, UDP or ICMP inside) parses back
/// with smoltcp with valid checksums. Other ethertypes are refused: the
/// stack sends none.
pub fn check_frame(cfg: &Config, frame: &[u8]) -> Result<(), Malformed> {
    if frame.len() > cfg.max_frame() {
        return Err(Malformed(format!(
            "{} bytes, above max_frame {}",
            frame.len(),
            cfg.max_frame()
        )));
    }
    let caps = ChecksumCapabilities::default();
    let eth = EthernetFrame::new_checked(frame).map_err(bad("ethernet"))?;
    if eth.src_addr() != EthernetAddress(cfg.mac) {
        return Err(Malformed(format!("source MAC {}", eth.src_addr())));
    }
    let (src, dst, proto, payload) = match eth.ethertype() {
        EthernetProtocol::Arp => {
            let p = ArpPacket::new_checked(eth.payload()).map_err(bad("arp"))?;
            ArpRepr::parse(&p).map_err(bad("arp repr"))?;
            return Ok(());
        }
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).map_err(bad("ipv4"))?;
            let r = Ipv4Repr::parse(&ip, &caps).map_err(bad("ipv4 repr"))?;
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Err(Malformed("fragmented IPv4".into()));
            }
            let proto = r.next_header;
            if proto == IpProtocol::Icmp {
                let p = Icmpv4Packet::new_checked(ip.payload()).map_err(bad("icmpv4"))?;
                if !p.verify_checksum() {
                    return Err(Malformed("icmpv4 checksum".into()));
                }
                return Ok(());
            }
            let (s, d) = (IpAddress::Ipv4(r.src_addr), IpAddress::Ipv4(r.dst_addr));
            (s, d, proto, ip.payload())
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).map_err(bad("ipv6"))?;
            let r = Ipv6Repr::parse(&ip).map_err(bad("ipv6 repr"))?;
            let proto = r.next_header;
            if proto == IpProtocol::Icmpv6 {
                let p = Icmpv6Packet::new_checked(ip.payload()).map_err(bad("icmpv6"))?;
                if !p.verify_checksum(&r.src_addr, &r.dst_addr) {
                    return Err(Malformed("icmpv6 checksum".into()));
                }
                return Ok(());
            }
            let (s, d) = (IpAddress::Ipv6(r.src_addr), IpAddress::Ipv6(r.dst_addr));
            (s, d, proto, ip.payload())
        }
        other => return Err(Malformed(format!("ethertype {other}"))),
    };
    match proto {
        IpProtocol::Tcp => {
            let p = TcpPacket::new_checked(payload).map_err(bad("tcp"))?;
            TcpRepr::parse(&p, &src, &dst, &caps).map_err(bad("tcp repr"))?;
        }
        IpProtocol::Udp => {
            let p = UdpPacket::new_checked(payload).map_err(bad("udp"))?;
            UdpRepr::parse(&p, &src, &dst, &caps).map_err(bad("udp repr"))?;
        }
        other => return Err(Malformed(format!("IP protocol {other}"))),
    }
    Ok(())
}

/// Recomputes the IPv4 header checksum and the TCP, UDP, ICMP or ICMPv6
/// checksum of an Ethernet frame in place, where the headers' lengths are
/// consistent enough to find them; anything else is left alone. The fuzzer
/// uses it so that mutated frames get past checksum verification into the
/// protocol code.
pub fn fix_checksums(frame: &mut [u8]) {
    let Ok(mut eth) = EthernetFrame::new_checked(frame) else {
        return;
    };
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
                return;
            };
            ip.fill_checksum();
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            let proto = ip.next_header();
            if ip.more_frags() || ip.frag_offset() != 0 {
                return;
            }
            fix_transport(
                proto,
                &IpAddress::Ipv4(src),
                &IpAddress::Ipv4(dst),
                ip.payload_mut(),
            );
        }
        EthernetProtocol::Ipv6 => {
            let Ok(mut ip) = Ipv6Packet::new_checked(eth.payload_mut()) else {
                return;
            };
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            let proto = ip.next_header();
            fix_transport(
                proto,
                &IpAddress::Ipv6(src),
                &IpAddress::Ipv6(dst),
                ip.payload_mut(),
            );
        }
        _ => {}
    }
}

fn fix_transport(proto: IpProtocol, src: &IpAddress, dst: &IpAddress, payload: &mut [u8]) {
    match (proto, src, dst) {
        (IpProtocol::Tcp, ..) => {
            if let Ok(mut p) = TcpPacket::new_checked(payload) {
                p.fill_checksum(src, dst);
            }
        }
        (IpProtocol::Udp, ..) => {
            if let Ok(mut p) = UdpPacket::new_checked(payload) {
                p.fill_checksum(src, dst);
            }
        }
        (IpProtocol::Icmp, ..) => {
            if let Ok(mut p) = Icmpv4Packet::new_checked(payload) {
                p.fill_checksum();
            }
        }
        (IpProtocol::Icmpv6, IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
            if let Ok(mut p) = Icmpv6Packet::new_checked(payload) {
                p.fill_checksum(s, d);
            }
        }
        _ => {}
    }
}

/// One step of a [`Harness::run_script`] script.
///
/// A script is a configuration byte (see [`Harness::from_script_config`];
/// bit 5 set fixes up every frame's checksums, [`fix_checksums`]) then
/// steps. Each step starts with a byte: its low 7 bits modulo
/// [`Op::COUNT`] pick the operation, and bit 7 set means "do not poll the
/// stack's output after this step" (so output can pile up). The bytes after
/// it are the operation's arguments, read as listed on each variant; a
/// script that ends early gives zeros (and a frame is cut short).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `0, len: u16 be, bytes[len]`: a frame from the guest.
    Frame,
    /// `1`: the host reports every socket with something to say
    /// ([`FakeHost::pending_events`]).
    Deliver,
    /// `2, t: u8`: the clock advances `t * t` milliseconds (`t = 255`: to
    /// the stack's next deadline, if any) and the stack handles the timeout.
    Time,
    /// `3, i: u8, flags: u8`: an event on the `i`th socket; flags bit 0
    /// readable, bit 1 writable, bit 2 error.
    Event,
    /// `4, i: u8, len: u8, bytes[len]`: data arrives on the `i`th socket (a
    /// datagram from its peer for UDP and listeners, stream bytes for TCP).
    Data,
    /// `5, i: u8`: the `i`th socket's peer closes its end.
    Eof,
    /// `6, i: u8, e: u8`: the `i`th socket gets an error (refused, reset,
    /// host unreachable, timed out, broken pipe, by `e % 5`).
    Error,
    /// `7, b: u8`: the host changes behaviour: bit 0 connects fail at once,
    /// bit 1 connects end refused, bit 2 new sockets have a greeting, bit 3
    /// UDP echo, bit 4 pings allowed, bit 5 send room small (100 bytes),
    /// bit 6 UDP sockets cannot open, bit 7 greeting then EOF.
    Behave,
    /// `8, c: u8`: a client `192.0.2.c:(1000 + c)` connects to the TCP
    /// forwards; their listeners are reported readable.
    Accept,
    /// `9`: the guest link goes away and comes back ([`Stack::reset_link`]).
    ResetLink,
}

impl Op {
    /// Number of operations.
    pub const COUNT: u8 = 10;
    /// Bit 7 of a step's first byte: skip polling after the step.
    pub const NO_POLL: u8 = 0x80;

    /// The operation a step's first byte picks.
    pub fn from_byte(b: u8) -> Op {
        match (b & 0x7f) % Op::COUNT {
            0 => Op::Frame,
            1 => Op::Deliver,
            2 => Op::Time,
            3 => Op::Event,
            4 => Op::Data,
            5 => Op::Eof,
            6 => Op::Error,
            7 => Op::Behave,
            8 => Op::Accept,
            _ => Op::ResetLink,
        }
    }

    /// The step bytes of a guest frame (its length capped at 65535).
    pub fn encode_frame(frame: &[u8]) -> Vec<u8> {
        let len = frame.len().min(u16::MAX as usize);
        let mut v = Vec::with_capacity(3 + len);
        v.push(Op::Frame as u8);
        v.extend_from_slice(&(len as u16).to_be_bytes());
        v.extend_from_slice(&frame[..len]);
        v
    }
}

/// Reads a script's bytes; past the end every read is zero.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// A stack, its fake host and a virtual clock.
pub struct Harness {
    /// The stack under test.
    pub stack: Stack,
    /// Its host sockets.
    pub host: FakeHost,
    /// The virtual clock.
    pub now: Instant,
    /// Every frame the stack sent since the last [`Harness::take_output`]
    /// (when recording).
    pub output: Vec<Vec<u8>>,
    /// Keep the frames polled in `output`.
    pub record: bool,
    /// Fix up the checksums of every frame [`Harness::run_script`] feeds
    /// in ([`fix_checksums`]).
    pub fix_checksums: bool,
    buf: Vec<u8>,
}

impl Harness {
    /// A started stack for `cfg` with a host behaving as `behaviour`; the
    /// virtual clock starts at `start`.
    ///
    /// # Panics
    /// If the stack cannot start (the fake host's `listen` never fails).
    pub fn new(cfg: Config, behaviour: Behaviour, start: Instant) -> Harness {
        let buf = vec![0; cfg.max_frame()];
        let mut h = Harness {
            stack: Stack::new(cfg, start),
            host: FakeHost::new(behaviour),
            now: start,
            output: Vec::new(),
            record: false,
            fix_checksums: false,
            buf,
        };
        h.stack.start(&mut h.host).expect("the fake host listens");
        h
    }

    /// The configuration a script's first byte selects: bit 0 a flow table
    /// of 4, bit 1 a TCP and a UDP port forward, bit 2 a DNS upstream, bit
    /// 3 host loopback disabled, bit 4 the smallest MTU (576), bit 6
    /// `--restrict` with holes for port 80 of both gateways, bit 7 a TFTP
    /// root (holding [`Harness::TFTP_FILES`]) and a guestfwd on
    /// 10.0.2.100:4321. (Bit 5 is not configuration: [`Harness::run_script`]
    /// reads it as "fix the checksums of every frame".)
    pub fn from_script_config(b: u8) -> Config {
        let mut cfg = Config::default();
        if b & 1 != 0 {
            cfg.max_flows = 4;
        }
        if b & 2 != 0 {
            for f in ["tcp:127.0.0.1:2222-:22", "udp:127.0.0.1:5353-:53"] {
                if let Ok(fwd) = f.parse::<HostFwd>() {
                    cfg.hostfwd.push(fwd);
                }
            }
        }
        if b & 4 != 0 {
            cfg.dns_upstreams
                .push(SocketAddr::from((Ipv4Addr::LOCALHOST, 5353)));
        }
        cfg.disable_host_loopback = b & 8 != 0;
        if b & 16 != 0 {
            cfg.mtu = crate::config::MIN_MTU;
        }
        if b & 64 != 0 {
            cfg.restrict = true;
            for hole in ["10.0.2.2:80", "[fec0::2]:80"] {
                if let Ok(rule) = crate::config::EgressRule::parse(true, hole) {
                    cfg.egress.push(rule);
                }
            }
        }
        if b & 128 != 0 {
            cfg.tftp_root = Some(PathBuf::from("/tftp"));
            if let Ok(g) = "tcp:10.0.2.100:4321-cmd:cat".parse::<GuestFwd>() {
                cfg.guestfwd.push(g);
            }
        }
        cfg
    }

    /// The files of the fake TFTP root in scripts (name, size): empty, one
    /// block, exactly two blocks, and a partial third.
    pub const TFTP_FILES: [(&'static str, usize); 4] = [
        ("empty", 0),
        ("small", 100),
        ("two", 1024),
        ("boot/big", 1300),
    ];

    /// Runs a script (see [`Op`]) from a fresh harness and checks the
    /// invariants after every step; panics on the first violation.
    pub fn run_script(start: Instant, script: &[u8]) -> Harness {
        let mut r = Reader(script);
        let b = r.byte();
        let mut h = Harness::new(Harness::from_script_config(b), Behaviour::default(), start);
        h.fix_checksums = b & 32 != 0;
        for (name, len) in Harness::TFTP_FILES {
            let data = (0..len).map(|i| i as u8).collect();
            h.host.files.insert(name.to_owned(), data);
        }
        while !r.0.is_empty() {
            let b = r.byte();
            h.step(Op::from_byte(b), &mut r);
            if b & Op::NO_POLL == 0 {
                h.drain();
            }
            h.check_bounds();
        }
        h.drain();
        h.check_bounds();
        h
    }

    fn step(&mut self, op: Op, r: &mut Reader<'_>) {
        match op {
            Op::Frame => {
                let len = u16::from_be_bytes([r.byte(), r.byte()]);
                let mut frame = r.bytes(len.into()).to_vec();
                if self.fix_checksums {
                    fix_checksums(&mut frame);
                }
                self.frame(&frame);
            }
            Op::Deliver => self.deliver(),
            Op::Time => match r.byte() {
                255 => {
                    if let Some(t) = self.stack.poll_timeout() {
                        self.now = self.now.max(t);
                    }
                    self.stack.handle_timeout(self.now, &mut self.host);
                }
                t => self.advance(Duration::from_millis(u64::from(t) * u64::from(t))),
            },
            Op::Event => {
                let (i, flags) = (r.byte(), r.byte());
                if let Some(token) = self.host.nth_token(i.into()) {
                    self.event(token, flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
                }
            }
            Op::Data => {
                let i = r.byte();
                let len = r.byte();
                let data = r.bytes(len.into()).to_vec();
                let peer = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 4000));
                if let Some(token) = self.host.nth_token(i.into())
                    && let Ok(s) = self.host.sock(token)
                {
                    match s.kind {
                        SockKind::Tcp => {
                            s.push_rx(&data);
                        }
                        SockKind::Udp | SockKind::Icmp | SockKind::Listener(_) => {
                            let from = s.sent_to.last().map_or(peer, |(_, to)| *to);
                            s.push_datagram(&data, from);
                        }
                    }
                }
            }
            Op::Eof => {
                if let Some(t) = self.host.nth_token(r.byte().into())
                    && let Ok(s) = self.host.sock(t)
                {
                    s.eof = true;
                }
            }
            Op::Error => {
                let (i, e) = (r.byte(), r.byte());
                let kind = [
                    ErrorKind::ConnectionRefused,
                    ErrorKind::ConnectionReset,
                    ErrorKind::HostUnreachable,
                    ErrorKind::TimedOut,
                    ErrorKind::BrokenPipe,
                ][usize::from(e % 5)];
                if let Some(t) = self.host.nth_token(i.into())
                    && let Ok(s) = self.host.sock(t)
                {
                    s.error = Some(kind);
                }
            }
            Op::Behave => {
                let b = r.byte();
                let bh = &mut self.host.behaviour;
                bh.connect_error = (b & 1 != 0).then_some(ErrorKind::ConnectionRefused);
                bh.connect_outcome = (b & 2 != 0).then_some(ErrorKind::ConnectionRefused);
                bh.greeting = if b & 4 != 0 {
                    b"220 fake host ready\r\n".to_vec()
                } else {
                    Vec::new()
                };
                bh.udp_echo = b & 8 != 0;
                bh.ping = b & 16 != 0;
                bh.send_room = if b & 32 != 0 { 100 } else { usize::MAX };
                bh.udp_open_error = (b & 64 != 0).then_some(ErrorKind::AddrInUse);
                bh.greeting_eof = b & 128 != 0;
            }
            Op::Accept => {
                let c = r.byte();
                let peer = SocketAddr::from((Ipv4Addr::new(192, 0, 2, c), 1000 + u16::from(c)));
                if self.host.pending_accept.len() < MAX_DATAGRAMS {
                    self.host.pending_accept.push_back(peer);
                }
                let listeners: Vec<Token> = self
                    .host
                    .listening
                    .iter()
                    .filter(|(_, p, _)| *p == Proto::Tcp)
                    .map(|(t, _, _)| *t)
                    .collect();
                for t in listeners {
                    self.event(t, true, false, false);
                }
            }
            Op::ResetLink => self.stack.reset_link(&mut self.host),
        }
    }

    /// Hands a guest frame to the stack.
    pub fn frame(&mut self, frame: &[u8]) {
        self.stack.handle_frame(self.now, frame, &mut self.host);
    }

    /// Reports one readiness event.
    pub fn event(&mut self, token: Token, readable: bool, writable: bool, error: bool) {
        let ev = HostEvent {
            token,
            readable,
            writable,
            error,
        };
        self.stack.handle_host(self.now, ev, &mut self.host);
    }

    /// Reports every pending host event ([`FakeHost::pending_events`]).
    pub fn deliver(&mut self) {
        for ev in self.host.pending_events() {
            self.stack.handle_host(self.now, ev, &mut self.host);
        }
    }

    /// Advances the virtual clock by `d` and lets the stack handle its
    /// timers.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.stack.handle_timeout(self.now, &mut self.host);
    }

    /// Polls every pending output frame, checking each with
    /// [`check_frame`]; returns how many there were.
    ///
    /// # Panics
    /// On a malformed frame, or more than [`MAX_FRAMES_PER_POLL`] frames.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Some(len) = self
            .stack
            .poll_frame(self.now, &mut self.buf, &mut self.host)
        {
            let frame = &self.buf[..len];
            if let Err(e) = check_frame(self.stack.config(), frame) {
                panic!("malformed output frame ({e:?}): {frame:02x?}");
            }
            if self.record {
                self.output.push(frame.to_vec());
            }
            n += 1;
            assert!(n <= MAX_FRAMES_PER_POLL, "runaway output: {n} frames");
        }
        n
    }

    /// The frames recorded since the last call.
    pub fn take_output(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.output)
    }

    /// Checks that the flow table, the host's open sockets and the TFTP
    /// server's open files stay within their bounds.
    ///
    /// # Panics
    /// When they do not.
    pub fn check_bounds(&self) {
        let cfg = self.stack.config();
        assert!(
            self.stack.flow_count() <= cfg.max_flows,
            "{} flows, above max_flows {}",
            self.stack.flow_count(),
            cfg.max_flows
        );
        assert!(
            self.host.open_files.len() <= crate::tftp::MAX_SESSIONS,
            "{} files open, above the TFTP transfer limit",
            self.host.open_files.len()
        );
        let limit = cfg.max_flows + self.host.listening.len();
        assert!(
            self.host.socks.len() <= limit,
            "{} host sockets open, above flows + listeners {limit}",
            self.host.socks.len()
        );
    }
}

/// A frame from a guest at `mac` to the stack's MAC carrying UDP from
/// `src` to `dst` (both of one family).
pub fn guest_udp(
    cfg: &Config,
    mac: EthernetAddress,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let macs = crate::packet::Macs {
        src: mac,
        dst: EthernetAddress(cfg.mac),
    };
    let mut buf = vec![0u8; cfg.max_frame()];
    let n = crate::packet::udp(
        &mut buf,
        macs,
        (src.ip(), src.port()),
        (dst.ip(), dst.port()),
        payload,
    )
    .expect("the datagram fits a frame");
    buf.truncate(n);
    buf
}

/// A frame from a guest at `mac` to the stack's MAC carrying the TCP
/// segment `repr` from `src` to `dst` (ports come from `repr`).
pub fn guest_tcp(
    cfg: &Config,
    mac: EthernetAddress,
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    repr: &TcpRepr,
) -> Vec<u8> {
    let macs = crate::packet::Macs {
        src: mac,
        dst: EthernetAddress(cfg.mac),
    };
    let mut buf = vec![0u8; cfg.max_frame()];
    let n = crate::packet::tcp(&mut buf, macs, src, dst, repr).expect("the segment fits a frame");
    buf.truncate(n);
    buf
}

/// A TCP segment the stack sent, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSeen {
    /// Source endpoint.
    pub src: SocketAddr,
    /// Destination endpoint.
    pub dst: SocketAddr,
    /// SYN, FIN, RST, PSH or none.
    pub control: smoltcp::wire::TcpControl,
    /// Sequence number.
    pub seq: smoltcp::wire::TcpSeqNumber,
    /// Acknowledgement number, if ACK is set.
    pub ack: Option<smoltcp::wire::TcpSeqNumber>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// The IP packet of an Ethernet frame: (source, destination, protocol,
/// payload), for IPv4 or IPv6 (no extension headers).
fn ip_of(frame: &[u8]) -> Option<(IpAddress, IpAddress, IpProtocol, &[u8])> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let payload = &frame[14..];
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(payload).ok()?;
            let (s, d, p) = (ip.src_addr(), ip.dst_addr(), ip.next_header());
            let body = &payload[usize::from(ip.header_len())..usize::from(ip.total_len())];
            Some((IpAddress::Ipv4(s), IpAddress::Ipv4(d), p, body))
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(payload).ok()?;
            let (s, d, p) = (ip.src_addr(), ip.dst_addr(), ip.next_header());
            let body = &payload[40..40 + usize::from(ip.payload_len())];
            Some((IpAddress::Ipv6(s), IpAddress::Ipv6(d), p, body))
        }
        _ => None,
    }
}

/// The UDP datagram in a frame the stack sent: (source, destination,
/// payload), if it is one.
pub fn parse_udp(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
    let (s, d, proto, body) = ip_of(frame)?;
    if proto != IpProtocol::Udp {
        return None;
    }
    let p = UdpPacket::new_checked(body).ok()?;
    let (sp, dp) = (p.src_port(), p.dst_port());
    Some((
        SocketAddr::new(s.into(), sp),
        SocketAddr::new(d.into(), dp),
        p.payload().to_vec(),
    ))
}

/// The TCP segment in a frame the stack sent, if it is one.
pub fn parse_tcp(frame: &[u8]) -> Option<TcpSeen> {
    let (s, d, proto, body) = ip_of(frame)?;
    if proto != IpProtocol::Tcp {
        return None;
    }
    let p = TcpPacket::new_checked(body).ok()?;
    let r = TcpRepr::parse(&p, &s, &d, &ChecksumCapabilities::default()).ok()?;
    Some(TcpSeen {
        src: SocketAddr::new(s.into(), r.src_port),
        dst: SocketAddr::new(d.into(), r.dst_port),
        control: r.control,
        seq: r.seq_number,
        ack: r.ack_number,
        payload: r.payload.to_vec(),
    })
}

/// `LINKTYPE_LINUX_SLL2`, the link type of captures taken on Linux's "any"
/// interface.
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

/// Rewrites a `LINUX_SLL2` captured packet as the Ethernet frame a guest
/// with `guest_mac` would send to the stack at `stack_mac`: the 20-byte
/// SLL2 header (protocol type, interface, ARPHRD type, packet type, link
/// address) becomes a 14-byte Ethernet header. `None` if it is shorter than
/// its header.
pub fn sll2_to_ethernet(packet: &[u8], guest_mac: [u8; 6], stack_mac: [u8; 6]) -> Option<Vec<u8>> {
    let (header, payload) = packet.split_at_checked(20)?;
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&stack_mac);
    f.extend_from_slice(&guest_mac);
    f.extend_from_slice(&header[..2]);
    f.extend_from_slice(payload);
    Some(f)
}

/// Every file under `dir` (recursively) whose extension is one of `exts`,
/// sorted, appended to `out`.
pub fn capture_files(dir: &std::path::Path, exts: &[&str], out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            capture_files(&p, exts, out);
        } else if p.extension().is_some_and(|e| exts.iter().any(|x| e == *x)) {
            out.push(p);
        }
    }
}

/// The Ethernet frames of a capture (`.pcap`, Ethernet or `LINUX_SLL2`
/// rewritten as from `guest_mac` to `stack_mac`), or the one raw frame of
/// a `.pkt`. Panics on an unreadable file: the corpus is the test's own.
pub fn capture_frames(
    path: &std::path::Path,
    guest_mac: [u8; 6],
    stack_mac: [u8; 6],
) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).expect("readable capture");
    if path.extension().is_some_and(|e| e == "pkt") {
        return vec![data];
    }
    let mut r = pcap_file::pcap::PcapReader::new(&data[..]).expect("a pcap file");
    let linktype = u32::from(r.header().datalink);
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.expect("a whole packet");
        if linktype == LINKTYPE_LINUX_SLL2 {
            out.extend(sll2_to_ethernet(&p.data, guest_mac, stack_mac));
        } else {
            out.push(p.data.to_vec());
        }
    }
    out
}

/// `restrict` and these egress rules (`+` allows, `-` denies, then
/// `CIDR[:PORT]`), in order, on the default configuration.
///
/// # Panics
/// On a malformed rule: test input.
pub fn egress_config(restrict: bool, rules: &[&str]) -> Config {
    let egress = rules
        .iter()
        .map(|r| {
            let (allow, spec) = r.split_at(1);
            crate::config::EgressRule::parse(allow == "+", spec).expect("test rule")
        })
        .collect();
    Config {
        restrict,
        egress,
        ..Config::default()
    }
}
