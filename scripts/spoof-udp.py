#!/usr/bin/env python3
"""Sends UDP datagrams from spoofed source addresses through a raw socket (root only).

Used by the guard's spoofing test and benchmark, always inside a network namespace the
caller created, so the forged traffic never leaves it. Every address of --sources is used
once per pass, in a random order; the destination sees that many distinct sources.

    spoof-udp.py --to 127.0.0.1:8125 --sources 198.18.0.0/15 --passes 2 --rate 60000
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
    dst = socket.inet_aton(host)
    net = ipaddress.ip_network(a.sources)
    first, size = int(net.network_address), net.num_addresses
    count = min(a.count or size, size)
    payload = a.payload.encode()
    udp_len = 8 + len(payload)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    start = time.monotonic()
    sent = 0
    for _ in range(a.passes):
        for offset in random.sample(range(size), count):
            src = struct.pack("!I", first + offset)
            # UDP checksum 0 (none, allowed over IPv4); the kernel fills the IP checksum.
            udp = struct.pack("!HHHH", 1024 + offset % 60000, int(port), udp_len, 0) + payload
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, socket.IPPROTO_UDP, 0, src, dst)
            raw.sendto(ip + udp, (host, 0))
            sent += 1
            if a.rate and sent % 500 == 0:
                ahead = sent / a.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    elapsed = time.monotonic() - start
    print(f"sent={sent} sources={count} seconds={elapsed:.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
