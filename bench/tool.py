#!/usr/bin/env python3
"""Tiny TCP load tools for bench/run.sh (no dependencies beyond python3).

  tool.py server ADDR PORT          echo server (1-byte echo; keeps idle conns)
  tool.py rr HOST PORT N            N 1-byte request/response round trips -> mean us/RT
  tool.py crr HOST PORT N           N connect+close -> connections/s
  tool.py hold HOST PORT N SECS     open N idle connections, print "ready", hold SECS
  tool.py api SOCK JSON             send one request to a slirp4netns API socket
  tool.py iperf FILE                bits_per_second of an iperf3 -J result -> Gbit/s
  tool.py iperf_bytes FILE          bytes received in an iperf3 -J result
  tool.py median V...               median of values
  tool.py wait HOST PORT SECS       wait until HOST:PORT accepts a connection
  tool.py report RAW OUT META       markdown tables from run.sh's raw results (+ bench/profile.md)
"""
import json, os, selectors, socket, statistics, sys, time


def server(addr, port):
    sel = selectors.DefaultSelector()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, int(port)))
    ls.listen(4096)
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is ls:
                try:
                    c, _ = ls.accept()
                except OSError:
                    continue
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                continue
            try:
                d = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                d = b""
            if d:
                try:
                    s.send(d)
                except OSError:
                    pass
            else:
                sel.unregister(s)
                s.close()


def rr(host, port, n):
    n = int(n)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(100):  # warm-up
        s.send(b"x"); s.recv(1)
    t = time.perf_counter()
    deadline = t + 60
    for i in range(n):
        s.send(b"x")
        if not s.recv(1):
            sys.exit("rr: connection closed")
        if (i & 1023) == 0 and time.perf_counter() > deadline:
            sys.exit("rr: too slow")
    dt = time.perf_counter() - t
    s.close()
    print(f"{dt / n * 1e6:.1f}")


def crr(host, port, n):
    n = int(n)
    t = time.perf_counter()
    deadline = t + 30
    done, mark = 0, ""
    for _ in range(n):
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
        except OSError as e:
            mark = f"*(stopped after {done}: {e.__class__.__name__})"
            break
        s.close()
        done += 1
        if time.perf_counter() > deadline:
            mark = f"*(30s limit hit after {done})"
            break
    print(f"{done / (time.perf_counter() - t):.0f}{mark.replace(' ', '_')}")


def hold(host, port, n, secs):
    conns = []
    deadline = time.time() + 60
    for _ in range(int(n)):
        conns.append(socket.create_connection((host, int(port)), timeout=10))
        if time.time() > deadline:
            sys.exit("hold: too slow")
    # one round trip on the last one so every connection is established end to end
    conns[-1].send(b"x"); conns[-1].recv(1)
    print("ready", flush=True)
    time.sleep(float(secs))


def api(sock, req):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sock)
    s.sendall(req.encode())
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        out += d
    print(out.decode())
    if b"error" in out:
        sys.exit(1)


def iperf(f):
    j = json.load(open(f))
    print(f"{j['end']['sum_received']['bits_per_second'] / 1e9:.2f}")


def iperf_bytes(f):
    print(int(json.load(open(f))["end"]["sum_received"]["bytes"]))  # KeyError: iperf3 failed


def median(*v):
    print(statistics.median(float(x) for x in v))


def wait(host, port, secs):
    end = time.time() + float(secs)
    while time.time() < end:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"wait: {host}:{port} not reachable")


