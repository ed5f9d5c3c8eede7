//! usernet-host: everything around the sans-IO core that touches the
//! operating system.
//!
//! - [`sockets`]: [`Sockets`], the core's `HostIo` over real non-blocking
//!   sockets, registering them through a [`Poller`] it does not own;
//! - [`stream`]: QEMU's `-netdev stream` framing and unix socket server;
//! - [`tap`]: the tap device transport (`usernet ns`/`attach`/slirp4netns);
//! - [`netns`]: opening that tap inside another network namespace, and
//!   starting a command in new namespaces;
//! - [`pcap`]: the `--pcap` capture;
//! - [`drive`]: the steps of one turn of driving a `Stack`, shared by every
//!   driver;
//! - [`guestfwd`] and [`files`]: the host side of guestfwd connections and
//!   of the TFTP server's files;
//! - [`splice`]: TCP forwards between the host's loopback and a
//!   namespace's, carried with `splice(2)`, not through the tap;
//! - [`sandbox`]: no-new-privs and the seccomp filter entered once set-up
//!   is done;
//! - [`limits`]: the descriptor limit and the flow limit it allows;
//! - [`event_loop`]: the mio loop that drives a `Stack` between a guest
//!   [`Transport`] and the host sockets.
//!
//! Only 64-bit targets are supported: the core's 64-bit tokens map 1:1 to
//! mio's `usize` tokens.

pub mod drive;
pub mod event_loop;
pub mod files;
pub mod guestfwd;
pub mod limits;
pub mod netns;
pub mod pcap;
pub mod sandbox;
pub mod sockets;
pub mod splice;
pub mod stream;
pub mod switch;
pub mod tap;

pub use event_loop::{Control, Flow, RunError, Stopped, Transport, run, run_with};
pub use sockets::{Interest, MioPoller, Poller, Sockets};
pub use stream::{Decoder, Encoder, GuestPort, PortStats, StreamServer};

const _: () = assert!(usize::BITS >= 64, "usernet-host needs a 64-bit target");

/// Poller tokens at or above this value belong to the driver (guest
/// transport, listener, signals, API socket); the core's tokens stay below.
pub const DRIVER_TOKEN_BASE: u64 = 1 << 63;
