//! Guest forwards to a callback (`slirp_add_guestfwd`, QEMU's
//! `guestfwd=tcp:ADDR:PORT-chardev:ID`).
//!
//! # Theory of operation
//! In libslirp such a forward has no host socket: the guest's bytes go to
//! the embedder's `write_cb`, and the embedder pushes bytes toward the
//! guest with `slirp_socket_recv` after asking `slirp_socket_can_recv` how
//! many it may. The core only knows streams, so each guest connection is
//! a [`GuestFwdTarget::Callback`] flow whose host side is one end of a
//! socket pair (see `usernet_host::guestfwd`); [`CallbackFwds`] takes the
//! other end after every turn ([`CallbackFwds::adopt`]) and registers it,
//! edge-triggered, in the instance's epoll under a driver token
//! ([`TOKEN_BASE`] and up), so its readiness arrives with the core's:
//! - readable: read (at most [`READS_PER_TURN`] reads, then again next
//!   turn) and hand each chunk to `write_cb`, whose result libslirp
//!   ignores too (QEMU's writes all of it, blocking);
//! - writable: flush the bytes `slirp_socket_recv` gave that the socket
//!   did not take at once. They wait in a buffer of at most [`OUT_CAP`]
//!   bytes, and `slirp_socket_can_recv` is the room left in it, so the
//!   embedder never gives more than can be kept;
//! - hang-up (the core closed its end: the flow is over): read what is
//!   left, then forget the connection.
//!
//! As in libslirp, `slirp_socket_can_recv` and `slirp_socket_recv` name the
//! forward by its guest address and port and reach its newest live
//! connection; with none, there is no room and the bytes are dropped. More
//! bytes than `slirp_socket_can_recv` allowed close the connection (the
//! guest sees end of stream), as libslirp does. Removing a forward closes
//! its connections, since the embedder may free the callback's `opaque`.
use std::ffi::c_void;
use std::io::{self, Read as _};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use mio::Registry;
use mio::event::Event;
use mio::unix::SourceFd;
use usernet_host::DRIVER_TOKEN_BASE;

