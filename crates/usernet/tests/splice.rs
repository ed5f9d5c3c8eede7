//! The splice path end to end: `usernet attach` with a `--hostfwd` to the
//! namespace's 127.0.0.1 and a `--tcp-ns` forward from the namespace's
//! 127.0.0.1 to the host's. Neither can go through the tap (a namespace's
//! loopback is not reachable from its tap), so bytes arriving at all mean
//! they were spliced; sha256 sums check that every byte arrived, both ways
//! on each connection (with a half-close in between), on two connections
//! at once per direction, under the sandbox.
//!
//! The test's own sockets inside the namespace are made by a thread that
//! entered it (`setns`). Runs as root inside `scripts/test.sh`'s network
//! namespace.
#![allow(unsafe_code)] // setns(2) for the test's own sockets in the namespace.
mod common;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::thread;
use std::time::{Duration, Instant};

use common::bulk::{prng_bytes, sha256};
use common::ns::{attach, free_port, namespace, wait_for_tap};
use common::{TempDir, assert_isolated_netns};

/// Bytes each way on each connection.
const LEN: usize = 16 << 20;
/// The namespace-side ports.
const NS_SERVER: u16 = 7000;
const NS_FORWARD: u16 = 6100;

/// Runs `f` on a thread inside process `pid`'s network namespace.
fn in_netns<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = File::open(format!("/proc/{pid}/ns/net")).expect("open netns");
    thread::spawn(move || {
        // SAFETY: setns takes a descriptor we own and a namespace type; it
        // moves only this thread.
        let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

/// Serves `n` connections on `l`, each: reads to the end, answers the
/// sha256 of what came (64 hex digits), then [`LEN`] bytes of seed 2.
fn serve(l: TcpListener, n: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..n {
            let (mut c, _) = l.accept().expect("accept");
            workers.push(thread::spawn(move || {
                let mut got = Vec::new();
                c.read_to_end(&mut got).expect("server read");
                c.write_all(sha256(&got).as_bytes()).expect("write sum");
                c.write_all(&prng_bytes(2, LEN)).expect("write data");
            }));
        }
        for w in workers {
            w.join().expect("server worker");
        }
    })
}

/// Connects to `port` on 127.0.0.1 (retrying while the forward comes up),
/// sends [`LEN`] bytes of seed 1, half-closes, and checks both sums.
fn exchange(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "connect {port}: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    };
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let data = prng_bytes(1, LEN);
    c.write_all(&data).expect("client write");
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("client read");
    assert!(back.len() >= 64, "short answer: {} bytes", back.len());
    assert_eq!(
        String::from_utf8_lossy(&back[..64]),
        sha256(&data),
        "the server's sum of what we sent"
    );
    assert_eq!(back.len() - 64, LEN, "bytes back");
    assert_eq!(
        sha256(&back[64..]),
        sha256(&prng_bytes(2, LEN)),
        "what came back"
    );
}

#[test]
fn splice_forwards_carry_every_byte_both_ways() {
    assert_isolated_netns();
    let ns = namespace();
    let pid = ns.pid();
    let dir = TempDir::new("splice");
    let host_fwd = free_port();
    let host_server = TcpListener::bind("127.0.0.1:0").expect("bind host server");
    let host_port = host_server.local_addr().expect("addr").port();
    let userns = format!("/proc/{pid}/ns/user");
    let fwd = format!("tcp:127.0.0.1:{host_fwd}-127.0.0.1:{NS_SERVER}");
    let tcp_ns = format!("{NS_FORWARD}:{host_port}");
    let pid_s = pid.to_string();
    let _usernet = attach(
        &dir,
        &[
            "--dns-upstream",
            "127.0.0.1:9",
            "--userns-path",
            &userns,
            "--hostfwd",
            &fwd,
            "--tcp-ns",
            &tcp_ns,
            &pid_s,
        ],
    );
    let log = || std::fs::read_to_string(dir.join("usernet.log")).unwrap_or_default();
    wait_for_tap(pid, "tap0", &log);

    // host -> namespace: a server on the namespace's loopback (up by now:
    // usernet's helper set it up before the tap was made).
    let ns_server = in_netns(pid, || TcpListener::bind(("127.0.0.1", NS_SERVER)));
    let ns_server = ns_server.unwrap_or_else(|e| panic!("bind in the namespace: {e}\n{}", log()));
    let ns_served = serve(ns_server, 2);
    let clients: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || exchange(host_fwd)))
        .collect();
    for c in clients {
        c.join()
            .unwrap_or_else(|_| panic!("host->ns\nlog:\n{}", log()));
    }
    ns_served.join().expect("namespace server");

    // namespace -> host (--tcp-ns); threads spawned in the namespace's
    // thread are in the namespace too.
    let host_served = serve(host_server, 2);
    let all_ok = in_netns(pid, || {
        let clients: Vec<_> = (0..2)
            .map(|_| thread::spawn(move || exchange(NS_FORWARD)))
            .collect();
        clients.into_iter().all(|c| c.join().is_ok())
    });
    assert!(all_ok, "ns->host\nlog:\n{}", log());
    host_served.join().expect("host server");
}
