//! The slirp4netns JSON API (`--api-socket PATH`): requests and replies,
//! byte for byte as slirp4netns 1.2.0 (Debian 12's package) writes them.
//!
//! # Protocol
//! One request per unix-stream connection, one reply, then the server
//! shuts the connection down. Requests (whitespace free-form):
//! ```text
//! {"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0",
//!   "host_port": 8080, "guest_addr": "10.0.2.100", "guest_port": 80}}
//! {"execute": "list_hostfwd"}
//! {"execute": "remove_hostfwd", "arguments": {"id": 1}}
//! ```
//! Replies are compact JSON with no trailing newline:
//! `{"return":{"id":1}}`, `{"entries":[{"id":1,"proto":"tcp","host_addr":
//! "0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}]}`
//! (note: *not* wrapped in `"return"`), `{"return":{}}`, and errors
//! `{"error":{"desc":"bad request: ..."}}`. Ids start at 1 and are never
//! reused. The fixtures in the tests below were recorded from the real
//! slirp4netns 1.2.0 serving a namespace.
//!
//! # Where we differ, on purpose
//! slirp4netns reads one `read(2)` of at most 4095 bytes; we read until the
//! request parses as a complete JSON value or the client shuts down its
//! side (so a request split across writes works), with the same 4096-byte
//! bound and "too large message" reply. slirp4netns crashes on a missing
//! `arguments.proto`; we reply "bad arguments.proto". It truncates ports to
//! 16 bits (70000 listens on 4464); we reject ports outside 1-65535 as bad.
//! IPv6 forwards (`host_addr6`, `guest_addr6`) are refused as "bad
//! arguments.host_addr", as slirp4netns does without `--enable-ipv6`.
//!
//! # What usernet adds: seeing inside
//! Three read-only commands, with no arguments, each replying
//! `{"return":{...}}` (QMP's convention, as `add_hostfwd` does):
//! - `list_flows`: `{"return":{"flows":[FLOW...]}}`, one object per flow:
//!   `proto` (`tcp`, `udp`, `icmp`), `direction` (`out`: the guest opened
//!   it; `in`: a port forward), `guest_addr`, `guest_port` (ICMP: the echo
//!   identifier), `remote_addr`, `remote_port` (as the guest sees the
//!   peer), `host_addr` and `host_port` (only when the host side differs,
//!   e.g. 10.0.2.2 is 127.0.0.1), `state`, `guest_mac` (or null),
//!   `to_host` and `to_guest` (`{"packets":N,"bytes":N}`, payload; see
//!   `usernet_core::stats`), `age_ms`, `idle_ms`;
//! - `list_guests`: `{"return":{"guests":[{"mac":..,"ipv4":..,"ipv6":..,
//!   "from_guest":{"frames":N,"bytes":N},"to_guest":{..},"connected_ms":N}]}}`
//!   (addresses null until learnt);
//! - `stats`: `{"return":{"counters":{"frames_in":N,...},"open_flows":
//!   {"tcp":N,"udp":N,"icmp":N},"guests":N}}`, the counters
//!   `usernet_core::Counters::fields` names.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;
use serde_json::Value;
use usernet_core::Counters;
use usernet_core::config::HostFwd;
use usernet_core::host::Proto;
use usernet_core::nat::Proto as FlowProto;
use usernet_core::stats::{FlowInfo, GuestLink, Traffic};

/// The largest request, as slirp4netns's buffer (a request this long or
/// longer gets "too large message").
pub const MAX_REQUEST: usize = 4096;

/// What the API needs from the running stack.
pub trait Forwarder {
    /// Adds a port forward; returns the stack's id for it.
    fn add(&mut self, fwd: HostFwd) -> Result<usize, String>;
    /// Removes the stack's forward `id`.
    fn remove(&mut self, id: usize) -> bool;
    /// What the stack serves now, for `list_flows`, `list_guests` and
    /// `stats`.
    fn snapshot(&self) -> Snapshot;
}

/// What the stack serves at one moment: the input of the listing
/// commands and of the metrics (`crate::metrics`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The stack's counters.
    pub counters: Counters,
    /// Every flow.
    pub flows: Vec<FlowInfo>,
    /// Every guest (one per switch port; at most one today).
    pub guests: Vec<GuestLink>,
}

