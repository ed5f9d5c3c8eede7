#!/usr/bin/env bash
# Benchmark usernet against slirp4netns and pasta serving a network namespace.
# Then QEMU mode: the test guest (.cache/guest, TCG) on usernet, on QEMU's
# own -nic user and on passt over the same stream socket, iperf3 both ways.
# Usage: sudo bench/run.sh            (full: iperf3 3 x 5 s, median)
#        BENCH_QUICK=1 bench/run.sh   (quick: iperf3 1 x 2 s)
# Optional: BENCH_STACKS="usernet slirp4netns pasta",
#           BENCH_QEMU="usernet qemu passt" (empty: skip QEMU mode),
#           BENCH_OUT=bench/RESULTS.md, BENCH_USERNET=PATH (another binary),
#           BENCH_PIN="CLIENT SERVER STACK" (CPUs of the pinned rows; "0 0 0")
# The loopback column is the same clients against the host's own loopback,
# measured in the same run.
# Everything runs inside a network namespace this script creates (a veth
# with a default route that leads nowhere), so no traffic leaves the machine.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TOOL="$HERE/tool.py"

if [[ "${1:-}" != --inner ]]; then
    [[ $(id -u) == 0 ]] || { echo "run.sh: run as root" >&2; exit 1; }
    need=()
    command -v slirp4netns >/dev/null || need+=(slirp4netns)
    command -v pasta >/dev/null || need+=(passt)
    command -v iperf3 >/dev/null || need+=(iperf3)
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    command -v python3 >/dev/null || need+=(python3)
    if ((${#need[@]})); then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
    fi
    (cd "$ROOT" && cargo build --release -q)
    exec unshare --net -- "$0" --inner
fi

# ---- inside the benchmark's own outer network namespace (the "host") ----
USERNET="${BENCH_USERNET:-${CARGO_TARGET_DIR:-$ROOT/target}/release/usernet}"
# The splice-path forwards, where this usernet has them (BENCH_USERNET may
# name an older binary to measure a "before").
USERNET_SPLICE=()
if "$USERNET" attach --help | grep -q -- --tcp-ns; then
    USERNET_SPLICE=(--hostfwd tcp:127.0.0.1:15301-127.0.0.1:5201 --tcp-ns 25201:5201)
fi
NS=usernet-bench-$$
WORK=$(mktemp -d /tmp/usernet-bench.XXXXXX)
RAW="$WORK/raw.tsv"; : >"$RAW"
STACKS=${BENCH_STACKS-usernet slirp4netns pasta}
QSTACKS=${BENCH_QEMU-usernet qemu passt}
# usernet's MTU in QEMU mode: passt's default (QEMU's -nic user stays at 1500).
QEMU_MTU=${BENCH_QEMU_MTU:-65520}
GUEST=$ROOT/.cache/guest
if [[ -n "${BENCH_QUICK:-}" ]]; then RUNS=1; SECS=2; RR_N=3000; CRR_N=1000
else RUNS=3; SECS=5; RR_N=10000; CRR_N=2000; fi
HOLD_N=1000
# CPUs of the pinned rows: client, server, stack. One CPU by default: on
# this VM a wakeup across CPUs costs ~100 µs (an IPI to a halted vCPU),
# which would swamp what the stacks add.
read -r PIN_CLIENT PIN_SERVER PIN_STACK <<<"${BENCH_PIN:-0 0 0}"
PIDS=()
STACK_PID=
T0=$(date +%s)

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    ip netns del "$NS" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n 8192
ip link set lo up
ip link add bench0 type veth peer name bench1
ip addr add 192.0.2.1/24 dev bench0
ip link set bench0 up; ip link set bench1 up
ip route add default via 192.0.2.254   # leads nowhere
echo "nameserver 127.0.0.1" >"$WORK/resolv.conf"

log() { printf '[%4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }
rec() { echo "$1 $2 $3" >>"$RAW"; log "$1 $2 = $3"; }
nsx() { ip netns exec "$NS" "$@"; }
bg() { "$@" & PIDS+=($!); }   # start in background, remember the PID
stop() {  # stop one PID we started
    kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true
    local keep=(); for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; PIDS=("${keep[@]}")
}
rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

# Start stack $1 at MTU $2 serving a fresh namespace; forwards host
# 127.0.0.1:15201 -> ns:5201 and 127.0.0.1:17000 -> ns:7000 through the
# tap, and (usernet, pasta) the splice path: host 127.0.0.1:15301 -> the
# namespace's 127.0.0.1:5201, the namespace's 127.0.0.1:25201 -> host 5201.
start_stack() {
    local stack=$1 mtu=$2
    ip netns del "$NS" 2>/dev/null || true
    ip netns add "$NS"
    nsx ip link set lo up
    case $stack in
    usernet)
        bg "$USERNET" attach --netns "/run/netns/$NS" --mtu "$mtu" \
            --dns-upstream 127.0.0.1:53 \
            --hostfwd tcp:127.0.0.1:15201-10.0.2.100:5201 \
            --hostfwd tcp:127.0.0.1:17000-10.0.2.100:7000 \
            "${USERNET_SPLICE[@]}" 2>"$WORK/$stack.log"
        ;;
    slirp4netns)
        bg slirp4netns --configure --mtu="$mtu" --netns-type=path \
            --api-socket "$WORK/slirp.sock" "/run/netns/$NS" tap0 >"$WORK/$stack.log" 2>&1
        ;;
    pasta)
        bg pasta -q -f --runas 0 --netns-only --netns "/run/netns/$NS" --config-net \
            -I tap0 -a 10.0.2.100 -n 24 -g 10.0.2.2 -m "$mtu" -D 10.0.2.3 \
            -t 15201:5201,17000:7000,15301:5201 -u none -T 25201:5201 -U none >"$WORK/$stack.log" 2>&1
        ;;
    esac
    STACK_PID=${PIDS[-1]}
    local i
    for i in $(seq 100); do
        nsx ip -4 addr show dev tap0 2>/dev/null | grep -q 10.0.2.100 && break
        kill -0 "$STACK_PID" 2>/dev/null || { cat "$WORK/$stack.log" >&2; return 1; }
        sleep 0.1
    done
    nsx ip -4 addr show dev tap0 | grep -q 10.0.2.100 || { log "$stack: tap0 not configured"; return 1; }
    nsx ip route replace default via 10.0.2.2 dev tap0 2>/dev/null || true
    if [[ $stack == slirp4netns ]]; then
        for i in $(seq 50); do [[ -S $WORK/slirp.sock ]] && break; sleep 0.1; done
        local p
        for p in 5201:15201 7000:17000; do
            python3 "$TOOL" api "$WORK/slirp.sock" \
                "{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"tcp\",\"host_addr\":\"127.0.0.1\",\"host_port\":${p#*:},\"guest_port\":${p%:*}}}" >/dev/null
        done
    fi
    sleep 0.3
}

cpu_ticks() {  # utime+stime of PID $1 (all threads), in clock ticks
    [[ -n $1 && -r /proc/$1/stat ]] || { echo 0; return; }
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
# Median Gbit/s of $RUNS iperf3 runs (rest = iperf3 client command prefix).
# Also writes the stack's CPU seconds per GB received over all runs to
# $WORK/cpu_gb (n/a without a stack process).
iperf_med() {
    local vals=() r t0 t1 v b bytes=0 ticks=0
    for r in $(seq "$RUNS"); do
        t0=$(cpu_ticks "$STACK_PID")
        # (iperf3 -J exits 0 after some failures: the JSON says.)
        if timeout $((SECS + 20)) "$@" -t "$SECS" -J >"$WORK/iperf.json" 2>"$WORK/iperf.err" &&
            v=$(python3 "$TOOL" iperf "$WORK/iperf.json" 2>/dev/null) &&
            b=$(python3 "$TOOL" iperf_bytes "$WORK/iperf.json" 2>/dev/null); then
            t1=$(cpu_ticks "$STACK_PID")
            vals+=("$v")
            bytes=$((bytes + b))
            ticks=$((ticks + t1 - t0))
        else
            log "iperf3 failed: $(tail -c 300 "$WORK/iperf.json" "$WORK/iperf.err" | tr '\n' ' ')"
        fi
    done
    if [[ -n $STACK_PID ]] && ((bytes > 0)); then
        python3 -c "print(f'{$ticks / $(getconf CLK_TCK) / ($bytes / 1e9):.3f}')" >"$WORK/cpu_gb"
    else echo n/a >"$WORK/cpu_gb"; fi
    if ((${#vals[@]})); then python3 "$TOOL" median "${vals[@]}"; else echo FAIL; fi
}
# rec's figure $2 of stack $1 from iperf_med (rest), and its CPU per GB as $2 with tput -> cpu.
rec_tput() {
    local s=$1 key=$2; shift 2
    rec "$s" "$key" "$(iperf_med "$@")"
    rec "$s" "${key/tput/cpu}" "$(cat "$WORK/cpu_gb")"
}
# Runs a client command pinned to CPU $PIN_CLIENT, with the stack on
# $PIN_STACK and the server PID $1 on $PIN_SERVER; restores both afterwards.
pinned() {
    local srv=$1; shift
    taskset -a -p -c "$PIN_SERVER" "$srv" >/dev/null
    [[ -n $STACK_PID ]] && taskset -a -p -c "$PIN_STACK" "$STACK_PID" >/dev/null
    taskset -c "$PIN_CLIENT" "$@" || echo FAIL
    taskset -a -p -c 0-$(($(nproc) - 1)) "$srv" >/dev/null
    [[ -n $STACK_PID ]] && taskset -a -p -c 0-$(($(nproc) - 1)) "$STACK_PID" >/dev/null
    return 0
}

# Host-side servers (the host's loopback), shared by all stacks.
bg iperf3 -s -B 127.0.0.1 -p 5201 >/dev/null 2>&1
HOST_IPERF=$!
bg python3 "$TOOL" server 127.0.0.1 7000
HOST_ECHO=$!
python3 "$TOOL" wait 127.0.0.1 5201 5; python3 "$TOOL" wait 127.0.0.1 7000 5

# Loopback throughput is sampled before each stack too (other load comes
# and goes); the rows get the median of the samples.
loopback_sample() {
    STACK_PID=
    iperf_med iperf3 -c 127.0.0.1 -p 5201 >>"$WORK/lo_tput"
}
loopback_tput_rows() {
    local v k
    v=$(python3 "$TOOL" median $(grep -v FAIL "$WORK/lo_tput"))
    for k in tput_out_1500 tput_in_1500 tput_out_65520 tput_in_65520 tput_splice_in tput_splice_out; do
        rec loopback "$k" "$v"
    done
}
# The baseline: the same clients against the host's own loopback.
bench_loopback() {
    local v p
    log "== loopback"
    STACK_PID=
    loopback_sample
    for p in 2 4; do rec loopback "tput_out_p$p" "$(iperf_med iperf3 -c 127.0.0.1 -p 5201 -P "$p")"; done
    v=$(timeout 90 python3 "$TOOL" rr 127.0.0.1 7000 $RR_N || echo FAIL)
    rec loopback rr_out "$v"; rec loopback rr_in "$v"
    v=$(pinned "$HOST_ECHO" timeout 90 python3 "$TOOL" rr 127.0.0.1 7000 $RR_N)
    rec loopback rr_out_pin "$v"; rec loopback rr_in_pin "$v"
    v=$(timeout 90 python3 "$TOOL" crr 127.0.0.1 7000 $CRR_N || echo FAIL)
    rec loopback crr_out "$v"; rec loopback crr_in "$v"
    sleep 1
    v=$(pinned "$HOST_ECHO" timeout 90 python3 "$TOOL" crr 127.0.0.1 7000 $CRR_N)
    rec loopback crr_out_pin "$v"; rec loopback crr_in_pin "$v"
    sleep 1
}

bench_stack() {
    local s=$1 mtu v
    loopback_sample
    for mtu in 1500 65520; do
        log "== $s MTU $mtu"
        start_stack "$s" "$mtu" || { log "$s failed to start at MTU $mtu"; stop "$STACK_PID"; continue; }
        [[ $mtu == 1500 ]] && rec "$s" rss_idle "$(rss_mib "$STACK_PID")"
        bg ip netns exec "$NS" iperf3 -s -p 5201 >/dev/null 2>&1; local nsi=$!
        bg ip netns exec "$NS" python3 "$TOOL" server 0.0.0.0 7000; local nss=$!
        python3 "$TOOL" wait 127.0.0.1 15201 10 || true
        rec_tput "$s" "tput_out_$mtu" ip netns exec "$NS" iperf3 -c 10.0.2.2 -p 5201
        rec_tput "$s" "tput_in_$mtu" iperf3 -c 127.0.0.1 -p 15201
        if [[ $mtu == 65520 ]]; then
            local p
            for p in 2 4; do
                rec "$s" "tput_out_p$p" "$(iperf_med ip netns exec "$NS" iperf3 -c 10.0.2.2 -p 5201 -P "$p")"
            done
            # The splice path (loopback to loopback, no tap): usernet's and
            # pasta's forwards to the namespace's 127.0.0.1 and back.
            if [[ $s != slirp4netns ]]; then
                rec_tput "$s" tput_splice_in iperf3 -c 127.0.0.1 -p 15301
                rec_tput "$s" tput_splice_out ip netns exec "$NS" iperf3 -c 127.0.0.1 -p 25201
            fi
        fi
        if [[ $mtu == 1500 ]]; then
            rec "$s" rr_out "$(timeout 90 ip netns exec "$NS" python3 "$TOOL" rr 10.0.2.2 7000 $RR_N || echo FAIL)"
            rec "$s" rr_in "$(timeout 90 python3 "$TOOL" rr 127.0.0.1 17000 $RR_N || echo FAIL)"
            rec "$s" rr_out_pin "$(pinned "$HOST_ECHO" timeout 90 ip netns exec "$NS" python3 "$TOOL" rr 10.0.2.2 7000 $RR_N)"
            rec "$s" rr_in_pin "$(pinned "$nss" timeout 90 python3 "$TOOL" rr 127.0.0.1 17000 $RR_N)"
            rec "$s" crr_out "$(timeout 90 ip netns exec "$NS" python3 "$TOOL" crr 10.0.2.2 7000 $CRR_N || echo FAIL)"
            sleep 1
            rec "$s" crr_in "$(timeout 90 python3 "$TOOL" crr 127.0.0.1 17000 $CRR_N || echo FAIL)"
            sleep 1
            rec "$s" crr_out_pin "$(pinned "$HOST_ECHO" timeout 90 ip netns exec "$NS" python3 "$TOOL" crr 10.0.2.2 7000 $CRR_N)"
            sleep 1
            rec "$s" crr_in_pin "$(pinned "$nss" timeout 90 python3 "$TOOL" crr 127.0.0.1 17000 $CRR_N)"
            sleep 1
            # 1,000 idle connections namespace -> host, held open while we read RSS.
            rm -f "$WORK/hold.out"
            bg ip netns exec "$NS" python3 "$TOOL" hold 10.0.2.2 7000 $HOLD_N 90 >"$WORK/hold.out"
            local h=$! i
            for i in $(seq 600); do
                grep -q ready "$WORK/hold.out" 2>/dev/null && break
                kill -0 "$h" 2>/dev/null || break
                sleep 0.1
            done
            if grep -q ready "$WORK/hold.out" 2>/dev/null; then
                sleep 0.5; v=$(rss_mib "$STACK_PID")
            else v=FAIL; fi
            rec "$s" rss_1000 "$v"
            stop "$h"
        fi
        stop "$nsi"; stop "$nss"
        kill -0 "$STACK_PID" 2>/dev/null || log "$s: stack process died! log: $(tail -c 500 "$WORK/$s.log")"
        stop "$STACK_PID"
    done
}

[[ -n $STACKS ]] && bench_loopback
for s in $STACKS; do bench_stack "$s"; done
[[ -n $STACKS ]] && loopback_tput_rows

# ---- QEMU mode ----
# The guest runs /scenario.sh (appended to the cached initramfs as a second
# cpio): DHCP, an iperf3 server for host->guest, then its own iperf3 client
# to the host (10.0.2.2 -> host loopback) whose summary we read on the
# console; the host side then measures host->guest through a port forward
# (127.0.0.1:15202 -> guest 5201). TCG: figures are bound by emulation.
if [[ -n $QSTACKS && ! -f $GUEST/vmlinuz ]]; then
    log "no test guest in $GUEST (scripts/setup.sh builds it): QEMU mode skipped"
    QSTACKS=
fi
make_initrd() {  # $1 = output
    local d=$WORK/cpio
    rm -rf "$d"; mkdir -p "$d"
    cat >"$d/scenario.sh" <<EOS
udhcpc -i eth0 -O mtu -n -q -t 5 -T 2 >/dev/null 2>&1 || echo "bench: no DHCP lease"
ip link show eth0 | sed -n "s/.* mtu \([0-9]*\).*/bench-mtu: \1/p"
iperf3 -s -p 5201 -D
sleep 1
for r in \$(seq $RUNS); do
    timeout $((SECS + 30)) iperf3 -c 10.0.2.2 -p 5201 -t $SECS -f g 2>&1 | grep receiver | sed 's/^/bench-up: /'
done
echo bench-up-done
sleep 600
EOS
    chmod 755 "$d/scenario.sh"
    cp "$GUEST/initramfs.cpio.gz" "$1"
    (cd "$d" && echo scenario.sh | cpio -o -H newc --quiet | gzip -c) >>"$1"
}
bench_qemu() {
    local s=$1 net con=$WORK/console-$1 sock=$WORK/q-$1.sock stack_pid= qemu_pid v vals=() i r
    rm -f "$sock" "$con"
    case $s in
    usernet)
        bg "$USERNET" qemu --socket "$sock" --mtu "$QEMU_MTU" --dns-upstream 127.0.0.1:53 \
            --hostfwd tcp:127.0.0.1:15202-10.0.2.15:5201 2>"$WORK/q-$s.log"
        stack_pid=${PIDS[-1]}
        net=(-netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$sock") ;;
    passt)
        bg passt -f -q --runas 0 -s "$sock" -a 10.0.2.15 -n 24 -g 10.0.2.2 -D 10.0.2.3 \
            -t 15202:5201 -u none >"$WORK/q-$s.log" 2>&1
        stack_pid=${PIDS[-1]}
        net=(-netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$sock") ;;
    qemu)
        net=(-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:15202-:5201") ;;
    esac
    if [[ -n $stack_pid ]]; then
        for i in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
        [[ -S $sock ]] || { log "qemu/$s: no socket: $(tail -c 300 "$WORK/q-$s.log")"; stop "$stack_pid"; return; }
    fi
    bg qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -no-reboot \
        -kernel "$GUEST/vmlinuz" -initrd "$WORK/initrd" \
        -append "console=ttyS0 quiet panic=-1" "${net[@]}" -device virtio-net-pci,netdev=n0 \
        </dev/null >"$con" 2>&1
    qemu_pid=${PIDS[-1]}
    for i in $(seq $((10 * (60 + RUNS * (SECS + 30))))); do
        grep -q bench-up-done "$con" 2>/dev/null && break
        kill -0 "$qemu_pid" 2>/dev/null || break
        sleep 0.1
    done
    rec "$s" q_mtu "$(tr -d '\r' <"$con" | sed -n 's/^bench-mtu: //p' | head -1 | grep . || echo n/a)"
    vals=()
    while read -r v; do vals+=("$v"); done < <(tr -d '\r' <"$con" | awk '/^bench-up: / {for (i = 1; i < NF; i++) if ($(i+1) == "Gbits/sec") print $i}')
    if ((${#vals[@]})); then rec "$s" q_out "$(python3 "$TOOL" median "${vals[@]}")"
    else rec "$s" q_out FAIL; log "qemu/$s console: $(tr -d '\r' <"$con" | tail -c 400)"; fi
    if grep -q bench-up-done "$con"; then
        rec "$s" q_in "$(iperf_med iperf3 -c 127.0.0.1 -p 15202)"
    else rec "$s" q_in FAIL; fi
    stop "$qemu_pid"
    if [[ -n $stack_pid ]]; then
        kill -0 "$stack_pid" 2>/dev/null || log "qemu/$s: stack process died"
        stop "$stack_pid"
    fi
}
# Two guests on usernet's switch: iperf3 from one guest (MAC ...:0b,
# pinned 10.0.2.22) to the other (...:0a, pinned 10.0.2.21), never through
# the NAT; and the stack's RSS growth per idle connected guest, once the
# transfer is over (both guests sleeping, their flows closed).
make_switch_initrd() {  # $1 = output
    local d=$WORK/cpio-switch
    rm -rf "$d"; mkdir -p "$d"
    cat >"$d/scenario.sh" <<EOS
udhcpc -i eth0 -O mtu -n -q -t 5 -T 2 >/dev/null 2>&1 || echo "bench: no DHCP lease"
case \$(cat /sys/class/net/eth0/address) in
*:0a) iperf3 -s -p 5201 -D; echo bench-g2g-server ;;
*)  i=0; while ! ping -c 1 -W 1 10.0.2.21 >/dev/null 2>&1 && [ \$i -lt 120 ]; do i=\$((i+1)); done
    sleep 3
    for r in \$(seq $RUNS); do
        timeout $((SECS + 30)) iperf3 -c 10.0.2.21 -p 5201 -t $SECS -f g 2>&1 | grep receiver | sed 's/^/bench-g2g: /'
    done
    echo bench-g2g-done ;;
esac
sleep 600
EOS
    chmod 755 "$d/scenario.sh"
    cp "$GUEST/initramfs.cpio.gz" "$1"
    (cd "$d" && echo scenario.sh | cpio -o -H newc --quiet | gzip -c) >>"$1"
}
bench_switch() {
    local sock=$WORK/q-switch.sock stack_pid qa qb rss0 rss2 vals=() v i
    rm -f "$sock"
    bg "$USERNET" qemu --socket "$sock" --mtu "$QEMU_MTU" --dns-upstream 127.0.0.1:53 \
        --dhcp-host 52:54:00:00:00:0a=10.0.2.21 --dhcp-host 52:54:00:00:00:0b=10.0.2.22 \
        2>"$WORK/q-switch.log"
    stack_pid=${PIDS[-1]}
    for i in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
    [[ -S $sock ]] || { log "switch: no socket"; stop "$stack_pid"; return; }
    sleep 0.5; rss0=$(rss_mib "$stack_pid")
    for m in 0a 0b; do
        bg qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -no-reboot \
            -kernel "$GUEST/vmlinuz" -initrd "$WORK/initrd-switch" \
            -append "console=ttyS0 quiet panic=-1" \
            -netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$sock" \
            -device "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:$m" \
            </dev/null >"$WORK/console-switch-$m" 2>&1
        [[ $m == 0a ]] && qa=${PIDS[-1]} || qb=${PIDS[-1]}
    done
    for i in $(seq $((10 * (90 + RUNS * (SECS + 30))))); do
        grep -q bench-g2g-done "$WORK/console-switch-0b" 2>/dev/null && break
        kill -0 "$qb" 2>/dev/null || break
        sleep 0.1
    done
    while read -r v; do vals+=("$v"); done < <(tr -d '\r' <"$WORK/console-switch-0b" | awk '/^bench-g2g: / {for (i = 1; i < NF; i++) if ($(i+1) == "Gbits/sec") print $i}')
    if ((${#vals[@]})); then rec usernet q_g2g "$(python3 "$TOOL" median "${vals[@]}")"
    else rec usernet q_g2g FAIL; log "switch console: $(tr -d '\r' <"$WORK/console-switch-0b" | tail -c 400)"; fi
    sleep 1; rss2=$(rss_mib "$stack_pid")
    rec usernet q_rss_guest "$(python3 -c "print(f'{($rss2 - $rss0) / 2:.1f}')")"
    stop "$qa"; stop "$qb"
    kill -0 "$stack_pid" 2>/dev/null || log "switch: stack process died"
    stop "$stack_pid"
}
if [[ -n $QSTACKS ]]; then
    make_initrd "$WORK/initrd"
    for s in $QSTACKS; do log "== QEMU guest on $s"; bench_qemu "$s"; done
    if [[ " $QSTACKS " == *" usernet "* ]]; then
        log "== two QEMU guests on usernet's switch"
        make_switch_initrd "$WORK/initrd-switch"
        bench_switch
    fi
fi
ELAPSED=$(($(date +%s) - T0))

# ---- report ----
OUT=${BENCH_OUT:-$HERE/RESULTS.md}
pasta_ver=$(dpkg-query -W -f '${Version}' passt 2>/dev/null || echo unknown)
{
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) CPUs)"
    echo "- Kernel: $(uname -r)"
    echo "- usernet: $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown) (release build)"
    echo "- slirp4netns: $(slirp4netns --version | head -1 | awk '{print $3}')"
    echo "- pasta (passt): $pasta_ver"
    echo "- QEMU: $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') (TCG); passt: $pasta_ver"
    echo "- iperf3: $(iperf3 --version | head -1 | awk '{print $2}'); python3: $(python3 -c 'import platform; print(platform.python_version())')"
    if [[ -n "${BENCH_QUICK:-}" ]]; then
        echo "- Mode: **QUICK** (BENCH_QUICK=1): iperf3 1 run of 2 s per figure"
    else
        echo "- Mode: full: iperf3 3 runs of 5 s per figure, median"
    fi
    echo "- Benchmark wall time (measurements only): ${ELAPSED} s"
    echo
    echo "Method: each stack serves a fresh named network namespace (tap0 10.0.2.100/24, gateway 10.0.2.2 → host loopback),"
    echo "all inside a network namespace created by bench/run.sh (no route off the machine)."
    echo "ns→host: iperf3 server on the host's 127.0.0.1, client in the namespace to 10.0.2.2."
    echo "host→ns: server in the namespace, client on the host to a port forward on 127.0.0.1."
    echo "RR: $RR_N 1-byte round trips on one connection (python3 client and server, TCP_NODELAY; includes python overhead on both ends)."
    echo "Pinned rows: client on CPU $PIN_CLIENT, server on CPU $PIN_SERVER, stack on CPU $PIN_STACK (taskset); unpinned rows let the scheduler choose."
    echo "CPU per GB: utime+stime of the stack process (/proc/PID/stat, all threads) over the iperf3 runs, per 10^9 bytes received."
    echo "loopback: the same clients straight to the servers on the host's 127.0.0.1 in the same run (the ceiling);"
    echo "Its throughput is the median of samples taken before each stack. usernet ÷ loopback is the share of it usernet reaches. Splice path: a forward between the host's loopback and the"
    echo "namespace's (usernet: --hostfwd to 127.0.0.1 and --tcp-ns; pasta: -t and -T), carried socket to socket, no tap."
    echo "Connect+close: $CRR_N sequential connect()/close() (python3). RSS: VmRSS of the stack process, idle and with $HOLD_N idle"
    echo "namespace→host connections open (the process is usernet / slirp4netns / pasta itself). Latency, connect rate and RSS at MTU 1500."
    echo "QEMU mode: the test guest (.cache/guest: Debian kernel, busybox, iperf3; TCG, 1 vCPU, virtio-net) on usernet"
    echo "(\`usernet qemu --socket\`), on QEMU's own \`-netdev user\` (libslirp) and on passt, both over QEMU's \`-netdev stream\`"
    echo "unix socket; guest→host: iperf3 client in the guest to 10.0.2.2 (host loopback), median of $RUNS × $SECS s;"
    echo "host→guest: client on the host to a port forward on 127.0.0.1, same runs. Emulation bounds these figures."
    echo "Guest MTU as each stack's DHCP set it: usernet runs with --mtu $QEMU_MTU (passt's default), QEMU's -nic user has 1500."
    echo "Guest→guest (usernet only: one socket, two QEMU clients on its switch): iperf3 from one test guest to the other, same runs;"
    echo "RSS per idle guest: the growth of usernet's VmRSS from no guest to two connected idle guests (after that transfer), halved."
} >"$WORK/meta.md"
python3 "$TOOL" report "$RAW" "$OUT" "$WORK/meta.md"
log "wrote $OUT (total ${ELAPSED}s of measurements)"
