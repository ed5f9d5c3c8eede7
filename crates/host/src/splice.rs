//! The splice path: TCP forwards between the host's loopback and a
//! namespace's loopback, carried socket to socket with `splice(2)`, never
//! through the tap or the stack (pasta's "spliced" connections).
//!
//! # Theory of operation
//! A [`SpliceFwd`] listens on one side and connects to the other:
//! - [`Side::Host`] (`--hostfwd tcp:127.0.0.1:P-127.0.0.1:Q` in `usernet ns`
//!   and `attach`): a listener on the host; each connection is joined to a
//!   new connection to the namespace's `127.0.0.1:Q`;
//! - [`Side::Namespace`] (`--tcp-ns P:Q`, pasta's `-T`): a listener on the
//!   namespace's `127.0.0.1:P`, joined to the host's `127.0.0.1:Q`.
//!
//! Namespace sockets come from [`NsSockets`], a helper process inside the
//! namespace, since a socket belongs to the namespace it was created in;
//! binding, listening, accepting and connecting then work from here, inside
//! the sandbox, which only has to allow `splice`, `pipe2` and `recvmsg`.
//!
//! Each joined pair has one pipe per direction (of the default size). On any readiness of either
//! socket (edge-triggered), [`Splicer`] pumps both directions: `splice` from
//! the source socket into the pipe while the pipe has room, and from the
//! pipe into the destination socket while it takes data, until neither
//! moves. The payload never enters user space: the kernel moves the pages
//! of the source's receive queue into the pipe and on into the destination's
//! send queue. A direction whose source ended (a `splice` of 0) shuts the
//! destination's write side once its pipe is empty (half-close is
//! forwarded); the pair closes when both directions are done, and resets
//! both (`SO_LINGER` 0) on an error or a refused connect, so either end
//! sees the other fail. A pump that moved `PUMP_BUDGET` (4 MiB) bytes stops and
//! re-arms its sockets (`EPOLL_CTL_MOD` reports a still-ready descriptor
//! again), so a fast pair cannot starve the tap or other pairs.
//!
//! Bounds: at most `max_conns` pairs; a connection beyond them is accepted
//! and reset at once. Each pair holds 2 sockets and 4 pipe descriptors.
//! Only IPv4 `127.0.0.1`-style addresses: pasta's splice path is loopback
//! only too. These forwards are not in the API's `list_hostfwd`.
#![allow(unsafe_code)]

use std::io;
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Socket, Type};
use usernet_core::Stack;

use crate::DRIVER_TOKEN_BASE;
use crate::event_loop::{Control, Flow};
use crate::netns::NsSockets;
use crate::sockets::{MioPoller, Sockets};

/// Listener tokens start here; pair tokens at [`CONN_BASE`], two per pair.
const LISTEN_BASE: usize = DRIVER_TOKEN_BASE as usize + 0x10_0000;
/// The most splice listeners.
pub const MAX_LISTENERS: usize = 0x100;
const CONN_BASE: usize = LISTEN_BASE + MAX_LISTENERS;
/// Bytes one pump of a pair moves before it yields to the rest of the loop.
const PUMP_BUDGET: usize = 4 << 20;
/// What a pipe is taken to hold: Linux's default (16 pages). A larger
/// pipe (`F_SETPIPE_SZ`) measured no faster; were it smaller, a full pipe
/// only makes the source's `splice` report "would block" early.
const PIPE_CAP: usize = 1 << 16;
/// Listen backlog, as for the stack's forwards.
const LISTEN_BACKLOG: i32 = 4096;

/// Which side of a splice forward listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The host listens; connections go to the namespace.
    Host,
    /// The namespace listens; connections go to the host.
    Namespace,
}

/// One splice forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpliceFwd {
    /// Where it listens.
    pub side: Side,
    /// The listening address (on `side`).
    pub listen: SocketAddrV4,
    /// The address connected to, on the other side.
    pub target: SocketAddrV4,
}

