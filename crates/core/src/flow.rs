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
//! the caller refuses the flow or first evicts one it can spare. Timers
//! are a min-heap of `(deadline, id)` with at most one live entry per flow
//! (a later deadline is handled when the earlier one fires), so memory stays
//! proportional to the number of flows. The ready queue lists flows that
//! may have frames to send to the guest, each at most once.
//!
//! # Eviction
//! The caller files each flow it could spare under an [`Evict`] class with
//! a time stamp ([`Table::set_eviction`]; the flow's last activity or the
//! start of its current phase); [`Table::pop_eviction`] names the flow to
//! give up: the lowest class first, the oldest stamp first within it. Each
//! class is a FIFO queue of `(id, stamp)`: a flow filed again gets a new
//! entry and its old one goes stale (the slot remembers the current one),
//! so refiling is O(1) and, since stamps are the monotonic `now` of the
//! call, each queue stays in stamp order, an exact LRU. Stale entries are
//! skipped when popped and swept out whenever a queue grows past twice the
//! table's size, so the queues stay O(`max_flows`) however long the stack
//! runs.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use crate::host::Token;
use crate::nat::Proto;
use crate::stats::FlowStats;

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

/// How readily a flow gives up its place in a full table, most readily
/// first (see the module's "Eviction").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evict {
    /// UDP and ICMP echo associations: connectionless, so the peer at most
    /// misses a reply; least recently active first.
    Datagram,
    /// TCP connections that finished and only linger to answer a
    /// retransmitted FIN; their host socket is already closed.
    Finished,
    /// TCP connections not yet established (host connect pending, or the
    /// guest has not completed the handshake): a SYN flood's leftovers.
    Embryonic,
}

const EVICT_CLASSES: usize = 3;

struct Slot<T> {
    generation: u32,
    entry: Option<(Key, T)>,
    scheduled: Option<Instant>,
    queued: bool,
    /// The flow's current eviction entry, if it may be evicted.
    evict: Option<(Evict, Instant)>,
    /// Its traffic counts ([`Table::open_stats`]).
    stats: Option<FlowStats>,
}

/// A bounded table of flows of type `T`.
pub struct Table<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    index: HashMap<Key, FlowId>,
    max: usize,
    timers: BinaryHeap<Reverse<(Instant, FlowId)>>,
    ready: VecDeque<FlowId>,
    /// Eviction candidates by class, oldest stamp first (may hold stale
    /// entries).
    evictable: [VecDeque<(FlowId, Instant)>; EVICT_CLASSES],
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
            evictable: Default::default(),
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
                    evict: None,
                    stats: None,
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
        slot.evict = None;
        slot.stats = None;
        self.free.push(id.index);
        self.index.remove(&key);
        Some((key, value))
    }

    /// Starts counting a flow's traffic (see [`crate::stats`]).
    pub fn open_stats(&mut self, id: FlowId, stats: FlowStats) {
        if let Some(slot) = self.slot_mut(id) {
            slot.stats = Some(stats);
        }
    }

    /// Counts a packet of `bytes` from the guest (`to_host`) or to it.
    #[inline]
    pub fn count(&mut self, id: FlowId, now: Instant, to_host: bool, bytes: usize) {
        if let Some(s) = self.slot_mut(id).and_then(|s| s.stats.as_mut()) {
            s.last = now;
            if to_host {
                s.to_host.add(bytes);
            } else {
                s.to_guest.add(bytes);
            }
        }
    }

    /// Every flow with its key and traffic counts, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (FlowId, &Key, &T, Option<&FlowStats>)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let (key, value) = s.entry.as_ref()?;
            let id = FlowId {
                index: i as u32,
                generation: s.generation,
            };
            Some((id, key, value, s.stats.as_ref()))
        })
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

    /// Files a flow as evictable in `class` since `stamp`, or (`None`) as
    /// not evictable; refiling with the same class and stamp is a no-op.
    pub fn set_eviction(&mut self, id: FlowId, evict: Option<(Evict, Instant)>) {
        let Some(slot) = self.slot_mut(id) else {
            return;
        };
        if slot.evict == evict {
            return;
        }
        slot.evict = evict;
        let Some((class, stamp)) = evict else {
            return;
        };
        let queue = &mut self.evictable[class as usize];
        queue.push_back((id, stamp));
        if queue.len() > 2 * self.max + 16 {
            self.sweep(class);
        }
    }

    /// Whether a queue entry is the flow's current one.
    fn is_current(&self, class: Evict, (id, stamp): (FlowId, Instant)) -> bool {
        self.slot(id)
            .is_some_and(|s| s.evict == Some((class, stamp)))
    }

    /// Drops the stale entries of one class's queue.
    fn sweep(&mut self, class: Evict) {
        let mut queue = std::mem::take(&mut self.evictable[class as usize]);
        queue.retain(|e| self.is_current(class, *e));
        self.evictable[class as usize] = queue;
    }

    /// The flow to evict next (lowest class, oldest stamp), taken off its
    /// queue; `None` if no flow may be evicted. The caller removes it.
    pub fn pop_eviction(&mut self) -> Option<FlowId> {
        for class in [Evict::Datagram, Evict::Finished, Evict::Embryonic] {
            while let Some(entry) = self.evictable[class as usize].pop_front() {
                if self.is_current(class, entry) {
                    if let Some(slot) = self.slot_mut(entry.0) {
                        slot.evict = None;
                    }
                    return Some(entry.0);
                }
            }
        }
        None
    }

    /// Entries in the eviction queues, stale ones included (for tests of
    /// the bound).
    pub fn eviction_entries(&self) -> usize {
        self.evictable.iter().map(VecDeque::len).sum()
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
    fn eviction_is_by_class_then_age_and_queues_stay_bounded() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut t = Table::new(4);
        let a = t.insert(key(1), ()).expect("room");
        let b = t.insert(key(2), ()).expect("room");
        let c = t.insert(key(3), ()).expect("room");
        let d = t.insert(key(4), ()).expect("room");
        t.set_eviction(a, Some((Evict::Embryonic, at(0))));
        t.set_eviction(b, Some((Evict::Datagram, at(1))));
        t.set_eviction(c, Some((Evict::Datagram, at(2))));
        t.set_eviction(d, Some((Evict::Finished, at(0))));
        // b is active again: c is now the least recently active datagram.
        t.set_eviction(b, Some((Evict::Datagram, at(3))));
        assert_eq!(t.pop_eviction(), Some(c));
        t.remove(c);
        assert_eq!(t.pop_eviction(), Some(b));
        t.remove(b);
        // d became established: no longer evictable.
        t.set_eviction(d, None);
        assert_eq!(t.pop_eviction(), Some(a));
        t.remove(a);
        assert_eq!(t.pop_eviction(), None);
        // Refiling a flow over and over keeps the queues O(max).
        for s in 0..10_000 {
            t.set_eviction(d, Some((Evict::Datagram, at(s))));
        }
        assert!(
            t.eviction_entries() <= 2 * 4 + 17,
            "{}",
            t.eviction_entries()
        );
        assert_eq!(t.pop_eviction(), Some(d));
        t.remove(d);
        // So does churn: flows filed and then removed by their owner.
        for s in 0..10_000 {
            let id = t.insert(key(5), ()).expect("room");
            t.set_eviction(id, Some((Evict::Datagram, at(s))));
            t.remove(id);
        }
        assert!(
            t.eviction_entries() <= 2 * 4 + 17,
            "{}",
            t.eviction_entries()
        );
        assert_eq!(t.pop_eviction(), None);
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
