//! Fuzz target `frames`: arbitrary bytes as a script of guest frames and
//! host happenings (connects completing or refused, data, end of stream,
//! errors, time passing, clients of port forwards), run through the whole
//! core against the fake host of `usernet_core::testing`.
//!
//! The script format is `usernet_core::testing::Op`; the invariants checked
//! after every step (output frames parse with valid checksums, flows within
//! `max_flows`, host sockets within flows + listeners, output bounded) are
//! `usernet_core::testing::Harness::run_script`'s. Any panic is a finding.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use usernet_core::testing::Harness;

/// The virtual clock's origin: only differences matter to the stack, so
/// one reading for the whole process keeps runs reproducible.
static START: OnceLock<Instant> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let start = *START.get_or_init(Instant::now);
    Harness::run_script(start, data);
});
