//! The tap transport: a Linux tap device (`/dev/net/tun`, `IFF_TAP |
//! IFF_NO_PI`) as the guest link, for `usernet ns`, `usernet attach` and
//! the slirp4netns mode.
//!
//! # Theory of operation
//! The tap is the network namespace's side of a virtual Ethernet cable:
//! every frame the namespace's kernel sends out of `tap0` is one `read(2)`
//! on our descriptor, and every `write(2)` of a frame is one frame received
//! by `tap0`. The same [`usernet_core::Stack`] serves it as serves QEMU;
//! only the framing differs (none: one syscall per frame, no length
//! prefix).
//!
//! - [`create`] opens the device in the *calling thread's* network
//!   namespace (see [`crate::netns`] for getting there), non-blocking and
//!   close-on-exec;
//! - [`configure`] sets MTU, transmit queue length, MAC, IPv4 address,
//!   link up and the default route with the classic `SIOC*` ioctls on a
//!   datagram socket of that namespace (no netlink, no `ip` binary);
//! - [`Tap`] implements the event loop's [`Transport`]: reads frames until
//!   `EAGAIN` (at most the per-turn bound), writes one frame per `write(2)`
//!   as soon as the stack built it and, should the device ever refuse with
//!   `EAGAIN`, keeps up to
//!   [`OUT_FRAMES`] frames queued and stops taking frames from the stack
//!   (back-pressure) until the descriptor is writable again.
//!
//! # Offload
//! The device is opened with `IFF_VNET_HDR`: every frame read or written
//! starts with a 10-byte `struct virtio_net_hdr`. [`Tap::new`] then asks
//! for checksum and TCP segmentation offload (`TUNSETOFFLOAD` with
//! `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`), so the namespace's kernel sends
//! us TCP segments of up to 64 KiB whatever the MTU (one `read` instead of
//! 45 at MTU 1500) with checksums it does not bother to finish (the bytes
//! never leave memory), and takes TCP segments of up to 64 KiB from us:
//! a frame longer than MTU + 14 goes out with `gso_type` TCPV4/TCPV6 and
//! `gso_size` = the MTU's segment size, and the kernel splits it if it ever
//! has to (its own TCP takes it whole, as from GRO). The stack learns this
//! through [`Transport::offload`] ([`usernet_core::offload`]); the vnet
//! header itself never reaches it. The stack leaves TCP checksums partial
//! (the pseudo-header sum) and we mark those frames `NEEDS_CSUM`: the
//! namespace's kernel trusts them when it delivers locally and completes
//! them if it forwards, so nobody sums 64 KiB segments twice. If the kernel
//! refuses the offload, frames keep the (zero) header, full checksums, and
//! stay within the MTU.
//!
//! The descriptor stays usable after the opening thread leaves the
//! namespace: a tap belongs to the namespace it was created in, whoever
//! holds the descriptor.
//!
//! `unsafe` is limited to `ioctl(2)`, `read(2)` and `write(2)` calls on
//! descriptors we own, with `// SAFETY:` on each.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::c_char;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use mio::{Interest, Registry, Token};
use usernet_core::offload::{MAX_OFFLOAD_FRAME, Offload};

use crate::event_loop::{ReadStatus, Transport};

/// The tap's mio token.
const TAP: Token = Token(crate::DRIVER_TOKEN_BASE as usize + 0x10);

/// The most frames queued for the tap when it refuses writes.
pub const OUT_FRAMES: usize = 64;

/// Length of `struct virtio_net_hdr` (linux/virtio_net.h), the header
/// `IFF_VNET_HDR` puts before every frame (the kernel's default size).
const VNET_HDR_LEN: usize = 10;
/// `virtio_net_hdr.gso_type` for a TCP/IPv4 segment to be split.
const GSO_TCPV4: u8 = 1;
/// `virtio_net_hdr.gso_type` for a TCP/IPv6 segment to be split.
const GSO_TCPV6: u8 = 4;

