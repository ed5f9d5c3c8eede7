//! Building frames for the guest on top of `smoltcp::wire`.
//!
//! Every frame the stack sends is Ethernet + IPv4/IPv6 + one transport
//! header. These helpers write the headers into a caller's buffer; payloads
//! are either copied in or already there (TCP data peeked from a host socket
//! straight into its final place, see [`tcp_in_place`]), so the hot path
//! never copies a payload twice.
use std::net::IpAddr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
    checksum,
};

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// TCP header length without options.
pub const TCP_LEN: usize = 20;
/// UDP header length.
pub const UDP_LEN: usize = 8;

/// Length of the IP header for a family.
pub fn ip_len(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 20,
        IpAddr::V6(_) => 40,
    }
}

/// Source and destination MAC of a frame.
#[derive(Clone, Copy, Debug)]
pub struct Macs {
    /// Our own MAC.
    pub src: EthernetAddress,
    /// The guest's MAC (or broadcast).
    pub dst: EthernetAddress,
}

/// Writes the Ethernet and IP headers of a packet carrying `l4_len` bytes
/// of `proto` and returns the offset of the transport header. `None` if the
/// addresses are of different families or `buf` is too short.
pub fn ip_headers(
    buf: &mut [u8],
    macs: Macs,
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    l4_len: usize,
) -> Option<usize> {
    ip_headers_hop(buf, macs, src, dst, proto, l4_len, 64)
}

/// [`ip_headers`] with a given hop limit (NDP requires 255).
pub fn ip_headers_hop(
    buf: &mut [u8],
    macs: Macs,
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    l4_len: usize,
    hop_limit: u8,
) -> Option<usize> {
    let off = ETH_LEN + ip_len(dst);
    if buf.len() < off + l4_len {
        return None;
    }
    let ethertype = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let repr = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: l4_len,
                hop_limit,
            };
            repr.emit(
                &mut Ipv4Packet::new_unchecked(&mut buf[ETH_LEN..off]),
                &ChecksumCapabilities::default(),
            );
            EthernetProtocol::Ipv4
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: l4_len,
                hop_limit,
            };
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[ETH_LEN..off]));
            EthernetProtocol::Ipv6
        }
        _ => return None,
    };
    EthernetRepr {
        src_addr: macs.src,
        dst_addr: macs.dst,
        ethertype,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut buf[..ETH_LEN]));
    Some(off)
}

/// Where a UDP payload starts in a frame from `dst`'s family.
pub fn udp_payload_offset(dst: IpAddr) -> usize {
    ETH_LEN + ip_len(dst) + UDP_LEN
}

/// Writes a UDP frame whose payload (`len` bytes) is already in place at
/// [`udp_payload_offset`]; returns the frame length.
pub fn udp_in_place(
    buf: &mut [u8],
    macs: Macs,
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    len: usize,
) -> Option<usize> {
    let off = ip_headers(buf, macs, src.0, dst.0, IpProtocol::Udp, UDP_LEN + len)?;
    let end = off + UDP_LEN + len;
    let mut pkt = UdpPacket::new_unchecked(&mut buf[off..end]);
    pkt.set_src_port(src.1);
    pkt.set_dst_port(dst.1);
    pkt.set_len((UDP_LEN + len) as u16);
    pkt.fill_checksum(&IpAddress::from(src.0), &IpAddress::from(dst.0));
    Some(end)
}

/// Writes a UDP frame carrying `payload`; returns the frame length.
pub fn udp(
    buf: &mut [u8],
    macs: Macs,
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    payload: &[u8],
) -> Option<usize> {
    let start = udp_payload_offset(dst.0);
    buf.get_mut(start..start + payload.len())?
        .copy_from_slice(payload);
    udp_in_place(buf, macs, src, dst, payload.len())
}

/// Writes a TCP segment described by `repr` (options and payload included);
/// returns the frame length.
pub fn tcp(buf: &mut [u8], macs: Macs, src: IpAddr, dst: IpAddr, repr: &TcpRepr) -> Option<usize> {
    tcp_link(buf, macs, src, dst, repr, false)
}

/// [`tcp`] for a link that may complete checksums: with `partial`, the
/// checksum field holds only the pseudo-header sum (see
/// [`crate::offload::Offload::tx_csum`]).
pub fn tcp_link(
    buf: &mut [u8],
    macs: Macs,
    src: IpAddr,
    dst: IpAddr,
    repr: &TcpRepr,
    partial: bool,
) -> Option<usize> {
    let end = tcp_full(buf, macs, src, dst, repr)?;
    if partial {
        let off = ETH_LEN + ip_len(dst);
        partial_checksum(&mut TcpPacket::new_unchecked(&mut buf[off..end]), src, dst);
    }
    Some(end)
}

/// Sets a TCP segment's checksum to the pseudo-header sum alone, the
/// start a link with checksum offload completes (Linux's
/// `CHECKSUM_PARTIAL`).
fn partial_checksum(pkt: &mut TcpPacket<&mut [u8]>, src: IpAddr, dst: IpAddr) {
    let len = pkt.as_ref().len() as u32;
    let sum = checksum::pseudo_header(
        &IpAddress::from(src),
        &IpAddress::from(dst),
        IpProtocol::Tcp,
        len,
    );
    pkt.set_checksum(sum);
}

