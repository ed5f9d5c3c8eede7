#!/usr/bin/env bash
# Fuzz smoke test for CI: builds every fuzz target (frames, stream, api) and
# runs each for a bounded time (FUZZ_SECONDS, default 60) from seeds
# generated from corpus/libslirp-fuzzing and slirp4netns' documented API
# requests, replaying fuzz/regressions/<target>/ first. Fails if any target
# finds a crash; the crashing input is left in fuzz/artifacts/<target>/ (see
# fuzz/README.md for what to do with it).
#
# cargo-fuzz needs nightly-only compiler flags; on a stable toolchain
# RUSTC_BOOTSTRAP=1 lets them through (set here unless already set).
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Seed corpora (deterministic; cheap to regenerate).
cargo run --quiet --example make_seeds

targets=$(cargo fuzz list)
for target in $targets; do
    echo "== fuzz target $target: ${seconds}s"
    mkdir -p "corpus/$target"
    # Saved crashers run first (read-only second corpus directory).
    dirs=("corpus/$target")
    if [ -d "regressions/$target" ]; then
        dirs+=("regressions/$target")
    fi
    cargo fuzz run -O "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1
done
