//! The exported C functions of libslirp 4.9 (`slirp/libslirp.h`), with
//! the symbol versions of `libslirp.map`.
//!
//! # Theory of operation
//! Each function checks its pointers, then runs its body through [`enter`],
//! which
//! - refuses a null instance, one that panicked before (poisoned), and a
//!   call re-entering the same instance from inside one of its callbacks
//!   (which would alias the `&mut` the outer call holds): the function
//!   returns its failure value instead;
//! - catches any panic so that none unwinds into C, reports it through the
//!   embedder's `guest_error`, and poisons the instance.
//!
//! Failure values are libslirp's: `NULL`, `-1`, or nothing. One
//! consequence of refusing re-entry: an embedder's `write_cb` (a guest
//! forward to a callback) cannot answer with `slirp_socket_recv` from
//! inside the call; QEMU answers from its main loop.
use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};

use libc::{in_addr, in6_addr, sockaddr, sockaddr_in, sockaddr_in6, socklen_t};
use usernet_core::config::HostFwd;
use usernet_core::host::{GuestFwdTarget, Proto};

use crate::callbacks::Callbacks;
use crate::config::{
    self, SLIRP_HOSTFWD_UDP, SLIRP_HOSTFWD_V6ONLY, SlirpAddPollCb, SlirpCb, SlirpConfig,
    SlirpGetREventsCb, SlirpReadCb, SlirpWriteCb,
};
use crate::slirp::{Slirp, Target, guest_target};

thread_local! {
    /// Instances inside an entry point on this thread.
    static ACTIVE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the instance `slirp` points to, or returns `fallback` (see
/// the module comment).
pub(crate) fn enter<R>(
    slirp: *mut Slirp,
    name: &str,
    fallback: R,
    f: impl FnOnce(&mut Slirp) -> R,
) -> R {
    let key = slirp as usize;
    if slirp.is_null() || ACTIVE.with(|a| a.borrow().contains(&key)) {
        return fallback;
    }
    ACTIVE.with(|a| a.borrow_mut().push(key));
    // SAFETY: `slirp` came from `slirp_new` and was not cleaned up (the
    // caller's contract), and no other reference to it is live: entry
    // points of this instance are not running on this thread (checked
    // above), and libslirp's embedders serialize calls across threads.
    let s = unsafe { &mut *slirp };
    let r = if s.poisoned {
        fallback
    } else {
        match catch_unwind(AssertUnwindSafe(|| f(&mut *s))) {
            Ok(r) => r,
            Err(_) => {
                s.poisoned = true;
                s.callbacks().guest_error(&format!(
                    "usernet: internal error in {name}; this network is now disabled"
                ));
                fallback
            }
        }
    };
    ACTIVE.with(|a| a.borrow_mut().retain(|k| *k != key));
    r
}

/// Builds and boxes an instance; `NULL` on failure (reported through
/// `guest_error` when the callbacks could be read).
///
/// # Safety
/// As `slirp_new`'s contract.
unsafe fn new_instance(
    cfg: *const SlirpConfig,
    callbacks: *const SlirpCb,
    opaque: *mut c_void,
) -> *mut Slirp {
    if cfg.is_null() || callbacks.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: non-null, and the caller's SlirpConfig starts with `version`.
    let version = unsafe { (&raw const (*cfg).version).read_unaligned() };
    // SAFETY: the callbacks are at least as long as `version` says.
    let cb = unsafe { config::read_callbacks(callbacks, version) };
    // Also on stderr, as libslirp's g_critical: embedders such as QEMU 7.2
    // do not check for NULL and would otherwise run without a network and
    // without a word.
    let report = |msg: &str| {
        let _ = writeln!(std::io::stderr(), "{msg}");
        if let Some(f) = cb.guest_error {
            let msg = std::ffi::CString::new(msg.replace('\0', " ")).unwrap_or_default();
            // SAFETY: the embedder's callback with a live C string.
            unsafe { f(msg.as_ptr(), opaque) };
        }
    };
    let built = catch_unwind(AssertUnwindSafe(|| -> Result<Slirp, String> {
        // SAFETY: the caller's configuration, as long as `version` says.
        let settings = unsafe { config::read_config(cfg) }.map_err(|e| error_chain(&e))?;
        let callbacks = Callbacks::new(cb, opaque).map_err(|e| error_chain(&e))?;
        Slirp::new(settings, callbacks).map_err(|e| error_chain(&e))
    }));
    let slirp = match built {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            report(&format!("usernet: {e}"));
            return std::ptr::null_mut();
        }
        Err(_) => {
            report("usernet: internal error in slirp_new");
            return std::ptr::null_mut();
        }
    };
    let ptr = Box::into_raw(Box::new(slirp));
    enter(ptr, "slirp_new", (), |s| s.attach(ptr, legacy_timer));
    ptr
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The legacy timer's callback (`timer_new`): `opaque` is the instance.
unsafe extern "C" fn legacy_timer(opaque: *mut c_void) {
    enter(opaque.cast(), "timer", (), Slirp::timer_fired);
}

/// Creates an instance. Returns `NULL` on failure.
///
/// # Safety
/// `cfg` and `callbacks` point to the caller's structures of the version
/// `cfg->version` names; they and `opaque` stay valid as libslirp's API
/// says (callbacks until `slirp_cleanup`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_new(
    cfg: *const SlirpConfig,
    callbacks: *const SlirpCb,
    opaque: *mut c_void,
) -> *mut Slirp {
    // SAFETY: forwarded contract.
    unsafe { new_instance(cfg, callbacks, opaque) }
}

/// libslirp's deprecated constructor: a version 1 configuration.
///
/// # Safety
/// As [`slirp_new`]; string arguments are null or NUL-terminated.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn slirp_init(
    restricted: c_int,
    in_enabled: bool,
    vnetwork: in_addr,
    vnetmask: in_addr,
    vhost: in_addr,
    in6_enabled: bool,
    vprefix_addr6: in6_addr,
    vprefix_len: u8,
    vhost6: in6_addr,
    vhostname: *const c_char,
    tftp_server_name: *const c_char,
    tftp_path: *const c_char,
    bootfile: *const c_char,
    vdhcp_start: in_addr,
    vnameserver: in_addr,
    vnameserver6: in6_addr,
    vdnssearch: *const *const c_char,
    vdomainname: *const c_char,
    callbacks: *const SlirpCb,
    opaque: *mut c_void,
) -> *mut Slirp {
    let cfg = config::legacy(
        restricted,
        in_enabled,
        vnetwork,
        vnetmask,
        vhost,
        in6_enabled,
        vprefix_addr6,
        vprefix_len,
        vhost6,
        [vhostname, tftp_server_name, tftp_path, bootfile],
        vdhcp_start,
        vnameserver,
        vnameserver6,
        vdnssearch,
        vdomainname,
    );
    // SAFETY: a full local configuration; the rest is the caller's.
    unsafe { new_instance(&cfg, callbacks, opaque) }
}

