//! The library's C face: its exports against Debian's `libslirp0`, its
//! structures against the C header, and each entry point driven by a fake
//! embedder (`usernet_libslirp::testing`). No network socket is opened
//! here, only the local socket pairs of guest forwards (the namespace and
//! QEMU tests are in `crates/usernet/tests/libslirp.rs`).
#![allow(unsafe_code)] // The C ABI is what is under test.

use std::collections::BTreeSet;
use std::ffi::{CStr, c_int, c_void};
use std::mem::offset_of;
use std::path::{Path, PathBuf};
use std::process::Command;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Ipv4Address,
};
use usernet_libslirp::config::{SLIRP_POLL_IN, SlirpCb, SlirpConfig};
use usernet_libslirp::testing::{Embedder, default_config};
use usernet_libslirp::*;

const DEBIAN_LIBSLIRP: &str = "/usr/lib/x86_64-linux-gnu/libslirp.so.0";
const HEADER: &str = "/usr/include/slirp/libslirp.h";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("usernet-abi-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Links `libslirp.so.0` from the staticlib beside this test.
fn build_library(out: &Path) -> PathBuf {
    let deps = std::env::current_exe()
        .expect("test path")
        .parent()
        .expect("deps")
        .to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-libslirp.sh");
    let run = Command::new(script)
        .arg("--deps")
        .arg(&deps)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run build-libslirp.sh");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out.join("libslirp.so.0")
}

/// `(version, name)` of every symbol a library defines, from `objdump -T`.
fn exports(lib: &Path) -> BTreeSet<(String, String)> {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(lib)
        .output()
        .expect("run objdump");
    assert!(out.status.success(), "objdump -T {}", lib.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("*UND*") && l.contains(" DF "))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [.., version, name] = f[..] else {
                return None;
            };
            Some((version.to_owned(), name.to_owned()))
        })
        .collect()
}

