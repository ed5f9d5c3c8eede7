//! The sandbox end to end: every mode runs usernet with no-new-privs and a
//! seccomp filter (`/proc/PID/status` shows `NoNewPrivs: 1`, `Seccomp: 2`)
//! unless `--no-sandbox`; `usernet ns`'s command is not under the filter
//! yet is reaped and killed from under it; usernet serves a namespace from
//! outside it, holding no reference to it but the tap; slirp4netns's
//! `--enable-sandbox` also leaves usernet in an empty mount namespace with
//! only `CAP_NET_BIND_SERVICE`, where the API still adds forwards.
//!
//! The other end-to-end tests (NAT, DNS, ping, forwards, the API, the
//! capture, the exit fd, podman) all run sandboxed, since it is the
//! default.
mod common;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::ns::{Proc, api, free_port, namespace, wait_for_socket, wait_for_tap};
use common::{TempDir, Usernet, assert_isolated_netns, usernet_output};

/// Field `name` (e.g. `Seccomp`) of `/proc/PID/status`, trimmed.
fn status(pid: &str, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// Waits until process `pid` is under a seccomp filter (it enters the
/// sandbox just after set-up, so shortly after its socket or tap appears).
fn wait_sandboxed(pid: u32, log: &dyn Fn() -> String) {
    let pid = pid.to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&pid, "Seccomp") != "2" {
        assert!(
            Instant::now() < deadline,
            "usernet {pid} never entered the sandbox; log:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `readlink /proc/PID/ns/KIND`.
fn ns_of(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{kind}: {e}"))
}

/// Sends SIGTERM to `p` and waits (bounded) for it to exit.
fn terminate(p: &mut Proc) -> ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &p.pid().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = p.0.try_wait().expect("wait") {
            return st;
        }
        assert!(Instant::now() < deadline, "did not exit on SIGTERM");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Connects to usernet's QEMU socket as a guest (52:54:00:12:34:56,
/// 10.0.2.15), asks who has the gateway 10.0.2.2 and waits (bounded) for
/// the ARP reply; then disconnects.
fn gateway_answers_arp(socket: &std::path::Path) -> bool {
    let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2]);
    let mut c = UnixStream::connect(socket).expect("connect to the QEMU socket");
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    c.write_all(&u32::try_from(frame.len()).expect("len").to_be_bytes())
        .expect("write");
    c.write_all(&frame).expect("write");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut buf = [0u8; 2048];
        match c.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        // Length-prefixed frames: look for an ARP reply (opcode 2).
        let mut at = 0;
        while let Some(len) = got.get(at..at + 4) {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let Some(f) = got.get(at + 4..at + 4 + len) else {
                break;
            };
            if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] {
                return true;
            }
            at += 4 + len;
        }
    }
    false
}

