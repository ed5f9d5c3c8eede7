//! Fuzz target `http`: the metrics exporter's request parsing
//! (`usernet::metrics::parse_request`) as the server sees a request: the
//! bytes read so far, at most `MAX_REQUEST` of them.
//!
//! Checked: it never panics; the server's view is consistent (once a
//! prefix is complete, so is every longer prefix, and within the bound a
//! complete request's verdict depends only on its first line); the
//! response is a well-formed HTTP/1.1 head with a Content-Length that
//! matches its body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usernet::metrics::{MAX_REQUEST, Request, parse_request, response};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_REQUEST)];
    let first = (1..=data.len()).find(|&k| parse_request(&data[..k]).is_some());
    if let Some(k) = first {
        for n in k..=data.len() {
            assert!(parse_request(&data[..n]).is_some(), "complete, then not");
        }
    }
    let req = parse_request(data).unwrap_or(Request::Bad);
    let reply = response(req, || "m 1\n# EOF\n".into());
    let text = std::str::from_utf8(&reply).expect("the response is text");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|l| l.parse::<usize>().ok())
        .expect("Content-Length");
    assert_eq!(len, body.len());
});
