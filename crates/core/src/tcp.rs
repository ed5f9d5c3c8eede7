//! TCP flows: the guest's TCP connection, replayed on a host TCP socket.
//!
//! # Theory of operation
//! The stack terminates the guest's TCP connection itself and carries its
//! byte stream on an ordinary host socket, as passt does, with the kernel's
//! socket buffers as the only buffers:
//!
//! - **Guest to host.** A guest segment's payload is written to the host
//!   socket at once, and acknowledged once the socket took it. The window
//!   the guest sees is the free space of the host socket's send buffer, so
//!   a slow host peer pushes back on the guest (a zero window). That free
//!   space is an estimate (the kernel charges its own overhead per buffer,
//!   and a window is advertised once per batch of segments), so a socket
//!   may refuse part of what the window allowed: that part is kept in a
//!   small per-flow `pending` buffer (bounded by the window we advertised
//!   and [`MAX_PENDING`]), acknowledged, and written first once the socket
//!   drains, while our window stays shut. Dropping it instead would throw
//!   away every segment in flight behind it (with 64 KiB segments, a whole
//!   window, which the guest then resends one segment per round trip: we
//!   offer no SACK). The refusal is also what makes the kernel grow the
//!   send buffer and report writability later. Only data beyond those
//!   bounds is dropped (counted); a window update and duplicate ACKs then
//!   make the guest retransmit it.
//! - **Small windows.** The free space of the host socket can sink below
//!   one segment (MSS 65,480 at MTU 65520) while the socket still takes
//!   data. Offering that sliver makes the guest wait for its persist timer
//!   (200 ms or more) before sending, and nothing tells usernet when the
//!   space grows again: the kernel reports writability only after a refused
//!   write. So the window offered is never below one segment (the receiver
//!   side of RFC 9293's silly window avoidance, inverted): the guest sends
//!   a full segment, the socket takes what it can, the rest waits in
//!   `pending` (within the window we offered), the refusal shuts our window
//!   and arms the kernel's writability report, which reopens it.
//! - **Host to guest.** Data the host peer sent stays in the socket's
//!   receive queue until the guest acknowledges it: frames are built by
//!   peeking it (`skip` = bytes already in flight) straight into the frame
//!   buffer, and acknowledged bytes are discarded from the socket. A
//!   retransmission re-peeks from the first unacknowledged byte (go-back-N;
//!   the guest link is a reliable stream, so loss is rare).
//!
//! # Lifecycle
//! ```text
//! outbound: guest SYN -> Connecting -(host connect ok)-> SynAckSent -(guest ACK)-> Established
//!                        Connecting -(host connect fails)-> RST/ICMP to guest, removed
//! inbound:  host accept -> SynSent (SYN to guest) -(guest SYN-ACK)-> Established
//!                        SynSent -(guest RST)-> host socket reset, removed
//! Established -(both FINs exchanged and acknowledged)-> Lingering -(LINGER)-> removed
//! any state -(RST from either side, retries exhausted, idle timeout)-> removed
//! ```
//! FIN from the guest is a `shutdown(SHUT_WR)` on the host socket; end of
//! stream on the host socket is a FIN to the guest; each direction closes
//! on its own (half-close). While lingering the host socket is closed
//! already and the flow only answers retransmitted FINs.
use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};

use crate::config::Config;
use crate::flow::Key;
use crate::host::{HostEvent, HostIo, Token};
use crate::offload;
use crate::output::Output;
use crate::packet::{self, Macs, Segment};

