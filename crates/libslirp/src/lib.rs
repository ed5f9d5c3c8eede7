//! usernet-libslirp: libslirp 4.9's C ABI over usernet's core, linked into
//! a drop-in `libslirp.so.0` so that unmodified QEMU (`-nic user`) and
//! slirp4netns run on usernet.
//!
//! # Theory of operation
//! A `Slirp*` handed to C is a boxed [`slirp::Slirp`]: a
//! [`usernet_core::Stack`], its host [`usernet_host::Sockets`] and the
//! embedder's callbacks. The C layer only translates; every protocol
//! decision is the core's, and every step of driving it is
//! [`usernet_host::drive`]'s, as in the mio event loop:
//! - guest frames arrive through `slirp_input`, frames for the guest leave
//!   through the embedder's `send_packet` ([`slirp`]);
//! - the embedder owns the poll loop: the core's sockets live in an epoll
//!   instance of ours, registered edge-triggered, and `slirp_pollfds_fill`
//!   hands the embedder that one descriptor ([`poll`]);
//! - time is the embedder's `clock_get_ns`, and the stack's next deadline
//!   is one timer of the embedder's ([`timers`]);
//! - no threads of our own, and no panic crosses into C: every entry point
//!   ([`api`]) catches it, reports it through `guest_error` and disables
//!   the instance.
//!
//! Guest forwards to a callback (QEMU's `guestfwd=...-chardev`) are
//! socket pairs between the core and [`chardev`].
//!
//! Migration state is libslirp's format ([`state`]). `slirp/libslirp.h`'s
//! types are mirrored in [`config`] and read only as
//! far as the caller's `SlirpConfig::version` guarantees. `unsafe` lives
//! here, not in the core; each block says why it holds.
#![allow(unsafe_code)]

pub mod api;
mod callbacks;
mod chardev;
pub mod config;
mod info;
mod poll;
mod slirp;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod timers;

pub use api::*;
pub use config::{SlirpCb, SlirpConfig};
pub use slirp::Slirp;
