//! Generates the seed corpora of the fuzz targets from the captures in
//! `corpus/libslirp-fuzzing/` (libslirp's fuzzing seeds), plus a few
//! synthetic scripts. Run from `fuzz/`:
//!
//! ```text
//! cargo run --example make_seeds
//! ```
//!
//! It writes `corpus/frames/`, `corpus/stream/` and `corpus/api/` under
//! `fuzz/` (the directories cargo-fuzz uses by default); the output is
//! deterministic, so re-running it only rewrites the same files. The `api`
//! seeds are the request shapes of slirp4netns' documentation
//! (`add_hostfwd`, `list_hostfwd`, `remove_hostfwd`), whole, truncated and
//! oversized.
use std::fs;
use std::path::{Path, PathBuf};

use pcap_file::pcap::PcapReader;
use usernet_core::Config;
use usernet_core::testing::{LINKTYPE_LINUX_SLL2, Op, sll2_to_ethernet};

/// The MAC QEMU gives its first guest NIC.
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

/// The Ethernet frames of a capture (`.pcap`) or raw frame (`.pkt`).
fn frames(path: &Path) -> Vec<Vec<u8>> {
    let data = fs::read(path).expect("readable capture");
    if path.extension().is_some_and(|e| e == "pkt") {
        return vec![data];
    }
    let mut r = PcapReader::new(&data[..]).expect("a pcap file");
    let linktype = u32::from(r.header().datalink);
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.expect("a packet");
        let frame = if linktype == LINKTYPE_LINUX_SLL2 {
            sll2_to_ethernet(&p.data, GUEST_MAC, Config::default().mac)
        } else {
            Some(p.data.to_vec())
        };
        out.extend(frame);
    }
    out
}

fn captures(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("corpus directory")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            captures(&p, out);
        } else if p.extension().is_some_and(|e| e == "pcap" || e == "pkt") {
            out.push(p);
        }
    }
}

/// A `frames` script: configuration byte, then each frame followed by a
/// delivery of host events and 100 ms of time.
fn script(config: u8, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut s = vec![config];
    for f in frames {
        s.extend(Op::encode_frame(f));
        s.push(Op::Deliver as u8);
        s.extend([Op::Time as u8, 10]);
    }
    s
}

/// Length-prefixed QEMU stream bytes, with the `stream` target's two
/// selector bytes in front.
fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut s = vec![1, 0x2a];
    for f in frames {
        s.extend((f.len() as u32).to_be_bytes());
        s.extend(f);
    }
    s
}

/// Requests as slirp4netns(1) documents them.
const API_REQUESTS: &[&str] = &[
    r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080, "guest_addr": "10.0.2.100", "guest_port": 80}}"#,
    r#"{"execute": "add_hostfwd", "arguments": {"proto": "udp", "host_addr": "127.0.0.1", "host_port": 5353, "guest_port": 53}}"#,
    r#"{"execute": "list_hostfwd"}"#,
    r#"{"execute": "remove_hostfwd", "arguments": {"id": 1}}"#,
];

/// An `api` input: the forwarder configuration byte, then the requests
/// separated by 0x1e.
fn api_session(config: u8, requests: &[&[u8]]) -> Vec<u8> {
    let mut s = vec![config];
    for (i, r) in requests.iter().enumerate() {
        if i > 0 {
            s.push(0x1e);
        }
        s.extend_from_slice(r);
    }
    s
}