/// How long a host connect may take before the flow is dropped silently
/// (the guest then times out itself, as it would against a black hole).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(75);
/// Idle time after which an established flow is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(7200);
/// Idle time after which a half-closed flow is dropped.
pub const HALF_CLOSED_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a closed flow keeps answering retransmitted FINs.
pub const LINGER: Duration = Duration::from_secs(5);
/// First retransmission timeout.
const RTO_INITIAL: Duration = Duration::from_secs(1);
/// Largest retransmission timeout.
const RTO_MAX: Duration = Duration::from_secs(30);
/// Retransmissions before the connection is reset.
const MAX_RETRIES: u8 = 10;
/// Our window scale: windows up to 8 MiB.
const OUR_WSCALE: u8 = 7;
/// Largest window advertised.
const MAX_WINDOW: usize = (u16::MAX as usize) << OUR_WSCALE;
/// Largest window advertised, in full-sized segments. A window is
/// frames, not bytes, to the guest's transmit queue: a tap queues at most
/// `txqueuelen` frames (1000 by default) and drops the rest, so a window of
/// 4 MiB at MTU 1500 (2,900 frames) overruns it whenever usernet falls
/// behind, and every drop costs a window resent. Half the queue leaves
/// room for other flows.
const WINDOW_FRAMES: usize = 512;
/// Largest window advertised, in bytes. The guest link is local: its
/// bandwidth-delay product is a few hundred KiB even at 20 Gbit/s, so a
/// larger window only lets the guest fill the host socket's send buffer,
/// and a full socket shuts our window until the kernel reports a third of
/// it free again: stop and go (ns→host at MTU 65520 ran at a third of the
/// speed with windows of the socket's whole free space).
const WINDOW_BYTES: usize = 1 << 20;
/// Default MSS when the guest sends none (RFC 9293).
const DEFAULT_MSS: usize = 536;
/// Most guest data kept per flow when the host socket refuses data inside
/// our advertised window (see the module doc). The overshoot is a few
/// percent of a window in practice; this bounds a guest that lies.
pub const MAX_PENDING: usize = 1 << 20;

/// A TCP flow's state (see the module's lifecycle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The host connect is in progress; the guest's SYN waits for it.
    Connecting,
    /// SYN-ACK sent to the guest, waiting for its ACK.
    SynAckSent,
    /// SYN sent to the guest for a port-forwarded connection.
    SynSent,
    /// Data flows.
    Established,
    /// Both directions closed; the host socket is gone.
    Lingering,
}

/// What the stack does with a flow after it handled something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Keep it.
    Open,
    /// Remove it (closing the host socket if it is still open).
    Closed,
    /// The host connect found no route: remove it and tell the guest with
    /// an ICMP "host unreachable" for its SYN.
    Unreachable,
}

/// What a flow needs from the stack to build frames.
pub struct Env<'a> {
    /// Configuration.
    pub cfg: &'a Config,
    /// Our MAC and the guest's.
    pub macs: Macs,
    /// The current time.
    pub now: Instant,
    /// What the link offloads ([`crate::offload`]): with `tso`, data
    /// segments may carry up to 64 KiB whatever the MSS; with `tx_csum`,
    /// TCP checksums are left to the link.
    pub offload: offload::Offload,
}

/// One guest TCP connection and its host socket.
#[derive(Debug)]
pub struct TcpFlow {
    /// Where the connection stands.
    pub state: State,
    /// The guest's endpoint.
    guest: SocketAddr,
    /// The peer's endpoint as the guest sees it.
    remote: SocketAddr,
    /// Next sequence number expected from the guest.
    rcv_nxt: TcpSeqNumber,
    /// Our initial sequence number.
    iss: TcpSeqNumber,
    /// Oldest byte sent to the guest and not acknowledged.
    snd_una: TcpSeqNumber,
    /// Next sequence number to send.
    snd_nxt: TcpSeqNumber,
    /// The guest's receive window, in bytes.
    snd_wnd: usize,
    /// Shift applied to the guest's window field.
    guest_wscale: u8,
    /// Shift applied to our window field (0 if the guest does not scale).
    our_wscale: u8,
    /// Largest payload per segment to the guest.
    mss: usize,
    /// Free space in the host socket's send buffer (our window).
    space: usize,
    /// The host socket may have unread data.
    readable: bool,
    /// The host peer closed its sending side (peek returned 0).
    host_eof: bool,
    /// Our FIN is in flight or acknowledged (it is `snd_nxt - 1`).
    fin_sent: bool,
    /// The guest's FIN was received and passed on.
    guest_fin: bool,
    /// The host socket refused data; waiting for it to drain.
    host_full: bool,
    /// Acknowledged guest data the host socket refused, written before
    /// anything else once it drains (at most [`MAX_PENDING`]).
    pending: Vec<u8>,
    /// The right edge of the largest window advertised to the guest: the
    /// guest may send up to here, so `pending` may hold up to here.
    rcv_edge: TcpSeqNumber,
    /// Guest segments dropped since [`TcpFlow::take_dropped`].
    dropped: u64,
    /// Send duplicate ACKs so the guest retransmits what was refused.
    dup_acks: u8,
    /// A pure ACK (or window update) is owed to the guest.
    ack_pending: bool,
    /// Current retransmission timeout and when it fires.
    rto: Duration,
    rto_at: Option<Instant>,
    retries: u8,
    /// Last time anything happened, for idle timeouts.
    last_active: Instant,
    /// When the flow began its current timed phase (connect, linger).
    since: Instant,
}