/// Destroys an instance: its sockets close, its timer is freed.
///
/// # Safety
/// `slirp` came from `slirp_new` and is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_cleanup(slirp: *mut Slirp) {
    let key = slirp as usize;
    if slirp.is_null() || ACTIVE.with(|a| a.borrow().contains(&key)) {
        return;
    }
    // SAFETY: from `Box::into_raw` in `slirp_new`, not in use (checked
    // above), and never used again (the caller's contract).
    let mut boxed = unsafe { Box::from_raw(slirp) };
    // Even a poisoned instance frees the embedder's timer: a timer left
    // armed would call back with a dangling pointer.
    // A panic here has nowhere to be reported: the callbacks go with the
    // instance.
    let _ = catch_unwind(AssertUnwindSafe(move || {
        boxed.detach();
        drop(boxed);
    }));
}

/// One Ethernet frame from the guest.
///
/// # Safety
/// `pkt` points to `pkt_len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_input(slirp: *mut Slirp, pkt: *const u8, pkt_len: c_int) {
    let Ok(len) = usize::try_from(pkt_len) else {
        return;
    };
    if pkt.is_null() {
        return;
    }
    // SAFETY: the caller's buffer of `pkt_len` bytes, read during the call.
    let frame = unsafe { std::slice::from_raw_parts(pkt, len) };
    enter(slirp, "slirp_input", (), |s| s.input(frame));
}

