//! QEMU's `-netdev stream` transport: length-prefixed Ethernet frames over a
//! unix stream socket.
//!
//! # Framing
//! Each frame is preceded by its length as a 4-byte big-endian integer.
//! [`Decoder`] is a pure incremental decoder over one reusable buffer: bytes
//! go in (read straight from the socket into [`Decoder::read_buf`], or
//! copied with [`Decoder::feed`]) and whole frames come out of
//! [`Decoder::next_frame`] as slices of that buffer, so nothing is allocated
//! per frame. The guest is an adversary: a length of zero or above the
//! largest frame is counted, that many bytes are skipped (read into the same
//! buffer and dropped, never allocated), and decoding resumes at the next
//! length prefix.
//!
//! [`Encoder`] is the bounded output buffer. The driver asks it for a slot
//! ([`Encoder::slot`]) big enough for one frame, lets the stack write the
//! frame there, and [`Encoder::commit`]s it; [`Encoder::write_to`] writes out
//! what the socket takes and keeps the rest for the next writable event.
//! When no slot is free the driver stops polling the stack: that is the
//! back-pressure, and the stack keeps its frames until then.
//!
//! # Transport
//! [`StreamServer`] listens on a unix socket path (a stale socket file is
//! removed first) for QEMU's `-netdev
//! stream,server=off,addr.type=unix,addr.path=PATH`, and serves up to
//! `--max-guests` clients at once; one more is accepted, logged as refused
//! and closed. Each client is a port of a learning switch
//! ([`crate::switch`]) whose other station is the stack: frames between
//! guests are copied from one port's decoder to the other's encoder, never
//! through the stack.
//!
//! - *Fairness.* [`Transport::read_frames`] reads the ports in turn, a new
//!   one first each call, each for at most its share of the turn's budget,
//!   so a guest sending as fast as it can does not starve another.
//! - *Back-pressure.* A unicast frame for a guest whose output is full stays
//!   in the sender's decoder (peeked, not consumed) and the sender is not
//!   read further until there is room ([`Transport::rx_ready`]); its socket
//!   fills and its QEMU waits. The stack's frames wait while any guest's
//!   output is full, so its TCP flows see a full link rather than losses. A
//!   guest whose output stays full for a second (a paused VM) stops
//!   holding the others up: frames for it are dropped (counted). Broadcasts
//!   never wait: a full port misses them.
//! - *Leaving.* A guest that disconnects (end of stream, read or write
//!   error) frees its port and its switch entries; its MACs come out of
//!   [`Transport::departed`] so the loop tells the stack
//!   ([`usernet_core::Stack::guest_gone`]). A QEMU restarting quickly may
//!   connect before its old connection's end is read; both are ports for
//!   that moment, and the old one's leaving does not touch the new one,
//!   which the switch already learnt the MAC on.
//! - *Seeing inside.* [`StreamServer::guests`] lists the connected guests:
//!   MAC, connected since, frames and bytes each way.
use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::event_loop::{ReadStatus, Transport};
use crate::switch::{Counters as SwitchCounters, PortId, Switch, Verdict};

/// Size of a frame's length prefix.
pub const HEADER_LEN: usize = 4;

/// Incremental decoder of length-prefixed frames.
#[derive(Debug)]
pub struct Decoder {
    /// Received bytes; `buf[start..end]` is not yet decoded.
    buf: Box<[u8]>,
    /// First undecoded byte.
    start: usize,
    /// End of received bytes.
    end: usize,
    /// Bytes of a refused frame still to drop.
    skip: usize,
    /// The largest frame accepted.
    max_frame: usize,
    /// Frames refused for a length above `max_frame`.
    oversized: u64,
    /// Zero-length frames skipped.
    empty: u64,
}

