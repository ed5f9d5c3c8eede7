//! `slirp/libslirp.h`'s structures as `#[repr(C)]` Rust types, and their
//! translation into the core's [`Config`].
//!
//! # Theory of operation
//! [`SlirpConfig`] and [`SlirpCb`] grew over libslirp's releases: a caller
//! built against an older header passes a shorter structure and says so in
//! `SlirpConfig::version` (1 to 6). [`read_callbacks`] and [`read_config`]
//! therefore read each field through a raw pointer, never forming a
//! reference to the whole structure, and only the fields the version
//! guarantees; later fields keep their defaults. The layouts are checked
//! against the C header by `tests/layout.rs`.
//!
//! What the core does not do (`tftp_server_name`, `enable_emu`, NC-SI) is
//! reported through `guest_error` and otherwise ignored.
use std::ffi::{CStr, c_char, c_int, c_void};
use std::net::{Ipv4Addr, Ipv6Addr};

use libc::{in_addr, in6_addr, sockaddr_in, sockaddr_in6};
use usernet_core::Config;
use usernet_core::config::{ConfigError as CoreConfigError, Ipv4Net, Ipv6Net};

use crate::slirp::Slirp;

/// Oldest `SlirpConfig::version` understood.
pub const CONFIG_VERSION_MIN: u32 = 1;
/// Newest `SlirpConfig::version` understood (libslirp 4.9).
pub const CONFIG_VERSION_MAX: u32 = 6;

/// `SlirpReadCb`: reads up to `len` bytes into `buf`.
pub type SlirpReadCb =
    Option<unsafe extern "C" fn(buf: *mut c_void, len: usize, opaque: *mut c_void) -> isize>;
/// `SlirpWriteCb`: writes `len` bytes from `buf`.
pub type SlirpWriteCb =
    Option<unsafe extern "C" fn(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize>;
/// `SlirpTimerCb`: a legacy timer fired.
pub type SlirpTimerCb = Option<unsafe extern "C" fn(opaque: *mut c_void)>;
/// `SlirpAddPollCb` (and `SlirpAddPollSocketCb`: a socket is an `int` on
/// Unix): asks the embedder to poll `fd`; returns its index.
pub type SlirpAddPollCb =
    Option<unsafe extern "C" fn(fd: c_int, events: c_int, opaque: *mut c_void) -> c_int>;
/// `SlirpGetREventsCb`: what the poll reported for the index.
pub type SlirpGetREventsCb = Option<unsafe extern "C" fn(idx: c_int, opaque: *mut c_void) -> c_int>;

/// `SLIRP_POLL_IN`.
pub const SLIRP_POLL_IN: c_int = 1 << 0;
/// `SLIRP_POLL_OUT`.
pub const SLIRP_POLL_OUT: c_int = 1 << 1;
/// `SLIRP_POLL_PRI`.
pub const SLIRP_POLL_PRI: c_int = 1 << 2;
/// `SLIRP_POLL_ERR`.
pub const SLIRP_POLL_ERR: c_int = 1 << 3;
/// `SLIRP_POLL_HUP`.
pub const SLIRP_POLL_HUP: c_int = 1 << 4;
/// `SLIRP_TIMER_RA`, the one `SlirpTimerId` (an `int`-sized enum).
pub const SLIRP_TIMER_RA: c_int = 0;
/// `SLIRP_HOSTFWD_UDP` (flag of `slirp_add_hostxfwd`).
pub const SLIRP_HOSTFWD_UDP: c_int = 1;
/// `SLIRP_HOSTFWD_V6ONLY`.
pub const SLIRP_HOSTFWD_V6ONLY: c_int = 2;

/// `SlirpCb`: the embedder's callbacks, with the header's field order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SlirpCb {
    /// Sends an Ethernet frame to the guest.
    pub send_packet: SlirpWriteCb,
    /// Reports guest misbehaviour (and, here, our own failures).
    pub guest_error: Option<unsafe extern "C" fn(msg: *const c_char, opaque: *mut c_void)>,
    /// The virtual clock, in nanoseconds.
    pub clock_get_ns: Option<unsafe extern "C" fn(opaque: *mut c_void) -> i64>,
    /// Creates a timer calling `cb(cb_opaque)` (before version 4).
    pub timer_new: Option<
        unsafe extern "C" fn(
            cb: SlirpTimerCb,
            cb_opaque: *mut c_void,
            opaque: *mut c_void,
        ) -> *mut c_void,
    >,
    /// Frees a timer.
    pub timer_free: Option<unsafe extern "C" fn(timer: *mut c_void, opaque: *mut c_void)>,
    /// Arms a timer for `expire_time` (milliseconds of the virtual clock).
    pub timer_mod:
        Option<unsafe extern "C" fn(timer: *mut c_void, expire_time: i64, opaque: *mut c_void)>,
    /// Registers a descriptor (deprecated by `register_poll_socket`).
    pub register_poll_fd: Option<unsafe extern "C" fn(fd: c_int, opaque: *mut c_void)>,
    /// Unregisters a descriptor.
    pub unregister_poll_fd: Option<unsafe extern "C" fn(fd: c_int, opaque: *mut c_void)>,
    /// Wakes the embedder's poll loop.
    pub notify: Option<unsafe extern "C" fn(opaque: *mut c_void)>,
    /// Version 4: the instance exists (timers may fire from now on).
    pub init_completed: Option<unsafe extern "C" fn(slirp: *mut Slirp, opaque: *mut c_void)>,
    /// Version 4: creates a timer that makes the embedder call
    /// `slirp_handle_timer(slirp, id, cb_opaque)`.
    pub timer_new_opaque: Option<
        unsafe extern "C" fn(id: c_int, cb_opaque: *mut c_void, opaque: *mut c_void) -> *mut c_void,
    >,
    /// Version 6: registers a socket.
    pub register_poll_socket: Option<unsafe extern "C" fn(fd: c_int, opaque: *mut c_void)>,
    /// Version 6: unregisters a socket.
    pub unregister_poll_socket: Option<unsafe extern "C" fn(fd: c_int, opaque: *mut c_void)>,
}

