"""Sends DogStatsD over UDP with the real Python `datadog` client declaring a container id
(the client's `container_id`, sent as the `|c:` field DogStatsD's origin detection reads).

Usage: send_container.py PORT CONTAINER_ID
"""
import sys

from datadog.dogstatsd import DogStatsd

dd = DogStatsd(
    host="127.0.0.1",
    port=int(sys.argv[1]),
    disable_telemetry=True,
    container_id=sys.argv[2],
    origin_detection_enabled=True,
)
dd.increment("ctr.hits", 4, tags=["env:prod"])
dd.flush()
dd.close_socket()
print("sent")
