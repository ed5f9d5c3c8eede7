//! The DHCPv4 server that configures the guest (RFC 2131, options from
//! RFC 2132, the domain search option from RFC 3397).
//!
//! # Theory of operation
//! The stack hands every UDP datagram the guest sends to port 67 to
//! [`Server::handle`], together with the Ethernet source address and `now`.
//! The server answers with at most one BOOTREPLY payload ([`Reply`]); the
//! stack wraps it in UDP (67 → 68), IPv4 (from [`Config::host`] to
//! [`Reply::dst`]) and Ethernet (to the guest's MAC) itself.
//!
//! Behaviour follows QEMU's libslirp (`bootp.c`), with the RFC 2131 state
//! machine done properly:
//! - DISCOVER → OFFER; REQUEST → ACK, or NAK when the address asked for is
//!   not the one this server would give; RELEASE frees the lease; DECLINE
//!   takes the address out of the pool for [`DECLINE_HOLD`]; INFORM → ACK with
//!   the configuration but no address. Anything else gets no answer.
//! - The pool runs from [`Config::dhcpstart`] to the last address before the
//!   broadcast address of [`Config::net`], skipping the gateway and the DNS
//!   address. The first guest gets `dhcpstart` itself; a MAC that comes back
//!   gets its old address again as long as nobody else needed it meanwhile.
//! - Leases are keyed by the Ethernet source address, which must equal the
//!   message's `chaddr` (there are no relay agents on a slirp link). The
//!   client identifier option is ignored, as in libslirp.
//! - Replies go to the IPv4 broadcast address unless the client has an
//!   address (`ciaddr`), in which case they are unicast to it. Unlike RFC 2131
//!   §4.1 we never unicast to `yiaddr`: the Ethernet frame goes to the
//!   client's MAC either way, and a broadcast IP destination is accepted by
//!   every client whatever its broadcast flag (libslirp does the same).
//!
//! # Bounds
//! The lease table holds at most [`MAX_LEASES`] entries (and never more than
//! the pool has addresses): a guest can forge any number of MACs, and a
//! `/8` pool would otherwise let it grow to millions. When the table is full,
//! expired, released and declined-and-expired entries are reused; when none
//! is left, DISCOVERs go unanswered. Replies are cut to the client's maximum
//! message size (option 57, at least 576) and the link MTU by dropping the
//! domain search list, then the host and domain names.
//!
//! # Untrusted input
//! dhcproto's option decoder trusts some option lengths (it has
//! `debug_assert!`s and a `len - 3` on guest-supplied lengths), so the
//! server first copies the fixed header and only the options it reads
//! (53, 50, 54, 57), each with its length checked, into a fresh buffer, and
//! decodes that. Malformed input of any kind yields `None`, never a panic.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, DhcpOptions, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Name};

use crate::config::Config;

/// The most leases (offered, bound, released or declined) kept at once.
pub const MAX_LEASES: usize = 1024;
/// How long an offered address stays reserved for the client it was offered
/// to while it makes up its mind.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long an address a client declined (RFC 2131 §4.3.3: it found the
/// address in use) stays out of the pool.
pub const DECLINE_HOLD: Duration = Duration::from_secs(600);

/// The DHCP magic cookie that follows the fixed BOOTP header.
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Length of the fixed BOOTP header, magic cookie included.
const HEADER_LEN: usize = 240;
/// The smallest BOOTP message (RFC 951); replies are zero-padded up to it
/// because some old clients discard anything shorter.
const MIN_REPLY_LEN: usize = 300;
/// The largest DHCP message every client must accept (RFC 2131 §2): 576
/// bytes of IP datagram.
const MIN_MAX_MESSAGE: usize = 576;
/// IPv4 and UDP header lengths, subtracted from datagram sizes.
const IP_UDP_HEADERS: usize = 28;

/// What the server remembers about one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Offered to `mac`, not yet requested.
    Offered,
    /// Acknowledged to `mac`.
    Bound,
    /// Given back by `mac`; kept so that `mac` gets it again if it returns.
    Released,
    /// Declined by `mac` (in use by someone else); out of the pool until
    /// expiry.
    Declined,
}

/// One entry of the lease table.
#[derive(Clone, Copy, Debug)]
struct Lease {
    /// The client's Ethernet address.
    mac: [u8; 6],
    /// Where the entry stands.
    state: State,
    /// When the entry lapses; `None` when the lease time is too long to
    /// represent (it never lapses).
    expires: Option<Instant>,
}

impl Lease {
    /// Whether another client may take the address at `now`.
    fn reusable(&self, now: Instant) -> bool {
        self.state == State::Released || self.expires.is_some_and(|e| e <= now)
    }
}

/// A DHCP reply for the stack to send to the guest (UDP 67 → 68).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The BOOTP/DHCP message, the UDP payload.
    pub payload: Vec<u8>,
    /// IPv4 destination: the client's `ciaddr` when it has one, otherwise
    /// the broadcast address 255.255.255.255.
    pub dst: Ipv4Addr,
    /// The address this reply leases (ACK only).
    pub leased: Option<Ipv4Addr>,
}

/// The DHCPv4 server: a bounded lease table and the message handling.
#[derive(Clone, Debug, Default)]
pub struct Server {
    /// Address → lease, at most [`MAX_LEASES`] entries.
    leases: BTreeMap<Ipv4Addr, Lease>,
}

/// The fields of a request the server acts on, after validation.
struct Request {
    /// The decoded (sanitized) message.
    msg: Message,
    /// Option 53.
    kind: MessageType,
    /// Option 50, requested IP address.
    requested: Option<Ipv4Addr>,
    /// Option 54, server identifier.
    server_id: Option<Ipv4Addr>,
    /// Option 57, maximum DHCP message size.
    max_size: Option<u16>,
}

impl Server {
    /// Creates a server with no leases.
    pub fn new(cfg: &Config) -> Self {
        let _ = cfg;
        Server::default()
    }