#[test]
fn exports_match_debian_libslirp() {
    let dir = scratch("exports");
    let ours = exports(&build_library(&dir));
    let theirs = exports(Path::new(DEBIAN_LIBSLIRP));
    assert!(theirs.len() >= 23, "Debian's libslirp0: {theirs:?}");
    let missing: Vec<_> = theirs.difference(&ours).collect();
    assert!(
        missing.is_empty(),
        "missing or versioned differently: {missing:?}"
    );
    // Beyond Debian's 4.7: only libslirp 4.9's addition.
    let extra: Vec<_> = ours.difference(&theirs).collect();
    assert_eq!(
        extra,
        [&(
            "SLIRP_4.9".to_owned(),
            "slirp_pollfds_fill_socket".to_owned()
        )]
    );
    // The soname binaries ask for.
    let dynamic = Command::new("objdump")
        .arg("-p")
        .arg(dir.join("libslirp.so.0"))
        .output()
        .expect("objdump -p");
    assert!(
        String::from_utf8_lossy(&dynamic.stdout).contains("SONAME               libslirp.so.0")
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Offsets of every field the C header (Debian's 4.7: config version 4)
/// declares, printed by a C program and compared with ours.
#[test]
fn layouts_match_the_c_header() {
    let ours: Vec<(&str, usize)> = vec![
        ("SlirpConfig.version", offset_of!(SlirpConfig, version)),
        (
            "SlirpConfig.restricted",
            offset_of!(SlirpConfig, restricted),
        ),
        (
            "SlirpConfig.in_enabled",
            offset_of!(SlirpConfig, in_enabled),
        ),
        ("SlirpConfig.vnetwork", offset_of!(SlirpConfig, vnetwork)),
        ("SlirpConfig.vnetmask", offset_of!(SlirpConfig, vnetmask)),
        ("SlirpConfig.vhost", offset_of!(SlirpConfig, vhost)),
        (
            "SlirpConfig.in6_enabled",
            offset_of!(SlirpConfig, in6_enabled),
        ),
        (
            "SlirpConfig.vprefix_addr6",
            offset_of!(SlirpConfig, vprefix_addr6),
        ),
        (
            "SlirpConfig.vprefix_len",
            offset_of!(SlirpConfig, vprefix_len),
        ),
        ("SlirpConfig.vhost6", offset_of!(SlirpConfig, vhost6)),
        ("SlirpConfig.vhostname", offset_of!(SlirpConfig, vhostname)),
        (
            "SlirpConfig.tftp_server_name",
            offset_of!(SlirpConfig, tftp_server_name),
        ),
        ("SlirpConfig.tftp_path", offset_of!(SlirpConfig, tftp_path)),
        ("SlirpConfig.bootfile", offset_of!(SlirpConfig, bootfile)),
        (
            "SlirpConfig.vdhcp_start",
            offset_of!(SlirpConfig, vdhcp_start),
        ),
        (
            "SlirpConfig.vnameserver",
            offset_of!(SlirpConfig, vnameserver),
        ),
        (
            "SlirpConfig.vnameserver6",
            offset_of!(SlirpConfig, vnameserver6),
        ),
        (
            "SlirpConfig.vdnssearch",
            offset_of!(SlirpConfig, vdnssearch),
        ),
        (
            "SlirpConfig.vdomainname",
            offset_of!(SlirpConfig, vdomainname),
        ),
        ("SlirpConfig.if_mtu", offset_of!(SlirpConfig, if_mtu)),
        ("SlirpConfig.if_mru", offset_of!(SlirpConfig, if_mru)),
        (
            "SlirpConfig.disable_host_loopback",
            offset_of!(SlirpConfig, disable_host_loopback),
        ),
        (
            "SlirpConfig.enable_emu",
            offset_of!(SlirpConfig, enable_emu),
        ),
        (
            "SlirpConfig.outbound_addr",
            offset_of!(SlirpConfig, outbound_addr),
        ),
        (
            "SlirpConfig.outbound_addr6",
            offset_of!(SlirpConfig, outbound_addr6),
        ),
        (
            "SlirpConfig.disable_dns",
            offset_of!(SlirpConfig, disable_dns),
        ),
        (
            "SlirpConfig.disable_dhcp",
            offset_of!(SlirpConfig, disable_dhcp),
        ),
        ("SlirpCb.send_packet", offset_of!(SlirpCb, send_packet)),
        ("SlirpCb.guest_error", offset_of!(SlirpCb, guest_error)),
        ("SlirpCb.clock_get_ns", offset_of!(SlirpCb, clock_get_ns)),
        ("SlirpCb.timer_new", offset_of!(SlirpCb, timer_new)),
        ("SlirpCb.timer_free", offset_of!(SlirpCb, timer_free)),
        ("SlirpCb.timer_mod", offset_of!(SlirpCb, timer_mod)),
        (
            "SlirpCb.register_poll_fd",
            offset_of!(SlirpCb, register_poll_fd),
        ),
        (
            "SlirpCb.unregister_poll_fd",
            offset_of!(SlirpCb, unregister_poll_fd),
        ),
        ("SlirpCb.notify", offset_of!(SlirpCb, notify)),
        (
            "SlirpCb.init_completed",
            offset_of!(SlirpCb, init_completed),
        ),
        (
            "SlirpCb.timer_new_opaque",
            offset_of!(SlirpCb, timer_new_opaque),
        ),
    ];
    assert!(
        Path::new(HEADER).exists(),
        "{HEADER} missing: apt-get install libslirp-dev (scripts/setup.sh does)"
    );
    let dir = scratch("layout");
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <slirp/libslirp.h>\nint main(void) {\n",
    );
    for (name, _) in &ours {
        let (ty, field) = name.split_once('.').expect("Type.field");
        c.push_str(&format!(
            "    printf(\"{name} %zu\\n\", offsetof({ty}, {field}));\n"
        ));
    }
    c.push_str("    return 0;\n}\n");
    std::fs::write(dir.join("layout.c"), c).expect("write layout.c");
    let cc = Command::new("cc")
        .arg("-o")
        .arg(dir.join("layout"))
        .arg(dir.join("layout.c"))
        .output()
        .expect("run cc");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = Command::new(dir.join("layout"))
        .output()
        .expect("run layout");
    let theirs: Vec<(String, usize)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (n, o) = l.split_once(' ')?;
            Some((n.to_owned(), o.parse().ok()?))
        })
        .collect();
    let ours: Vec<(String, usize)> = ours.into_iter().map(|(n, o)| (n.to_owned(), o)).collect();
    assert_eq!(ours, theirs);
    let _ = std::fs::remove_dir_all(dir);
}

/// A new instance of `version` on `e`, or null.
fn new_slirp(e: &Embedder, version: u32) -> *mut Slirp {
    let cfg = default_config(version);
    let cb = Embedder::callbacks();
    // SAFETY: full structures, and `e` outlives the instance.
    unsafe { slirp_new(&cfg, &cb, e.opaque()) }
}

fn arp_request() -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: Ipv4Address::new(10, 0, 2, 15),
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: Ipv4Address::new(10, 0, 2, 2),
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut buf = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

/// Every config version builds; the gateway answers ARP through
/// `send_packet` with libslirp's MAC; timers go through the embedder.
#[test]
fn every_version_answers_arp() {
    for version in 1..=6 {
        let e = Embedder::default();
        e.now_ns.set(1_000_000_000);
        let s = new_slirp(&e, version);
        assert!(!s.is_null(), "version {version}: {:?}", e.errors.borrow());
        assert_eq!(e.completed.get(), if version >= 4 { s as usize } else { 0 });
        let timers = e.timers.borrow().clone();
        assert_eq!(timers.len(), 1, "one timer");
        // Before version 4, the legacy `timer_new` (its callback set).
        assert_eq!(timers[0].legacy.is_some(), version < 4);
        let frame = arp_request();
        // SAFETY: a live instance and a frame of that length.
        unsafe { slirp_input(s, frame.as_ptr(), frame.len() as c_int) };
        let frames = e.frames.borrow().clone();
        let reply = frames
            .iter()
            .find_map(|f| {
                let eth = EthernetFrame::new_checked(&f[..]).ok()?;
                ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()
            })
            .expect("an ARP reply");
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            ..
        } = reply
        else {
            panic!("not IPv4 ARP");
        };
        assert_eq!(operation, ArpOperation::Reply);
        assert_eq!(source_protocol_addr, Ipv4Address::new(10, 0, 2, 2));
        assert_eq!(source_hardware_addr.0, [0x52, 0x55, 10, 0, 2, 2]);
        // Time passes through the embedder's timer without trouble.
        // SAFETY: the live instance made with `e`.
        unsafe { e.advance(s, 5_000) };
        // SAFETY: the live instance, not used again.
        unsafe { slirp_cleanup(s) };
        assert!(e.timers.borrow()[0].freed, "timer not freed");
    }
}

