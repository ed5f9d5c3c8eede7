//! Issue 8 acceptance: unmodified Debian binaries on usernet's drop-in
//! `libslirp.so.0` (crates/libslirp).
//!
//! Each test links the library from the staticlib `cargo test` built
//! (`scripts/build-libslirp.sh --deps`), puts it first on
//! `LD_LIBRARY_PATH` and checks `/proc/PID/maps` shows ours. libslirp has
//! no DNS upstream option: the library forwards to the nameservers of
//! `/etc/resolv.conf`, so the binaries run in a private mount namespace
//! where that file names 127.0.0.1, and a [`Port53Relay`] passes port 53
//! of this test's network namespace to the [`TestResolver`].
//!
//! - `qemu_nic_user`: `qemu-system-x86_64 -nic user,model=virtio-net-pci,
//!   hostfwd=...` boots the test guest: DHCP, DNS, HTTP to the host through
//!   10.0.2.2, ping, a TFTP download (`tftp=`), a `guestfwd=` to a command,
//!   a `guestfwd=` to a chardev (a unix socket this test listens on, so
//!   through `slirp_add_guestfwd` and `slirp_socket_recv`), 64 MiB from a host client to a guest server through the forward; then
//!   the monitor's `hostfwd_add`, `info usernet` (listing a
//!   live connection) and `hostfwd_remove`.
//! - `slirp4netns_configure`: Debian's `slirp4netns --configure` serves a
//!   namespace: TCP to the host, DNS, and its API's `add_hostfwd`.
//! - `corpus_through_slirp_input`: every frame of libslirp's fuzzing corpus
//!   goes through `slirp_input` of the library (linked in, with the
//!   embedder faked in Rust); its host sockets are real, hence this file and
//!   the isolated namespace (nothing they reach exists), and DNS is off so
//!   nothing is forwarded to resolv.conf's nameservers.
//! - `qemu_migrates_to_and_from_debian_libslirp`: a guest on usernet's
//!   library migrates (QEMU `migrate` to a file, `-incoming` from it) to a
//!   QEMU on Debian's libslirp and keeps its network, and back the other
//!   way: each reads the other's `slirp_state_save`.
//! - `hostfwd_calls_listen_and_stop`: the forward calls, v4 and v6, on a
//!   fake embedder, against real listening sockets.
#![allow(unsafe_code)] // The corpus test calls the C ABI directly.
mod common;

use std::ffi::{c_int, c_void};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::bulk::{BULK, RETRY, fetch_with_retry, field, guest_sha, join, prng_bytes, sha256};
use common::bulk::{free_port, send_with_retry};
use common::ns::{HttpServer, Port53Relay, Proc, api, in_ns, namespace, wait_for_tap};
use usernet_core::testing::{capture_files, capture_frames};
use usernet_libslirp::testing::{Embedder, default_config};
use usernet_libslirp::{
    slirp_cleanup, slirp_input, slirp_new, slirp_pollfds_fill, slirp_pollfds_poll,
};

use common::{
    Boot, DHCP, Guest, Nic, SCENARIO_OK, TEST_ANSWER, TempDir, TestResolver, assert_isolated_netns,
    lease, wait_timeout,
};

/// Port 53 of this namespace is one: the tests that relay it take turns.
static PORT53: Mutex<()> = Mutex::new(());

/// Links `libslirp.so.0` into `dir` from the staticlib beside this test.
fn build_library(dir: &TempDir) -> PathBuf {
    let deps = std::env::current_exe()
        .expect("test path")
        .parent()
        .expect("deps dir")
        .to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-libslirp.sh");
    let out_dir = dir.join("lib");
    let out = Command::new(script)
        .arg("--deps")
        .arg(&deps)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("run build-libslirp.sh");
    assert!(
        out.status.success(),
        "build-libslirp.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out_dir.join("libslirp.so.0").exists());
    out_dir
}

/// Waits (bounded) until process `pid` has `lib` mapped; returns whether
/// it did.
fn maps_library(pid: u32, lib: &Path) -> bool {
    let want = lib.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if maps.contains(&want) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A resolv.conf naming 127.0.0.1, in `dir`.
fn local_resolv_conf(dir: &TempDir) -> PathBuf {
    let path = dir.join("resolv.conf");
    std::fs::write(&path, "nameserver 127.0.0.1\n").expect("resolv.conf");
    path
}

/// QEMU's human monitor on a unix socket.
struct Monitor {
    stream: UnixStream,
}

impl Monitor {
    /// Connects (retrying until QEMU listens) and reads the banner.
    fn connect(path: &Path) -> Monitor {
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(path) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "no monitor at {}",
                path.display()
            );
            thread::sleep(Duration::from_millis(100));
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut m = Monitor { stream };
        m.until_prompt();
        m
    }

    fn until_prompt(&mut self) -> String {
        let mut text = Vec::new();
        let mut b = [0u8; 4096];
        while !text.ends_with(b"(qemu) ") {
            match self.stream.read(&mut b) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&b[..n]),
                Err(e) => panic!("monitor: {e} after {:?}", String::from_utf8_lossy(&text)),
            }
        }
        String::from_utf8_lossy(&text).replace('\r', "")
    }

    /// Runs one command; returns its output.
    fn run(&mut self, cmd: &str) -> String {
        self.stream
            .write_all(format!("{cmd}\n").as_bytes())
            .expect("monitor write");
        self.until_prompt()
    }
}