impl Decoder {
    /// A decoder accepting frames of up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        // Room for two whole frames, and at least 64 KiB so that reads from
        // the socket are large.
        let cap = (2 * (HEADER_LEN + max_frame)).max(64 * 1024);
        Decoder {
            buf: vec![0; cap].into_boxed_slice(),
            start: 0,
            end: 0,
            skip: 0,
            max_frame,
            oversized: 0,
            empty: 0,
        }
    }

    /// Frames refused because their length exceeded the maximum.
    pub fn oversized(&self) -> u64 {
        self.oversized
    }

    /// Zero-length frames skipped.
    pub fn empty(&self) -> u64 {
        self.empty
    }

    /// Free space to read received bytes into; report how many were written
    /// with [`Decoder::filled`]. Empty only when undecoded bytes fill the
    /// buffer, i.e. [`Decoder::next_frame`] was not drained.
    pub fn read_buf(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes at the start of [`Decoder::read_buf`] as received.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copies as much of `data` as fits into the buffer; returns how much.
    /// Drain [`Decoder::next_frame`] and feed the rest.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let free = self.read_buf();
        let n = free.len().min(data.len());
        free[..n].copy_from_slice(&data[..n]);
        self.filled(n);
        n
    }

    /// The next complete frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        let frame = self.frame_range()?;
        self.start = frame.end;
        Some(&self.buf[frame])
    }

    /// The next complete frame, left in place: [`Decoder::consume`] takes
    /// it, else it comes again (a frame waiting for room where it goes).
    pub fn peek_frame(&mut self) -> Option<&[u8]> {
        let frame = self.frame_range()?;
        Some(&self.buf[frame])
    }

    /// Takes the frame [`Decoder::peek_frame`] showed.
    pub fn consume(&mut self) {
        if let Some(frame) = self.frame_range() {
            self.start = frame.end;
        }
    }

    /// Where the next complete frame is in `buf`, skipping refused ones.
    fn frame_range(&mut self) -> Option<std::ops::Range<usize>> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.end - self.start);
                self.start += n;
                self.skip -= n;
                if self.skip > 0 {
                    return None;
                }
            }
            let avail = &self.buf[self.start..self.end];
            let header = avail.first_chunk::<HEADER_LEN>()?;
            let len = u32::from_be_bytes(*header) as usize;
            if len == 0 {
                self.empty += 1;
                self.start += HEADER_LEN;
                continue;
            }
            if len > self.max_frame {
                self.oversized += 1;
                self.start += HEADER_LEN;
                self.skip = len;
                continue;
            }
            if avail.len() < HEADER_LEN + len {
                return None;
            }
            return Some(self.start + HEADER_LEN..self.start + HEADER_LEN + len);
        }
    }
}

/// Bounded output buffer of length-prefixed frames, tolerant of partial
/// writes.
#[derive(Debug)]
pub struct Encoder {
    /// `buf[start..end]` is encoded but not yet written.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The largest frame a slot holds.
    max_frame: usize,
}

impl Encoder {
    /// An encoder holding at least `frames` frames of up to `max_frame`
    /// bytes each.
    pub fn new(max_frame: usize, frames: usize) -> Self {
        let cap = (HEADER_LEN + max_frame) * frames.max(1);
        Encoder {
            buf: vec![0; cap].into_boxed_slice(),
            start: 0,
            end: 0,
            max_frame,
        }
    }

    /// Whether everything encoded was written.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Drops everything pending (the peer went away).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// A slot of `max_frame` bytes for the next frame, or `None` when the
    /// buffer is full (back-pressure: write out first).
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        let need = HEADER_LEN + self.max_frame;
        if self.buf.len() - self.end < need {
            if self.start == 0 || self.buf.len() - self.pending() < need {
                return None;
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let at = self.end + HEADER_LEN;
        Some(&mut self.buf[at..at + self.max_frame])
    }

    /// Commits the first `len` bytes of the last [`Encoder::slot`] as a
    /// frame and returns it. `len` is clamped to the slot's size.
    pub fn commit(&mut self, len: usize) -> &[u8] {
        let len = len
            .min(self.max_frame)
            .min(self.buf.len() - self.end - HEADER_LEN);
        let header = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
        self.buf[self.end..self.end + HEADER_LEN].copy_from_slice(&header);
        let frame = self.end + HEADER_LEN..self.end + HEADER_LEN + len;
        self.end = frame.end;
        &self.buf[frame]
    }

    /// Copies `frame` in; false (and nothing copied) when there is no room
    /// or it is larger than `max_frame`.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        match self.slot() {
            Some(slot) if frame.len() <= slot.len() => {
                slot[..frame.len()].copy_from_slice(frame);
                self.commit(frame.len());
                true
            }
            _ => false,
        }
    }

    /// Writes out as much as `w` takes. Returns `Ok(true)` when the buffer
    /// is empty, `Ok(false)` when `w` would block; other errors are the
    /// peer's.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<bool> {
        while self.start < self.end {
            match w.write(&self.buf[self.start..self.end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.clear();
        Ok(true)
    }
}

/// Token of the listening socket.
const LISTENER: Token = Token(crate::DRIVER_TOKEN_BASE as usize);
/// Token of port 0; port `i` has `FIRST_CLIENT + i`.
const FIRST_CLIENT: usize = crate::DRIVER_TOKEN_BASE as usize + 1;

/// The most guests one socket serves (`--max-guests`): transports have
/// 0x100 tokens, one of them the listener's and the last the loop's.
pub const MAX_GUESTS_LIMIT: usize = 0xfe;

/// `--max-guests`'s default.
pub const DEFAULT_MAX_GUESTS: usize = 16;

/// Output buffered for each guest before back-pressure: this many bytes,
/// and at least [`OUT_FRAMES`] whole frames (a guest's unread output at
/// MTU 65520 is then 1 MiB; at 1500, 256 KiB holding 172 frames).
const OUT_BYTES: usize = 256 * 1024;
/// See [`OUT_BYTES`].
const OUT_FRAMES: usize = 16;

/// The fewest frames a port may read per turn, however many ports share
/// the turn's budget.
const MIN_PORT_QUOTA: usize = 16;

/// How long a guest's output may stay full before frames for it are
/// dropped rather than holding up the stack for everyone (a paused VM).
const STALL: Duration = Duration::from_secs(1);

/// What the switch's ports carry: frames and bytes each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames from the guest (all it sent, dropped ones included).
    pub frames_in: u64,
    /// Bytes of those frames.
    pub bytes_in: u64,
    /// Frames to the guest.
    pub frames_out: u64,
    /// Bytes of those frames.
    pub bytes_out: u64,
    /// Frames for the guest dropped: its output was full (broadcasts, or
    /// stalled for a second).
    pub out_dropped: u64,
}