#[test]
fn bad_configurations_fail_cleanly() {
    for (version, mask, want) in [
        (0, [255, 255, 255, 0], "version 0"),
        (7, [255, 255, 255, 0], "version 7"),
        (4, [255, 0, 255, 0], "vnetmask"),
    ] {
        let e = Embedder::default();
        let mut cfg = default_config(version);
        cfg.vnetmask = libc::in_addr {
            s_addr: u32::from_ne_bytes(mask),
        };
        let cb = Embedder::callbacks();
        // SAFETY: full structures, `e` outlives the call.
        let s = unsafe { slirp_new(&cfg, &cb, e.opaque()) };
        assert!(s.is_null());
        let errors = e.errors.borrow();
        assert!(
            errors.iter().any(|m| m.contains(want)),
            "{want}: {errors:?}"
        );
    }
    // No clock: refused, not crashed.
    let e = Embedder::default();
    let cfg = default_config(4);
    let mut cb = Embedder::callbacks();
    cb.clock_get_ns = None;
    // SAFETY: as above.
    assert!(unsafe { slirp_new(&cfg, &cb, e.opaque()) }.is_null());
    assert!(e.errors.borrow().iter().any(|m| m.contains("clock_get_ns")));
    // Null everything.
    // SAFETY: null pointers are checked before use.
    unsafe {
        assert!(slirp_new(std::ptr::null(), &cb, std::ptr::null_mut()).is_null());
        slirp_input(std::ptr::null_mut(), std::ptr::null(), 10);
        slirp_cleanup(std::ptr::null_mut());
        assert!(slirp_connection_info(std::ptr::null_mut()).is_null());
    }
}