/// What the host side of the QEMU test saw.
struct HostSide {
    info: String,
    added_reply: String,
    removed_refused: bool,
}

/// The far end of QEMU's `-chardev socket` for a `guestfwd=`: accepts
/// QEMU's connection, reads the guest's first line and answers
/// `reply-from-chardev`. Returns the line and the connection (kept open
/// until the guest is done). Bounded in time.
fn chardev_echo(listener: &UnixListener) -> (String, UnixStream) {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("QEMU's chardev never connected: {e}"),
        }
    };
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(600)))
        .expect("timeout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 256 {
        match conn.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => break,
            Err(e) => panic!("reading the chardev: {e}"),
        }
    }
    conn.write_all(b"reply-from-chardev\n")
        .expect("write chardev");
    (String::from_utf8_lossy(&line).trim().to_owned(), conn)
}

/// What the tests with Debian's binaries start from: a directory, the
/// built library, port 53 (taken in turns) relayed to a test resolver, a
/// resolv.conf naming 127.0.0.1, and an HTTP server on the host.
struct Rig {
    dir: TempDir,
    lib_dir: PathBuf,
    _port53: MutexGuard<'static, ()>,
    resolver: TestResolver,
    _relay: Port53Relay,
    resolv: PathBuf,
    http: HttpServer,
}

impl Rig {
    fn start(label: &str) -> Rig {
        let dir = TempDir::new(label);
        let lib_dir = build_library(&dir);
        let _port53 = PORT53.lock().unwrap_or_else(|e| e.into_inner());
        let resolver = TestResolver::start();
        let _relay = Port53Relay::start(resolver.addr());
        let resolv = local_resolv_conf(&dir);
        let http = HttpServer::start("hello-from-host");
        Rig {
            dir,
            lib_dir,
            _port53,
            resolver,
            _relay,
            resolv,
            http,
        }
    }
}