fn tcp_full(buf: &mut [u8], macs: Macs, src: IpAddr, dst: IpAddr, repr: &TcpRepr) -> Option<usize> {
    let len = repr.buffer_len();
    let off = ip_headers(buf, macs, src, dst, IpProtocol::Tcp, len)?;
    let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut buf[off..off + len]),
        &s,
        &d,
        &ChecksumCapabilities::default(),
    );
    Some(off + len)
}

/// Where a TCP payload without options starts in a frame to `dst`.
pub fn tcp_payload_offset(dst: IpAddr) -> usize {
    ETH_LEN + ip_len(dst) + TCP_LEN
}

/// Header fields of a data segment written by [`tcp_in_place`].
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// Source (address, port) as the guest sees it.
    pub src: (IpAddr, u16),
    /// Destination (the guest).
    pub dst: (IpAddr, u16),
    /// Sequence number.
    pub seq: TcpSeqNumber,
    /// Acknowledgement number.
    pub ack: TcpSeqNumber,
    /// Window field (already scaled down).
    pub window: u16,
    /// FIN flag.
    pub fin: bool,
    /// Leave the checksum to the link: write only the pseudo-header sum.
    pub partial_csum: bool,
}

/// Writes a TCP ACK|PSH segment whose `len` payload bytes are already in
/// place at [`tcp_payload_offset`]; returns the frame length.
pub fn tcp_in_place(buf: &mut [u8], macs: Macs, seg: &Segment, len: usize) -> Option<usize> {
    let off = ip_headers(
        buf,
        macs,
        seg.src.0,
        seg.dst.0,
        IpProtocol::Tcp,
        TCP_LEN + len,
    )?;
    let end = off + TCP_LEN + len;
    let mut pkt = TcpPacket::new_unchecked(&mut buf[off..end]);
    pkt.set_src_port(seg.src.1);
    pkt.set_dst_port(seg.dst.1);
    pkt.set_seq_number(seg.seq);
    pkt.set_ack_number(seg.ack);
    pkt.set_header_len(TCP_LEN as u8);
    pkt.clear_flags();
    pkt.set_ack(true);
    pkt.set_psh(len > 0);
    pkt.set_fin(seg.fin);
    pkt.set_window_len(seg.window);
    pkt.set_urgent_at(0);
    if seg.partial_csum {
        partial_checksum(&mut pkt, seg.src.0, seg.dst.0);
    } else {
        pkt.fill_checksum(&IpAddress::from(seg.src.0), &IpAddress::from(seg.dst.0));
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const MACS: Macs = Macs {
        src: EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
        dst: EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
    };

    #[test]
    fn udp_frame_parses_back() {
        let mut buf = [0u8; 128];
        let src = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 3));
        let dst = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15));
        let n = udp(&mut buf, MACS, (src, 53), (dst, 4444), b"hello").expect("fits");
        assert_eq!(n, 14 + 20 + 8 + 5);
        let ip = Ipv4Packet::new_checked(&buf[14..n]).expect("ip");
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).expect("udp");
        assert!(udp.verify_checksum(&src.into(), &dst.into()));
        assert_eq!(
            (udp.src_port(), udp.dst_port(), udp.payload()),
            (53, 4444, &b"hello"[..])
        );
    }

    #[test]
    fn tcp_in_place_checksums() {
        let mut buf = [0u8; 128];
        let src = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2));
        let dst = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15));
        let off = tcp_payload_offset(dst);
        buf[off..off + 3].copy_from_slice(b"abc");
        let seg = Segment {
            src: (src, 80),
            dst: (dst, 40000),
            seq: TcpSeqNumber(1000),
            ack: TcpSeqNumber(2000),
            window: 512,
            fin: true,
            partial_csum: false,
        };
        let n = tcp_in_place(&mut buf, MACS, &seg, 3).expect("fits");
        let ip = Ipv4Packet::new_checked(&buf[14..n]).expect("ip");
        let tcp = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(tcp.verify_checksum(&src.into(), &dst.into()));
        assert!(tcp.fin() && tcp.ack() && tcp.psh());
        assert_eq!(tcp.payload(), b"abc");
        assert_eq!(tcp.seq_number(), TcpSeqNumber(1000));
    }

    /// A partial checksum, completed as a link does it (the folded sum of
    /// the segment from the TCP header on, field included, inverted), is
    /// the right one.
    #[test]
    fn tcp_partial_checksum_completes_to_the_full_one() {
        let mut buf = [0u8; 128];
        let src = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2));
        let dst = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15));
        let off = tcp_payload_offset(dst);
        buf[off..off + 5].copy_from_slice(b"hello");
        let seg = Segment {
            src: (src, 80),
            dst: (dst, 40000),
            seq: TcpSeqNumber(7),
            ack: TcpSeqNumber(9),
            window: 100,
            fin: false,
            partial_csum: true,
        };
        let n = tcp_in_place(&mut buf, MACS, &seg, 5).expect("fits");
        let start = ETH_LEN + ip_len(dst);
        let sum = !checksum::data(&buf[start..n]);
        buf[start + 16..start + 18].copy_from_slice(&sum.to_be_bytes());
        let tcp = TcpPacket::new_checked(&buf[start..n]).expect("tcp");
        assert!(tcp.verify_checksum(&src.into(), &dst.into()));
    }

    #[test]
    fn too_small_buffer_is_none() {
        let mut buf = [0u8; 40];
        let a = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(udp(&mut buf, MACS, (a, 1), (a, 2), b"x").is_none());
    }
}
