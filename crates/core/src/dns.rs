//! Pure helpers for the DNS forwarder (RFC 1035; AAAA records from
//! RFC 3596): which upstream resolvers to use, which queries to answer
//! locally, and the answer when no upstream does.
//!
//! The forwarder itself (a UDP flow from the guest to [`Config::dns`] port 53
//! relayed to an upstream) lives in the stack; these functions only decide
//! and build messages, so they can be tested on bytes alone:
//! - [`parse_resolv_conf`] turns `/etc/resolv.conf` text into upstream
//!   addresses (the driver reads the file);
//! - [`local_answer`] answers names configured with `--dns-host` (see
//!   [`DnsHost`]) without asking upstream;
//! - [`servfail`] builds the SERVFAIL reply for a query no upstream answered.
//!
//! Messages are parsed and built with `hickory-proto`, which dhcproto
//! already pulls in (for option 119's names), so it costs no new crate.
//! Every input is guest data: anything that does not parse as a standard
//! query yields `None` and the caller forwards or drops it.
//!
//! [`Config::dns`]: crate::config::Config::dns
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::config::DnsHost;

/// The most upstream resolvers taken from a resolv.conf (glibc uses 3).
pub const MAX_UPSTREAMS: usize = 8;
/// TTL of local answers, in seconds: short, so a changed `--dns-host` shows
/// up quickly in the guest's cache.
pub const LOCAL_TTL: u32 = 60;
/// The most records in one local answer; with 8 AAAA records (28 bytes each,
/// names compressed) and a maximal question the reply still fits in the
/// 512 bytes every DNS client accepts over UDP.
pub const MAX_LOCAL_ANSWERS: usize = 8;

/// Upstream resolvers named by an `/etc/resolv.conf` text: the `nameserver`
/// lines, IPv4 and IPv6, port 53, in order, without duplicates, at most
/// [`MAX_UPSTREAMS`]. A `%scope` suffix is stripped, except that a numeric
/// scope becomes the address's scope id (a named one would need a host
/// lookup). Comments (`#`, `;`) and other lines are ignored.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        let (addr, scope) = word.split_once('%').unwrap_or((word, ""));
        let sa = match addr.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => v6_with_scope(v6, scope),
            Ok(ip) => SocketAddr::new(ip, 53),
            Err(_) => continue,
        };
        if !out.contains(&sa) {
            out.push(sa);
        }
        if out.len() == MAX_UPSTREAMS {
            break;
        }
    }
    out
}

/// `[v6%scope]:53`, with a numeric scope kept as the scope id.
fn v6_with_scope(v6: Ipv6Addr, scope: &str) -> SocketAddr {
    SocketAddrV6::new(v6, 53, 0, scope.parse().unwrap_or(0)).into()
}

/// Parses a DNS message from the guest if it is a query (not a response).
fn parse_query(query: &[u8]) -> Option<Message> {
    let msg = Message::from_vec(query).ok()?;
    (msg.metadata.message_type == MessageType::Query).then_some(msg)
}

/// The response skeleton for `query`: same id, opcode, RD bit and question;
/// RA set; an OPT record if the query had one (RFC 6891 §6.1.1).
fn response_to(query: &Message, code: ResponseCode) -> Message {
    let mut r = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    r.metadata.recursion_desired = query.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.metadata.checking_disabled = query.metadata.checking_disabled;
    r.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        r.set_edns(Edns::new());
    }
    r
}

