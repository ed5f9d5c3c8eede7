#!/usr/bin/env bash
# Builds the drop-in libslirp.so.0 (crates/libslirp) with libslirp's
# symbol versions.
#
#   scripts/build-libslirp.sh [--archive LIB.a | --deps DIR] [--out DIR]
#
# Without --archive, builds the crate's staticlib in release mode first.
# --deps takes the newest libusernet_libslirp-*.a in a cargo deps directory:
# what tests use, since `cargo test` builds the staticlib beside the test
# binaries (a nested `cargo build` would wait on the lock `cargo test` holds).
# The archive is linked with `cc -shared`, a version script and the soname:
# a Rust cdylib would lose the versions (rust-lld drops them), and binaries
# linked against Debian's libslirp0 ask for `slirp_new@SLIRP_4.1` and the
# like. Each exported name is marked undefined so the linker pulls it (and
# only what it needs) out of the archive. Prints the library's path.
#
#   LD_LIBRARY_PATH=DIR qemu-system-x86_64 ... -nic user,...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
archive=""
out="$target/libslirp"
while [ $# -gt 0 ]; do
    case "$1" in
        --archive) archive="$2"; shift 2 ;;
        --deps)
            archive="$(ls -t "$2"/libusernet_libslirp-*.a 2>/dev/null | head -n1)"
            [ -n "$archive" ] || { echo "build-libslirp.sh: no libusernet_libslirp-*.a in '$2'" >&2; exit 2; }
            shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "build-libslirp.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
if [ -z "$archive" ]; then
    cargo build --release --manifest-path "$root/Cargo.toml" -p usernet-libslirp >&2
    archive="$target/release/libusernet_libslirp.a"
fi
map="$root/crates/libslirp/libslirp.map"
undefined=()
for name in $(grep -o 'slirp_[a-z_0-9]*' "$map" | sort -u); do
    undefined+=("-Wl,--undefined=$name")
done
mkdir -p "$out"
cc -shared -o "$out/libslirp.so.0.tmp" \
    -Wl,-soname,libslirp.so.0 -Wl,--version-script="$map" -Wl,--gc-sections \
    "${undefined[@]}" "$archive" -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
mv "$out/libslirp.so.0.tmp" "$out/libslirp.so.0"
echo "$out/libslirp.so.0"
