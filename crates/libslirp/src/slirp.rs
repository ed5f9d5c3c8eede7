//! [`Slirp`]: one instance behind a C `Slirp*`, driving a core
//! [`Stack`] the way the mio event loop does.
//!
//! # Theory of operation
//! Every entry point is a turn of the event loop cut into the pieces the
//! embedder calls: `slirp_input` is "a guest frame arrived", the
//! `pollfds_poll` after a ready epoll descriptor is "host sockets are
//! ready", a timer is "the deadline passed". Each ends with
//! [`Slirp::pump`]: [`drive::run_timers`], then [`drive::poll_frames`] to
//! the embedder's `send_packet` (at most [`MAX_FRAMES_PER_CALL`] frames,
//! so no call runs unbounded), then the embedder's timer re-armed for the
//! new deadline. Frames left over because of that bound make the next
//! `pollfds_fill` ask for a zero timeout (and `notify` wake the loop), so
//! they go out on the next turn. `send_packet` never says "full": like
//! libslirp, a frame the embedder cannot take is lost and TCP retransmits.
//! Guest forwards to a callback are [`crate::chardev`]'s: their sockets sit
//! in the same epoll under driver tokens, and each turn adopts the ones
//! the core opened. Migration state is [`crate::state`]'s.
use std::ffi::{c_int, c_void};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use usernet_core::Stack;
use usernet_core::config::{ConfigError as CoreConfigError, GuestFwd, HostFwd};
use usernet_core::host::{GuestFwdTarget, Proto};
use usernet_host::drive::{self, FrameSink, host_event};
use usernet_host::{MioPoller, Sockets};

use crate::callbacks::Callbacks;
use crate::chardev::{CallbackFwds, TooMuch, WriteCb};
use crate::config::{ConfigError, Settings};
use crate::info;
use crate::poll::EpollSet;
use crate::state::{LoadError, State};
use crate::timers::{Clock, Timer};

/// Most frames sent to the guest in one call.
pub const MAX_FRAMES_PER_CALL: usize = 256;

/// One frame buffer, sent through `send_packet` as each frame is done.
struct Out<'a> {
    buf: &'a mut [u8],
    cb: &'a Callbacks,
}

impl FrameSink for Out<'_> {
    fn slot(&mut self) -> Option<&mut [u8]> {
        Some(self.buf)
    }

    fn push(&mut self, len: usize) -> &[u8] {
        let frame = &self.buf[..len.min(self.buf.len())];
        self.cb.send_packet(frame);
        frame
    }
}

/// A usernet stack behind libslirp's API.
pub struct Slirp {
    cb: Callbacks,
    stack: Stack,
    sockets: Sockets<MioPoller>,
    epoll: EpollSet,
    chardevs: CallbackFwds,
    clock: Clock,
    timer: Option<Timer>,
    out: Vec<u8>,
    /// Frames were left for the next turn.
    pending: bool,
    /// A panic was caught inside: the instance does nothing more.
    pub(crate) poisoned: bool,
}