/// The transmit queue length set on the tap (the namespace's side of the
/// queue, frames waiting for us to read): tun's default, which slirp4netns
/// keeps, and which absorbs a burst of a TCP window at 1500 bytes. Set
/// explicitly so a changed kernel default does not change us.
pub const TXQUEUELEN: i32 = 1000;

/// How the namespace's side of the tap is set up by [`configure`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// Interface MTU.
    pub mtu: u32,
    /// MAC address of the interface (the kernel picks one when `None`).
    pub mac: Option<[u8; 6]>,
    /// IPv4 address, prefix length and default gateway; `None` leaves the
    /// link unconfigured and down (slirp4netns without `--configure`).
    pub ipv4: Option<(Ipv4Addr, u8, Ipv4Addr)>,
}

/// A valid interface name as the kernel wants it (NUL-padded).
fn ifname(name: &str) -> io::Result<[c_char; libc::IFNAMSIZ]> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    let mut out = [0 as c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b as c_char;
    }
    Ok(out)
}

/// An `ifreq` for `name`, all zero otherwise.
fn ifreq(name: [c_char; libc::IFNAMSIZ]) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (arrays, integers, pointers in a
    // union); all-zero is a valid value of each.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = name;
    req
}

/// `ioctl(fd, request, req)`.
fn ioctl<T>(fd: RawFd, request: libc::Ioctl, req: &mut T) -> io::Result<()> {
    // SAFETY: every request used in this module takes a pointer to a `T`
    // (ifreq or rtentry) the kernel reads and may write; `req` is a live,
    // exclusive reference for the whole call.
    let r = unsafe { libc::ioctl(fd, request, std::ptr::from_mut(req)) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens `/dev/net/tun` and attaches it to tap `name` in the calling
/// thread's network namespace (creating the interface if needed).
/// The descriptor is non-blocking and close-on-exec.
///
/// Async-signal-safe apart from the error path's formatting: usable in a
/// forked child (see [`crate::netns`]).
pub fn create(name: &str) -> io::Result<OwnedFd> {
    let name = ifname(name)?;
    // SAFETY: a NUL-terminated literal path; open returns a new descriptor
    // or -1.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req)?;
    Ok(fd)
}

/// `TUNSETOFFLOAD`: checksum and TCP segmentation offload, both ways.
fn set_offload(fd: RawFd) -> io::Result<()> {
    let flags = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes its flags by value, not a pointer; the
    // descriptor is ours.
    let r = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `virtio_net_hdr.flags`: the checksum from `csum_start` on is left to
/// the kernel, whose field at `csum_start + csum_offset` holds the
/// pseudo-header sum.
const NEEDS_CSUM: u8 = 1;

/// The `virtio_net_hdr` for a frame we write: all zero (complete checksum,
/// no segmentation) unless the frame is TCP. A TCP segment is marked
/// `NEEDS_CSUM` when the stack left its checksum partial (`partial_csum`,
/// [`Offload::tx_csum`]), and one longer than the MTU gets `gso_type`,
/// `hdr_len` and `gso_size` so the kernel may split it at the MTU. The
/// frame is our own; an odd one just gets the zero header.
fn vnet_header(frame: &[u8], mtu: usize, partial_csum: bool) -> [u8; VNET_HDR_LEN] {
    let mut hdr = [0u8; VNET_HDR_LEN];
    let (gso_type, ip_len, proto) = match frame.get(12..14) {
        Some([0x08, 0x00]) => {
            let ihl = frame.get(14).map_or(0, |b| usize::from(b & 0x0f) * 4);
            (GSO_TCPV4, ihl, frame.get(14 + 9))
        }
        Some([0x86, 0xdd]) => (GSO_TCPV6, 40, frame.get(14 + 6)),
        _ => return hdr,
    };
    let Some(&tcp_off) = frame.get(14 + ip_len + 12) else {
        return hdr;
    };
    let headers = ip_len + usize::from(tcp_off >> 4) * 4;
    if proto != Some(&6) || ip_len < 20 || headers >= mtu {
        return hdr;
    }
    // Fields (little-endian, a tap's native order): flags, gso_type,
    // hdr_len, gso_size, csum_start, csum_offset.
    if partial_csum && let Ok(start) = u16::try_from(14 + ip_len) {
        hdr[0] = NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&start.to_le_bytes());
        hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    }
    if frame.len() > mtu + 14
        && let (Ok(hdr_len), Ok(gso_size)) =
            (u16::try_from(14 + headers), u16::try_from(mtu - headers))
    {
        hdr[1] = gso_type;
        hdr[2..4].copy_from_slice(&hdr_len.to_le_bytes());
        hdr[4..6].copy_from_slice(&gso_size.to_le_bytes());
    }
    hdr
}

/// `struct sockaddr_in` for `ip`, as the generic `sockaddr` the ioctls take.
fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data;
    // this is the cast every C caller of these ioctls makes.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The kernel's `struct rtentry` (linux/route.h), which the libc crate
/// only defines for musl.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Sets interface `name_c` up, through socket `fd`.
fn link_up(fd: RawFd, name_c: [c_char; libc::IFNAMSIZ]) -> io::Result<()> {
    let mut req = ifreq(name_c);
    ioctl(fd, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl(fd, libc::SIOCSIFFLAGS, &mut req)
}

/// Sets the loopback interface `lo` of the calling thread's network
/// namespace up (a new namespace's is down), for the splice path.
/// System calls only: it may run in a forked child.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2); returns a new descriptor or -1.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` was just returned by socket and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    link_up(sock.as_raw_fd(), ifname("lo")?)
}

/// Configures tap `name` in the calling thread's network namespace: MTU,
/// transmit queue, MAC, and with `cfg.ipv4` its address, link up and a
/// default route via the gateway.
pub fn configure(name: &str, cfg: &LinkConfig) -> io::Result<()> {
    let name_c = ifname(name)?;
    // SAFETY: plain socket(2); returns a new descriptor or -1.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` was just returned by socket and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let fd = sock.as_raw_fd();

    let mut req = ifreq(name_c);
    req.ifr_ifru.ifru_mtu = i32::try_from(cfg.mtu)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "MTU too large"))?;
    ioctl(fd, libc::SIOCSIFMTU, &mut req)?;

    let mut req = ifreq(name_c);
    // ifr_qlen shares the union's int slot with ifr_mtu. Best effort: the
    // kernel wants CAP_NET_ADMIN in the *initial* user namespace for this
    // one, which a rootless caller lacks (tun's default is 1000 anyway).
    req.ifr_ifru.ifru_mtu = TXQUEUELEN;
    let _ = ioctl(fd, libc::SIOCSIFTXQLEN, &mut req);

    if let Some(mac) = cfg.mac {
        let mut req = ifreq(name_c);
        let mut sa = libc::sockaddr {
            sa_family: libc::ARPHRD_ETHER,
            sa_data: [0; 14],
        };
        for (d, b) in sa.sa_data.iter_mut().zip(mac) {
            *d = b as c_char;
        }
        req.ifr_ifru.ifru_hwaddr = sa;
        ioctl(fd, libc::SIOCSIFHWADDR, &mut req)?;
    }

    let Some((addr, prefix, gateway)) = cfg.ipv4 else {
        return Ok(());
    };
    let mut req = ifreq(name_c);
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(fd, libc::SIOCSIFADDR, &mut req)?;

    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    let mut req = ifreq(name_c);
    req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    ioctl(fd, libc::SIOCSIFNETMASK, &mut req)?;

    link_up(fd, name_c)?;

    let mut dev = [0 as c_char; libc::IFNAMSIZ + 1];
    dev[..libc::IFNAMSIZ].copy_from_slice(&name_c);
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        // The kernel copies the NUL-terminated name during the call.
        rt_dev: dev.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(fd, libc::SIOCADDRT, &mut route)
}

