#!/usr/bin/env bash
# Runs all of usernet's checks and tests; exits non-zero on any failure.
#
#   scripts/test.sh [ARGS...]   ARGS go to `cargo test` (e.g. a filter, or
#                               `-- --nocapture`).
#
# Order: setup (packages, test guest), rustfmt, clippy, a build of every
# target (which fetches crates while the network is there), then
# `cargo test --offline` inside a new network namespace holding only a
# loopback interface, so no test can reach past this machine; last, each
# fuzz target runs for a bounded time (scripts/fuzz-smoke.sh, FUZZ_SECONDS,
# default 60; FUZZ_SECONDS=0 skips it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "setup"
scripts/setup.sh
step "cargo fmt --all --check"
cargo fmt --all --check
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets
step "cargo test --workspace --offline $* (in a new network namespace)"
# shellcheck disable=SC2016 # $@ expands inside the namespace's shell.
unshare --net -- sh -c '
    ip link set lo up &&
    sysctl -qw net.ipv4.ping_group_range="0 2147483647" &&
    exec cargo test --workspace --offline "$@"' sh "$@"
if [ "${FUZZ_SECONDS:-60}" != 0 ]; then
    step "fuzz smoke (${FUZZ_SECONDS:-60} s per target)"
    scripts/fuzz-smoke.sh
fi
step "all tests passed"
