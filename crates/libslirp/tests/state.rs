//! Migration state interoperates with Debian's real libslirp both ways:
//! the state real libslirp saves after a guest's DHCP exchange loads into
//! usernet and saves back the same, and usernet's loads into real libslirp
//! (`tests/c/state_helper.c`, linked with `-lslirp`) and comes back the
//! same. The guest's exchange is the DHCP capture of libslirp's own fuzzing
//! corpus. No socket is opened.
#![allow(unsafe_code)] // The C ABI is what is under test.

use std::ffi::{c_int, c_void};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use usernet_core::testing::capture_frames;
use usernet_libslirp::testing::{Embedder, default_config};
use usernet_libslirp::*;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const STACK_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("usernet-state-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn dhcp_frames() -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../corpus/libslirp-fuzzing/IN_dhcp/dhcp_capture.pcap");
    capture_frames(&path, GUEST_MAC, STACK_MAC)
}

/// Builds the helper against Debian's libslirp.
fn helper(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/state_helper.c");
    let bin = dir.join("state_helper");
    let cc = Command::new("cc")
        .arg("-o")
        .arg(&bin)
        .arg(src)
        .arg("-lslirp")
        .output()
        .expect("run cc");
    assert!(
        cc.status.success(),
        "cc (needs libslirp-dev, see scripts/setup.sh): {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    bin
}

/// Runs `helper MODE A B` on the real libslirp (whatever
/// `LD_LIBRARY_PATH` says); returns its output.
fn run(helper: &Path, mode: &str, a: &Path, b: &Path) -> String {
    let out = Command::new(helper)
        .arg(mode)
        .arg(a)
        .arg(b)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run state_helper");
    assert!(
        out.status.success(),
        "state_helper: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

unsafe extern "C" fn write_vec(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: `opaque` is the test's Vec, `buf` the library's bytes.
    let (v, data) = unsafe {
        (
            &mut *opaque.cast::<Vec<u8>>(),
            std::slice::from_raw_parts(buf.cast::<u8>(), len),
        )
    };
    v.extend_from_slice(data);
    isize::try_from(len).unwrap_or(-1)
}

unsafe extern "C" fn read_slice(buf: *mut c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: `opaque` is the test's `&[u8]` cursor, `buf` has `len` bytes.
    let (src, dst) = unsafe {
        (
            &mut *opaque.cast::<&[u8]>(),
            std::slice::from_raw_parts_mut(buf.cast::<u8>(), len),
        )
    };
    let n = src.read(dst).unwrap_or(0);
    isize::try_from(n).unwrap_or(-1)
}

/// A usernet instance fed `frames`, then `state` loaded (if any); returns
/// the load's result and the state it saves then.
fn usernet(frames: &[Vec<u8>], state: Option<&[u8]>) -> (c_int, Vec<u8>) {
    let e = Embedder::default();
    let cfg = default_config(4);
    let cb = Embedder::callbacks();
    // SAFETY: full structures; `e` outlives the instance; the callbacks
    // get the opaque pointers they expect.
    unsafe {
        let s = slirp_new(&cfg, &cb, e.opaque());
        assert!(!s.is_null(), "{:?}", e.errors.borrow());
        for f in frames {
            slirp_input(s, f.as_ptr(), f.len() as c_int);
        }
        let mut rc = 0;
        if let Some(mut bytes) = state {
            rc = slirp_state_load(
                s,
                slirp_state_version(),
                Some(read_slice),
                (&raw mut bytes).cast(),
            );
        }
        let mut saved = Vec::new();
        assert_eq!(
            slirp_state_save(s, Some(write_vec), (&raw mut saved).cast()),
            0
        );
        slirp_cleanup(s);
        (rc, saved)
    }
}

/// The first BOOTP client slot: allocated, to the guest's MAC.
fn first_slot_is_the_guest(state: &[u8]) -> bool {
    state.get(3..11) == Some(&[0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56][..])
}

/// The state without its `ip_id` (bytes 1 and 2), which each
/// implementation counts its own way.
fn without_ip_id(state: &[u8]) -> Vec<u8> {
    let mut s = state.to_vec();
    if s.len() >= 3 {
        s[1] = 0;
        s[2] = 0;
    }
    s
}

#[test]
fn libslirp_state_loads_into_usernet() {
    let dir = scratch("theirs");
    let helper = helper(&dir);
    let frames = dhcp_frames();
    let mut framed = Vec::new();
    for f in &frames {
        framed.extend_from_slice(&u32::try_from(f.len()).expect("len").to_le_bytes());
        framed.extend_from_slice(f);
    }
    let frames_path = dir.join("frames");
    std::fs::write(&frames_path, framed).expect("write frames");
    let theirs_path = dir.join("theirs.state");
    run(&helper, "save", &frames_path, &theirs_path);
    let theirs = std::fs::read(&theirs_path).expect("their state");
    assert_eq!(theirs.len(), 131, "libslirp's state: {theirs:?}");
    assert!(first_slot_is_the_guest(&theirs), "{theirs:?}");

    let (rc, ours) = usernet(&[], Some(&theirs));
    assert_eq!(rc, 0);
    assert_eq!(without_ip_id(&ours), without_ip_id(&theirs));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn usernet_state_loads_into_libslirp() {
    let dir = scratch("ours");
    let helper = helper(&dir);
    let (_, ours) = usernet(&dhcp_frames(), None);
    assert!(first_slot_is_the_guest(&ours), "{ours:?}");
    let ours_path = dir.join("ours.state");
    std::fs::write(&ours_path, &ours).expect("write state");
    let back_path = dir.join("back.state");
    let out = run(&helper, "reload", &ours_path, &back_path);
    assert_eq!(out.trim(), "load=0");
    let back = std::fs::read(&back_path).expect("state back");
    assert_eq!(without_ip_id(&back), without_ip_id(&ours));
    let _ = std::fs::remove_dir_all(dir);
}

/// A socket record (a callback guest forward, which usernet has not) is
/// refused as libslirp refuses one it cannot match.
#[test]
fn guest_forward_records_are_refused() {
    let mut state = vec![42u8];
    state.extend_from_slice(&[0; 200]);
    let (rc, _) = usernet(&[], Some(&state));
    assert_eq!(rc, -libc::EINVAL);
    let (rc, _) = usernet(&[], Some(&[0u8, 0][..]));
    assert_eq!(rc, -libc::EIO, "truncated");
}
