#!/usr/bin/env bash
# Installs what the tests and the demo need, and builds the QEMU test guest.
#
# Idempotent: packages are installed only if missing, and the guest
# (.cache/guest/vmlinuz and .cache/guest/initramfs.cpio.gz) is built only if
# missing. Delete .cache/guest to rebuild it.
#
# The guest is Debian's current kernel plus a gzipped newc initramfs holding
# busybox-static, socat and iperf3 (with their libraries), a static
# /bin/connloop (tests/guest/connloop.c) and the virtio-net modules. Its
# /init loads the modules, mounts proc/sys/dev, brings up lo and eth0, prints
# "=== usernet guest up ===", runs /scenario.sh if present (supplied per
# test as a second, concatenated cpio), prints
# "=== scenario exit N ===" and powers off. The busybox udhcpc default script
# configures eth0 and prints the lease as "lease.FIELD=VALUE" lines.
#
# It also probes once whether KVM boots this kernel and records the
# accelerator to use ("kvm" or "tcg") in .cache/guest/accel.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$repo/.cache/guest"

log() { printf 'setup: %s\n' "$*" >&2; }

# --- packages ---------------------------------------------------------------
# command-or-dpkg-name:package
need=()
for pair in qemu-system-x86_64:qemu-system-x86 socat:socat iperf3:iperf3 \
    cpio:cpio ip:iproute2 sysctl:procps python3:python3 unshare:util-linux \
    gzip:gzip timeout:coreutils gcc:gcc objdump:binutils; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
dpkg -s libc6-dev >/dev/null 2>&1 || need+=(libc6-dev) # for connloop
# Debian's libslirp and its header: the reference crates/libslirp's
# exports and layouts are compared with.
dpkg -s libslirp-dev >/dev/null 2>&1 || need+=(libslirp-dev)
# The Prometheus text parser tests/observe.rs checks --metrics with.
dpkg -s python3-prometheus-client >/dev/null 2>&1 || need+=(python3-prometheus-client)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing packages: ${need[*]} (run as root to install them)"
        exit 1
    fi
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# connloop (tests/guest/connloop.c) is built statically into the guest as
# /bin/connloop; the stamp records which source the cached initramfs holds,
# so a missing or changed connloop rebuilds it.
connloop_sum=$(sha256sum "$repo/tests/guest/connloop.c" | cut -d' ' -f1)
if [[ $(cat "$cache/connloop.stamp" 2>/dev/null) != "$connloop_sum" ]]; then
    rm -f "$cache/initramfs.cpio.gz"
fi

# --- guest ------------------------------------------------------------------
if [[ -s $cache/vmlinuz && -s $cache/initramfs.cpio.gz ]]; then
    log "guest cached in $cache"
