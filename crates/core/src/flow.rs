//! The flow table: every NAT'ed guest connection, by handle and by key.
//!
//! # Theory of operation
//! A flow is one guest conversation (a TCP connection, a UDP or ICMP echo
//! "association") and the host socket that carries it. Flows live in a
//! slab: a [`FlowId`] is an index plus a generation, so a stale id (a late
//! socket event for a flow that has gone) finds nothing instead of a
//! stranger. The id doubles as the host socket's [`Token`]. A hash index
//! maps the guest-side [`Key`] to the id for incoming frames.
//!
//! The table is bounded (`max_flows`): inserting into a full table fails and
//! the caller refuses the flow (or evicts one it can spare first). Timers
//! are a min-heap of `(deadline, id)` with at most one live entry per flow
//! (a later deadline is handled when the earlier one fires), so memory stays
//! proportional to the number of flows. The ready queue lists flows that
//! may have frames to send to the guest, each at most once.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use crate::host::Token;
use crate::nat::Proto;

/// A flow's handle: slab index and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    index: u32,
    generation: u32,
}

/// Tokens at or above this value are not flows (listeners and the like).
pub const FLOW_TOKEN_LIMIT: u64 = 1 << 62;

impl FlowId {
    /// The token of this flow's host socket.
    pub fn token(self) -> Token {
        Token(u64::from(self.generation) << 32 | u64::from(self.index))
    }

    /// The flow a host socket token names, if it names a flow.
    pub fn from_token(token: Token) -> Option<FlowId> {
        (token.0 < FLOW_TOKEN_LIMIT).then_some(FlowId {
            index: token.0 as u32,
            generation: (token.0 >> 32) as u32,
        })
    }
}

/// What identifies a flow from the guest's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Protocol.
    pub proto: Proto,
    /// The guest's address and port (ICMP: the echo identifier).
    pub guest: SocketAddr,
    /// The peer's address and port, as the guest sees it.
    pub remote: SocketAddr,
}

/// The table is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

struct Slot<T> {
    generation: u32,
    entry: Option<(Key, T)>,
    scheduled: Option<Instant>,
    queued: bool,
}

/// A bounded table of flows of type `T`.
pub struct Table<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    index: HashMap<Key, FlowId>,
    max: usize,
    timers: BinaryHeap<Reverse<(Instant, FlowId)>>,
    ready: VecDeque<FlowId>,
}

