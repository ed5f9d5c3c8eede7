//! The queue of small frames waiting for the guest.
//!
//! Control traffic (ARP and DHCP replies, SYN-ACKs, resets, ICMP) is built
//! when its cause is handled and waits here until the driver polls. The
//! queue is bounded: when the guest does not read, the newest control frames
//! are dropped and counted, never buffered without limit. Buffers are
//! recycled, so a steady state allocates nothing. Bulk TCP data never comes
//! through here: it is peeked from host sockets straight into the driver's
//! buffer by [`crate::tcp`].
use std::collections::VecDeque;

/// Bounded FIFO of frames for the guest.
pub struct Output {
    frames: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    limit: usize,
    frame_len: usize,
    /// Frames dropped because the queue was full.
    pub dropped: u64,
}

impl Output {
    /// A queue of at most `limit` frames of at most `frame_len` bytes.
    pub fn new(limit: usize, frame_len: usize) -> Self {
        Output {
            frames: VecDeque::new(),
            spare: Vec::new(),
            limit,
            frame_len,
            dropped: 0,
        }
    }

    /// Builds a frame in place with `build` (which returns its length, or
    /// `None` to abandon it) and queues it.
    pub fn push_with(&mut self, build: impl FnOnce(&mut [u8]) -> Option<usize>) {
        if self.frames.len() >= self.limit {
            self.dropped += 1;
            return;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.resize(self.frame_len, 0);
        match build(&mut buf) {
            Some(n) => {
                buf.truncate(n);
                self.frames.push_back(buf);
            }
            None => self.spare.push(buf),
        }
    }

    /// Queues a ready-made frame.
    pub fn push(&mut self, frame: &[u8]) {
        self.push_with(|buf| {
            buf.get_mut(..frame.len())?.copy_from_slice(frame);
            Some(frame.len())
        });
    }

    /// Moves the oldest frame into `buf`; returns its length.
    pub fn pop_into(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.frames.pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        self.spare.push(frame);
        Some(n)
    }

    /// Forgets every queued frame (the guest went away).
    pub fn clear(&mut self) {
        self.spare.extend(self.frames.drain(..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo() {
        let mut out = Output::new(2, 64);
        out.push(b"one");
        out.push(b"two");
        out.push(b"three");
        out.push_with(|_| None);
        assert_eq!(out.dropped, 2, "both pushes onto a full queue count");
        let mut buf = [0u8; 64];
        assert_eq!(out.pop_into(&mut buf), Some(3));
        assert_eq!(&buf[..3], b"one");
        assert_eq!(out.pop_into(&mut buf), Some(3));
        assert_eq!(out.pop_into(&mut buf), None);
    }
}