/// One connected guest, as [`StreamServer::guests`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestPort {
    /// Its switch port.
    pub port: PortId,
    /// The MAC it sends from (`None` until its first valid frame).
    pub mac: Option<[u8; 6]>,
    /// When it connected.
    pub connected_since: SystemTime,
    /// What it sent and received.
    pub stats: PortStats,
}

/// One QEMU client: a port of the switch.
#[derive(Debug)]
struct Port {
    stream: UnixStream,
    decoder: Decoder,
    encoder: Encoder,
    /// A readable edge came and the socket was not read to `WouldBlock`
    /// since.
    readable: bool,
    /// The next frame waits for room at this port.
    waiting_on: Option<PortId>,
    /// Since when the output has been full (a push failed and nothing was
    /// written since).
    full_since: Option<Instant>,
    since: SystemTime,
    stats: PortStats,
}

impl Port {
    /// Queues `frame` for the guest; false when the output is full.
    fn push(&mut self, now: Instant, frame: &[u8]) -> bool {
        if self.encoder.push(frame) {
            self.count_out(frame.len());
            true
        } else {
            self.full_since.get_or_insert(now);
            false
        }
    }

    fn count_out(&mut self, len: usize) {
        self.stats.frames_out += 1;
        self.stats.bytes_out += len as u64;
    }

    /// Whether the output has been full so long that frames for it are
    /// dropped instead of waited for.
    fn stalled(&self, now: Instant) -> bool {
        self.full_since
            .is_some_and(|t| now.saturating_duration_since(t) >= STALL)
    }

    /// Whether the output takes another frame, or may be ignored for
    /// back-pressure.
    fn has_room(&mut self, now: Instant) -> bool {
        self.encoder.slot().is_some() || self.stalled(now)
    }
}

/// How reading one port stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortRead {
    /// Nothing more to read now.
    Drained,
    /// Its quota was reached.
    More,
    /// The guest went away.
    Closed,
}

/// Where the frame the stack writes into [`Transport::out_slot`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Straight in this port's output (the only port).
    Port(PortId),
    /// In the staging buffer, to be switched on commit.
    Staged,
}

/// A unix socket server for QEMU `-netdev stream` clients: a virtual
/// switch with one port per client (see the module doc).
#[derive(Debug)]
pub struct StreamServer {
    path: PathBuf,
    listener: UnixListener,
    /// Ports by id; a disconnected guest leaves a hole.
    ports: Vec<Option<Port>>,
    switch: Switch,
    max_frame: usize,
    max_guests: usize,
    /// The port read first next turn (round robin).
    next_port: usize,
    /// Frames from the stack wait here when several ports may want them.
    stage: Box<[u8]>,
    slot: Option<Slot>,
    /// MACs of guests that left, for [`Transport::departed`].
    departed: VecDeque<[u8; 6]>,
    /// Frames refused for their length by ports already closed.
    refused_closed: u64,
    /// Connections refused for `--max-guests`.
    refused_guests: u64,
}

