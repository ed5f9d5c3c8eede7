//! Fuzz target `api`: the slirp4netns JSON API (`usernet::api`) as a
//! session of requests against a fake forwarder.
//!
//! Input: byte 0 configures the forwarder (bit 0: every add fails, as when
//! the host port is taken; bits 1-3: room for 2^n forwards), the rest is
//! requests separated by `0x1e` (ASCII record separator, which JSON never
//! contains unescaped), at most [`MAX_REQUESTS`]. Checked for each request:
//! - the reply is one JSON object with exactly one key, `return`,
//!   `entries` or `error`, of bounded size;
//! - once a prefix of the request is complete (`api::is_complete`, where
//!   the server stops reading), the rest of the request changes nothing:
//!   the reply to the prefix is the reply to the whole (from the same
//!   state), unless the whole is too large;
//! - after it, `list_hostfwd` lists exactly the forwards the fake
//!   forwarder holds, with distinct, increasing ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use usernet::api::{self, Api, Forwarder};
use usernet_core::config::HostFwd;

/// Requests per input.
const MAX_REQUESTS: usize = 64;

/// Records forwards like the stack: refuses a host address taken twice.
#[derive(Clone, Default)]
struct Fake {
    fwds: Vec<Option<HostFwd>>,
    fail: bool,
    room: usize,
}

impl Fake {
    fn live(&self) -> usize {
        self.fwds.iter().flatten().count()
    }
}

impl Forwarder for Fake {
    fn add(&mut self, fwd: HostFwd) -> Result<usize, String> {
        let taken = self
            .fwds
            .iter()
            .flatten()
            .any(|f| f.proto == fwd.proto && f.host == fwd.host);
        if self.fail || taken || self.live() >= self.room {
            return Err("refused".into());
        }
        self.fwds.push(Some(fwd));
        Ok(self.fwds.len() - 1)
    }
    fn remove(&mut self, id: usize) -> bool {
        self.fwds.get_mut(id).and_then(Option::take).is_some()
    }
    fn snapshot(&self) -> api::Snapshot {
        api::Snapshot::default()
    }
}

/// Checks the shape of a reply and returns it parsed.
fn check_reply(reply: &[u8], entries: usize) -> Value {
    // Errors are one short sentence; an entry is well under 200 bytes
    // (two addresses, two ports, an id).
    assert!(
        reply.len() <= 128 + 200 * entries,
        "reply of {} bytes for {entries} entries",
        reply.len()
    );
    let value: Value = serde_json::from_slice(reply).expect("the reply is JSON");
    let obj = value.as_object().expect("the reply is an object");
    assert_eq!(obj.len(), 1, "one key: {value}");
    let key = obj.keys().next().map(String::as_str);
    assert!(
        matches!(key, Some("return" | "entries" | "error")),
        "unexpected reply {value}"
    );
    value
}

/// Lists the forwards and checks them against the fake forwarder.
fn check_list(api: &mut Api, fake: &mut Fake) {
    let reply = api.handle(br#"{"execute":"list_hostfwd"}"#, fake);
    let value = check_reply(&reply, fake.live());
    let entries = value["entries"].as_array().expect("a list");
    assert_eq!(entries.len(), fake.live(), "list and forwarder agree");
    let ids: Vec<u64> = entries.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(ids.len(), entries.len(), "every entry has an id");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let mut fake = Fake {
        fail: config & 1 != 0,
        room: 1 << ((config >> 1) & 7),
        ..Fake::default()
    };
    let mut api = Api::new(std::net::Ipv4Addr::new(10, 0, 2, 100));
    for request in rest.split(|b| *b == 0x1e).take(MAX_REQUESTS) {
        // A few places the server might have stopped reading (checking
        // every prefix would be quadratic).
        let n = request.len();
        let stop = [n / 3, n / 2, n.saturating_sub(1)]
            .into_iter()
            .find(|&k| k > 0 && k < n && api::is_complete(&request[..k]));
        if let Some(k) = stop {
            assert!(api::is_complete(request), "complete, then incomplete");
            if request.len() < api::MAX_REQUEST {
                let (mut a2, mut f2) = (api.clone(), fake.clone());
                let short = a2.handle(&request[..k], &mut f2);
                let whole = api.handle(request, &mut fake);
                assert_eq!(
                    String::from_utf8_lossy(&short),
                    String::from_utf8_lossy(&whole),
                    "bytes after a complete request changed the reply"
                );
                check_reply(&whole, fake.live());
                check_list(&mut api, &mut fake);
                continue;
            }
        }
        let reply = api.handle(request, &mut fake);
        check_reply(&reply, fake.live());
        check_list(&mut api, &mut fake);
    }
});