/// A tap device as the guest link of the event loop.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    /// Whether the descriptor still works (a hard read error ends it).
    up: bool,
    /// One received frame, after its vnet header.
    rx: Vec<u8>,
    /// Frames written by the stack but not yet taken by the device, each
    /// with its length (vnet header included).
    queue: VecDeque<(Vec<u8>, usize)>,
    /// Buffers of written frames, for reuse.
    pool: Vec<Vec<u8>>,
    /// The buffer handed out by the last `out_slot` (room for the vnet
    /// header, then the frame).
    slot: Vec<u8>,
    /// Largest frame we write (MTU + 14, or 64 KiB with offload).
    max_frame: usize,
    /// The link MTU.
    mtu: usize,
    /// Offloads the kernel accepted.
    offload: Offload,
}

impl Tap {
    /// Wraps a tap descriptor from [`create`] carrying frames up to
    /// `max_frame` bytes (the MTU plus the Ethernet header), and turns on
    /// offload (see the module doc) if the kernel agrees.
    pub fn new(fd: OwnedFd, name: &str, max_frame: usize) -> Tap {
        let offload = match set_offload(fd.as_raw_fd()) {
            Ok(()) => Offload {
                rx_trusted: true,
                tso: true,
                tx_csum: true,
            },
            Err(e) => {
                tracing::info!("{name}: no checksum/segmentation offload: {e}");
                Offload::default()
            }
        };
        let big = if offload.tso || offload.rx_trusted {
            MAX_OFFLOAD_FRAME.max(max_frame)
        } else {
            max_frame
        };
        Tap {
            fd,
            name: name.to_owned(),
            up: true,
            // Room for a VLAN tag beyond the largest frame we expect, so an
            // oversized frame is seen (and dropped by the core) rather than
            // cut.
            rx: vec![0; VNET_HDR_LEN + big + 4],
            queue: VecDeque::with_capacity(OUT_FRAMES),
            pool: Vec::new(),
            slot: Vec::new(),
            max_frame: if offload.tso { big } else { max_frame },
            mtu: max_frame.saturating_sub(14),
            offload,
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `write(2)` of one frame.
    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes during
        // the call; the descriptor is ours.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// `read(2)` of one frame into `rx`.
    fn read_frame(&mut self) -> io::Result<usize> {
        // SAFETY: `rx` is valid for writes of `rx.len()` bytes during the
        // call, and the kernel writes at most that many.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                self.rx.as_mut_ptr().cast(),
                self.rx.len(),
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl Transport for Tap {
    fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(
            &mut mio::unix::SourceFd(&self.fd.as_raw_fd()),
            TAP,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn owns(&self, token: Token) -> bool {
        token == TAP
    }

    fn ready(&mut self, _: &Registry, _: Token) -> io::Result<()> {
        Ok(())
    }

    fn is_up(&self) -> bool {
        self.up
    }

    fn offload(&self) -> Offload {
        self.offload
    }

    fn read_frames(
        &mut self,
        registry: &Registry,
        max: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> ReadStatus {
        if !self.up {
            return ReadStatus::Drained;
        }
        let mut n = 0;
        while n < max {
            match self.read_frame() {
                Ok(0) => break,
                // Shorter than its vnet header: nothing to hand on.
                Ok(len) if len <= VNET_HDR_LEN => n += 1,
                Ok(len) => {
                    f(&self.rx[VNET_HDR_LEN..len]);
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadStatus::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("{}: read failed: {e}; link closed", self.name);
                    break;
                }
            }
        }
        if n >= max {
            return ReadStatus::More;
        }
        // End of file or a hard error: the interface is gone (its
        // namespace died).
        self.up = false;
        let _ = registry.deregister(&mut mio::unix::SourceFd(&self.fd.as_raw_fd()));
        ReadStatus::Closed
    }

    fn out_slot(&mut self) -> Option<&mut [u8]> {
        if !self.up || self.queue.len() >= OUT_FRAMES {
            return None;
        }
        if self.slot.is_empty() {
            let len = VNET_HDR_LEN + self.max_frame;
            self.slot = self.pool.pop().unwrap_or_else(|| vec![0; len]);
        }
        self.slot.get_mut(VNET_HDR_LEN..)
    }

    fn commit(&mut self, len: usize) -> &[u8] {
        let end = (VNET_HDR_LEN + len).min(self.slot.len());
        let hdr = vnet_header(
            &self.slot[VNET_HDR_LEN..end],
            self.mtu,
            self.offload.tx_csum,
        );
        self.slot[..VNET_HDR_LEN].copy_from_slice(&hdr);
        // Written at once when nothing waits before it: the slot is reused
        // for the next frame, so a busy link needs one buffer, not a
        // queue's worth of 64 KiB ones.
        if self.queue.is_empty() {
            loop {
                match self.write_frame(&self.slot[..end]) {
                    Ok(_) => return &self.slot[VNET_HDR_LEN..end],
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!("{}: frame dropped: {e}", self.name);
                        return &self.slot[VNET_HDR_LEN..end];
                    }
                }
            }
        }
        let buf = std::mem::take(&mut self.slot);
        self.queue.push_back((buf, end));
        match self.queue.back() {
            Some((buf, len)) => &buf[VNET_HDR_LEN..*len],
            None => &[],
        }
    }

    fn flush(&mut self, _: &Registry) -> io::Result<bool> {
        while let Some((buf, len)) = self.queue.front() {
            match self.write_frame(&buf[..*len]) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // E.g. EIO while the link is down: the frame is lost, as on
                // a wire; the link itself stays.
                Err(e) => tracing::debug!("{}: frame dropped: {e}", self.name),
            }
            if let Some((buf, _)) = self.queue.pop_front() {
                self.pool.push(buf);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(ifname("tap0").is_ok());
        assert!(ifname("").is_err());
        assert!(ifname("sixteen-chars-xx").is_err());
        assert!(ifname("a\0b").is_err());
    }

    /// A TCP/IPv4 frame of `payload` bytes as the core builds it.
    fn tcp4(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + payload];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 20 + 12] = 5 << 4;
        f
    }

    #[test]
    fn vnet_header_marks_tcp_checksums_and_oversized_segments() {
        assert_eq!(vnet_header(&tcp4(1460), 1500, false), [0; VNET_HDR_LEN]);
        let hdr = vnet_header(&tcp4(1460), 1500, true);
        assert_eq!(hdr[..2], [NEEDS_CSUM, 0], "checksum left, no segmentation");
        assert_eq!(u16::from_le_bytes([hdr[6], hdr[7]]), 34, "csum_start");
        assert_eq!(u16::from_le_bytes([hdr[8], hdr[9]]), 16, "csum_offset");
        let hdr = vnet_header(&tcp4(60_000), 1500, false);
        assert_eq!(hdr[0], 0, "complete checksum");
        assert_eq!(hdr[1], GSO_TCPV4);
        assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]), 54, "hdr_len");
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1460, "gso_size");
        let mut v6 = vec![0u8; 14 + 40 + 20 + 4000];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[14 + 6] = 6;
        v6[14 + 40 + 12] = 5 << 4;
        let hdr = vnet_header(&v6, 1500, true);
        assert_eq!((hdr[0], hdr[1]), (NEEDS_CSUM, GSO_TCPV6));
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1440, "gso_size");
        assert_eq!(u16::from_le_bytes([hdr[6], hdr[7]]), 54, "csum_start");
        // Not TCP: nothing to do.
        let mut udp = tcp4(60_000);
        udp[14 + 9] = 17;
        assert_eq!(vnet_header(&udp, 1500, true), [0; VNET_HDR_LEN]);
    }

    #[test]
    fn rtentry_matches_the_kernel_layout() {
        // linux/route.h on 64-bit: 120 bytes, rt_dev at 88.
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_dev), 88);
    }
}