impl Snapshot {
    /// Open flows by protocol: TCP, UDP, ICMP.
    pub fn open_flows(&self) -> [(&'static str, usize); 3] {
        let n = |p| self.flows.iter().filter(|f| f.proto == p).count();
        [
            ("tcp", n(FlowProto::Tcp)),
            ("udp", n(FlowProto::Udp)),
            ("icmp", n(FlowProto::Icmp)),
        ]
    }
}

/// A MAC as `52:54:00:12:34:56`.
pub fn mac_string(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// A protocol's name in replies and metrics.
pub fn proto_name(p: FlowProto) -> &'static str {
    match p {
        FlowProto::Tcp => "tcp",
        FlowProto::Udp => "udp",
        FlowProto::Icmp => "icmp",
    }
}

#[derive(Serialize)]
struct Packets {
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct Frames {
    frames: u64,
    bytes: u64,
}

impl From<Traffic> for Packets {
    fn from(t: Traffic) -> Self {
        Packets {
            packets: t.packets,
            bytes: t.bytes,
        }
    }
}

impl From<Traffic> for Frames {
    fn from(t: Traffic) -> Self {
        Frames {
            frames: t.packets,
            bytes: t.bytes,
        }
    }
}

/// An entry of `list_flows`.
#[derive(Serialize)]
struct FlowEntry {
    proto: &'static str,
    direction: &'static str,
    guest_addr: String,
    guest_port: u16,
    remote_addr: String,
    remote_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_port: Option<u16>,
    state: &'static str,
    guest_mac: Option<String>,
    to_host: Packets,
    to_guest: Packets,
    age_ms: u128,
    idle_ms: u128,
}

impl From<&FlowInfo> for FlowEntry {
    fn from(f: &FlowInfo) -> Self {
        FlowEntry {
            proto: proto_name(f.proto),
            direction: if f.inbound { "in" } else { "out" },
            guest_addr: f.guest.ip().to_string(),
            guest_port: f.guest.port(),
            remote_addr: f.remote.ip().to_string(),
            remote_port: f.remote.port(),
            host_addr: f.host.map(|h| h.ip().to_string()),
            host_port: f.host.map(|h| h.port()),
            state: f.state.name(),
            guest_mac: f.guest_mac.map(mac_string),
            to_host: f.to_host.into(),
            to_guest: f.to_guest.into(),
            age_ms: f.age.as_millis(),
            idle_ms: f.idle.as_millis(),
        }
    }
}

/// An entry of `list_guests`.
#[derive(Serialize)]
struct GuestEntry {
    mac: Option<String>,
    ipv4: Option<String>,
    ipv6: Option<String>,
    from_guest: Frames,
    to_guest: Frames,
    connected_ms: u128,
}

impl From<&GuestLink> for GuestEntry {
    fn from(g: &GuestLink) -> Self {
        GuestEntry {
            mac: g.mac.map(mac_string),
            ipv4: g.ipv4.map(|a| a.to_string()),
            ipv6: g.ipv6.map(|a| a.to_string()),
            from_guest: g.from_guest.into(),
            to_guest: g.to_guest.into(),
            connected_ms: g.connected.as_millis(),
        }
    }
}

#[derive(Serialize)]
struct Return<T> {
    #[serde(rename = "return")]
    ret: T,
}

#[derive(Serialize)]
struct Flows {
    flows: Vec<FlowEntry>,
}

#[derive(Serialize)]
struct Guests {
    guests: Vec<GuestEntry>,
}

#[derive(Serialize)]
struct Stats {
    counters: serde_json::Map<String, Value>,
    open_flows: serde_json::Map<String, Value>,
    guests: usize,
}

/// `{"return": ret}` as bytes.
fn ret(ret: impl Serialize) -> Vec<u8> {
    serde_json::to_vec(&Return { ret }).unwrap_or_else(|_| error("cannot encode the reply"))
}

/// The reply to `list_flows`.
fn list_flows(snap: &Snapshot) -> Vec<u8> {
    ret(Flows {
        flows: snap.flows.iter().map(FlowEntry::from).collect(),
    })
}

/// The reply to `list_guests`.
fn list_guests(snap: &Snapshot) -> Vec<u8> {
    ret(Guests {
        guests: snap.guests.iter().map(GuestEntry::from).collect(),
    })
}

/// The reply to `stats`.
fn stats(snap: &Snapshot) -> Vec<u8> {
    let counters = snap
        .counters
        .fields()
        .iter()
        .map(|f| (f.name.to_owned(), Value::from(f.value)))
        .collect();
    let open_flows = snap
        .open_flows()
        .iter()
        .map(|(p, n)| ((*p).to_owned(), Value::from(*n)))
        .collect();
    ret(Stats {
        counters,
        open_flows,
        guests: snap.guests.len(),
    })
}

/// One forward added through the API.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    id: u64,
    /// The stack's id for it.
    stack_id: usize,
    udp: bool,
    host_addr: Ipv4Addr,
    host_port: u16,
    guest_addr: Ipv4Addr,
    guest_port: u16,
}

/// An entry of `list_hostfwd`, in slirp4netns's key order.
#[derive(Serialize)]
struct ListEntry {
    id: u64,
    proto: &'static str,
    host_addr: String,
    host_port: u16,
    guest_addr: String,
    guest_port: u16,
}

#[derive(Serialize)]
struct List {
    entries: Vec<ListEntry>,
}

/// The API's state: the forwards it added, and the next id.
#[derive(Clone, Debug)]
pub struct Api {
    entries: Vec<Entry>,
    next_id: u64,
    /// Where a forward without `guest_addr` goes (10.0.2.100 in namespace
    /// modes).
    default_guest: Ipv4Addr,
}

fn error(desc: &str) -> Vec<u8> {
    format!("{{\"error\":{{\"desc\":\"bad request: {desc}\"}}}}").into_bytes()
}

/// A JSON number as C's `(int)` of a double: `None` when absent, not a
/// number or out of `int` range (parson gives 0 for those).
fn int(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_f64)
        .filter(|f| f.is_finite() && f.abs() < 2_147_483_648.0)
        .map_or(0, |f| f.trunc() as i64)
}