/// `SlirpConfig`, with the header's field order (libslirp 4.9, version 6).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SlirpConfig {
    /// Which fields the caller filled (1..=6).
    pub version: u32,
    /// Version 1: keep the guest from reaching anything but forwards.
    pub restricted: c_int,
    /// Serve IPv4.
    pub in_enabled: bool,
    /// Guest network.
    pub vnetwork: in_addr,
    /// Its mask.
    pub vnetmask: in_addr,
    /// Gateway address.
    pub vhost: in_addr,
    /// Serve IPv6.
    pub in6_enabled: bool,
    /// IPv6 prefix.
    pub vprefix_addr6: in6_addr,
    /// Its length.
    pub vprefix_len: u8,
    /// IPv6 gateway.
    pub vhost6: in6_addr,
    /// DHCP host name.
    pub vhostname: *const c_char,
    /// TFTP server name in DHCP.
    pub tftp_server_name: *const c_char,
    /// Directory served by TFTP.
    pub tftp_path: *const c_char,
    /// DHCP boot file.
    pub bootfile: *const c_char,
    /// First DHCP address.
    pub vdhcp_start: in_addr,
    /// DNS address.
    pub vnameserver: in_addr,
    /// IPv6 DNS address.
    pub vnameserver6: in6_addr,
    /// NULL-terminated DNS search list.
    pub vdnssearch: *const *const c_char,
    /// DHCP domain name.
    pub vdomainname: *const c_char,
    /// MTU (0: 1500).
    pub if_mtu: usize,
    /// MRU (0: 1500).
    pub if_mru: usize,
    /// Refuse the guest's traffic to the gateway (the host's loopback).
    pub disable_host_loopback: bool,
    /// libslirp's protocol "emulation" (never done here).
    pub enable_emu: bool,
    /// Version 2: source address of outbound IPv4 sockets.
    pub outbound_addr: *const sockaddr_in,
    /// Version 2: source address of outbound IPv6 sockets.
    pub outbound_addr6: *const sockaddr_in6,
    /// Version 3: do not serve DNS.
    pub disable_dns: bool,
    /// Version 4: do not serve DHCP.
    pub disable_dhcp: bool,
    /// Version 5: NC-SI manufacturer id.
    pub mfr_id: u32,
    /// Version 5: NC-SI out-of-band MAC.
    pub oob_eth_addr: [u8; 6],
}