unsafe extern "C" fn add_poll(fd: c_int, events: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: the test passes a Vec<(c_int, c_int)> as `opaque`.
    let fds = unsafe { &mut *opaque.cast::<Vec<(c_int, c_int)>>() };
    fds.push((fd, events));
    c_int::try_from(fds.len() - 1).unwrap_or(-1)
}

unsafe extern "C" fn revents_in(_idx: c_int, _opaque: *mut c_void) -> c_int {
    SLIRP_POLL_IN
}

/// The embedder polls one descriptor (ours) for input, whatever happens.
#[test]
fn pollfds_fill_and_poll() {
    let e = Embedder::default();
    let s = new_slirp(&e, 4);
    assert!(!s.is_null());
    let mut fds: Vec<(c_int, c_int)> = Vec::new();
    let mut timeout = u32::MAX;
    // SAFETY: a live instance, a writable timeout, a matching callback.
    unsafe {
        slirp_pollfds_fill(s, &mut timeout, Some(add_poll), (&raw mut fds).cast());
        slirp_pollfds_poll(s, 0, Some(revents_in), std::ptr::null_mut());
        slirp_pollfds_fill_socket(s, &mut timeout, Some(add_poll), (&raw mut fds).cast());
        slirp_pollfds_poll(s, 1, Some(revents_in), std::ptr::null_mut());
    }
    assert_eq!(fds.len(), 2);
    assert_eq!(fds[0], fds[1]);
    assert_eq!(fds[0].1, SLIRP_POLL_IN);
    // An epoll descriptor of this process.
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fds[0].0)).expect("fd");
    assert_eq!(link.to_string_lossy(), "anon_inode:[eventpoll]");
    // SAFETY: the live instance, not used again.
    unsafe { slirp_cleanup(s) };
}

/// Text from `malloc`, and the features not in the core yet failing
/// cleanly.
#[test]
fn info_state_and_unsupported_features() {
    let e = Embedder::default();
    let s = new_slirp(&e, 4);
    assert!(!s.is_null());
    // SAFETY: a live instance; the strings are freed with free(3) as
    // libslirp's callers do.
    unsafe {
        let frame = arp_request();
        slirp_input(s, frame.as_ptr(), frame.len() as c_int);
        let info = slirp_connection_info(s);
        assert!(!info.is_null());
        let text = CStr::from_ptr(info).to_string_lossy().into_owned();
        libc::free(info.cast());
        assert!(
            text.starts_with("  Protocol[State]    FD  Source Address"),
            "{text}"
        );
        let n = slirp_neighbor_info(s);
        let text = CStr::from_ptr(n).to_string_lossy().into_owned();
        libc::free(n.cast());
        assert!(text.contains("52:54:00:12:34:56  10.0.2.15"), "{text}");

        assert_eq!(slirp_state_version(), 4);
        assert!(slirp_state_load(s, 4, None, std::ptr::null_mut()) < 0);
        assert_eq!(slirp_state_save(s, None, std::ptr::null_mut()), -1);
        // Guest forwards: address 0 is host 4, written back.
        let mut addr = libc::in_addr { s_addr: 0 };
        assert_eq!(slirp_add_exec(s, c"cat".as_ptr(), &mut addr, 4321), 0);
        assert_eq!(addr.s_addr, u32::from_ne_bytes([10, 0, 2, 4]));
        assert_eq!(
            slirp_add_unix(s, c"/x".as_ptr(), &mut addr, 4321),
            -1,
            "twice"
        );
        let mut gw = libc::in_addr {
            s_addr: u32::from_ne_bytes([10, 0, 2, 2]),
        };
        assert_eq!(
            slirp_add_unix(s, c"/x".as_ptr(), &mut gw, 1),
            -1,
            "the gateway"
        );
        assert_eq!(slirp_remove_guestfwd(s, addr, 4321), 0);
        assert_eq!(slirp_remove_guestfwd(s, addr, 4321), -1, "removed twice");
        assert_eq!(slirp_add_unix(s, c"/x".as_ptr(), &mut addr, 4321), 0);
        // A callback needs a function.
        let cb_fwd = slirp_add_guestfwd(s, None, std::ptr::null_mut(), &mut addr, 1);
        assert_eq!(cb_fwd, -1);
        assert_eq!(slirp_socket_can_recv(s, addr, 1), 0);
        let v = CStr::from_ptr(slirp_version_string()).to_string_lossy();
        assert!(v.starts_with("4.9"), "{v}");
        slirp_cleanup(s);
    }
}