/// `slirp_new` failed.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The epoll instance could not be created.
    #[error("epoll")]
    Epoll(#[source] std::io::Error),
    /// The stack could not open its own sockets.
    #[error(transparent)]
    Start(#[from] usernet_core::stack::StartError),
}

/// `slirp_add_hostfwd` / `slirp_add_hostxfwd` failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The host socket could not listen.
    #[error(transparent)]
    Listen(#[from] usernet_core::stack::StartError),
    /// No forward matches.
    #[error("no such forward")]
    NotFound,
}

impl Slirp {
    /// A stack for `settings`, with the embedder's callbacks. The caller
    /// boxes it and then calls [`Slirp::attach`].
    pub fn new(settings: Settings, cb: Callbacks) -> Result<Slirp, NewError> {
        let clock = Clock::new(cb.clock_ns());
        let now = clock.instant(cb.clock_ns());
        let (epoll, poller) = EpollSet::new().map_err(NewError::Epoll)?;
        let chardevs = CallbackFwds::new(epoll.registry().map_err(NewError::Epoll)?);
        let (v4, v6) = settings.outbound;
        let mut sockets = Sockets::new(poller).with_outbound(v4, v6);
        for field in &settings.ignored {
            cb.guest_error(&format!(
                "usernet: SlirpConfig.{field} is not supported yet and is ignored"
            ));
        }
        let out = vec![0; settings.core.max_frame()];
        let mut stack = Stack::new(settings.core, now);
        stack.start(&mut sockets)?;
        Ok(Slirp {
            stack,
            sockets,
            epoll,
            chardevs,
            clock,
            timer: None,
            out,
            pending: false,
            poisoned: false,
            cb,
        })
    }

    /// Once boxed at `this`: creates the embedder's timer, registers our
    /// descriptor and reports the instance ready.
    pub fn attach(&mut self, this: *mut Slirp, legacy_timer: unsafe extern "C" fn(*mut c_void)) {
        self.timer = self.cb.timer_new(this, legacy_timer).map(Timer::new);
        if self.timer.is_none() {
            self.cb
                .guest_error("usernet: the embedder gave no timer; timers run from its poll loop");
        }
        self.cb.register(self.epoll.fd());
        self.cb.init_completed(this);
    }

    /// The embedder's callbacks.
    pub fn callbacks(&self) -> &Callbacks {
        &self.cb
    }

    fn now(&self) -> Instant {
        self.clock.instant(self.cb.clock_ns())
    }

    /// `slirp_input`: one frame from the guest.
    pub fn input(&mut self, frame: &[u8]) {
        let now = self.now();
        self.stack.handle_frame(now, frame, &mut self.sockets);
        self.pump(now);
        if self.pending {
            self.cb.notify();
        }
    }

    /// `slirp_pollfds_fill`: our descriptor, and a timeout no later than
    /// the stack's deadline.
    pub fn fill(&mut self, timeout: &mut u32, add: &mut dyn FnMut(c_int, c_int) -> c_int) {
        self.epoll.fill(add);
        let wait = if self.pending || self.chardevs.pending() {
            Some(0)
        } else {
            let now = self.now();
            self.stack
                .poll_timeout()
                .map(|at| Clock::timeout_ms(now, at))
        };
        if let Some(ms) = wait {
            *timeout = (*timeout).min(ms);
        }
    }

    /// `slirp_pollfds_poll`: collects readiness if our descriptor was
    /// ready, then runs a turn.
    pub fn poll(&mut self, poll_failed: bool, get: &mut dyn FnMut(c_int) -> c_int) {
        let ready = self.epoll.ready(poll_failed, get);
        let now = self.now();
        if ready {
            for ev in self.epoll.collect() {
                if CallbackFwds::owns(ev.token()) {
                    self.chardevs.ready(ev);
                } else {
                    self.stack
                        .handle_host(now, host_event(ev), &mut self.sockets);
                }
            }
        }
        self.pump(now);
    }

    /// The embedder's timer fired.
    pub fn timer_fired(&mut self) {
        if let Some(t) = &mut self.timer {
            t.fired();
        }
        let now = self.now();
        self.pump(now);
        if self.pending {
            self.cb.notify();
        }
    }

    /// The end of every turn: due timers, frames to the guest, the timer
    /// re-armed.
    fn pump(&mut self, now: Instant) {
        self.chardevs.adopt(self.sockets.take_callback_peers());
        self.chardevs.service();
        drive::run_timers(&mut self.stack, now, &mut self.sockets);
        let mut out = Out {
            buf: &mut self.out,
            cb: &self.cb,
        };
        let polled = drive::poll_frames(
            &mut self.stack,
            now,
            &mut self.sockets,
            &mut out,
            MAX_FRAMES_PER_CALL,
            &mut |_| {},
        );
        self.pending = polled.sent >= MAX_FRAMES_PER_CALL;
        if let Some(t) = &mut self.timer {
            t.arm(&self.cb, &self.clock, self.stack.poll_timeout());
        }
    }

    /// Adds a port forward; returns its id.
    pub fn add_hostfwd(&mut self, fwd: HostFwd) -> Result<usize, ForwardError> {
        let id = self.stack.add_hostfwd(fwd, &mut self.sockets)?;
        let now = self.now();
        self.pump(now);
        Ok(id)
    }

    /// Removes the forward listening on `host` for `proto`.
    pub fn remove_hostfwd(&mut self, proto: Proto, host: SocketAddr) -> Result<(), ForwardError> {
        let id = self
            .stack
            .hostfwds()
            .find(|(_, f)| f.proto == proto && same_listen_addr(f.host, host))
            .map(|(id, _)| id)
            .ok_or(ForwardError::NotFound)?;
        self.stack.remove_hostfwd(id, &mut self.sockets);
        Ok(())
    }

    /// Adds a guest forward (`slirp_add_exec`, `slirp_add_unix`,
    /// `slirp_add_guestfwd`); returns the guest address it serves.
    pub fn add_guestfwd(
        &mut self,
        addr: Option<Ipv4Addr>,
        port: u16,
        target: Target,
    ) -> Result<Ipv4Addr, CoreConfigError> {
        let (target, callback) = match target {
            Target::Host(t) => (t, None),
            Target::Callback(write_cb, opaque) => {
                let id = self.chardevs.next_id();
                (GuestFwdTarget::Callback(id), Some((id, write_cb, opaque)))
            }
        };
        let fwd = GuestFwd { addr, port, target };
        let served = fwd.addr_in(self.stack.config().net);
        self.stack.add_guestfwd(fwd)?;
        if let Some((id, write_cb, opaque)) = callback {
            self.chardevs.add(id, served, port, write_cb, opaque);
        }
        Ok(served)
    }

    /// Removes the guest forward serving `addr:port` (a callback's
    /// connections close).
    pub fn remove_guestfwd(&mut self, addr: Ipv4Addr, port: u16) -> bool {
        let removed = self.stack.remove_guestfwd(addr, port);
        if removed {
            self.chardevs.remove(addr, port);
        }
        removed
    }

    /// `slirp_socket_can_recv`: bytes the callback forward at `addr:port`
    /// takes now.
    pub fn socket_can_recv(&self, addr: Ipv4Addr, port: u16) -> usize {
        self.chardevs.can_recv(addr, port)
    }

    /// `slirp_socket_recv`: bytes for the guest through the callback
    /// forward at `addr:port`.
    pub fn socket_recv(&mut self, addr: Ipv4Addr, port: u16, data: &[u8]) -> Result<(), TooMuch> {
        self.chardevs.recv(addr, port, data)
    }

    /// `slirp_state_save`'s bytes: the bound DHCP leases in libslirp's
    /// format.
    pub fn save_state(&self) -> Vec<u8> {
        let start = self.stack.config().dhcpstart;
        State::from_leases(start, &self.stack.dhcp_leases()).encode()
    }

    /// `slirp_state_load`: takes over the leases of a saved state.
    pub fn load_state(
        &mut self,
        version: i32,
        read: &mut dyn FnMut(&mut [u8]) -> bool,
    ) -> Result<(), LoadError> {
        let state = State::decode(version, read)?;
        let now = self.now();
        for (ip, mac) in state.leases(self.stack.config().dhcpstart) {
            self.stack.restore_dhcp_lease(now, ip, mac);
        }
        Ok(())
    }

    /// `slirp_connection_info`'s text.
    pub fn connection_info(&self) -> String {
        info::connections(&self.stack, &self.sockets)
    }

    /// `slirp_neighbor_info`'s text.
    pub fn neighbor_info(&self) -> String {
        info::neighbors(&self.stack)
    }

    /// Frees the embedder's resources (timer, registration); the stack and
    /// its sockets go with `self`.
    pub fn detach(&mut self) {
        if let Some(t) = self.timer.take() {
            t.free(&self.cb);
        }
        self.cb.unregister(self.epoll.fd());
    }
}

/// What a guest forward reaches.
pub enum Target {
    /// A command or socket on the host.
    Host(GuestFwdTarget),
    /// The embedder's callback and its `opaque` (`slirp_add_guestfwd`).
    Callback(WriteCb, *mut c_void),
}

/// Whether two listen addresses are the same socket (the unspecified IPv4
/// address also matches as `0.0.0.0`).
fn same_listen_addr(a: SocketAddr, b: SocketAddr) -> bool {
    let norm = |s: SocketAddr| match s.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), s.port()),
            None => s,
        },
        IpAddr::V4(_) => s,
    };
    norm(a) == norm(b)
}

/// The guest address a forward targets: `None` (the guest's own, once
/// known) for the unspecified address, as libslirp.
pub fn guest_target(ip: Ipv4Addr) -> Option<IpAddr> {
    (!ip.is_unspecified()).then_some(IpAddr::V4(ip))
}
