//! Command-line validation: a bad flag makes `usernet qemu` exit with
//! status 2 and one line on stderr naming the flag, before it opens any
//! socket. No guest needed.
mod common;

use std::time::Duration;

use common::{TempDir, usernet_output};

/// Runs `usernet qemu --socket ... --dns-upstream 127.0.0.1:9 BAD...` and
/// checks the exit status and the error line.
fn rejects(bad: &[&str], flag: &str) {
    let dir = TempDir::new("cli");
    let socket = dir.join("usernet.sock");
    let socket = socket.to_str().expect("utf-8 temp path");
    let mut args = vec!["qemu", "--socket", socket, "--dns-upstream", "127.0.0.1:9"];
    args.extend_from_slice(bad);
    let out = usernet_output(&args, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "usernet {bad:?}: {}; stderr:\n{stderr}",
        out.status
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "usernet {bad:?}: stderr is not one line:\n{stderr}"
    );
    assert!(
        stderr.contains(flag),
        "usernet {bad:?}: stderr does not name {flag}:\n{stderr}"
    );
}

#[test]
fn net_prefix_too_long() {
    rejects(&["--net", "10.0.2.0/33"], "--net");
}

#[test]
fn host_outside_net() {
    rejects(&["--host", "10.0.3.2"], "--host");
}

#[test]
fn dhcpstart_is_the_gateway() {
    rejects(&["--dhcpstart", "10.0.2.2"], "--dhcpstart");
}

#[test]
fn mtu_too_large() {
    rejects(&["--mtu", "70000"], "--mtu");
}

#[test]
fn mtu_not_a_number() {
    rejects(&["--mtu", "abc"], "--mtu");
}

#[test]
fn hostfwd_malformed() {
    rejects(&["--hostfwd", "bogus"], "--hostfwd");
}

#[test]
fn allow_with_a_bad_port() {
    rejects(&["--allow", "10.0.2.2:http"], "--allow");
}

#[test]
fn deny_with_an_unbracketed_ipv6_port() {
    rejects(&["--deny", "fec0::/64:80"], "--deny");
}

#[test]
fn restrict_with_a_bad_switch() {
    rejects(&["--restrict=sometimes"], "--restrict");
}

#[test]
fn tftp_not_a_directory() {
    rejects(&["--tftp", "/nonexistent/usernet-tftp"], "--tftp");
}

#[test]
fn bootfile_too_long() {
    let long = "b".repeat(128);
    rejects(&["--bootfile", &long], "--bootfile");
}

#[test]
fn guestfwd_malformed() {
    rejects(&["--guestfwd", "tcp:10.0.2.100:80-bogus"], "--guestfwd");
}

#[test]
fn guestfwd_outside_net() {
    rejects(&["--guestfwd", "tcp:10.0.3.100:80-cmd:cat"], "--guestfwd");
}

#[test]
fn guestfwd_on_the_gateway() {
    rejects(&["--guestfwd", "tcp:10.0.2.2:80-cmd:cat"], "--guestfwd");
}

#[test]
fn guestfwd_twice() {
    rejects(
        &[
            "--guestfwd",
            "tcp:10.0.2.100:80-cmd:cat",
            "--guestfwd",
            "tcp:10.0.2.100:80-unix:/tmp/x",
        ],
        "--guestfwd",
    );
}

#[test]
fn max_flows_zero() {
    rejects(&["--max-flows", "0"], "--max-flows");
}

#[test]
fn max_flows_not_a_number() {
    rejects(&["--max-flows", "many"], "--max-flows");
}

/// The splice path carries TCP only: a UDP forward to the namespace's
/// loopback is a configuration error, before any namespace is made.
#[test]
fn udp_hostfwd_to_the_namespace_loopback() {
    let out = usernet_output(
        &[
            "ns",
            "--dns-upstream",
            "127.0.0.1:9",
            "--hostfwd",
            "udp:127.0.0.1:5353-127.0.0.1:53",
            "--",
            "true",
        ],
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--hostfwd"), "{stderr}");
}
