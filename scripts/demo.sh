#!/usr/bin/env bash
# The demo: boots a QEMU guest on usernet and shows what it can do.
#
# Builds usernet (release) and the test guest, then, inside a new network
# namespace holding only loopback (nothing can leave this machine), starts:
#   - a tiny DNS resolver on 127.0.0.1:5353 (scripts/dns-resolver.py:
#     *.usernet.test -> 10.0.2.2, NXDOMAIN otherwise), usernet's only upstream;
#   - an HTTP server on 127.0.0.1:8000;
#   - usernet qemu, and a guest that runs DHCP, DNS, HTTP and ping through it.
# A failing step is reported and the demo goes on. Logs, the console and a
# pcap of the guest's traffic are left in .cache/demo/.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

dns_port=5353
http_port=8000
out="$repo/.cache/demo"

if [[ ${USERNET_DEMO_IN_NETNS-} != 1 ]]; then
    scripts/setup.sh
    cargo build --release
    exec unshare --net -- env USERNET_DEMO_IN_NETNS=1 "$0" "$@"
fi

# --- inside the network namespace -------------------------------------------
ip link set lo up
sysctl -qw net.ipv4.ping_group_range="0 2147483647"
rm -rf "$out"
mkdir -p "$out/www"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "Hello from the host's loopback, served by python3 -m http.server." >"$out/www/index.html"
python3 -m http.server --bind 127.0.0.1 --directory "$out/www" "$http_port" \
    >"$out/http.log" 2>&1 &
pids+=($!)
python3 scripts/dns-resolver.py --port "$dns_port" --answer 10.0.2.2 >"$out/dns.log" 2>&1 &
pids+=($!)

socket="$work/usernet.sock"
target/release/usernet qemu --socket "$socket" --dns-upstream "127.0.0.1:$dns_port" \
    --hostname demo --domainname usernet.test --dnssearch usernet.test \
    --pcap "$out/demo.pcap" -v >"$out/usernet.log" 2>&1 &
usernet_pid=$!
pids+=("$usernet_pid")
for _ in $(seq 100); do
    [[ -S $socket ]] && break
    kill -0 "$usernet_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ ! -S $socket ]]; then
    echo "usernet did not start; its log ($out/usernet.log):" >&2
    cat "$out/usernet.log" >&2
    exit 1
fi

mkdir "$work/extra"
cat >"$work/extra/scenario.sh" <<SCENARIO
step() { echo; echo "### \$*"; }
step "1. DHCP: udhcpc -i eth0 -O mtu -O search -O hostname"
udhcpc -i eth0 -O mtu -O search -O hostname -n -q -t 5 -T 2 || echo "(no lease)"
step "2. DNS: nslookup demo.usernet.test 10.0.2.3"
timeout 15 nslookup demo.usernet.test 10.0.2.3 || echo "(lookup failed)"
step "3. HTTP to the host's loopback: wget -O- http://10.0.2.2:$http_port/"
timeout 20 wget -O- http://10.0.2.2:$http_port/ || echo "(wget failed)"
step "4. ICMP: ping -c 3 10.0.2.2"
ping -c 3 -W 2 10.0.2.2 || echo "(ping failed)"
echo
SCENARIO
(cd "$work/extra" && echo scenario.sh | cpio -o -H newc --quiet | gzip) >"$work/extra.cpio.gz"
cat .cache/guest/initramfs.cpio.gz "$work/extra.cpio.gz" >"$work/initrd"

accel=$(cat .cache/guest/accel 2>/dev/null || echo tcg)
echo "==> booting the guest (-accel $accel) on usernet"
timeout -s KILL 180 qemu-system-x86_64 -accel "$accel" -m 256 -nographic -no-reboot \
    -kernel .cache/guest/vmlinuz -initrd "$work/initrd" \
    -append "console=ttyS0 quiet panic=-1" \
    -netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$socket" \
    -device virtio-net-pci,netdev=n0 </dev/null 2>&1 |
    tr -d '\r' | tee "$out/console.log" |
    sed -n '/=== usernet guest up ===/,/=== scenario exit/p' || true

if ! grep -q '=== usernet guest up ===' "$out/console.log"; then
    echo "the guest did not boot; its console:"
    cat "$out/console.log"
fi
kill "$usernet_pid" 2>/dev/null || true
wait "$usernet_pid" 2>/dev/null || true
echo "==> logs in $out: console.log usernet.log dns.log http.log demo.pcap"