#[test]
fn qemu_nic_user() {
    assert_isolated_netns();
    let Rig {
        dir,
        lib_dir,
        _port53,
        resolver,
        _relay,
        resolv,
        http,
    } = Rig::start("libslirp-qemu");
    let fwd_port = free_port();
    let added_port = free_port();
    // A host server the guest keeps a connection to, for `info usernet`.
    let hold = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hold_port = hold.local_addr().expect("addr").port();
    let monitor_path = dir.join("monitor.sock");
    let data = prng_bytes(0x11b5_1127, BULK);
    let want = sha256(&data);

    // QEMU's chardev connects at startup: listen first.
    let chardev_path = dir.join("chardev.sock");
    let chardev = UnixListener::bind(&chardev_path).expect("bind chardev socket");
    let chardev_side = thread::spawn(move || chardev_echo(&chardev));

    let monitor = monitor_path.clone();
    let host = thread::spawn(move || {
        let lo = Ipv4Addr::LOCALHOST;
        // The guest connects to `hold` once its server on the forward
        // listens (and keeps the connection for `info usernet`).
        hold.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + 3 * RETRY;
        let held = loop {
            match hold.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
                Err(e) => panic!("the guest's held connection never came: {e}"),
            }
        };
        let t = Instant::now();
        send_with_retry((lo, fwd_port), &data);
        eprintln!("host→guest forward: {:.1} s", t.elapsed().as_secs_f64());
        let mut m = Monitor::connect(&monitor);
        let add = m.run(&format!(
            "hostfwd_add tcp:127.0.0.1:{added_port}-:{added_port}"
        ));
        let added_reply = String::from_utf8_lossy(&fetch_with_retry((lo, added_port))).into_owned();
        let info = m.run("info usernet");
        let remove = m.run(&format!("hostfwd_remove tcp:127.0.0.1:{added_port}"));
        eprintln!("monitor:\n{add}\n{info}\n{remove}");
        let removed_refused = TcpStream::connect((lo, added_port)).is_err();
        drop(held);
        HostSide {
            info,
            added_reply,
            removed_refused,
        }
    });

    // Every wait is bounded (seq); the forward's server runs in the
    // background while the other checks go on.
    let scenario = format!(
        "{DHCP}timeout 300 socat -u TCP-LISTEN:{fwd_port},reuseaddr - | sha256sum | sed 's/ .*/ in/' >/tmp/in &
for i in $(seq 100); do netstat -ltn | grep -q ':{fwd_port} ' && break; sleep 0.1; done
(sleep 600 | socat - TCP:10.0.2.2:{hold_port}) &
nslookup qemu.usernet.test 10.0.2.3 | sed 's/^/ns: /'
echo body=$(timeout 20 wget -q -O- http://10.0.2.2:{http}/)
ping -c 1 -W 5 10.0.2.2 >/dev/null && echo ping=ok
timeout 20 tftp -g -r hello.txt -l /tmp/t 10.0.2.2 && echo tftp=$(cat /tmp/t)
echo cmd=$(timeout 20 socat - TCP:10.0.2.100:4321 </dev/null)
echo chardev=$(echo hello-to-chardev | timeout 20 socat -t 10 - TCP:10.0.2.100:4322)
for i in $(seq 600); do [ -s /tmp/in ] && break; sleep 0.5; done
cat /tmp/in
timeout 120 socat TCP-LISTEN:{added_port},reuseaddr SYSTEM:'echo added-at-run-time'
",
        http = http.port()
    );
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(&tftp).expect("tftp dir");
    std::fs::write(tftp.join("hello.txt"), "hello-over-tftp\n").expect("tftp file");
    let options = format!(
        "model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{fwd_port}-:{fwd_port},tftp={},\
         guestfwd=tcp:10.0.2.100:4321-cmd:echo hello-from-cmd,\
         guestfwd=tcp:10.0.2.100:4322-chardev:gf",
        tftp.display()
    );
    let args = [
        "-monitor".to_owned(),
        format!("unix:{},server=on,wait=off", monitor_path.display()),
        "-chardev".to_owned(),
        format!("socket,id=gf,path={},server=off", chardev_path.display()),
    ];
    let nic = Nic::User {
        options: &options,
        lib_dir: &lib_dir,
        resolv_conf: &resolv,
        args: &args,
    };
    let lib = lib_dir.join("libslirp.so.0");
    let ours = Arc::new(Mutex::new(None));
    let seen = ours.clone();
    let out = Guest::run_on(&nic, &scenario, &[], Duration::from_secs(600), &mut |pid| {
        let lib = lib.clone();
        let seen = seen.clone();
        thread::spawn(move || {
            *seen.lock().expect("lock") = Some(maps_library(pid, &lib));
        });
    });
    let host = join(host, "host side");
    let (chardev_got, _chardev_conn) = join(chardev_side, "chardev side");
    assert!(out.contains(SCENARIO_OK), "scenario failed:\n{out}");
    assert_eq!(
        *ours.lock().expect("lock"),
        Some(true),
        "QEMU did not map {}",
        lib_dir.display()
    );

    let l = lease(&out);
    assert_eq!(l.get("ip").map(String::as_str), Some("10.0.2.15"), "{out}");
    assert_eq!(l.get("router").map(String::as_str), Some("10.0.2.2"));
    assert_eq!(l.get("dns").map(String::as_str), Some("10.0.2.3"));
    assert!(
        out.lines()
            .any(|l| l.starts_with("ns: Address:") && l.contains(&TEST_ANSWER.to_string())),
        "no DNS answer:\n{out}"
    );
    assert!(resolver.queries() > 0);
    assert_eq!(field(&out, "body"), Some("hello-from-host"));
    assert_eq!(field(&out, "ping"), Some("ok"));
    assert_eq!(
        field(&out, "tftp"),
        Some("hello-over-tftp"),
        "TFTP download"
    );
    assert_eq!(
        field(&out, "cmd"),
        Some("hello-from-cmd"),
        "guestfwd to a command"
    );
    assert_eq!(
        chardev_got, "hello-to-chardev",
        "the guest's bytes through the chardev"
    );
    assert_eq!(
        field(&out, "chardev"),
        Some("reply-from-chardev"),
        "guestfwd to a chardev"
    );
    assert_eq!(guest_sha(&out, "in"), Some(want.as_str()), "64 MiB differ");

    assert_eq!(host.added_reply.trim(), "added-at-run-time");
    assert!(host.removed_refused, "the removed forward still accepts");
    let established = format!("{hold_port}");
    assert!(
        host.info
            .lines()
            .any(|l| l.contains("TCP[ESTABLISHED]")
                && l.split_whitespace().any(|w| w == established)),
        "info usernet lists no connection to port {hold_port}:\n{}",
        host.info
    );
    assert!(
        host.info.lines().any(|l| l.contains("TCP[HOST_FORWARD]")
            && l.split_whitespace().any(|w| w == fwd_port.to_string())),
        "info usernet lists no forward:\n{}",
        host.info
    );
}