/// The deprecated constructor builds the same stack.
#[test]
fn slirp_init_works() {
    let e = Embedder::default();
    let c = default_config(1);
    let cb = Embedder::callbacks();
    // SAFETY: the fields of a full configuration, and `e` outlives it.
    let s = unsafe {
        slirp_init(
            c.restricted,
            c.in_enabled,
            c.vnetwork,
            c.vnetmask,
            c.vhost,
            c.in6_enabled,
            c.vprefix_addr6,
            c.vprefix_len,
            c.vhost6,
            c.vhostname,
            c.tftp_server_name,
            c.tftp_path,
            c.bootfile,
            c.vdhcp_start,
            c.vnameserver,
            c.vnameserver6,
            c.vdnssearch,
            c.vdomainname,
            &cb,
            e.opaque(),
        )
    };
    assert!(!s.is_null(), "{:?}", e.errors.borrow());
    let frame = arp_request();
    // SAFETY: the live instance, then cleaned up.
    unsafe {
        slirp_input(s, frame.as_ptr(), frame.len() as c_int);
        slirp_cleanup(s);
    }
    assert!(!e.frames.borrow().is_empty());
}

/// A panic inside is caught at the boundary, reported through
/// `guest_error`, and the instance does nothing more (but still cleans up).
#[test]
fn a_panic_poisons_the_instance() {
    let e = Embedder::default();
    let s = new_slirp(&e, 4);
    assert!(!s.is_null());
    usernet_libslirp::testing::panic_inside(s);
    assert!(
        e.errors
            .borrow()
            .iter()
            .any(|m| m.contains("internal error in test")),
        "{:?}",
        e.errors.borrow()
    );
    let frame = arp_request();
    // SAFETY: the live (poisoned) instance, then cleaned up.
    unsafe {
        slirp_input(s, frame.as_ptr(), frame.len() as c_int);
        assert!(slirp_connection_info(s).is_null());
        slirp_cleanup(s);
    }
    assert!(e.frames.borrow().is_empty(), "a poisoned instance answered");
    let timers = e.timers.borrow();
    assert!(
        !timers.is_empty() && timers.iter().all(|t| t.freed),
        "timer not freed"
    );
}

/// A TCP SYN from the guest to `dst:port`.
fn tcp_syn(dst: Ipv4Address, port: u16) -> Vec<u8> {
    tcp_segment(dst, port, 1000, None, &[])
}

/// A TCP segment from the guest's port 40000 to `dst:port`: a SYN with
/// sequence number `seq` without `ack`, else an ACK carrying `payload`.
fn tcp_segment(dst: Ipv4Address, port: u16, seq: i32, ack: Option<i32>, payload: &[u8]) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    let src = Ipv4Address::new(10, 0, 2, 15);
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: port,
        control: if ack.is_none() {
            TcpControl::Syn
        } else {
            TcpControl::Psh
        },
        seq_number: TcpSeqNumber(seq),
        ack_number: ack.map(TcpSeqNumber),
        window_len: 65535,
        window_scale: None,
        max_seg_size: ack.is_none().then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &src.into(),
        &dst.into(),
        &caps,
    );
    buf
}