/// If the query (a DNS message the guest sent over UDP) asks for a name in
/// `hosts` (case-insensitive, trailing dot ignored), the full reply: A
/// records for IPv4 entries when QTYPE is A, AAAA for IPv6 entries when it
/// is AAAA, both for ANY; a known name asked for another type gets NOERROR
/// with no answers. Otherwise (or if malformed) `None`: forward it.
pub fn local_answer(query: &[u8], hosts: &[DnsHost]) -> Option<Vec<u8>> {
    let msg = parse_query(query)?;
    // Only standard queries with one question of class IN are ours to answer.
    let [q] = msg.queries.as_slice() else {
        return None;
    };
    if msg.metadata.op_code != OpCode::Query || q.query_class() != DNSClass::IN {
        return None;
    }
    let known: Vec<IpAddr> = hosts
        .iter()
        .filter(|h| Name::from_ascii(&h.name).is_ok_and(|n| n.eq_ignore_root(q.name())))
        .map(|h| h.addr)
        .collect();
    if known.is_empty() {
        return None;
    }
    let q = q.clone();
    let qtype = q.query_type();
    let mut r = response_to(&msg, ResponseCode::NoError);
    r.metadata.authoritative = true;
    let records = known.iter().filter_map(|addr| {
        let rdata = match (*addr, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
            _ => return None,
        };
        Some(Record::from_rdata(q.name().clone(), LOCAL_TTL, rdata))
    });
    r.add_answers(records.take(MAX_LOCAL_ANSWERS).collect::<Vec<_>>());
    r.to_vec().ok()
}

/// A SERVFAIL reply to a query (same id and question), for when no upstream
/// answers; `None` if the query is malformed.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    error_reply(query, ResponseCode::ServFail)
}

/// A REFUSED reply to a query, for when the egress rules keep it from the
/// upstream; `None` if the query is malformed.
pub fn refused(query: &[u8]) -> Option<Vec<u8>> {
    error_reply(query, ResponseCode::Refused)
}

