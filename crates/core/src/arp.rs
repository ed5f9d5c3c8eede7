//! ARP (RFC 826): answering the guest for the stack's addresses.
//!
//! As libslirp does, the stack answers for every address of the virtual
//! network except the guest's own (the gateway, the DNS forwarder, and any
//! other address, so the guest's probes of unused addresses resolve to the
//! stack and then get refused at the IP layer). Gratuitous ARP and duplicate
//! address probes (sender 0.0.0.0 or sender = target) are not answered, so
//! the guest never sees its own address as taken. Requests from the guest
//! teach the stack the guest's MAC and address.
use std::net::Ipv4Addr;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr,
};

use crate::config::Config;

/// Length of an ARP frame over Ethernet.
pub const FRAME_LEN: usize = 14 + 28;

/// What an incoming ARP packet asked of the stack.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answer with this frame (the sender's MAC and address are learnt).
    Reply([u8; FRAME_LEN], EthernetAddress, Ipv4Addr),
    /// A valid ARP packet that needs no reply; its sender is learnt if it
    /// has an address.
    Learn(EthernetAddress, Ipv4Addr),
    /// Nothing to do (not for us, or a probe).
    Ignore,
    /// Not a valid ARP packet.
    Malformed,
}

/// Handles the ARP payload of a guest frame.
pub fn handle(cfg: &Config, payload: &[u8]) -> Outcome {
    let Ok(repr) = ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) else {
        return Outcome::Malformed;
    };
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr: smac,
        source_protocol_addr: sip,
        target_protocol_addr: tip,
        ..
    } = repr
    else {
        return Outcome::Ignore;
    };
    let probe = sip.is_unspecified() || sip == tip;
    if operation != ArpOperation::Request || probe {
        return if sip.is_unspecified() {
            Outcome::Ignore
        } else {
            Outcome::Learn(smac, sip)
        };
    }
    if !cfg.net.contains(tip) || tip == cfg.net.network() || tip == cfg.net.broadcast() {
        return Outcome::Learn(smac, sip);
    }
    let mut frame = [0u8; FRAME_LEN];
    let mymac = EthernetAddress(cfg.mac);
    EthernetRepr {
        src_addr: mymac,
        dst_addr: smac,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..14]));
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: mymac,
        source_protocol_addr: tip,
        target_hardware_addr: smac,
        target_protocol_addr: sip,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut frame[14..]));
    Outcome::Reply(frame, smac, sip)
}

/// The address a reply of [`handle`] answers for (its sender protocol
/// address).
pub fn target_of(reply: &[u8; FRAME_LEN]) -> Ipv4Addr {
    let at = 14 + 14;
    Ipv4Addr::new(reply[at], reply[at + 1], reply[at + 2], reply[at + 3])
}

/// An ARP request from the stack asking for `target`'s MAC (used when a
/// port forward must reach a guest whose MAC is not known yet).
pub fn request(cfg: &Config, target: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut frame = [0u8; FRAME_LEN];
    let mymac = EthernetAddress(cfg.mac);
    EthernetRepr {
        src_addr: mymac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..14]));
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mymac,
        source_protocol_addr: cfg.host,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut frame[14..]));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request from 52:54:00:12:34:56 (10.0.2.15) for 10.0.2.2, as Linux
    /// sends it (ARP payload only).
    const WHO_HAS_GW: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // eth/ipv4, request
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 0, 2, 15, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 2, 2, // target
    ];

    #[test]
    fn answers_for_the_gateway() {
        let cfg = Config::default();
        let Outcome::Reply(frame, mac, ip) = handle(&cfg, &WHO_HAS_GW) else {
            panic!("expected a reply");
        };
        assert_eq!(mac, EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(ip, Ipv4Addr::new(10, 0, 2, 15));
        // Ethernet: to the guest, from us, ARP.
        assert_eq!(&frame[..6], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(&frame[6..12], &cfg.mac);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        // Reply opcode, sender = us at 10.0.2.2, target = the guest.
        assert_eq!(&frame[20..22], &[0, 2]);
        assert_eq!(&frame[22..28], &cfg.mac);
        assert_eq!(&frame[28..32], &[10, 0, 2, 2]);
        assert_eq!(&frame[38..42], &[10, 0, 2, 15]);
        assert_eq!(target_of(&frame), Ipv4Addr::new(10, 0, 2, 2));
    }

    #[test]
    fn probes_and_foreign_targets_are_not_answered() {
        let cfg = Config::default();
        let mut probe = WHO_HAS_GW;
        probe[14..18].copy_from_slice(&[0, 0, 0, 0]);
        probe[24..28].copy_from_slice(&[10, 0, 2, 15]);
        assert_eq!(handle(&cfg, &probe), Outcome::Ignore);
        let mut gratuitous = WHO_HAS_GW;
        gratuitous[24..28].copy_from_slice(&[10, 0, 2, 15]);
        assert!(matches!(handle(&cfg, &gratuitous), Outcome::Learn(..)));
        let mut foreign = WHO_HAS_GW;
        foreign[24..28].copy_from_slice(&[192, 168, 1, 1]);
        assert!(matches!(handle(&cfg, &foreign), Outcome::Learn(..)));
    }

    #[test]
    fn truncated_is_malformed() {
        assert_eq!(
            handle(&Config::default(), &WHO_HAS_GW[..20]),
            Outcome::Malformed
        );
    }

    #[test]
    fn request_asks_for_target() {
        let f = request(&Config::default(), Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[38..42], &[10, 0, 2, 15]);
    }
}
