//! [`Sockets`]: the core's [`HostIo`] over real, non-blocking host sockets.
//!
//! # Theory of operation
//! Every socket the core asks for is created non-blocking and close-on-exec
//! (socket2), kept in a map under the core's [`Token`], and registered with a
//! [`Poller`] under the same token. `Sockets` does not own the poller: the
//! event loop here passes a [`MioPoller`], and a libslirp-compatible library
//! can pass one that collects descriptors for QEMU's own poll loop. The
//! poller reports readiness back to whoever drives the stack, which turns it
//! into [`usernet_core::HostEvent`]s.
//!
//! TCP data from the host is not read into a buffer of ours: the core peeks
//! it straight into the guest frame ([`HostIo::tcp_peek`]) and discards it
//! once the guest acknowledged it ([`HostIo::tcp_discard`]), so the socket's
//! receive queue is the retransmission buffer. Peeking at an offset uses
//! `SO_PEEK_OFF` (TCP since Linux 6.9): we track each socket's offset, set it
//! only when the core asks for a different one, and follow the kernel as it
//! moves the offset forward on each peek and back on each discard. Where the
//! kernel refuses `SO_PEEK_OFF` we peek `skip + len` bytes into a reusable
//! scratch buffer and copy the tail, as older passt and libslirp do.
//!
//! UDP and ICMP echo sockets are `std::net::UdpSocket`s: a ping socket is a
//! datagram socket too, and std's safe `send_to`/`recv` work on it.
//!
//! guestfwd connections are unix stream sockets kept as [`Sock::Tcp`]
//! (see [`crate::guestfwd`]); only discarding differs, because a unix
//! socket does not drop data on `recv(MSG_TRUNC)`: it is read into the
//! scratch buffer instead. TFTP files are kept apart from sockets (they are
//! never polled), see [`crate::files`].
//!
//! `unsafe` here is limited to four libc calls socket2 does not offer:
//! `recv` with flags into a plain byte slice, `recv(MSG_TRUNC)` to discard,
//! `setsockopt(SO_PEEK_OFF)` and `ioctl(TIOCOUTQ)`.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use usernet_core::Token;
use usernet_core::host::{GuestFwdTarget, HostIo, Proto};

use crate::DRIVER_TOKEN_BASE;
use crate::files::{self, RootFile};
use crate::guestfwd::{self, Callbacks, Children};

/// Backlog of port-forward listeners (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default). Host clients connect without
/// waiting for us, so a burst of connects can outrun the accepts; every SYN
/// a full queue drops costs its client a one-second retransmission (the
/// connect rate through a forward swung between 150 and 1,700/s with 128).
const LISTEN_BACKLOG: i32 = 4096;

/// Which readiness a socket is registered for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    /// Report readability (data, a connection, end of stream).
    pub readable: bool,
    /// Report writability (send space, a finished connect).
    pub writable: bool,
}

impl Interest {
    /// Readable only.
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    /// Readable and writable.
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };
}

/// Where [`Sockets`] registers its descriptors for readiness.
///
/// Readiness may be reported edge- or level-triggered (the core remembers
/// it). Tokens are the core's; values at or above [`DRIVER_TOKEN_BASE`] are
/// never used by the core and stay free for the driver's own descriptors.
pub trait Poller {
    /// Starts reporting readiness of `fd` under `token`.
    fn register(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()>;
    /// Stops reporting readiness of `fd`; called just before it is closed.
    fn deregister(&mut self, fd: RawFd);
}

/// A [`Poller`] over a mio registry (epoll, edge-triggered).
#[derive(Debug)]
pub struct MioPoller {
    registry: mio::Registry,
}

impl MioPoller {
    /// Registers with `registry` (usually `poll.registry().try_clone()`).
    pub fn new(registry: mio::Registry) -> Self {
        MioPoller { registry }
    }
}

impl Poller for MioPoller {
    fn register(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        if token.0 >= DRIVER_TOKEN_BASE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "token reserved for the driver",
            ));
        }
        let token = usize::try_from(token.0)
            .map(mio::Token)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "token too large"))?;
        let interest = match (interest.readable, interest.writable) {
            (_, false) => mio::Interest::READABLE,
            (false, true) => mio::Interest::WRITABLE,
            (true, true) => mio::Interest::READABLE | mio::Interest::WRITABLE,
        };
        self.registry
            .register(&mut mio::unix::SourceFd(&fd), token, interest)
    }

    fn deregister(&mut self, fd: RawFd) {
        let _ = self.registry.deregister(&mut mio::unix::SourceFd(&fd));
    }
}