/// A reply with no answers and `code` (same id and question).
fn error_reply(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let msg = parse_query(query)?;
    response_to(&msg, code).to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
            .collect()
    }

    /// "host.internal" as a DNS name, then QTYPE and QCLASS IN.
    fn question(qtype: &str) -> String {
        format!("04 686f7374 08 696e7465726e616c 00 {qtype} 0001")
    }

    /// A query as `dig +noedns host.internal A` sends it: id 0x1a2b, RD.
    fn a_query() -> Vec<u8> {
        hex(&format!(
            "1a2b 0100 0001 0000 0000 0000 {}",
            question("0001")
        ))
    }

    fn query(qtype: &str) -> Vec<u8> {
        hex(&format!(
            "1a2b 0100 0001 0000 0000 0000 {}",
            question(qtype)
        ))
    }

    fn hosts() -> Vec<DnsHost> {
        [
            "Host.Internal.=10.0.2.9",
            "host.internal=fd00::9",
            "other.test=10.0.2.10",
        ]
        .iter()
        .map(|s| s.parse().expect("valid"))
        .collect()
    }

    fn decode(reply: &[u8]) -> Message {
        Message::from_vec(reply).expect("reply parses")
    }

    #[test]
    fn a_query_is_answered_locally() {
        let reply = local_answer(&a_query(), &hosts()).expect("local");
        let want = hex(&format!(
            "1a2b 8580 0001 0001 0000 0000 {} c00c 0001 0001 0000003c 0004 0a000209",
            question("0001")
        ));
        assert_eq!(reply, want);
    }

    #[test]
    fn aaaa_query_gets_the_ipv6_entry() {
        let reply = local_answer(&query("001c"), &hosts()).expect("local");
        let m = decode(&reply);
        assert_eq!(m.metadata.id, 0x1a2b);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        let want: Ipv6Addr = "fd00::9".parse().expect("v6");
        assert_eq!(m.answers[0].data, RData::AAAA(AAAA(want)));
        assert_eq!(m.answers[0].ttl, LOCAL_TTL);
        // The record bytes: type 28, class IN, TTL 60, 16 bytes of address.
        assert!(reply.ends_with(&hex(
            "c00c 001c 0001 0000003c 0010 fd000000000000000000000000000009"
        )));
    }

    #[test]
    fn any_gets_both_and_other_types_get_nodata() {
        let m = decode(&local_answer(&query("00ff"), &hosts()).expect("local"));
        assert_eq!(m.answers.len(), 2);
        let m = decode(&local_answer(&query("000f"), &hosts()).expect("local"));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
    }

    #[test]
    fn names_match_case_insensitively() {
        let mixed =
            hex("1a2b 0100 0001 0000 0000 0000 04 486f5354 08 494e7465724e414c 00 0001 0001");
        let m = decode(&local_answer(&mixed, &hosts()).expect("local"));
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 0, 2, 9))));
        // The question is echoed as the guest wrote it.
        assert_eq!(
            &decode(&local_answer(&mixed, &hosts()).expect("local")).queries[0]
                .name()
                .to_ascii(),
            "HoST.INterNAL."
        );
    }

    #[test]
    fn unknown_names_are_forwarded() {
        let q = hex("1a2b 0100 0001 0000 0000 0000 07 6578616d706c65 03 636f6d 00 0001 0001");
        assert_eq!(local_answer(&q, &hosts()), None);
        assert_eq!(local_answer(&a_query(), &[]), None);
        // A suffix or prefix of a known name is not the name.
        let q =
            hex("1a2b 0100 0001 0000 0000 0000 01 78 04 686f7374 08 696e7465726e616c 00 0001 0001");
        assert_eq!(local_answer(&q, &hosts()), None);
        // Class CH.
        let q = hex(&format!(
            "1a2b 0100 0001 0000 0000 0000 {}",
            question("0001").replace("0001 0001", "0001 0003")
        ));
        assert_eq!(local_answer(&q, &hosts()), None);
    }

    #[test]
    fn edns_queries_get_an_opt_record() {
        // dig host.internal: RD+AD, one OPT record (UDP size 1232).
        let q = hex(&format!(
            "1a2b 0120 0001 0000 0000 0001 {} 00 0029 04d0 00000000 0000",
            question("0001")
        ));
        let reply = local_answer(&q, &hosts()).expect("local");
        let m = decode(&reply);
        assert!(m.edns.is_some());
        assert_eq!(m.answers.len(), 1);
        assert_eq!(&reply[10..12], &[0, 1], "ARCOUNT");
    }

    #[test]
    fn malformed_queries_are_none() {
        let q = a_query();
        for len in 0..q.len() {
            assert_eq!(
                local_answer(&q[..len], &hosts()),
                None,
                "truncated to {len}"
            );
            assert_eq!(servfail(&q[..len]), None, "truncated to {len}");
        }
        // A response is not a query.
        let mut r = q.clone();
        r[2] |= 0x80;
        assert_eq!(local_answer(&r, &hosts()), None);
        assert_eq!(servfail(&r), None);
        // A compression pointer loop.
        let q = hex("1a2b 0100 0001 0000 0000 0000 c00c 0001 0001");
        assert_eq!(local_answer(&q, &hosts()), None);
        let mut x: u32 = 7;
        for _ in 0..2000 {
            let mut m = a_query()[..12].to_vec();
            for _ in 0..(x % 48) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                m.push((x >> 16) as u8);
            }
            let _ = local_answer(&m, &hosts());
            let _ = servfail(&m);
        }
    }

    #[test]
    fn servfail_echoes_id_and_question() {
        let reply = servfail(&a_query()).expect("servfail");
        let want = hex(&format!(
            "1a2b 8182 0001 0000 0000 0000 {}",
            question("0001")
        ));
        assert_eq!(reply, want);
    }

    #[test]
    fn resolv_conf() {
        let text = "# Generated by NetworkManager\n\
                    search example.test\n\
                    nameserver 127.0.0.53\n\
                    ; nameserver 192.0.2.1\n\
                    nameserver\t192.0.2.2   # office\n\
                    nameserver fe80::1%eth0\n\
                    nameserver fe80::2%3\n\
                    nameserver 2001:db8::53\n\
                    nameserver 127.0.0.53\n\
                    nameserver not-an-address\n\
                    nameserver\n\
                    options edns0 trust-ad\n\
                    nameservers 192.0.2.3\n";
        let want: Vec<SocketAddr> = vec![
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 53).into(),
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 53).into(),
            "[fe80::1]:53".parse().expect("addr"),
            SocketAddrV6::new("fe80::2".parse().expect("v6"), 53, 0, 3).into(),
            "[2001:db8::53]:53".parse().expect("addr"),
        ];
        assert_eq!(parse_resolv_conf(text), want);
        assert!(parse_resolv_conf("").is_empty());
        let many: String = (1..=20)
            .map(|i| format!("nameserver 192.0.2.{i}\n"))
            .collect();
        assert_eq!(parse_resolv_conf(&many).len(), MAX_UPSTREAMS);
    }
}
