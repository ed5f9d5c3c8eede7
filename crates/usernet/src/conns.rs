//! One-request connections served from the event loop without ever
//! blocking it: the socket side shared by the API socket
//! ([`crate::control::ApiServer`]) and the metrics exporter
//! ([`crate::metrics_server::MetricsServer`]). A [`Server`] is a listener,
//! its [`Conns`] and a [`Handler`] that turns a complete request into a
//! reply; it is the event loop's [`Control`].
//!
//! # Theory of operation
//! Each accepted stream is non-blocking and registered for reading and
//! writing (edge-triggered). Its bytes are read into a buffer until the
//! caller's `complete` says the request is whole, the buffer reaches the
//! request bound, or the client shuts down its side; the caller then
//! hands in the whole reply, which is written as far as the socket takes
//! it and continued on each writable event, so a client that never reads
//! holds its reply in memory (bounded by the reply) but never the loop.
//! Once written, the stream is shut down and closed.
//!
//! Bounds: at most `max` connections; one more evicts the oldest (so a
//! client holding connections open cannot lock others out for longer than
//! it keeps opening new ones). A connection older than [`TIMEOUT`] is
//! closed at the next event of its server (the loop has no timers for
//! controls: a stale connection costs a slot and its buffers until then).
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Registry, Token};
use usernet_core::Stack;
use usernet_host::sockets::MioPoller;
use usernet_host::{Control, Flow, Sockets};

/// How long a connection may take from accept to the end of its reply.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A stream the loop can serve: mio's unix and TCP streams.
pub trait Stream: Read + Write + Source {
    /// Shuts both directions down.
    fn shutdown_both(&self);
}

impl Stream for mio::net::UnixStream {
    fn shutdown_both(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Stream for mio::net::TcpStream {
    fn shutdown_both(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

struct Conn<S> {
    stream: S,
    request: Vec<u8>,
    /// The reply and how much of it is written; `None` while reading.
    reply: Option<(Vec<u8>, usize)>,
    opened: Instant,
}

/// The open connections of one server.
pub struct Conns<S> {
    /// Connections use tokens `base + 1 ..= base + max`.
    base: Token,
    max: usize,
    max_request: usize,
    what: &'static str,
    conns: HashMap<Token, Conn<S>>,
}

impl<S: Stream> Conns<S> {
    /// No connections; tokens after `base`, at most `max` at once,
    /// requests of at most `max_request` bytes; `what` names the server in
    /// logs.
    pub fn new(base: Token, max: usize, max_request: usize, what: &'static str) -> Self {
        Conns {
            base,
            max,
            max_request,
            what,
            conns: HashMap::new(),
        }
    }

    /// Whether `token` is one of the connections' (or the base's).
    pub fn owns(&self, token: Token) -> bool {
        (self.base.0..=self.base.0 + self.max).contains(&token.0)
    }

    /// Takes on every stream `accept` has for us, until it would block.
    pub fn accept_all(&mut self, registry: &Registry, mut accept: impl FnMut() -> io::Result<S>) {
        let now = Instant::now();
        loop {
            match accept() {
                Ok(stream) => self.add(registry, stream, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // e.g. EMFILE: the listener stays, the next event retries.
                    tracing::warn!("{}: accept: {e}", self.what);
                    return;
                }
            }
        }
    }

    /// Takes on an accepted stream (evicting the oldest if full).
    pub fn add(&mut self, registry: &Registry, mut stream: S, now: Instant) {
        self.expire(registry, now);
        if self.conns.len() >= self.max
            && let Some(oldest) = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.opened)
                .map(|(t, _)| *t)
        {
            tracing::debug!(
                "{}: {} connections open; closing the oldest",
                self.what,
                self.max
            );
            self.close(registry, oldest);
        }
        let free = (1..=self.max)
            .map(|i| Token(self.base.0 + i))
            .find(|t| !self.conns.contains_key(t));
        let Some(token) = free else {
            return;
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = registry.register(&mut stream, token, interest) {
            tracing::warn!("{}: {e}", self.what);
            return;
        }
        let conn = Conn {
            stream,
            request: Vec::new(),
            reply: None,
            opened: now,
        };
        self.conns.insert(token, conn);
    }

    /// Handles readiness of `token`: returns its request once complete
    /// (per `complete`, the size bound, or the client's end of stream),
    /// for the caller to answer with [`Conns::reply`]; goes on writing a
    /// reply otherwise.
    pub fn ready(
        &mut self,
        registry: &Registry,
        token: Token,
        now: Instant,
        complete: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        self.expire(registry, now);
        let max_request = self.max_request;
        let conn = self.conns.get_mut(&token)?;
        if conn.reply.is_some() {
            self.write(registry, token);
            return None;
        }
        let mut eof = false;
        let mut chunk = [0u8; 1024];
        while conn.request.len() < max_request {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let room = max_request - conn.request.len();
                    conn.request.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("{}: read: {e}", self.what);
                    self.close(registry, token);
                    return None;
                }
            }
        }
        let whole = eof || conn.request.len() >= max_request || complete(&conn.request);
        whole.then(|| std::mem::take(&mut conn.request))
    }

    /// Sends `reply` on `token` (as far as the socket takes it now).
    pub fn reply(&mut self, registry: &Registry, token: Token, reply: Vec<u8>) {
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.reply = Some((reply, 0));
            self.write(registry, token);
        }
    }

    fn write(&mut self, registry: &Registry, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Some((reply, done)) = &mut conn.reply else {
            return;
        };
        while *done < reply.len() {
            match conn.stream.write(&reply[*done..]) {
                Ok(0) => break,
                Ok(n) => *done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("{}: write: {e}", self.what);
                    break;
                }
            }
        }
        self.close(registry, token);
    }

