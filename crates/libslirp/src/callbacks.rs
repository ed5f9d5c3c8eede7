//! [`Callbacks`]: the embedder's [`SlirpCb`] and its `opaque` pointer,
//! behind safe methods.
//!
//! # Theory of operation
//! `slirp_new` copies the callbacks (as far as the caller's version
//! guarantees) and checks the required ones are there, so each method
//! here is one call through a known-present function pointer. The embedder
//! promises the pointers and `opaque` stay valid until `slirp_cleanup`;
//! that promise is what every `unsafe` block below relies on. A callback
//! that is optional in libslirp is skipped when absent.
use std::ffi::{CString, c_int, c_void};

use crate::config::{ConfigError, SlirpCb, SlirpTimerCb};
use crate::slirp::Slirp;

/// The embedder's callbacks and its opaque pointer.
pub struct Callbacks {
    cb: SlirpCb,
    opaque: *mut c_void,
}

impl Callbacks {
    /// Checks that the callbacks libslirp requires are present.
    pub fn new(cb: SlirpCb, opaque: *mut c_void) -> Result<Callbacks, ConfigError> {
        if cb.send_packet.is_none() {
            return Err(ConfigError::MissingCallback("send_packet"));
        }
        if cb.clock_get_ns.is_none() {
            return Err(ConfigError::MissingCallback("clock_get_ns"));
        }
        if cb.timer_mod.is_none() || (cb.timer_new.is_none() && cb.timer_new_opaque.is_none()) {
            return Err(ConfigError::MissingCallback("timer_new and timer_mod"));
        }
        Ok(Callbacks { cb, opaque })
    }

    /// Sends one frame to the guest; a refusal is the guest's loss (TCP
    /// retransmits), as in libslirp.
    pub fn send_packet(&self, frame: &[u8]) {
        if let Some(f) = self.cb.send_packet {
            // SAFETY: a valid callback (see the module comment) reading
            // `frame.len()` bytes from a live slice.
            unsafe { f(frame.as_ptr().cast(), frame.len(), self.opaque) };
        }
    }

    /// Reports a message through `guest_error` (or nowhere if absent).
    pub fn guest_error(&self, msg: &str) {
        let Some(f) = self.cb.guest_error else {
            return;
        };
        let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
        // SAFETY: a valid callback given a NUL-terminated string that
        // outlives the call.
        unsafe { f(msg.as_ptr(), self.opaque) };
    }

    /// The embedder's clock, in nanoseconds.
    pub fn clock_ns(&self) -> i64 {
        match self.cb.clock_get_ns {
            // SAFETY: a valid callback (checked present in `new`).
            Some(f) => unsafe { f(self.opaque) },
            None => 0,
        }
    }

    /// Creates the instance's timer: `timer_new_opaque` (the embedder then
    /// calls `slirp_handle_timer`) when given, else the legacy `timer_new`
    /// calling `legacy(slirp)`.
    pub fn timer_new(
        &self,
        slirp: *mut Slirp,
        legacy: unsafe extern "C" fn(*mut c_void),
    ) -> Option<*mut c_void> {
        let timer = if let Some(f) = self.cb.timer_new_opaque {
            // SAFETY: a valid callback; `slirp` is what it hands back.
            unsafe { f(crate::config::SLIRP_TIMER_RA, slirp.cast(), self.opaque) }
        } else {
            let f = self.cb.timer_new?;
            let cb: SlirpTimerCb = Some(legacy);
            // SAFETY: a valid callback; `legacy` accepts the `slirp`
            // pointer it will be given back.
            unsafe { f(cb, slirp.cast(), self.opaque) }
        };
        (!timer.is_null()).then_some(timer)
    }

    /// Arms `timer` for `expire_ms` of the embedder's clock.
    pub fn timer_mod(&self, timer: *mut c_void, expire_ms: i64) {
        if let Some(f) = self.cb.timer_mod {
            // SAFETY: a valid callback and a timer it created.
            unsafe { f(timer, expire_ms, self.opaque) };
        }
    }

    /// Frees `timer`.
    pub fn timer_free(&self, timer: *mut c_void) {
        if let Some(f) = self.cb.timer_free {
            // SAFETY: a valid callback and a timer it created, freed once.
            unsafe { f(timer, self.opaque) };
        }
    }

    /// Tells the embedder about a descriptor we poll
    /// (`register_poll_socket`, else `register_poll_fd`).
    pub fn register(&self, fd: c_int) {
        if let Some(f) = self.cb.register_poll_socket.or(self.cb.register_poll_fd) {
            // SAFETY: a valid callback.
            unsafe { f(fd, self.opaque) };
        }
    }

    /// Undoes [`Callbacks::register`].
    pub fn unregister(&self, fd: c_int) {
        if let Some(f) = self
            .cb
            .unregister_poll_socket
            .or(self.cb.unregister_poll_fd)
        {
            // SAFETY: a valid callback.
            unsafe { f(fd, self.opaque) };
        }
    }

    /// Wakes the embedder's poll loop (work is pending).
    pub fn notify(&self) {
        if let Some(f) = self.cb.notify {
            // SAFETY: a valid callback.
            unsafe { f(self.opaque) };
        }
    }

    /// Tells the embedder the instance is ready (`init_completed`).
    pub fn init_completed(&self, slirp: *mut Slirp) {
        if let Some(f) = self.cb.init_completed {
            // SAFETY: a valid callback given the new, live instance.
            unsafe { f(slirp, self.opaque) };
        }
    }
}