fn seq_add(seq: TcpSeqNumber, n: usize) -> TcpSeqNumber {
    seq + n
}

/// Bytes from `a` up to `b` (`b` not before `a`).
fn seq_diff(b: TcpSeqNumber, a: TcpSeqNumber) -> usize {
    (b.0.wrapping_sub(a.0)) as u32 as usize
}

/// Whether `b` is after `a` in sequence space.
fn seq_gt(b: TcpSeqNumber, a: TcpSeqNumber) -> bool {
    (b.0.wrapping_sub(a.0)) > 0
}

/// The largest segment payload on a link of `mtu` for `ip`'s family.
fn link_mss(mtu: u32, ip: IpAddr) -> usize {
    mtu as usize - packet::ip_len(ip) - packet::TCP_LEN
}

impl TcpFlow {
    fn new(key: &Key, state: State, iss: TcpSeqNumber, now: Instant) -> Self {
        TcpFlow {
            state,
            guest: key.guest,
            remote: key.remote,
            rcv_nxt: TcpSeqNumber(0),
            iss,
            snd_una: iss,
            snd_nxt: seq_add(iss, 1),
            snd_wnd: 0,
            guest_wscale: 0,
            our_wscale: 0,
            mss: DEFAULT_MSS,
            space: 0,
            readable: false,
            host_eof: false,
            fin_sent: false,
            guest_fin: false,
            host_full: false,
            pending: Vec::new(),
            rcv_edge: TcpSeqNumber(0),
            dropped: 0,
            dup_acks: 0,
            ack_pending: false,
            rto: RTO_INITIAL,
            rto_at: None,
            retries: 0,
            last_active: now,
            since: now,
        }
    }

    /// A flow for a guest SYN whose host connect has been started.
    pub fn outbound(
        cfg: &Config,
        key: &Key,
        syn: &TcpRepr,
        iss: TcpSeqNumber,
        now: Instant,
    ) -> Self {
        let mut f = TcpFlow::new(key, State::Connecting, iss, now);
        f.take_syn_options(cfg, syn);
        f
    }

    /// A flow for a connection accepted on a port forward; call
    /// [`TcpFlow::send_syn`] next.
    pub fn inbound(key: &Key, iss: TcpSeqNumber, now: Instant) -> Self {
        TcpFlow::new(key, State::SynSent, iss, now)
    }

    /// Sets the peer as the guest sees it (known once accepted).
    pub fn set_remote(&mut self, remote: SocketAddr) {
        self.remote = remote;
    }

