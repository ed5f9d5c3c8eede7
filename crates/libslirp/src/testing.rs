//! A fake embedder for tests: the [`SlirpCb`] callbacks implemented in
//! Rust over an [`Embedder`] that records what the library did (frames
//! sent, errors reported, timers armed) and supplies a virtual clock.
//!
//! # Theory of operation
//! The embedder's address is the callbacks' `opaque` pointer; each callback
//! takes a shared reference to it and records into `RefCell`s, so the test
//! may keep its own shared reference while calling the library. Timers
//! made with `timer_new_opaque` are recorded as `(id, cb_opaque)` with their
//! expiry; [`Embedder::fire_due`] calls `slirp_handle_timer` for those due
//! at the virtual clock's time, as QEMU's main loop would.
use std::cell::{Cell, RefCell};
use std::ffi::{CStr, c_char, c_int, c_void};

use crate::config::{SlirpCb, SlirpConfig, SlirpTimerCb};
use crate::slirp::Slirp;

/// One timer the library created.
#[derive(Clone, Copy, Debug)]
pub struct FakeTimer {
    /// Its `SlirpTimerId`.
    pub id: c_int,
    /// What to hand back to `slirp_handle_timer` (or the legacy callback).
    pub cb_opaque: *mut c_void,
    /// The legacy `timer_new` callback, if made that way.
    pub legacy: SlirpTimerCb,
    /// When it is armed for (milliseconds), if armed.
    pub expire_ms: Option<i64>,
    /// `timer_free` was called.
    pub freed: bool,
}

/// What the library did to its embedder.
#[derive(Default)]
pub struct Embedder {
    /// Frames sent to the guest.
    pub frames: RefCell<Vec<Vec<u8>>>,
    /// Messages reported through `guest_error`.
    pub errors: RefCell<Vec<String>>,
    /// The virtual clock, in nanoseconds.
    pub now_ns: Cell<i64>,
    /// Timers, by index (a timer's handle is its index + 1).
    pub timers: RefCell<Vec<FakeTimer>>,
    /// Times `notify` was called.
    pub notified: Cell<usize>,
    /// The instance `init_completed` reported.
    pub completed: Cell<usize>,
}

fn embedder<'a>(opaque: *mut c_void) -> &'a Embedder {
    // SAFETY: every callback set here is given an `Embedder`'s address as
    // `opaque` (see `Embedder::callbacks`), which the test keeps alive
    // past `slirp_cleanup`.
    unsafe { &*opaque.cast::<Embedder>() }
}

unsafe extern "C" fn send_packet(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: the library passes a frame of `len` readable bytes.
    let frame = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    embedder(opaque).frames.borrow_mut().push(frame.to_vec());
    isize::try_from(len).unwrap_or(isize::MAX)
}

unsafe extern "C" fn guest_error(msg: *const c_char, opaque: *mut c_void) {
    // SAFETY: the library passes a NUL-terminated string.
    let msg = unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned();
    embedder(opaque).errors.borrow_mut().push(msg);
}

unsafe extern "C" fn clock_get_ns(opaque: *mut c_void) -> i64 {
    embedder(opaque).now_ns.get()
}

unsafe extern "C" fn timer_new_opaque(
    id: c_int,
    cb_opaque: *mut c_void,
    opaque: *mut c_void,
) -> *mut c_void {
    let mut timers = embedder(opaque).timers.borrow_mut();
    timers.push(FakeTimer {
        id,
        cb_opaque,
        legacy: None,
        expire_ms: None,
        freed: false,
    });
    // A handle is the index + 1, never dereferenced.
    std::ptr::without_provenance_mut(timers.len())
}

unsafe extern "C" fn timer_new(
    cb: SlirpTimerCb,
    cb_opaque: *mut c_void,
    opaque: *mut c_void,
) -> *mut c_void {
    let mut timers = embedder(opaque).timers.borrow_mut();
    timers.push(FakeTimer {
        id: -1,
        cb_opaque,
        legacy: cb,
        expire_ms: None,
        freed: false,
    });
    std::ptr::without_provenance_mut(timers.len())
}

fn timer_index(timer: *mut c_void) -> Option<usize> {
    (timer as usize).checked_sub(1)
}