/// Adds our descriptor to the embedder's poll set and lowers `*timeout`
/// (milliseconds) to the stack's next deadline.
///
/// # Safety
/// `timeout` points to a writable `u32`; `add_poll` is a valid callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_pollfds_fill(
    slirp: *mut Slirp,
    timeout: *mut u32,
    add_poll: SlirpAddPollCb,
    opaque: *mut c_void,
) {
    let Some(add_poll) = add_poll else {
        return;
    };
    if timeout.is_null() {
        return;
    }
    enter(slirp, "slirp_pollfds_fill", (), |s| {
        // SAFETY: the caller's writable u32, for the duration of the call.
        let mut t = unsafe { timeout.read_unaligned() };
        s.fill(&mut t, &mut |fd, events| {
            // SAFETY: the caller's valid callback and its opaque pointer.
            unsafe { add_poll(fd, events, opaque) }
        });
        // SAFETY: as above.
        unsafe { timeout.write_unaligned(t) };
    });
}

/// libslirp 4.9's name for [`slirp_pollfds_fill`] (a socket is an `int`
/// on Unix).
///
/// # Safety
/// As [`slirp_pollfds_fill`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_pollfds_fill_socket(
    slirp: *mut Slirp,
    timeout: *mut u32,
    add_poll: SlirpAddPollCb,
    opaque: *mut c_void,
) {
    // SAFETY: forwarded contract.
    unsafe { slirp_pollfds_fill(slirp, timeout, add_poll, opaque) }
}

/// After the embedder's poll: handles what became ready, runs due timers
/// and sends frames to the guest.
///
/// # Safety
/// `get_revents` is a valid callback for the indexes `add_poll` returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_pollfds_poll(
    slirp: *mut Slirp,
    select_error: c_int,
    get_revents: SlirpGetREventsCb,
    opaque: *mut c_void,
) {
    enter(slirp, "slirp_pollfds_poll", (), |s| {
        s.poll(select_error != 0, &mut |idx| match get_revents {
            // SAFETY: the caller's valid callback and an index it gave.
            Some(f) => unsafe { f(idx, opaque) },
            None => 0,
        });
    });
}

/// A timer made by `timer_new_opaque` fired.
///
/// # Safety
/// `slirp` came from `slirp_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_handle_timer(slirp: *mut Slirp, id: c_int, cb_opaque: *mut c_void) {
    let _ = (id, cb_opaque);
    enter(slirp, "slirp_handle_timer", (), Slirp::timer_fired);
}

fn v4(a: in_addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(a.s_addr))
}

fn port(p: c_int) -> Option<u16> {
    u16::try_from(p).ok()
}

/// Forwards host `host_addr:host_port` to guest `guest_addr:guest_port`
/// (addresses in network order, ports in host order). 0 or -1.
///
/// # Safety
/// `slirp` came from `slirp_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_add_hostfwd(
    slirp: *mut Slirp,
    is_udp: c_int,
    host_addr: in_addr,
    host_port: c_int,
    guest_addr: in_addr,
    guest_port: c_int,
) -> c_int {
    let (Some(hp), Some(gp)) = (port(host_port), port(guest_port)) else {
        return -1;
    };
    let fwd = HostFwd {
        proto: if is_udp != 0 { Proto::Udp } else { Proto::Tcp },
        host: SocketAddr::new(v4(host_addr).into(), hp),
        guest_addr: guest_target(v4(guest_addr)),
        guest_port: gp,
    };
    enter(slirp, "slirp_add_hostfwd", -1, |s| {
        match s.add_hostfwd(fwd) {
            Ok(_) => 0,
            Err(_) => -1,
        }
    })
}

/// Removes the forward listening on `host_addr:host_port`. 0 or -1.
///
/// # Safety
/// `slirp` came from `slirp_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_remove_hostfwd(
    slirp: *mut Slirp,
    is_udp: c_int,
    host_addr: in_addr,
    host_port: c_int,
) -> c_int {
    let Some(hp) = port(host_port) else {
        return -1;
    };
    let proto = if is_udp != 0 { Proto::Udp } else { Proto::Tcp };
    let host = SocketAddr::new(v4(host_addr).into(), hp);
    enter(slirp, "slirp_remove_hostfwd", -1, |s| {
        match s.remove_hostfwd(proto, host) {
            Ok(()) => 0,
            Err(_) => -1,
        }
    })
}

