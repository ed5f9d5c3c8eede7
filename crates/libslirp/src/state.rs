//! libslirp's migration state (`slirp_state_save` / `slirp_state_load`,
//! format version 4), so that a QEMU guest migrates between real libslirp
//! and usernet both ways.
//!
//! # Theory of operation
//! libslirp saves little: a record per socket of a guest forward to a
//! callback (QEMU's `guestfwd=...-chardev`), each preceded by a non-zero
//! byte, then a zero byte, then the instance's `ip_id` (big-endian `u16`,
//! from version 2) and its 16 BOOTP clients (from version 3): per client a
//! big-endian `u16` "allocated" flag and its 6-byte MAC. Client `i` holds
//! the address `vdhcp_start + i`. Host connections are not migrated at all
//! (the guest's TCP sessions die with the source's sockets, with either
//! implementation).
//!
//! So the state here is the core's bound DHCP leases in those 16 slots
//! (leases past them cannot be expressed and are left out) and an `ip_id`
//! of 0 (the core numbers its datagrams itself). Loading restores the
//! leases, so the guest's renewals keep its address. A socket record can
//! only be for an open connection of a callback guest forward
//! (`crate::chardev`): usernet saves none (such connections die, like
//! host ones) and cannot take over libslirp's TCP state, so loading one
//! fails with `EINVAL`, as libslirp without a matching forward does.
//! Every read is bounded by the format: 1 + 2 + 16 × 8 bytes.
use std::net::Ipv4Addr;

/// `slirp_state_version()`.
pub const VERSION: i32 = 4;
/// libslirp's `NB_BOOTP_CLIENTS`.
pub const BOOTP_CLIENTS: usize = 16;

/// What a state holds that usernet uses: the leased MAC of each BOOTP
/// client slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Slot `i` (address `vdhcp_start + i`): the MAC it is leased to.
    pub clients: [Option<[u8; 6]>; BOOTP_CLIENTS],
}

/// A state could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    /// Saved by a newer format than this one.
    #[error("state version {0} is newer than {VERSION}")]
    Version(i32),
    /// The stream ended early or failed.
    #[error("the state is truncated")]
    Truncated,
    /// A socket of a callback guest forward, whose TCP state usernet
    /// cannot take over.
    #[error("the state holds a guest forward socket")]
    GuestForward,
}

impl LoadError {
    /// The negative errno libslirp returns for it.
    pub fn errno(&self) -> i32 {
        match self {
            LoadError::Truncated => -libc::EIO,
            LoadError::Version(_) | LoadError::GuestForward => -libc::EINVAL,
        }
    }
}

impl State {
    /// The slots of `leases` (address, MAC) given the pool's first
    /// address; leases outside the 16 slots are left out.
    pub fn from_leases(dhcp_start: Ipv4Addr, leases: &[(Ipv4Addr, [u8; 6])]) -> State {
        let mut s = State::default();
        for (ip, mac) in leases {
            let Some(i) = u32::from(*ip).checked_sub(u32::from(dhcp_start)) else {
                continue;
            };
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| s.clients.get_mut(i)) {
                *slot = Some(*mac);
            }
        }
        s
    }

    /// The leases the slots describe.
    pub fn leases(&self, dhcp_start: Ipv4Addr) -> Vec<(Ipv4Addr, [u8; 6])> {
        (0u32..)
            .zip(&self.clients)
            .filter_map(|(i, c)| {
                let ip = u32::from(dhcp_start).checked_add(i)?;
                c.map(|mac| (Ipv4Addr::from(ip), mac))
            })
            .collect()
    }

    /// The bytes `slirp_state_save` writes (version [`VERSION`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + BOOTP_CLIENTS * 8);
        out.push(0); // no guest forward sockets
        out.extend_from_slice(&0u16.to_be_bytes()); // ip_id
        for c in &self.clients {
            out.extend_from_slice(&u16::from(c.is_some()).to_be_bytes());
            out.extend_from_slice(&c.unwrap_or_default());
        }
        out
    }

    /// Reads a state of format `version` through `read`, which fills its
    /// whole buffer or fails.
    pub fn decode(
        version: i32,
        read: &mut dyn FnMut(&mut [u8]) -> bool,
    ) -> Result<State, LoadError> {
        if version > VERSION {
            return Err(LoadError::Version(version));
        }
        let mut take = |buf: &mut [u8]| read(buf).then_some(()).ok_or(LoadError::Truncated);
        let mut marker = [0u8; 1];
        take(&mut marker)?;
        if marker[0] != 0 {
            return Err(LoadError::GuestForward);
        }
        let mut state = State::default();
        if version >= 2 {
            take(&mut [0u8; 2])?; // ip_id: the core numbers its own
        }
        if version >= 3 {
            for slot in &mut state.clients {
                let mut allocated = [0u8; 2];
                let mut mac = [0u8; 6];
                take(&mut allocated)?;
                take(&mut mac)?;
                if allocated != [0, 0] {
                    *slot = Some(mac);
                }
            }
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> impl FnMut(&mut [u8]) -> bool + '_ {
        let mut at = 0;
        move |buf: &mut [u8]| match bytes.get(at..at + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                at += buf.len();
                true
            }
            None => false,
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let start = Ipv4Addr::new(10, 0, 2, 15);
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let leases = [
            (Ipv4Addr::new(10, 0, 2, 16), mac),
            // Outside the 16 slots: left out.
            (Ipv4Addr::new(10, 0, 2, 200), mac),
            (Ipv4Addr::new(10, 0, 2, 2), mac),
        ];
        let s = State::from_leases(start, &leases);
        let bytes = s.encode();
        assert_eq!(bytes.len(), 1 + 2 + 16 * 8);
        assert_eq!(&bytes[..3], &[0, 0, 0]);
        // Slot 1: allocated, then the MAC.
        assert_eq!(
            &bytes[3 + 8..3 + 16],
            &[0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]
        );
        let back = State::decode(4, &mut reader(&bytes)).expect("decode");
        assert_eq!(back, s);
        assert_eq!(back.leases(start), vec![(Ipv4Addr::new(10, 0, 2, 16), mac)]);
    }

    #[test]
    fn older_versions_newer_versions_and_bad_input() {
        // Version 1: the marker only.
        assert_eq!(State::decode(1, &mut reader(&[0])), Ok(State::default()));
        assert_eq!(
            State::decode(5, &mut reader(&[0])),
            Err(LoadError::Version(5))
        );
        assert_eq!(
            State::decode(4, &mut reader(&[42])),
            Err(LoadError::GuestForward)
        );
        assert_eq!(
            State::decode(4, &mut reader(&[0, 0])),
            Err(LoadError::Truncated)
        );
        assert_eq!(
            State::decode(4, &mut reader(&[])),
            Err(LoadError::Truncated)
        );
    }
}
