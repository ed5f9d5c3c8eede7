//! The read-only TFTP server at the gateway addresses (QEMU's `tftp=`):
//! RFC 1350 with option negotiation (RFC 2347) for `blksize` (RFC 2348),
//! `timeout` and `tsize` (RFC 2349).
//!
//! # Theory of operation
//! The stack hands every UDP datagram the guest sends to port 69 of a
//! gateway address (`--host`, `--ipv6-host`) to [`Server::handle`] when a
//! root directory is configured. As libslirp does, the server answers from
//! port 69 itself instead of a fresh transfer port, so a transfer is keyed
//! by the client's address and port alone.
//!
//! A read request (RRQ) opens the file through [`HostIo::file_open`]; the
//! host implementation resolves the name below the root and refuses
//! anything that escapes it, and the core refuses absolute names and `..`
//! components before asking (an ERROR "access violation" either way). Then
//! the transfer is lock-step, one packet in flight:
//! ```text
//! RRQ with options we accept -> OACK -(ACK 0)-> DATA 1 -(ACK 1)-> DATA 2 ...
//! RRQ without (or with none accepted)    ->     DATA 1 -(ACK 1)-> DATA 2 ...
//! DATA n shorter than blksize is the last -(ACK n)-> done, file closed
//! no ACK within the timeout -> the same packet again, at most MAX_RETRIES times, then dropped
//! ERROR from the client, or a new RRQ from the same port -> the old transfer ends
//! ```
//! DATA is read from the file with [`HostIo::file_read_at`] straight into
//! the frame being built, at offset `(block - 1) * blksize`, so nothing is
//! buffered here and a retransmission simply reads again. Duplicate ACKs
//! are ignored (RFC 1123 4.2.3.1: answering them is the "Sorcerer's
//! Apprentice" bug); only the timer retransmits. Block numbers wrap from
//! 65535 to 0, so files of any size go through.
//!
//! Write requests get ERROR "access violation"; malformed packets get
//! ERROR "illegal operation". At most [`MAX_SESSIONS`] transfers run at
//! once (libslirp has 20); a request beyond that gets ERROR "busy".
//!
//! # Why the codec is written here
//! The TFTP crates found either parse only (no OACK emission), cover RFC
//! 1350 without options, or are tied to an async runtime; the format is
//! five opcodes of NUL-terminated strings and 16-bit numbers, so the codec
//! is [`Packet::parse`] and [`Packet::emit`] below, with byte fixtures.
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::host::{HostIo, Token};
use crate::output::Output;
use crate::packet::{self, Macs};
use crate::tcp::Env;

/// The TFTP server port.
pub const PORT: u16 = 69;
/// The most transfers at once.
pub const MAX_SESSIONS: usize = 20;
/// Block size without the `blksize` option.
pub const DEFAULT_BLKSIZE: usize = 512;
/// The `blksize` range of RFC 2348.
pub const BLKSIZE_RANGE: std::ops::RangeInclusive<u64> = 8..=65464;
/// Retransmission interval without the `timeout` option.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Retransmissions of one packet before the transfer is dropped.
pub const MAX_RETRIES: u8 = 5;
/// The longest file name accepted (libslirp's limit).
pub const MAX_FILENAME: usize = 512;
/// Tokens of open files: `TOKEN_BASE + session slot`, above the flows'
/// and listeners' tokens and below the driver's.
pub const TOKEN_BASE: u64 = crate::flow::FLOW_TOKEN_LIMIT + (1 << 61);

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// TFTP error codes (RFC 1350 and RFC 2347).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not defined, see the message.
    Undefined = 0,
    /// File not found.
    NotFound = 1,
    /// Access violation.
    AccessViolation = 2,
    /// Illegal TFTP operation.
    IllegalOperation = 4,
}

/// The options of a request or an OACK (RFC 2347); unknown options are
/// not kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `blksize` (RFC 2348).
    pub blksize: Option<u64>,
    /// `timeout` in seconds (RFC 2349).
    pub timeout: Option<u64>,
    /// `tsize` (RFC 2349): 0 in a request, the file size in the OACK.
    pub tsize: Option<u64>,
}

