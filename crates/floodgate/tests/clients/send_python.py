"""Sends StatsD with the real Python clients: `statsd` (UDP and TCP) and `datadog` (DogStatsD, UDP).

Usage: send_python.py PORT
"""
import sys

import statsd
from datadog.dogstatsd import DogStatsd

port = int(sys.argv[1])

udp = statsd.StatsClient("127.0.0.1", port, prefix="py.udp")
udp.incr("hits", 3)
udp.incr("sampled", 1, rate=1)
udp.gauge("temp", 21.5)
udp.gauge("temp", 1.5, delta=True)
udp.timing("lat", 12)
udp.timing("lat", 30)
udp.set("users", "ann")
udp.set("users", "bob")
with udp.pipeline() as pipe:
    pipe.incr("piped", 2)
    pipe.incr("piped", 5)

tcp = statsd.TCPStatsClient("127.0.0.1", port, prefix="py.tcp")
tcp.incr("hits", 4)
tcp.gauge("temp", 7)
tcp.timing("lat", 9)
tcp.set("users", "x")
tcp.close()

dd = DogStatsd(host="127.0.0.1", port=port, disable_telemetry=True)
dd.increment("dd.hits", 2, tags=["env:prod", "az:b"])
dd.gauge("dd.temp", 3.25, tags=["env:prod"])
dd.histogram("dd.hist", 5)
dd.distribution("dd.dist", 7)
dd.timing("dd.lat", 11)
dd.set("dd.users", "u1")
# Events and service checks: counted (dogstatsd.events by alert type; service_check's status
# as a gauge), never bad lines.
dd.event("Deploy", "v1.2.3 is out\nall green", alert_type="error", tags=["env:prod"])
dd.service_check("db.up", DogStatsd.CRITICAL, tags=["env:prod"], message="replica lag")
dd.flush()
dd.close_socket()
print("sent")
