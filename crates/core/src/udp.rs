//! UDP flows: a guest's datagrams to one destination, on one host socket.
//!
//! Each guest (source, destination) pair gets its own unconnected host UDP
//! socket, so replies are matched to the guest port that asked, and dies
//! after [`IDLE_TIMEOUT`] without traffic. Replies are peeked into the
//! guest frame buffer directly ([`UdpFlow::produce`]) and shown to the guest
//! as coming from the address it sent to (the gateway for host loopback,
//! the DNS address for the forwarder). Datagrams arriving on a port-forward
//! listener are handled by the stack, which owns the shared listener socket.
use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::host::{HostIo, Token};
use crate::packet;
use crate::tcp::Env;

/// Idle time after which a UDP flow is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle time for DNS queries: one answer is all they wait for.
pub const DNS_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a UDP flow's datagrams go on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The flow's own socket, to this host address.
    Outbound(SocketAddr),
    /// The flow's own socket, to this upstream resolver.
    Dns(SocketAddr),
    /// A port forward's listener socket, back to this client.
    Forwarded {
        /// The listener's token.
        listener: Token,
        /// The host client.
        client: SocketAddr,
    },
}

/// One UDP association.
#[derive(Debug)]
pub struct UdpFlow {
    /// The guest's endpoint.
    guest: SocketAddr,
    /// The peer as the guest sees it.
    remote: SocketAddr,
    /// Where datagrams go on the host.
    pub kind: Kind,
    /// The host socket may have datagrams.
    readable: bool,
    /// Last datagram either way.
    last_active: Instant,
}

impl UdpFlow {
    /// A new flow between `guest` and `remote` (as the guest sees it).
    pub fn new(guest: SocketAddr, remote: SocketAddr, kind: Kind, now: Instant) -> Self {
        UdpFlow {
            guest,
            remote,
            kind,
            readable: false,
            last_active: now,
        }
    }

    /// Whether this flow owns its host socket (forwarded flows share the
    /// listener's).
    pub fn owns_socket(&self) -> bool {
        !matches!(self.kind, Kind::Forwarded { .. })
    }

    /// Sends a guest datagram to the host.
    pub fn send<H: HostIo>(
        &mut self,
        token: Token,
        host: &mut H,
        data: &[u8],
        now: Instant,
    ) -> io::Result<usize> {
        self.last_active = now;
        match self.kind {
            Kind::Outbound(dst) | Kind::Dns(dst) => host.udp_send_to(token, data, dst),
            Kind::Forwarded { listener, client } => host.udp_send_to(listener, data, client),
        }
    }

    /// Records that the host socket has datagrams.
    pub fn set_readable(&mut self, now: Instant) {
        self.readable = true;
        self.last_active = now;
    }

    /// The last datagram either way.
    pub fn last_active(&self) -> Instant {
        self.last_active
    }

    /// Whether [`UdpFlow::produce`] may have a frame.
    pub fn wants_output(&self) -> bool {
        self.readable && self.owns_socket()
    }

    /// When the flow expires.
    pub fn deadline(&self) -> Instant {
        let idle = match self.kind {
            Kind::Dns(_) => DNS_IDLE_TIMEOUT,
            _ => IDLE_TIMEOUT,
        };
        self.last_active + idle
    }

    /// Receives one host datagram into `buf` as a frame for the guest.
    /// Datagrams from sources the guest could not answer are dropped.
    pub fn produce<H: HostIo>(
        &mut self,
        env: &Env,
        token: Token,
        host: &mut H,
        buf: &mut [u8],
    ) -> Option<usize> {
        let gateway: IpAddr = match self.guest {
            SocketAddr::V4(_) => env.cfg.host.into(),
            SocketAddr::V6(_) => env.cfg.ipv6_host.into(),
        };
        let off = packet::udp_payload_offset(self.guest.ip());
        loop {
            let payload = buf.get_mut(off..)?;
            let (n, from) = match host.udp_recv_from(token, payload) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return None;
                }
                Err(e) => {
                    tracing::debug!(%e, guest = %self.guest, "UDP receive failed");
                    self.readable = false;
                    return None;
                }
            };
            let src = match self.kind {
                Kind::Outbound(dst) | Kind::Dns(dst) if from == dst => self.remote,
                Kind::Dns(_) => continue, // not our resolver
                _ if from.ip().is_loopback() => SocketAddr::new(gateway, from.port()),
                _ if from.is_ipv4() == self.guest.is_ipv4() => from,
                _ => continue,
            };
            return packet::udp_in_place(
                buf,
                env.macs,
                (src.ip(), src.port()),
                (self.guest.ip(), self.guest.port()),
                n,
            );
        }
    }
}
