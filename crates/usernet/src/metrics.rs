//! `--metrics ADDR:PORT`: a [`Snapshot`] in Prometheus' exposition format
//! (OpenMetrics text, encoded by the `prometheus-client` crate), and the
//! tiny part of HTTP/1.x the exporter speaks.
//!
//! # Metrics
//! - `usernet_<counter>_total`: each of `usernet_core::Counters::fields`
//!   (`usernet_frames_in_total`, `usernet_malformed_total`, ...);
//! - `usernet_open_flows{proto="tcp"|"udp"|"icmp"}`: flows open now;
//! - `usernet_guests`: guests connected now;
//! - per guest, labelled `mac` (one series per guest, so bounded by the
//!   number of guests; `unknown` before the MAC is learnt):
//!   `usernet_guest_frames_from_guest_total`,
//!   `usernet_guest_bytes_from_guest_total`,
//!   `usernet_guest_frames_to_guest_total`,
//!   `usernet_guest_bytes_to_guest_total`,
//!   `usernet_guest_connected_seconds`.
//!
//! # HTTP
//! [`parse_request`] reads one request head (at most [`MAX_REQUEST`]
//! bytes, ended by an empty line): `GET /metrics` (a query string is
//! ignored) is answered with the metrics, another path with 404, another
//! method with 405, anything unparsable or too long with 400; every
//! response closes the connection. The socket side (non-blocking, in the
//! event loop) is the binary's `metrics_server`.
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::api::{Snapshot, mac_string};

/// The longest request head read; longer ones get 400.
pub const MAX_REQUEST: usize = 8192;

