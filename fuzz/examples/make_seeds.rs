//! Generates the seed corpora of the fuzz targets from the captures in
//! `corpus/libslirp-fuzzing/` (libslirp's fuzzing seeds), plus a few
//! synthetic scripts. Run from `fuzz/`:
//!
//! ```text
//! cargo run --example make_seeds
//! ```
//!
//! It writes `corpus/frames/` and `corpus/stream/` under `fuzz/` (the
//! directories cargo-fuzz uses by default); the output is deterministic, so
//! re-running it only rewrites the same files.
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
    println!(
        "{} captures -> {} and {}",
        paths.len(),
        fdir.display(),
        sdir.display()
    );
}
