#!/usr/bin/env python3
"""Sends UDP datagrams from spoofed source addresses through a raw socket (root only).

Used by the guard's spoofing test and benchmark, always inside a network namespace the
caller created, so the forged traffic never leaves it. Every address of --sources is used
once per pass, in a random order; the destination sees that many distinct sources. Forged
sources come only from the benchmarking range 198.18.0.0/15 and the documentation prefix
2001:db8::/32 (the script refuses others); an IPv6 block is sent to an IPv6 destination,
each source from a /64 of its own (limiters key IPv6 by /64).

    spoof-udp.py --to 127.0.0.1:8125 --sources 198.18.0.0/15 --passes 2 --rate 60000
    spoof-udp.py --to [::1]:8125 --sources 2001:db8::/32 --count 900000
"""
import argparse
import ipaddress
import random
import socket
import struct
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", required=True, help="IPv4 host:port to send to")
    p.add_argument("--sources", default="198.18.0.0/15", help="CIDR block the sources are drawn from")
    p.add_argument("--count", type=int, default=0, help="addresses per pass (default: the whole block)")
    p.add_argument("--passes", type=int, default=1, help="times each address sends")
    p.add_argument("--rate", type=float, default=0, help="datagrams per second (0: as fast as possible)")
    p.add_argument("--payload", default="spoof:1|c", help="datagram body")
    a = p.parse_args()

    host, port = a.to.rsplit(":", 1)
    host = host.strip("[]")
    net = ipaddress.ip_network(a.sources)
    allowed = [ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8::/32")]
    if not any(net.version == ok.version and net.subnet_of(ok) for ok in allowed):
        sys.exit(f"{net}: forged sources only from 198.18.0.0/15 or 2001:db8::/32")
    v6 = net.version == 6
    dst = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, host)
    first, size = int(net.network_address), net.num_addresses
    if v6:
        size = max(1, size >> 64)  # /64s in the block
    count = min(a.count or size, size)
    payload = a.payload.encode()
    udp_len = 8 + len(payload)
    # IPPROTO_RAW: the header is ours (for IPv6 too, on Linux).
    raw = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    start = time.monotonic()
    sent = 0
    # Offsets drawn without holding a list of the whole block (a /32 of IPv6 is 2^96).
    population = range(min(size, 1 << 62))
    for _ in range(a.passes):
        for offset in random.sample(population, count):
            sport = 1024 + offset % 60000
            if v6:
                src = (first + (offset << 64) + 1).to_bytes(16, "big")
                # UDP over IPv6 must carry a checksum (over a pseudo-header).
                pseudo = src + dst + struct.pack("!IxxxB", udp_len, socket.IPPROTO_UDP)
                udp = struct.pack("!HHHH", sport, int(port), udp_len, 0) + payload
                checksum = inet_checksum(pseudo + udp) or 0xFFFF
                udp = struct.pack("!HHHH", sport, int(port), udp_len, checksum) + payload
                ip = struct.pack("!IHBB16s16s", 6 << 28, udp_len, socket.IPPROTO_UDP, 64, src, dst)
                raw.sendto(ip + udp, (host, 0))
            else:
                src = struct.pack("!I", first + offset)
                # UDP checksum 0 (none, allowed over IPv4); the kernel fills the IP checksum.
                udp = struct.pack("!HHHH", sport, int(port), udp_len, 0) + payload
                ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, socket.IPPROTO_UDP, 0, src, dst)
                raw.sendto(ip + udp, (host, 0))
            sent += 1
            if a.rate and sent % 500 == 0:
                ahead = sent / a.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    elapsed = time.monotonic() - start
    print(f"sent={sent} sources={count} seconds={elapsed:.3f}", flush=True)


def inet_checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


if __name__ == "__main__":
    sys.exit(main())