    fn take_syn_options(&mut self, cfg: &Config, syn: &TcpRepr) {
        self.rcv_nxt = syn.seq_number + 1;
        self.rcv_edge = self.rcv_nxt;
        let link = link_mss(cfg.mtu, self.guest.ip());
        self.mss = syn
            .max_seg_size
            .map_or(DEFAULT_MSS, usize::from)
            .clamp(64, link);
        match syn.window_scale {
            Some(ws) => {
                self.guest_wscale = ws.min(14);
                self.our_wscale = OUR_WSCALE;
            }
            None => {
                self.guest_wscale = 0;
                self.our_wscale = 0;
            }
        }
        self.snd_wnd = usize::from(syn.window_len);
    }

    /// The first 8 bytes of the guest's SYN (ports and sequence number), to
    /// quote in an ICMP error.
    pub fn syn_quote(&self) -> [u8; 8] {
        let mut q = [0u8; 8];
        q[..2].copy_from_slice(&self.guest.port().to_be_bytes());
        q[2..4].copy_from_slice(&self.remote.port().to_be_bytes());
        q[4..].copy_from_slice(&(self.rcv_nxt.0.wrapping_sub(1)).to_be_bytes());
        q
    }

    /// Whether the host socket is still open.
    pub fn host_open(&self) -> bool {
        self.state != State::Lingering
    }

    /// Whether the flow is only lingering (cheap to evict).
    pub fn is_lingering(&self) -> bool {
        self.state == State::Lingering
    }

    /// When the flow began its current phase (creation, establishment,
    /// lingering): its age for eviction.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The flow is being evicted from a full table: tells the guest with a
    /// reset (the stack aborts the host socket).
    pub fn evict(&self, env: &Env, out: &mut Output) {
        match self.state {
            State::Connecting => self.reset_guest_on_connect(env, out),
            State::Lingering => {}
            _ => self.reset_guest(env, out),
        }
    }

    /// The endpoints, for connection listings.
    pub fn endpoints(&self) -> (SocketAddr, SocketAddr) {
        (self.guest, self.remote)
    }

    /// Guest segments dropped (refused beyond the pending bound, or out of
    /// order) since the last call; the stack sums them in its counters.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Notes that the guest was offered `window` bytes from `rcv_nxt`.
    fn advertised(&mut self, window: usize) {
        let edge = seq_add(self.rcv_nxt, window);
        if seq_gt(edge, self.rcv_edge) {
            self.rcv_edge = edge;
        }
    }

    /// Our window field for the guest.
    fn window_field(&self) -> u16 {
        if self.host_full {
            return 0;
        }
        let bytes = self
            .space
            .min(MAX_WINDOW)
            .min(WINDOW_BYTES)
            .min(WINDOW_FRAMES * self.mss);
        // Never less than one segment, rounded up to the scale (see
        // "Small windows" in the module doc): a window the guest cannot
        // fill with a full segment stalls it until its persist timer fires.
        let floor = self.mss.div_ceil(1 << self.our_wscale);
        (bytes >> self.our_wscale)
            .max(floor)
            .min(usize::from(u16::MAX)) as u16
    }