impl Options {
    fn is_empty(&self) -> bool {
        *self == Options::default()
    }

    fn pairs(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("blksize", self.blksize),
            ("timeout", self.timeout),
            ("tsize", self.tsize),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
    }
}

/// A read or write request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The file name as sent.
    pub filename: &'a str,
    /// The transfer mode, lower-cased by the client or not.
    pub mode: &'a str,
    /// The options understood.
    pub options: Options,
}

/// One TFTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request<'a>),
    /// Write request.
    Wrq(Request<'a>),
    /// A block of data.
    Data {
        /// Block number.
        block: u16,
        /// Up to blksize bytes.
        data: &'a [u8],
    },
    /// Acknowledgement of a block (0: of the OACK).
    Ack {
        /// Block number.
        block: u16,
    },
    /// An error; ends the transfer.
    Error {
        /// Error code.
        code: u16,
        /// Message.
        message: &'a str,
    },
    /// Options acknowledgement.
    Oack(Options),
}

/// Splits NUL-terminated strings off `b`: the first and the rest.
fn cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = std::str::from_utf8(&b[..end]).ok()?;
    Some((s, &b[end + 1..]))
}

/// Reads `name\0value\0` pairs, keeping the options this server knows.
/// A pair that is cut short makes the packet malformed; a value that is
/// not a number makes the option ignored.
fn parse_options(mut b: &[u8]) -> Option<Options> {
    let mut o = Options::default();
    // Bounded by the packet: each pair consumes at least two bytes.
    while !b.is_empty() {
        let (name, rest) = cstr(b)?;
        let (value, rest) = cstr(rest)?;
        b = rest;
        let Ok(v) = value.parse::<u64>() else {
            continue;
        };
        match name.to_ascii_lowercase().as_str() {
            "blksize" => o.blksize = Some(v),
            "timeout" => o.timeout = Some(v),
            "tsize" => o.tsize = Some(v),
            _ => {}
        }
    }
    Some(o)
}

impl<'a> Packet<'a> {
    /// Parses a UDP payload; `None` if it is malformed.
    pub fn parse(b: &'a [u8]) -> Option<Packet<'a>> {
        let (op, rest) = b.split_first_chunk::<2>()?;
        let u16_at = |r: &[u8]| r.first_chunk::<2>().map(|c| u16::from_be_bytes(*c));
        match u16::from_be_bytes(*op) {
            op @ (OP_RRQ | OP_WRQ) => {
                let (filename, rest) = cstr(rest)?;
                let (mode, rest) = cstr(rest)?;
                let options = parse_options(rest)?;
                let req = Request {
                    filename,
                    mode,
                    options,
                };
                Some(if op == OP_RRQ {
                    Packet::Rrq(req)
                } else {
                    Packet::Wrq(req)
                })
            }
            OP_DATA => Some(Packet::Data {
                block: u16_at(rest)?,
                data: &rest[2..],
            }),
            OP_ACK => Some(Packet::Ack {
                block: u16_at(rest)?,
            }),
            OP_ERROR => {
                let code = u16_at(rest)?;
                // Some clients leave out the terminating NUL.
                let message = cstr(&rest[2..]).map_or("", |(m, _)| m);
                Some(Packet::Error { code, message })
            }
            OP_OACK => Some(Packet::Oack(parse_options(rest)?)),
            _ => None,
        }
    }

    /// Writes the packet into `buf`; returns its length, or `None` if it
    /// does not fit.
    pub fn emit(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Writer { buf, len: 0 };
        match self {
            Packet::Rrq(r) | Packet::Wrq(r) => {
                w.put(
                    &(if matches!(self, Packet::Rrq(_)) {
                        OP_RRQ
                    } else {
                        OP_WRQ
                    })
                    .to_be_bytes(),
                )?;
                w.cstr(r.filename)?;
                w.cstr(r.mode)?;
                w.options(&r.options)?;
            }
            Packet::Data { block, data } => {
                w.put(&OP_DATA.to_be_bytes())?;
                w.put(&block.to_be_bytes())?;
                w.put(data)?;
            }
            Packet::Ack { block } => {
                w.put(&OP_ACK.to_be_bytes())?;
                w.put(&block.to_be_bytes())?;
            }
            Packet::Error { code, message } => {
                w.put(&OP_ERROR.to_be_bytes())?;
                w.put(&code.to_be_bytes())?;
                w.cstr(message)?;
            }
            Packet::Oack(o) => {
                w.put(&OP_OACK.to_be_bytes())?;
                w.options(o)?;
            }
        }
        Some(w.len)
    }
}

/// Appends to a buffer, failing when it is full.
struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) -> Option<()> {
        self.buf
            .get_mut(self.len..self.len + b.len())?
            .copy_from_slice(b);
        self.len += b.len();
        Some(())
    }

    fn cstr(&mut self, s: &str) -> Option<()> {
        self.put(s.as_bytes())?;
        self.put(&[0])
    }

    fn options(&mut self, o: &Options) -> Option<()> {
        for (k, v) in o.pairs() {
            self.cstr(k)?;
            self.cstr(&v.to_string())?;
        }
        Some(())
    }
}