#[test]
fn qemu_mode_is_sandboxed_unless_no_sandbox() {
    let me = std::process::id().to_string();
    let mut un = Usernet::spawn(&[]);
    wait_sandboxed(un.pid(), &|| un.log());
    let pid = un.pid().to_string();
    assert_eq!(status(&pid, "NoNewPrivs"), "1");
    assert!(
        un.log().contains("sandbox: seccomp filter installed"),
        "{}",
        un.log()
    );
    // A QEMU client that goes away and comes back is accepted again, and
    // the gateway answers its ARP request each time.
    for _ in 0..2 {
        assert!(gateway_answers_arp(un.socket()), "log:\n{}", un.log());
    }
    un.assert_running();
    // SIGINT/SIGTERM still end it cleanly, removing its socket.
    let socket = un.socket().to_owned();
    let st = un.stop();
    assert!(st.success(), "{st}; log:\n{}", un.log());
    assert!(!socket.exists(), "socket left behind");

    let mut off = Usernet::spawn(&["--no-sandbox"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !off.log().contains("sandbox: off") {
        assert!(Instant::now() < deadline, "log:\n{}", off.log());
        thread::sleep(Duration::from_millis(20));
    }
    let pid = off.pid().to_string();
    // Whatever this test runs under (normally 0 and 0), nothing more.
    assert_eq!(status(&pid, "Seccomp"), status(&me, "Seccomp"));
    assert_eq!(status(&pid, "NoNewPrivs"), status(&me, "NoNewPrivs"));
    assert!(off.stop().success());
}

#[test]
fn ns_command_runs_outside_the_filter_and_is_reaped_under_it() {
    assert_isolated_netns();
    // The command waits for usernet (its parent) to be sandboxed, then
    // reports both processes; its own status is usernet's exit status.
    let script = r#"
for i in $(seq 200); do
    grep -q '^Seccomp:.*2' /proc/$PPID/status && break
    sleep 0.05
done
echo "parent $(grep -E '^(Seccomp|NoNewPrivs):' /proc/$PPID/status | tr -s '\t\n' '= ')"
echo "self $(grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status | tr -s '\t\n' '= ')"
exit 3
"#;
    let out = usernet_output(
        &[
            "ns",
            "--dns-upstream",
            "127.0.0.1:9",
            "--",
            "sh",
            "-c",
            script,
        ],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{text}{err}");
    assert!(
        text.contains("parent NoNewPrivs:=1 Seccomp:=2"),
        "{text}{err}"
    );
    assert!(
        text.contains("self NoNewPrivs:=0 Seccomp:=0"),
        "{text}{err}"
    );

    // Stopped by a signal, usernet kills the command (from under the
    // filter) and exits as the command did: killed, 128 + 9.
    let dir = TempDir::new("sandbox-ns");
    let log_path = dir.join("usernet.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut un = Proc(
        Command::new(env!("CARGO_BIN_EXE_usernet"))
            .args(["ns", "--dns-upstream", "127.0.0.1:9", "--", "sleep", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).expect("log"))
            .spawn()
            .expect("start usernet ns"),
    );
    wait_sandboxed(un.pid(), &log);
    let st = terminate(&mut un);
    assert_eq!(st.code(), Some(137), "{st}; log:\n{}", log());
}

/// Starts `usernet attach ARGS` (or `slirp4netns ARGS` through `bin`) with
/// its log in `dir`.
fn start(dir: &TempDir, bin: &std::path::Path, args: &[&str]) -> Proc {
    let log = std::fs::File::create(dir.join("usernet.log")).expect("log");
    Proc(
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start usernet"),
    )
}

#[test]
fn attach_leaves_the_namespace_it_serves() {
    assert_isolated_netns();
    let me = std::process::id().to_string();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_usernet"));
    // Without and with the user namespace (a thread, then a forked child,
    // enters the namespace to make the tap).
    for userns in [false, true] {
        let ns = namespace();
        let target = ns.pid().to_string();
        let dir = TempDir::new("sandbox-attach");
        let userns_path = format!("/proc/{target}/ns/user");
        let mut args = vec!["attach", "--dns-upstream", "127.0.0.1:9"];
        if userns {
            args.extend(["--userns-path", userns_path.as_str()]);
        }
        args.push(&target);
        let un = start(&dir, bin, &args);
        let log = || std::fs::read_to_string(dir.join("usernet.log")).unwrap_or_default();
        wait_for_tap(ns.pid(), "tap0", &log);
        wait_sandboxed(un.pid(), &log);
        let pid = un.pid().to_string();
        let served = ns_of(&target, "net");
        assert_ne!(served, ns_of(&me, "net"));
        // Its host sockets live in our namespace...
        assert_eq!(ns_of(&pid, "net"), ns_of(&me, "net"), "userns {userns}");
        assert_eq!(ns_of(&pid, "user"), ns_of(&me, "user"), "userns {userns}");
        // ...and no descriptor of it refers to a namespace; the tap is
        // its only way in.
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        assert!(fds.iter().any(|f| f == "/dev/net/tun"), "{fds:?}");
        assert!(
            !fds.iter()
                .any(|f| f.contains("net:[") || f.contains("user:[")),
            "userns {userns}: {fds:?}"
        );
    }
}

#[test]
fn slirp4netns_enable_sandbox_isolates_and_drops_capabilities() {
    assert_isolated_netns();
    let me = std::process::id().to_string();
    let ns = namespace();
    let dir = TempDir::new("sandbox-s4");
    let bin = dir.join("slirp4netns");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_usernet"), &bin).expect("symlink");
    let sock = dir.join("api.sock");
    let sock_arg = sock.display().to_string();
    let target = ns.pid().to_string();
    let mut s4 = start(
        &dir,
        &bin,
        &[
            "--enable-sandbox",
            "--enable-seccomp",
            "-c",
            "-a",
            &sock_arg,
            &target,
        ],
    );
    let log = || std::fs::read_to_string(dir.join("usernet.log")).unwrap_or_default();
    wait_for_tap(ns.pid(), "tap0", &log);
    wait_for_socket(&sock, &log);
    wait_sandboxed(s4.pid(), &log);
    let pid = s4.pid().to_string();
    assert_eq!(status(&pid, "NoNewPrivs"), "1");
    // CAP_NET_BIND_SERVICE (bit 10) only, for forwards below 1024.
    assert_eq!(status(&pid, "CapEff"), "0000000000000400", "{}", log());
    assert_eq!(status(&pid, "CapPrm"), "0000000000000400");
    assert_ne!(ns_of(&pid, "mnt"), ns_of(&me, "mnt"));
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("root")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(root.is_empty(), "its root holds {root:?}");

    // A forward added at run time binds and listens from in there.
    let port = free_port();
    let reply = api(
        &sock,
        &format!(
            r#"{{"execute": "add_hostfwd", "arguments": {{"proto": "tcp", "host_addr": "127.0.0.1", "host_port": {port}, "guest_port": 8080}}}}"#
        ),
    );
    assert!(reply.contains(r#""id""#), "{reply}; log:\n{}", log());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let st = terminate(&mut s4);
    assert!(st.success(), "{st}; log:\n{}", log());
}