/// One direction of a pair: a pipe and how far it got.
#[derive(Debug)]
struct Half {
    r: OwnedFd,
    w: OwnedFd,
    /// Bytes in the pipe.
    queued: usize,
    /// The source ended.
    eof: bool,
    /// The destination's write side is shut (the direction is done).
    shut: bool,
}

/// Two joined connections: `a` accepted, `b` connected by us.
#[derive(Debug)]
struct Pair {
    a: Socket,
    b: Socket,
    target: SocketAddr,
    connected: bool,
    /// a → b and b → a.
    ab: Half,
    ba: Half,
}

/// The splice forwards of one namespace, driven as an event-loop
/// [`Control`].
#[derive(Debug)]
pub struct Splicer {
    ns: NsSockets,
    listeners: Vec<(Socket, SpliceFwd)>,
    pairs: Vec<Option<Pair>>,
    max_conns: usize,
}

fn nonblocking_v4() -> io::Result<Socket> {
    Socket::new(Domain::IPV4, Type::STREAM.nonblocking().cloexec(), None)
}

fn listen_on(sock: &Socket, addr: SocketAddrV4) -> io::Result<()> {
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::V4(addr).into())?;
    sock.listen(LISTEN_BACKLOG)
}

/// `splice(2)` of up to `len` bytes, never blocking. (No `SPLICE_F_MORE`:
/// on a TCP socket it corks like `MSG_MORE`, and a 1-byte round trip
/// waited for the cork's timer.)
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: splice takes two descriptors, null offsets (both are pipes or
    // sockets) and plain integers; it touches no memory of ours.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// A non-blocking, close-on-exec pipe for one direction.
fn pipe() -> io::Result<Half> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(Half {
        r,
        w,
        queued: 0,
        eof: false,
        shut: false,
    })
}