fn port(v: Option<&Value>) -> Option<u16> {
    u16::try_from(int(v)).ok().filter(|p| *p != 0)
}

/// The first JSON value in `bytes` (trailing bytes ignored, as parson
/// does) and where it ends, `Err(true)` if `bytes` might still become one,
/// `Err(false)` if it never will.
fn first_value(bytes: &[u8]) -> Result<(Value, usize), bool> {
    let mut it = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    match it.next() {
        Some(Ok(v)) => Ok((v, it.byte_offset())),
        Some(Err(e)) => Err(e.is_eof()),
        None => Err(true),
    }
}

/// Whether `request` is complete: a whole JSON value, or never going to be
/// one. A connection's bytes are handled once this holds or the client
/// shut down its side.
pub fn is_complete(request: &[u8]) -> bool {
    request.len() >= MAX_REQUEST
        || request.contains(&0)
        || match first_value(request) {
            Err(more) => !more,
            // A number or literal at the very end may still grow ("1",
            // then "2") or turn out bad ("true", then "x"): only objects,
            // arrays and strings end themselves.
            Ok((v, end)) => {
                let delimited = v.is_object() || v.is_array() || v.is_string();
                delimited || end < request.len()
            }
        }
}

impl Api {
    /// No forwards; `default_guest` is where forwards without
    /// `guest_addr` go.
    pub fn new(default_guest: Ipv4Addr) -> Api {
        Api {
            entries: Vec::new(),
            next_id: 1,
            default_guest,
        }
    }

    /// Handles one request and returns the reply bytes.
    pub fn handle(&mut self, request: &[u8], fw: &mut dyn Forwarder) -> Vec<u8> {
        if request.len() >= MAX_REQUEST {
            return error("too large message");
        }
        // slirp4netns treats the buffer as a C string.
        let request = request.split(|b| *b == 0).next().unwrap_or(&[]);
        let Ok((value, _)) = first_value(request) else {
            return error("cannot parse JSON");
        };
        let Some(obj) = value.as_object() else {
            return error("json_object() failed");
        };
        let Some(execute) = obj.get("execute").and_then(Value::as_str) else {
            return error("no execute found");
        };
        let args = obj.get("arguments");
        let arg = |name: &str| args.and_then(|a| a.get(name));
        match execute {
            "add_hostfwd" => self.add(&arg, fw),
            "list_hostfwd" => self.list(),
            "remove_hostfwd" => self.remove(int(arg("id")), fw),
            "list_flows" => list_flows(&fw.snapshot()),
            "list_guests" => list_guests(&fw.snapshot()),
            "stats" => stats(&fw.snapshot()),
            _ => error("unknown execute"),
        }
    }

