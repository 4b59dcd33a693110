"""Sends DogStatsD with the real Python `datadog` client over a Unix datagram socket
(`socket_path`, the client's default in containers).

Usage: send_unix.py SOCKET_PATH
"""
import sys

from datadog.dogstatsd import DogStatsd

# Blocking sends (socket_timeout=None): the kernel queues only net.unix.max_dgram_qlen
# datagrams (10 by default) for a Unix socket, and the client's default (non-blocking) drops
# past that on its side, where no receiver can count it.
dd = DogStatsd(socket_path=sys.argv[1], disable_telemetry=True, socket_timeout=None)
for _ in range(50):
    dd.increment("uds.hits", 2, tags=["env:prod"])
dd.gauge("uds.temp", 3.5)
dd.histogram("uds.hist", 5)
dd.distribution("uds.dist", 7)
dd.timing("uds.lat", 11)
dd.set("uds.users", "u1")
dd.set("uds.users", "u2")
dd.event("Backup done", "3 files", alert_type="success", priority="low", tags=["job:nightly"])
dd.service_check("uds.check", DogStatsd.WARNING, message="slow disk")
dd.flush()
dd.close_socket()
print("sent")
