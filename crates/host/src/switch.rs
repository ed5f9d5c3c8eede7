//! A learning Ethernet switch between several guests and the stack.
//!
//! # Theory of operation
//! Each QEMU client of the stream socket is a *port*; the stack is one more
//! station, reached by its own MAC. The switch is pure: it is shown a frame
//! and where it came from, and returns a [`Verdict`] saying where it goes;
//! the transport ([`crate::stream`]) does the copying. Time is an argument.
//!
//! - *Validation.* A frame shorter than an Ethernet header, or whose source
//!   is a group address (multicast/broadcast), the zero address or the
//!   stack's own MAC, is dropped and counted before anything is learnt, so a
//!   malformed or spoofing frame from one guest never reaches another.
//! - *Learning.* The source MAC of every valid guest frame is recorded
//!   against its port (moving it if it was elsewhere). The table holds at
//!   most [`MAX_MACS`] entries (the least recently seen gives way) and an
//!   entry not refreshed for [`MAC_AGING`] is no longer used, as in IEEE
//!   802.1D.
//! - *Forwarding.* A frame to the stack's MAC goes to the stack only. A
//!   broadcast or multicast frame is flooded to every other port and to the
//!   stack (which serves ARP, NDP and DHCP). A unicast frame to a learnt MAC
//!   goes to that port only (guest to guest, never through the NAT); to an
//!   unknown MAC, it is flooded to the other ports (not the stack, which
//!   answers only its own MAC). Frames from the stack go to the port of
//!   their destination, or to every port when it is a group or unknown
//!   address.
//! - *Isolation* (`--isolate`). Guests reach the stack only: their
//!   broadcasts go to the stack alone and unicast to another guest is
//!   dropped (counted), while the stack still reaches every guest.
//! - *Ports leaving.* [`Switch::remove_port`] forgets the port's MACs and
//!   returns them, so the stack can free what those guests held.
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A port: the transport's index of a connected guest.
pub type PortId = usize;

/// How long a learnt MAC stays usable without being seen (802.1D's
/// default ageing time).
pub const MAC_AGING: Duration = Duration::from_secs(300);

/// The most MACs learnt at once.
pub const MAX_MACS: usize = 1024;

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than an Ethernet header, or a source that no station may
    /// use (group, zero).
    Malformed,
    /// The source is the stack's MAC.
    Spoofed,
    /// Guest to guest with `--isolate`.
    Isolated,
    /// To a MAC learnt on the port it came from.
    SamePort,
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// To the stack only.
    Stack,
    /// To this port only.
    Port(PortId),
    /// To every port but `except`, and to the stack when `stack`.
    Flood {
        /// The port it came from.
        except: Option<PortId>,
        /// Whether the stack gets it too.
        stack: bool,
    },
    /// Nowhere (counted).
    Drop(Dropped),
}

/// Frames the switch dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// [`Dropped::Malformed`].
    pub malformed: u64,
    /// [`Dropped::Spoofed`].
    pub spoofed: u64,
    /// [`Dropped::Isolated`].
    pub isolated: u64,
    /// [`Dropped::SamePort`].
    pub same_port: u64,
}

/// Where a MAC was seen last.
#[derive(Clone, Copy, Debug)]
struct Learnt {
    port: PortId,
    seen: Instant,
}

/// The switch (see the module doc).
#[derive(Debug)]
pub struct Switch {
    /// The stack's own MAC.
    stack_mac: [u8; 6],
    /// `--isolate`.
    isolate: bool,
    table: HashMap<[u8; 6], Learnt>,
    counters: Counters,
}

const HEADER_LEN: usize = 14;

/// Destination and source MAC of a frame at least a header long.
fn macs(frame: &[u8]) -> Option<([u8; 6], [u8; 6])> {
    let header = frame.first_chunk::<HEADER_LEN>()?;
    let mut dst = [0; 6];
    let mut src = [0; 6];
    dst.copy_from_slice(&header[..6]);
    src.copy_from_slice(&header[6..12]);
    Some((dst, src))
}

