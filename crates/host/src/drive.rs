//! The steps every driver of a [`Stack`] takes in each turn, shared by the
//! mio [`event_loop`](crate::event_loop) and the libslirp-compatible
//! library (`crates/libslirp`), whose embedder owns the poll loop.
//!
//! # Theory of operation
//! A turn is: socket readiness in ([`host_event`] turns a mio event on a
//! core socket into the core's [`HostEvent`]), guest frames in, then
//! [`run_timers`] once the stack's deadline has passed, then
//! [`poll_frames`] into a [`FrameSink`] until the stack has nothing more,
//! the sink is full (back-pressure) or the turn's budget is spent. Both
//! drivers register the core's sockets edge-triggered in an epoll instance
//! of their own (a [`MioPoller`](crate::MioPoller)), so a flow whose data
//! waits for the guest's window does not wake them again and again.
use std::time::Instant;

use usernet_core::{HostEvent, HostIo, Stack, Token};

/// Turns a mio event on a core socket into the core's [`HostEvent`].
pub fn host_event(ev: &mio::event::Event) -> HostEvent {
    let hangup = ev.is_read_closed() && ev.is_write_closed();
    HostEvent {
        token: Token(ev.token().0 as u64),
        readable: ev.is_readable() || ev.is_read_closed(),
        writable: ev.is_writable(),
        error: ev.is_error() || hangup,
    }
}

/// Runs the stack's timers if its deadline has passed at `now`.
pub fn run_timers<H: HostIo>(stack: &mut Stack, now: Instant, host: &mut H) {
    if stack.poll_timeout().is_some_and(|t| t <= now) {
        stack.handle_timeout(now, host);
    }
}

/// Where [`poll_frames`] writes frames for the guest.
pub trait FrameSink {
    /// A buffer for the next frame, at least the largest frame long, or
    /// `None` when the output is full or no guest is there.
    fn slot(&mut self) -> Option<&mut [u8]>;
    /// Sends (or queues) the first `len` bytes of the last
    /// [`FrameSink::slot`] as a frame, and returns them.
    fn push(&mut self, len: usize) -> &[u8];
}

/// How [`poll_frames`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Polled {
    /// Frames written.
    pub sent: usize,
    /// The sink had no room (the stack may have more).
    pub full: bool,
}

/// Polls frames for the guest from `stack` into `sink`, at most `max`,
/// calling `each` with every frame (for logs and captures).
pub fn poll_frames<H: HostIo, S: FrameSink + ?Sized>(
    stack: &mut Stack,
    now: Instant,
    host: &mut H,
    sink: &mut S,
    max: usize,
    each: &mut dyn FnMut(&[u8]),
) -> Polled {
    let mut sent = 0;
    while sent < max {
        let Some(slot) = sink.slot() else {
            return Polled { sent, full: true };
        };
        let Some(len) = stack.poll_frame(now, slot, host) else {
            break;
        };
        each(sink.push(len));
        sent += 1;
    }
    Polled { sent, full: false }
}
