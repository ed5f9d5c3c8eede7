//! The event loop's [`Control`]s: the API socket, slirp4netns's
//! `--exit-fd` and `--ready-fd`, the watcher of `usernet ns`'s command,
//! and [`Lockdown`], which enters the sandbox once set-up is done.
//!
//! The API socket is a non-blocking unix listener. Each accepted
//! connection (at most [`MAX_CONNS`] at once; more are closed at once) is
//! read until its bytes form a complete request ([`api::is_complete`]) or
//! the client shuts down its side; the reply is then written (blocking,
//! bounded by a one-second timeout: replies are a few hundred bytes) and
//! the connection shut down and closed, as slirp4netns does. A request
//! never ends the process, whatever it holds.
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use usernet_core::Stack;
use usernet_core::config::HostFwd;
use usernet_host::sandbox::Sandbox;
use usernet_host::sockets::MioPoller;
use usernet_host::{Control, DRIVER_TOKEN_BASE, Flow, Sockets};

use crate::api::{self, Api, Forwarder};

const BASE: usize = DRIVER_TOKEN_BASE as usize;
/// The API listener's token; connections use the next [`MAX_CONNS`].
const API_LISTENER: Token = Token(BASE + 0x100);
/// The most API connections open at once.
pub const MAX_CONNS: usize = 16;
const EXIT_FD: Token = Token(BASE + 0x80);
const CHILD: Token = Token(BASE + 0x81);

/// The stack as the API's [`Forwarder`].
struct StackForwarder<'a> {
    stack: &'a mut Stack,
    sockets: &'a mut Sockets<MioPoller>,
}

impl Forwarder for StackForwarder<'_> {
    fn add(&mut self, fwd: HostFwd) -> Result<usize, String> {
        self.stack
            .add_hostfwd(fwd, self.sockets)
            .map_err(|e| match std::error::Error::source(&e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            })
    }
    fn remove(&mut self, id: usize) -> bool {
        self.stack.remove_hostfwd(id, self.sockets)
    }
}

/// One API connection and the request bytes read so far.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// The slirp4netns-compatible API socket.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    conns: HashMap<Token, Conn>,
    api: Api,
}

impl ApiServer {
    /// Listens on `path` (replacing a stale socket file, as slirp4netns
    /// does); forwards without `guest_addr` go to `default_guest`.
    pub fn bind(path: &Path, default_guest: std::net::Ipv4Addr) -> io::Result<ApiServer> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        Ok(ApiServer {
            listener,
            path: path.to_owned(),
            conns: HashMap::new(),
            api: Api::new(default_guest),
        })
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("api: accept: {e}");
                    return;
                }
            };
            let free = (1..=MAX_CONNS)
                .map(|i| Token(API_LISTENER.0 + i))
                .find(|t| !self.conns.contains_key(t));
            let Some(token) = free else {
                tracing::warn!("api: {MAX_CONNS} connections open; one refused");
                continue;
            };
            if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
                tracing::warn!("api: {e}");
                continue;
            }
            self.conns.insert(
                token,
                Conn {
                    stream,
                    buf: Vec::new(),
                },
            );
        }
    }

    /// Reads what `token`'s client sent; answers once the request is
    /// complete.
    fn serve(&mut self, registry: &Registry, token: Token, fw: &mut dyn Forwarder) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let mut eof = false;
        let mut chunk = [0u8; 1024];
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let room = api::MAX_REQUEST - conn.buf.len().min(api::MAX_REQUEST);
                    conn.buf.extend_from_slice(&chunk[..n.min(room)]);
                    if conn.buf.len() >= api::MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("api: read: {e}");
                    eof = true;
                    break;
                }
            }
        }
        if !eof && !api::is_complete(&conn.buf) {
            return;
        }
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = registry.deregister(&mut conn.stream);
        tracing::debug!("api: request {}", String::from_utf8_lossy(&conn.buf));
        let reply = self.api.handle(&conn.buf, fw);
        // A short reply to a client waiting for it: write it blocking, with
        // a bound, rather than keep per-connection output state.
        let std_stream = std::os::unix::net::UnixStream::from(OwnedFd::from(conn.stream));
        let _ = std_stream.set_nonblocking(false);
        let _ = std_stream.set_write_timeout(Some(Duration::from_secs(1)));
        if let Err(e) = (&std_stream).write_all(&reply) {
            tracing::debug!("api: write: {e}");
        }
        let _ = std_stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Control for ApiServer {
    fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.listener, API_LISTENER, Interest::READABLE)
    }

    fn owns(&self, token: Token) -> bool {
        (API_LISTENER.0..=API_LISTENER.0 + MAX_CONNS).contains(&token.0)
    }

    fn ready(
        &mut self,
        registry: &Registry,
        token: Token,
        stack: &mut Stack,
        sockets: &mut Sockets<MioPoller>,
    ) -> Flow {
        if token == API_LISTENER {
            self.accept(registry);
        } else {
            let mut fw = StackForwarder { stack, sockets };
            self.serve(registry, token, &mut fw);
        }
        Flow::Continue
    }
}