#[test]
fn slirp4netns_configure() {
    assert_isolated_netns();
    let Rig {
        dir,
        lib_dir,
        _port53,
        resolver: _resolver,
        _relay,
        resolv,
        http,
    } = Rig::start("libslirp-s4");
    let ns = namespace();
    let sock = dir.join("api.sock");
    let log_path = dir.join("slirp4netns.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let script = r#"mount --bind "$1" /etc/resolv.conf && exec slirp4netns --configure --mtu=65520 -a "$2" "$3" tap0"#;
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&resolv)
        .arg(&sock)
        .arg(ns.pid().to_string())
        .env("LD_LIBRARY_PATH", &lib_dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log_path).expect("log"))
        .stderr(std::fs::File::create(dir.join("stderr")).expect("log"))
        .spawn()
        .expect("start slirp4netns");
    let s4 = Proc(child);
    let addr = wait_for_tap(ns.pid(), "tap0", &log);
    assert!(addr.contains("inet 10.0.2.100/24"), "{addr}");
    assert!(
        maps_library(s4.pid(), &lib_dir.join("libslirp.so.0")),
        "slirp4netns did not map {}",
        lib_dir.display()
    );

    let (ok, out) = in_ns(
        ns.pid(),
        &format!(
            "busybox nslookup s4.usernet.test 10.0.2.3; \
             echo body=$(busybox timeout 20 busybox wget -q -O- http://10.0.2.2:{}/)",
            http.port()
        ),
    );
    assert!(ok, "{out}\nlog:\n{}", log());
    assert!(
        out.contains(&TEST_ANSWER.to_string()),
        "no DNS answer: {out}"
    );
    assert_eq!(field(&out, "body"), Some("hello-from-host"), "{out}");

    // The API's add_hostfwd reaches a server in the namespace.
    let port = free_port();
    let reply = api(
        &sock,
        &format!(
            r#"{{"execute": "add_hostfwd", "arguments": {{"proto": "tcp", "host_addr": "127.0.0.1", "host_port": {port}, "guest_port": {port}}}}}"#
        ),
    );
    assert!(reply.contains("\"return\""), "add_hostfwd: {reply}");
    let server = thread::spawn({
        let pid = ns.pid();
        move || {
            in_ns(
                pid,
                &format!("echo from-namespace | busybox timeout 60 busybox nc -l -p {port}"),
            )
        }
    });
    // busybox nc keeps the connection after its stdin ends: read until the
    // line arrives.
    let deadline = Instant::now() + RETRY;
    let got = loop {
        let mut text = String::new();
        if let Ok(mut c) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut b = [0u8; 256];
            while let Ok(n @ 1..) = c.read(&mut b) {
                text.push_str(&String::from_utf8_lossy(&b[..n]));
                if text.contains('\n') {
                    break;
                }
            }
        }
        if text.contains("from-namespace") || Instant::now() > deadline {
            break text;
        }
        thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(got.trim(), "from-namespace", "through the API's forward");
    let (_, served) = join(server, "namespace server");
    drop(s4);
    eprintln!("namespace server: {served}");
}

unsafe extern "C" fn add_poll(fd: c_int, _events: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: `opaque` is the test's `Vec<c_int>`, alive for the call.
    let fds = unsafe { &mut *opaque.cast::<Vec<c_int>>() };
    fds.push(fd);
    c_int::try_from(fds.len() - 1).unwrap_or(-1)
}