    /// Handles a BOOTP/DHCP message the guest sent to UDP port 67.
    /// `src_mac` is the Ethernet source. Returns the reply to send, if any;
    /// malformed or unsupported messages return `None`.
    pub fn handle(
        &mut self,
        cfg: &Config,
        now: Instant,
        src_mac: [u8; 6],
        payload: &[u8],
    ) -> Option<Reply> {
        let req = parse(payload)?;
        if req.msg.chaddr() != src_mac {
            return None;
        }
        let for_us = req.server_id.is_none_or(|s| s == cfg.host);
        let ciaddr = req.msg.ciaddr();
        match req.kind {
            MessageType::Discover => {
                let ip = self.choose(cfg, src_mac, req.requested, now)?;
                let keep = self.leases.get(&ip).is_some_and(|l| {
                    l.mac == src_mac && l.state == State::Bound && !l.reusable(now)
                });
                if !keep {
                    self.assign(ip, src_mac, State::Offered, now.checked_add(OFFER_HOLD));
                }
                reply(cfg, &req, MessageType::Offer, ip, Ipv4Addr::BROADCAST)
            }
            MessageType::Request if !for_us => {
                // The client took another server's offer: free ours.
                self.set_state(src_mac, State::Offered, State::Released);
                None
            }
            MessageType::Request => {
                let (wanted, dst) = if req.server_id.is_some() || req.requested.is_some() {
                    // SELECTING or INIT-REBOOT (clients that put the address in
                    // ciaddr instead of option 50 are tolerated).
                    let ip = req
                        .requested
                        .or(Some(ciaddr).filter(|ip| !ip.is_unspecified()))?;
                    (ip, dst_for(ciaddr))
                } else if !ciaddr.is_unspecified() {
                    // RENEWING or REBINDING: unicast to the client.
                    (ciaddr, ciaddr)
                } else {
                    return None;
                };
                if cfg.net.contains(wanted)
                    && self.choose(cfg, src_mac, Some(wanted), now) == Some(wanted)
                {
                    self.assign(
                        wanted,
                        src_mac,
                        State::Bound,
                        now.checked_add(cfg.lease_time),
                    );
                    let mut r = reply(cfg, &req, MessageType::Ack, wanted, dst)?;
                    r.leased = Some(wanted);
                    Some(r)
                } else {
                    nak(cfg, &req)
                }
            }
            MessageType::Release if for_us => {
                if self
                    .leases
                    .get(&ciaddr)
                    .is_some_and(|l| l.mac == src_mac && l.state == State::Bound)
                {
                    self.set_state(src_mac, State::Bound, State::Released);
                }
                None
            }
            MessageType::Decline if for_us => {
                let ip = req.requested?;
                if let Some(l) = self.leases.get_mut(&ip)
                    && l.mac == src_mac
                    && l.state != State::Declined
                {
                    l.state = State::Declined;
                    l.expires = now.checked_add(DECLINE_HOLD);
                }
                None
            }
            MessageType::Inform => {
                let dst = if cfg.net.contains(ciaddr) {
                    dst_for(ciaddr)
                } else {
                    Ipv4Addr::BROADCAST
                };
                reply(cfg, &req, MessageType::Ack, Ipv4Addr::UNSPECIFIED, dst)
            }
            _ => None,
        }
    }

    /// The address currently leased (acknowledged, not released) to `mac`,
    /// if any. The server has no clock of its own, so a lease that lapsed
    /// since is still reported until another client takes its address.
    pub fn lease_of(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.leases
            .iter()
            .find(|(_, l)| l.mac == mac && l.state == State::Bound)
            .map(|(ip, _)| *ip)
    }

    /// The leases bound now, as (address, client MAC), for a saved state.
    pub fn bound(&self) -> impl Iterator<Item = (Ipv4Addr, [u8; 6])> + '_ {
        self.leases
            .iter()
            .filter(|(_, l)| l.state == State::Bound)
            .map(|(ip, l)| (*ip, l.mac))
    }

    /// Takes over a lease bound by another instance (a loaded state):
    /// `ip` is `mac`'s until `expires`. Refused (false) outside the pool.
    pub fn restore(
        &mut self,
        cfg: &Config,
        ip: Ipv4Addr,
        mac: [u8; 6],
        expires: Option<Instant>,
    ) -> bool {
        if !in_pool(cfg, ip) {
            return false;
        }
        self.assign(ip, mac, State::Bound, expires);
        self.lease_of(mac) == Some(ip)
    }

    /// The entry held by `mac` (not declined), if any.
    fn held_by(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.leases
            .iter()
            .find(|(_, l)| l.mac == mac && l.state != State::Declined)
            .map(|(ip, _)| *ip)
    }

    /// Whether `ip` is in the pool and free for `mac` at `now`.
    fn available(&self, cfg: &Config, ip: Ipv4Addr, mac: [u8; 6], now: Instant) -> bool {
        in_pool(cfg, ip)
            && match self.leases.get(&ip) {
                None => self.leases.len() < MAX_LEASES,
                Some(l) => (l.mac == mac && l.state != State::Declined) || l.reusable(now),
            }
    }

    /// The address this server would give `mac`, which asks for `requested`:
    /// its current one, else the requested one if free, else the first never
    /// used one from `dhcpstart` up, else the lowest reusable one.
    fn choose(
        &self,
        cfg: &Config,
        mac: [u8; 6],
        requested: Option<Ipv4Addr>,
        now: Instant,
    ) -> Option<Ipv4Addr> {
        if let Some(pin) = cfg.dhcp_hosts.iter().find(|h| h.mac == mac) {
            return Some(pin.addr);
        }
        if let Some(ip) = self.held_by(mac).filter(|ip| in_pool(cfg, *ip)) {
            return Some(ip);
        }
        if let Some(ip) = requested.filter(|ip| self.available(cfg, *ip, mac, now)) {
            return Some(ip);
        }
        if self.leases.len() < MAX_LEASES {
            // Every address skipped is a lease, the gateway or the DNS
            // address, so this walks at most MAX_LEASES + 2 steps before it
            // finds a free address or leaves the pool.
            let (start, end) = pool(cfg)?;
            let free = (start..=end)
                .map(Ipv4Addr::from)
                .find(|ip| in_pool(cfg, *ip) && !self.leases.contains_key(ip));
            if free.is_some() {
                return free;
            }
        }
        self.leases
            .iter()
            .find(|(ip, l)| in_pool(cfg, **ip) && l.reusable(now))
            .map(|(ip, _)| *ip)
    }

    /// Records `ip` as `mac`'s, dropping `mac`'s other (non-declined) entry.
    fn assign(&mut self, ip: Ipv4Addr, mac: [u8; 6], state: State, expires: Option<Instant>) {
        if let Some(old) = self.held_by(mac).filter(|old| *old != ip) {
            self.leases.remove(&old);
        }
        if self.leases.len() < MAX_LEASES || self.leases.contains_key(&ip) {
            self.leases.insert(
                ip,
                Lease {
                    mac,
                    state,
                    expires,
                },
            );
        }
    }

    /// Moves `mac`'s entry from state `from` to `to`.
    fn set_state(&mut self, mac: [u8; 6], from: State, to: State) {
        if let Some(l) = self
            .leases
            .values_mut()
            .find(|l| l.mac == mac && l.state == from)
        {
            l.state = to;
        }
    }
}