/// `restricted` (QEMU's `restrict=on`) refuses the guest's connection to
/// the gateway at once, before any host socket.
#[test]
fn restricted_refuses_the_gateway() {
    let e = Embedder::default();
    let mut cfg = default_config(4);
    cfg.restricted = 1;
    let cb = Embedder::callbacks();
    // SAFETY: full structures; `e` outlives the instance.
    let s = unsafe { slirp_new(&cfg, &cb, e.opaque()) };
    assert!(!s.is_null(), "{:?}", e.errors.borrow());
    for f in [arp_request(), tcp_syn(Ipv4Address::new(10, 0, 2, 2), 22)] {
        // SAFETY: the live instance and a frame of that length.
        unsafe { slirp_input(s, f.as_ptr(), f.len() as c_int) };
    }
    // SAFETY: the live instance, not used again.
    unsafe { slirp_cleanup(s) };
    let refused = e.frames.borrow().iter().any(|f| {
        use smoltcp::wire::{Ipv4Packet, TcpPacket};
        let Ok(eth) = EthernetFrame::new_checked(&f[..]) else {
            return false;
        };
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            return false;
        };
        TcpPacket::new_checked(ip.payload()).is_ok_and(|t| t.rst() && t.src_port() == 22)
    });
    assert!(refused, "no RST for a restricted guest's SYN");
}

/// `disable_dhcp` (version 4) silences the DHCP server, and only then.
#[test]
fn disable_dhcp_silences_dhcp() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../corpus/libslirp-fuzzing/IN_dhcp/dhcp_capture.pcap");
    let frames = usernet_core::testing::capture_frames(&path, GUEST_MAC, [0x52, 0x55, 10, 0, 2, 2]);
    let dhcp_replies = |disable: bool| {
        let e = Embedder::default();
        let mut cfg = default_config(4);
        cfg.disable_dhcp = disable;
        let cb = Embedder::callbacks();
        // SAFETY: full structures; `e` outlives the instance; frames of
        // their length.
        unsafe {
            let s = slirp_new(&cfg, &cb, e.opaque());
            assert!(!s.is_null());
            for f in &frames {
                slirp_input(s, f.as_ptr(), f.len() as c_int);
            }
            slirp_cleanup(s);
        }
        e.frames
            .borrow()
            .iter()
            .filter(|f| {
                use smoltcp::wire::{Ipv4Packet, UdpPacket};
                let Ok(eth) = EthernetFrame::new_checked(&f[..]) else {
                    return false;
                };
                let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                    return false;
                };
                UdpPacket::new_checked(ip.payload()).is_ok_and(|u| u.src_port() == 67)
            })
            .count()
    };
    assert!(dhcp_replies(false) > 0, "no DHCP reply at all");
    assert_eq!(dhcp_replies(true), 0);
}

/// A `write_cb` appending to the `RefCell<Vec<u8>>` at `opaque`.
unsafe extern "C" fn collect(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: the test passes a live RefCell<Vec<u8>> as `opaque`, and the
    // library `len` readable bytes.
    let (got, data) = unsafe {
        (
            &*opaque.cast::<std::cell::RefCell<Vec<u8>>>(),
            std::slice::from_raw_parts(buf.cast::<u8>(), len),
        )
    };
    got.borrow_mut().extend_from_slice(data);
    isize::try_from(len).unwrap_or(-1)
}

/// The TCP segments sent to the guest from `port`: (flags SYN+ACK, seq,
/// payload).
fn segments_from(e: &Embedder, port: u16) -> Vec<(bool, u32, Vec<u8>)> {
    use smoltcp::wire::{Ipv4Packet, TcpPacket};
    e.frames
        .borrow()
        .iter()
        .filter_map(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).ok()?;
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            (tcp.src_port() == port).then(|| {
                (
                    tcp.syn() && tcp.ack(),
                    tcp.seq_number().0 as u32,
                    tcp.payload().to_vec(),
                )
            })
        })
        .collect()
}