    fn close(&mut self, registry: &Registry, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = registry.deregister(&mut conn.stream);
            conn.stream.shutdown_both();
        }
    }

    /// Closes the connections older than [`TIMEOUT`].
    fn expire(&mut self, registry: &Registry, now: Instant) {
        let stale: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.opened) > TIMEOUT)
            .map(|(t, _)| *t)
            .collect();
        for token in stale {
            tracing::debug!("{}: connection timed out", self.what);
            self.close(registry, token);
        }
    }
}

/// A listening socket of streams: mio's unix and TCP listeners.
pub trait Listener: Source {
    /// What it accepts.
    type Stream: Stream;
    /// Accepts one stream.
    fn accept_stream(&self) -> io::Result<Self::Stream>;
}

impl Listener for UnixListener {
    type Stream = mio::net::UnixStream;
    fn accept_stream(&self) -> io::Result<Self::Stream> {
        self.accept().map(|(s, _)| s)
    }
}

impl Listener for TcpListener {
    type Stream = mio::net::TcpStream;
    fn accept_stream(&self) -> io::Result<Self::Stream> {
        self.accept().map(|(s, _)| s)
    }
}

/// What a [`Server`] does with its requests.
pub trait Handler {
    /// Whether the bytes read so far are a whole request (the size bound
    /// and the client's end of stream also end it).
    fn is_complete(&self, request: &[u8]) -> bool;
    /// The reply to a request.
    fn reply(
        &mut self,
        request: &[u8],
        stack: &mut Stack,
        sockets: &mut Sockets<MioPoller>,
    ) -> Vec<u8>;
}

/// A listener served in the event loop: see the module doc.
pub struct Server<L: Listener, H> {
    listener: L,
    token: Token,
    conns: Conns<L::Stream>,
    /// What answers the requests.
    handler: H,
}

impl<L: Listener, H: Handler> Server<L, H> {
    /// Serves `listener` with `handler`: the listener's token is `token`,
    /// its connections' the next `max`; requests of at most `max_request`
    /// bytes; `what` names it in logs.
    pub fn new(
        listener: L,
        (token, max, max_request): (Token, usize, usize),
        what: &'static str,
        handler: H,
    ) -> Self {
        Server {
            listener,
            token,
            conns: Conns::new(token, max, max_request, what),
            handler,
        }
    }
}

impl<L: Listener, H: Handler> Control for Server<L, H> {
    fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.listener, self.token, Interest::READABLE)
    }

    fn owns(&self, token: Token) -> bool {
        self.conns.owns(token)
    }

    fn ready(
        &mut self,
        registry: &Registry,
        token: Token,
        stack: &mut Stack,
        sockets: &mut Sockets<MioPoller>,
    ) -> Flow {
        if token == self.token {
            let listener = &self.listener;
            self.conns.accept_all(registry, || listener.accept_stream());
            return Flow::Continue;
        }
        let handler = &self.handler;
        let complete = |b: &[u8]| handler.is_complete(b);
        if let Some(request) = self.conns.ready(registry, token, Instant::now(), complete) {
            let reply = self.handler.reply(&request, stack, sockets);
            self.conns.reply(registry, token, reply);
        }
        Flow::Continue
    }
}