/// The pool's first and last addresses as integers, or `None` if the
/// configuration leaves no pool.
fn pool(cfg: &Config) -> Option<(u32, u32)> {
    let start = u32::from(cfg.dhcpstart);
    let end = u32::from(cfg.net.broadcast()).checked_sub(1)?;
    let ok = cfg.net.contains(cfg.dhcpstart) && cfg.dhcpstart != cfg.net.network() && start <= end;
    ok.then_some((start, end))
}

/// Whether `ip` is one the server may lease.
/// Whether `ip` is one the server hands out to any MAC: in the pool, not
/// the stack's own, and not pinned to a MAC by `--dhcp-host` (pinned ones
/// go to their MAC only, before the pool is looked at).
fn in_pool(cfg: &Config, ip: Ipv4Addr) -> bool {
    pool(cfg).is_some_and(|(start, end)| (start..=end).contains(&u32::from(ip)))
        && ip != cfg.host
        && ip != cfg.dns
        && !cfg.dhcp_hosts.iter().any(|h| h.addr == ip)
}

/// The destination for a reply to a client with `ciaddr`.
fn dst_for(ciaddr: Ipv4Addr) -> Ipv4Addr {
    if ciaddr.is_unspecified() {
        Ipv4Addr::BROADCAST
    } else {
        ciaddr
    }
}

/// Validates a request and decodes it, keeping only the options the server
/// reads (see the module documentation for why).
/// Whether `payload` is a well-formed DHCP request (a BOOTREQUEST with
/// the magic cookie, its options ended): anything else sent to the server
/// port is malformed.
pub fn is_request(payload: &[u8]) -> bool {
    parse(payload).is_some()
}

fn parse(payload: &[u8]) -> Option<Request> {
    let header = payload.get(..HEADER_LEN)?;
    // op BOOTREQUEST, htype Ethernet, hlen 6, magic cookie.
    if header[..3] != [1, 1, 6] || header[236..] != MAGIC {
        return None;
    }
    let mut clean = header.to_vec();
    let mut seen = [false; 256];
    let mut rest = &payload[HEADER_LEN..];
    loop {
        match rest {
            [255, ..] => break,
            [0, tail @ ..] => rest = tail,
            [code, len, tail @ ..] => {
                let len = usize::from(*len);
                let value = tail.get(..len)?;
                rest = &tail[len..];
                let wanted = matches!((code, len), (53, 1) | (50, 4) | (54, 4) | (57, 2));
                if wanted && !seen[usize::from(*code)] {
                    seen[usize::from(*code)] = true;
                    clean.extend_from_slice(&[*code, len as u8]);
                    clean.extend_from_slice(value);
                }
            }
            // No End option: truncated.
            [] | [_] => return None,
        }
    }
    clean.push(255);
    let msg = Message::decode(&mut Decoder::new(&clean)).ok()?;
    if msg.opcode() != Opcode::BootRequest || msg.htype() != HType::Eth || msg.hlen() != 6 {
        return None;
    }
    let opts = msg.opts();
    let kind = opts.msg_type()?;
    let requested = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let max_size = match opts.get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => Some(*n),
        _ => None,
    };
    Some(Request {
        msg,
        kind,
        requested,
        server_id,
        max_size,
    })
}

/// Seconds for a DHCP time option, saturating below 0xffffffff ("infinity").
fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs())
        .unwrap_or(u32::MAX - 1)
        .min(u32::MAX - 1)
}

/// The reply skeleton: the request with op BOOTREPLY (xid, flags, chaddr and
/// giaddr stay), the given addresses, no file or server name and `opts`.
fn skeleton(
    req: &Request,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    ciaddr: Ipv4Addr,
    opts: DhcpOptions,
) -> Message {
    let mut m = req.msg.clone();
    m.set_opcode(Opcode::BootReply)
        .set_hops(0)
        .set_secs(0)
        .set_ciaddr(ciaddr)
        .set_yiaddr(yiaddr)
        .set_siaddr(siaddr)
        .set_opts(opts);
    m.clear_sname();
    m.clear_fname();
    m
}

/// Encodes `m`, zero-padded to the BOOTP minimum.
fn encode(m: &Message) -> Option<Vec<u8>> {
    let mut v = m.to_vec().ok()?;
    if v.len() < MIN_REPLY_LEN {
        v.resize(MIN_REPLY_LEN, 0);
    }
    Some(v)
}