/// One host socket.
#[derive(Debug)]
enum Sock {
    /// A TCP connection (or a guestfwd's unix stream socket, `unix`),
    /// with its tracked `SO_PEEK_OFF` (`None` until set).
    Tcp {
        sock: Socket,
        peek_off: Option<usize>,
        unix: bool,
    },
    /// A TCP listener for a port forward.
    Listener(Socket),
    /// A UDP socket (flow or port-forward listener) or an ICMP echo socket.
    Dgram(UdpSocket),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp { sock, .. } | Sock::Listener(sock) => sock.as_raw_fd(),
            Sock::Dgram(s) => s.as_raw_fd(),
        }
    }
}

/// The host sockets of one stack, implementing [`HostIo`].
#[derive(Debug)]
pub struct Sockets<P: Poller> {
    poller: P,
    socks: HashMap<Token, Sock>,
    /// Whether the kernel takes `SO_PEEK_OFF` on TCP sockets (assumed until
    /// refused once).
    peek_off: bool,
    /// Reusable buffer for peeking without `SO_PEEK_OFF`.
    scratch: Vec<u8>,
    /// Source addresses outbound TCP and UDP sockets bind to
    /// (slirp4netns's `--outbound-addr`/`--outbound-addr6`).
    outbound: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    /// Files the TFTP server reads, by token.
    files: HashMap<Token, RootFile>,
    /// guestfwd commands still running.
    children: Children,
    /// The other ends of callback guestfwd connections, for the driver.
    callbacks: Callbacks,
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such host socket")
}

fn wrong_kind() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "wrong kind of host socket")
}

