//! `--metrics ADDR:PORT`: the Prometheus exporter, a [`Control`] of the
//! event loop. A non-blocking TCP listener whose connections ([`Conns`],
//! at most [`MAX_CONNS`], each with a request bound, a timeout and a reply
//! written as the socket takes it) get one response each
//! ([`usernet::metrics`]), rendered from the stack at that moment; a slow
//! or hostile scraper costs a connection slot, never a blocked loop.
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use usernet::metrics::{self, encode_snapshot, parse_request};
use usernet_core::Stack;
use usernet_host::sockets::MioPoller;
use usernet_host::{Control, DRIVER_TOKEN_BASE, Flow, Sockets};

use crate::conns::Conns;
use crate::control::snapshot;

/// The listener's token; connections use the next [`MAX_CONNS`].
const LISTENER: Token = Token(DRIVER_TOKEN_BASE as usize + 0x200);
/// The most scrapes served at once.
pub const MAX_CONNS: usize = 8;

/// The metrics exporter.
pub struct MetricsServer {
    listener: TcpListener,
    conns: Conns<TcpStream>,
}

impl MetricsServer {
    /// Listens on `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
        Ok(MetricsServer {
            listener,
            conns: Conns::new(LISTENER, MAX_CONNS, metrics::MAX_REQUEST, "metrics"),
        })
    }
}

impl Control for MetricsServer {
    fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.listener, LISTENER, Interest::READABLE)
    }

    fn owns(&self, token: Token) -> bool {
        self.conns.owns(token)
    }

    fn ready(
        &mut self,
        registry: &Registry,
        token: Token,
        stack: &mut Stack,
        _: &mut Sockets<MioPoller>,
    ) -> Flow {
        let now = Instant::now();
        if token == LISTENER {
            loop {
                match self.listener.accept() {
                    Ok((stream, _)) => self.conns.add(registry, stream, now),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!("metrics: accept: {e}");
                        break;
                    }
                }
            }
            return Flow::Continue;
        }
        let complete = |b: &[u8]| parse_request(b).is_some();
        if let Some(request) = self.conns.ready(registry, token, now, complete) {
            let req = parse_request(&request).unwrap_or(metrics::Request::Bad);
            let reply = metrics::response(req, || encode_snapshot(&snapshot(stack, now)));
            self.conns.reply(registry, token, reply);
        }
        Flow::Continue
    }
}
