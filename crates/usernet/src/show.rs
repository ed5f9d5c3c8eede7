//! The tables `usernet flows`, `usernet guests` and `usernet stats` print:
//! an API reply ([`crate::api`]'s `list_flows`, `list_guests`, `stats`) in
//! aligned columns, as `ss` prints sockets.
//!
//! The reply is read as loose JSON (a field missing or of the wrong type
//! is a [`BadReply`] naming it), so a newer server's extra fields do not
//! break an older client. Columns are padded to their widest cell; counts
//! are right-aligned, everything else left-aligned; the last column is not
//! padded.
use serde_json::Value;

/// The reply is not what the command expects.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadReply {
    /// The server answered with an error.
    #[error("{0}")]
    Error(String),
    /// A field is missing or of the wrong type.
    #[error("bad reply: no {0}")]
    Missing(&'static str),
}

/// How a column's cells line up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Formats `rows` under `header` in aligned columns.
fn table(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|(h, _)| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let head: Vec<String> = header.iter().map(|(h, _)| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let (w, align) = (widths[i], header[i].1);
            let pad = w.saturating_sub(cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if align == Align::Right {
                line.extend(std::iter::repeat_n(' ', pad));
            }
            line.push_str(cell);
            if align == Align::Left && i + 1 < row.len() {
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The object under `"return"`, or the server's error.
fn returned(reply: &Value) -> Result<&Value, BadReply> {
    if let Some(desc) = reply.pointer("/error/desc").and_then(Value::as_str) {
        return Err(BadReply::Error(desc.to_owned()));
    }
    reply.get("return").ok_or(BadReply::Missing("return"))
}

fn text(v: &Value, key: &'static str) -> Result<String, BadReply> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) => Ok("-".into()),
        _ => Err(BadReply::Missing(key)),
    }
}

fn num(v: &Value, key: &'static str) -> Result<u64, BadReply> {
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or(BadReply::Missing(key))
}

/// `addr:port`, with an IPv6 address in brackets.
fn endpoint(v: &Value, addr: &'static str, port: &'static str) -> Result<String, BadReply> {
    let a = text(v, addr)?;
    let p = num(v, port)?;
    Ok(if a.contains(':') {
        format!("[{a}]:{p}")
    } else {
        format!("{a}:{p}")
    })
}

/// `packets/bytes` of a `{"packets":..,"bytes":..}` (or `frames`) object.
fn traffic(v: &Value, key: &'static str, unit: &'static str) -> Result<String, BadReply> {
    let t = v.get(key).ok_or(BadReply::Missing(key))?;
    Ok(format!("{}/{}", num(t, unit)?, num(t, "bytes")?))
}

/// A duration in milliseconds, short: `850ms`, `12.3s`, `4m05s`, `2h07m`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}.{}s", s, (ms % 1000) / 100),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
    }
}

fn items<'a>(ret: &'a Value, key: &'static str) -> Result<&'a Vec<Value>, BadReply> {
    ret.get(key)
        .and_then(Value::as_array)
        .ok_or(BadReply::Missing(key))
}

/// The table of a `list_flows` reply.
pub fn flows(reply: &Value) -> Result<String, BadReply> {
    use Align::{Left, Right};
    let header = [
        ("PROTO", Left),
        ("DIR", Left),
        ("STATE", Left),
        ("GUEST", Left),
        ("REMOTE", Left),
        ("HOST", Left),
        ("TO_HOST(PKTS/BYTES)", Right),
        ("TO_GUEST(PKTS/BYTES)", Right),
        ("AGE", Right),
        ("IDLE", Right),
        ("MAC", Left),
    ];
    let mut rows = Vec::new();
    for f in items(returned(reply)?, "flows")? {
        let host = match f.get("host_addr") {
            Some(_) => endpoint(f, "host_addr", "host_port")?,
            None => "-".into(),
        };
        rows.push(vec![
            text(f, "proto")?,
            text(f, "direction")?,
            text(f, "state")?,
            endpoint(f, "guest_addr", "guest_port")?,
            endpoint(f, "remote_addr", "remote_port")?,
            host,
            traffic(f, "to_host", "packets")?,
            traffic(f, "to_guest", "packets")?,
            duration(num(f, "age_ms")?),
            duration(num(f, "idle_ms")?),
            text(f, "guest_mac")?,
        ]);
    }
    Ok(table(&header, &rows))
}

/// The table of a `list_guests` reply.
pub fn guests(reply: &Value) -> Result<String, BadReply> {
    use Align::{Left, Right};
    let header = [
        ("MAC", Left),
        ("IPV4", Left),
        ("IPV6", Left),
        ("FROM_GUEST(FRAMES/BYTES)", Right),
        ("TO_GUEST(FRAMES/BYTES)", Right),
        ("CONNECTED", Right),
    ];
    let mut rows = Vec::new();
    for g in items(returned(reply)?, "guests")? {
        rows.push(vec![
            text(g, "mac")?,
            text(g, "ipv4")?,
            text(g, "ipv6")?,
            traffic(g, "from_guest", "frames")?,
            traffic(g, "to_guest", "frames")?,
            duration(num(g, "connected_ms")?),
        ]);
    }
    Ok(table(&header, &rows))
}

/// The table of a `stats` reply: one counter a line, then the open flows
/// by protocol and the number of guests.
pub fn stats(reply: &Value) -> Result<String, BadReply> {
    let ret = returned(reply)?;
    let mut rows = Vec::new();
    for (key, what) in [("counters", ""), ("open_flows", "open_flows_")] {
        let map = ret
            .get(key)
            .and_then(Value::as_object)
            .ok_or(BadReply::Missing(key))?;
        for (name, v) in map {
            let v = v.as_u64().ok_or(BadReply::Missing(key))?;
            rows.push(vec![format!("{what}{name}"), v.to_string()]);
        }
    }
    rows.push(vec!["guests".into(), num(ret, "guests")?.to_string()]);
    Ok(table(
        &[("COUNTER", Align::Left), ("VALUE", Align::Right)],
        &rows,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Api, Forwarder, Snapshot};
    use crate::testing;
    use usernet_core::config::HostFwd;

    struct Fixed;

    impl Forwarder for Fixed {
        fn add(&mut self, _: HostFwd) -> Result<usize, String> {
            Err("no".into())
        }
        fn remove(&mut self, _: usize) -> bool {
            false
        }
        fn snapshot(&self) -> Snapshot {
            testing::snapshot()
        }
    }

    fn reply(cmd: &str) -> Value {
        let mut api = Api::new([10, 0, 2, 100].into());
        let req = format!(r#"{{"execute":"{cmd}"}}"#);
        serde_json::from_slice(&api.handle(req.as_bytes(), &mut Fixed)).expect("JSON")
    }

    #[test]
    fn flows_table_is_aligned() {
        let want = "\
PROTO  DIR  STATE        GUEST            REMOTE         HOST            TO_HOST(PKTS/BYTES)  TO_GUEST(PKTS/BYTES)   AGE   IDLE  MAC
tcp    out  established  10.0.2.15:40000  10.0.2.2:8080  127.0.0.1:8080                2/300                1/4096  5.0s  250ms  52:54:00:12:34:56
icmp   out  open         10.0.2.15:7      127.0.0.1:0    -                              1/64                   0/0  1.0s   1.0s  -
";
        assert_eq!(flows(&reply("list_flows")).expect("table"), want);
    }

    #[test]
    fn guests_and_stats_tables() {
        let want = "\
MAC                IPV4       IPV6  FROM_GUEST(FRAMES/BYTES)  TO_GUEST(FRAMES/BYTES)  CONNECTED
52:54:00:12:34:56  10.0.2.15  -                      10/1000                20/30000      1m01s
";
        assert_eq!(guests(&reply("list_guests")).expect("table"), want);
        let t = stats(&reply("stats")).expect("table");
        assert!(
            t.starts_with("COUNTER          VALUE\nframes_in           10\n"),
            "{t}"
        );
        assert!(t.contains("\nopen_flows_tcp       1\n"), "{t}");
        assert!(t.ends_with("\nguests               1\n"), "{t}");
    }

    #[test]
    fn bad_replies_name_what_is_wrong() {
        let v = |s: &str| serde_json::from_str::<Value>(s).expect("JSON");
        assert_eq!(
            flows(&v(r#"{"error":{"desc":"bad request: unknown execute"}}"#)),
            Err(BadReply::Error("bad request: unknown execute".into()))
        );
        assert_eq!(flows(&v("{}")), Err(BadReply::Missing("return")));
        assert_eq!(
            flows(&v(r#"{"return":{"flows":[{"proto":"tcp"}]}}"#)),
            Err(BadReply::Missing("direction"))
        );
        assert_eq!(
            stats(&v(r#"{"return":{}}"#)),
            Err(BadReply::Missing("counters"))
        );
        assert_eq!(
            guests(&v(r#"{"return":{"guests":[]}}"#)).expect("empty"),
            "MAC  IPV4  IPV6  FROM_GUEST(FRAMES/BYTES)  TO_GUEST(FRAMES/BYTES)  CONNECTED\n"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(999), "999ms");
        assert_eq!(duration(12_345), "12.3s");
        assert_eq!(duration(245_000), "4m05s");
        assert_eq!(duration(7_620_000), "2h07m");
    }
}
