//! Issue 8's core features against a real QEMU guest: the read-only TFTP
//! server (`--tftp`, busybox `tftp`, over IPv4 and IPv6), the boot file in DHCP (`--bootfile`),
//! and guestfwd to a command and to a unix socket (`--guestfwd`, busybox
//! `nc`). Run through `scripts/test.sh`, which provides the guest and the
//! isolated network namespace.
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::{DHCP, Guest, GuestFile, SCENARIO_OK, TempDir, Usernet};

/// The value of the first console line `KEY=VALUE` (trimmed).
fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

/// The host's `sha256sum` of a file.
fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// A udhcpc script that prints the BOOTP file field, then configures the
/// interface as the guest's default script does.
const BOOTFILE_SCRIPT: &str = "#!/bin/sh
[ \"$1\" = bound ] && echo \"bootfile=${boot_file-}\" && echo \"siaddr=${siaddr-}\"
exec /etc/udhcpc/default.script \"$@\"
";

#[test]
fn tftp_download_refusals_and_bootfile() {
    let dir = TempDir::new("tftp");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("boot")).expect("mkdir");
    // 300 KiB and a bit of pseudo-random bytes: 601 blocks of 512, the
    // last one short.
    let mut blob = Vec::with_capacity(300 * 1024 + 17);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while blob.len() < 300 * 1024 + 17 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        blob.extend_from_slice(&x.to_le_bytes());
    }
    blob.truncate(300 * 1024 + 17);
    std::fs::write(root.join("boot/blob"), &blob).expect("write blob");
    std::fs::write(dir.join("secret"), b"outside the root\n").expect("write secret");
    std::os::unix::fs::symlink("../secret", root.join("escape")).expect("symlink");
    let want = sha256_of(&root.join("boot/blob"));

    let root_arg = root.to_str().expect("utf-8 temp path");
    let mut un = Usernet::spawn(&["--tftp", root_arg, "--bootfile", "boot/pxelinux.0", "-v"]);
    let scenario = "udhcpc -i eth0 -n -q -t 5 -T 2 -s /bin/bootfile.sh
cd /tmp
timeout 120 tftp -g -r boot/blob -l plain 10.0.2.2; echo plain.rc=$?
timeout 120 tftp -g -b 1024 -r boot/blob -l big 10.0.2.2; echo big.rc=$?
i=0
while ! ip -6 addr show dev eth0 | grep 'inet6 fec0::' | grep -qv tentative && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
timeout 120 tftp -g -b 1400 -r boot/blob -l v6 fec0::2; echo v6.rc=$?
sha256sum plain big v6
timeout 30 tftp -g -r ../../etc/passwd -l t1 10.0.2.2; echo dotdot.rc=$?
timeout 30 tftp -g -r /etc/passwd -l t2 10.0.2.2; echo absolute.rc=$?
timeout 30 tftp -g -r escape -l t3 10.0.2.2; echo symlink.rc=$?
timeout 30 tftp -g -r missing -l t4 10.0.2.2; echo missing.rc=$?
timeout 30 tftp -p -l plain -r upload 10.0.2.2; echo put.rc=$?
cat t1 t2 t3 2>/dev/null | grep -c 'outside the root\\|root:' | sed 's/^/leaked=/'
";
    let files = [GuestFile {
        path: "/bin/bootfile.sh",
        data: BOOTFILE_SCRIPT.as_bytes(),
        mode: 0o755,
    }];
    let out = Guest::run_with_files(un.socket(), scenario, &files, Duration::from_secs(300));
    un.assert_running();
    assert!(out.contains(SCENARIO_OK), "scenario failed:\n{out}");
    assert_eq!(field(&out, "bootfile"), Some("boot/pxelinux.0"), "{out}");
    assert_eq!(field(&out, "siaddr"), Some("10.0.2.2"), "{out}");
    assert_eq!(field(&out, "plain.rc"), Some("0"), "{out}");
    assert_eq!(field(&out, "big.rc"), Some("0"), "{out}");
    assert_eq!(
        field(&out, "v6.rc"),
        Some("0"),
        "over IPv6 from fec0::2:\n{out}"
    );
    for name in ["plain", "big", "v6"] {
        let got = out.lines().find_map(|l| {
            let (hash, file) = l.trim().split_once(char::is_whitespace)?;
            (file.trim() == name && hash.len() == 64).then_some(hash)
        });
        assert_eq!(got, Some(want.as_str()), "{name} differs:\n{out}");
    }
    for refused in ["dotdot", "absolute", "symlink", "missing", "put"] {
        let rc = field(&out, &format!("{refused}.rc"));
        assert!(
            rc.is_some_and(|rc| rc != "0"),
            "{refused} should fail: {rc:?}\n{out}"
        );
    }
    assert_eq!(field(&out, "leaked"), Some("0"), "{out}");
    // `-b` went through option negotiation (the debug log shows the OACK).
    let log = un.log();
    for size in [1024, 1400] {
        assert!(
            log.contains(&format!("blksize: Some({size})")),
            "no OACK with blksize {size} in the log:\n{log}"
        );
    }
    assert!(
        !root.join("upload").exists(),
        "a write request created a file"
    );
}

