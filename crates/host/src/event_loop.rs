//! The event loop: one thread that drives a [`Stack`] between a guest
//! [`Transport`] and the host [`Sockets`], on mio (epoll, edge-triggered).
//!
//! # Theory of operation
//! Each turn waits in `epoll_wait` until an event or the stack's next
//! deadline ([`Stack::poll_timeout`]); nothing wakes it otherwise, so an idle
//! usernet uses no CPU. Then, with `now` read once per turn:
//! 1. host socket events become [`HostEvent`]s for [`Stack::handle_host`];
//!    transport events accept clients and mark the guest readable;
//! 2. guest frames are read (until the socket would block, or at most
//!    [`MAX_FRAMES_PER_TURN`]) and handed to [`Stack::handle_frame`];
//! 3. [`Stack::handle_timeout`] runs once the deadline has passed;
//! 4. frames for the guest are polled with [`Stack::poll_frame`] straight
//!    into the transport's output buffer while it has room (at most
//!    [`MAX_FRAMES_PER_TURN`]) and written out. A full buffer stops the
//!    polling (back-pressure) until the guest socket is writable again;
//! 5. guests that left a transport of several (the stream socket's switch)
//!    are reported by MAC to [`Stack::guest_gone`], and a transport holding
//!    frames for room it now has ([`Transport::rx_ready`]) is read again
//!    next turn without waiting.
//!
//! Since polling is edge-triggered, a side cut short by the per-turn bound
//! is remembered and the next wait does not block, so neither direction can
//! starve the other and no readiness is lost. SIGINT and SIGTERM arrive
//! through a self-pipe (`signal-hook-mio`) and end the loop cleanly; the
//! caller's destructors then flush the capture and remove the socket file.
use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Registry};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use usernet_core::Stack;
use usernet_core::offload::Offload;
use usernet_core::stack::StartError;

use crate::DRIVER_TOKEN_BASE;
use crate::drive::{self, FrameSink, host_event};
use crate::pcap::Pcap;
use crate::sockets::{MioPoller, Sockets};

/// The most guest frames read, and the most frames sent to the guest, in
/// one turn of the loop.
pub const MAX_FRAMES_PER_TURN: usize = 256;

/// Token of the signal pipe (transports use the tokens just above
/// [`DRIVER_TOKEN_BASE`]).
const SIGNALS: mio::Token = mio::Token(DRIVER_TOKEN_BASE as usize + 0xff);

/// How [`Transport::read_frames`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Everything available was read.
    Drained,
    /// The frame limit was reached; more may be waiting.
    More,
    /// The guest went away (end of stream or error); another may have
    /// taken its place already ([`Transport::is_up`]).
    Closed,
}

/// A guest link the loop can drive (the QEMU stream socket now, tap later).
///
/// Its descriptors use mio tokens at or above [`DRIVER_TOKEN_BASE`].
pub trait Transport {
    /// Registers the transport's descriptors.
    fn register(&mut self, registry: &Registry) -> io::Result<()>;
    /// Whether `token` is one of the transport's.
    fn owns(&self, token: mio::Token) -> bool;
    /// Handles readiness of one of its descriptors (e.g. accepts a client).
    fn ready(&mut self, registry: &Registry, token: mio::Token) -> io::Result<()>;
    /// Whether a guest is connected.
    fn is_up(&self) -> bool;
    /// What the link offloads for the stack ([`Stack::set_offload`]);
    /// [`Transport::out_slot`] must then hold frames of
    /// [`usernet_core::offload::MAX_OFFLOAD_FRAME`] bytes.
    fn offload(&self) -> Offload {
        Offload::default()
    }
    /// Reads frames and hands each to `f`, at most `max` of them.
    fn read_frames(
        &mut self,
        registry: &Registry,
        max: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> ReadStatus;
    /// A buffer for the next frame to the guest, at least the largest
    /// frame long, or `None` when the output is full or no guest is up.
    fn out_slot(&mut self) -> Option<&mut [u8]>;
    /// Queues the first `len` bytes of the last [`Transport::out_slot`] as a
    /// frame, and returns them.
    fn commit(&mut self, len: usize) -> &[u8];
    /// Writes queued frames; `Ok(true)` when all went out. An error means
    /// the guest went away.
    fn flush(&mut self, registry: &Registry) -> io::Result<bool>;
    /// The MAC of a guest that left since the last call (a transport of
    /// several guests, which never reports [`ReadStatus::Closed`]); the
    /// loop calls [`Stack::guest_gone`] for each.
    fn departed(&mut self) -> Option<[u8; 6]> {
        None
    }
    /// Whether frames read earlier wait in the transport for room that
    /// there is now: read again without waiting for an event.
    fn rx_ready(&mut self) -> bool {
        false
    }
    /// The guests connected now, with their traffic (a transport of
    /// several guests; single-guest ones list none).
    fn guests(&self) -> Vec<crate::stream::GuestPort> {
        Vec::new()
    }
}

/// What a [`Control`] wants after handling an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep serving.
    Continue,
    /// End the loop ([`Stopped::Control`]).
    Stop,
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// SIGINT or SIGTERM (the number).
    Signal(i32),
    /// A [`Control`] returned [`Flow::Stop`].
    Control,
}

