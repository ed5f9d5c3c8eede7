//! Host socket readiness under an embedder's poll loop.
//!
//! # Theory of operation
//! libslirp hands the embedder every socket at each `slirp_pollfds_fill`
//! and asks for them back by index in `slirp_pollfds_poll`, level-triggered.
//! usernet's TCP keeps the host's data in the socket until the guest
//! acknowledges it (the core peeks, see `usernet_core::tcp`), so a socket
//! whose data waits for the guest's window stays readable: a level-triggered
//! loop would spin on it. So the core's sockets are registered
//! edge-triggered in an epoll instance of our own, through the host crate's
//! [`MioPoller`] (the same [`Poller`](usernet_host::Poller) the mio event
//! loop uses), and the embedder polls only that one descriptor, which is
//! readable exactly while an edge waits to be collected. `pollfds_poll`
//! then collects up to [`EVENTS_PER_POLL`] edges without blocking; any left
//! over keep the descriptor readable for the next turn. This also keeps
//! the embedder's per-turn work constant however many flows are open.
use std::ffi::c_int;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use mio::{Events, Poll};
use usernet_host::MioPoller;

use crate::config::{SLIRP_POLL_ERR, SLIRP_POLL_HUP, SLIRP_POLL_IN, SLIRP_POLL_PRI};

/// Most readiness events collected in one `slirp_pollfds_poll`.
pub const EVENTS_PER_POLL: usize = 1024;

/// The epoll instance holding the core's sockets.
pub struct EpollSet {
    poll: Poll,
    events: Events,
    /// The index the embedder gave our descriptor in this turn's fill.
    index: Option<c_int>,
}

impl EpollSet {
    /// A new epoll instance, and the [`MioPoller`] that registers in it.
    pub fn new() -> io::Result<(EpollSet, MioPoller)> {
        let poll = Poll::new()?;
        let poller = MioPoller::new(poll.registry().try_clone()?);
        Ok((
            EpollSet {
                poll,
                events: Events::with_capacity(EVENTS_PER_POLL),
                index: None,
            },
            poller,
        ))
    }

    /// A handle registering more descriptors (the driver's own, under
    /// tokens at or above `usernet_host::DRIVER_TOKEN_BASE`).
    pub fn registry(&self) -> io::Result<mio::Registry> {
        self.poll.registry().try_clone()
    }

    /// The descriptor the embedder polls.
    pub fn fd(&self) -> c_int {
        self.poll.as_raw_fd()
    }

    /// `slirp_pollfds_fill`: asks the embedder to poll our descriptor for
    /// input; `add` returns its index.
    pub fn fill(&mut self, add: &mut dyn FnMut(c_int, c_int) -> c_int) {
        self.index = Some(add(self.fd(), SLIRP_POLL_IN));
    }

    /// `slirp_pollfds_poll`: whether the embedder saw our descriptor ready
    /// (`get` maps an index to `SLIRP_POLL_*` bits). After a failed poll,
    /// or without a fill, nothing is known to be ready.
    pub fn ready(&mut self, poll_failed: bool, get: &mut dyn FnMut(c_int) -> c_int) -> bool {
        match self.index.take() {
            Some(i) if !poll_failed && i >= 0 => {
                get(i) & (SLIRP_POLL_IN | SLIRP_POLL_PRI | SLIRP_POLL_ERR | SLIRP_POLL_HUP) != 0
            }
            _ => false,
        }
    }

    /// Collects the edges waiting, without blocking.
    pub fn collect(&mut self) -> &Events {
        if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            // EINTR, or a broken epoll: nothing collected this turn.
            let _ = e;
            self.events.clear();
        }
        &self.events
    }
}
