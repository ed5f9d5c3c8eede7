//! The stack: one guest link, its services, and its NAT'ed flows.
//!
//! # Theory of operation
//! A driver owns the guest transport (QEMU stream socket, tap) and the host
//! sockets (a [`HostIo`]). It calls, in any order and as often as it likes:
//! - [`Stack::handle_frame`] for each Ethernet frame from the guest;
//! - [`Stack::handle_host`] for each readiness event of a host socket;
//! - [`Stack::handle_timeout`] once `now` reaches [`Stack::poll_timeout`];
//!
//! and after each batch of those, [`Stack::poll_frame`] until it returns
//! `None` (or the guest transport is full: back-pressure is the driver not
//! polling), writing each frame to the guest. [`Stack::poll_timeout`] then
//! says when to call back if nothing happens. `now` is always an argument.
use std::time::Instant;

use crate::config::Config;
use crate::host::{HostEvent, HostIo};

/// What the stack has seen and done, for logs and tests. Untrusted input
/// never produces an error, only a count here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames received from the guest.
    pub frames_in: u64,
    /// Frames sent to the guest.
    pub frames_out: u64,
    /// Frames dropped as malformed (truncated, bad checksum, bad length).
    pub malformed: u64,
    /// Frames dropped as not for us or of an unsupported protocol.
    pub ignored: u64,
    /// Flows refused because the flow table was full.
    pub flows_refused: u64,
    /// Flows refused by policy (e.g. host loopback disabled).
    pub policy_refused: u64,
    /// Frames dropped because the output queue was full.
    pub out_dropped: u64,
}

/// Opening the stack's own host sockets failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port forward's host socket could not listen.
    #[error("--hostfwd {spec}: cannot listen")]
    Listen {
        /// The forward, as the user wrote it.
        spec: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The user-mode network stack for one guest link.
pub struct Stack {
    cfg: Config,
    counters: Counters,
}

impl Stack {
    /// Creates a stack for a configuration that passed [`Config::validate`].
    pub fn new(cfg: Config, now: Instant) -> Self {
        let _ = now;
        Stack {
            cfg,
            counters: Counters::default(),
        }
    }

    /// Opens the port-forward listeners. Call once, before the first event.
    pub fn start<H: HostIo>(&mut self, host: &mut H) -> Result<(), StartError> {
        let _ = host;
        Ok(())
    }

    /// Handles one Ethernet frame from the guest.
    pub fn handle_frame<H: HostIo>(&mut self, now: Instant, frame: &[u8], host: &mut H) {
        let _ = (now, frame, host);
        self.counters.frames_in += 1;
    }

    /// Handles readiness of one host socket.
    pub fn handle_host<H: HostIo>(&mut self, now: Instant, ev: HostEvent, host: &mut H) {
        let _ = (now, ev, host);
    }

    /// Runs timers due at `now` (retransmissions, idle flow expiry).
    pub fn handle_timeout<H: HostIo>(&mut self, now: Instant, host: &mut H) {
        let _ = (now, host);
    }

    /// Writes the next frame for the guest into `buf` (at least
    /// [`Config::max_frame`] bytes) and returns its length, or `None` when
    /// nothing is pending. TCP payload is peeked from the host socket
    /// straight into `buf`.
    pub fn poll_frame<H: HostIo>(&mut self, now: Instant, buf: &mut [u8], host: &mut H) -> Option<usize> {
        let _ = (now, buf, host);
        None
    }

    /// When [`Stack::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The guest link went away (the QEMU client disconnected): every
    /// guest-facing flow is closed and the next guest starts afresh.
    pub fn reset_link<H: HostIo>(&mut self, host: &mut H) {
        let _ = host;
    }

    /// What the stack has counted so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}