impl Half {
    /// Moves what it can from `src` to `dst`, at most `budget` bytes;
    /// returns the bytes moved into `dst`.
    fn pump(&mut self, src: &Socket, dst: &Socket, budget: usize) -> io::Result<usize> {
        let mut moved = 0;
        while !self.shut && moved < budget {
            let mut progress = false;
            if !self.eof && self.queued < PIPE_CAP {
                match splice(src.as_raw_fd(), self.w.as_raw_fd(), PIPE_CAP - self.queued) {
                    Ok(0) => (self.eof, progress) = (true, true),
                    Ok(n) => (self.queued, progress) = (self.queued + n, true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if self.queued > 0 {
                match splice(self.r.as_raw_fd(), dst.as_raw_fd(), self.queued) {
                    Ok(n) => {
                        self.queued -= n.min(self.queued);
                        moved += n;
                        progress |= n > 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if self.eof && self.queued == 0 {
                match dst.shutdown(Shutdown::Write) {
                    Err(e) if e.kind() != io::ErrorKind::NotConnected => return Err(e),
                    _ => self.shut = true,
                }
            }
            if !progress {
                break;
            }
        }
        Ok(moved)
    }
}

/// What a pump left the pair as.
enum Pumped {
    /// Waiting for readiness.
    Idle,
    /// The budget ran out; more may be ready.
    Busy,
    /// Both directions are done.
    Done,
}

impl Pair {
    /// Whether the connect of `b` finished (an error if it failed).
    fn check_connected(&mut self) -> io::Result<bool> {
        if self.connected {
            return Ok(true);
        }
        if let Some(e) = self.b.take_error()? {
            return Err(e);
        }
        match self.b.connect(&self.target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EISCONN) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EALREADY)
                    || e.raw_os_error() == Some(libc::EINPROGRESS) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        self.connected = true;
        Ok(true)
    }

    fn pump(&mut self) -> io::Result<Pumped> {
        if !self.check_connected()? {
            return Ok(Pumped::Idle);
        }
        let ab = self.ab.pump(&self.a, &self.b, PUMP_BUDGET)?;
        let ba = self.ba.pump(&self.b, &self.a, PUMP_BUDGET)?;
        Ok(if self.ab.shut && self.ba.shut {
            Pumped::Done
        } else if ab >= PUMP_BUDGET || ba >= PUMP_BUDGET {
            Pumped::Busy
        } else {
            Pumped::Idle
        })
    }
}

impl Splicer {
    /// Opens the listeners of `fwds` (namespace ones through `ns`); at most
    /// `max_conns` pairs at once.
    pub fn new(mut ns: NsSockets, fwds: &[SpliceFwd], max_conns: usize) -> io::Result<Splicer> {
        if fwds.len() > MAX_LISTENERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("at most {MAX_LISTENERS} splice forwards"),
            ));
        }
        let mut listeners = Vec::with_capacity(fwds.len());
        for f in fwds {
            let sock = match f.side {
                Side::Host => nonblocking_v4()?,
                Side::Namespace => Socket::from(ns.socket()?),
            };
            listen_on(&sock, f.listen).map_err(|e| {
                let side = if f.side == Side::Host {
                    "host"
                } else {
                    "namespace"
                };
                io::Error::new(e.kind(), format!("{side} {}: {e}", f.listen))
            })?;
            listeners.push((sock, *f));
        }
        Ok(Splicer {
            ns,
            listeners,
            pairs: Vec::new(),
            max_conns,
        })
    }

    /// Pairs open now.
    pub fn open_pairs(&self) -> usize {
        self.pairs.iter().filter(|p| p.is_some()).count()
    }

    fn accept(&mut self, registry: &Registry, i: usize) {
        loop {
            let Some((listener, fwd)) = self.listeners.get(i) else {
                return;
            };
            let fwd = *fwd;
            let a = match listener.accept() {
                Ok((a, _)) => a,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // e.g. EMFILE: the connection waits in the backlog.
                    tracing::warn!("splice {}: accept: {e}", fwd.listen);
                    return;
                }
            };
            if let Err(e) = self.join(registry, a, fwd) {
                tracing::debug!("splice {} -> {}: {e}", fwd.listen, fwd.target);
            }
        }
    }

    /// Joins accepted `a` to a new connection to `fwd`'s target.
    fn join(&mut self, registry: &Registry, a: Socket, fwd: SpliceFwd) -> io::Result<()> {
        let slot = match self.pairs.iter().position(Option::is_none) {
            Some(s) => s,
            None if self.pairs.len() < self.max_conns => {
                self.pairs.push(None);
                self.pairs.len() - 1
            }
            None => {
                reset(&a);
                return Err(io::Error::other("too many spliced connections; reset"));
            }
        };
        let pair = match self.connect(fwd).and_then(|b| {
            a.set_nonblocking(true)?;
            a.set_tcp_nodelay(true)?;
            Ok((b, pipe()?, pipe()?))
        }) {
            Ok((b, ab, ba)) => Pair {
                a,
                b,
                target: SocketAddr::V4(fwd.target),
                connected: false,
                ab,
                ba,
            },
            Err(e) => {
                reset(&a);
                return Err(e);
            }
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        let (ta, tb) = tokens(slot);
        registry.register(&mut SourceFd(&pair.a.as_raw_fd()), ta, both)?;
        registry.register(&mut SourceFd(&pair.b.as_raw_fd()), tb, both)?;
        self.pairs[slot] = Some(pair);
        Ok(())
    }

    /// A socket on the other side of `fwd`, connecting to its target.
    fn connect(&mut self, fwd: SpliceFwd) -> io::Result<Socket> {
        let b = match fwd.side {
            Side::Host => Socket::from(self.ns.socket()?),
            Side::Namespace => nonblocking_v4()?,
        };
        b.set_tcp_nodelay(true)?;
        match b.connect(&SocketAddr::V4(fwd.target).into()) {
            Ok(()) => Ok(b),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(b),
            Err(e) => Err(e),
        }
    }

    fn pump(&mut self, registry: &Registry, slot: usize) {
        let Some(Some(pair)) = self.pairs.get_mut(slot) else {
            return;
        };
        match pair.pump() {
            Ok(Pumped::Idle) => {}
            Ok(Pumped::Busy) => {
                // Re-arm: a ready descriptor is reported again.
                let both = Interest::READABLE | Interest::WRITABLE;
                let (ta, tb) = tokens(slot);
                let _ = registry.reregister(&mut SourceFd(&pair.a.as_raw_fd()), ta, both);
                let _ = registry.reregister(&mut SourceFd(&pair.b.as_raw_fd()), tb, both);
            }
            Ok(Pumped::Done) => self.close(registry, slot, false),
            Err(e) => {
                tracing::debug!("splice {}: {e}", pair.target);
                self.close(registry, slot, true);
            }
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize, failed: bool) {
        if let Some(pair) = self.pairs.get_mut(slot).and_then(Option::take) {
            let _ = registry.deregister(&mut SourceFd(&pair.a.as_raw_fd()));
            let _ = registry.deregister(&mut SourceFd(&pair.b.as_raw_fd()));
            if failed {
                reset(&pair.a);
                reset(&pair.b);
            }
        }
    }
}

/// Makes closing `s` send a reset.
fn reset(s: &Socket) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// The tokens of pair `slot`'s two sockets.
fn tokens(slot: usize) -> (Token, Token) {
    (Token(CONN_BASE + 2 * slot), Token(CONN_BASE + 2 * slot + 1))
}

impl Control for Splicer {
    fn register(&mut self, registry: &Registry) -> io::Result<()> {
        for (i, (l, _)) in self.listeners.iter().enumerate() {
            registry.register(
                &mut SourceFd(&l.as_raw_fd()),
                Token(LISTEN_BASE + i),
                Interest::READABLE,
            )?;
        }
        Ok(())
    }

    fn owns(&self, token: Token) -> bool {
        token.0 >= LISTEN_BASE && token.0 < CONN_BASE + 2 * self.max_conns
    }

    fn ready(
        &mut self,
        registry: &Registry,
        token: Token,
        _stack: &mut Stack,
        _sockets: &mut Sockets<MioPoller>,
    ) -> Flow {
        if token.0 < CONN_BASE {
            self.accept(registry, token.0 - LISTEN_BASE);
        } else {
            self.pump(registry, (token.0 - CONN_BASE) / 2);
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    /// A connected loopback pair: (our client end, the accepted end).
    fn tcp_pair() -> (TcpStream, Socket) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        s.set_nonblocking(true).expect("nonblocking");
        (c, Socket::from(s))
    }

    /// One direction carries more than a pipe's worth, byte for byte, and
    /// forwards the source's end as a half-close of the destination.
    #[test]
    fn half_moves_every_byte_then_the_half_close() {
        let (mut client, src) = tcp_pair();
        let (mut sink, dst) = tcp_pair();
        let data: Vec<u8> = (0..4 * PIPE_CAP + 123).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            client.write_all(&sent).expect("write");
            client.shutdown(Shutdown::Write).expect("shutdown");
            client
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            sink.read_to_end(&mut got).expect("read");
            got
        });
        let mut half = pipe().expect("pipe");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !half.shut {
            assert!(
                Instant::now() < deadline,
                "stuck with {} queued",
                half.queued
            );
            half.pump(&src, &dst, PUMP_BUDGET).expect("pump");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(writer.join().expect("writer"));
        assert_eq!(reader.join().expect("reader"), data);
        assert_eq!(half.queued, 0);
    }

    /// A pump stops after its budget even while the source has more.
    #[test]
    fn half_stops_at_its_budget() {
        let (mut client, src) = tcp_pair();
        let (_sink, dst) = tcp_pair();
        client.write_all(&[7; 3 * PIPE_CAP]).expect("write");
        let mut half = pipe().expect("pipe");
        let moved = half.pump(&src, &dst, PIPE_CAP).expect("pump");
        // At most one pipe's worth past the budget (without it: all 3).
        assert!(moved > 0 && moved < 2 * PIPE_CAP, "{moved}");
        assert!(!half.eof && !half.shut);
    }
}