/// Ends the loop when a descriptor becomes readable or hangs up
/// (slirp4netns's `--exit-fd`, or a pidfd of a command that exited).
pub struct StopOn {
    fd: OwnedFd,
    token: Token,
    what: &'static str,
}

impl StopOn {
    /// slirp4netns's `--exit-fd`.
    pub fn exit_fd(fd: OwnedFd) -> StopOn {
        StopOn {
            fd,
            token: EXIT_FD,
            what: "exit fd",
        }
    }

    /// A pidfd of the command `usernet ns` runs.
    pub fn child(pidfd: OwnedFd) -> StopOn {
        StopOn {
            fd: pidfd,
            token: CHILD,
            what: "command",
        }
    }
}

impl Control for StopOn {
    fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(
            &mut mio::unix::SourceFd(&self.fd.as_raw_fd()),
            self.token,
            Interest::READABLE,
        )
    }

    fn owns(&self, token: Token) -> bool {
        token == self.token
    }

    fn ready(&mut self, _: &Registry, _: Token, _: &mut Stack, _: &mut Sockets<MioPoller>) -> Flow {
        tracing::info!("{} done: exiting", self.what);
        Flow::Stop
    }
}

/// Writes `1` to slirp4netns's `--ready-fd` once the network is up, and
/// closes it.
pub struct ReadyFd(pub Option<File>);

impl Control for ReadyFd {
    fn register(&mut self, _: &Registry) -> io::Result<()> {
        Ok(())
    }

    fn started(&mut self) -> io::Result<()> {
        if let Some(mut f) = self.0.take()
            && let Err(e) = f.write_all(b"1")
        {
            tracing::warn!("ready fd: {e}");
        }
        Ok(())
    }

    fn owns(&self, _: Token) -> bool {
        false
    }

    fn ready(&mut self, _: &Registry, _: Token, _: &mut Stack, _: &mut Sockets<MioPoller>) -> Flow {
        Flow::Continue
    }
}

/// Enters the [`Sandbox`] (unless `--no-sandbox`) when the loop has
/// started: the latest point before serving, once the transport, the
/// controls and the stack's own sockets are set up. Goes first among the
/// controls, so that slirp4netns's ready fd means "sandboxed" too.
pub struct Lockdown(pub Option<Sandbox>);

impl Control for Lockdown {
    fn register(&mut self, _: &Registry) -> io::Result<()> {
        Ok(())
    }

    fn started(&mut self) -> io::Result<()> {
        match self.0.take() {
            Some(sandbox) => {
                sandbox.enter().map_err(io::Error::other)?;
                tracing::info!("sandbox: seccomp filter installed (--no-sandbox turns it off)");
            }
            None => tracing::info!("sandbox: off (--no-sandbox)"),
        }
        Ok(())
    }

    fn owns(&self, _: Token) -> bool {
        false
    }

    fn ready(&mut self, _: &Registry, _: Token, _: &mut Stack, _: &mut Sockets<MioPoller>) -> Flow {
        Flow::Continue
    }
}