/// Whether a requested name may be looked up at all: relative, no `..`
/// component, not a directory. (The host enforces the root again.)
pub fn name_allowed(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILENAME
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.split('/').any(|c| c == "..")
}

/// One transfer.
#[derive(Debug)]
struct Session {
    /// The client's address and port.
    client: SocketAddr,
    /// Our MAC and the client's (guests may be several on a switch).
    macs: Macs,
    /// The gateway address the client sent to (we answer from it).
    server: IpAddr,
    /// Block size in force.
    blksize: usize,
    /// Retransmission interval.
    timeout: Duration,
    /// The block in flight, counted from 1 without wrapping; 0 while the
    /// OACK is in flight.
    block: u64,
    /// The OACK sent (while `block` is 0).
    oack: Options,
    /// The block in flight is the last one (shorter than `blksize`).
    last: bool,
    /// When the packet in flight is sent again.
    deadline: Instant,
    /// Retransmissions of the packet in flight so far.
    retries: u8,
}

/// The TFTP server: at most [`MAX_SESSIONS`] transfers.
#[derive(Debug, Default)]
pub struct Server {
    sessions: Vec<Option<Session>>,
}

fn token(slot: usize) -> Token {
    Token(TOKEN_BASE + slot as u64)
}

/// Queues one TFTP packet from `server:69` to `client`.
fn send(out: &mut Output, macs: Macs, server: IpAddr, client: SocketAddr, p: &Packet) {
    out.push_with(|buf| {
        let off = packet::udp_payload_offset(client.ip());
        let n = p.emit(buf.get_mut(off..)?)?;
        packet::udp_in_place(buf, macs, (server, PORT), (client.ip(), client.port()), n)
    });
}

/// Sends an ERROR packet (RFC 1350) to `client`.
fn send_error(
    out: &mut Output,
    macs: Macs,
    server: IpAddr,
    client: SocketAddr,
    code: ErrorCode,
    message: &str,
) {
    let p = Packet::Error {
        code: code as u16,
        message,
    };
    send(out, macs, server, client, &p);
}

/// The largest block that fits one frame on the link.
fn link_blksize(mtu: u32, ip: IpAddr) -> u64 {
    (mtu as usize).saturating_sub(packet::ip_len(ip) + 8 + 4) as u64
}