fn api_seeds(dir: &Path) {
    fs::create_dir_all(dir).expect("mkdir");
    let whole: Vec<&[u8]> = API_REQUESTS.iter().map(|r| r.as_bytes()).collect();
    let mut seeds: Vec<(String, Vec<u8>)> = vec![
        ("session".into(), api_session(8, &whole)),
        ("session-add-fails".into(), api_session(9, &whole)),
    ];
    for (i, r) in API_REQUESTS.iter().enumerate() {
        seeds.push((format!("request-{i}"), api_session(8, &[r.as_bytes()])));
        // Truncated at a third and at two thirds: incomplete JSON.
        for cut in [r.len() / 3, 2 * r.len() / 3] {
            let t = &r.as_bytes()[..cut];
            seeds.push((format!("request-{i}-cut-{cut}"), api_session(8, &[t, r.as_bytes()])));
        }
        // Complete, then trailing bytes, a NUL, and a second request.
        let trailing = format!("{r} {r}\0{r}");
        seeds.push((format!("request-{i}-trailing"), api_session(8, &[trailing.as_bytes()])));
    }
    let mut oversized = API_REQUESTS[0].as_bytes().to_vec();
    oversized.resize(4200, b' ');
    seeds.push(("oversized".into(), api_session(8, &[&oversized])));
    let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    seeds.push(("deep-nesting".into(), api_session(8, &[deep.as_bytes()])));
    let odd = [
        r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_port": 1e400, "guest_port": -0}}"#,
        r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_port": 65535.9, "guest_port": 65536}}"#,
        r#"{"execute": "remove_hostfwd", "arguments": {"id": 1.5e0}}"#,
        r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "::", "host_port": 1, "guest_addr": "", "guest_port": 1}}"#,
        r#"{"execute": "list_hostfwd", "execute": "remove_hostfwd"}"#,
    ];
    let odd: Vec<&[u8]> = odd.iter().map(|r| r.as_bytes()).collect();
    seeds.push(("odd-values".into(), api_session(6, &odd)));
    for (name, s) in seeds {
        fs::write(dir.join(name), s).expect("write");
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (fdir, sdir) = (root.join("corpus/frames"), root.join("corpus/stream"));
    fs::create_dir_all(&fdir).expect("mkdir");
    fs::create_dir_all(&sdir).expect("mkdir");
    let mut paths = Vec::new();
    captures(&root.join("../corpus/libslirp-fuzzing"), &mut paths);
    for p in &paths {
        let fr = frames(p);
        let dir = p.parent().and_then(Path::file_name).expect("IN_ folder");
        let name = format!(
            "{}-{}",
            dir.to_string_lossy(),
            p.file_stem().expect("name").to_string_lossy()
        );
        // Chatty host (greetings, UDP echo, pings) with port forwards and a
        // DNS upstream; and the default passive host with a tiny flow table
        // and checksums fixed up after mutation.
        let mut chatty = vec![2 | 4, Op::Behave as u8, 4 | 8 | 16];
        chatty.extend(&script(0, &fr)[1..]);
        fs::write(fdir.join(format!("{name}-chatty")), chatty).expect("write");
        fs::write(fdir.join(format!("{name}-small")), script(1 | 32, &fr)).expect("write");
        fs::write(sdir.join(&name), stream(&fr)).expect("write");
    }
    // Synthetic: a client of the TCP forward, data both ways, EOF, errors,
    // time jumps to the next deadline, a link reset.
    let synthetic: &[(&str, &[u8])] = &[
        (
            "synthetic-accept",
            &[
                2, 8, 7, 1, 4, 0, 5, b'h', b'e', b'l', b'l', b'o', 5, 0, 2, 255, 1, 2, 255,
            ],
        ),
        (
            "synthetic-errors",
            &[2, 8, 9, 6, 0, 1, 1, 6, 1, 0, 1, 9, 2, 200],
        ),
        (
            "synthetic-behave",
            &[6, 7, 0xff, 8, 3, 1, 7, 0x22, 8, 4, 1, 2, 255],
        ),
    ];
    for (name, s) in synthetic {
        fs::write(fdir.join(name), s).expect("write");
    }
    let streams: &[(&str, &[u8])] = &[
        (
            "synthetic-empty-and-oversized",
            &[0, 7, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 0, 0, 0, 2, 9, 9],
        ),
        (
            "synthetic-split-header",
            &[3, 0x81, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 1, 4],
        ),
    ];
    for (name, s) in streams {
        fs::write(sdir.join(name), s).expect("write");
    }
    api_seeds(&root.join("corpus/api"));
    println!(
        "{} captures -> {} and {}",
        paths.len(),
        fdir.display(),
        sdir.display()
    );
}