/// `slirp_new` cannot build a stack from the caller's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A null configuration or callback pointer.
    #[error("slirp_new: null configuration or callbacks")]
    Null,
    /// `version` outside 1..=6.
    #[error("SlirpConfig.version {0}: only 1 to 6 are supported")]
    Version(u32),
    /// A required callback is missing.
    #[error("SlirpCb.{0} is required")]
    MissingCallback(&'static str),
    /// `vnetmask` is not a prefix mask.
    #[error("SlirpConfig.vnetmask {0} is not a prefix mask")]
    Mask(Ipv4Addr),
    /// A string field is not UTF-8.
    #[error("SlirpConfig.{0} is not UTF-8")]
    Utf8(&'static str),
    /// The core refused the resulting configuration.
    #[error("SlirpConfig")]
    Core(#[from] CoreConfigError),
}

/// What `slirp_new` builds a stack from.
#[derive(Debug)]
pub struct Settings {
    /// The core's configuration.
    pub core: Config,
    /// Source addresses of outbound sockets (`outbound_addr*`).
    pub outbound: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    /// The caller's `SlirpConfig::version`.
    pub version: u32,
    /// Fields accepted but not acted upon, for `guest_error`.
    pub ignored: Vec<&'static str>,
}

/// Most entries read from `vdnssearch`.
const MAX_DNSSEARCH: usize = 64;

fn ipv4(a: in_addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(a.s_addr))
}

fn ipv6(a: in6_addr) -> Ipv6Addr {
    Ipv6Addr::from(a.s6_addr)
}

/// Copies the callbacks `cb` points to, as far as `version` guarantees.
///
/// # Safety
/// `cb` points to a readable `SlirpCb` of at least the size its header
/// version had for `version`.
pub unsafe fn read_callbacks(cb: *const SlirpCb, version: u32) -> SlirpCb {
    // SAFETY: (every read below) the caller guarantees the fields of
    // `version` are readable; `read_unaligned` tolerates any alignment.
    unsafe {
        let mut out = SlirpCb {
            send_packet: (&raw const (*cb).send_packet).read_unaligned(),
            guest_error: (&raw const (*cb).guest_error).read_unaligned(),
            clock_get_ns: (&raw const (*cb).clock_get_ns).read_unaligned(),
            timer_new: (&raw const (*cb).timer_new).read_unaligned(),
            timer_free: (&raw const (*cb).timer_free).read_unaligned(),
            timer_mod: (&raw const (*cb).timer_mod).read_unaligned(),
            register_poll_fd: (&raw const (*cb).register_poll_fd).read_unaligned(),
            unregister_poll_fd: (&raw const (*cb).unregister_poll_fd).read_unaligned(),
            notify: (&raw const (*cb).notify).read_unaligned(),
            ..SlirpCb::default()
        };
        if version >= 4 {
            out.init_completed = (&raw const (*cb).init_completed).read_unaligned();
            out.timer_new_opaque = (&raw const (*cb).timer_new_opaque).read_unaligned();
        }
        if version >= 6 {
            out.register_poll_socket = (&raw const (*cb).register_poll_socket).read_unaligned();
            out.unregister_poll_socket = (&raw const (*cb).unregister_poll_socket).read_unaligned();
        }
        out
    }
}

/// A C string field: `None` for null.
///
/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn string(p: *const c_char, field: &'static str) -> Result<Option<String>, ConfigError> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, and NUL-terminated per the caller.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(|s| Some(s.to_owned()))
        .map_err(|_| ConfigError::Utf8(field))
}

/// Reads the caller's `SlirpConfig` into [`Settings`]: only the fields its
/// `version` guarantees, every pointer field checked for null.
///
/// # Safety
/// `cfg` points to a readable `SlirpConfig` at least as long as its
/// `version` says, whose pointer fields are null or valid.
pub unsafe fn read_config(cfg: *const SlirpConfig) -> Result<Settings, ConfigError> {
    // SAFETY: (every read below) `version` is the first field of every
    // version, and the caller guarantees the fields `version` names are
    // readable; reads go through raw pointers, never a reference to a
    // structure that may be shorter than ours.
    unsafe {
        let version = (&raw const (*cfg).version).read_unaligned();
        if !(CONFIG_VERSION_MIN..=CONFIG_VERSION_MAX).contains(&version) {
            return Err(ConfigError::Version(version));
        }
        let mut ignored = Vec::new();
        let mut core = Config {
            // QEMU's restrict=on: the guest reaches nothing through host
            // sockets but what forwards bring in (the core's `restrict`).
            restrict: (&raw const (*cfg).restricted).read_unaligned() != 0,
            ..Config::default()
        };
        core.ipv4 = (&raw const (*cfg).in_enabled).read_unaligned();
        core.ipv6 = (&raw const (*cfg).in6_enabled).read_unaligned();
        let network = ipv4((&raw const (*cfg).vnetwork).read_unaligned());
        let mask = ipv4((&raw const (*cfg).vnetmask).read_unaligned());
        let prefix = u32::from(mask).leading_ones();
        if u32::from(mask).checked_shl(prefix).unwrap_or(0) != 0 {
            return Err(ConfigError::Mask(mask));
        }
        core.net = Ipv4Net {
            addr: network,
            prefix: prefix as u8,
        };
        core.host = ipv4((&raw const (*cfg).vhost).read_unaligned());
        core.ipv6_net = Ipv6Net {
            addr: ipv6((&raw const (*cfg).vprefix_addr6).read_unaligned()),
            prefix: (&raw const (*cfg).vprefix_len).read_unaligned(),
        };
        core.ipv6_host = ipv6((&raw const (*cfg).vhost6).read_unaligned());
        core.hostname = string((&raw const (*cfg).vhostname).read_unaligned(), "vhostname")?;
        if !(&raw const (*cfg).tftp_server_name)
            .read_unaligned()
            .is_null()
        {
            // libslirp puts it in DHCP option 66; the core's TFTP server
            // is the gateway, which clients use without it.
            ignored.push("tftp_server_name");
        }
        core.tftp_root = string((&raw const (*cfg).tftp_path).read_unaligned(), "tftp_path")?
            .map(std::path::PathBuf::from);
        core.bootfile = string((&raw const (*cfg).bootfile).read_unaligned(), "bootfile")?;
        core.dhcpstart = ipv4((&raw const (*cfg).vdhcp_start).read_unaligned());
        core.dns = ipv4((&raw const (*cfg).vnameserver).read_unaligned());
        core.ipv6_dns = ipv6((&raw const (*cfg).vnameserver6).read_unaligned());
        let search = (&raw const (*cfg).vdnssearch).read_unaligned();
        if !search.is_null() {
            for i in 0..MAX_DNSSEARCH {
                let entry = search.add(i).read_unaligned();
                match string(entry, "vdnssearch")? {
                    Some(s) => core.dnssearch.push(s),
                    None => break,
                }
            }
        }
        core.domainname = string(
            (&raw const (*cfg).vdomainname).read_unaligned(),
            "vdomainname",
        )?;
        let mtu = (&raw const (*cfg).if_mtu).read_unaligned();
        if mtu != 0 {
            core.mtu = u32::try_from(mtu).unwrap_or(u32::MAX);
        }
        core.disable_host_loopback = (&raw const (*cfg).disable_host_loopback).read_unaligned();
        if (&raw const (*cfg).enable_emu).read_unaligned() {
            ignored.push("enable_emu");
        }
        let mut outbound = (None, None);
        if version >= 2 {
            let a = (&raw const (*cfg).outbound_addr).read_unaligned();
            if !a.is_null() {
                outbound.0 = Some(ipv4((&raw const (*a).sin_addr).read_unaligned()));
            }
            let a = (&raw const (*cfg).outbound_addr6).read_unaligned();
            if !a.is_null() {
                outbound.1 = Some(ipv6((&raw const (*a).sin6_addr).read_unaligned()));
            }
        }
        if version >= 3 {
            core.disable_dns = (&raw const (*cfg).disable_dns).read_unaligned();
        }
        if version >= 4 {
            core.disable_dhcp = (&raw const (*cfg).disable_dhcp).read_unaligned();
        }
        // Version 5 (NC-SI's mfr_id, oob_eth_addr): NC-SI is not served,
        // so the fields have nothing to configure.
        // libslirp's own MAC for the gateway: 52:55 and the gateway address.
        let h = core.host.octets();
        core.mac = [0x52, 0x55, h[0], h[1], h[2], h[3]];
        core.seed = random_seed();
        core.dns_upstreams = resolv_conf();
        core.validate()?;
        Ok(Settings {
            core,
            outbound,
            version,
            ignored,
        })
    }
}

/// A seed for sequence numbers, from the kernel (fixed if it fails).
fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: the kernel writes at most `seed.len()` bytes into `seed`.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), libc::GRND_NONBLOCK) };
    if n == 8 {
        u64::from_ne_bytes(seed)
    } else {
        Config::default().seed
    }
}