impl Server {
    /// Handles a datagram from `client` to `server`:69.
    pub fn handle<H: HostIo>(
        &mut self,
        env: &Env,
        client: SocketAddr,
        server: IpAddr,
        payload: &[u8],
        host: &mut H,
        out: &mut Output,
    ) {
        let error = |out: &mut Output, code: ErrorCode, message: &str| {
            send_error(out, env.macs, server, client, code, message);
        };
        let slot = self.find(client);
        match Packet::parse(payload) {
            Some(Packet::Rrq(req)) => {
                if let Some(slot) = slot {
                    // A new request from the same port starts afresh.
                    self.end(slot, host);
                }
                self.read_request(env, client, server, &req, host, out);
            }
            Some(Packet::Wrq(_)) => {
                error(out, ErrorCode::AccessViolation, "read-only server");
            }
            Some(Packet::Ack { block }) => {
                if let Some(slot) = slot {
                    self.ack(env, slot, block, host, out);
                }
            }
            Some(Packet::Error { .. }) => {
                if let Some(slot) = slot {
                    self.end(slot, host);
                }
            }
            // DATA and OACK are for clients; no transfer of ours is a write.
            Some(Packet::Data { .. } | Packet::Oack(_)) | None => {
                if let Some(slot) = slot {
                    self.end(slot, host);
                }
                error(out, ErrorCode::IllegalOperation, "illegal operation");
            }
        }
    }

    fn find(&self, client: SocketAddr) -> Option<usize> {
        self.sessions
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.client == client))
    }

    fn end<H: HostIo>(&mut self, slot: usize, host: &mut H) {
        if let Some(s) = self.sessions.get_mut(slot)
            && s.take().is_some()
        {
            host.close(token(slot));
        }
    }

    /// Number of transfers running.
    pub fn len(&self) -> usize {
        self.sessions.iter().flatten().count()
    }

    /// Whether no transfer is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn free_slot(&mut self) -> Option<usize> {
        match self.sessions.iter().position(Option::is_none) {
            Some(i) => Some(i),
            None if self.sessions.len() < MAX_SESSIONS => {
                self.sessions.push(None);
                Some(self.sessions.len() - 1)
            }
            None => None,
        }
    }

    fn read_request<H: HostIo>(
        &mut self,
        env: &Env,
        client: SocketAddr,
        server: IpAddr,
        req: &Request,
        host: &mut H,
        out: &mut Output,
    ) {
        let error = |out: &mut Output, code: ErrorCode, message: &str| {
            send_error(out, env.macs, server, client, code, message);
        };
        let Some(root) = env.cfg.tftp_root.as_deref() else {
            return error(out, ErrorCode::AccessViolation, "no TFTP service");
        };
        if !req.mode.eq_ignore_ascii_case("octet") {
            return error(out, ErrorCode::IllegalOperation, "only octet mode");
        }
        if !name_allowed(req.filename) {
            return error(out, ErrorCode::AccessViolation, "access violation");
        }
        let Some(slot) = self.free_slot() else {
            return error(out, ErrorCode::Undefined, "busy: too many transfers");
        };
        let size = match host.file_open(token(slot), root, req.filename) {
            Ok(size) => size,
            Err(e) => {
                tracing::debug!(%e, name = req.filename, "TFTP open refused");
                let code = match e.kind() {
                    std::io::ErrorKind::NotFound => ErrorCode::NotFound,
                    _ => ErrorCode::AccessViolation,
                };
                let message = match code {
                    ErrorCode::NotFound => "file not found",
                    _ => "access violation",
                };
                return error(out, code, message);
            }
        };
        let asked = req.options;
        let mut oack = Options::default();
        let mut blksize = DEFAULT_BLKSIZE;
        if let Some(b) = asked.blksize.filter(|b| BLKSIZE_RANGE.contains(b)) {
            let b = b.min(link_blksize(env.cfg.mtu, client.ip()));
            oack.blksize = Some(b);
            blksize = b as usize;
        }
        let mut timeout = DEFAULT_TIMEOUT;
        if let Some(t) = asked.timeout.filter(|t| (1..=255).contains(t)) {
            oack.timeout = Some(t);
            timeout = Duration::from_secs(t);
        }
        if asked.tsize.is_some() {
            oack.tsize = Some(size);
        }
        tracing::debug!(%client, name = req.filename, size, ?oack, "TFTP read");
        let mut s = Session {
            client,
            macs: env.macs,
            server,
            blksize,
            timeout,
            block: if oack.is_empty() { 1 } else { 0 },
            oack,
            last: false,
            deadline: env.now + timeout,
            retries: 0,
        };
        if !s.transmit(token(slot), env.macs, host, out) {
            host.close(token(slot));
            return;
        }
        self.sessions[slot] = Some(s);
    }

    fn ack<H: HostIo>(
        &mut self,
        env: &Env,
        slot: usize,
        block: u16,
        host: &mut H,
        out: &mut Output,
    ) {
        let Some(Some(s)) = self.sessions.get_mut(slot) else {
            return;
        };
        if block != s.block as u16 {
            return; // a duplicate: the timer retransmits
        }
        if s.last {
            return self.end(slot, host);
        }
        s.block += 1;
        s.retries = 0;
        s.deadline = env.now + s.timeout;
        if !s.transmit(token(slot), env.macs, host, out) {
            self.end(slot, host);
        }
    }

    /// When [`Server::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions.iter().flatten().map(|s| s.deadline).min()
    }

    /// Retransmits what was not acknowledged in time; drops transfers out
    /// of retries.
    pub fn handle_timeout<H: HostIo>(&mut self, env: &Env, host: &mut H, out: &mut Output) {
        for slot in 0..self.sessions.len() {
            let Some(Some(s)) = self.sessions.get_mut(slot) else {
                continue;
            };
            if env.now < s.deadline {
                continue;
            }
            s.retries += 1;
            s.deadline = env.now + s.timeout;
            if s.retries > MAX_RETRIES {
                tracing::debug!(client = %s.client, block = s.block, "TFTP transfer timed out");
                self.end(slot, host);
            } else if !s.transmit(token(slot), s.macs, host, out) {
                self.end(slot, host);
            }
        }
    }

    /// Ends the transfers of clients at `addrs` (a guest left the switch).
    pub fn forget<H: HostIo>(&mut self, addrs: &[IpAddr], host: &mut H) {
        for slot in 0..self.sessions.len() {
            if let Some(Some(s)) = self.sessions.get(slot)
                && addrs.contains(&s.client.ip())
            {
                self.end(slot, host);
            }
        }
    }

    /// Ends every transfer (the guest link went away).
    pub fn clear<H: HostIo>(&mut self, host: &mut H) {
        for slot in 0..self.sessions.len() {
            self.end(slot, host);
        }
    }
}

