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
//! stream,server=off,addr.type=unix,addr.path=PATH`. One client at a time:
//! while one is up, later connections wait in the listen backlog (a QEMU
//! restarting quickly may connect before its old connection's end of stream
//! is read). When the client goes away the event loop resets the stack's
//! link and the server takes the next waiting client, if any.
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::event_loop::{ReadStatus, Transport};

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
            let frame = self.start + HEADER_LEN..self.start + HEADER_LEN + len;
            self.start = frame.end;
            return Some(&self.buf[frame]);
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
/// Token of the connected client.
const CLIENT: Token = Token(crate::DRIVER_TOKEN_BASE as usize + 1);

/// Output frames buffered for the guest before back-pressure.
const OUT_FRAMES: usize = 16;

/// A unix socket server for one QEMU `-netdev stream` client at a time.
#[derive(Debug)]
pub struct StreamServer {
    path: PathBuf,
    listener: UnixListener,
    client: Option<UnixStream>,
    decoder: Decoder,
    encoder: Encoder,
    max_frame: usize,
}

impl StreamServer {
    /// Listens on `path`, replacing a stale socket file there (any other
    /// kind of file is an error).
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
            client: None,
            decoder: Decoder::new(max_frame),
            encoder: Encoder::new(max_frame, OUT_FRAMES),
            max_frame,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames from the guest refused for their length (zero or too large).
    pub fn refused_frames(&self) -> u64 {
        self.decoder.oversized() + self.decoder.empty()
    }

    /// Forgets the client, then takes the next one waiting, if any.
    fn drop_client(&mut self, registry: &Registry) {
        if let Some(mut c) = self.client.take() {
            let _ = registry.deregister(&mut c);
            tracing::info!("{}: guest disconnected", self.path.display());
        }
        self.decoder = Decoder::new(self.max_frame);
        self.encoder.clear();
        if let Err(e) = self.accept(registry) {
            tracing::warn!("{}: accept: {e}", self.path.display());
        }
    }

    /// Accepts a client unless one is connected; later ones wait in the
    /// backlog until it leaves.
    fn accept(&mut self, registry: &Registry) -> io::Result<()> {
        while self.client.is_none() {
            let mut stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A connection that failed before we accepted it.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            };
            registry.register(&mut stream, CLIENT, Interest::READABLE | Interest::WRITABLE)?;
            self.client = Some(stream);
            tracing::info!("{}: guest connected", self.path.display());
        }
        Ok(())
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Transport for StreamServer {
    fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.listener, LISTENER, Interest::READABLE)
    }

    fn owns(&self, token: Token) -> bool {
        token == LISTENER || token == CLIENT
    }

    fn ready(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        if token == LISTENER {
            self.accept(registry)?;
        }
        Ok(())
    }

    fn is_up(&self) -> bool {
        self.client.is_some()
    }

    fn read_frames(
        &mut self,
        registry: &Registry,
        max: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> ReadStatus {
        let Some(client) = self.client.as_mut() else {
            return ReadStatus::Drained;
        };
        let mut n = 0;
        loop {
            while n < max {
                match self.decoder.next_frame() {
                    Some(frame) => {
                        f(frame);
                        n += 1;
                    }
                    None => break,
                }
            }
            if n >= max {
                return ReadStatus::More;
            }
            let buf = self.decoder.read_buf();
            if buf.is_empty() {
                // Cannot happen once next_frame is drained; never read 0.
                return ReadStatus::More;
            }
            match client.read(buf) {
                Ok(0) => break,
                Ok(len) => self.decoder.filled(len),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadStatus::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::info!("{}: client read failed: {e}", self.path.display());
                    break;
                }
            }
        }
        self.drop_client(registry);
        ReadStatus::Closed
    }

    fn out_slot(&mut self) -> Option<&mut [u8]> {
        self.client.as_ref()?;
        self.encoder.slot()
    }

    fn commit(&mut self, len: usize) -> &[u8] {
        self.encoder.commit(len)
    }

    fn flush(&mut self, registry: &Registry) -> io::Result<bool> {
        let Some(client) = self.client.as_mut() else {
            return Ok(true);
        };
        match self.encoder.write_to(client) {
            Ok(done) => Ok(done),
            Err(e) => {
                tracing::info!("{}: client write failed: {e}", self.path.display());
                self.drop_client(registry);
                Err(e)
            }
        }
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
}
