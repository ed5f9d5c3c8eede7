//! The boundary between the core and host sockets.
//!
//! The core names every host socket it asks for with a [`Token`] of its own
//! choosing; the driver's [`HostIo`] implementation owns the descriptors and
//! reports readiness back as [`HostEvent`]s carrying the same token. Every
//! call is non-blocking: "would block" is `Err(ErrorKind::WouldBlock)`, a
//! value, never a wait. Tests implement this trait with in-memory fakes.
//!
//! Besides sockets, two services reach the host through here: a guestfwd
//! connection ([`HostIo::tcp_connect_guestfwd`]) is a TCP flow whose host
//! side is a command's stdin/stdout or a unix socket instead of a TCP
//! connect, and the TFTP server reads files ([`HostIo::file_open`],
//! [`HostIo::file_read_at`]) below its root, where the implementation, not
//! the core, enforces that no path escapes the root. Both have default
//! implementations that refuse, so a driver without them still builds.
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The core's name for one host socket (a flow's socket or a listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// Readiness of a host socket, as the driver's poller saw it.
///
/// Readiness is edge-like: the core remembers it and clears it itself when a
/// call returns `WouldBlock`, so drivers may report with edge- or
/// level-triggered polling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostEvent {
    /// Which socket.
    pub token: Token,
    /// Data (or a connection, for a listener) can be read.
    pub readable: bool,
    /// The socket can take more data, or a pending connect finished.
    pub writable: bool,
    /// The socket reported an error or hang-up; the core asks
    /// [`HostIo::take_error`] for details.
    pub error: bool,
}

/// Transport protocol of a host socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP (stream).
    Tcp,
    /// UDP (datagram).
    Udp,
}

/// Where a guestfwd connection goes on the host.
///
/// The core treats every kind alike: after
/// [`HostIo::tcp_connect_guestfwd`] the token is a stream like any TCP
/// socket (`tcp_send`, `tcp_peek`, ...). Each kind is interpreted only by
/// the drivers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GuestFwdTarget {
    /// A command run by `sh -c` per connection, the connection on its
    /// stdin and stdout.
    Cmd(String),
    /// A unix stream socket to connect to per connection.
    Unix(PathBuf),
    /// The driver's own endpoint number `id` (libslirp's
    /// `slirp_add_guestfwd`, whose data goes to an embedder's callback):
    /// the driver hands the other end of each connection to whoever
    /// registered `id`.
    Callback(u64),
}

impl fmt::Display for GuestFwdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestFwdTarget::Cmd(c) => write!(f, "cmd:{c}"),
            GuestFwdTarget::Unix(p) => write!(f, "unix:{}", p.display()),
            GuestFwdTarget::Callback(id) => write!(f, "callback:{id}"),
        }
    }
}

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "not supported by this host")
}

/// Non-blocking host socket operations the core needs.
///
/// Sockets are created by `*_open`/`*_connect`/`listen`/`accept` under the
/// token the core supplies and live until [`HostIo::close`].
pub trait HostIo {
    /// Starts a non-blocking TCP connect to `dst`; completion is reported as
    /// a writable event, failure as an error event.
    fn tcp_connect(&mut self, token: Token, dst: SocketAddr) -> io::Result<()>;
    /// Sends stream data; returns how much the socket accepted.
    fn tcp_send(&mut self, token: Token, data: &[u8]) -> io::Result<usize>;
    /// Copies received but unacknowledged data starting `skip` bytes into the
    /// receive queue, without consuming it; `Ok(0)` means end of stream.
    fn tcp_peek(&mut self, token: Token, skip: usize, buf: &mut [u8]) -> io::Result<usize>;
    /// Consumes `n` bytes from the head of the receive queue (the guest
    /// acknowledged them).
    fn tcp_discard(&mut self, token: Token, n: usize) -> io::Result<()>;
    /// Free space in the socket's send buffer, for the window the guest sees.
    fn tcp_send_space(&mut self, token: Token) -> usize;
    /// Shuts down the sending direction (the guest sent FIN).
    fn tcp_shutdown_write(&mut self, token: Token);
    /// Closes with a reset (the guest sent RST).
    fn tcp_abort(&mut self, token: Token);
    /// Opens a UDP socket for a flow to `dst` (bound to the wildcard of its
    /// family).
    fn udp_open(&mut self, token: Token, dst: SocketAddr) -> io::Result<()>;
    /// Sends one datagram to `dst`.
    fn udp_send_to(&mut self, token: Token, data: &[u8], dst: SocketAddr) -> io::Result<usize>;
    /// Receives one datagram.
    fn udp_recv_from(&mut self, token: Token, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    /// Opens an unprivileged ICMP echo ("ping") datagram socket.
    fn icmp_open(&mut self, token: Token, dst: SocketAddr) -> io::Result<()>;
    /// Sends an ICMP echo request (header + payload; the kernel sets the id).
    fn icmp_send_to(&mut self, token: Token, data: &[u8], dst: SocketAddr) -> io::Result<usize>;
    /// Receives an ICMP message (the echo reply, header included).
    fn icmp_recv(&mut self, token: Token, buf: &mut [u8]) -> io::Result<usize>;
    /// Listens on `addr` for a port forward.
    fn listen(&mut self, token: Token, proto: Proto, addr: SocketAddr) -> io::Result<()>;
    /// Accepts one pending connection from TCP listener `listener` as `token`.
    fn accept(&mut self, listener: Token, token: Token) -> io::Result<SocketAddr>;
    /// Takes the socket's pending error (`SO_ERROR`), if any.
    fn take_error(&mut self, token: Token) -> Option<io::Error>;
    /// Closes the socket (or file) and forgets the token.
    fn close(&mut self, token: Token);
    /// Opens the host side of a guestfwd connection under `token`: spawns
    /// the command or connects the socket. Completion is reported as for
    /// [`HostIo::tcp_connect`] (a writable event), and the token is then
    /// used with the `tcp_*` calls.
    fn tcp_connect_guestfwd(&mut self, token: Token, target: &GuestFwdTarget) -> io::Result<()> {
        let _ = (token, target);
        Err(unsupported())
    }
    /// Opens the regular file `path` (relative, `/`-separated) below the
    /// directory `root` for reading under `token`; returns its size. Must
    /// refuse, with an error, any path that resolves outside `root` (`..`,
    /// absolute symlinks, symlinks leading out).
    fn file_open(&mut self, token: Token, root: &Path, path: &str) -> io::Result<u64> {
        let _ = (token, root, path);
        Err(unsupported())
    }
    /// Reads from the file `token` at `offset`; `Ok(0)` is its end. May
    /// read less than `buf` holds.
    fn file_read_at(&mut self, token: Token, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let _ = (token, offset, buf);
        Err(unsupported())
    }
}
