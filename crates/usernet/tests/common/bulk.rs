//! Bulk-transfer helpers shared by the guest tests: deterministic data,
//! the host's `sha256sum`, clients that retry until the guest's server is
//! up, and console parsing.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// 64 MiB, the size of every bulk transfer.
pub const BULK: usize = 64 << 20;

/// How long the host keeps retrying a client until the guest's server is up.
pub const RETRY: Duration = Duration::from_secs(60);

/// A free TCP (and, in practice, UDP) port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = l.local_addr().expect("local addr").port();
    let u = UdpSocket::bind(("127.0.0.1", port));
    match u {
        Ok(_) => port,
        Err(_) => free_port(),
    }
}

/// `len` deterministic pseudo-random bytes (xorshift64*, seeded).
pub fn prng_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The host's `sha256sum`, fed incrementally.
pub struct Sha256 {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Sha256 {
    pub fn new() -> Sha256 {
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run sha256sum");
        let stdin = child.stdin.take();
        Sha256 { child, stdin }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.stdin
            .as_mut()
            .expect("sha256sum stdin")
            .write_all(data)
            .expect("feed sha256sum");
    }

    /// The lower-case hex digest.
    pub fn finish(mut self) -> String {
        drop(self.stdin.take());
        let out = self.child.wait_with_output().expect("wait for sha256sum");
        assert!(out.status.success(), "sha256sum failed");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("sha256sum output")
            .to_string()
    }
}

pub fn sha256(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.finish()
}

/// Reads a stream to its end, returning (byte count, sha256).
pub fn hash_stream(r: &mut impl Read) -> (usize, String) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                h.update(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {total} bytes: {e}"),
        }
    }
    (total, h.finish())
}

/// The value of the first console line `KEY=VALUE` (trimmed).
pub fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

/// The hash `sha256sum` printed for `path` in the guest.
pub fn guest_sha<'a>(out: &'a str, path: &str) -> Option<&'a str> {
    out.lines().find_map(|l| {
        let (hash, name) = l.trim().split_once(char::is_whitespace)?;
        (name.trim() == path && hash.len() == 64).then_some(hash)
    })
}

pub fn join<T>(h: JoinHandle<T>, what: &str) -> T {
    h.join()
        .unwrap_or_else(|_| panic!("{what} thread panicked"))
}

/// Whether `nslookup` output has an answer line `Address: ADDR`.
pub fn has_address(nslookup: &str, addr: &str) -> bool {
    nslookup
        .lines()
        .any(|l| l.strip_prefix("Address:").map(str::trim) == Some(addr))
}

/// Connects to `addr` until the peer sends something (the guest's server
/// may not listen yet); returns everything it sent.
pub fn fetch_with_retry(addr: (Ipv4Addr, u16)) -> Vec<u8> {
    let deadline = Instant::now() + RETRY;
    loop {
        if let Ok(mut c) = TcpStream::connect(addr) {
            let mut got = Vec::new();
            if c.read_to_end(&mut got).is_ok() && !got.is_empty() {
                return got;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no data from {addr:?} in {RETRY:?}"
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// Connects to `addr` until the connection survives a short wait (a guest
/// without a listener resets it), then sends `data` and closes.
pub fn send_with_retry(addr: (Ipv4Addr, u16), data: &[u8]) {
    let deadline = Instant::now() + RETRY;
    loop {
        if let Ok(mut c) = TcpStream::connect(addr) {
            c.set_read_timeout(Some(Duration::from_millis(700)))
                .expect("timeout");
            let mut b = [0u8; 1];
            match c.read(&mut b) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    c.write_all(data).expect("send over the forward");
                    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
                    return;
                }
                _ => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "{addr:?} never accepted in {RETRY:?}"
        );
        thread::sleep(Duration::from_millis(500));
    }
}
