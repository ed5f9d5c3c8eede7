//! Time: the embedder's clock as the core's `Instant`s, and the stack's
//! next deadline as one timer of the embedder's.
//!
//! # Theory of operation
//! The core takes `now` as an `Instant`. The embedder's clock
//! (`clock_get_ns`, QEMU's virtual clock, which stops while the VM is
//! paused) is mapped onto `Instant`s by [`Clock`]: the first reading is
//! paired with an `Instant` taken once, and every later reading is that
//! `Instant` plus the nanoseconds elapsed since (never less: a clock that
//! steps back reads as standing still).
//!
//! The stack has one deadline at a time ([`usernet_core::Stack::poll_timeout`]).
//! After each entry point, [`Timer::arm`] moves the embedder's timer
//! (`timer_mod`, in milliseconds of its clock, rounded up so it never fires
//! early) when the deadline changed. The timer firing (`slirp_handle_timer`
//! for `timer_new_opaque`, our own callback for the legacy `timer_new`)
//! runs the stack's timers. `slirp_pollfds_fill` also shortens the
//! embedder's poll timeout to the deadline, as libslirp does for its TCP
//! timers, so an embedder whose timers are coarse still wakes in time.
use std::ffi::c_void;
use std::time::{Duration, Instant};

use crate::callbacks::Callbacks;

/// Maps the embedder's nanosecond clock onto `Instant`s.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
    base_ns: i64,
}

impl Clock {
    /// Pairs the embedder's reading `ns` with an `Instant` read now.
    pub fn new(ns: i64) -> Clock {
        Clock {
            base: Instant::now(),
            base_ns: ns,
        }
    }

    /// The `Instant` of the embedder's reading `ns`.
    pub fn instant(&self, ns: i64) -> Instant {
        let since = u64::try_from(ns.saturating_sub(self.base_ns)).unwrap_or(0);
        self.base + Duration::from_nanos(since)
    }

    /// The embedder's milliseconds at `at`, rounded up.
    pub fn ms(&self, at: Instant) -> i64 {
        let since = at.saturating_duration_since(self.base).as_nanos();
        let ns = i128::from(self.base_ns) + i128::try_from(since).unwrap_or(i128::MAX);
        i64::try_from((ns + 999_999).div_euclid(1_000_000)).unwrap_or(i64::MAX)
    }

    /// Milliseconds from `now` to `at` (0 if past), rounded up, for a poll
    /// timeout.
    pub fn timeout_ms(now: Instant, at: Instant) -> u32 {
        let d = at.saturating_duration_since(now);
        let ms = d.as_nanos().div_ceil(1_000_000);
        u32::try_from(ms).unwrap_or(u32::MAX)
    }
}

/// The embedder's timer for the stack's deadline.
pub struct Timer {
    handle: *mut c_void,
    /// The deadline it is armed for.
    armed: Option<Instant>,
}

impl Timer {
    /// Wraps a timer the embedder created.
    pub fn new(handle: *mut c_void) -> Timer {
        Timer {
            handle,
            armed: None,
        }
    }

    /// Arms the timer for `deadline` unless it already is.
    pub fn arm(&mut self, cb: &Callbacks, clock: &Clock, deadline: Option<Instant>) {
        let Some(at) = deadline else {
            // A stale expiry only runs an empty turn: leave it.
            return;
        };
        if self.armed != Some(at) {
            cb.timer_mod(self.handle, clock.ms(at));
            self.armed = Some(at);
        }
    }

    /// The timer fired: it is no longer armed.
    pub fn fired(&mut self) {
        self.armed = None;
    }

    /// Frees the timer.
    pub fn free(self, cb: &Callbacks) {
        cb.timer_free(self.handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_maps_both_ways() {
        let c = Clock::new(5_000_000_123);
        let t = c.instant(5_001_000_123);
        assert_eq!(t - c.instant(5_000_000_123), Duration::from_millis(1));
        // Back-stepping reads as standing still.
        assert_eq!(c.instant(0), c.instant(5_000_000_123));
        // Rounded up to whole milliseconds.
        assert_eq!(c.ms(t), 5_002);
        assert_eq!(c.ms(c.instant(5_000_000_000 + 2_000_000)), 5_002);
        assert_eq!(Clock::timeout_ms(t, t + Duration::from_micros(1)), 1);
        assert_eq!(Clock::timeout_ms(t + Duration::from_secs(1), t), 0);
    }
}
