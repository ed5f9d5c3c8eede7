//! The event loop's [`Control`]s: the API socket, slirp4netns's
//! `--exit-fd` and `--ready-fd`, the watcher of `usernet ns`'s command,
//! and [`Lockdown`], which enters the sandbox once set-up is done.
//!
//! The API socket is a non-blocking unix listener whose connections
//! ([`Conns`], at most [`MAX_CONNS`] at once) are each read until their
//! bytes form a complete request ([`api::is_complete`]) or the client shuts
//! down its side; the reply is then written without blocking (a
//! `list_flows` reply can be large, and a client may never read it) and
//! the connection shut down and closed, as slirp4netns does. A request
//! never ends the process, whatever it holds.
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use mio::net::UnixListener;
use mio::{Interest, Registry, Token};
use usernet_core::Stack;
use usernet_core::config::HostFwd;
use usernet_host::sandbox::Sandbox;
use usernet_host::sockets::MioPoller;
use usernet_host::{Control, DRIVER_TOKEN_BASE, Flow, Sockets};

use crate::api::{self, Api, Forwarder, Snapshot};
use crate::conns::{Handler, Server};

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
    fn snapshot(&self) -> Snapshot {
        snapshot(self.stack, Instant::now())
    }
}

/// What `stack` serves at `now`, for the API and the metrics.
pub fn snapshot(stack: &Stack, now: Instant) -> Snapshot {
    Snapshot {
        counters: stack.counters(),
        flows: stack.flows(now).collect(),
        guests: stack.guests(now),
    }
}

/// The slirp4netns-compatible API socket.
pub type ApiServer = Server<UnixListener, ApiHandler>;

/// The API's state, and the socket file to remove when done.
pub struct ApiHandler {
    path: PathBuf,
    api: Api,
}

impl ApiServer {
    /// Listens on `path` (replacing a stale socket file, as slirp4netns
    /// does); forwards without `guest_addr` go to `default_guest`.
    pub fn bind(path: &Path, default_guest: std::net::Ipv4Addr) -> io::Result<ApiServer> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let handler = ApiHandler {
            path: path.to_owned(),
            api: Api::new(default_guest),
        };
        let limits = (API_LISTENER, MAX_CONNS, api::MAX_REQUEST);
        Ok(Server::new(listener, limits, "api", handler))
    }
}

impl Handler for ApiHandler {
    fn is_complete(&self, request: &[u8]) -> bool {
        api::is_complete(request)
    }

    fn reply(
        &mut self,
        request: &[u8],
        stack: &mut Stack,
        sockets: &mut Sockets<MioPoller>,
    ) -> Vec<u8> {
        tracing::debug!("api: request {}", String::from_utf8_lossy(request));
        self.api
            .handle(request, &mut StackForwarder { stack, sockets })
    }
}

impl Drop for ApiHandler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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