/// A `struct sockaddr` of `len` bytes as an address (IPv4 or IPv6).
///
/// # Safety
/// `sa` is null or points to `len` readable bytes.
unsafe fn socket_addr(sa: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    let len = usize::try_from(len).ok()?;
    // SAFETY: at least the family field, checked against `len`.
    let family = (len >= std::mem::size_of::<libc::sa_family_t>())
        .then(|| unsafe { (&raw const (*sa).sa_family).read_unaligned() })?;
    match c_int::from(family) {
        libc::AF_INET if len >= std::mem::size_of::<sockaddr_in>() => {
            // SAFETY: an AF_INET address of sufficient length.
            let a = unsafe { sa.cast::<sockaddr_in>().read_unaligned() };
            Some(SocketAddr::new(
                v4(a.sin_addr).into(),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<sockaddr_in6>() => {
            // SAFETY: an AF_INET6 address of sufficient length.
            let a = unsafe { sa.cast::<sockaddr_in6>().read_unaligned() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

/// [`slirp_add_hostfwd`] for any address family (libslirp 4.5).
///
/// # Safety
/// `haddr`/`gaddr` point to `haddrlen`/`gaddrlen` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_add_hostxfwd(
    slirp: *mut Slirp,
    haddr: *const sockaddr,
    haddrlen: socklen_t,
    gaddr: *const sockaddr,
    gaddrlen: socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's addresses and lengths.
    let (Some(host), Some(guest)) = (unsafe { socket_addr(haddr, haddrlen) }, unsafe {
        socket_addr(gaddr, gaddrlen)
    }) else {
        return -1;
    };
    if flags & SLIRP_HOSTFWD_V6ONLY != 0 && host.is_ipv4() {
        return -1;
    }
    let guest_addr = match guest.ip() {
        IpAddr::V4(ip) => guest_target(ip),
        IpAddr::V6(ip) => (!ip.is_unspecified()).then_some(IpAddr::V6(ip)),
    };
    let fwd = HostFwd {
        proto: if flags & SLIRP_HOSTFWD_UDP != 0 {
            Proto::Udp
        } else {
            Proto::Tcp
        },
        host,
        guest_addr,
        guest_port: guest.port(),
    };
    enter(slirp, "slirp_add_hostxfwd", -1, |s| {
        match s.add_hostfwd(fwd) {
            Ok(_) => 0,
            Err(_) => -1,
        }
    })
}

/// [`slirp_remove_hostfwd`] for any address family (libslirp 4.5).
///
/// # Safety
/// `haddr` points to `haddrlen` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_remove_hostxfwd(
    slirp: *mut Slirp,
    haddr: *const sockaddr,
    haddrlen: socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's address and length.
    let Some(host) = (unsafe { socket_addr(haddr, haddrlen) }) else {
        return -1;
    };
    let proto = if flags & SLIRP_HOSTFWD_UDP != 0 {
        Proto::Udp
    } else {
        Proto::Tcp
    };
    enter(slirp, "slirp_remove_hostxfwd", -1, |s| {
        match s.remove_hostfwd(proto, host) {
            Ok(()) => 0,
            Err(_) => -1,
        }
    })
}

/// Adds a guest forward to `target` at `*guest_addr` (network order; 0:
/// host 4 of the network, written back as libslirp does) and
/// `guest_port`. 0 or -1 (reported through `guest_error`).
///
/// # Safety
/// `guest_addr` is null or points to a writable `in_addr`.
unsafe fn add_guestfwd(
    slirp: *mut Slirp,
    name: &str,
    guest_addr: *mut in_addr,
    guest_port: c_int,
    target: Option<Target>,
) -> c_int {
    let (Some(port), Some(target)) = (port(guest_port), target) else {
        return -1;
    };
    if guest_addr.is_null() {
        return -1;
    }
    // SAFETY: non-null and readable (the caller's contract).
    let given = v4(unsafe { guest_addr.read_unaligned() });
    let addr = (!given.is_unspecified()).then_some(given);
    enter(slirp, name, -1, |s| {
        match s.add_guestfwd(addr, port, target) {
            Ok(served) => {
                let out = in_addr {
                    s_addr: u32::from(served).to_be(),
                };
                // SAFETY: writable (the caller's contract).
                unsafe { guest_addr.write_unaligned(out) };
                0
            }
            Err(e) => {
                s.callbacks().guest_error(&format!("usernet: {name}: {e}"));
                -1
            }
        }
    })
}

/// A C string argument as a Rust one (`None`: null or not UTF-8).
///
/// # Safety
/// `p` is null or NUL-terminated.
unsafe fn c_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated (the caller's contract).
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .ok()
        .map(str::to_owned)
}

/// A guest forward to a command: each guest connection to the address
/// and port runs `sh -c cmdline` with the connection as its stdin and
/// stdout. 0 or -1.
///
/// # Safety
/// `cmdline` is NUL-terminated; `guest_addr` points to a writable
/// `in_addr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_add_exec(
    slirp: *mut Slirp,
    cmdline: *const c_char,
    guest_addr: *mut in_addr,
    guest_port: c_int,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        let target = c_string(cmdline).map(|c| Target::Host(GuestFwdTarget::Cmd(c)));
        add_guestfwd(slirp, "slirp_add_exec", guest_addr, guest_port, target)
    }
}

/// A guest forward to a unix stream socket, connected per guest
/// connection. 0 or -1.
///
/// # Safety
/// As [`slirp_add_exec`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_add_unix(
    slirp: *mut Slirp,
    unixsock: *const c_char,
    guest_addr: *mut in_addr,
    guest_port: c_int,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        let target = c_string(unixsock).map(|p| Target::Host(GuestFwdTarget::Unix(p.into())));
        add_guestfwd(slirp, "slirp_add_unix", guest_addr, guest_port, target)
    }
}

/// A guest forward to a callback (QEMU's `guestfwd=...-chardev`): the
/// bytes of each guest connection to the address and port go to
/// `write_cb(buf, len, opaque)`, and the embedder sends bytes back with
/// [`slirp_socket_recv`]. 0 or -1.
///
/// # Safety
/// As [`slirp_add_exec`]; `write_cb` is valid with `opaque` until the
/// forward is removed or the instance cleaned up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_add_guestfwd(
    slirp: *mut Slirp,
    write_cb: SlirpWriteCb,
    opaque: *mut c_void,
    guest_addr: *mut in_addr,
    guest_port: c_int,
) -> c_int {
    let target = write_cb.map(|cb| Target::Callback(cb, opaque));
    // SAFETY: forwarded contract.
    unsafe { add_guestfwd(slirp, "slirp_add_guestfwd", guest_addr, guest_port, target) }
}

