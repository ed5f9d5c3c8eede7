//! The human-readable tables of `slirp_connection_info` (QEMU's `info
//! usernet`) and `slirp_neighbor_info`, in libslirp's column layout.
//!
//! # Theory of operation
//! One line per port-forward listener (`TCP[HOST_FORWARD]`,
//! `UDP[HOST_FORWARD]`) and per flow of the core's table, from
//! [`Stack::hostfwds`] and [`Stack::connections`]. libslirp prints the
//! socket's descriptor and queue lengths too; the descriptor comes from
//! [`Sockets::fd`] (-1 once the host side closed), and the queues, which
//! live in the kernel here, print as 0.
use std::fmt::Write as _;
use std::net::SocketAddr;

use usernet_core::Stack;
use usernet_core::nat::Proto;
use usernet_core::tcp::State;
use usernet_host::{Poller, Sockets};

const HEADER: &str =
    "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n";

fn row(out: &mut String, label: &str, fd: i32, src: SocketAddr, dst: SocketAddr) {
    let _ = writeln!(
        out,
        "  {label:<17}{fd:>3} {:>15} {:>5} {:>15} {:>5} {:>5} {:>5}",
        src.ip().to_string(),
        src.port(),
        dst.ip().to_string(),
        dst.port(),
        0,
        0
    );
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Connecting | State::SynSent => "SYN_SENT",
        State::SynAckSent => "SYN_RCVD",
        State::Established => "ESTABLISHED",
        State::Lingering => "TIME_WAIT",
    }
}

/// `slirp_connection_info`'s table.
pub fn connections<P: Poller>(stack: &Stack, sockets: &Sockets<P>) -> String {
    let mut out = String::from(HEADER);
    for (_, fwd) in stack.hostfwds() {
        let proto = match fwd.proto {
            usernet_core::host::Proto::Tcp => "TCP[HOST_FORWARD]",
            usernet_core::host::Proto::Udp => "UDP[HOST_FORWARD]",
        };
        let guest = SocketAddr::new(
            fwd.guest_addr
                .unwrap_or_else(|| stack.config().dhcpstart.into()),
            fwd.guest_port,
        );
        row(&mut out, proto, -1, fwd.host, guest);
    }
    for c in stack.connections() {
        let label = match (c.proto, c.tcp_state) {
            (Proto::Tcp, Some(s)) => format!("TCP[{}]", state_name(s)),
            (Proto::Tcp, None) => "TCP[NONE]".to_owned(),
            (Proto::Udp, _) => "UDP".to_owned(),
            (Proto::Icmp, _) => "ICMP".to_owned(),
        };
        let fd = sockets.fd(c.token).unwrap_or(-1);
        row(&mut out, &label, fd, c.guest, c.remote);
    }
    out
}

/// `slirp_neighbor_info`'s table: the guest the stack has learnt.
pub fn neighbors(stack: &Stack) -> String {
    let mut out = String::from("  Hardware Address  IP Address\n");
    let (mac, v4, v6) = stack.guest_addresses();
    let Some(mac) = mac else {
        return out;
    };
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    if let Some(ip) = v4 {
        let _ = writeln!(out, "  {mac}  {ip}");
    }
    if let Some(ip) = v6 {
        let _ = writeln!(out, "  {mac}  {ip}");
    }
    out
}