else
    mkdir -p "$cache"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT

    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    [[ -n $kpkg ]] || { log "cannot find the kernel package behind linux-image-amd64"; exit 1; }
    log "fetching $kpkg"
    (cd "$work" && { apt-get download -q "$kpkg" 2>&1 | grep -v 'unsandboxed' >&2 || true; })
    deb=$(find "$work" -maxdepth 1 -name "${kpkg}_*.deb" | head -n1)
    [[ -n $deb ]] || { log "apt-get download $kpkg failed"; exit 1; }
    dpkg-deb -x "$deb" "$work/kernel"
    vmlinuz=$(find "$work/kernel/boot" -name 'vmlinuz-*' | head -n1)
    kver=${vmlinuz##*/vmlinuz-}
    moddir="$work/kernel/lib/modules/$kver"
    [[ -d $moddir ]] || moddir="$work/kernel/usr/lib/modules/$kver"

    root="$work/root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/udhcpc,etc,proc,sys,dev,tmp,root,run,var/run,lib/modules,lib/x86_64-linux-gnu,lib64}

    # The virtio-net module chain, in load order (see shared guest notes).
    mods=(drivers/virtio/virtio_ring drivers/virtio/virtio
        drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev
        drivers/virtio/virtio_pci net/core/failover drivers/net/net_failover
        drivers/net/virtio_net)
    : >"$root/etc/modules"
    for m in "${mods[@]}"; do
        name=${m##*/}
        if [[ -f $moddir/kernel/$m.ko ]]; then
            cp "$moddir/kernel/$m.ko" "$root/lib/modules/$name.ko"
        elif [[ -f $moddir/kernel/$m.ko.xz ]]; then
            xz -dc "$moddir/kernel/$m.ko.xz" >"$root/lib/modules/$name.ko"
        elif grep -q "kernel/$m.ko" "$moddir/modules.builtin" 2>/dev/null; then
            continue
        else
            log "module $m not found in $kpkg"
            exit 1
        fi
        echo "$name" >>"$root/etc/modules"
    done

    cp /bin/busybox "$root/bin/busybox"
    ldd_out=$(ldd /bin/busybox 2>&1 || true)
    [[ $ldd_out == *"not a dynamic executable"* ]] || { log "/bin/busybox is not static (install busybox-static)"; exit 1; }
    ln -s busybox "$root/bin/sh"

    # socat and iperf3 are dynamic: copy them with their libraries and loader.
    for bin in socat iperf3; do
        path=$(command -v "$bin")
        cp "$path" "$root/usr/bin/$bin"
        ldd "$path" | awk '/=> \// {print $3} /^\t\// {print $1}' | while read -r lib; do
            dest="$root$lib"
            [[ $lib == /usr/lib/* ]] && dest="$root${lib#/usr}"
            mkdir -p "$(dirname "$dest")"
            cp -L "$lib" "$dest"
        done
    done

    cat >"$root/init" <<'EOF'
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
for m in $(cat /etc/modules); do
    insmod "/lib/modules/$m.ko" || echo "init: insmod $m failed"
done
hostname guest
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
ip link set eth0 up 2>/dev/null || echo "init: no eth0"
echo "=== usernet guest up ==="
if [ -f /scenario.sh ]; then
    sh /scenario.sh
    echo "=== scenario exit $? ==="
else
    echo "=== no scenario ==="
fi
sync
poweroff -f
EOF
    chmod 755 "$root/init"

    cat >"$root/etc/udhcpc/default.script" <<'EOF'
#!/bin/sh
# udhcpc's script: configures the interface and prints the lease as
# lease.FIELD=VALUE lines (one per field, empty if not offered).
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    for f in ip subnet mask router dns domain mtu search hostname lease serverid broadcast; do
        eval "v=\${$f-}"
        echo "lease.$f=$v"
    done
    if [ -n "${mtu-}" ]; then ip link set "$interface" mtu "$mtu"; fi
    ifconfig "$interface" "$ip" netmask "$subnet"
    for r in ${router-}; do ip route add default via "$r" dev "$interface"; break; done
    : >/etc/resolv.conf
    [ -n "${domain-}" ] && echo "domain $domain" >>/etc/resolv.conf
    [ -n "${search-}" ] && echo "search $search" >>/etc/resolv.conf
    for d in ${dns-}; do echo "nameserver $d" >>/etc/resolv.conf; done
    echo "lease.configured=yes"
    ;;
leasefail|nak)
    echo "lease.failed=$1"
    ;;
esac
exit 0
EOF
    chmod 755 "$root/etc/udhcpc/default.script"

    gcc -O2 -static -o "$root/bin/connloop" "$repo/tests/guest/connloop.c"

    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"

    (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --owner=0:0 --quiet) |
        gzip -9 >"$work/initramfs.cpio.gz"
    cp "$vmlinuz" "$cache/vmlinuz.tmp"
    mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
    mv "$work/initramfs.cpio.gz" "$cache/initramfs.cpio.gz"
    rm -f "$cache/accel"
    echo "$connloop_sum" >"$cache/connloop.stamp"
    log "guest built: kernel $kver, initramfs $(du -h "$cache/initramfs.cpio.gz" | cut -f1)"
fi

# --- accelerator probe ------------------------------------------------------
# /dev/kvm may open yet hang a stock kernel: boot once with a short timeout
# and remember the answer. Falls back to TCG.
boot() { # accel seconds
    (timeout -s KILL "$2" qemu-system-x86_64 -accel "$1" -m 256 -nographic -no-reboot \
        -kernel "$cache/vmlinuz" -initrd "$cache/initramfs.cpio.gz" \
        -append "console=ttyS0 quiet panic=-1" </dev/null 2>&1 | tr -d '\r') 2>/dev/null || true
}
if [[ ! -s $cache/accel ]]; then
    accel=tcg
    if [[ -r /dev/kvm && -w /dev/kvm ]] && boot kvm 15 | grep -q '=== usernet guest up ==='; then
        accel=kvm
    fi
    if [[ $accel == tcg ]] && ! boot tcg 60 | grep -q '=== usernet guest up ==='; then
        log "the guest does not boot under TCG; see: qemu-system-x86_64 -accel tcg -kernel $cache/vmlinuz -initrd $cache/initramfs.cpio.gz"
        exit 1
    fi
    echo "$accel" >"$cache/accel"
    log "guest boots with -accel $accel"
fi

# --- namespace, slirp4netns and podman tests ---------------------------------
# slirp4netns (the reference the compatibility tests compare with), podman
# and runc (the podman acceptance test), uidmap (newuidmap for rootless use).
ns_need=()
for pair in slirp4netns:slirp4netns podman:podman runc:runc newuidmap:uidmap nsenter:util-linux; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || ns_need+=("${pair#*:}")
done
if ((${#ns_need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing packages: ${ns_need[*]} (run as root to install them; the podman test skips without them)"
    else
        log "installing ${ns_need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${ns_need[@]}"
    fi
fi
