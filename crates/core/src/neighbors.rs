//! The guests on the link: which MAC answers for which guest address.
//!
//! # Theory of operation
//! With one guest the stack could send every frame to "the" guest MAC; on a
//! virtual switch (several QEMU guests on one socket) a frame for a flow must
//! go to the MAC of the guest that owns the flow's guest address. This table
//! is that neighbour cache, learnt only from what guests say about
//! themselves: the source of their ARP packets and IP packets, the target of
//! their duplicate address detection probes, and the address a DHCP ACK
//! leases to a MAC. A later sighting of an address under another MAC moves
//! it (a guest reconnected with a new MAC, or took over an address).
//!
//! It is bounded: at most [`MAX_NEIGHBORS`] entries; when full, the entry
//! seen least recently gives way. Entries do not expire on their own: a
//! guest leaving the switch is told by the driver
//! ([`crate::Stack::guest_gone`]), which forgets its entries.
use std::net::IpAddr;
use std::time::Instant;

/// The most addresses remembered at once (a few per guest, for 16 guests
/// by default, with ample room for more).
pub const MAX_NEIGHBORS: usize = 256;

/// One address and the guest MAC that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    ip: IpAddr,
    mac: [u8; 6],
    /// When the guest last used the address.
    seen: Instant,
}

/// The bounded neighbour table (see the module doc).
#[derive(Debug, Default)]
pub struct Neighbors {
    /// Few entries: a linear scan beats hashing at this size.
    entries: Vec<Entry>,
}

impl Neighbors {
    /// `mac` uses `ip` at `now`.
    pub fn learn(&mut self, ip: IpAddr, mac: [u8; 6], now: Instant) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.ip == ip) {
            e.mac = mac;
            e.seen = now;
            return;
        }
        if self.entries.len() >= MAX_NEIGHBORS
            && let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].seen)
        {
            self.entries.swap_remove(oldest);
        }
        self.entries.push(Entry { ip, mac, seen: now });
    }

    /// The MAC that owns `ip`, if known.
    pub fn mac_of(&self, ip: IpAddr) -> Option<[u8; 6]> {
        self.entries.iter().find(|e| e.ip == ip).map(|e| e.mac)
    }

    /// The addresses `mac` owns, most recently used first.
    pub fn addrs_of(&self, mac: [u8; 6]) -> Vec<IpAddr> {
        let mut mine: Vec<&Entry> = self.entries.iter().filter(|e| e.mac == mac).collect();
        mine.sort_by_key(|e| std::cmp::Reverse(e.seen));
        mine.into_iter().map(|e| e.ip).collect()
    }

    /// Forgets every address of `mac`; returns them.
    pub fn forget(&mut self, mac: [u8; 6]) -> Vec<IpAddr> {
        let gone = self.addrs_of(mac);
        self.entries.retain(|e| e.mac != mac);
        gone
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
    const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 2, last])
    }

    #[test]
    fn learns_moves_and_forgets() {
        let t = Instant::now();
        let mut n = Neighbors::default();
        n.learn(ip(15), A, t);
        n.learn(ip(16), B, t);
        assert_eq!(n.mac_of(ip(15)), Some(A));
        assert_eq!(n.mac_of(ip(16)), Some(B));
        assert_eq!(n.mac_of(ip(17)), None);
        // The address moves to whoever uses it last.
        n.learn(ip(16), A, t + Duration::from_secs(1));
        assert_eq!(n.addrs_of(A), vec![ip(16), ip(15)]);
        assert_eq!(n.forget(A), vec![ip(16), ip(15)]);
        assert!(n.is_empty());
    }

    #[test]
    fn bounded_by_evicting_the_least_recently_seen() {
        let t = Instant::now();
        let mut n = Neighbors::default();
        for i in 0..MAX_NEIGHBORS as u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            n.learn(addr, A, t + Duration::from_millis(u64::from(i)));
        }
        n.learn(ip(15), B, t + Duration::from_secs(60));
        assert_eq!(n.entries.len(), MAX_NEIGHBORS);
        assert_eq!(n.mac_of(IpAddr::from([10, 0, 0, 0])), None, "oldest gone");
        assert_eq!(n.mac_of(ip(15)), Some(B));
    }
}
