#!/usr/bin/env python3
"""A tiny upstream DNS resolver for the demo (UDP only).

Answers A queries for usernet.test and its subdomains with one address
(10.0.2.2 by default: the guest's gateway, i.e. the host's loopback), other
query types for those names with an empty NOERROR, and every other name with
NXDOMAIN. It never forwards anything anywhere.

    scripts/dns-resolver.py [--port 5353] [--answer 10.0.2.2]
"""
import argparse
import ipaddress
import socket
import struct
import sys


def answer(query: bytes, addr: bytes):
    if len(query) < 12 or query[2] & 0x80 or query[4:6] != b"\x00\x01":
        return None
    pos, labels = 12, []
    while True:
        if pos >= len(query):
            return None
        n = query[pos]
        pos += 1
        if n == 0:
            break
        if n > 63 or pos + n > len(query):
            return None
        labels.append(query[pos:pos + n].decode("ascii", "replace").lower())
        pos += n
    if pos + 4 > len(query):
        return None
    qtype, qclass = struct.unpack("!HH", query[pos:pos + 4])
    name = ".".join(labels)
    ours = name == "usernet.test" or name.endswith(".usernet.test")
    give_a = ours and qtype == 1 and qclass == 1
    flags = 0x8000 | (struct.unpack("!H", query[2:4])[0] & 0x7900) | 0x0400 | 0x0080
    flags |= 0 if ours else 3
    reply = query[:2] + struct.pack("!HHHHH", flags, 1, int(give_a), 0, 0)
    reply += query[12:pos + 4]
    if give_a:
        reply += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + addr
    print(f"dns-resolver: {name} type {qtype} -> "
          f"{'A ' + socket.inet_ntoa(addr) if give_a else ('NOERROR' if ours else 'NXDOMAIN')}",
          file=sys.stderr, flush=True)
    return reply


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=5353)
    p.add_argument("--answer", default="10.0.2.2")
    a = p.parse_args()
    addr = ipaddress.IPv4Address(a.answer).packed
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", a.port))
    while True:
        query, peer = sock.recvfrom(4096)
        reply = answer(query, addr)
        if reply is not None:
            sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