ROWS = [
    # key, label, unit, higher_is_better
    ("tput_out_1500", "TCP throughput ns→host, MTU 1500", "Gbit/s", True),
    ("tput_in_1500", "TCP throughput host→ns (port fwd), MTU 1500", "Gbit/s", True),
    ("tput_out_65520", "TCP throughput ns→host, MTU 65520", "Gbit/s", True),
    ("tput_in_65520", "TCP throughput host→ns (port fwd), MTU 65520", "Gbit/s", True),
    ("tput_out_p2", "TCP throughput ns→host, MTU 65520, 2 streams (-P 2)", "Gbit/s", True),
    ("tput_out_p4", "TCP throughput ns→host, MTU 65520, 4 streams (-P 4)", "Gbit/s", True),
    ("tput_splice_in", "TCP throughput host→ns loopback (splice path)", "Gbit/s", True),
    ("tput_splice_out", "TCP throughput ns loopback→host (splice path, pasta -T)", "Gbit/s", True),
    ("cpu_out_1500", "Stack CPU per GB ns→host, MTU 1500", "CPU s/GB", False),
    ("cpu_in_1500", "Stack CPU per GB host→ns, MTU 1500", "CPU s/GB", False),
    ("cpu_out_65520", "Stack CPU per GB ns→host, MTU 65520", "CPU s/GB", False),
    ("cpu_in_65520", "Stack CPU per GB host→ns, MTU 65520", "CPU s/GB", False),
    ("cpu_splice_in", "Stack CPU per GB host→ns loopback (splice)", "CPU s/GB", False),
    ("cpu_splice_out", "Stack CPU per GB ns loopback→host (splice)", "CPU s/GB", False),
    ("rr_out", "1-byte TCP RR latency ns→host", "µs/round trip", False),
    ("rr_in", "1-byte TCP RR latency host→ns (port fwd)", "µs/round trip", False),
    ("rr_out_pin", "1-byte TCP RR latency ns→host, pinned", "µs/round trip", False),
    ("rr_in_pin", "1-byte TCP RR latency host→ns (port fwd), pinned", "µs/round trip", False),
    ("crr_out", "TCP connect+close ns→host", "conn/s", True),
    ("crr_in", "TCP connect+close host→ns (port fwd)", "conn/s", True),
    ("crr_out_pin", "TCP connect+close ns→host, pinned", "conn/s", True),
    ("crr_in_pin", "TCP connect+close host→ns (port fwd), pinned", "conn/s", True),
    ("rss_idle", "RSS of the stack process, idle", "MiB", False),
    ("rss_1000", "RSS of the stack process, 1,000 idle TCP conns", "MiB", False),
]
# loopback: the host's own loopback, the ceiling (same clients, same run).
STACKS = ["usernet", "slirp4netns", "pasta", "loopback"]
QROWS = [
    ("q_out", "TCP throughput guest→host (iperf3 in the guest)", "Gbit/s", True),
    ("q_in", "TCP throughput host→guest (port fwd)", "Gbit/s", True),
    ("q_mtu", "Guest MTU (from the stack's DHCP)", "bytes", None),
    ("q_g2g", "TCP throughput guest→guest (two guests on one switch)", "Gbit/s", True),
    ("q_rss_guest", "RSS per idle connected guest", "MiB", False),
]
QSTACKS = ["usernet", "qemu", "passt"]
QNAMES = ["usernet", "QEMU -nic user", "passt"]


def table(vals, rows, stacks, names):
    """Markdown table: one column per stack, then usernet's ratio to each peer."""
    def num(v):
        try:
            return float(v.split("*")[0])
        except (TypeError, ValueError):
            return None
    lines = [
        "| Metric | unit | " + " | ".join(names) + " | "
        + " | ".join(f"usernet ÷ {n}" for n in names[1:]) + " |",
        "|---|---|" + "---:|" * (2 * len(names) - 1),
    ]
    for key, label, unit, hib in rows:
        cells = [vals.get((s, key), "n/a").replace("_", " ") for s in stacks]
        u = num(cells[0])
        ratios = []
        for peer in cells[1:]:
            pv = num(peer)
            ok = hib is not None and u is not None and pv
            ratios.append(f"{u / pv:.2f}" if ok else ("—" if hib is None else "n/a"))
        arrow = {True: " (↑ better)", False: " (↓ better)", None: ""}[hib]
        lines.append(f"| {label} | {unit}{arrow} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def report(raw, out, meta):
    vals = {}
    for line in open(raw):
        p = line.split()
        if len(p) >= 3:
            vals[(p[0], p[1])] = p[2]
    table_ns = table(vals, ROWS, STACKS, STACKS)
    have_q = any(k[1].startswith("q_") for k in vals)
    table_q = table(vals, QROWS, QSTACKS, QNAMES) if have_q else None
    print(table_ns)
    if table_q:
        print()
        print(table_q)
    m = open(meta).read()
    here = os.path.dirname(os.path.abspath(__file__))
    prof = os.path.join(here, "profile.md")
    costs = open(prof).read().strip() if os.path.exists(prof) else "Not profiled yet (bench/profile.md)."
    with open(out, "w") as f:
        f.write("# usernet benchmark results\n\n")
        f.write(m)
        f.write("\n## Namespace mode\n\n")
        f.write(table_ns + "\n\n")
        if table_q:
            f.write("## QEMU mode\n\n")
            f.write(table_q + "\n\n")
        f.write("Ratios are usernet's figure divided by the peer's: above 1 is better for usernet on ↑ rows, below 1 is better on ↓ rows.\n\n")
        f.write("## Top costs\n\n(From bench/profile.md, written by hand from a profile; not measured by this run.)\n\n" + costs + "\n")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    globals()[cmd](*args)