impl StreamServer {
    /// Listens on `path`, replacing a stale socket file there (any other
    /// kind of file is an error). Serves up to [`DEFAULT_MAX_GUESTS`]
    /// guests on a switch in front of a stack at [`Config`]'s default MAC;
    /// see [`StreamServer::switch`].
    ///
    /// [`Config`]: usernet_core::Config
    pub fn bind(path: &Path, max_frame: usize) -> io::Result<Self> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        Ok(StreamServer {
            path: path.to_owned(),
            listener,
            ports: Vec::new(),
            switch: Switch::new(usernet_core::Config::default().mac, false),
            max_frame,
            max_guests: DEFAULT_MAX_GUESTS,
            next_port: 0,
            stage: vec![0; max_frame].into_boxed_slice(),
            slot: None,
            departed: VecDeque::new(),
            refused_closed: 0,
            refused_guests: 0,
        })
    }

    /// Sets the switch up: the stack's MAC, the most guests at once
    /// (clamped to 1..=[`MAX_GUESTS_LIMIT`]) and `--isolate`.
    pub fn switch(mut self, stack_mac: [u8; 6], max_guests: usize, isolate: bool) -> Self {
        self.switch = Switch::new(stack_mac, isolate);
        self.max_guests = max_guests.clamp(1, MAX_GUESTS_LIMIT);
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames from the guests refused for their length (zero or too large).
    pub fn refused_frames(&self) -> u64 {
        self.live()
            .map(|(_, p)| p.decoder.oversized() + p.decoder.empty())
            .sum::<u64>()
            + self.refused_closed
    }

    /// Connections refused because `--max-guests` were connected.
    pub fn refused_guests(&self) -> u64 {
        self.refused_guests
    }

    /// What the switch dropped.
    pub fn switch_counters(&self) -> SwitchCounters {
        self.switch.counters()
    }

    /// The guests connected now, by port.
    pub fn guests(&self) -> Vec<GuestPort> {
        self.live()
            .map(|(i, p)| GuestPort {
                port: i,
                mac: self.switch.mac_of(i),
                connected_since: p.since,
                stats: p.stats,
            })
            .collect()
    }

    fn live(&self) -> impl Iterator<Item = (PortId, &Port)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
    }

    fn connected(&self) -> usize {
        self.live().count()
    }

    /// Closes port `i` (already taken out of `ports`): its MACs are
    /// reported as departed.
    fn close_port(&mut self, registry: &Registry, i: PortId, mut port: Port) {
        let _ = registry.deregister(&mut port.stream);
        self.refused_closed += port.decoder.oversized() + port.decoder.empty();
        let macs = self.switch.remove_port(i);
        let mac = macs.first().map(|m| fmt_mac(*m)).unwrap_or_default();
        tracing::info!(port = i, %mac, "{}: guest disconnected", self.path.display());
        self.departed.extend(macs);
    }

    /// Accepts the waiting clients; beyond `--max-guests` they are told
    /// no by a closed connection (and a line in the log).
    fn accept(&mut self, registry: &Registry) -> io::Result<()> {
        loop {
            let mut stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A connection that failed before we accepted it.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            };
            let free = self.ports.iter().position(Option::is_none);
            let i = match free {
                Some(i) => i,
                None if self.ports.len() < self.max_guests => {
                    self.ports.push(None);
                    self.ports.len() - 1
                }
                None => {
                    self.refused_guests += 1;
                    tracing::warn!(
                        "{}: guest refused: --max-guests {} are connected",
                        self.path.display(),
                        self.max_guests
                    );
                    continue;
                }
            };
            registry.register(
                &mut stream,
                Token(FIRST_CLIENT + i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            self.ports[i] = Some(Port {
                stream,
                decoder: Decoder::new(self.max_frame),
                encoder: Encoder::new(
                    self.max_frame,
                    (OUT_BYTES / (HEADER_LEN + self.max_frame)).max(OUT_FRAMES),
                ),
                readable: true,
                waiting_on: None,
                full_since: None,
                since: SystemTime::now(),
                stats: PortStats::default(),
            });
            tracing::info!(port = i, "{}: guest connected", self.path.display());
        }
    }

    /// Sends one frame from the guest on `from` where the switch says;
    /// `Err(port)` when it must wait for room at `port` (unicast to a
    /// guest whose output is full: back-pressure to the sender).
    fn switch_frame(
        &mut self,
        now: Instant,
        from: PortId,
        frame: &[u8],
        to_stack: &mut dyn FnMut(&[u8]),
    ) -> Result<(), PortId> {
        match self.switch.from_guest(now, from, frame) {
            Verdict::Stack => to_stack(frame),
            Verdict::Port(q) => {
                if let Some(Some(dst)) = self.ports.get_mut(q)
                    && !dst.push(now, frame)
                {
                    if !dst.stalled(now) {
                        return Err(q);
                    }
                    dst.stats.out_dropped += 1;
                }
            }
            Verdict::Flood { except, stack } => {
                flood(&mut self.ports, now, except, frame);
                if stack {
                    to_stack(frame);
                }
            }
            Verdict::Drop(why) => tracing::debug!(?why, port = from, "frame dropped"),
        }
        Ok(())
    }

    /// Reads port `i` (taken out of `ports`) for at most `quota` frames.
    fn read_port(
        &mut self,
        now: Instant,
        i: PortId,
        port: &mut Port,
        quota: usize,
        to_stack: &mut dyn FnMut(&[u8]),
    ) -> (PortRead, usize) {
        let mut n = 0;
        loop {
            while n < quota {
                let Some(frame) = port.decoder.peek_frame() else {
                    break;
                };
                let len = frame.len();
                if let Err(q) = self.switch_frame(now, i, frame, to_stack) {
                    port.waiting_on = Some(q);
                    return (PortRead::Drained, n);
                }
                port.decoder.consume();
                port.waiting_on = None;
                port.stats.frames_in += 1;
                port.stats.bytes_in += len as u64;
                n += 1;
            }
            if n >= quota {
                return (PortRead::More, n);
            }
            if !port.readable {
                return (PortRead::Drained, n);
            }
            let buf = port.decoder.read_buf();
            if buf.is_empty() {
                // Cannot happen once the frames are drained; never read 0.
                return (PortRead::More, n);
            }
            match port.stream.read(buf) {
                Ok(0) => return (PortRead::Closed, n),
                Ok(len) => port.decoder.filled(len),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    port.readable = false;
                    return (PortRead::Drained, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::info!(port = i, "{}: read failed: {e}", self.path.display());
                    return (PortRead::Closed, n);
                }
            }
        }
    }
}