/// Turns of the embedder's loop (our descriptor reported readable) until
/// `done`, at most about ten seconds.
fn turn_until(s: *mut Slirp, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..2000 {
        if done() {
            return true;
        }
        let mut fds: Vec<(c_int, c_int)> = Vec::new();
        let mut timeout = u32::MAX;
        // SAFETY: a live instance, a writable timeout, matching callbacks.
        unsafe {
            slirp_pollfds_fill(s, &mut timeout, Some(add_poll), (&raw mut fds).cast());
            slirp_pollfds_poll(s, 0, Some(revents_in), std::ptr::null_mut());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    done()
}

/// A guest forward to a callback: nothing to receive before the guest
/// connects; the guest's bytes reach `write_cb`, `slirp_socket_recv`'s
/// reach the guest; too much closes the connection; removal ends it.
#[test]
fn guestfwd_to_a_callback() {
    let e = Embedder::default();
    let s = new_slirp(&e, 4);
    assert!(!s.is_null());
    let got = std::cell::RefCell::new(Vec::<u8>::new());
    let fwd_ip = Ipv4Address::new(10, 0, 2, 100);
    let mut addr = libc::in_addr {
        s_addr: u32::from_ne_bytes([10, 0, 2, 100]),
    };
    let opaque = std::ptr::from_ref(&got).cast_mut().cast();
    // SAFETY: a live instance; `got` outlives it; buffers of their length.
    unsafe {
        assert_eq!(
            slirp_add_guestfwd(s, Some(collect), opaque, &mut addr, 4321),
            0
        );
        assert_eq!(addr.s_addr, u32::from_ne_bytes([10, 0, 2, 100]));
        assert_eq!(slirp_socket_can_recv(s, addr, 4321), 0, "no connection");
        slirp_socket_recv(s, addr, 4321, b"lost".as_ptr(), 4);
        for f in [arp_request(), tcp_syn(fwd_ip, 4321)] {
            slirp_input(s, f.as_ptr(), f.len() as c_int);
        }
    }
    assert!(
        turn_until(s, || segments_from(&e, 4321).iter().any(|x| x.0)),
        "no SYN-ACK: {:?}",
        e.errors.borrow()
    );
    let isn = segments_from(&e, 4321)
        .iter()
        .find(|x| x.0)
        .map(|x| x.1)
        .expect("SYN-ACK");
    let ack = isn.wrapping_add(1) as i32;
    // SAFETY: as above.
    let room = unsafe { slirp_socket_can_recv(s, addr, 4321) };
    assert!(room > 0, "a connection has room");
    assert_eq!(
        // SAFETY: as above.
        unsafe { slirp_socket_can_recv(s, addr, 4322) },
        0,
        "another port has none"
    );
    let hello = tcp_segment(fwd_ip, 4321, 1001, Some(ack), b"hello");
    // SAFETY: as above.
    unsafe { slirp_input(s, hello.as_ptr(), hello.len() as c_int) };
    assert!(
        turn_until(s, || got.borrow().as_slice() == b"hello"),
        "{:?}",
        got.borrow()
    );

    // SAFETY: as above.
    unsafe { slirp_socket_recv(s, addr, 4321, b"world".as_ptr(), 5) };
    let to_guest = || -> Vec<u8> {
        segments_from(&e, 4321)
            .into_iter()
            .flat_map(|x| x.2)
            .collect()
    };
    assert!(turn_until(s, || to_guest() == b"world"), "{:?}", to_guest());

    // More than the room closes the connection: the guest sees FIN.
    // SAFETY: as above.
    unsafe {
        let room = slirp_socket_can_recv(s, addr, 4321);
        let big = vec![0u8; room + 1];
        slirp_socket_recv(s, addr, 4321, big.as_ptr(), big.len() as c_int);
        assert_eq!(slirp_socket_can_recv(s, addr, 4321), 0);
    }
    assert!(
        e.errors
            .borrow()
            .iter()
            .any(|m| m.contains("slirp_socket_recv") && m.contains("connection closed")),
        "{:?}",
        e.errors.borrow()
    );
    let fin = || {
        use smoltcp::wire::{Ipv4Packet, TcpPacket};
        e.frames.borrow().iter().any(|f| {
            EthernetFrame::new_checked(&f[..])
                .ok()
                .and_then(|eth| {
                    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
                    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
                    Some(tcp.src_port() == 4321 && tcp.fin())
                })
                .unwrap_or(false)
        })
    };
    assert!(turn_until(s, fin), "no FIN to the guest");
    // SAFETY: as above; the instance is not used after cleanup.
    unsafe {
        assert_eq!(slirp_remove_guestfwd(s, addr, 4321), 0);
        assert_eq!(slirp_remove_guestfwd(s, addr, 4321), -1);
        assert_eq!(slirp_socket_can_recv(s, addr, 4321), 0);
        slirp_cleanup(s);
    }
}