impl Session {
    /// Sends the packet in flight (the OACK or the current block); `false`
    /// if the file could not be read (an ERROR went instead).
    fn transmit<H: HostIo>(
        &mut self,
        token: Token,
        macs: Macs,
        host: &mut H,
        out: &mut Output,
    ) -> bool {
        if self.block == 0 {
            send(
                out,
                macs,
                self.server,
                self.client,
                &Packet::Oack(self.oack),
            );
            return true;
        }
        let offset = (self.block - 1).saturating_mul(self.blksize as u64);
        let (server, client, blksize) = (self.server, self.client, self.blksize);
        let block = self.block as u16;
        let mut read = Ok(0);
        out.push_with(|buf| {
            let off = packet::udp_payload_offset(client.ip());
            let data = buf.get_mut(off + 4..off + 4 + blksize)?;
            read = read_full(host, token, offset, data);
            let n = *read.as_ref().ok()?;
            let header = Packet::Data { block, data: &[] };
            header.emit(buf.get_mut(off..off + 4)?)?;
            packet::udp_in_place(
                buf,
                macs,
                (server, PORT),
                (client.ip(), client.port()),
                4 + n,
            )
        });
        match read {
            Ok(n) => {
                self.last = n < blksize;
                true
            }
            Err(e) => {
                tracing::debug!(%e, %client, "TFTP read failed");
                let p = Packet::Error {
                    code: ErrorCode::Undefined as u16,
                    message: "read error",
                };
                send(out, macs, server, client, &p);
                false
            }
        }
    }
}