/// `recv(2)` with `flags` (plus `MSG_DONTWAIT`) into `buf`.
fn recv_flags(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is valid, writable memory of `buf.len()` bytes for the
    // whole call, and the kernel writes at most that many bytes.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Drops `n` received bytes with `recv` (called with how many are left,
/// returning how many it dropped; 0 at the end of the stream), and lowers
/// the tracked peek offset by what went, as the kernel lowers its own.
fn discard_with(
    n: usize,
    peek_off: &mut Option<usize>,
    mut recv: impl FnMut(usize) -> io::Result<usize>,
) -> io::Result<()> {
    let mut left = n;
    let result = loop {
        if left == 0 {
            break Ok(());
        }
        match recv(left) {
            Ok(0) => {
                break Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "discarding more than was received",
                ));
            }
            Ok(k) => left -= k.min(left),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    *peek_off = peek_off.map(|o| o.saturating_sub(n - left));
    result
}

/// Drops up to `n` bytes from the head of a TCP socket's receive queue
/// without copying them.
fn recv_discard(fd: RawFd, n: usize) -> io::Result<usize> {
    // SAFETY: with MSG_TRUNC a TCP socket discards the data and never writes
    // to the buffer; were it to, the kernel would fail with EFAULT on the
    // unmapped null page rather than write to our memory.
    let r = unsafe {
        libc::recv(
            fd,
            std::ptr::null_mut(),
            n,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// `setsockopt(SOL_SOCKET, SO_PEEK_OFF, off)`.
fn set_peek_off(fd: RawFd, off: usize) -> io::Result<()> {
    let val = libc::c_int::try_from(off)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "peek offset too large"))?;
    // SAFETY: the option value points to a live c_int of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&raw const val).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes in a socket's send queue not yet acknowledged by the peer.
fn outq(fd: RawFd) -> io::Result<usize> {
    let mut val: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int to the pointer, which
    // points to a live local.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut val) };
    if r == 0 {
        Ok(usize::try_from(val).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The wildcard address of `dst`'s family, port 0.
fn wildcard(dst: SocketAddr) -> SocketAddr {
    match dst {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

impl<P: Poller> Sockets<P> {
    /// No sockets yet; descriptors will be registered with `poller`.
    pub fn new(poller: P) -> Self {
        Sockets {
            poller,
            socks: HashMap::new(),
            peek_off: true,
            scratch: Vec::new(),
            outbound: (None, None),
            files: HashMap::new(),
            children: Children::default(),
            callbacks: Callbacks::default(),
        }
    }

    /// Binds outbound TCP connections and UDP flows to `v4` / `v6` (port
    /// 0) instead of letting the kernel pick the source address.
    pub fn with_outbound(mut self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Self {
        self.outbound = (v4, v6);
        self
    }

    /// Takes the other ends of the callback guestfwd connections opened
    /// since the last call ([`GuestFwdTarget::Callback`]), with their
    /// callback's id, oldest first (see [`crate::guestfwd`]).
    pub fn take_callback_peers(&mut self) -> Vec<(u64, std::os::unix::net::UnixStream)> {
        self.callbacks.take()
    }

    /// The address an outbound socket to `dst` binds to, if any.
    fn outbound_for(&self, dst: SocketAddr) -> Option<SocketAddr> {
        match dst {
            SocketAddr::V4(_) => self.outbound.0.map(|a| (a, 0).into()),
            SocketAddr::V6(_) => self.outbound.1.map(|a| (a, 0).into()),
        }
    }

    /// The poller.
    pub fn poller(&mut self) -> &mut P {
        &mut self.poller
    }

    /// How many sockets are open.
    pub fn len(&self) -> usize {
        self.socks.len()
    }

    /// Whether no socket is open.
    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// The descriptor of the socket under `token`, for listings.
    pub fn fd(&self, token: Token) -> Option<RawFd> {
        self.socks.get(&token).map(Sock::fd)
    }

    /// Registers `sock` under `token` and keeps it.
    fn insert(&mut self, token: Token, sock: Sock, interest: Interest) -> io::Result<()> {
        if self.socks.contains_key(&token) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "token already in use",
            ));
        }
        self.poller.register(sock.fd(), token, interest)?;
        self.socks.insert(token, sock);
        Ok(())
    }

    fn tcp(&mut self, token: Token) -> io::Result<(&Socket, &mut Option<usize>)> {
        match self.socks.get_mut(&token) {
            Some(Sock::Tcp { sock, peek_off, .. }) => Ok((sock, peek_off)),
            Some(_) => Err(wrong_kind()),
            None => Err(not_found()),
        }
    }

    fn dgram(&self, token: Token) -> io::Result<&UdpSocket> {
        match self.socks.get(&token) {
            Some(Sock::Dgram(s)) => Ok(s),
            Some(_) => Err(wrong_kind()),
            None => Err(not_found()),
        }
    }

    /// Peeks without `SO_PEEK_OFF`: `skip + buf.len()` bytes into scratch.
    fn peek_copy(&mut self, fd: RawFd, skip: usize, buf: &mut [u8]) -> io::Result<usize> {
        let want = skip + buf.len();
        if self.scratch.len() < want {
            self.scratch.resize(want, 0);
        }
        let n = recv_flags(fd, &mut self.scratch[..want], libc::MSG_PEEK)?;
        if n == 0 {
            return Ok(0);
        }
        if n <= skip {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        buf[..n - skip].copy_from_slice(&self.scratch[skip..n]);
        Ok(n - skip)
    }
}

impl<P: Poller> Sockets<P> {
    /// [`HostIo::tcp_discard`] for unix sockets, which ignore
    /// `MSG_TRUNC`: reads the bytes into the scratch buffer.
    fn discard_by_reading(&mut self, token: Token, n: usize) -> io::Result<()> {
        let Some(Sock::Tcp { sock, peek_off, .. }) = self.socks.get_mut(&token) else {
            return Err(not_found());
        };
        let fd = sock.as_raw_fd();
        let chunk = n.clamp(1, 1 << 16);
        if self.scratch.len() < chunk {
            self.scratch.resize(chunk, 0);
        }
        let scratch = &mut self.scratch;
        discard_with(n, peek_off, |left| {
            let want = left.min(chunk);
            recv_flags(fd, &mut scratch[..want], 0)
        })
    }
}

impl<P: Poller> Drop for Sockets<P> {
    fn drop(&mut self) {
        for (_, sock) in self.socks.drain() {
            self.poller.deregister(sock.fd());
        }
        self.children.reap();
    }
}

impl<P: Poller> HostIo for Sockets<P> {
    fn tcp_connect(&mut self, token: Token, dst: SocketAddr) -> io::Result<()> {
        let sock = Socket::new(
            Domain::for_address(dst),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        if let Some(src) = self.outbound_for(dst) {
            sock.bind(&src.into())?;
        }
        match sock.connect(&dst.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        self.insert(
            token,
            Sock::Tcp {
                sock,
                peek_off: None,
                unix: false,
            },
            Interest::BOTH,
        )
    }

    fn tcp_send(&mut self, token: Token, data: &[u8]) -> io::Result<usize> {
        let (sock, _) = self.tcp(token)?;
        sock.send_with_flags(data, libc::MSG_NOSIGNAL)
    }

    fn tcp_peek(&mut self, token: Token, skip: usize, buf: &mut [u8]) -> io::Result<usize> {
        let use_peek_off = self.peek_off;
        let (sock, tracked) = self.tcp(token)?;
        let fd = sock.as_raw_fd();
        if use_peek_off {
            if *tracked != Some(skip) {
                match set_peek_off(fd, skip) {
                    Ok(()) => *tracked = Some(skip),
                    Err(e)
                        if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOPROTOOPT)) =>
                    {
                        tracing::debug!("SO_PEEK_OFF refused ({e}); peeking through a copy");
                        self.peek_off = false;
                        return self.peek_copy(fd, skip, buf);
                    }
                    Err(e) => return Err(e),
                }
            }
            let n = recv_flags(fd, buf, libc::MSG_PEEK)?;
            // The kernel moved the offset past what it returned.
            *tracked = Some(skip + n);
            Ok(n)
        } else {
            self.peek_copy(fd, skip, buf)
        }
    }

    fn tcp_discard(&mut self, token: Token, n: usize) -> io::Result<()> {
        if let Some(Sock::Tcp { unix: true, .. }) = self.socks.get(&token) {
            return self.discard_by_reading(token, n);
        }
        let (sock, tracked) = self.tcp(token)?;
        let fd = sock.as_raw_fd();
        discard_with(n, tracked, |left| recv_discard(fd, left))
    }

    fn tcp_send_space(&mut self, token: Token) -> usize {
        let Ok((sock, _)) = self.tcp(token) else {
            return 0;
        };
        let sndbuf = sock.send_buffer_size().unwrap_or(0);
        let queued = outq(sock.as_raw_fd()).unwrap_or(sndbuf);
        sndbuf.saturating_sub(queued)
    }

    fn tcp_shutdown_write(&mut self, token: Token) {
        if let Ok((sock, _)) = self.tcp(token) {
            let _ = sock.shutdown(std::net::Shutdown::Write);
        }
    }

    fn tcp_abort(&mut self, token: Token) {
        if let Ok((sock, _)) = self.tcp(token) {
            let _ = sock.set_linger(Some(Duration::ZERO));
        }
        self.close(token);
    }

    fn udp_open(&mut self, token: Token, dst: SocketAddr) -> io::Result<()> {
        let sock = Socket::new(
            Domain::for_address(dst),
            Type::DGRAM.nonblocking(),
            Some(Protocol::UDP),
        )?;
        let src = self.outbound_for(dst).unwrap_or_else(|| wildcard(dst));
        sock.bind(&src.into())?;
        self.insert(token, Sock::Dgram(sock.into()), Interest::BOTH)
    }

    fn udp_send_to(&mut self, token: Token, data: &[u8], dst: SocketAddr) -> io::Result<usize> {
        self.dgram(token)?.send_to(data, dst)
    }

    fn udp_recv_from(&mut self, token: Token, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.dgram(token)?.recv_from(buf)
    }

    fn icmp_open(&mut self, token: Token, dst: SocketAddr) -> io::Result<()> {
        let (domain, proto) = match dst.ip() {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
        };
        // EACCES/EPERM (net.ipv4.ping_group_range) go back to the core.
        let sock = Socket::new(domain, Type::DGRAM.nonblocking(), Some(proto))?;
        self.insert(token, Sock::Dgram(sock.into()), Interest::BOTH)
    }

    fn icmp_send_to(&mut self, token: Token, data: &[u8], dst: SocketAddr) -> io::Result<usize> {
        // Ping sockets take no port; the kernel fills in the echo id.
        self.dgram(token)?
            .send_to(data, SocketAddr::new(dst.ip(), 0))
    }

    fn icmp_recv(&mut self, token: Token, buf: &mut [u8]) -> io::Result<usize> {
        self.dgram(token)?.recv(buf)
    }

    fn listen(&mut self, token: Token, proto: Proto, addr: SocketAddr) -> io::Result<()> {
        let domain = Domain::for_address(addr);
        let sock = match proto {
            Proto::Tcp => Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?,
            Proto::Udp => Socket::new(domain, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?,
        };
        sock.set_reuse_address(true)?;
        sock.bind(&SockAddr::from(addr))?;
        let sock = match proto {
            Proto::Tcp => {
                sock.listen(LISTEN_BACKLOG)?;
                Sock::Listener(sock)
            }
            Proto::Udp => Sock::Dgram(sock.into()),
        };
        self.insert(token, sock, Interest::BOTH)
    }

    fn accept(&mut self, listener: Token, token: Token) -> io::Result<SocketAddr> {
        if self.socks.contains_key(&token) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "token already in use",
            ));
        }
        let (sock, peer) = match self.socks.get(&listener) {
            Some(Sock::Listener(l)) => l.accept()?,
            Some(_) => return Err(wrong_kind()),
            None => return Err(not_found()),
        };
        sock.set_nonblocking(true)?;
        let peer = peer.as_socket().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP address")
        })?;
        self.insert(
            token,
            Sock::Tcp {
                sock,
                peek_off: None,
                unix: false,
            },
            Interest::BOTH,
        )?;
        Ok(peer)
    }

    fn take_error(&mut self, token: Token) -> Option<io::Error> {
        let r = match self.socks.get(&token)? {
            Sock::Tcp { sock, .. } | Sock::Listener(sock) => sock.take_error(),
            Sock::Dgram(s) => s.take_error(),
        };
        r.unwrap_or_else(Some)
    }

    fn close(&mut self, token: Token) {
        if let Some(sock) = self.socks.remove(&token) {
            self.poller.deregister(sock.fd());
        }
        self.files.remove(&token);
    }

    fn tcp_connect_guestfwd(&mut self, token: Token, target: &GuestFwdTarget) -> io::Result<()> {
        if self.socks.contains_key(&token) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "token already in use",
            ));
        }
        let sock = match target {
            GuestFwdTarget::Cmd(cmd) => self.children.spawn(cmd)?,
            GuestFwdTarget::Unix(path) => guestfwd::connect_unix(path)?,
            GuestFwdTarget::Callback(id) => self.callbacks.connect(*id)?,
            _ => return Err(io::ErrorKind::Unsupported.into()),
        };
        self.insert(
            token,
            Sock::Tcp {
                sock,
                peek_off: None,
                unix: true,
            },
            Interest::BOTH,
        )
    }

    fn file_open(&mut self, token: Token, root: &Path, path: &str) -> io::Result<u64> {
        if self.files.contains_key(&token) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "token already in use",
            ));
        }
        let file = files::open_beneath(root, path)?;
        let size = file.size();
        self.files.insert(token, file);
        Ok(size)
    }

    fn file_read_at(&mut self, token: Token, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.files
            .get(&token)
            .ok_or_else(not_found)?
            .read_at(offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A poller that records registrations.
    #[derive(Default)]
    struct Recorder {
        registered: Vec<(RawFd, Token)>,
    }

    impl Poller for Recorder {
        fn register(&mut self, fd: RawFd, token: Token, _: Interest) -> io::Result<()> {
            self.registered.push((fd, token));
            Ok(())
        }
        fn deregister(&mut self, fd: RawFd) {
            self.registered.retain(|(f, _)| *f != fd);
        }
    }

    /// Retries `f` while it would block (the test's peer is another socket).
    fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> T {
        for _ in 0..2000 {
            match f() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                r => return r.expect("host call"),
            }
        }
        panic!("still blocking");
    }

    fn connected_pair(s: &mut Sockets<Recorder>, t: Token) -> TcpStream {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        s.tcp_connect(t, l.local_addr().expect("addr"))
            .expect("connect");
        let (peer, _) = l.accept().expect("accept");
        retry(|| match s.take_error(t) {
            Some(e) => Err(e),
            None if s.tcp_send_space(t) > 0 => Ok(()),
            None => Err(io::ErrorKind::WouldBlock.into()),
        });
        peer
    }

    fn peek_discard_round(s: &mut Sockets<Recorder>) {
        let t = Token(1);
        let mut peer = connected_pair(s, t);
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        peer.write_all(&data).expect("write");
        let mut buf = [0u8; 1000];
        // Peek at offsets that go forward, jump back, and forward again.
        let mut got = Vec::new();
        while got.len() < 1200 {
            let n = retry(|| s.tcp_peek(t, got.len(), &mut buf[..600]));
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got[..], data[..got.len()]);
        let n = retry(|| s.tcp_peek(t, 100, &mut buf[..10]));
        assert_eq!(buf[..n], data[100..100 + n]);
        // The guest acknowledged 500 bytes: offsets are now relative to 500.
        s.tcp_discard(t, 500).expect("discard");
        let n = retry(|| s.tcp_peek(t, 0, &mut buf[..10]));
        assert_eq!(buf[..n], data[500..500 + n]);
        let n = retry(|| s.tcp_peek(t, 700, &mut buf[..300]));
        assert_eq!(buf[..n], data[1200..1200 + n]);
        s.tcp_discard(t, 2500).expect("discard");
        assert_eq!(
            s.tcp_peek(t, 0, &mut buf).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
        // Guest to host, then end of stream both ways.
        assert_eq!(s.tcp_send(t, b"hello").expect("send"), 5);
        s.tcp_shutdown_write(t);
        let mut back = Vec::new();
        peer.read_to_end(&mut back).expect("read");
        assert_eq!(back, b"hello");
        drop(peer);
        assert_eq!(retry(|| s.tcp_peek(t, 0, &mut buf)), 0);
        s.close(t);
        assert!(s.is_empty());
        assert!(s.poller().registered.is_empty());
    }

    #[test]
    fn tcp_peek_with_peek_off() {
        let mut s = Sockets::new(Recorder::default());
        peek_discard_round(&mut s);
        assert!(s.peek_off, "this kernel takes SO_PEEK_OFF on TCP (6.9+)");
    }

    #[test]
    fn tcp_peek_through_copy() {
        let mut s = Sockets::new(Recorder::default());
        s.peek_off = false;
        peek_discard_round(&mut s);
    }

    #[test]
    fn guestfwd_command_is_a_stream_with_peek_and_discard() {
        let mut s = Sockets::new(Recorder::default());
        let t = Token(9);
        let target = GuestFwdTarget::Cmd("cat".into());
        s.tcp_connect_guestfwd(t, &target).expect("spawn cat");
        assert!(s.take_error(t).is_none());
        assert!(s.tcp_send_space(t) > 0);
        assert_eq!(retry(|| s.tcp_send(t, b"hello world")), 11);
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        while got.len() < 11 {
            let n = retry(|| s.tcp_peek(t, got.len(), &mut buf[..4]));
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"hello world");
        s.tcp_discard(t, 6).expect("discard");
        let n = retry(|| s.tcp_peek(t, 0, &mut buf));
        assert_eq!(&buf[..n], b"world");
        s.tcp_discard(t, 5).expect("discard");
        s.tcp_shutdown_write(t);
        assert_eq!(retry(|| s.tcp_peek(t, 0, &mut buf)), 0, "cat exits at EOF");
        s.close(t);
        assert!(s.is_empty());
    }

    #[test]
    fn files_are_tokens_too() {
        let dir = std::env::temp_dir().join(format!("usernet-sockfiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("f"), b"abcdef").expect("write");
        let mut s = Sockets::new(Recorder::default());
        assert_eq!(s.file_open(Token(3), &dir, "f").expect("open"), 6);
        assert!(s.file_open(Token(3), &dir, "f").is_err(), "token in use");
        let mut buf = [0u8; 4];
        assert_eq!(s.file_read_at(Token(3), 4, &mut buf).expect("read"), 2);
        assert_eq!(&buf[..2], b"ef");
        s.close(Token(3));
        assert!(s.file_read_at(Token(3), 0, &mut buf).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn udp_and_listeners() {
        let mut s = Sockets::new(Recorder::default());
        let echo = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dst = echo.local_addr().expect("addr");
        s.udp_open(Token(5), dst).expect("open");
        assert_eq!(s.udp_send_to(Token(5), b"ping", dst).expect("send"), 4);
        let mut buf = [0u8; 16];
        let (n, from) = echo.recv_from(&mut buf).expect("recv");
        echo.send_to(&buf[..n], from).expect("echo");
        let (n, src) = retry(|| s.udp_recv_from(Token(5), &mut buf));
        assert_eq!((&buf[..n], src), (&b"ping"[..], dst));

        s.listen(Token(6), Proto::Tcp, "127.0.0.1:0".parse().expect("a"))
            .expect("listen");
        let addr = match s.socks.get(&Token(6)) {
            Some(Sock::Listener(l)) => l.local_addr().expect("addr").as_socket().expect("ip"),
            _ => panic!("not a listener"),
        };
        let client = TcpStream::connect(addr).expect("connect");
        let peer = retry(|| s.accept(Token(6), Token(7)));
        assert_eq!(peer, client.local_addr().expect("addr"));
        assert_eq!(s.len(), 3);
        s.tcp_abort(Token(7));
        assert!(s.udp_send_to(Token(7), b"x", dst).is_err());
    }
}
