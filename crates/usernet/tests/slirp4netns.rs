//! slirp4netns compatibility end to end: usernet under the name
//! `slirp4netns` prints the real slirp4netns 1.2's `--help` option lines,
//! and `slirp4netns -c -r FD -e FD -a SOCK PID` configures the namespace,
//! writes "1" to the ready fd, forwards DNS to the nameserver of
//! /etc/resolv.conf, serves the API, and exits when the exit fd closes.
mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ns::{Port53Relay, Proc, api, in_ns, namespace, wait_for_socket, wait_for_tap};
use common::{TEST_ANSWER, TempDir, TestResolver, assert_isolated_netns};

/// A `slirp4netns` symlink to usernet in `dir`.
fn link(dir: &TempDir) -> PathBuf {
    let path = dir.join("slirp4netns");
    symlink(env!("CARGO_BIN_EXE_usernet"), &path).expect("symlink");
    path
}

#[test]
fn help_lists_slirp4netns_options() {
    let dir = TempDir::new("s4help");
    let ours = Command::new(link(&dir))
        .arg("--help")
        .output()
        .expect("run");
    assert!(ours.status.success());
    let ours = String::from_utf8_lossy(&ours.stdout).into_owned();
    let Ok(real) = Command::new("slirp4netns").arg("--help").output() else {
        eprintln!("SKIP comparison: the real slirp4netns is not installed");
        return;
    };
    let real = String::from_utf8_lossy(&real.stdout).into_owned();
    // All but the usage line (which names argv[0]) are identical.
    let tail = |s: &str| s.lines().skip(1).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(tail(&ours), tail(&real));
    assert!(ours.starts_with("Usage: "));
    let v = Command::new(link(&TempDir::new("s4v")))
        .arg("-v")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("slirp4netns version 1.2.0"));
}

#[test]
fn serves_a_namespace_like_slirp4netns() {
    assert_isolated_netns();
    let resolver = TestResolver::start();
    let _relay = Port53Relay::start(resolver.addr());
    let ns = namespace();
    let dir = TempDir::new("s4");
    let bin = link(&dir);
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").expect("resolv.conf");
    let ready = dir.join("ready");
    let exit_fifo = dir.join("exit.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&exit_fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let sock = dir.join("api.sock");
    let log_path = dir.join("slirp4netns.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // fd 3: ready (a file), fd 4: exit (a fifo we hold the writing end of);
    // /etc/resolv.conf names 127.0.0.1 in a private mount namespace.
    let script = r#"mount --bind "$1" /etc/resolv.conf && exec "$2" -c -r 3 -e 4 --mtu 9000 -a "$3" "$4" 3>"$5" 4<"$6""#;
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
        .arg(&bin)
        .arg(&sock)
        .arg(ns.pid().to_string())
        .arg(&ready)
        .arg(&exit_fifo)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log_path).expect("log"))
        .stderr(std::fs::File::create(dir.join("stderr")).expect("log"))
        .spawn()
        .expect("start slirp4netns");
    let mut s4 = Proc(child);
    // Opening the fifo's writing end lets the shell's `4<` open go on.
    let exit_writer = OpenOptions::new()
        .write(true)
        .open(&exit_fifo)
        .expect("open fifo");

    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&ready).unwrap_or_default() != "1" {
        assert!(
            Instant::now() < deadline,
            "no ready byte; stderr:\n{}",
            std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = wait_for_tap(ns.pid(), "tap0", &log);
    assert!(addr.contains("inet 10.0.2.100/24"), "{addr}");
    let (ok, out) = in_ns(
        ns.pid(),
        "ip link show tap0; ip route show default; busybox nslookup s4.usernet.test 10.0.2.3",
    );
    assert!(ok, "{out}");
    assert!(out.contains("mtu 9000"), "{out}");
    assert!(out.contains("default via 10.0.2.2"), "{out}");
    assert!(out.contains(&TEST_ANSWER.to_string()), "{out}");
    wait_for_socket(&sock, &log);
    assert_eq!(
        api(&sock, r#"{"execute": "list_hostfwd"}"#),
        r#"{"entries":[]}"#
    );

    // Closing the exit fd ends it, successfully.
    drop(exit_writer);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = s4.0.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "did not exit on the exit fd");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "{status}; stderr:\n{}",
        std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
    );
}