/// The domain search list as DNS names; invalid names are left out.
fn search_names(cfg: &Config) -> Vec<Name> {
    cfg.dnssearch
        .iter()
        .filter_map(|d| {
            let d = d.trim_end_matches('.');
            Name::from_ascii(format!("{d}."))
                .ok()
                .filter(|_| !d.is_empty())
        })
        .collect()
}

/// Builds an OFFER or ACK (`yiaddr` unspecified for an INFORM's ACK, which
/// carries no lease times) with the full configuration, cut to fit.
fn reply(
    cfg: &Config,
    req: &Request,
    kind: MessageType,
    yiaddr: Ipv4Addr,
    dst: Ipv4Addr,
) -> Option<Reply> {
    let mut o = DhcpOptions::new();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(cfg.host));
    o.insert(DhcpOption::SubnetMask(cfg.net.mask()));
    o.insert(DhcpOption::Router(vec![cfg.host]));
    o.insert(DhcpOption::DomainNameServer(vec![cfg.dns]));
    o.insert(DhcpOption::BroadcastAddr(cfg.net.broadcast()));
    o.insert(DhcpOption::InterfaceMtu(
        u16::try_from(cfg.mtu).unwrap_or(u16::MAX),
    ));
    if !yiaddr.is_unspecified() {
        let lease = u64::from(secs(cfg.lease_time));
        // lease < 2^32, so neither product overflows nor does the quotient
        // exceed u32.
        let t1 = u32::try_from(lease / 2).unwrap_or(u32::MAX);
        let t2 = u32::try_from(lease * 7 / 8).unwrap_or(u32::MAX);
        o.insert(DhcpOption::AddressLeaseTime(secs(cfg.lease_time)));
        o.insert(DhcpOption::Renewal(t1));
        o.insert(DhcpOption::Rebinding(t2));
    }
    if let Some(h) = cfg.hostname.as_ref().filter(|h| !h.is_empty()) {
        o.insert(DhcpOption::Hostname(h.clone()));
    }
    if let Some(d) = cfg.domainname.as_ref().filter(|d| !d.is_empty()) {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    let search = search_names(cfg);
    if !search.is_empty() {
        o.insert(DhcpOption::DomainSearch(search));
    }
    let client_max = req
        .max_size
        .map_or(MIN_MAX_MESSAGE, usize::from)
        .max(MIN_MAX_MESSAGE);
    let link_max = usize::try_from(cfg.mtu)
        .unwrap_or(usize::MAX)
        .max(MIN_MAX_MESSAGE);
    let limit = client_max.min(link_max) - IP_UDP_HEADERS;
    let ciaddr = if kind == MessageType::Offer {
        Ipv4Addr::UNSPECIFIED
    } else {
        req.msg.ciaddr()
    };
    let mut m = skeleton(req, yiaddr, cfg.host, ciaddr, o);
    if let Some(file) = cfg
        .bootfile
        .as_ref()
        .filter(|f| f.len() <= crate::config::BOOTFILE_MAX)
    {
        // The BOOTP `file` field, as libslirp's `bootfile=` (the check
        // keeps dhcproto's length assertion and the field's NUL safe).
        m.set_fname_str(file);
    }
    let mut payload = encode(&m)?;
    for drop in [
        OptionCode::DomainSearch,
        OptionCode::Hostname,
        OptionCode::DomainName,
    ] {
        if payload.len() <= limit {
            break;
        }
        m.opts_mut().remove(drop);
        payload = encode(&m)?;
    }
    (payload.len() <= limit).then_some(Reply {
        payload,
        dst,
        leased: None,
    })
}