/// Removes the guest forward (exec, unix or callback) at
/// `guest_addr:guest_port`; a callback's connections close. 0 or -1.
///
/// # Safety
/// `slirp` came from `slirp_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_remove_guestfwd(
    slirp: *mut Slirp,
    guest_addr: in_addr,
    guest_port: c_int,
) -> c_int {
    let Some(port) = port(guest_port) else {
        return -1;
    };
    enter(slirp, "slirp_remove_guestfwd", -1, |s| {
        if s.remove_guestfwd(v4(guest_addr), port) {
            0
        } else {
            -1
        }
    })
}

/// How many bytes [`slirp_socket_recv`] may give the callback forward at
/// `guest_addr:guest_port` now: 0 while no guest connection is open.
///
/// # Safety
/// `slirp` came from `slirp_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_socket_can_recv(
    slirp: *mut Slirp,
    guest_addr: in_addr,
    guest_port: c_int,
) -> usize {
    let Some(port) = port(guest_port) else {
        return 0;
    };
    enter(slirp, "slirp_socket_can_recv", 0, |s| {
        s.socket_can_recv(v4(guest_addr), port)
    })
}

/// Bytes for the guest connected to the callback forward at
/// `guest_addr:guest_port`; dropped while none is, as in libslirp. More
/// than [`slirp_socket_can_recv`] allowed closes the connection (reported
/// through `guest_error`).
///
/// # Safety
/// `slirp` came from `slirp_new`; `buf` holds `size` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_socket_recv(
    slirp: *mut Slirp,
    guest_addr: in_addr,
    guest_port: c_int,
    buf: *const u8,
    size: c_int,
) {
    let (Some(port), Ok(len)) = (port(guest_port), usize::try_from(size)) else {
        return;
    };
    if buf.is_null() || len == 0 {
        return;
    }
    // SAFETY: `len` readable bytes (the caller's contract), not kept past
    // the call.
    let data = unsafe { std::slice::from_raw_parts(buf, len) };
    enter(slirp, "slirp_socket_recv", (), |s| {
        if let Err(e) = s.socket_recv(v4(guest_addr), port, data) {
            s.callbacks()
                .guest_error(&format!("usernet: slirp_socket_recv: {e}"));
        }
    })
}

