//! `--metrics ADDR:PORT`: the Prometheus exporter, a [`Server`] (a
//! control of the event loop). A non-blocking TCP listener whose connections ([`Conns`],
//! at most [`MAX_CONNS`], each with a request bound, a timeout and a reply
//! written as the socket takes it) get one response each
//! ([`usernet::metrics`]), rendered from the stack at that moment; a slow
//! or hostile scraper costs a connection slot, never a blocked loop.
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Token;
use mio::net::TcpListener;
use usernet::metrics::{self, encode_snapshot, parse_request};
use usernet_core::Stack;
use usernet_host::sockets::MioPoller;
use usernet_host::{DRIVER_TOKEN_BASE, Sockets};

use crate::conns::{Handler, Server};
use crate::control::snapshot;

/// The listener's token; connections use the next [`MAX_CONNS`].
const LISTENER: Token = Token(DRIVER_TOKEN_BASE as usize + 0x200);
/// The most scrapes served at once.
pub const MAX_CONNS: usize = 8;

/// The metrics exporter.
pub type MetricsServer = Server<TcpListener, Exporter>;

/// Renders the metrics of the stack at each request.
pub struct Exporter;

impl MetricsServer {
    /// Listens on `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
        let limits = (LISTENER, MAX_CONNS, metrics::MAX_REQUEST);
        Ok(Server::new(listener, limits, "metrics", Exporter))
    }
}

impl Handler for Exporter {
    fn is_complete(&self, request: &[u8]) -> bool {
        parse_request(request).is_some()
    }

    fn reply(&mut self, request: &[u8], stack: &mut Stack, _: &mut Sockets<MioPoller>) -> Vec<u8> {
        let req = parse_request(request).unwrap_or(metrics::Request::Bad);
        metrics::response(req, || encode_snapshot(&snapshot(stack, Instant::now())))
    }
}
