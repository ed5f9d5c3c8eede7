//! The host side of guestfwd connections
//! ([`usernet_core::HostIo::tcp_connect_guestfwd`]).
//!
//! # Theory of operation
//! A guestfwd connection must look to the core like any TCP socket, so the
//! host side is always a non-blocking unix stream socket that [`Sockets`]
//! keeps like a TCP one (peek at an offset, discard, shut down):
//! - `cmd:CMD` spawns `/bin/sh -c CMD` per connection, as QEMU does, with
//!   one end of a `socketpair` as its stdin and stdout (blocking, as
//!   programs expect) and stderr inherited; usernet keeps the other end.
//!   When the guest closes, the command reads end of file; when the
//!   command exits, usernet reads end of stream and the guest sees FIN.
//! - `unix:PATH` connects to a listening unix stream socket per
//!   connection.
//! - a callback (libslirp's `slirp_add_guestfwd`, no command line form)
//!   is a `socketpair` per connection whose other end, non-blocking, waits
//!   in [`Callbacks`] for the driver that registered the callback to take
//!   it ([`Sockets::take_callback_peers`]) and pump between it and its
//!   callback. At most [`MAX_CALLBACK_PEERS`] wait, so a driver that never
//!   takes them (one without callbacks) holds a bounded number.
//!
//! Commands are reaped without blocking whenever one is spawned or the
//! sockets are dropped ([`Children`]); at most [`MAX_CHILDREN`] run at
//! once, so a guest cannot fork-bomb the host by opening connections. A
//! command that outlives its connection is left running, as QEMU leaves
//! it.
//!
//! [`Sockets`]: crate::Sockets
//! [`Sockets::take_callback_peers`]: crate::Sockets::take_callback_peers
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use socket2::{Domain, SockAddr, Socket, Type};

/// The most guestfwd commands running at once.
pub const MAX_CHILDREN: usize = 256;

/// The most callback ends waiting to be taken.
pub const MAX_CALLBACK_PEERS: usize = 256;

/// A new stream socket pair: usernet's end non-blocking, the other as made.
fn pair() -> io::Result<(Socket, Socket)> {
    let (ours, theirs) = Socket::pair(Domain::UNIX, Type::STREAM, None)?;
    ours.set_nonblocking(true)?;
    Ok((ours, theirs))
}

/// The other ends of callback connections, waiting for the driver: the
/// callback's id and the socket.
#[derive(Debug, Default)]
pub struct Callbacks(Vec<(u64, UnixStream)>);

impl Callbacks {
    /// A connection to callback `id`: returns usernet's end; the other,
    /// non-blocking, waits to be taken.
    pub fn connect(&mut self, id: u64) -> io::Result<Socket> {
        if self.0.len() >= MAX_CALLBACK_PEERS {
            return Err(io::Error::other("too many callback connections waiting"));
        }
        let (ours, theirs) = pair()?;
        theirs.set_nonblocking(true)?;
        self.0.push((id, UnixStream::from(OwnedFd::from(theirs))));
        Ok(ours)
    }

    /// Takes the ends waiting, oldest first.
    pub fn take(&mut self) -> Vec<(u64, UnixStream)> {
        std::mem::take(&mut self.0)
    }
}

/// The guestfwd commands still running.
#[derive(Debug, Default)]
pub struct Children(Vec<Child>);

impl Children {
    /// Forgets the commands that have exited (reaping them).
    pub fn reap(&mut self) {
        self.0.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }

    /// How many are still running (after [`Children::reap`]).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is running.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs `sh -c cmd` on a new socket pair; returns usernet's end,
    /// non-blocking.
    pub fn spawn(&mut self, cmd: &str) -> io::Result<Socket> {
        self.reap();
        if self.0.len() >= MAX_CHILDREN {
            return Err(io::Error::other("too many guestfwd commands running"));
        }
        let (ours, theirs) = pair()?;
        let theirs = OwnedFd::from(theirs);
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::from(theirs.try_clone()?))
            .stdout(Stdio::from(theirs))
            .spawn()?;
        self.0.push(child);
        Ok(ours)
    }
}

/// Connects to the unix stream socket at `path`, non-blocking.
pub fn connect_unix(path: &Path) -> io::Result<Socket> {
    let sock = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?;
    sock.connect(&SockAddr::unix(path)?)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::os::unix::net::UnixListener;
    use std::time::{Duration, Instant};

    /// Reads until end of stream, retrying while the socket would block
    /// (bounded in time).
    fn read_to_end(s: &Socket) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = s;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no end of stream: {out:?}");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    #[test]
    fn command_talks_over_stdin_and_stdout() {
        let mut kids = Children::default();
        let s = kids.spawn("tr a-z A-Z").expect("spawn");
        (&s).write_all(b"hello").expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        assert_eq!(read_to_end(&s), b"HELLO");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !kids.is_empty() {
            assert!(Instant::now() < deadline, "the command was not reaped");
            std::thread::sleep(Duration::from_millis(5));
            kids.reap();
        }
    }

    #[test]
    fn callback_pair_and_bound() {
        let mut cbs = Callbacks::default();
        let ours = cbs.connect(7).expect("pair");
        let taken = cbs.take();
        assert_eq!(taken.len(), 1);
        let (id, theirs) = &taken[0];
        assert_eq!(*id, 7);
        (&ours).write_all(b"to cb").expect("write");
        drop(ours);
        let mut got = Vec::new();
        let mut theirs = theirs;
        for _ in 0..1000 {
            match theirs.read_to_end(&mut got) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        assert_eq!(got, b"to cb");
        assert!(cbs.take().is_empty(), "taken once");
        let held: Vec<Socket> = (0..MAX_CALLBACK_PEERS)
            .map(|_| cbs.connect(1).expect("pair"))
            .collect();
        assert!(cbs.connect(1).is_err(), "more than the bound waiting");
        drop(held);
    }

    #[test]
    fn unix_target() {
        let dir = std::env::temp_dir().join(format!("usernet-gf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("s");
        let l = UnixListener::bind(&path).expect("bind");
        let s = connect_unix(&path).expect("connect");
        let (mut peer, _) = l.accept().expect("accept");
        peer.write_all(b"hi").expect("write");
        drop(peer);
        assert_eq!(read_to_end(&s), b"hi");
        let e = connect_unix(&dir.join("none")).expect_err("no listener");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