unsafe extern "C" fn timer_free(timer: *mut c_void, opaque: *mut c_void) {
    if let Some(i) = timer_index(timer)
        && let Some(t) = embedder(opaque).timers.borrow_mut().get_mut(i)
    {
        t.expire_ms = None;
        t.freed = true;
    }
}

unsafe extern "C" fn timer_mod(timer: *mut c_void, expire_ms: i64, opaque: *mut c_void) {
    if let Some(i) = timer_index(timer)
        && let Some(t) = embedder(opaque).timers.borrow_mut().get_mut(i)
    {
        t.expire_ms = Some(expire_ms);
    }
}

unsafe extern "C" fn notify(opaque: *mut c_void) {
    let e = embedder(opaque);
    e.notified.set(e.notified.get() + 1);
}

unsafe extern "C" fn init_completed(slirp: *mut Slirp, opaque: *mut c_void) {
    embedder(opaque).completed.set(slirp as usize);
}

impl Embedder {
    /// The callbacks, every one of them set.
    pub fn callbacks() -> SlirpCb {
        SlirpCb {
            send_packet: Some(send_packet),
            guest_error: Some(guest_error),
            clock_get_ns: Some(clock_get_ns),
            timer_new: Some(timer_new),
            timer_free: Some(timer_free),
            timer_mod: Some(timer_mod),
            register_poll_fd: None,
            unregister_poll_fd: None,
            notify: Some(notify),
            init_completed: Some(init_completed),
            timer_new_opaque: Some(timer_new_opaque),
            register_poll_socket: None,
            unregister_poll_socket: None,
        }
    }

    /// The `opaque` pointer for [`Embedder::callbacks`].
    pub fn opaque(&self) -> *mut c_void {
        std::ptr::from_ref(self).cast_mut().cast()
    }

    /// Moves the clock on by `ms` and fires the timers then due.
    ///
    /// # Safety
    /// `slirp` is a live instance made with this embedder's callbacks.
    pub unsafe fn advance(&self, slirp: *mut Slirp, ms: i64) {
        self.now_ns.set(self.now_ns.get() + ms * 1_000_000);
        let now_ms = self.now_ns.get() / 1_000_000;
        let due: Vec<FakeTimer> = self
            .timers
            .borrow_mut()
            .iter_mut()
            .filter(|t| t.expire_ms.is_some_and(|e| e <= now_ms))
            .map(|t| {
                t.expire_ms = None;
                *t
            })
            .collect();
        for t in due {
            match t.legacy {
                // SAFETY: the library's own callback and argument.
                Some(cb) => unsafe { cb(t.cb_opaque) },
                // SAFETY: `slirp` is live (the caller's contract).
                None => unsafe { crate::api::slirp_handle_timer(slirp, t.id, t.cb_opaque) },
            }
        }
    }
}

/// libslirp's defaults (QEMU's `-nic user`) as a `SlirpConfig` of
/// `version`.
pub fn default_config(version: u32) -> SlirpConfig {
    let v4 = |a: [u8; 4]| libc::in_addr {
        s_addr: u32::from_ne_bytes(a),
    };
    let v6 = |a: [u8; 16]| libc::in6_addr { s6_addr: a };
    let mut fec0 = [0u8; 16];
    fec0[0] = 0xfe;
    fec0[1] = 0xc0;
    let host6 = {
        let mut a = fec0;
        a[15] = 2;
        a
    };
    let dns6 = {
        let mut a = fec0;
        a[15] = 3;
        a
    };
    let mut cfg = crate::config::legacy(
        0,
        true,
        v4([10, 0, 2, 0]),
        v4([255, 255, 255, 0]),
        v4([10, 0, 2, 2]),
        true,
        v6(fec0),
        64,
        v6(host6),
        [std::ptr::null(); 4],
        v4([10, 0, 2, 15]),
        v4([10, 0, 2, 3]),
        v6(dns6),
        std::ptr::null(),
        std::ptr::null(),
    );
    cfg.version = version;
    cfg.if_mtu = 1500;
    cfg.if_mru = 1500;
    cfg
}

/// Panics inside an entry point of `slirp` (named `"test"`), as a bug in
/// the stack would: the panic must be caught, reported and poison the
/// instance.
pub fn panic_inside(slirp: *mut Slirp) {
    crate::api::enter(slirp, "test", (), |_| panic!("a bug inside the stack"));
}