fn is_group(mac: &[u8]) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    /// A switch in front of the stack at `stack_mac`.
    pub fn new(stack_mac: [u8; 6], isolate: bool) -> Self {
        Switch {
            stack_mac,
            isolate,
            table: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// What was dropped so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn drop(&mut self, why: Dropped) -> Verdict {
        let c = &mut self.counters;
        match why {
            Dropped::Malformed => c.malformed += 1,
            Dropped::Spoofed => c.spoofed += 1,
            Dropped::Isolated => c.isolated += 1,
            Dropped::SamePort => c.same_port += 1,
        }
        Verdict::Drop(why)
    }

    /// The live port of `mac`.
    fn port_of(&self, now: Instant, mac: [u8; 6]) -> Option<PortId> {
        self.table
            .get(&mac)
            .filter(|l| now.saturating_duration_since(l.seen) < MAC_AGING)
            .map(|l| l.port)
    }

    fn learn(&mut self, now: Instant, mac: [u8; 6], port: PortId) {
        if self.table.len() >= MAX_MACS
            && !self.table.contains_key(&mac)
            && let Some(oldest) = self
                .table
                .iter()
                .min_by_key(|(_, l)| l.seen)
                .map(|(m, _)| *m)
        {
            self.table.remove(&oldest);
        }
        self.table.insert(mac, Learnt { port, seen: now });
    }

    /// Where a frame from the guest on `port` goes; learns its source.
    pub fn from_guest(&mut self, now: Instant, port: PortId, frame: &[u8]) -> Verdict {
        let Some((dst, src)) = macs(frame) else {
            return self.drop(Dropped::Malformed);
        };
        if is_group(&src) || src == [0; 6] {
            return self.drop(Dropped::Malformed);
        }
        if src == self.stack_mac {
            return self.drop(Dropped::Spoofed);
        }
        self.learn(now, src, port);
        if dst == self.stack_mac {
            return Verdict::Stack;
        }
        if is_group(&dst) {
            return if self.isolate {
                Verdict::Stack
            } else {
                Verdict::Flood {
                    except: Some(port),
                    stack: true,
                }
            };
        }
        match self.port_of(now, dst) {
            Some(p) if p == port => self.drop(Dropped::SamePort),
            _ if self.isolate => self.drop(Dropped::Isolated),
            Some(p) => Verdict::Port(p),
            None => Verdict::Flood {
                except: Some(port),
                stack: false,
            },
        }
    }

    /// Where a frame from the stack goes.
    pub fn from_stack(&self, now: Instant, frame: &[u8]) -> Verdict {
        let flood = Verdict::Flood {
            except: None,
            stack: false,
        };
        match frame.first_chunk::<6>() {
            Some(dst) if !is_group(dst) => self.port_of(now, *dst).map_or(flood, Verdict::Port),
            _ => flood,
        }
    }

    /// The MAC seen last on `port`: its guest's.
    pub fn mac_of(&self, port: PortId) -> Option<[u8; 6]> {
        self.table
            .iter()
            .filter(|(_, l)| l.port == port)
            .max_by_key(|(_, l)| l.seen)
            .map(|(m, _)| *m)
    }

    /// Forgets `port`'s MACs (its guest left) and returns them.
    pub fn remove_port(&mut self, port: PortId) -> Vec<[u8; 6]> {
        let gone: Vec<[u8; 6]> = self
            .table
            .iter()
            .filter(|(_, l)| l.port == port)
            .map(|(m, _)| *m)
            .collect();
        for m in &gone {
            self.table.remove(m);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];
    const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
    const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];
    const BCAST: [u8; 6] = [0xff; 6];
    const V6_MCAST: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    const FLOOD_A: Verdict = Verdict::Flood {
        except: Some(0),
        stack: true,
    };
    const TO_ALL: Verdict = Verdict::Flood {
        except: None,
        stack: false,
    };

    #[test]
    fn learns_and_switches_unicast_between_ports() {
        let t = Instant::now();
        let mut s = Switch::new(STACK, false);
        // A's broadcast goes everywhere but back; A is learnt on port 0.
        assert_eq!(s.from_guest(t, 0, &frame(BCAST, A)), FLOOD_A);
        // B to A: port 0 only. B is learnt on 1.
        assert_eq!(s.from_guest(t, 1, &frame(A, B)), Verdict::Port(0));
        assert_eq!(s.from_guest(t, 0, &frame(B, A)), Verdict::Port(1));
        assert_eq!(s.mac_of(0), Some(A));
        assert_eq!(s.mac_of(1), Some(B));
        assert_eq!(s.mac_of(2), None);
    }

    #[test]
    fn stack_mac_goes_to_the_stack_and_stack_frames_to_their_port() {
        let t = Instant::now();
        let mut s = Switch::new(STACK, false);
        assert_eq!(s.from_guest(t, 0, &frame(STACK, A)), Verdict::Stack);
        assert_eq!(s.from_stack(t, &frame(A, STACK)), Verdict::Port(0));
        assert_eq!(s.from_stack(t, &frame(B, STACK)), TO_ALL, "unknown: flood");
        assert_eq!(s.from_stack(t, &frame(V6_MCAST, STACK)), TO_ALL);
    }

    #[test]
    fn multicast_and_unknown_unicast_are_flooded() {
        let t = Instant::now();
        let mut s = Switch::new(STACK, false);
        assert_eq!(s.from_guest(t, 0, &frame(V6_MCAST, A)), FLOOD_A);
        let unknown = Verdict::Flood {
            except: Some(0),
            stack: false,
        };
        assert_eq!(s.from_guest(t, 0, &frame(B, A)), unknown);
    }

    #[test]
    fn malformed_and_spoofed_frames_are_dropped_before_learning() {
        let t = Instant::now();
        let mut s = Switch::new(STACK, false);
        let short = &frame(BCAST, A)[..13];
        assert_eq!(s.from_guest(t, 0, short), Verdict::Drop(Dropped::Malformed));
        assert_eq!(
            s.from_guest(t, 0, &frame(B, BCAST)),
            Verdict::Drop(Dropped::Malformed)
        );
        assert_eq!(
            s.from_guest(t, 0, &frame(B, [0; 6])),
            Verdict::Drop(Dropped::Malformed)
        );
        assert_eq!(
            s.from_guest(t, 0, &frame(B, STACK)),
            Verdict::Drop(Dropped::Spoofed)
        );
        assert_eq!(s.mac_of(0), None, "nothing learnt");
        let c = s.counters();
        assert_eq!((c.malformed, c.spoofed), (3, 1));
        assert_eq!(s.from_stack(t, &frame(STACK, A)), TO_ALL);
    }

    #[test]
    fn frames_to_the_same_port_are_dropped() {
        let t = Instant::now();
        let mut s = Switch::new(STACK, false);
        s.from_guest(t, 0, &frame(BCAST, A));
        s.from_guest(t, 0, &frame(BCAST, B));
        assert_eq!(
            s.from_guest(t, 0, &frame(A, B)),
            Verdict::Drop(Dropped::SamePort)
        );
    }

    #[test]
    fn entries_age_out_and_macs_move() {
        let t = Instant::now();
        let mut s = Switch::new(STACK, false);
        s.from_guest(t, 0, &frame(BCAST, A));
        let later = t + MAC_AGING;
        assert_eq!(s.from_stack(later, &frame(A, STACK)), TO_ALL, "aged out");
        // A shows up on port 3 (its QEMU reconnected).
        s.from_guest(later, 3, &frame(BCAST, A));
        assert_eq!(s.from_stack(later, &frame(A, STACK)), Verdict::Port(3));
    }

    #[test]
    fn removing_a_port_forgets_its_macs_only() {
        let t = Instant::now();
        let mut s = Switch::new(STACK, false);
        s.from_guest(t, 0, &frame(BCAST, A));
        s.from_guest(t, 1, &frame(BCAST, B));
        assert_eq!(s.remove_port(0), vec![A]);
        assert_eq!(s.remove_port(0), Vec::<[u8; 6]>::new());
        assert_eq!(s.from_stack(t, &frame(A, STACK)), TO_ALL);
        assert_eq!(s.from_stack(t, &frame(B, STACK)), Verdict::Port(1));
    }

    #[test]
    fn isolation_keeps_guests_apart_but_not_from_the_stack() {
        let t = Instant::now();
        let mut s = Switch::new(STACK, true);
        assert_eq!(s.from_guest(t, 0, &frame(BCAST, A)), Verdict::Stack);
        assert_eq!(s.from_guest(t, 1, &frame(BCAST, B)), Verdict::Stack);
        assert_eq!(
            s.from_guest(t, 1, &frame(A, B)),
            Verdict::Drop(Dropped::Isolated)
        );
        assert_eq!(
            s.from_guest(t, 1, &frame([0x52, 0, 0, 0, 0, 9], B)),
            Verdict::Drop(Dropped::Isolated)
        );
        assert_eq!(s.from_guest(t, 1, &frame(STACK, B)), Verdict::Stack);
        assert_eq!(s.from_stack(t, &frame(A, STACK)), Verdict::Port(0));
        assert_eq!(s.counters().isolated, 2);
    }

    #[test]
    fn the_table_is_bounded() {
        let t = Instant::now();
        let mut s = Switch::new(STACK, false);
        for i in 0..MAX_MACS as u32 + 10 {
            let b = i.to_be_bytes();
            let mac = [0x52, 0, b[0], b[1], b[2], b[3]];
            s.from_guest(
                t + Duration::from_millis(u64::from(i)),
                0,
                &frame(BCAST, mac),
            );
        }
        assert_eq!(s.table.len(), MAX_MACS);
        assert_eq!(
            s.from_stack(t, &frame([0x52, 0, 0, 0, 0, 0], STACK)),
            TO_ALL
        );
    }
}
