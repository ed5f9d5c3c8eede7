//! Issue acceptance: podman runs a container on usernet as its
//! slirp4netns (`--network-cmd-path` to a `slirp4netns` symlink to
//! usernet). The container gets 10.0.2.100, reaches the host's loopback
//! through 10.0.2.2, resolves through 10.0.2.3, and a port published with
//! `port_handler=slirp4netns` (the JSON API) reaches a server in it.
//!
//! podman passes no DNS upstream, so usernet reads /etc/resolv.conf: the
//! test runs podman in a private mount namespace where that file names
//! 127.0.0.1, and relays 127.0.0.1:53 (this test's own network namespace)
//! to the [`TestResolver`]. Storage (vfs) and run state live in a
//! temporary directory. Skipped, saying so, if podman or runc is missing
//! (`scripts/setup.sh` installs them).
//!
//! [`TestResolver`]: common::TestResolver
mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ns::{HttpServer, Port53Relay, Proc, free_port};
use common::{TEST_ANSWER, TempDir, TestResolver, assert_isolated_netns};

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn podman_runs_a_container_on_usernet() {
    if !have("podman") || !have("runc") {
        eprintln!("SKIP podman test: podman or runc is not installed (run scripts/setup.sh)");
        return;
    }
    assert_isolated_netns();
    let resolver = TestResolver::start();
    let _relay = Port53Relay::start(resolver.addr());
    let http = HttpServer::start("hello from the host");
    let dir = TempDir::new("podman");

    // A busybox-static image.
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
    std::fs::create_dir_all(rootfs.join("www")).expect("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).expect("rootfs");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    symlink("busybox", rootfs.join("bin/sh")).expect("sh");
    std::fs::write(rootfs.join("www/index.html"), "hello-from-container\n").expect("www");
    let tar = dir.join("rootfs.tar");
    assert!(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar")
            .success()
    );

    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    symlink(env!("CARGO_BIN_EXE_usernet"), bin.join("slirp4netns")).expect("symlink");
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").expect("resolv.conf");
    let port = free_port();

    let podman = format!(
        "podman --root {d}/storage --runroot {d}/run --storage-driver vfs --runtime runc \
         --cgroup-manager=cgroupfs",
        d = dir.path().display()
    );
    let inner = format!(
        "ip -o -4 addr show tap0; \
         busybox nslookup podman.usernet.test 10.0.2.3; \
         echo body=$(busybox wget -q -O- http://10.0.2.2:{}/); \
         busybox nc -l -p 80 < /www/index.html; echo served",
        http.port()
    );
    let script = format!(
        "set -e; mount --bind {resolv} /etc/resolv.conf; \
         {podman} import {tar} localhost/usernet-busybox:test >/dev/null; \
         exec timeout 120 {podman} run --rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
         --network slirp4netns:allow_host_loopback=true,port_handler=slirp4netns \
         --network-cmd-path={s4} -p 127.0.0.1:{port}:80 localhost/usernet-busybox:test \
         sh -c '{inner}'",
        resolv = resolv.display(),
        tar = tar.display(),
        s4 = bin.join("slirp4netns").display(),
    );
    let out_path = dir.join("podman.out");
    let mut podman_run = Proc(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("out"))
            .stderr(std::fs::File::create(dir.join("podman.err")).expect("err"))
            .spawn()
            .expect("start podman"),
    );
    let report = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            std::fs::read_to_string(dir.join("podman.err")).unwrap_or_default()
        )
    };

    // The published port reaches the container's one-shot server.
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let attempt = TcpStream::connect(("127.0.0.1", port)).and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            let _ = c.write_all(b"hi\n");
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        });
        if let Ok(s) = attempt
            && s.contains("hello-from-container")
        {
            break s;
        }
        if let Ok(Some(st)) = podman_run.0.try_wait() {
            panic!(
                "podman exited ({st}) before the port answered; {}",
                report()
            );
        }
        assert!(
            Instant::now() < deadline,
            "published port never answered; {}",
            report()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(got.contains("hello-from-container"));

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = podman_run.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "podman run did not end; {}",
            report()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = report();
    assert!(status.success(), "{status}; {out}");
    assert!(out.contains("inet 10.0.2.100/24"), "{out}");
    assert!(out.contains(&TEST_ANSWER.to_string()), "{out}");
    assert!(out.contains("body=hello from the host"), "{out}");
    assert!(out.contains("served"), "{out}");
}