impl<T> Table<T> {
    /// An empty table holding at most `max` flows.
    pub fn new(max: usize) -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            max,
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
        }
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the table holds no flow.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether one more flow fits.
    pub fn is_full(&self) -> bool {
        self.len() >= self.max
    }

    /// Adds a flow; fails if the table is full or the key is taken.
    pub fn insert(&mut self, key: Key, value: T) -> Result<FlowId, Full> {
        if self.is_full() || self.index.contains_key(&key) {
            return Err(Full);
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                    scheduled: None,
                    queued: false,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.entry = Some((key, value));
        let id = FlowId {
            index,
            generation: slot.generation,
        };
        self.index.insert(key, id);
        Ok(id)
    }

    fn slot(&self, id: FlowId) -> Option<&Slot<T>> {
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation && s.entry.is_some())
    }

    fn slot_mut(&mut self, id: FlowId) -> Option<&mut Slot<T>> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation && s.entry.is_some())
    }

    /// The flow with a given key.
    pub fn lookup(&self, key: &Key) -> Option<FlowId> {
        self.index.get(key).copied()
    }

    /// A flow and its key.
    pub fn get(&self, id: FlowId) -> Option<(&Key, &T)> {
        self.slot(id)?.entry.as_ref().map(|(k, v)| (k, v))
    }

    /// A flow, mutably, and its key.
    pub fn get_mut(&mut self, id: FlowId) -> Option<(&Key, &mut T)> {
        self.slot_mut(id)?.entry.as_mut().map(|(k, v)| (&*k, v))
    }

    /// Gives a flow a new key (a port-forwarded flow learns its peer only
    /// once its socket is accepted); fails if the key is taken.
    pub fn rekey(&mut self, id: FlowId, key: Key) -> Result<(), Full> {
        if self.index.contains_key(&key) {
            return Err(Full);
        }
        let entry = self
            .slot_mut(id)
            .and_then(|s| s.entry.as_mut())
            .ok_or(Full)?;
        let old = std::mem::replace(&mut entry.0, key);
        self.index.remove(&old);
        self.index.insert(key, id);
        Ok(())
    }

    /// Removes a flow; its id goes stale.
    pub fn remove(&mut self, id: FlowId) -> Option<(Key, T)> {
        let slot = self.slot_mut(id)?;
        let (key, value) = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        slot.scheduled = None;
        slot.queued = false;
        self.free.push(id.index);
        self.index.remove(&key);
        Some((key, value))
    }

    /// Every live flow id (for a full sweep, e.g. at link reset).
    pub fn ids(&self) -> Vec<FlowId> {
        self.index.values().copied().collect()
    }

    /// Asks for [`Table::pop_due`] to return `id` once `at` has come.
    pub fn schedule(&mut self, id: FlowId, at: Instant) {
        let Some(slot) = self.slot_mut(id) else {
            return;
        };
        if slot.scheduled.is_some_and(|s| s <= at) {
            return;
        }
        slot.scheduled = Some(at);
        self.timers.push(Reverse((at, id)));
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// A flow whose deadline has come, if any (stale entries are skipped).
    pub fn pop_due(&mut self, now: Instant) -> Option<FlowId> {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                return None;
            }
            self.timers.pop();
            if let Some(slot) = self.slot_mut(id)
                && slot.scheduled == Some(at)
            {
                slot.scheduled = None;
                return Some(id);
            }
        }
        None
    }

    /// Puts a flow on the ready queue (once).
    pub fn mark_ready(&mut self, id: FlowId) {
        if let Some(slot) = self.slot_mut(id)
            && !slot.queued
        {
            slot.queued = true;
            self.ready.push_back(id);
        }
    }

    /// Takes the next flow off the ready queue.
    pub fn next_ready(&mut self) -> Option<FlowId> {
        while let Some(id) = self.ready.pop_front() {
            if let Some(slot) = self.slot_mut(id) {
                slot.queued = false;
                return Some(id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(port: u16) -> Key {
        Key {
            proto: Proto::Udp,
            guest: SocketAddr::from(([10, 0, 2, 15], port)),
            remote: SocketAddr::from(([10, 0, 2, 2], 53)),
        }
    }

    #[test]
    fn bounded_and_stale_ids_find_nothing() {
        let mut t = Table::new(2);
        let a = t.insert(key(1), "a").expect("room");
        let _b = t.insert(key(2), "b").expect("room");
        assert_eq!(t.insert(key(3), "c"), Err(Full));
        assert_eq!(t.remove(a).map(|(_, v)| v), Some("a"));
        assert!(t.get(a).is_none());
        assert_eq!(t.insert(key(2), "dup"), Err(Full), "a key is taken once");
        let c = t.insert(key(3), "c").expect("room again");
        assert_ne!(a, c, "a reused slot has a new generation");
        assert_eq!(FlowId::from_token(c.token()), Some(c));
        assert_eq!(t.lookup(&key(3)), Some(c));
        assert_eq!(t.lookup(&key(1)), None);
    }

    #[test]
    fn timers_fire_once_and_skip_removed() {
        let t0 = Instant::now();
        let mut t = Table::new(8);
        let a = t.insert(key(1), ()).expect("room");
        let b = t.insert(key(2), ()).expect("room");
        t.schedule(a, t0 + Duration::from_secs(2));
        t.schedule(a, t0 + Duration::from_secs(1));
        t.schedule(b, t0 + Duration::from_secs(1));
        t.remove(b);
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + Duration::from_secs(3)), Some(a));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(3)), None);
    }

    #[test]
    fn ready_queue_holds_each_flow_once() {
        let mut t = Table::new(8);
        let a = t.insert(key(1), ()).expect("room");
        t.mark_ready(a);
        t.mark_ready(a);
        assert_eq!(t.next_ready(), Some(a));
        assert_eq!(t.next_ready(), None);
    }
}