/// Reads until `buf` is full or the file ends (a bounded number of short
/// reads).
fn read_full<H: HostIo>(
    host: &mut H,
    token: Token,
    offset: u64,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut n = 0;
    for _ in 0..64 {
        if n == buf.len() {
            break;
        }
        match host.file_read_at(token, offset + n as u64, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bytes: &[u8], want: Packet) {
        assert_eq!(Packet::parse(bytes), Some(want), "parse {bytes:02x?}");
        let mut buf = [0u8; 600];
        let n = want.emit(&mut buf).expect("fits");
        assert_eq!(&buf[..n], bytes, "emit {want:?}");
    }

    #[test]
    fn rrq_with_options() {
        let b = b"\x00\x01boot/pxelinux.0\x00octet\x00blksize\x001428\x00tsize\x000\x00";
        let Some(Packet::Rrq(r)) = Packet::parse(b) else {
            panic!("not an RRQ");
        };
        assert_eq!((r.filename, r.mode), ("boot/pxelinux.0", "octet"));
        assert_eq!(r.options.blksize, Some(1428));
        assert_eq!(r.options.tsize, Some(0));
        assert_eq!(r.options.timeout, None);
        roundtrip(b, Packet::Rrq(r));
        roundtrip(
            b"\x00\x01f\x00octet\x00",
            Packet::Rrq(Request {
                filename: "f",
                mode: "octet",
                options: Options::default(),
            }),
        );
    }

    #[test]
    fn option_names_are_case_blind_and_unknown_ones_ignored() {
        let b = b"\x00\x01f\x00OCTET\x00BlkSize\x001024\x00multicast\x00\x00timeout\x00x\x00";
        let Some(Packet::Rrq(r)) = Packet::parse(b) else {
            panic!("not an RRQ");
        };
        assert_eq!(r.mode, "OCTET");
        assert_eq!(
            r.options,
            Options {
                blksize: Some(1024),
                ..Options::default()
            }
        );
    }

    #[test]
    fn wrq_data_ack_error_oack() {
        assert!(matches!(
            Packet::parse(b"\x00\x02up\x00octet\x00"),
            Some(Packet::Wrq(Request { filename: "up", .. }))
        ));
        roundtrip(
            b"\x00\x03\x00\x07abc",
            Packet::Data {
                block: 7,
                data: b"abc",
            },
        );
        roundtrip(
            b"\x00\x03\xff\xff",
            Packet::Data {
                block: 65535,
                data: b"",
            },
        );
        roundtrip(b"\x00\x04\x01\x02", Packet::Ack { block: 0x102 });
        roundtrip(
            b"\x00\x05\x00\x01file not found\x00",
            Packet::Error {
                code: 1,
                message: "file not found",
            },
        );
        roundtrip(
            b"\x00\x06blksize\x001468\x00tsize\x00300000\x00",
            Packet::Oack(Options {
                blksize: Some(1468),
                timeout: None,
                tsize: Some(300_000),
            }),
        );
        // An ERROR without its NUL still ends a transfer.
        assert_eq!(
            Packet::parse(b"\x00\x05\x00\x00oops"),
            Some(Packet::Error {
                code: 0,
                message: ""
            })
        );
    }

    #[test]
    fn malformed_packets() {
        for b in [
            &b""[..],
            b"\x00",
            b"\x00\x07x\x00",
            b"\x00\x01noterminator",
            b"\x00\x01f\x00octet",
            b"\x00\x01f\x00octet\x00blksize\x00",
            b"\x00\x01f\x00octet\x00blksize\x00512",
            b"\x00\x01\xff\xfe\x00octet\x00",
            b"\x00\x04\x01",
            b"\x00\x03",
        ] {
            assert_eq!(Packet::parse(b), None, "{b:02x?}");
        }
    }

    #[test]
    fn emit_fails_cleanly_when_short() {
        let mut buf = [0u8; 5];
        assert_eq!(Packet::Ack { block: 1 }.emit(&mut buf), Some(4));
        let e = Packet::Error {
            code: 0,
            message: "long message",
        };
        assert_eq!(e.emit(&mut buf), None);
    }

    #[test]
    fn names() {
        for ok in ["f", "dir/f", "a..b", "..x/y", "./f"] {
            assert!(name_allowed(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../etc/passwd",
            "a/../../b",
            "dir/",
            "..",
            "a/..",
        ] {
            assert!(!name_allowed(bad), "{bad}");
        }
        assert!(!name_allowed(&"a".repeat(MAX_FILENAME + 1)));
    }
}
