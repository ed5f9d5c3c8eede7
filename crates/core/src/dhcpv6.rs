//! Stateless DHCPv6 (RFC 8415 section 6.1, RFC 3646): DNS servers and the
//! search list for guests that ask with an Information-request.
//!
//! Addresses come from SLAAC ([`crate::ndp`]), so only Information-request
//! is answered; other messages are ignored, as by libslirp. The incoming
//! message is walked by hand, bounded by its own length, for the two
//! options it needs (the transaction id and the client identifier),
//! because the guest's bytes must never reach a decoder that can panic; the
//! reply is built with `dhcproto`.
use dhcproto::v6::{DhcpOption, Message, MessageType};
use dhcproto::{Encodable, Encoder, Name};

use crate::config::Config;

/// DHCPv6 server port.
pub const SERVER_PORT: u16 = 547;
/// DHCPv6 client port.
pub const CLIENT_PORT: u16 = 546;
const INFORMATION_REQUEST: u8 = 11;
const OPT_CLIENT_ID: u16 = 1;
/// Largest client identifier accepted (a DUID is at most 130 bytes).
const MAX_DUID: usize = 130;

/// Our DUID-LL (RFC 8415 11.4): type 3, hardware type 1, our MAC.
fn server_duid(mac: [u8; 6]) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&mac);
    d
}

/// The reply to a guest's DHCPv6 message, if it is an Information-request.
pub fn handle(cfg: &Config, payload: &[u8]) -> Option<Vec<u8>> {
    let (&kind, rest) = payload.split_first()?;
    if kind != INFORMATION_REQUEST || rest.len() < 3 {
        return None;
    }
    let xid = [rest[0], rest[1], rest[2]];
    let mut opts = &rest[3..];
    let mut client_id = None;
    while !opts.is_empty() {
        let head = opts.get(..4)?;
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = opts.get(4..4 + len)?;
        if code == OPT_CLIENT_ID && len <= MAX_DUID {
            client_id = Some(value.to_vec());
        }
        opts = &opts[4 + len..];
    }
    let mut reply = Message::new_with_id(MessageType::Reply, xid);
    let o = reply.opts_mut();
    o.insert(DhcpOption::ServerId(server_duid(cfg.mac)));
    if let Some(id) = client_id {
        o.insert(DhcpOption::ClientId(id));
    }
    o.insert(DhcpOption::DomainNameServers(vec![cfg.ipv6_dns]));
    let search: Vec<Name> = cfg
        .dnssearch
        .iter()
        .filter_map(|d| Name::from_ascii(d).ok())
        .collect();
    if !search.is_empty() {
        o.insert(DhcpOption::DomainSearchList(search));
    }
    let mut out = Vec::new();
    reply.encode(&mut Encoder::new(&mut out)).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::{Decodable, Decoder};

    /// An Information-request as busybox udhcpc6 / dhclient sends it:
    /// xid 0x123456, client id DUID-LL of 52:54:00:12:34:56, ORO (23, 24),
    /// elapsed time 0.
    const INFO_REQ: [u8; 32] = [
        11, 0x12, 0x34, 0x56, // Information-request, xid
        0, 1, 0, 10, 0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56, // client id
        0, 6, 0, 4, 0, 23, 0, 24, // ORO: DNS servers, search list
        0, 8, 0, 2, 0, 0, // elapsed time
    ];

    #[test]
    fn information_request_gets_dns_and_search() {
        let cfg = Config {
            dnssearch: vec!["a.test".into(), "b.test".into()],
            ..Config::default()
        };
        let reply = handle(&cfg, &INFO_REQ).expect("reply");
        assert_eq!(&reply[..4], &[7, 0x12, 0x34, 0x56], "Reply, same xid");
        let msg = Message::decode(&mut Decoder::new(&reply)).expect("decodes");
        let opts: Vec<_> = msg.opts().iter().cloned().collect();
        assert!(opts.contains(&DhcpOption::ClientId(vec![
            0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56
        ])));
        assert!(opts.contains(&DhcpOption::ServerId(vec![
            0, 3, 0, 1, 0x52, 0x55, 10, 0, 2, 2
        ])));
        assert!(opts.contains(&DhcpOption::DomainNameServers(vec![
            "fec0::3".parse().expect("v6")
        ])));
        // Option 24 holds a.test and b.test in DNS wire format.
        let wire: &[u8] = &[1, b'a', 4, b't', b'e', b's', b't', 0];
        assert!(reply.windows(wire.len()).any(|w| w == wire));
    }

    #[test]
    fn other_messages_and_garbage_are_ignored() {
        let cfg = Config::default();
        let mut solicit = INFO_REQ;
        solicit[0] = 1;
        assert_eq!(handle(&cfg, &solicit), None);
        assert_eq!(handle(&cfg, &[]), None);
        assert_eq!(handle(&cfg, &INFO_REQ[..3]), None);
        // An option running past the end.
        assert_eq!(handle(&cfg, &INFO_REQ[..15]), None);
        // A truncated option header after the last option.
        let mut trailing = INFO_REQ.to_vec();
        trailing.extend_from_slice(&[0, 0]);
        assert_eq!(handle(&cfg, &trailing), None);
    }
}
