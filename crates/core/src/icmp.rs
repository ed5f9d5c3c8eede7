//! ICMP and ICMPv6 echo (RFC 792, RFC 4443): pings answered locally or
//! sent through host ping sockets.
//!
//! Echo requests to the stack's own addresses are answered here. Others go
//! through an unprivileged ICMP datagram socket (`SOCK_DGRAM`,
//! `IPPROTO_ICMP` or `IPPROTO_ICMPV6`), one per guest (identifier, destination): the kernel
//! picks the identifier on the wire, so replies get the guest's identifier
//! back before they are passed on. Hosts may forbid such sockets
//! (`net.ipv4.ping_group_range`); the stack then logs it once.
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpProtocol,
};

use crate::host::{HostIo, Token};
use crate::packet::{self, Macs};

/// Idle time after which a ping flow is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes an ICMPv4 message from `src` to `dst`; returns the frame length.
pub fn emit(
    buf: &mut [u8],
    macs: Macs,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    repr: &Icmpv4Repr,
) -> Option<usize> {
    let len = repr.buffer_len();
    let off = packet::ip_headers(buf, macs, src.into(), dst.into(), IpProtocol::Icmp, len)?;
    let mut pkt = Icmpv4Packet::new_unchecked(&mut buf[off..off + len]);
    repr.emit(&mut pkt, &ChecksumCapabilities::default());
    Some(off + len)
}

/// Writes an ICMPv6 message (with `extra` option bytes appended after the
/// message `repr` describes) from `src` to `dst`; returns the frame length.
pub fn emit6(
    buf: &mut [u8],
    macs: Macs,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    repr: &Icmpv6Repr,
    extra: &[u8],
    hop_limit: u8,
) -> Option<usize> {
    let split = repr.buffer_len();
    let len = split + extra.len();
    let off = packet::ip_headers_hop(
        buf,
        macs,
        src.into(),
        dst.into(),
        IpProtocol::Icmpv6,
        len,
        hop_limit,
    )?;
    let body = &mut buf[off..off + len];
    body[split..].copy_from_slice(extra);
    let mut pkt = Icmpv6Packet::new_unchecked(&mut *body);
    repr.emit(&src, &dst, &mut pkt, &ChecksumCapabilities::default());
    pkt.fill_checksum(&src, &dst);
    Some(off + len)
}

/// One guest ping conversation.
#[derive(Debug)]
pub struct IcmpFlow {
    guest: IpAddr,
    ident: u16,
    remote: IpAddr,
    readable: bool,
    last_active: Instant,
}

impl IcmpFlow {
    /// A ping flow from `guest` (with its echo identifier) to `remote`.
    pub fn new(guest: IpAddr, ident: u16, remote: IpAddr, now: Instant) -> Self {
        IcmpFlow {
            guest,
            ident,
            remote,
            readable: false,
            last_active: now,
        }
    }

    /// Sends the guest's echo request (the ICMP message, header included).
    pub fn send<H: HostIo>(
        &mut self,
        token: Token,
        host: &mut H,
        msg: &[u8],
        now: Instant,
    ) -> std::io::Result<usize> {
        self.last_active = now;
        host.icmp_send_to(token, msg, (self.remote, 0).into())
    }

    /// Records that replies are waiting.
    pub fn set_readable(&mut self, now: Instant) {
        self.readable = true;
        self.last_active = now;
    }

    /// The last echo request or reply.
    pub fn last_active(&self) -> Instant {
        self.last_active
    }

    /// Whether [`IcmpFlow::produce`] may have a frame.
    pub fn wants_output(&self) -> bool {
        self.readable
    }

    /// When the flow expires.
    pub fn deadline(&self) -> Instant {
        self.last_active + IDLE_TIMEOUT
    }

    /// Receives one echo reply into `buf` as a frame for the guest.
    pub fn produce<H: HostIo>(
        &mut self,
        macs: Macs,
        token: Token,
        host: &mut H,
        buf: &mut [u8],
    ) -> Option<usize> {
        let off = packet::ETH_LEN + packet::ip_len(self.guest);
        loop {
            let n = match host.icmp_recv(token, buf.get_mut(off..)?) {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        tracing::debug!(%e, "ICMP receive failed");
                    }
                    self.readable = false;
                    return None;
                }
            };
            if n < 8 {
                continue;
            }
            let msg = &mut buf[off..off + n];
            let (proto, is_reply) = match (self.remote, self.guest) {
                (IpAddr::V4(_), IpAddr::V4(_)) => {
                    let mut pkt = Icmpv4Packet::new_unchecked(msg);
                    let reply = pkt.msg_type() == Icmpv4Message::EchoReply;
                    pkt.set_echo_ident(self.ident);
                    pkt.fill_checksum();
                    (IpProtocol::Icmp, reply)
                }
                (IpAddr::V6(r), IpAddr::V6(g)) => {
                    let mut pkt = Icmpv6Packet::new_unchecked(msg);
                    let reply = pkt.msg_type() == Icmpv6Message::EchoReply;
                    pkt.set_echo_ident(self.ident);
                    pkt.fill_checksum(&r, &g);
                    (IpProtocol::Icmpv6, reply)
                }
                _ => return None,
            };
            if !is_reply {
                continue;
            }
            return packet::ip_headers(buf, macs, self.remote, self.guest, proto, n).map(|o| o + n);
        }
    }
}
