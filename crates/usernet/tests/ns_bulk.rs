//! Bulk TCP through the tap at the largest MTU and at 1500 (where the
//! tap's segmentation offload carries 64 KiB segments): 64 MiB from a
//! namespace to a host server, checked byte for byte, with no guest segment
//! dropped by usernet on the way.
//!
//! The regression this guards: at MTU 65520 each guest segment is 64 KiB,
//! and the host socket's free space (our advertised window) is an estimate,
//! so a socket sometimes takes only part of a segment. usernet used to drop
//! the rest and every segment behind it; the guest resent a window's worth
//! one segment per round trip, and throughput fell to a tenth of MTU
//! 1500's. Throughput itself is not asserted (no timing thresholds): the
//! stack's `tcp_dropped` counter, logged when usernet stops, must be 0.
//! Whether a socket refuses part of a segment depends on timing (a debug
//! build rarely gets there), so the deterministic check of that case is
//! the core test `tcp_back_pressure_keeps_in_window_data_and_shuts_the_window`;
//! this one checks the whole path with large frames.
//!
//! Runs as root inside `scripts/test.sh`'s network namespace.
mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use common::{TempDir, assert_isolated_netns, counter, stopped_counters, usernet_output};

/// Bytes sent.
const TOTAL: usize = 64 << 20;

/// A reproducible byte stream (xorshift64), so the receiver can check every
/// byte without holding a copy.
struct Pattern(u64);

impl Pattern {
    fn new() -> Pattern {
        Pattern(0x9e37_79b9_7f4a_7c15)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

#[test]
fn namespace_sends_64_mib_at_mtu_65520_without_drops() {
    send_64_mib("65520");
}

/// At MTU 1500 the tap's segmentation offload carries 64 KiB segments.
#[test]
fn namespace_sends_64_mib_at_mtu_1500_without_drops() {
    send_64_mib("1500");
}

/// Sends [`TOTAL`] bytes from a namespace at `mtu` to a host server and
/// checks them and usernet's counters.
fn send_64_mib(mtu: &str) {
    assert_isolated_netns();
    let dir = TempDir::new("bulk");
    let file = dir.join("data");
    {
        let mut f = std::fs::File::create(&file).expect("create data");
        let mut p = Pattern::new();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..TOTAL / buf.len() {
            p.fill(&mut buf);
            f.write_all(&buf).expect("write data");
        }
    }

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accepts one connection and counts the bytes matching the pattern
    // before the first mismatch. It reads slowly, so the host socket's
    // buffers stay full and usernet works at the edge of its window, where
    // the bug was (a fast reader let a slow debug build off the hook).
    let server = thread::spawn(move || -> (usize, usize) {
        let Ok((mut c, _)) = listener.accept() else {
            return (0, 0);
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
        let mut p = Pattern::new();
        let (mut buf, mut want) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        let (mut received, mut good) = (0, 0);
        let mut intact = true;
        while received < TOTAL
            && let Ok(n) = c.read(&mut buf)
        {
            if n == 0 {
                break;
            }
            if received % (1 << 18) < n {
                thread::sleep(Duration::from_millis(2));
            }
            // Compare in pattern-sized steps: reads may split anywhere.
            let mut off = 0;
            while off < n {
                let pos = received % 8;
                let take = (8 - pos).min(n - off);
                if pos == 0 {
                    p.fill(&mut want[..8]);
                }
                if intact && buf[off..off + take] == want[pos..pos + take] {
                    good += take;
                } else {
                    intact = false;
                }
                received += take;
                off += take;
            }
        }
        // The namespace (and its socket) ends with the command: it waits
        // for this word before exiting.
        let _ = c.write_all(b"done\n");
        (received, good)
    });

    let script = format!(
        "exec 3<>/dev/tcp/10.0.2.2/{port}; cat {} >&3; head -c 5 <&3",
        file.to_str().expect("utf-8 path")
    );
    let out = usernet_output(
        &[
            "ns",
            "--mtu",
            mtu,
            "--dns-upstream",
            "127.0.0.1:9",
            "--",
            "bash",
            "-c",
            &script,
        ],
        Duration::from_secs(240),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}:\n{log}", out.status);
    let (received, good) = server.join().expect("server thread");
    assert_eq!(received, TOTAL, "bytes received\n{log}");
    assert_eq!(good, TOTAL, "bytes intact\n{log}");
    assert_eq!(
        stopped_counters(&log).and_then(|c| counter(c, "tcp_dropped")),
        Some(0),
        "usernet log:\n{log}"
    );
    assert_eq!(
        stopped_counters(&log).and_then(|c| counter(c, "malformed")),
        Some(0),
        "usernet log:\n{log}"
    );
}
