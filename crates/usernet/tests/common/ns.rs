//! Helpers for the namespace tests (`ns.rs`, `slirp4netns.rs`,
//! `podman.rs`, `restrict.rs`): tiny host TCP and UDP servers, a namespace
//! to attach to, the slirp4netns API client, and a UDP relay that puts the
//! [`TestResolver`] on port 53 (for modes that read the nameserver from
//! resolv.conf).
//!
//! Everything is started by the test and stopped, by PID, on drop.
//!
//! [`TestResolver`]: super::TestResolver
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A host TCP server on 127.0.0.1 answering every connection with a fixed
/// HTTP/1.0 response carrying `body`.
pub struct HttpServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Starts the server on a free port.
    pub fn start(body: &str) -> HttpServer {
        HttpServer::start_on(0, body)
    }

    /// Starts the server on `port` of 127.0.0.1 (0: a free one).
    pub fn start_on(port: u16, body: &str) -> HttpServer {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("bind http server");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let reply = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 2048];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(reply.as_bytes());
                        let _ = c.shutdown(Shutdown::Both);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        HttpServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A background server thread, stopped on drop, counting what it served.
pub struct Server {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// A TCP server on `addr` (port 0 for a free one) that writes `banner`
    /// to every connection and closes it; counts connections.
    pub fn tcp_banner(addr: &str, banner: &'static str) -> Server {
        let l = TcpListener::bind(addr).expect("bind tcp banner server");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        Server::spawn(addr, move |served| match l.accept() {
            Ok((mut c, _)) => {
                served.fetch_add(1, Ordering::Relaxed);
                let _ = c.set_nonblocking(false);
                let _ = c.write_all(banner.as_bytes());
                let _ = c.shutdown(Shutdown::Both);
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        })
    }

    /// A UDP server on `addr` (port 0 for a free one) that answers every
    /// datagram with `echo:` and the datagram; counts datagrams.
    pub fn udp_echo(addr: &str) -> Server {
        let sock = UdpSocket::bind(addr).expect("bind udp echo server");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let mut buf = vec![0u8; 65536];
        Server::spawn(addr, move |served| {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                served.fetch_add(1, Ordering::Relaxed);
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, peer);
            }
        })
    }

    /// Runs `step` (which must return within ~50 ms) until dropped.
    fn spawn(addr: SocketAddr, mut step: impl FnMut(&AtomicUsize) + Send + 'static) -> Server {
        let served = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, n) = (stop.clone(), served.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                step(&n);
            }
        });
        Server {
            addr,
            served,
            stop,
            thread: Some(thread),
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections or datagrams it served so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A process killed (by PID) and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `usernet attach ARGS` with its log in `dir/usernet.log`.
pub fn attach(dir: &super::TempDir, args: &[&str]) -> Proc {
    let log = std::fs::File::create(dir.join("usernet.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_usernet"))
        .arg("attach")
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("start usernet attach");
    Proc(child)
}

/// A new user + network namespace held by `sleep` (`unshare --user
/// --map-root-user --net`), to attach to.
pub fn namespace() -> Proc {
    let child = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "sleep", "120"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start unshare");
    let p = Proc(child);
    // unshare execs sleep once the namespaces exist.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", p.pid())).unwrap_or_default();
        if comm.trim() == "sleep" {
            return p;
        }
        assert!(Instant::now() < deadline, "unshare did not start sleep");
        thread::sleep(Duration::from_millis(10));
    }
}

/// `nsenter` into `pid`'s user and network namespaces running `sh -c
/// script`; returns (success, stdout + stderr).
pub fn in_ns(pid: u32, script: &str) -> (bool, String) {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-U", "-n", "--preserve-credentials"])
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("run nsenter");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Waits until `tap` in `pid`'s namespace has an IPv4 address; returns
/// `ip -o -4 addr show` of it.
pub fn wait_for_tap(pid: u32, tap: &str, log: &dyn Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = in_ns(pid, &format!("ip -o -4 addr show {tap}"));
        if ok && out.contains("inet ") {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{tap} not configured in time: {out}\nlog:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one request to the slirp4netns API socket at `path` the way
/// podman does (write, shut down writing, read to the end).
pub fn api(path: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(path).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write request");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read reply");
    out
}

/// Waits for a unix socket file at `path`.
pub fn wait_for_socket(path: &Path, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear; log:\n{}",
            path.display(),
            log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Relays UDP DNS queries from 127.0.0.1:53 to `upstream` (the test
/// resolver), for modes that take their upstream from resolv.conf.
pub struct Port53Relay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Port53Relay {
    /// Starts the relay; panics if port 53 is taken.
    pub fn start(upstream: SocketAddr) -> Port53Relay {
        let front = UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53");
        front
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, client)) = front.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(back) = UdpSocket::bind("127.0.0.1:0") else {
                    continue;
                };
                let _ = back.set_read_timeout(Some(Duration::from_secs(2)));
                if back.send_to(&buf[..n], upstream).is_ok() {
                    let mut rbuf = [0u8; 4096];
                    if let Ok(m) = back.recv(&mut rbuf) {
                        let _ = front.send_to(&rbuf[..m], client);
                    }
                }
            }
        });
        Port53Relay {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Port53Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