    // `HostFwd::guest_addr` becomes an `IpAddr` with the core's IPv6 work;
    // `.into()` builds with either.
    #[allow(clippy::useless_conversion)]
    fn add<'a>(
        &mut self,
        arg: &dyn Fn(&str) -> Option<&'a Value>,
        fw: &mut dyn Forwarder,
    ) -> Vec<u8> {
        let udp = match arg("proto").and_then(Value::as_str) {
            Some("tcp") => false,
            Some("udp") => true,
            _ => return error("add_hostfwd: bad arguments.proto"),
        };
        let mut host = arg("host_addr").and_then(Value::as_str).unwrap_or("");
        if host.is_empty() || host == "::" || host == "::0" {
            host = "0.0.0.0";
        } else if !host.contains('.') && host.contains(':') {
            // IPv6 is not served.
            return error("add_hostfwd: bad arguments.host_addr");
        }
        let Some(host_port) = port(arg("host_port")) else {
            return error("add_hostfwd: bad arguments.host_port");
        };
        let Some(guest_port) = port(arg("guest_port")) else {
            return error("add_hostfwd: bad arguments.guest_port");
        };
        let guest_addr = match arg("guest_addr").and_then(Value::as_str) {
            None | Some("") => self.default_guest,
            Some(s) => match s.parse() {
                Ok(a) => a,
                Err(_) => return error("add_hostfwd: bad arguments.guest_addr"),
            },
        };
        let Ok(host_addr) = host.parse::<Ipv4Addr>() else {
            return error("add_hostfwd: bad arguments.host_addr");
        };
        let fwd = HostFwd {
            proto: if udp { Proto::Udp } else { Proto::Tcp },
            host: SocketAddr::new(IpAddr::V4(host_addr), host_port),
            guest_addr: Some(guest_addr.into()),
            guest_port,
        };
        let stack_id = match fw.add(fwd) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!("api: add_hostfwd {fwd}: {e}");
                return error("add_hostfwd: slirp_add_hostfwd failed");
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push(Entry {
            id,
            stack_id,
            udp,
            host_addr,
            host_port,
            guest_addr,
            guest_port,
        });
        tracing::info!("api: forward {id} added: {fwd}");
        format!("{{\"return\":{{\"id\":{id}}}}}").into_bytes()
    }

    fn list(&self) -> Vec<u8> {
        let list = List {
            entries: self
                .entries
                .iter()
                .map(|e| ListEntry {
                    id: e.id,
                    proto: if e.udp { "udp" } else { "tcp" },
                    host_addr: e.host_addr.to_string(),
                    host_port: e.host_port,
                    guest_addr: e.guest_addr.to_string(),
                    guest_port: e.guest_port,
                })
                .collect(),
        };
        serde_json::to_vec(&list).unwrap_or_else(|_| error("list_hostfwd"))
    }

    fn remove(&mut self, id: i64, fw: &mut dyn Forwarder) -> Vec<u8> {
        let Some(i) = self
            .entries
            .iter()
            .position(|e| i64::try_from(e.id) == Ok(id))
        else {
            return error("remove_hostfwd: bad arguments.id");
        };
        let entry = self.entries.remove(i);
        if !fw.remove(entry.stack_id) {
            return error("remove_hostfwd: slirp_remove_hostfwd failed");
        }
        tracing::info!("api: forward {id} removed");
        b"{\"return\":{}}".to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    /// Records the forwards like the stack would, refusing duplicates.
    #[derive(Default)]
    struct Fake {
        fwds: Vec<Option<HostFwd>>,
    }

    impl Forwarder for Fake {
        fn add(&mut self, fwd: HostFwd) -> Result<usize, String> {
            let taken = self
                .fwds
                .iter()
                .flatten()
                .any(|f| f.proto == fwd.proto && f.host == fwd.host);
            if taken {
                return Err("address in use".into());
            }
            self.fwds.push(Some(fwd));
            Ok(self.fwds.len() - 1)
        }
        fn remove(&mut self, id: usize) -> bool {
            self.fwds.get_mut(id).and_then(Option::take).is_some()
        }
        fn snapshot(&self) -> Snapshot {
            testing::snapshot()
        }
    }

    /// Requests and the replies slirp4netns 1.2.0 gave, in order, against
    /// one instance (`slirp4netns -c -a SOCK PID tap0`; see the module doc).
    const SESSION: &[(&str, &str)] = &[
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080, "guest_port": 80}}"#,
            r#"{"return":{"id":1}}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "udp", "host_addr": "127.0.0.1", "host_port": 5353, "guest_addr": "10.0.2.50", "guest_port": 53}}"#,
            r#"{"return":{"id":2}}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_port": 8081, "guest_port": 81}}"#,
            r#"{"return":{"id":3}}"#,
        ),
        (
            r#"{"execute": "list_hostfwd"}"#,
            r#"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},{"id":2,"proto":"udp","host_addr":"127.0.0.1","host_port":5353,"guest_addr":"10.0.2.50","guest_port":53},{"id":3,"proto":"tcp","host_addr":"0.0.0.0","host_port":8081,"guest_addr":"10.0.2.100","guest_port":81}]}"#,
        ),
        (
            r#"{"execute": "remove_hostfwd", "arguments": {"id": 1}}"#,
            r#"{"return":{}}"#,
        ),
        (
            r#"{"execute": "remove_hostfwd", "arguments": {"id": 1}}"#,
            r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#,
        ),
        (
            r#"{"execute": "remove_hostfwd"}"#,
            r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#,
        ),
        (
            r#"{"execute": "list_hostfwd"}"#,
            r#"{"entries":[{"id":2,"proto":"udp","host_addr":"127.0.0.1","host_port":5353,"guest_addr":"10.0.2.50","guest_port":53},{"id":3,"proto":"tcp","host_addr":"0.0.0.0","host_port":8081,"guest_addr":"10.0.2.100","guest_port":81}]}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8081, "guest_port": 80}}"#,
            r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "sctp", "host_port": 1, "guest_port": 2}}"#,
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_port": 0, "guest_port": 2}}"#,
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_port": 9, "guest_port": 0}}"#,
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_port"}}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "::1", "host_port": 9, "guest_port": 2}}"#,
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_addr"}}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "1.2.3", "host_port": 9, "guest_port": 2}}"#,
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_addr"}}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_port": 9, "guest_addr": "x", "guest_port": 2}}"#,
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr"}}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp6", "host_port": 9, "guest_port": 2}}"#,
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp4", "host_port": 9, "guest_port": 2}}"#,
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}"#,
        ),
        (
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_port": "9", "guest_port": 2}}"#,
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}"#,
        ),
        (
            "{",
            r#"{"error":{"desc":"bad request: cannot parse JSON"}}"#,
        ),
        ("", r#"{"error":{"desc":"bad request: cannot parse JSON"}}"#),
        (
            "[]",
            r#"{"error":{"desc":"bad request: json_object() failed"}}"#,
        ),
        (
            r#""x""#,
            r#"{"error":{"desc":"bad request: json_object() failed"}}"#,
        ),
        (
            "{}",
            r#"{"error":{"desc":"bad request: no execute found"}}"#,
        ),
        (
            r#"{"execute": 1}"#,
            r#"{"error":{"desc":"bad request: no execute found"}}"#,
        ),
        (
            r#"{"execute": "nope"}"#,
            r#"{"error":{"desc":"bad request: unknown execute"}}"#,
        ),
        (
            "{\"execute\": \"list_hostfwd\"}\n",
            r#"{"entries":[{"id":2,"proto":"udp","host_addr":"127.0.0.1","host_port":5353,"guest_addr":"10.0.2.50","guest_port":53},{"id":3,"proto":"tcp","host_addr":"0.0.0.0","host_port":8081,"guest_addr":"10.0.2.100","guest_port":81}]}"#,
        ),
        (
            r#"{"execute":"list_hostfwd"} trailing"#,
            r#"{"entries":[{"id":2,"proto":"udp","host_addr":"127.0.0.1","host_port":5353,"guest_addr":"10.0.2.50","guest_port":53},{"id":3,"proto":"tcp","host_addr":"0.0.0.0","host_port":8081,"guest_addr":"10.0.2.100","guest_port":81}]}"#,
        ),
        (
            r#"{"execute": "remove_hostfwd", "arguments": {"id": 5.9}}"#,
            r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#,
        ),
    ];

    #[test]
    fn replies_match_slirp4netns_byte_for_byte() {
        let mut api = Api::new(Ipv4Addr::new(10, 0, 2, 100));
        let mut fake = Fake::default();
        for (req, want) in SESSION {
            let got = api.handle(req.as_bytes(), &mut fake);
            assert_eq!(String::from_utf8_lossy(&got), *want, "request {req:?}");
        }
        // The stack saw three adds and one remove.
        assert_eq!(fake.fwds.iter().flatten().count(), 2);
    }

    #[test]
    fn empty_list_and_ids_are_not_reused() {
        let mut api = Api::new(Ipv4Addr::new(10, 0, 2, 100));
        let mut fake = Fake::default();
        assert_eq!(
            api.handle(br#"{"execute":"list_hostfwd"}"#, &mut fake),
            br#"{"entries":[]}"#
        );
        let add = br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_port":2}}"#;
        assert_eq!(api.handle(add, &mut fake), br#"{"return":{"id":1}}"#);
        let rm = br#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#;
        assert_eq!(api.handle(rm, &mut fake), br#"{"return":{}}"#);
        assert_eq!(api.handle(add, &mut fake), br#"{"return":{"id":2}}"#);
    }

    #[test]
    fn too_large_and_completeness() {
        let mut api = Api::new(Ipv4Addr::new(10, 0, 2, 100));
        let big = vec![b' '; MAX_REQUEST];
        assert_eq!(
            api.handle(&big, &mut Fake::default()),
            br#"{"error":{"desc":"bad request: too large message"}}"#
        );
        assert!(!is_complete(b""));
        assert!(!is_complete(b"{\"execute\": \"li"));
        assert!(is_complete(b"{\"execute\": \"list_hostfwd\"}"));
        assert!(is_complete(b"}"));
        assert!(is_complete(&big));
        // Found by the api fuzz target: a number at the end may go on.
        assert!(!is_complete(b"\n3"));
        assert!(is_complete(b"\n3 "));
        assert!(is_complete(b"\n3\xb8"));
        assert!(is_complete(b"3 4"));
        assert!(!is_complete(b"true"));
        assert!(is_complete(b"truex"));
        assert!(is_complete(b"\"x\""));
    }

    #[test]
    fn listing_replies() {
        let mut api = Api::new(Ipv4Addr::new(10, 0, 2, 100));
        let mut fake = Fake::default();
        let mut ask = |cmd: &str| {
            let req = format!(r#"{{"execute": "{cmd}"}}"#);
            String::from_utf8(api.handle(req.as_bytes(), &mut fake)).expect("utf-8")
        };
        assert_eq!(
            ask("list_flows"),
            concat!(
                r#"{"return":{"flows":[{"proto":"tcp","direction":"out","guest_addr":"10.0.2.15","guest_port":40000,"#,
                r#""remote_addr":"10.0.2.2","remote_port":8080,"host_addr":"127.0.0.1","host_port":8080,"#,
                r#""state":"established","guest_mac":"52:54:00:12:34:56","to_host":{"packets":2,"bytes":300},"#,
                r#""to_guest":{"packets":1,"bytes":4096},"age_ms":5000,"idle_ms":250},"#,
                r#"{"proto":"icmp","direction":"out","guest_addr":"10.0.2.15","guest_port":7,"#,
                r#""remote_addr":"127.0.0.1","remote_port":0,"state":"open","guest_mac":null,"#,
                r#""to_host":{"packets":1,"bytes":64},"to_guest":{"packets":0,"bytes":0},"age_ms":1000,"idle_ms":1000}]}}"#
            )
        );
        assert_eq!(
            ask("list_guests"),
            concat!(
                r#"{"return":{"guests":[{"mac":"52:54:00:12:34:56","ipv4":"10.0.2.15","ipv6":null,"#,
                r#""from_guest":{"frames":10,"bytes":1000},"to_guest":{"frames":20,"bytes":30000},"connected_ms":61000}]}}"#
            )
        );
        let stats: Value = serde_json::from_str(&ask("stats")).expect("JSON");
        assert_eq!(stats["return"]["counters"]["frames_in"], 10);
        assert_eq!(stats["return"]["counters"]["tcp_dropped"], 0);
        assert_eq!(
            stats["return"]["counters"]
                .as_object()
                .map(serde_json::Map::len),
            Some(Counters::default().fields().len())
        );
        assert_eq!(
            stats["return"]["open_flows"],
            serde_json::json!({"tcp": 1, "udp": 0, "icmp": 1})
        );
        assert_eq!(stats["return"]["guests"], 1);
        // Arguments are ignored; unknown commands still get the error.
        assert!(ask("list_flow").contains("unknown execute"));
    }

    #[test]
    fn wildcard_v6_host_is_v4_and_ports_are_checked() {
        let mut api = Api::new(Ipv4Addr::new(10, 0, 2, 100));
        let mut fake = Fake::default();
        let add = br#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"::","host_port":7,"guest_port":7}}"#;
        assert_eq!(api.handle(add, &mut fake), br#"{"return":{"id":1}}"#);
        let f = fake.fwds[0].expect("added");
        assert_eq!(f.host, "0.0.0.0:7".parse().expect("addr"));
        assert_eq!(f.proto, Proto::Udp);
        let big = br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":70000,"guest_port":7}}"#;
        assert_eq!(
            api.handle(big, &mut fake),
            br#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}"#
        );
    }
}