#[test]
fn guestfwd_to_commands_and_a_unix_socket() {
    let dir = TempDir::new("guestfwd");
    let sock = dir.join("svc.sock");
    let listener = UnixListener::bind(&sock).expect("bind unix socket");
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept guestfwd");
        let mut req = Vec::new();
        conn.read_to_end(&mut req).expect("read request");
        conn.write_all(b"unix got: ").expect("write");
        conn.write_all(&req).expect("write");
        req
    });
    let unix_arg = format!("tcp:10.0.2.101:80-unix:{}", sock.display());
    let mut un = Usernet::spawn(&[
        "--guestfwd",
        "tcp:10.0.2.100:4321-cmd:cat",
        "--guestfwd",
        "tcp:10.0.2.100:4322-cmd:echo hello from a command",
        "--guestfwd",
        &unix_arg,
    ]);
    let scenario = format!(
        "{DHCP}echo through-cat | timeout 30 nc 10.0.2.100 4321 | sed 's/^/cat=/'
timeout 30 nc 10.0.2.100 4322 </dev/null | sed 's/^/echo=/'
echo to-the-socket | timeout 30 nc 10.0.2.101 80 | sed 's/^/unix=/'
dd if=/dev/urandom of=/tmp/r bs=1k count=512 2>/dev/null
sha256sum /tmp/r | sed 's/ .*//; s/^/sent=/'
timeout 120 nc 10.0.2.100 4321 </tmp/r | sha256sum | sed 's/ .*//; s/^/echoed=/'
timeout 10 nc 10.0.2.100 4323 </dev/null; echo other.rc=$?
"
    );
    let out = Guest::run(un.socket(), &scenario, Duration::from_secs(300));
    un.assert_running();
    assert!(out.contains(SCENARIO_OK), "scenario failed:\n{out}");
    assert_eq!(field(&out, "cat"), Some("through-cat"), "{out}");
    assert_eq!(field(&out, "echo"), Some("hello from a command"), "{out}");
    assert_eq!(
        field(&out, "unix"),
        Some("unix got: to-the-socket"),
        "{out}"
    );
    let sent = field(&out, "sent").expect("sent hash");
    assert_eq!(sent.len(), 64, "{out}");
    assert_eq!(
        field(&out, "echoed"),
        Some(sent),
        "512 KiB through cat:\n{out}"
    );
    assert!(
        field(&out, "other.rc").is_some_and(|rc| rc != "0"),
        "another port of the guestfwd address is refused:\n{out}"
    );
    let req = server.join().expect("unix server thread");
    assert_eq!(req, b"to-the-socket\n");
}