/// `text` in memory from `malloc`, NUL-terminated (the caller frees it);
/// `NULL` if out of memory.
fn malloc_string(text: &str) -> *mut c_char {
    let bytes = text.as_bytes();
    // SAFETY: malloc of len + 1 bytes; checked for null before use.
    let p = unsafe { libc::malloc(bytes.len() + 1) }.cast::<u8>();
    if p.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `p` has room for the bytes and the NUL; the regions differ.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        p.add(bytes.len()).write(0);
    }
    p.cast()
}

/// The connection table as text (QEMU's `info usernet`), from `malloc`.
///
/// # Safety
/// `slirp` came from `slirp_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_connection_info(slirp: *mut Slirp) -> *mut c_char {
    enter(slirp, "slirp_connection_info", std::ptr::null_mut(), |s| {
        malloc_string(&s.connection_info())
    })
}

/// The neighbour table as text, from `malloc`.
///
/// # Safety
/// `slirp` came from `slirp_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_neighbor_info(slirp: *mut Slirp) -> *mut c_char {
    enter(slirp, "slirp_neighbor_info", std::ptr::null_mut(), |s| {
        malloc_string(&s.neighbor_info())
    })
}

/// Saves the migration state (libslirp's format, see [`crate::state`])
/// through `write_cb`. Returns 0, or -1 if the embedder's write failed
/// (libslirp 4.9 returns `int`; older headers say `void`, whose callers
/// ignore the value).
///
/// # Safety
/// `write_cb` is a valid callback for `opaque`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_state_save(
    slirp: *mut Slirp,
    write_cb: SlirpWriteCb,
    opaque: *mut c_void,
) -> c_int {
    let Some(write) = write_cb else {
        return -1;
    };
    enter(slirp, "slirp_state_save", -1, |s| {
        let bytes = s.save_state();
        let mut at = 0;
        // Bounded: each round writes at least one byte or stops.
        while at < bytes.len() {
            let rest = &bytes[at..];
            // SAFETY: the embedder's callback reading `rest.len()` bytes
            // of a live buffer.
            let n = unsafe { write(rest.as_ptr().cast(), rest.len(), opaque) };
            match usize::try_from(n) {
                Ok(n) if n > 0 => at += n.min(rest.len()),
                _ => return -1,
            }
        }
        0
    })
}

/// The state format's version, as libslirp 4.x.
#[unsafe(no_mangle)]
pub extern "C" fn slirp_state_version() -> c_int {
    crate::state::VERSION
}

/// Loads a migration state saved by `slirp_state_save` (ours or
/// libslirp's) of format `version_id`. Returns 0 or a negative errno.
///
/// # Safety
/// `read_cb` is a valid callback for `opaque`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slirp_state_load(
    slirp: *mut Slirp,
    version_id: c_int,
    read_cb: SlirpReadCb,
    opaque: *mut c_void,
) -> c_int {
    let Some(read) = read_cb else {
        return -libc::EINVAL;
    };
    enter(slirp, "slirp_state_load", -libc::EINVAL, |s| {
        let mut read_exact = |buf: &mut [u8]| {
            // SAFETY: the embedder's callback writing at most `buf.len()`
            // bytes into a live buffer.
            let n = unsafe { read(buf.as_mut_ptr().cast(), buf.len(), opaque) };
            usize::try_from(n).is_ok_and(|n| n == buf.len())
        };
        match s.load_state(version_id, &mut read_exact) {
            Ok(()) => 0,
            Err(e) => {
                s.callbacks()
                    .guest_error(&format!("usernet: slirp_state_load: {e}"));
                e.errno()
            }
        }
    })
}

/// The implementation's version: libslirp's API level, and usernet.
#[unsafe(no_mangle)]
pub extern "C" fn slirp_version_string() -> *const c_char {
    const VERSION: &CStr = c"4.9.1-usernet";
    VERSION.as_ptr()
}