    fn control(&self, env: &Env, out: &mut Output, control: TcpControl, seq: TcpSeqNumber) {
        let syn = control == TcpControl::Syn;
        let repr = TcpRepr {
            src_port: self.remote.port(),
            dst_port: self.guest.port(),
            control,
            seq_number: seq,
            ack_number: (self.state != State::SynSent).then_some(self.rcv_nxt),
            window_len: if syn {
                // Window fields in SYNs are never scaled.
                self.space.min(usize::from(u16::MAX)) as u16
            } else {
                self.window_field()
            },
            window_scale: (syn && (self.state == State::SynSent || self.our_wscale > 0))
                .then_some(OUR_WSCALE),
            max_seg_size: syn.then(|| link_mss(env.cfg.mtu, self.guest.ip()) as u16),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let (src, dst) = (self.remote.ip(), self.guest.ip());
        let partial = env.offload.tx_csum;
        out.push_with(|buf| packet::tcp_link(buf, env.macs, src, dst, &repr, partial));
    }

    /// Sends (or resends) our SYN to the guest for an inbound connection,
    /// or our SYN-ACK for an outbound one.
    pub fn send_syn<H: HostIo>(&mut self, env: &Env, token: Token, host: &mut H, out: &mut Output) {
        self.space = host.tcp_send_space(token);
        if self.state == State::SynAckSent {
            self.advertised(self.space.min(usize::from(u16::MAX)));
        }
        self.control(env, out, TcpControl::Syn, self.iss);
        self.rto_at = Some(env.now + self.rto);
    }

    fn reset_guest(&self, env: &Env, out: &mut Output) {
        self.control(env, out, TcpControl::Rst, self.snd_nxt);
    }

    /// Handles a segment from the guest for this flow.
    pub fn on_segment<H: HostIo>(
        &mut self,
        env: &Env,
        token: Token,
        seg: &TcpRepr,
        host: &mut H,
        out: &mut Output,
    ) -> Status {
        self.last_active = env.now;
        if seg.control == TcpControl::Rst {
            if self.host_open() {
                host.tcp_abort(token);
            }
            return Status::Closed;
        }
        match self.state {
            State::Connecting => return Status::Open, // a retransmitted SYN
            State::SynSent => {
                let syn_ack =
                    seg.control == TcpControl::Syn && seg.ack_number == Some(self.snd_nxt);
                if !syn_ack {
                    return Status::Open;
                }
                self.take_syn_options(env.cfg, seg);
                self.snd_una = self.snd_nxt;
                self.establish(env);
                self.ack_pending = true;
                return Status::Open;
            }
            State::SynAckSent if seg.control == TcpControl::Syn => {
                self.send_syn(env, token, host, out);
                return Status::Open;
            }
            State::SynAckSent => {
                if seg.ack_number != Some(self.snd_nxt) {
                    return Status::Open;
                }
                self.snd_una = self.snd_nxt;
                self.establish(env);
            }
            State::Lingering => {
                if seg.control == TcpControl::Fin {
                    self.ack_pending = true;
                }
                return Status::Open;
            }
            State::Established => {}
        }
        if let Some(ack) = seg.ack_number {
            self.on_ack(env, token, ack, host);
        }
        self.snd_wnd = usize::from(seg.window_len) << self.guest_wscale;
        if let Err(e) = self.on_data(seg, token, host) {
            tracing::debug!(?e, guest = %self.guest, "host socket write failed");
            self.reset_guest(env, out);
            host.tcp_abort(token);
            return Status::Closed;
        }
        self.check_closed(env, token, host)
    }

    fn establish(&mut self, env: &Env) {
        self.state = State::Established;
        self.rto_at = None;
        self.retries = 0;
        self.rto = RTO_INITIAL;
        self.since = env.now;
    }

    fn on_ack<H: HostIo>(&mut self, env: &Env, token: Token, ack: TcpSeqNumber, host: &mut H) {
        if !seq_gt(ack, self.snd_una) || seq_gt(ack, self.snd_nxt) {
            return;
        }
        let mut acked = seq_diff(ack, self.snd_una);
        if self.fin_sent && ack == self.snd_nxt {
            acked -= 1; // the FIN itself carries no data
        }
        if acked > 0 && host.tcp_discard(token, acked).is_err() {
            tracing::debug!(guest = %self.guest, "discarding acknowledged data failed");
        }
        self.snd_una = ack;
        self.retries = 0;
        self.rto = RTO_INITIAL;
        self.rto_at = (self.snd_una != self.snd_nxt).then(|| env.now + self.rto);
    }

    /// Passes guest payload (and FIN) to the host socket.
    fn on_data<H: HostIo>(&mut self, seg: &TcpRepr, token: Token, host: &mut H) -> io::Result<()> {
        let fin = seg.control == TcpControl::Fin;
        if seg.payload.is_empty() && !fin {
            if seq_gt(self.rcv_nxt, seg.seq_number) {
                // A zero-window probe or keepalive (one byte before
                // `rcv_nxt`): answer with our current window, which may
                // have opened without the socket telling us.
                self.space = host.tcp_send_space(token);
                self.ack_pending = true;
            }
            return Ok(());
        }
        self.ack_pending = true;
        if self.guest_fin {
            return Ok(());
        }
        // The part of the payload not seen yet (a retransmission may
        // overlap what the host socket already took).
        let end = seq_add(seg.seq_number, seg.payload.len());
        if seq_gt(seg.seq_number, self.rcv_nxt) {
            self.dropped += 1;
            return Ok(()); // out of order (after a drop): a duplicate ACK
        }
        if seq_gt(self.rcv_nxt, end) {
            return Ok(()); // all old: a duplicate ACK
        }
        let new = &seg.payload[seq_diff(self.rcv_nxt, seg.seq_number)..];
        if !new.is_empty() {
            let taken = self.write_host(token, new, host)?;
            self.rcv_nxt = seq_add(self.rcv_nxt, taken);
            if taken < new.len() {
                self.dropped += 1;
                self.dup_acks = 2;
                return Ok(());
            }
        }
        if fin {
            self.rcv_nxt += 1;
            self.guest_fin = true;
            if self.pending.is_empty() {
                host.tcp_shutdown_write(token);
            }
        }
        Ok(())
    }

    /// Writes guest data to the host socket, keeping what it refuses in
    /// `pending` as far as the window we advertised and [`MAX_PENDING`]
    /// allow. Returns how many bytes of `data` were taken either way.
    fn write_host<H: HostIo>(
        &mut self,
        token: Token,
        data: &[u8],
        host: &mut H,
    ) -> io::Result<usize> {
        let mut sent = 0;
        if self.pending.is_empty() {
            match host.tcp_send(token, data) {
                Ok(n) => sent = n.min(data.len()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        let rest = &data[sent..];
        if !rest.is_empty() {
            let start = seq_add(self.rcv_nxt, sent);
            let promised = if seq_gt(self.rcv_edge, start) {
                seq_diff(self.rcv_edge, start)
            } else {
                0
            };
            let room = MAX_PENDING.saturating_sub(self.pending.len());
            let keep = rest.len().min(room).min(promised);
            self.pending.extend_from_slice(&rest[..keep]);
            sent += keep;
            // Shut the window until the socket drains (it refused us, so
            // the kernel reports writability once it has room).
            self.host_full = true;
            self.space = host.tcp_send_space(token);
            return Ok(sent);
        }
        // The free space only shrank by what was sent, or less (the peer
        // acknowledges, the kernel grows the buffer): while that lower
        // bound is above the largest window it decides nothing, so the
        // kernel is asked (two syscalls) only near the edge.
        self.space = match self.space.checked_sub(sent) {
            Some(left) if left >= WINDOW_BYTES => left,
            _ => host.tcp_send_space(token),
        };
        Ok(sent)
    }

    /// Writes `pending` to the host socket; `Ok(true)` once it is empty.
    fn flush_pending<H: HostIo>(&mut self, token: Token, host: &mut H) -> io::Result<bool> {
        while !self.pending.is_empty() {
            match host.tcp_send(token, &self.pending) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.pending.drain(..n.min(self.pending.len()));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        // Give the memory back: few flows ever need it.
        self.pending = Vec::new();
        Ok(true)
    }

    fn check_closed<H: HostIo>(&mut self, env: &Env, token: Token, host: &mut H) -> Status {
        let all_acked = self.snd_una == self.snd_nxt;
        let done = self.guest_fin && self.fin_sent && all_acked && self.pending.is_empty();
        if self.state == State::Established && done {
            self.state = State::Lingering;
            self.since = env.now;
            self.rto_at = None;
            host.close(token);
        }
        Status::Open
    }

    /// Handles readiness of the host socket.
    pub fn on_host<H: HostIo>(
        &mut self,
        env: &Env,
        token: Token,
        ev: HostEvent,
        host: &mut H,
        out: &mut Output,
    ) -> Status {
        self.last_active = env.now;
        match self.state {
            State::Connecting if ev.writable || ev.error => {
                if let Some(err) = host.take_error(token) {
                    tracing::debug!(%err, remote = %self.remote, "host connect failed");
                    if matches!(
                        err.kind(),
                        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable
                    ) {
                        return Status::Unreachable;
                    }
                    self.reset_guest_on_connect(env, out);
                    return Status::Closed;
                }
                self.state = State::SynAckSent;
                self.snd_nxt = seq_add(self.iss, 1);
                self.send_syn(env, token, host, out);
                return Status::Open;
            }
            State::Lingering => return Status::Open,
            _ => {}
        }
        if ev.error
            && let Some(err) = host.take_error(token)
        {
            tracing::debug!(%err, remote = %self.remote, "host socket error");
            self.reset_guest(env, out);
            return Status::Closed;
        }
        if ev.readable {
            self.readable = true;
        }
        if ev.writable && self.host_full {
            match self.flush_pending(token, host) {
                Ok(true) => {
                    self.host_full = false;
                    if self.guest_fin {
                        host.tcp_shutdown_write(token);
                    }
                    self.space = host.tcp_send_space(token);
                    self.ack_pending = true;
                    return self.check_closed(env, token, host);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(?e, guest = %self.guest, "host socket write failed");
                    self.reset_guest(env, out);
                    host.tcp_abort(token);
                    return Status::Closed;
                }
            }
        }
        Status::Open
    }

    /// A refused host connect shows as refused in the guest: a RST
    /// answering its SYN.
    fn reset_guest_on_connect(&self, env: &Env, out: &mut Output) {
        let repr = TcpRepr {
            src_port: self.remote.port(),
            dst_port: self.guest.port(),
            control: TcpControl::Rst,
            seq_number: TcpSeqNumber(0),
            ack_number: Some(self.rcv_nxt),
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let (src, dst) = (self.remote.ip(), self.guest.ip());
        let partial = env.offload.tx_csum;
        out.push_with(|buf| packet::tcp_link(buf, env.macs, src, dst, &repr, partial));
    }

    /// Runs the flow's timers.
    pub fn on_timer<H: HostIo>(
        &mut self,
        env: &Env,
        token: Token,
        host: &mut H,
        out: &mut Output,
    ) -> Status {
        let now = env.now;
        match self.state {
            State::Connecting if now >= self.since + CONNECT_TIMEOUT => return Status::Closed,
            State::Lingering if now >= self.since + LINGER => return Status::Closed,
            _ => {}
        }
        let idle = if self.guest_fin || self.fin_sent {
            HALF_CLOSED_TIMEOUT
        } else {
            IDLE_TIMEOUT
        };
        if self.state != State::Lingering && now >= self.last_active + idle {
            self.reset_guest(env, out);
            return Status::Closed;
        }
        if self.rto_at.is_some_and(|at| now >= at) {
            self.retries += 1;
            if self.retries > MAX_RETRIES {
                self.reset_guest(env, out);
                return Status::Closed;
            }
            self.rto = (self.rto * 2).min(RTO_MAX);
            match self.state {
                State::SynSent | State::SynAckSent => self.send_syn(env, token, host, out),
                State::Established => {
                    // Go back to the first unacknowledged byte.
                    self.snd_nxt = self.snd_una;
                    self.fin_sent = false;
                    self.readable = true;
                    self.rto_at = Some(now + self.rto);
                }
                _ => self.rto_at = None,
            }
        }
        Status::Open
    }

    /// When [`TcpFlow::on_timer`] is next due.
    pub fn deadline(&self) -> Instant {
        let phase = match self.state {
            State::Connecting => self.since + CONNECT_TIMEOUT,
            State::Lingering => self.since + LINGER,
            _ if self.guest_fin || self.fin_sent => self.last_active + HALF_CLOSED_TIMEOUT,
            _ => self.last_active + IDLE_TIMEOUT,
        };
        self.rto_at.map_or(phase, |rto| rto.min(phase))
    }

    /// Bytes sent to the guest and not yet acknowledged (data only).
    fn in_flight(&self) -> usize {
        seq_diff(self.snd_nxt, self.snd_una)
    }

    /// Whether [`TcpFlow::produce`] has something to send.
    pub fn wants_output(&self) -> bool {
        match self.state {
            State::Established => {
                self.ack_pending
                    || self.dup_acks > 0 && !self.host_full
                    || (self.readable && !self.host_eof && self.in_flight() < self.snd_wnd)
                    || (self.host_eof && !self.fin_sent)
            }
            State::Lingering => self.ack_pending,
            _ => false,
        }
    }

    /// Builds the next frame for the guest in `buf`: data peeked from the
    /// host socket, our FIN, or a pure ACK / window update.
    pub fn produce<H: HostIo>(
        &mut self,
        env: &Env,
        token: Token,
        host: &mut H,
        buf: &mut [u8],
    ) -> Option<usize> {
        if self.state == State::Established && self.readable && !self.host_eof {
            let window = self.snd_wnd.saturating_sub(self.in_flight());
            let off = packet::tcp_payload_offset(self.guest.ip());
            let room = buf.len().saturating_sub(off);
            let seg_max = if env.offload.tso {
                offload::tso_payload(self.guest.ip())
            } else {
                self.mss
            };
            let want = seg_max.min(window).min(room);
            if want > 0 {
                match host.tcp_peek(token, self.in_flight(), &mut buf[off..off + want]) {
                    Ok(0) => self.host_eof = true,
                    Ok(n) => return self.emit(env, buf, n, false),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                    Err(e) => {
                        tracing::debug!(%e, remote = %self.remote, "host socket read failed");
                        self.readable = false;
                        self.host_eof = true;
                    }
                }
            }
        }
        if self.state == State::Established && self.host_eof && !self.fin_sent {
            return self.emit(env, buf, 0, true);
        }
        if self.ack_pending || (self.dup_acks > 0 && !self.host_full) {
            if !self.ack_pending {
                self.dup_acks -= 1;
            }
            self.ack_pending = false;
            let seq = self.snd_nxt;
            return self.emit_at(env, buf, seq, 0, false);
        }
        None
    }

    fn emit(&mut self, env: &Env, buf: &mut [u8], len: usize, fin: bool) -> Option<usize> {
        let seq = self.snd_nxt;
        let n = self.emit_at(env, buf, seq, len, fin)?;
        self.snd_nxt = seq_add(seq, len + usize::from(fin));
        self.fin_sent |= fin;
        self.ack_pending = false;
        if self.rto_at.is_none() {
            self.rto_at = Some(env.now + self.rto);
        }
        Some(n)
    }

    fn emit_at(
        &mut self,
        env: &Env,
        buf: &mut [u8],
        seq: TcpSeqNumber,
        len: usize,
        fin: bool,
    ) -> Option<usize> {
        let window = self.window_field();
        self.advertised(usize::from(window) << self.our_wscale);
        let seg = Segment {
            src: (self.remote.ip(), self.remote.port()),
            dst: (self.guest.ip(), self.guest.port()),
            seq,
            ack: self.rcv_nxt,
            window,
            fin,
            partial_csum: env.offload.tx_csum,
        };
        packet::tcp_in_place(buf, env.macs, &seg, len)
    }
}

/// The reset answering a guest segment that matches no flow (RFC 9293
/// 3.10.7.1): `None` if the segment is itself a reset.
pub fn reset_for(seg: &TcpRepr) -> Option<TcpRepr<'static>> {
    if seg.control == TcpControl::Rst {
        return None;
    }
    let (seq, ack) = match seg.ack_number {
        Some(ack) => (ack, None),
        None => (TcpSeqNumber(0), Some(seg.seq_number + seg.segment_len())),
    };
    Some(TcpRepr {
        src_port: seg.dst_port,
        dst_port: seg.src_port,
        control: TcpControl::Rst,
        seq_number: seq,
        ack_number: ack,
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    })
}
