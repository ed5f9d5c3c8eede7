//! `usernet ns` and `usernet attach` end to end: a command in a namespace
//! served through a tap gets 10.0.2.100, reaches a host TCP server on
//! 127.0.0.1 through the gateway 10.0.2.2, resolves a name through
//! 10.0.2.3 (against the [`TestResolver`]) and pings the gateway; and the
//! slirp4netns API adds, lists and removes a forward a host client uses.
//!
//! Runs as root inside `scripts/test.sh`'s network namespace; every
//! namespace and process here is the test's own.
mod common;

use std::io::Read as _;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ns::{
    HttpServer, Proc, api, attach, free_port, in_ns, namespace, wait_for_socket, wait_for_tap,
};
use common::{
    TEST_ANSWER, TempDir, TestResolver, assert_isolated_netns, ns_script, usernet_output,
};

/// The checks run inside the namespace: address, route, HTTP to the host,
/// DNS through resolv.conf (when `resolv`) or 10.0.2.3 explicitly, ping.
fn checks(http_port: u16, resolv: bool) -> String {
    let server = if resolv { "" } else { " 10.0.2.3" };
    format!(
        "set -e
ip -o -4 addr show tap0
ip route show default
echo body=$(busybox wget -q -O- http://10.0.2.2:{http_port}/)
busybox nslookup www.usernet.test{server}
busybox ping -c 1 -W 5 10.0.2.2
"
    )
}

fn assert_checks(out: &str) {
    assert!(out.contains("inet 10.0.2.100/24"), "address:\n{out}");
    assert!(
        out.contains("default via 10.0.2.2 dev tap0"),
        "route:\n{out}"
    );
    assert!(out.contains("body=hello from the host"), "http:\n{out}");
    assert!(out.contains(&TEST_ANSWER.to_string()), "dns:\n{out}");
    assert!(out.contains("1 packets received"), "ping:\n{out}");
}

#[test]
fn ns_runs_a_command_with_network_and_its_exit_status() {
    assert_isolated_netns();
    let resolver = TestResolver::start();
    let http = HttpServer::start("hello from the host");
    let script = format!("cat /etc/resolv.conf; {}", checks(http.port(), true));
    let (status, text) = ns_script(&resolver.upstream_arg(), &script);
    assert!(status.success(), "{status}:\n{text}");
    assert!(text.contains("nameserver 10.0.2.3"), "resolv.conf:\n{text}");
    assert_checks(&text);
    assert!(
        resolver
            .names()
            .iter()
            .any(|(n, _)| n == "www.usernet.test"),
        "{:?}",
        resolver.names()
    );

    // The command's exit status is usernet's.
    let out = usernet_output(
        &[
            "ns",
            "--dns-upstream",
            &resolver.upstream_arg(),
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(7));
    // A command that cannot be run is an error, not a hang.
    let out = usernet_output(
        &[
            "ns",
            "--dns-upstream",
            "127.0.0.1:9",
            "--",
            "/nonexistent/cmd",
        ],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
}

fn attach_serves(userns: bool) {
    assert_isolated_netns();
    let resolver = TestResolver::start();
    let http = HttpServer::start("hello from the host");
    let ns = namespace();
    let dir = TempDir::new("attach");
    let pid = ns.pid().to_string();
    let userns_path = format!("/proc/{pid}/ns/user");
    let up = resolver.upstream_arg();
    let mut args = vec!["--dns-upstream", up.as_str()];
    if userns {
        args.extend(["--userns-path", userns_path.as_str()]);
    }
    args.push(&pid);
    let _usernet = attach(&dir, &args);
    let log = || std::fs::read_to_string(dir.join("usernet.log")).unwrap_or_default();
    wait_for_tap(ns.pid(), "tap0", &log);
    let (ok, out) = in_ns(ns.pid(), &checks(http.port(), false));
    assert!(ok, "{out}\nlog:\n{}", log());
    assert_checks(&out);
}

#[test]
fn attach_serves_an_existing_namespace() {
    attach_serves(false);
}

#[test]
fn attach_enters_the_user_namespace_with_userns_path() {
    attach_serves(true);
}

/// Reads what a forwarded connection to 127.0.0.1:`port` returns.
fn fetch(port: u16) -> std::io::Result<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    Ok(s)
}

#[test]
fn api_adds_lists_and_removes_forwards() {
    assert_isolated_netns();
    let ns = namespace();
    let dir = TempDir::new("api");
    let sock = dir.join("api.sock");
    let pid = ns.pid().to_string();
    let sock_arg = sock.to_str().expect("utf-8 path");
    let _usernet = attach(
        &dir,
        &[
            "--dns-upstream",
            "127.0.0.1:9",
            "--api-socket",
            sock_arg,
            &pid,
        ],
    );
    let log = || std::fs::read_to_string(dir.join("usernet.log")).unwrap_or_default();
    wait_for_tap(ns.pid(), "tap0", &log);
    wait_for_socket(&sock, &log);

    // A server in the namespace: socat answers each connection.
    let _server = Proc(
        Command::new("nsenter")
            .args(["-t", &pid, "-U", "-n", "--preserve-credentials"])
            .args([
                "socat",
                "TCP-LISTEN:80,reuseaddr,fork",
                "SYSTEM:echo hello-from-ns",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start socat"),
    );
    let (_, ok) = in_ns(
        ns.pid(),
        "for i in $(seq 50); do ss -ltn | grep -q ':80 ' && exit 0; sleep 0.1; done; exit 1",
    );
    let _ = ok;

    let port = free_port();
    let add = format!(
        r#"{{"execute": "add_hostfwd", "arguments": {{"proto": "tcp", "host_addr": "127.0.0.1", "host_port": {port}, "guest_port": 80}}}}"#
    );
    assert_eq!(
        api(&sock, &add),
        r#"{"return":{"id":1}}"#,
        "log:\n{}",
        log()
    );
    assert_eq!(
        api(&sock, r#"{"execute": "list_hostfwd"}"#),
        format!(
            r#"{{"entries":[{{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":{port},"guest_addr":"10.0.2.100","guest_port":80}}]}}"#
        )
    );
    let got = fetch(port).expect("connect through the forward");
    assert_eq!(got.trim(), "hello-from-ns", "log:\n{}", log());

    // Malformed JSON: an error reply, and usernet keeps serving.
    assert_eq!(
        api(&sock, r#"{"execute": "#),
        r#"{"error":{"desc":"bad request: cannot parse JSON"}}"#
    );
    assert_eq!(
        api(&sock, r#"{"execute": "frobnicate"}"#),
        r#"{"error":{"desc":"bad request: unknown execute"}}"#
    );
    assert_eq!(
        api(&sock, &add),
        r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#
    );

    assert_eq!(
        api(
            &sock,
            r#"{"execute": "remove_hostfwd", "arguments": {"id": 1}}"#
        ),
        r#"{"return":{}}"#
    );
    assert_eq!(
        api(&sock, r#"{"execute": "list_hostfwd"}"#),
        r#"{"entries":[]}"#
    );
    assert!(fetch(port).is_err(), "the forward is gone");
}
