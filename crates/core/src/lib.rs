//! usernet-core: the sans-IO user-mode network stack.
//!
//! Ethernet frames from the guest go in through [`Stack::handle_frame`]; frames
//! for the guest come out of [`Stack::poll_frame`]. Host sockets are never
//! touched directly: every socket operation goes through the [`HostIo`] trait
//! the driver passes in, and readiness comes back as [`HostEvent`]s through
//! [`Stack::handle_host`]. Time is an argument (`now`), never read here, so a
//! test can drive the whole stack with a virtual clock and fake sockets.
//!
//! The one bend from pure "events in, actions out" is that socket calls are
//! made synchronously through [`HostIo`] rather than queued as commands: TCP
//! acknowledges guest data only once the host socket accepted it, and peeks
//! host data straight into the guest frame buffer (see [`tcp`]), which needs
//! the socket's answer at the moment the decision is made.
#![forbid(unsafe_code)]
// Time is an input: clippy.toml lists the clock reads banned here.
#![cfg_attr(not(test), deny(clippy::disallowed_methods))]

pub mod arp;
pub mod config;
pub mod dhcp;
pub mod dhcpv6;
pub mod dns;
pub mod flow;
pub mod host;
pub mod icmp;
pub mod nat;
pub mod ndp;
pub mod neighbors;
pub mod offload;
pub mod output;
pub mod packet;
pub mod stack;
pub mod stats;
pub mod tcp;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tftp;
pub mod udp;

pub use config::Config;
pub use host::{GuestFwdTarget, HostEvent, HostIo, Token};
pub use stack::{Counters, Stack};