/// A descriptor of the driver's own served by the loop (API socket, exit
/// fd, child watcher). Its tokens are at or above [`DRIVER_TOKEN_BASE`] and
/// distinct from the transport's (which use the first 0x100).
pub trait Control {
    /// Registers the control's descriptors.
    fn register(&mut self, registry: &Registry) -> io::Result<()>;
    /// Called once the transport is registered and the stack started,
    /// before the first event is handled, in the order of the controls: the
    /// network is ready (e.g. for slirp4netns's `--ready-fd`), and set-up
    /// is done (e.g. to enter the [`crate::sandbox`]). An error ends the
    /// loop before it serves anything ([`RunError::Started`]).
    fn started(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Whether `token` is one of the control's.
    fn owns(&self, token: mio::Token) -> bool;
    /// Handles readiness of one of its descriptors.
    fn ready(
        &mut self,
        registry: &Registry,
        token: mio::Token,
        stack: &mut Stack,
        sockets: &mut Sockets<MioPoller>,
    ) -> Flow;
}

/// The event loop could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Creating or waiting on the poller failed.
    #[error("event loop")]
    Poll(#[source] io::Error),
    /// Installing the SIGINT/SIGTERM handlers failed.
    #[error("signal handlers")]
    Signals(#[source] io::Error),
    /// The transport could not be registered or accept clients.
    #[error("guest transport")]
    Transport(#[source] io::Error),
    /// A driver control could not be registered.
    #[error("control descriptor")]
    Control(#[source] io::Error),
    /// The stack could not open its own sockets (port forwards).
    #[error(transparent)]
    Start(#[from] StartError),
    /// A driver control's [`Control::started`] failed (e.g. the sandbox).
    #[error("cannot start serving")]
    Started(#[source] io::Error),
}

/// Every transport is where the loop polls the stack's frames to.
impl<T: Transport + ?Sized> FrameSink for T {
    fn slot(&mut self) -> Option<&mut [u8]> {
        self.out_slot()
    }

    fn push(&mut self, len: usize) -> &[u8] {
        self.commit(len)
    }
}

/// Appends `frame` to the capture; a failing capture is reported and
/// closed, never fatal.
fn capture(pcap: &mut Option<Pcap>, frame: &[u8]) {
    if let Some(p) = pcap
        && let Err(e) = p.write(frame)
    {
        tracing::warn!("pcap: {e}; capture stopped");
        *pcap = None;
    }
}

/// Runs `stack` between `transport` and host sockets until SIGINT or
/// SIGTERM. Calls [`Stack::start`] first; its failure is returned.
pub fn run<T: Transport>(
    stack: &mut Stack,
    transport: &mut T,
    pcap: Option<Pcap>,
) -> Result<(), RunError> {
    let sockets = |registry| Sockets::new(MioPoller::new(registry));
    run_with(stack, transport, pcap, sockets, &mut []).map(|_| ())
}

/// [`run`] with the driver's [`Control`]s, and host sockets made by
/// `sockets` from a registry (e.g. to set an outbound address). Returns
/// why it stopped.
pub fn run_with<T: Transport>(
    stack: &mut Stack,
    transport: &mut T,
    mut pcap: Option<Pcap>,
    sockets: impl FnOnce(Registry) -> Sockets<MioPoller>,
    controls: &mut [&mut dyn Control],
) -> Result<Stopped, RunError> {
    let poll = Poll::new().map_err(RunError::Poll)?;
    let registry = poll.registry().try_clone().map_err(RunError::Poll)?;
    let mut sockets = sockets(registry.try_clone().map_err(RunError::Poll)?);
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(RunError::Signals)?;
    registry
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(RunError::Signals)?;
    transport.register(&registry).map_err(RunError::Transport)?;
    for c in controls.iter_mut() {
        c.register(&registry).map_err(RunError::Control)?;
    }
    stack.set_offload(transport.offload());
    stack.start(&mut sockets)?;
    for c in controls.iter_mut() {
        c.started().map_err(RunError::Started)?;
    }
    // Everything the loop needs is made before the controls' `started`:
    // that is where the sandbox begins, after which even a dup is denied.
    let wake = Wake {
        poll,
        registry,
        signals,
    };
    let stopped = serve(stack, transport, &mut pcap, &mut sockets, controls, wake);
    // One line a test or a user can check: what the stack saw and dropped.
    tracing::info!(counters = ?stack.counters(), "stack stopped");
    stopped
}

/// What wakes the loop: the poll, a handle to register with it, and the
/// signals it watches.
struct Wake {
    poll: Poll,
    registry: Registry,
    signals: Signals,
}

/// The loop itself (see the module doc).
fn serve<T: Transport>(
    stack: &mut Stack,
    transport: &mut T,
    pcap: &mut Option<Pcap>,
    sockets: &mut Sockets<MioPoller>,
    controls: &mut [&mut dyn Control],
    wake: Wake,
) -> Result<Stopped, RunError> {
    let Wake {
        mut poll,
        registry,
        mut signals,
    } = wake;

    let mut events = Events::with_capacity(1024);
    // The guest may have more to read / the stack more to send than one
    // turn took: do not block in the next wait.
    let mut rx_pending = false;
    let mut tx_pending = false;
    loop {
        let timeout = if rx_pending || tx_pending {
            Some(Duration::ZERO)
        } else {
            stack
                .poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()))
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RunError::Poll(e)),
        }
        let now = Instant::now();

        for ev in events.iter() {
            let token = ev.token();
            if token == SIGNALS {
                if let Some(sig) = signals.pending().next() {
                    tracing::info!("signal {sig}: exiting");
                    return Ok(Stopped::Signal(sig));
                }
            } else if let Some(c) = controls.iter_mut().find(|c| c.owns(token)) {
                if c.ready(&registry, token, stack, sockets) == Flow::Stop {
                    return Ok(Stopped::Control);
                }
            } else if transport.owns(token) {
                if let Err(e) = transport.ready(&registry, token) {
                    // e.g. EMFILE: the listener stays, the next event retries.
                    tracing::warn!("guest transport: {e}");
                }
                // Reading is cheap to try: it stops at WouldBlock.
                rx_pending = true;
            } else {
                stack.handle_host(now, host_event(ev), sockets);
            }
        }

        if rx_pending {
            let status = transport.read_frames(&registry, MAX_FRAMES_PER_TURN, &mut |frame| {
                tracing::debug!(len = frame.len(), "frame from guest");
                capture(pcap, frame);
                stack.handle_frame(now, frame, sockets);
            });
            rx_pending = status == ReadStatus::More;
            if status == ReadStatus::Closed {
                stack.reset_link(sockets);
                // A waiting client may have been taken on.
                rx_pending = transport.is_up();
            }
        }

        drive::run_timers(stack, now, sockets);

        let mut sent = 0;
        while transport.is_up() {
            let polled = drive::poll_frames(
                stack,
                now,
                sockets,
                transport,
                MAX_FRAMES_PER_TURN - sent,
                &mut |frame| {
                    tracing::debug!(len = frame.len(), "frame to guest");
                    capture(pcap, frame);
                },
            );
            sent += polled.sent;
            let full = polled.full;
            match transport.flush(&registry) {
                // Room again and the stack may have more: go on polling.
                Ok(true) if full && sent < MAX_FRAMES_PER_TURN => {}
                Ok(_) => break,
                Err(_) => {
                    stack.reset_link(sockets);
                    rx_pending = transport.is_up();
                    break;
                }
            }
        }
        tx_pending = sent >= MAX_FRAMES_PER_TURN;
        while let Some(mac) = transport.departed() {
            stack.guest_gone(mac, sockets);
        }
        rx_pending |= transport.rx_ready();

        if let Some(p) = pcap
            && let Err(e) = p.flush()
        {
            tracing::warn!("pcap: {e}; capture stopped");
            *pcap = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::StreamServer;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use usernet_core::Config;

    /// The loop accepts a client, survives its disconnect, takes the next
    /// one, and exits on SIGTERM leaving no socket file.
    #[test]
    fn serves_clients_and_exits_on_sigterm() {
        let dir = std::env::temp_dir().join(format!("usernet-loop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("s.sock");
        let cfg = Config::default();
        let mut server = StreamServer::bind(&path, cfg.max_frame()).expect("bind");
        let pcap_path = dir.join("c.pcap");
        let pcap = Pcap::create(&pcap_path).expect("pcap");
        let t = std::thread::spawn(move || {
            let mut stack = Stack::new(cfg, Instant::now());
            run(&mut stack, &mut server, Some(pcap)).map_err(|e| e.to_string())
        });
        for _ in 0..2 {
            let mut c = UnixStream::connect(&path).expect("connect");
            let mut frame = vec![0u8; 64];
            frame[..6].fill(0xff);
            frame[6..12].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
            c.write_all(&64u32.to_be_bytes()).expect("write");
            c.write_all(&frame).expect("write");
            // An oversized length is skipped, not fatal.
            c.write_all(&100_000u32.to_be_bytes()).expect("write");
            c.write_all(&vec![0; 100_000]).expect("write");
            c.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let mut b = [0u8; 1];
            assert!(c.read(&mut b).is_err(), "the stub stack sends nothing");
        }
        // Both frames reach the capture.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let len = std::fs::metadata(&pcap_path).expect("pcap").len();
            if len == 24 + 2 * (16 + 64) {
                break;
            }
            assert!(Instant::now() < deadline, "pcap has {len} bytes");
            std::thread::sleep(Duration::from_millis(10));
        }
        signal_hook::low_level::raise(SIGTERM).expect("raise");
        assert_eq!(t.join().expect("thread"), Ok(()));
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