/// Builds a NAK (RFC 2131 table 3: no addresses, server identifier only),
/// broadcast.
fn nak(cfg: &Config, req: &Request) -> Option<Reply> {
    let mut o = DhcpOptions::new();
    o.insert(DhcpOption::MessageType(MessageType::Nak));
    o.insert(DhcpOption::ServerIdentifier(cfg.host));
    let m = skeleton(
        req,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        o,
    );
    Some(Reply {
        payload: encode(&m)?,
        dst: Ipv4Addr::BROADCAST,
        leased: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ipv4Net;

    const MAC1: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const MAC2: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x57];
    const BCAST: Ipv4Addr = Ipv4Addr::BROADCAST;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
            .collect()
    }

    /// A DISCOVER as busybox udhcpc 1.36 sends it (MAC 52:54:00:12:34:56),
    /// padded to 300 bytes as udhcpc does.
    fn udhcpc_discover() -> Vec<u8> {
        let mut v = hex("01 01 06 00  3903f326  0000 0000
             00000000 00000000 00000000 00000000
             525400123456 00000000000000000000");
        v.resize(236, 0); // sname and file
        v.extend(hex("63825363
             350101
             3d0701525400123456
             39020240
             37070103060c0f1c2a
             3c0c756468637020312e33362e31
             ff"));
        v.resize(300, 0);
        v
    }

    /// A client message encoded with dhcproto.
    fn msg(kind: MessageType, mac: [u8; 6], ciaddr: Ipv4Addr, opts: &[DhcpOption]) -> Vec<u8> {
        let mut m = Message::default();
        m.set_xid(0x1234_5678).set_chaddr(&mac).set_ciaddr(ciaddr);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o.clone());
        }
        m.to_vec().expect("encodes")
    }

    fn discover(mac: [u8; 6]) -> Vec<u8> {
        msg(MessageType::Discover, mac, Ipv4Addr::UNSPECIFIED, &[])
    }

    fn select(mac: [u8; 6], ip: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
        let opts = [
            DhcpOption::RequestedIpAddress(ip),
            DhcpOption::ServerIdentifier(server),
        ];
        msg(MessageType::Request, mac, Ipv4Addr::UNSPECIFIED, &opts)
    }

    fn decode(r: &Reply) -> Message {
        Message::decode(&mut Decoder::new(&r.payload)).expect("reply decodes")
    }

    fn kind(r: &Reply) -> MessageType {
        decode(r).opts().msg_type().expect("has a type")
    }

    /// The raw value of option `code` in an encoded reply.
    fn opt(r: &Reply, code: u8) -> Option<Vec<u8>> {
        let mut rest = &r.payload[HEADER_LEN..];
        loop {
            match rest {
                [0, t @ ..] => rest = t,
                [255, ..] | [] | [_] => return None,
                [c, l, t @ ..] => {
                    let (value, t) = t.split_at(usize::from(*l));
                    if *c == code {
                        return Some(value.to_vec());
                    }
                    rest = t;
                }
            }
        }
    }

    fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(a, b, c, d)
    }

    /// Runs DISCOVER and REQUEST for `mac`; returns the ACK.
    fn dora(s: &mut Server, cfg: &Config, now: Instant, mac: [u8; 6]) -> Reply {
        let offer = s.handle(cfg, now, mac, &discover(mac)).expect("offer");
        assert_eq!(kind(&offer), MessageType::Offer);
        let yiaddr = decode(&offer).yiaddr();
        let ack = s
            .handle(cfg, now, mac, &select(mac, yiaddr, cfg.host))
            .expect("ack");
        assert_eq!(kind(&ack), MessageType::Ack);
        ack
    }

    fn custom() -> Config {
        Config {
            net: Ipv4Net {
                addr: ip(192, 168, 76, 0),
                prefix: 24,
            },
            host: ip(192, 168, 76, 1),
            dns: ip(192, 168, 76, 53),
            dhcpstart: ip(192, 168, 76, 100),
            mtu: 9000,
            ..Config::default()
        }
    }

    /// A /29: host .1, dns .2, pool .3 to .6.
    fn tiny() -> Config {
        Config {
            net: Ipv4Net {
                addr: ip(192, 168, 76, 0),
                prefix: 29,
            },
            host: ip(192, 168, 76, 1),
            dns: ip(192, 168, 76, 2),
            dhcpstart: ip(192, 168, 76, 3),
            ..Config::default()
        }
    }

    #[test]
    fn udhcpc_discover_gets_a_full_offer() {
        let cfg = Config {
            hostname: Some("guest".into()),
            domainname: Some("example.test".into()),
            dnssearch: vec!["example.test".into(), "corp.example.test.".into()],
            ..Config::default()
        };
        let mut s = Server::new(&cfg);
        let r = s
            .handle(&cfg, Instant::now(), MAC1, &udhcpc_discover())
            .expect("offer");
        assert_eq!((r.dst, r.leased), (BCAST, None));
        assert!(r.payload.len() >= 300);
        assert_eq!(&r.payload[..4], &hex("02 01 06 00"));
        assert_eq!(&r.payload[4..8], &hex("3903f326"), "xid");
        assert_eq!(&r.payload[12..16], &[0; 4], "ciaddr");
        assert_eq!(&r.payload[16..20], &[10, 0, 2, 15], "yiaddr");
        assert_eq!(&r.payload[20..24], &[10, 0, 2, 2], "siaddr");
        assert_eq!(&r.payload[28..34], &MAC1, "chaddr");
        assert_eq!(&r.payload[236..240], &MAGIC);
        assert_eq!(opt(&r, 53), Some(vec![2]));
        assert_eq!(opt(&r, 1), Some(vec![255, 255, 255, 0]));
        assert_eq!(opt(&r, 3), Some(vec![10, 0, 2, 2]));
        assert_eq!(opt(&r, 6), Some(vec![10, 0, 2, 3]));
        assert_eq!(opt(&r, 51), Some(hex("00015180")), "86400 s");
        assert_eq!(opt(&r, 58), Some(hex("0000a8c0")), "43200 s");
        assert_eq!(opt(&r, 59), Some(hex("00012750")), "75600 s");
        assert_eq!(opt(&r, 54), Some(vec![10, 0, 2, 2]));
        assert_eq!(opt(&r, 28), Some(vec![10, 0, 2, 255]));
        assert_eq!(opt(&r, 26), Some(hex("05dc")));
        assert_eq!(opt(&r, 12), Some(b"guest".to_vec()));
        assert_eq!(opt(&r, 15), Some(b"example.test".to_vec()));
        let search = hex("07 6578616d706c65 04 74657374 00  04 636f7270 c000");
        assert_eq!(opt(&r, 119), Some(search));
    }

    #[test]
    fn bootfile_goes_in_the_file_field() {
        let cfg = Config {
            bootfile: Some("pxelinux.0".into()),
            ..Config::default()
        };
        let mut s = Server::new(&cfg);
        let r = s
            .handle(&cfg, Instant::now(), MAC1, &udhcpc_discover())
            .expect("offer");
        // `file` is bytes 108..236 of the BOOTP header, NUL-padded.
        assert_eq!(&r.payload[108..118], b"pxelinux.0");
        assert!(r.payload[118..236].iter().all(|&b| b == 0));
        let r = Server::new(&Config::default())
            .handle(&Config::default(), Instant::now(), MAC1, &udhcpc_discover())
            .expect("offer");
        assert!(
            r.payload[108..236].iter().all(|&b| b == 0),
            "no file by default"
        );
    }

    #[test]
    fn dora_and_second_guest() {
        let cfg = Config::default();
        let mut s = Server::new(&cfg);
        let now = Instant::now();
        let ack = dora(&mut s, &cfg, now, MAC1);
        assert_eq!((ack.dst, ack.leased), (BCAST, Some(ip(10, 0, 2, 15))));
        assert_eq!(decode(&ack).yiaddr(), ip(10, 0, 2, 15));
        assert_eq!(decode(&ack).xid(), 0x1234_5678);
        assert_eq!(opt(&ack, 51), Some(hex("00015180")));
        assert_eq!(opt(&ack, 54), Some(vec![10, 0, 2, 2]));
        assert_eq!(s.lease_of(MAC1), Some(ip(10, 0, 2, 15)));
        let ack2 = dora(&mut s, &cfg, now, MAC2);
        assert_eq!(ack2.leased, Some(ip(10, 0, 2, 16)));
        // The first guest asks again (a reboot): same address.
        let offer = s.handle(&cfg, now, MAC1, &discover(MAC1)).expect("offer");
        assert_eq!(decode(&offer).yiaddr(), ip(10, 0, 2, 15));
        assert_eq!(s.lease_of(MAC1), Some(ip(10, 0, 2, 15)), "still bound");
    }

    #[test]
    fn pinned_addresses_go_to_their_mac_only() {
        use crate::config::DhcpHost;
        let pinned = ip(10, 0, 2, 15);
        let cfg = Config {
            dhcp_hosts: vec![DhcpHost {
                mac: MAC2,
                addr: pinned,
            }],
            ..Config::default()
        };
        let mut s = Server::new(&cfg);
        let now = Instant::now();
        // MAC1 comes first, and asks for the pinned address: not its.
        let d = msg(
            MessageType::Discover,
            MAC1,
            Ipv4Addr::UNSPECIFIED,
            &[DhcpOption::RequestedIpAddress(pinned)],
        );
        let r = s.handle(&cfg, now, MAC1, &d).expect("offer");
        assert_eq!(decode(&r).yiaddr(), ip(10, 0, 2, 16));
        assert_eq!(dora(&mut s, &cfg, now, MAC1).leased, Some(ip(10, 0, 2, 16)));
        assert_eq!(dora(&mut s, &cfg, now, MAC2).leased, Some(pinned));
        let taken = s.handle(&cfg, now, MAC1, &select(MAC1, pinned, cfg.host));
        assert_eq!(taken.map(|r| kind(&r)), Some(MessageType::Nak));
    }

    #[test]
    fn discover_honours_a_free_requested_address() {
        let cfg = Config::default();
        let mut s = Server::new(&cfg);
        let d = msg(
            MessageType::Discover,
            MAC1,
            Ipv4Addr::UNSPECIFIED,
            &[DhcpOption::RequestedIpAddress(ip(10, 0, 2, 40))],
        );
        let r = s.handle(&cfg, Instant::now(), MAC1, &d).expect("offer");
        assert_eq!(decode(&r).yiaddr(), ip(10, 0, 2, 40));
        // The gateway is never handed out.
        let d = msg(
            MessageType::Discover,
            MAC2,
            Ipv4Addr::UNSPECIFIED,
            &[DhcpOption::RequestedIpAddress(cfg.host)],
        );
        let r = s.handle(&cfg, Instant::now(), MAC2, &d).expect("offer");
        assert_eq!(decode(&r).yiaddr(), ip(10, 0, 2, 15));
    }

    #[test]
    fn non_default_config() {
        let cfg = custom();
        let mut s = Server::new(&cfg);
        let r = s
            .handle(&cfg, Instant::now(), MAC1, &udhcpc_discover())
            .expect("offer");
        assert_eq!(decode(&r).yiaddr(), ip(192, 168, 76, 100));
        assert_eq!(decode(&r).siaddr(), ip(192, 168, 76, 1));
        assert_eq!(opt(&r, 1), Some(vec![255, 255, 255, 0]));
        assert_eq!(opt(&r, 3), Some(vec![192, 168, 76, 1]));
        assert_eq!(opt(&r, 6), Some(vec![192, 168, 76, 53]));
        assert_eq!(opt(&r, 54), Some(vec![192, 168, 76, 1]));
        assert_eq!(opt(&r, 28), Some(vec![192, 168, 76, 255]));
        assert_eq!(opt(&r, 26), Some(hex("2328")), "9000");
        assert_eq!(opt(&r, 12), None);
        assert_eq!(opt(&r, 15), None);
        assert_eq!(opt(&r, 119), None);
        let ack = dora(&mut s, &cfg, Instant::now(), MAC2);
        assert_eq!(ack.leased, Some(ip(192, 168, 76, 101)));
    }

    #[test]
    fn naks_what_it_would_not_give() {
        let cfg = Config::default();
        let mut s = Server::new(&cfg);
        let now = Instant::now();
        dora(&mut s, &cfg, now, MAC1);
        // INIT-REBOOT for an address outside the net.
        let req = msg(
            MessageType::Request,
            MAC2,
            Ipv4Addr::UNSPECIFIED,
            &[DhcpOption::RequestedIpAddress(ip(192, 168, 1, 50))],
        );
        let r = s.handle(&cfg, now, MAC2, &req).expect("nak");
        assert_eq!(kind(&r), MessageType::Nak);
        assert_eq!((r.dst, r.leased), (BCAST, None));
        assert_eq!(decode(&r).yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(opt(&r, 54), Some(vec![10, 0, 2, 2]));
        assert_eq!(opt(&r, 51), None);
        // SELECTING an address leased to someone else.
        let r = s
            .handle(&cfg, now, MAC2, &select(MAC2, ip(10, 0, 2, 15), cfg.host))
            .expect("nak");
        assert_eq!(kind(&r), MessageType::Nak);
        // The first guest asking for another address than its own.
        let r = s
            .handle(&cfg, now, MAC1, &select(MAC1, ip(10, 0, 2, 99), cfg.host))
            .expect("nak");
        assert_eq!(kind(&r), MessageType::Nak);
        assert_eq!(s.lease_of(MAC1), Some(ip(10, 0, 2, 15)));
        assert_eq!(s.lease_of(MAC2), None);
    }

    #[test]
    fn init_reboot_of_a_free_address_is_acked() {
        let cfg = Config::default();
        let mut s = Server::new(&cfg);
        let req = msg(
            MessageType::Request,
            MAC1,
            Ipv4Addr::UNSPECIFIED,
            &[DhcpOption::RequestedIpAddress(ip(10, 0, 2, 15))],
        );
        let r = s.handle(&cfg, Instant::now(), MAC1, &req).expect("ack");
        assert_eq!(kind(&r), MessageType::Ack);
        assert_eq!(r.leased, Some(ip(10, 0, 2, 15)));
    }

    #[test]
    fn renewal_is_unicast() {
        let cfg = Config::default();
        let mut s = Server::new(&cfg);
        let t0 = Instant::now();
        dora(&mut s, &cfg, t0, MAC1);
        let t1 = t0 + Duration::from_secs(43200);
        let renew = msg(MessageType::Request, MAC1, ip(10, 0, 2, 15), &[]);
        let r = s.handle(&cfg, t1, MAC1, &renew).expect("ack");
        assert_eq!(kind(&r), MessageType::Ack);
        assert_eq!(
            (r.dst, r.leased),
            (ip(10, 0, 2, 15), Some(ip(10, 0, 2, 15)))
        );
        assert_eq!(decode(&r).ciaddr(), ip(10, 0, 2, 15));
        assert_eq!(decode(&r).yiaddr(), ip(10, 0, 2, 15));
        // Renewed: still ours a lease time after the first ACK.
        let t2 = t0 + Duration::from_secs(86400 + 60);
        assert!(s.available(&cfg, ip(10, 0, 2, 15), MAC1, t2));
        assert!(!s.available(&cfg, ip(10, 0, 2, 15), MAC2, t2));
        // Renewing an address that is not ours: NAK.
        let renew = msg(MessageType::Request, MAC2, ip(10, 0, 2, 15), &[]);
        let r = s.handle(&cfg, t1, MAC2, &renew).expect("nak");
        assert_eq!(kind(&r), MessageType::Nak);
    }

    #[test]
    fn release_frees_and_pool_is_bounded() {
        let cfg = tiny();
        let mut s = Server::new(&cfg);
        let now = Instant::now();
        let macs: Vec<[u8; 6]> = (0..5).map(|i| [2, 0, 0, 0, 0, i]).collect();
        for (i, mac) in macs[..4].iter().enumerate() {
            let ack = dora(&mut s, &cfg, now, *mac);
            assert_eq!(ack.leased, Some(ip(192, 168, 76, 3 + i as u8)));
        }
        assert_eq!(
            s.handle(&cfg, now, macs[4], &discover(macs[4])),
            None,
            "pool exhausted"
        );
        let rel = msg(MessageType::Release, macs[1], ip(192, 168, 76, 4), &[]);
        assert_eq!(s.handle(&cfg, now, macs[1], &rel), None);
        assert_eq!(s.lease_of(macs[1]), None);
        let ack = dora(&mut s, &cfg, now, macs[4]);
        assert_eq!(ack.leased, Some(ip(192, 168, 76, 4)));
        assert_eq!(s.leases.len(), 4);
        // A release of someone else's address changes nothing.
        let rel = msg(MessageType::Release, macs[1], ip(192, 168, 76, 5), &[]);
        assert_eq!(s.handle(&cfg, now, macs[1], &rel), None);
        assert_eq!(s.lease_of(macs[2]), Some(ip(192, 168, 76, 5)));
    }

    #[test]
    fn released_address_comes_back_to_its_owner() {
        let cfg = Config::default();
        let mut s = Server::new(&cfg);
        let now = Instant::now();
        dora(&mut s, &cfg, now, MAC1);
        let rel = msg(MessageType::Release, MAC1, ip(10, 0, 2, 15), &[]);
        assert_eq!(s.handle(&cfg, now, MAC1, &rel), None);
        assert_eq!(dora(&mut s, &cfg, now, MAC2).leased, Some(ip(10, 0, 2, 16)));
        assert_eq!(dora(&mut s, &cfg, now, MAC1).leased, Some(ip(10, 0, 2, 15)));
    }

    #[test]
    fn leases_expire() {
        let cfg = Config {
            lease_time: Duration::from_secs(120),
            ..tiny()
        };
        let mut s = Server::new(&cfg);
        let t0 = Instant::now();
        let macs: Vec<[u8; 6]> = (0..5).map(|i| [2, 0, 0, 0, 0, i]).collect();
        for mac in &macs[..4] {
            dora(&mut s, &cfg, t0, *mac);
        }
        assert_eq!(
            opt(&dora(&mut s, &cfg, t0, macs[0]), 51),
            Some(hex("00000078"))
        );
        let t1 = t0 + Duration::from_secs(119);
        assert_eq!(s.handle(&cfg, t1, macs[4], &discover(macs[4])), None);
        let t2 = t0 + Duration::from_secs(120);
        let ack = dora(&mut s, &cfg, t2, macs[4]);
        assert_eq!(ack.leased, Some(ip(192, 168, 76, 3)));
        assert_eq!(s.lease_of(macs[0]), None);
    }

    #[test]
    fn unanswered_offer_lapses() {
        let cfg = tiny();
        let mut s = Server::new(&cfg);
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(
                s.handle(&cfg, t0, [2, 0, 0, 0, 0, i], &discover([2, 0, 0, 0, 0, i]))
                    .is_some()
            );
        }
        assert_eq!(s.handle(&cfg, t0, MAC1, &discover(MAC1)), None);
        let r = s
            .handle(&cfg, t0 + OFFER_HOLD, MAC1, &discover(MAC1))
            .expect("offer");
        assert_eq!(decode(&r).yiaddr(), ip(192, 168, 76, 3));
    }

    #[test]
    fn request_for_another_server_frees_the_offer() {
        let cfg = tiny();
        let mut s = Server::new(&cfg);
        let now = Instant::now();
        s.handle(&cfg, now, MAC1, &discover(MAC1)).expect("offer");
        let other = select(MAC1, ip(192, 168, 76, 3), ip(192, 168, 76, 254));
        assert_eq!(s.handle(&cfg, now, MAC1, &other), None);
        assert_eq!(s.lease_of(MAC1), None);
        assert!(s.available(&cfg, ip(192, 168, 76, 3), MAC2, now));
    }

    #[test]
    fn decline_takes_the_address_out_for_a_while() {
        let cfg = Config::default();
        let mut s = Server::new(&cfg);
        let t0 = Instant::now();
        dora(&mut s, &cfg, t0, MAC1);
        let dec = msg(
            MessageType::Decline,
            MAC1,
            Ipv4Addr::UNSPECIFIED,
            &[
                DhcpOption::RequestedIpAddress(ip(10, 0, 2, 15)),
                DhcpOption::ServerIdentifier(cfg.host),
            ],
        );
        assert_eq!(s.handle(&cfg, t0, MAC1, &dec), None);
        assert_eq!(s.lease_of(MAC1), None);
        assert_eq!(dora(&mut s, &cfg, t0, MAC1).leased, Some(ip(10, 0, 2, 16)));
        assert!(!s.available(&cfg, ip(10, 0, 2, 15), MAC2, t0));
        assert!(s.available(&cfg, ip(10, 0, 2, 15), MAC2, t0 + DECLINE_HOLD));
    }

    #[test]
    fn inform_gets_configuration_without_a_lease() {
        let cfg = Config {
            domainname: Some("example.test".into()),
            ..Config::default()
        };
        let mut s = Server::new(&cfg);
        let inf = msg(MessageType::Inform, MAC1, ip(10, 0, 2, 77), &[]);
        let r = s.handle(&cfg, Instant::now(), MAC1, &inf).expect("ack");
        assert_eq!(kind(&r), MessageType::Ack);
        assert_eq!((r.dst, r.leased), (ip(10, 0, 2, 77), None));
        assert_eq!(decode(&r).yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(decode(&r).ciaddr(), ip(10, 0, 2, 77));
        assert_eq!(opt(&r, 51), None);
        assert_eq!(opt(&r, 58), None);
        assert_eq!(opt(&r, 59), None);
        assert_eq!(opt(&r, 3), Some(vec![10, 0, 2, 2]));
        assert_eq!(opt(&r, 15), Some(b"example.test".to_vec()));
        assert_eq!(s.lease_of(MAC1), None);
    }

    #[test]
    fn replies_fit_the_minimum_message_size() {
        let cfg = Config {
            dnssearch: (0..40)
                .map(|i| format!("domain-number-{i}.example.test"))
                .collect(),
            ..Config::default()
        };
        let mut s = Server::new(&cfg);
        let r = s
            .handle(&cfg, Instant::now(), MAC1, &udhcpc_discover())
            .expect("offer");
        assert!(r.payload.len() <= 576 - 28);
        assert_eq!(opt(&r, 119), None);
        assert_eq!(opt(&r, 3), Some(vec![10, 0, 2, 2]));
        // A client that accepts more gets the list, split per RFC 3396.
        let d = msg(
            MessageType::Discover,
            MAC2,
            Ipv4Addr::UNSPECIFIED,
            &[DhcpOption::MaxMessageSize(1500)],
        );
        let r = s.handle(&cfg, Instant::now(), MAC2, &d).expect("offer");
        assert!(r.payload.len() > 576 && r.payload.len() <= 1500 - 28);
        assert!(opt(&r, 119).is_some());
    }

    #[test]
    fn malformed_input_is_ignored() {
        let cfg = Config::default();
        let mut s = Server::new(&cfg);
        let now = Instant::now();
        let good = udhcpc_discover();
        // Every truncation before the End option.
        let end = 240 + good[240..].iter().position(|b| *b == 255).expect("has End");
        for len in 0..good.len() {
            let r = s.handle(&cfg, now, MAC1, &good[..len]);
            assert_eq!(r.is_some(), len > end, "truncated to {len}");
        }
        let mut bad = good.clone();
        bad[2] = 255; // hlen beyond chaddr
        assert_eq!(s.handle(&cfg, now, MAC1, &bad), None);
        let mut bad = good.clone();
        bad[0] = 2; // a BOOTREPLY
        assert_eq!(s.handle(&cfg, now, MAC1, &bad), None);
        let mut bad = good.clone();
        bad[236] = 0; // bad cookie
        assert_eq!(s.handle(&cfg, now, MAC1, &bad), None);
        // Ethernet source and chaddr disagree.
        assert_eq!(s.handle(&cfg, now, MAC2, &good), None);
        // No message type: plain BOOTP.
        let mut bad = good[..240].to_vec();
        bad.push(255);
        assert_eq!(s.handle(&cfg, now, MAC1, &bad), None);
        // Options dhcproto would trip over in a debug build.
        for evil in [
            hex("5100 97 00 350101 ff"),
            hex("3500 32 02 0a00 350101 ff"),
        ] {
            let mut m = good[..240].to_vec();
            m.extend(&evil);
            let _ = s.handle(&cfg, now, MAC1, &m);
        }
        // Option length past the end.
        let mut bad = good[..240].to_vec();
        bad.extend(hex("350101 0c 40 6162"));
        assert_eq!(s.handle(&cfg, now, MAC1, &bad), None);
        // Pseudo-random garbage behind a valid header.
        let mut x: u32 = 1;
        for _ in 0..2000 {
            let mut m = good[..240].to_vec();
            for _ in 0..(x % 64) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                m.push((x >> 16) as u8);
            }
            let _ = s.handle(&cfg, now, MAC1, &m);
        }
        // Unsupported message types.
        assert_eq!(
            s.handle(
                &cfg,
                now,
                MAC1,
                &msg(MessageType::Offer, MAC1, Ipv4Addr::UNSPECIFIED, &[])
            ),
            None
        );
    }
}