unsafe extern "C" fn always_ready(_idx: c_int, _opaque: *mut c_void) -> c_int {
    usernet_libslirp::config::SLIRP_POLL_IN
}

#[test]
fn corpus_through_slirp_input() {
    assert_isolated_netns();
    let mut paths = Vec::new();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../corpus/libslirp-fuzzing");
    capture_files(&corpus, &["pcap", "pkt"], &mut paths);
    assert!(paths.len() >= 19, "corpus missing: {paths:?}");
    let guest_mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let stack_mac = [0x52, 0x55, 10, 0, 2, 2];
    let (mut frames_in, mut frames_out) = (0, 0);
    for path in &paths {
        let e = Embedder::default();
        let mut cfg = default_config(4);
        cfg.disable_dns = true;
        let cb = Embedder::callbacks();
        // SAFETY: full structures; `e` outlives the instance.
        let s = unsafe { slirp_new(&cfg, &cb, e.opaque()) };
        assert!(!s.is_null(), "{:?}", e.errors.borrow());
        for frame in capture_frames(path, guest_mac, stack_mac) {
            let mut fds: Vec<c_int> = Vec::new();
            let mut timeout = u32::MAX;
            // SAFETY: a live instance, a frame of that length, callbacks
            // matching their arguments.
            unsafe {
                slirp_input(
                    s,
                    frame.as_ptr(),
                    c_int::try_from(frame.len()).expect("len"),
                );
                slirp_pollfds_fill(s, &mut timeout, Some(add_poll), (&raw mut fds).cast());
                slirp_pollfds_poll(s, 0, Some(always_ready), std::ptr::null_mut());
            }
            // SAFETY: the live instance made with `e`.
            unsafe { e.advance(s, 10) };
            frames_in += 1;
        }
        // Let every timer run out.
        for _ in 0..10 {
            // SAFETY: as above.
            unsafe { e.advance(s, 60_000) };
        }
        // SAFETY: the live instance, not used again.
        unsafe { slirp_cleanup(s) };
        for f in e.frames.borrow().iter() {
            assert!(
                f.len() >= 14,
                "{}: a runt frame to the guest",
                path.display()
            );
        }
        frames_out += e.frames.borrow().len();
        let errors = e.errors.borrow();
        assert!(
            !errors.iter().any(|m| m.contains("internal error")),
            "{}: {errors:?}",
            path.display()
        );
    }
    eprintln!("{frames_in} corpus frames in, {frames_out} frames out");
    assert!(frames_out > 0);
}

/// `slirp_add_hostxfwd` / `slirp_remove_hostxfwd` (IPv6 and IPv4) and
/// the IPv4 calls listen and stop listening on the host; duplicates and
/// unknown forwards fail with -1.
#[test]
fn hostfwd_calls_listen_and_stop() {
    use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
    use usernet_libslirp::config::SLIRP_HOSTFWD_V6ONLY;
    use usernet_libslirp::{
        slirp_add_hostfwd, slirp_add_hostxfwd, slirp_remove_hostfwd, slirp_remove_hostxfwd,
    };
    assert_isolated_netns();
    let e = Embedder::default();
    let cfg = default_config(4);
    let cb = Embedder::callbacks();
    // SAFETY: full structures; `e` outlives the instance.
    let s = unsafe { slirp_new(&cfg, &cb, e.opaque()) };
    assert!(!s.is_null());
    let v6_port = free_port();
    let host6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: v6_port.to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: Ipv6Addr::LOCALHOST.octets(),
        },
        sin6_scope_id: 0,
    };
    let mut guest6 = host6;
    guest6.sin6_addr.s6_addr = "fec0::15".parse::<Ipv6Addr>().expect("addr").octets();
    let len6 = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    let lo4 = libc::in_addr {
        s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
    };
    let any4 = libc::in_addr { s_addr: 0 };
    let v4_port = free_port();
    let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, v6_port, 0, 0));
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, v4_port));
    let p4 = c_int::from(v4_port);
    // SAFETY: a live instance and addresses of the lengths given.
    unsafe {
        let h6 = (&raw const host6).cast::<libc::sockaddr>();
        let g6 = (&raw const guest6).cast::<libc::sockaddr>();
        assert_eq!(
            slirp_add_hostxfwd(s, h6, len6, g6, len6, SLIRP_HOSTFWD_V6ONLY),
            0
        );
        assert_eq!(
            slirp_add_hostxfwd(s, h6, len6, g6, len6, 0),
            -1,
            "duplicate"
        );
        assert_eq!(
            slirp_add_hostxfwd(s, h6, 3, g6, len6, 0),
            -1,
            "short address"
        );
        assert_eq!(slirp_add_hostfwd(s, 0, lo4, p4, any4, p4), 0);
        assert!(TcpStream::connect(v6).is_ok(), "no IPv6 listener");
        assert!(TcpStream::connect(v4).is_ok(), "no IPv4 listener");
        assert_eq!(slirp_remove_hostxfwd(s, h6, len6, 0), 0);
        assert_eq!(slirp_remove_hostxfwd(s, h6, len6, 0), -1, "removed twice");
        assert_eq!(slirp_remove_hostfwd(s, 0, lo4, p4), 0);
        assert_eq!(slirp_remove_hostfwd(s, 1, lo4, p4), -1, "not a UDP forward");
        assert!(TcpStream::connect(v6).is_err(), "IPv6 listener left");
        assert!(TcpStream::connect(v4).is_err(), "IPv4 listener left");
        slirp_cleanup(s);
    }
}