/// Copies `frame` to every port but `except`; a full one misses it.
fn flood(ports: &mut [Option<Port>], now: Instant, except: Option<PortId>, frame: &[u8]) {
    for (i, p) in ports.iter_mut().enumerate() {
        if let Some(p) = p
            && Some(i) != except
            && !p.push(now, frame)
        {
            p.stats.out_dropped += 1;
        }
    }
}

/// `52:54:00:12:34:56`.
fn fmt_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        tracing::info!(
            switch = ?self.switch.counters(),
            refused_guests = self.refused_guests,
            "switch stopped"
        );
        let _ = fs::remove_file(&self.path);
    }
}

impl Transport for StreamServer {
    fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.listener, LISTENER, Interest::READABLE)
    }

    fn owns(&self, token: Token) -> bool {
        token == LISTENER || (FIRST_CLIENT..FIRST_CLIENT + MAX_GUESTS_LIMIT).contains(&token.0)
    }

    fn ready(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        if token == LISTENER {
            return self.accept(registry);
        }
        if let Some(Some(p)) = token
            .0
            .checked_sub(FIRST_CLIENT)
            .and_then(|i| self.ports.get_mut(i))
        {
            p.readable = true;
        }
        Ok(())
    }

    fn is_up(&self) -> bool {
        self.ports.iter().any(Option::is_some)
    }

    /// Reads the ports in turn, starting one further each call, each for
    /// at most its share of `max` (at least 16 frames): a guest that
    /// floods gets its share, the others theirs. Never `Closed`: guests
    /// that left are reported by [`Transport::departed`].
    fn read_frames(
        &mut self,
        registry: &Registry,
        max: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> ReadStatus {
        let now = Instant::now();
        let count = self.ports.len();
        let quota = (max / self.connected().max(1)).max(MIN_PORT_QUOTA);
        let mut budget = max;
        let mut more = false;
        for k in 0..count {
            let i = (self.next_port + k) % count;
            if budget == 0 {
                more = true;
                break;
            }
            let Some(mut port) = self.ports[i].take() else {
                continue;
            };
            let (status, n) = self.read_port(now, i, &mut port, quota.min(budget), f);
            budget -= n;
            match status {
                PortRead::Closed => self.close_port(registry, i, port),
                PortRead::More => {
                    more = true;
                    self.ports[i] = Some(port);
                }
                PortRead::Drained => self.ports[i] = Some(port),
            }
        }
        self.next_port = (self.next_port + 1) % count.max(1);
        if more {
            ReadStatus::More
        } else {
            ReadStatus::Drained
        }
    }

    /// With one guest, its output buffer (no copy); with several, a
    /// staging buffer switched on [`Transport::commit`]. `None` while a
    /// guest's output is full (back-pressure), unless it has been full for
    /// a second: then frames for it are dropped instead.
    fn out_slot(&mut self) -> Option<&mut [u8]> {
        let now = Instant::now();
        let mut live = self
            .ports
            .iter_mut()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.as_mut()?)));
        let (first, port) = live.next()?;
        if !port.has_room(now) {
            return None;
        }
        let mut several = false;
        for (_, p) in live {
            several = true;
            if !p.has_room(now) {
                return None;
            }
        }
        if several {
            self.slot = Some(Slot::Staged);
            return Some(&mut self.stage[..]);
        }
        self.slot = Some(Slot::Port(first));
        self.ports[first].as_mut()?.encoder.slot()
    }

    fn commit(&mut self, len: usize) -> &[u8] {
        let now = Instant::now();
        let len = len.min(self.stage.len());
        match self.slot.take() {
            Some(Slot::Port(i)) => match self.ports.get_mut(i) {
                Some(Some(p)) => {
                    p.count_out(len);
                    p.encoder.commit(len)
                }
                _ => &[],
            },
            Some(Slot::Staged) => {
                let frame = &self.stage[..len];
                match self.switch.from_stack(now, frame) {
                    Verdict::Port(q) => {
                        if let Some(Some(p)) = self.ports.get_mut(q)
                            && !p.push(now, frame)
                        {
                            p.stats.out_dropped += 1;
                        }
                    }
                    Verdict::Flood { except, .. } => flood(&mut self.ports, now, except, frame),
                    Verdict::Stack | Verdict::Drop(_) => {}
                }
                &self.stage[..len]
            }
            None => &[],
        }
    }

    fn flush(&mut self, registry: &Registry) -> io::Result<bool> {
        let mut all = true;
        for i in 0..self.ports.len() {
            let Some(mut port) = self.ports[i].take() else {
                continue;
            };
            let before = port.encoder.pending();
            match port.encoder.write_to(&mut port.stream) {
                Ok(done) => {
                    all &= done;
                    if port.encoder.pending() < before {
                        port.full_since = None;
                    }
                    self.ports[i] = Some(port);
                }
                Err(e) => {
                    tracing::info!(port = i, "{}: write failed: {e}", self.path.display());
                    self.close_port(registry, i, port);
                }
            }
        }
        Ok(all)
    }

    fn departed(&mut self) -> Option<[u8; 6]> {
        self.departed.pop_front()
    }

    fn guests(&self) -> Vec<GuestPort> {
        StreamServer::guests(self)
    }

    /// A guest's frame waits for a port that has room now (or is gone).
    fn rx_ready(&mut self) -> bool {
        let waiting: Vec<PortId> = self.live().filter_map(|(_, p)| p.waiting_on).collect();
        waiting.into_iter().any(|q| match self.ports.get_mut(q) {
            Some(Some(p)) => p.encoder.slot().is_some(),
            _ => true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&(f.len() as u32).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    fn drain(d: &mut Decoder, out: &mut Vec<Vec<u8>>) {
        while let Some(f) = d.next_frame() {
            out.push(f.to_vec());
        }
    }

    #[test]
    fn many_frames_in_one_read() {
        let mut d = Decoder::new(1514);
        let bytes = encode(&[b"one", b"two!", &[7; 1514]]);
        assert_eq!(d.feed(&bytes), bytes.len());
        let mut out = Vec::new();
        drain(&mut d, &mut out);
        assert_eq!(out, vec![b"one".to_vec(), b"two!".to_vec(), vec![7; 1514]]);
    }

    #[test]
    fn frame_split_across_reads() {
        let mut d = Decoder::new(1514);
        let bytes = encode(&[&[1; 100], &[2; 200]]);
        let mut out = Vec::new();
        for chunk in [&bytes[..2], &bytes[2..50], &bytes[50..150], &bytes[150..]] {
            d.feed(chunk);
            drain(&mut d, &mut out);
        }
        assert_eq!(out, vec![vec![1; 100], vec![2; 200]]);
    }

    #[test]
    fn byte_at_a_time() {
        let mut d = Decoder::new(1514);
        let frames: Vec<Vec<u8>> = (1..40u8).map(|i| vec![i; usize::from(i) * 37]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let bytes = encode(&refs);
        let mut out = Vec::new();
        for b in &bytes {
            assert_eq!(d.feed(std::slice::from_ref(b)), 1);
            drain(&mut d, &mut out);
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn oversized_and_empty_are_counted_and_skipped() {
        let mut d = Decoder::new(100);
        let mut bytes = encode(&[b"a"]);
        // A 300 000-byte frame, larger than the decoder's buffer.
        bytes.extend_from_slice(&300_000u32.to_be_bytes());
        bytes.extend(std::iter::repeat_n(0xee, 300_000));
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend(encode(&[b"b"]));
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = d.feed(rest);
            rest = &rest[n..];
            drain(&mut d, &mut out);
        }
        assert_eq!(out, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!((d.oversized(), d.empty()), (1, 1));
    }

    /// A writer that takes at most `chunk` bytes per call, then blocks.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(3) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.chunk);
            self.out.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn encoder_partial_writes_and_back_pressure() {
        let mut e = Encoder::new(100, 2);
        assert!(e.push(&[1; 100]));
        assert!(e.push(&[2; 50]));
        assert!(e.slot().is_none(), "two frames fill it");
        let mut w = Trickle {
            out: Vec::new(),
            chunk: 30,
            calls: 0,
        };
        let mut sent: Vec<Vec<u8>> = vec![vec![1; 100], vec![2; 50]];
        let mut more = vec![vec![4u8; 10], vec![5; 100], vec![6; 1]];
        loop {
            e.write_to(&mut w).expect("write");
            if let Some(f) = more.first()
                && e.push(f)
            {
                sent.push(more.remove(0));
            }
            if more.is_empty() && e.is_empty() {
                break;
            }
        }
        let mut d = Decoder::new(100);
        let mut out = Vec::new();
        d.feed(&w.out);
        drain(&mut d, &mut out);
        assert_eq!(out, sent);
    }

    #[test]
    fn commit_frames_a_slot() {
        let mut e = Encoder::new(64, 1);
        let slot = e.slot().expect("room");
        slot[..3].copy_from_slice(b"xyz");
        assert_eq!(e.commit(3), b"xyz");
        let mut out = Vec::new();
        assert!(e.write_to(&mut out).expect("vec"));
        assert_eq!(out, encode(&[b"xyz"]));
        assert!(e.is_empty());
    }

    /// A server on a fresh socket with `max` guests, its registry, and
    /// `n` connected clients (accepted).
    struct SwitchRig {
        server: StreamServer,
        poll: mio::Poll,
        clients: Vec<std::os::unix::net::UnixStream>,
        dir: PathBuf,
    }

    const STACK: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

    fn mac(i: u8) -> [u8; 6] {
        [0x52, 0x54, 0, 0, 0, i]
    }

    fn eth(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    }

    impl SwitchRig {
        fn new(label: &str, max: usize, isolate: bool, n: usize) -> SwitchRig {
            let dir =
                std::env::temp_dir().join(format!("usernet-sw-{label}-{}", std::process::id()));
            fs::create_dir_all(&dir).expect("dir");
            let path = dir.join("s.sock");
            let mut server = StreamServer::bind(&path, 1514)
                .expect("bind")
                .switch(STACK, max, isolate);
            let poll = mio::Poll::new().expect("poll");
            server.register(poll.registry()).expect("register");
            let mut rig = SwitchRig {
                server,
                poll,
                clients: Vec::new(),
                dir,
            };
            for _ in 0..n {
                rig.connect();
            }
            rig
        }

        fn connect(&mut self) -> &std::os::unix::net::UnixStream {
            let c = std::os::unix::net::UnixStream::connect(self.server.path()).expect("connect");
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            self.server
                .ready(self.poll.registry(), LISTENER)
                .expect("accept");
            self.clients.push(c);
            self.clients.last().expect("client")
        }

        fn send(&mut self, client: usize, frames: &[Vec<u8>]) {
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            self.clients[client]
                .write_all(&encode(&refs))
                .expect("send");
        }

        /// One read turn of `max` frames; the frames for the stack, in order.
        fn read(&mut self, max: usize) -> (ReadStatus, Vec<Vec<u8>>) {
            for i in 0..self.server.ports.len() {
                let token = Token(FIRST_CLIENT + i);
                self.server
                    .ready(self.poll.registry(), token)
                    .expect("ready");
            }
            let mut got = Vec::new();
            let status = self
                .server
                .read_frames(self.poll.registry(), max, &mut |f| got.push(f.to_vec()));
            self.server.flush(self.poll.registry()).expect("flush");
            (status, got)
        }

        /// The frames waiting at `client`.
        fn received(&mut self, client: usize) -> Vec<Vec<u8>> {
            let mut d = Decoder::new(1514);
            let c = &mut self.clients[client];
            loop {
                let buf = d.read_buf();
                match c.read(buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => d.filled(n),
                }
            }
            let mut out = Vec::new();
            drain(&mut d, &mut out);
            out
        }
    }

    impl Drop for SwitchRig {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn switches_between_guests_and_to_the_stack() {
        let mut rig = SwitchRig::new("basic", 4, false, 3);
        // A (0) broadcasts: B, C and the stack get it.
        let bcast = eth([0xff; 6], mac(0xa), 60);
        rig.send(0, std::slice::from_ref(&bcast));
        let (_, to_stack) = rig.read(256);
        assert_eq!(to_stack, vec![bcast.clone()]);
        assert_eq!(rig.received(1), vec![bcast.clone()]);
        assert_eq!(rig.received(2), vec![bcast]);
        // B to A: A only, not the stack, not C.
        let uni = eth(mac(0xa), mac(0xb), 80);
        rig.send(1, std::slice::from_ref(&uni));
        let (_, to_stack) = rig.read(256);
        assert!(to_stack.is_empty());
        assert_eq!(rig.received(0), vec![uni]);
        assert!(rig.received(2).is_empty());
        // A runt from C reaches no one.
        rig.send(2, &[vec![0xff; 10]]);
        let (_, to_stack) = rig.read(256);
        assert!(to_stack.is_empty());
        assert!(rig.received(0).is_empty() && rig.received(1).is_empty());
        assert_eq!(rig.server.switch_counters().malformed, 1);
        // The stack's frame for B goes to B.
        let slot = rig.server.out_slot().expect("room");
        let frame = eth(mac(0xb), STACK, 70);
        slot[..70].copy_from_slice(&frame);
        rig.server.commit(70);
        rig.server.flush(rig.poll.registry()).expect("flush");
        assert_eq!(rig.received(1), vec![frame]);
        assert!(rig.received(0).is_empty());
        let guests = rig.server.guests();
        assert_eq!(guests.len(), 3);
        assert_eq!(guests[0].mac, Some(mac(0xa)));
        assert_eq!(guests[0].stats.frames_in, 1);
        assert_eq!(guests[0].stats.frames_out, 1);
        assert_eq!(guests[1].stats.bytes_out, 60 + 70);
    }

    #[test]
    fn a_flooding_guest_gets_only_its_share_of_a_turn() {
        let mut rig = SwitchRig::new("fair", 4, false, 2);
        let flood: Vec<Vec<u8>> = (0..400).map(|_| eth(STACK, mac(0xa), 60)).collect();
        rig.send(0, &flood);
        let mine: Vec<Vec<u8>> = (0..5).map(|_| eth(STACK, mac(0xb), 61)).collect();
        rig.send(1, &mine);
        let (status, to_stack) = rig.read(256);
        assert_eq!(status, ReadStatus::More);
        let from_b = to_stack.iter().filter(|f| f.len() == 61).count();
        assert_eq!(from_b, 5, "B's frames wait behind none of A's");
        assert!(to_stack.len() <= 256);
    }

    #[test]
    fn more_than_max_guests_are_refused_and_leaving_is_reported() {
        let mut rig = SwitchRig::new("max", 2, false, 2);
        rig.send(0, &[eth([0xff; 6], mac(0xa), 60)]);
        rig.read(256);
        rig.connect();
        let mut b = [0u8; 1];
        assert!(matches!(rig.clients[2].read(&mut b), Ok(0)), "refused");
        assert_eq!(rig.server.refused_guests(), 1);
        assert_eq!(rig.server.guests().len(), 2);
        // A leaves: its MAC is reported, its port is free again.
        rig.clients[0]
            .shutdown(std::net::Shutdown::Both)
            .expect("shutdown");
        rig.read(256);
        assert_eq!(rig.server.departed(), Some(mac(0xa)));
        assert_eq!(rig.server.departed(), None);
        assert_eq!(rig.server.guests().len(), 1);
        rig.connect();
        assert_eq!(rig.server.guests().len(), 2);
    }

    #[test]
    fn isolated_guests_reach_only_the_stack() {
        let mut rig = SwitchRig::new("iso", 4, true, 2);
        let bcast = eth([0xff; 6], mac(0xa), 60);
        rig.send(0, std::slice::from_ref(&bcast));
        let (_, to_stack) = rig.read(256);
        assert_eq!(to_stack, vec![bcast]);
        assert!(rig.received(1).is_empty());
        rig.send(1, &[eth(mac(0xa), mac(0xb), 60)]);
        rig.read(256);
        assert!(rig.received(0).is_empty());
        assert_eq!(rig.server.switch_counters().isolated, 1);
    }
}