/// The embedder's `write_cb`.
pub type WriteCb =
    unsafe extern "C" fn(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize;

/// The first epoll token of a callback connection (the core's tokens are
/// below [`DRIVER_TOKEN_BASE`]).
pub const TOKEN_BASE: usize = DRIVER_TOKEN_BASE as usize;
/// Most bytes kept per connection that the socket did not take at once.
pub const OUT_CAP: usize = 64 * 1024;
/// Most reads from one connection in one turn.
pub const READS_PER_TURN: usize = 16;
/// Size of one read.
const CHUNK: usize = 16 * 1024;

/// One forward: where the guest connects, and the embedder's callback.
struct Fwd {
    id: u64,
    addr: Ipv4Addr,
    port: u16,
    write_cb: WriteCb,
    opaque: *mut c_void,
}

/// One guest connection of a forward.
struct Conn {
    fwd: u64,
    token: usize,
    sock: UnixStream,
    /// Bytes for the guest the socket has not taken yet.
    out: Vec<u8>,
    /// The guest's direction ended (end of stream read).
    read_eof: bool,
    /// The core closed its end; no more bytes go toward the guest.
    closed: bool,
    /// A read stopped at [`READS_PER_TURN`]; read again next turn.
    more: bool,
}

/// The callback forwards of one instance and their connections.
pub struct CallbackFwds {
    /// The instance's epoll, where connections are registered.
    registry: Registry,
    fwds: Vec<Fwd>,
    /// Oldest first.
    conns: Vec<Conn>,
    next_id: u64,
    next_token: usize,
    buf: Vec<u8>,
}

impl CallbackFwds {
    /// No forwards; connections will be registered with `registry`.
    pub fn new(registry: Registry) -> CallbackFwds {
        CallbackFwds {
            registry,
            fwds: Vec::new(),
            conns: Vec::new(),
            next_id: 0,
            next_token: 0,
            buf: Vec::new(),
        }
    }

    /// A new forward's id, to give the core as
    /// [`usernet_core::host::GuestFwdTarget::Callback`].
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Records forward `id` (the core accepted it) at `addr:port`.
    pub fn add(
        &mut self,
        id: u64,
        addr: Ipv4Addr,
        port: u16,
        write_cb: WriteCb,
        opaque: *mut c_void,
    ) {
        self.fwds.push(Fwd {
            id,
            addr,
            port,
            write_cb,
            opaque,
        });
    }

    /// Forgets the forward at `addr:port` and closes its connections.
    pub fn remove(&mut self, addr: Ipv4Addr, port: u16) {
        let Some(i) = self
            .fwds
            .iter()
            .position(|f| f.addr == addr && f.port == port)
        else {
            return;
        };
        let id = self.fwds.remove(i).id;
        let registry = &self.registry;
        self.conns.retain(|c| {
            if c.fwd == id {
                deregister(registry, &c.sock);
            }
            c.fwd != id
        });
    }

    /// Takes the host ends the core opened this turn (`peers`, with their
    /// forward's id). An end whose forward is gone is closed: the guest
    /// sees end of stream.
    pub fn adopt(&mut self, peers: Vec<(u64, UnixStream)>) {
        for (fwd, sock) in peers {
            if !self.fwds.iter().any(|f| f.id == fwd) {
                continue;
            }
            let token = TOKEN_BASE | (self.next_token & (TOKEN_BASE - 1));
            self.next_token = self.next_token.wrapping_add(1);
            let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
            if self
                .registry
                .register(
                    &mut SourceFd(&sock.as_raw_fd()),
                    mio::Token(token),
                    interest,
                )
                .is_err()
            {
                continue;
            }
            self.conns.push(Conn {
                fwd,
                token,
                sock,
                out: Vec::new(),
                read_eof: false,
                closed: false,
                more: false,
            });
        }
    }

    /// Whether `token` is a callback connection's.
    pub fn owns(token: mio::Token) -> bool {
        token.0 >= TOKEN_BASE
    }

    /// Readiness of the connection under `ev`'s token.
    pub fn ready(&mut self, ev: &Event) {
        let Some(i) = self.conns.iter().position(|c| c.token == ev.token().0) else {
            return;
        };
        if ev.is_write_closed() || ev.is_error() {
            self.conns[i].closed = true;
        }
        if ev.is_writable() {
            self.conns[i].flush();
        }
        if ev.is_readable() || ev.is_read_closed() || self.conns[i].closed {
            self.read(i);
        }
        self.reap();
    }

    /// Whether a connection has more to read (the embedder should not
    /// wait).
    pub fn pending(&self) -> bool {
        self.conns.iter().any(|c| c.more)
    }

    /// Reads the connections a bound stopped last turn.
    pub fn service(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].more {
                self.read(i);
            }
        }
        self.reap();
    }

    /// `slirp_socket_can_recv`: the room in the newest live connection at
    /// `addr:port`; 0 without one.
    pub fn can_recv(&self, addr: Ipv4Addr, port: u16) -> usize {
        self.newest(addr, port)
            .and_then(|i| self.conns.get(i))
            .map_or(0, |c| OUT_CAP.saturating_sub(c.out.len()))
    }

    /// `slirp_socket_recv`: `data` toward the guest of the newest live
    /// connection at `addr:port`. Dropped without one; more than
    /// [`CallbackFwds::can_recv`] allowed closes the connection and is an
    /// error.
    pub fn recv(&mut self, addr: Ipv4Addr, port: u16, data: &[u8]) -> Result<(), TooMuch> {
        let Some(i) = self.newest(addr, port) else {
            return Ok(());
        };
        let room = OUT_CAP.saturating_sub(self.conns[i].out.len());
        if data.len() > room {
            let c = self.conns.remove(i);
            deregister(&self.registry, &c.sock);
            return Err(TooMuch {
                given: data.len(),
                room,
            });
        }
        let c = &mut self.conns[i];
        c.out.extend_from_slice(data);
        c.flush();
        Ok(())
    }

    /// The index of the newest connection of the forward at `addr:port`
    /// that can still take bytes.
    fn newest(&self, addr: Ipv4Addr, port: u16) -> Option<usize> {
        let fwd = self
            .fwds
            .iter()
            .find(|f| f.addr == addr && f.port == port)?
            .id;
        self.conns.iter().rposition(|c| c.fwd == fwd && !c.closed)
    }

    /// Reads connection `i` into its forward's callback, at most
    /// [`READS_PER_TURN`] times.
    fn read(&mut self, i: usize) {
        let CallbackFwds {
            fwds, conns, buf, ..
        } = self;
        let Some(c) = conns.get_mut(i) else {
            return;
        };
        let Some(fwd) = fwds.iter().find(|f| f.id == c.fwd) else {
            return;
        };
        buf.resize(CHUNK, 0);
        c.more = false;
        if c.read_eof {
            return;
        }
        for n in 0..=READS_PER_TURN {
            if n == READS_PER_TURN {
                c.more = true;
                return;
            }
            match (&c.sock).read(buf) {
                Ok(0) => {
                    c.read_eof = true;
                    return;
                }
                Ok(len) => {
                    // SAFETY: the embedder's callback, valid with its
                    // `opaque` until the forward is removed (which drops
                    // this connection first), reading `len` live bytes.
                    unsafe { (fwd.write_cb)(buf.as_ptr().cast(), len, fwd.opaque) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    c.read_eof = true;
                    c.closed = true;
                    return;
                }
            }
        }
    }

    /// Forgets the connections over in both directions.
    fn reap(&mut self) {
        let registry = &self.registry;
        self.conns.retain(|c| {
            let over = c.closed && c.read_eof;
            if over {
                deregister(registry, &c.sock);
            }
            !over
        });
    }
}

impl Conn {
    /// Writes what waits for the guest, as far as the socket takes it.
    fn flush(&mut self) {
        // Each pass writes, fails or stops; a signal may interrupt a few.
        for _ in 0..16 {
            if self.out.is_empty() || self.closed {
                break;
            }
            match send(&self.sock, &self.out) {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    self.out.drain(..n.min(self.out.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.closed = true,
            }
        }
        if self.closed {
            self.out.clear();
        }
    }
}

/// `slirp_socket_recv` was given more than `slirp_socket_can_recv` allowed.
#[derive(Debug, thiserror::Error)]
#[error("{given} bytes for a guest forward with room for {room}; connection closed")]
pub struct TooMuch {
    /// Bytes given.
    pub given: usize,
    /// Room there was.
    pub room: usize,
}

/// `send(2)` without `SIGPIPE` when the core closed its end (not every
/// embedder ignores the signal), and without blocking.
fn send(sock: &UnixStream, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is live, readable memory of `data.len()` bytes for
    // the whole call.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Stops polling `sock` (just before it is closed).
fn deregister(registry: &Registry, sock: &UnixStream) {
    let _ = registry.deregister(&mut SourceFd(&sock.as_raw_fd()));
}