/// libslirp forwards DNS to the host's resolvers: `/etc/resolv.conf`.
fn resolv_conf() -> Vec<std::net::SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| usernet_core::dns::parse_resolv_conf(&t))
        .unwrap_or_default()
}

/// The configuration `slirp_init` (libslirp's pre-`SlirpConfig` API)
/// describes, as a version 1 `SlirpConfig`.
#[allow(clippy::too_many_arguments)]
pub fn legacy(
    restricted: c_int,
    in_enabled: bool,
    vnetwork: in_addr,
    vnetmask: in_addr,
    vhost: in_addr,
    in6_enabled: bool,
    vprefix_addr6: in6_addr,
    vprefix_len: u8,
    vhost6: in6_addr,
    strings: [*const c_char; 4],
    vdhcp_start: in_addr,
    vnameserver: in_addr,
    vnameserver6: in6_addr,
    vdnssearch: *const *const c_char,
    vdomainname: *const c_char,
) -> SlirpConfig {
    let [vhostname, tftp_server_name, tftp_path, bootfile] = strings;
    SlirpConfig {
        version: 1,
        restricted,
        in_enabled,
        vnetwork,
        vnetmask,
        vhost,
        in6_enabled,
        vprefix_addr6,
        vprefix_len,
        vhost6,
        vhostname,
        tftp_server_name,
        tftp_path,
        bootfile,
        vdhcp_start,
        vnameserver,
        vnameserver6,
        vdnssearch,
        vdomainname,
        if_mtu: 0,
        if_mru: 0,
        disable_host_loopback: false,
        enable_emu: false,
        outbound_addr: std::ptr::null(),
        outbound_addr6: std::ptr::null(),
        disable_dns: false,
        disable_dhcp: false,
        mfr_id: 0,
        oob_eth_addr: [0; 6],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Field offsets of libslirp 4.9's x86_64 layout (see also the C
    /// comparison in tests/layout.rs).
    #[test]
    fn layout() {
        use std::mem::{offset_of, size_of};
        assert_eq!(offset_of!(SlirpConfig, restricted), 4);
        assert_eq!(offset_of!(SlirpConfig, vprefix_addr6), 28);
        assert_eq!(offset_of!(SlirpConfig, vhostname), 64);
        assert_eq!(offset_of!(SlirpConfig, if_mtu), 136);
        assert_eq!(offset_of!(SlirpConfig, outbound_addr), 160);
        assert_eq!(offset_of!(SlirpConfig, disable_dhcp), 177);
        assert_eq!(offset_of!(SlirpConfig, oob_eth_addr), 184);
        assert_eq!(size_of::<SlirpConfig>(), 192);
        assert_eq!(size_of::<SlirpCb>(), 13 * 8);
    }
}