/// Waits (bounded) until the console file holds `marker`.
fn wait_for_console(console: &Path, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if text.contains(marker) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {marker:?} on the console:\n{text}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Boots the guest on the libslirp in `from` (a directory for
/// `LD_LIBRARY_PATH`), migrates it to a file once it has its lease, and
/// resumes it on the libslirp in `to`, where it fetches a page from the
/// host. Returns the resumed guest's console.
fn migrate(label: &str, from: &Path, to: &Path) -> String {
    let dir = TempDir::new(label);
    let resolv = local_resolv_conf(&dir);
    let port = free_port();
    let scenario = format!(
        "{DHCP}echo migrate-now
for i in $(seq 120); do body=$(timeout 3 wget -q -O- http://10.0.2.2:{port}/ 2>/dev/null) && [ -n \"$body\" ] && break; sleep 1; done
echo body=$body
"
    );
    let boot = Boot::new(&scenario, &[]);
    let state = dir.join("vm.state");
    let monitor = dir.join("monitor.sock");
    let monitor_args = [
        "-monitor".to_owned(),
        format!("unix:{},server=on,wait=off", monitor.display()),
    ];
    let nic = |lib_dir, args| Nic::User {
        options: "model=virtio-net-pci",
        lib_dir,
        resolv_conf: &resolv,
        args,
    };
    let src_console = dir.join("source.console");
    let mut source = Proc(boot.spawn(&nic(from, &monitor_args), &[], &src_console));
    wait_for_console(&src_console, "migrate-now");
    let mut m = Monitor::connect(&monitor);
    m.run(&format!("migrate \"exec:cat > {}\"", state.display()));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = m.run("info migrate");
        if info.contains("Migration status: completed") {
            break;
        }
        assert!(
            !info.contains("failed") && Instant::now() < deadline,
            "migration did not complete:\n{info}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let _ = m.stream.write_all(b"quit\n");
    assert!(
        wait_timeout(&mut source.0, Duration::from_secs(30)).is_some(),
        "the source did not quit"
    );

    // Only the destination finds a server.
    let _http = HttpServer::start_on(port, "hello-after-migration");
    let dst_console = dir.join("destination.console");
    let incoming = [
        "-incoming".to_owned(),
        format!("exec:cat {}", state.display()),
    ];
    let mut dest = Proc(boot.spawn(&nic(to, &[]), &incoming, &dst_console));
    let done = wait_timeout(&mut dest.0, Duration::from_secs(300));
    let out = std::fs::read_to_string(&dst_console)
        .unwrap_or_default()
        .replace('\r', "");
    eprintln!("--- {label}: destination console ({done:?}) ---\n{out}\n---");
    out
}

#[test]
fn qemu_migrates_to_and_from_debian_libslirp() {
    assert_isolated_netns();
    let dir = TempDir::new("libslirp-migrate");
    let ours = build_library(&dir);
    // An empty directory first on LD_LIBRARY_PATH: Debian's libslirp.
    let debian = dir.join("debian");
    std::fs::create_dir_all(&debian).expect("dir");
    for (label, from, to) in [
        ("usernet-to-debian", &ours, &debian),
        ("debian-to-usernet", &debian, &ours),
    ] {
        let out = migrate(label, from, to);
        assert_eq!(
            field(&out, "body"),
            Some("hello-after-migration"),
            "{label}: no network after migration:\n{out}"
        );
        assert!(out.contains(SCENARIO_OK), "{label}:\n{out}");
    }
}
