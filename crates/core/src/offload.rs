//! What the guest link does for the stack: checksum and segmentation
//! offload, a capability the transport declares ([`Stack::set_offload`]).
//!
//! # Theory of operation
//! A tap opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD` (TSO and checksum
//! offload) lets the namespace's kernel hand over TCP segments of up to
//! 64 KiB whatever the MTU, with checksums left for "the hardware" (here:
//! nobody, the bytes never leave memory), and takes segments of up to
//! 64 KiB from us, splitting them itself if it has to. Per frame, that
//! header (`virtio_net_hdr`) is the transport's business; what the stack
//! needs to know is only this:
//!
//! - [`Offload::rx_trusted`]: frames from the guest may be larger than the
//!   MTU and their TCP/UDP/IPv4 checksums are not verified (they may hold
//!   only the pseudo-header sum). A guest that lies about them can only
//!   corrupt its own connections.
//! - [`Offload::tso`]: TCP segments to the guest may carry up to
//!   [`tso_payload`] bytes, one IP packet of up to 64 KiB, whatever the MTU;
//!   the transport marks them for segmentation at the MTU.
//! - [`Offload::tx_csum`]: every TCP segment to the guest carries only the
//!   pseudo-header sum in its checksum field, and the transport marks it
//!   for the link to complete (Linux's `CHECKSUM_PARTIAL`; a local
//!   receiver trusts it and nobody sums 64 KiB twice). Other protocols
//!   keep full checksums.
//!
//! The QEMU stream transport offers neither (a virtio-net guest behind it
//! sees plain Ethernet frames of at most MTU + 14 bytes).
//!
//! [`Stack::set_offload`]: crate::Stack::set_offload
use std::net::IpAddr;

use crate::packet;

/// Largest IP packet (IPv4 total length, IPv6 payload length).
pub const MAX_IP_PACKET: usize = u16::MAX as usize;

/// The largest Ethernet frame a transport with [`Offload::tso`] or
/// [`Offload::rx_trusted`] carries (an IPv6 packet with a 64 KiB payload).
pub const MAX_OFFLOAD_FRAME: usize = packet::ETH_LEN + 40 + MAX_IP_PACKET;

/// Offloads a guest link provides (none by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// Guest frames may exceed the MTU and carry unverified checksums.
    pub rx_trusted: bool,
    /// The link segments TCP packets larger than the MTU.
    pub tso: bool,
    /// The link completes the checksums of TCP segments we send.
    pub tx_csum: bool,
}

/// The largest TCP payload in one offloaded segment toward `ip`.
pub fn tso_payload(ip: IpAddr) -> usize {
    let ip_header_in_length = match ip {
        IpAddr::V4(_) => packet::ip_len(ip),
        IpAddr::V6(_) => 0,
    };
    MAX_IP_PACKET - ip_header_in_length - packet::TCP_LEN
}