/// The content type of [`encode_snapshot`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of a series.
type Labels = Vec<(&'static str, String)>;

/// The metrics of `snap` as OpenMetrics text (ending `# EOF`).
pub fn encode_snapshot(snap: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("usernet");
    for f in snap.counters.fields() {
        registry.register(f.name, f.help, ConstCounter::new(f.value));
    }
    let open = Family::<Labels, Gauge>::default();
    for (proto, n) in snap.open_flows() {
        open.get_or_create(&vec![("proto", proto.to_owned())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    registry.register("open_flows", "Flows open now, by protocol", open);
    let guests = i64::try_from(snap.guests.len()).unwrap_or(i64::MAX);
    registry.register("guests", "Guests connected now", ConstGauge::new(guests));

    let counter = Family::<Labels, Counter>::default;
    let (frames_in, bytes_in, frames_out, bytes_out) = (counter(), counter(), counter(), counter());
    let connected = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for g in &snap.guests {
        let mac = g.mac.map_or_else(|| "unknown".to_owned(), mac_string);
        let labels = vec![("mac", mac)];
        frames_in
            .get_or_create(&labels)
            .inc_by(g.from_guest.packets);
        bytes_in.get_or_create(&labels).inc_by(g.from_guest.bytes);
        frames_out.get_or_create(&labels).inc_by(g.to_guest.packets);
        bytes_out.get_or_create(&labels).inc_by(g.to_guest.bytes);
        connected
            .get_or_create(&labels)
            .set(g.connected.as_secs_f64());
    }
    let per_guest = [
        ("frames_from_guest", "Frames from the guest", frames_in),
        (
            "bytes_from_guest",
            "Bytes of frames from the guest",
            bytes_in,
        ),
        ("frames_to_guest", "Frames to the guest", frames_out),
        ("bytes_to_guest", "Bytes of frames to the guest", bytes_out),
    ];
    let guest = registry.sub_registry_with_prefix("guest");
    for (name, help, family) in per_guest {
        guest.register(name, help, family);
    }
    guest.register(
        "connected_seconds",
        "Time since the guest's first frame",
        connected,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// What a complete request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics`.
    Metrics,
    /// A GET (or HEAD) of another path: 404.
    NotFound,
    /// Another method: 405.
    BadMethod,
    /// Not HTTP, or too long: 400.
    Bad,
}

/// The request in `head`, or `None` while it may still grow into one
/// (no empty line yet, and under [`MAX_REQUEST`]).
pub fn parse_request(head: &[u8]) -> Option<Request> {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        // Also accept bare newlines, as curl -0 and hand-typed requests
        // in netcat may send.
        if head.windows(2).any(|w| w == b"\n\n") {
            return Some(parse_line(head));
        }
        return (head.len() >= MAX_REQUEST).then_some(Request::Bad);
    };
    if end >= MAX_REQUEST {
        return Some(Request::Bad);
    }
    Some(parse_line(&head[..end]))
}

/// The request line's verdict.
fn parse_line(head: &[u8]) -> Request {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Request::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Request::Bad;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Request::Metrics,
        ("GET" | "HEAD", _) => Request::NotFound,
        _ => Request::BadMethod,
    }
}

/// The whole response to `req`; `metrics` renders the body of a
/// [`Request::Metrics`] (only called for it).
pub fn response(req: Request, metrics: impl FnOnce() -> String) -> Vec<u8> {
    let (status, ctype, body) = match req {
        Request::Metrics => ("200 OK", CONTENT_TYPE, metrics()),
        Request::NotFound => ("404 Not Found", "text/plain", "only /metrics\n".into()),
        Request::BadMethod => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
        Request::Bad => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let allow = if req == Request::BadMethod {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn exposition_of_the_fixture() {
        let text = encode_snapshot(&testing::snapshot());
        for line in [
            "# HELP usernet_frames_in Frames received from the guest.",
            "# TYPE usernet_frames_in counter",
            "usernet_frames_in_total 10",
            "usernet_malformed_total 1",
            "usernet_tcp_dropped_total 0",
            "# TYPE usernet_open_flows gauge",
            "usernet_open_flows{proto=\"tcp\"} 1",
            "usernet_open_flows{proto=\"udp\"} 0",
            "usernet_open_flows{proto=\"icmp\"} 1",
            "usernet_guests 1",
            "usernet_guest_frames_from_guest_total{mac=\"52:54:00:12:34:56\"} 10",
            "usernet_guest_bytes_to_guest_total{mac=\"52:54:00:12:34:56\"} 30000",
            "usernet_guest_connected_seconds{mac=\"52:54:00:12:34:56\"} 61.0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // No guest: the per-guest families are there, with no series.
        let empty = encode_snapshot(&Snapshot::default());
        assert!(!empty.contains("mac="), "{empty}");
        assert!(empty.contains("usernet_guests 0\n"), "{empty}");
    }

    #[test]
    fn requests() {
        let p = |s: &str| parse_request(s.as_bytes());
        assert_eq!(
            p("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Request::Metrics)
        );
        assert_eq!(
            p("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(Request::Metrics)
        );
        assert_eq!(p("GET /metrics HTTP/1.1\n\n"), Some(Request::Metrics));
        assert_eq!(p("GET / HTTP/1.1\r\n\r\n"), Some(Request::NotFound));
        assert_eq!(p("HEAD /metrics HTTP/1.1\r\n\r\n"), Some(Request::NotFound));
        assert_eq!(
            p("POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Request::BadMethod)
        );
        assert_eq!(p("GET /metrics HTTP/1.1\r\n"), None, "head not ended");
        assert_eq!(p("GET /metrics\r\n\r\n"), Some(Request::Bad));
        assert_eq!(p("\u{0}\u{1}\r\n\r\n"), Some(Request::Bad));
        assert_eq!(p("GET metrics HTTP/1.1\r\n\r\n"), Some(Request::Bad));
        assert_eq!(p(&"x".repeat(MAX_REQUEST)), Some(Request::Bad));
        assert_eq!(p(&"x".repeat(MAX_REQUEST - 1)), None);
        let invalid = b"GET /\xff HTTP/1.1\r\n\r\n";
        assert_eq!(parse_request(invalid), Some(Request::Bad));
    }

    #[test]
    fn responses() {
        let ok = response(Request::Metrics, || "m 1\n# EOF\n".into());
        let ok = String::from_utf8(ok).expect("utf-8");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 10\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nm 1\n# EOF\n"), "{ok}");
        let nf = response(Request::NotFound, || unreachable!("no body rendered"));
        assert!(nf.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
        let bm = String::from_utf8(response(Request::BadMethod, String::new)).expect("utf-8");
        assert!(
            bm.starts_with("HTTP/1.1 405 ") && bm.contains("Allow: GET\r\n"),
            "{bm}"
        );
    }
}
