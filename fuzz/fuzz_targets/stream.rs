//! Fuzz target `stream`: the QEMU stream framing [`Decoder`] fed arbitrary
//! bytes, split into chunks in two different ways.
//!
//! Input: byte 0 picks the largest frame (60, 1514, 9014 or 65535 bytes),
//! byte 1 seeds the chunk sizes, the rest is the stream. Checked: every
//! frame is non-empty and at most `max_frame` bytes; the decoder never
//! stalls (it always takes more bytes or yields a frame); feeding the stream
//! in one piece, in pseudo-random chunks through [`Decoder::feed`], and in
//! chunks through [`Decoder::read_buf`]/[`Decoder::filled`] yields the same
//! frames and the same counters; no more frames than the stream could hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usernet_host::Decoder;
use usernet_host::stream::HEADER_LEN;

/// What decoding a whole stream gave.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    frames: Vec<Vec<u8>>,
    oversized: u64,
    empty: u64,
}

/// Decodes `stream` handing the decoder chunks of the sizes `chunk` returns
/// (at least 1), copying with `feed` or reading into `read_buf`.
fn decode(
    max_frame: usize,
    stream: &[u8],
    mut chunk: impl FnMut() -> usize,
    via_read_buf: bool,
) -> Decoded {
    let mut d = Decoder::new(max_frame);
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        let mut progress = false;
        while let Some(f) = d.next_frame() {
            assert!(!f.is_empty(), "empty frame yielded");
            assert!(f.len() <= max_frame, "{} > max_frame {max_frame}", f.len());
            frames.push(f.to_vec());
            progress = true;
        }
        if rest.is_empty() {
            break;
        }
        let want = chunk().clamp(1, rest.len());
        let n = if via_read_buf {
            let buf = d.read_buf();
            let n = want.min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            d.filled(n);
            n
        } else {
            d.feed(&rest[..want])
        };
        rest = &rest[n..];
        assert!(
            n > 0 || progress,
            "decoder stalled with {} bytes left",
            rest.len()
        );
    }
    assert!(
        frames.len() <= stream.len() / (HEADER_LEN + 1),
        "more frames than fit"
    );
    Decoded {
        frames,
        oversized: d.oversized(),
        empty: d.empty(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [sel, seed, stream @ ..] = data else {
        return;
    };
    let max_frame = [60, 1514, 9014, 65535][usize::from(sel % 4)];
    let whole = decode(max_frame, stream, || usize::MAX, false);
    // A small xorshift: chunk sizes from 1 to 64, or up to 4096 when the
    // seed's top bit is set.
    let mut x = u32::from(*seed) | 0x100;
    let span = if seed & 0x80 != 0 { 4096 } else { 64 };
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        1 + (x as usize % span)
    };
    assert_eq!(whole, decode(max_frame, stream, &mut next, false), "feed");
    assert_eq!(
        whole,
        decode(max_frame, stream, &mut next, true),
        "read_buf"
    );
});
