#!/usr/bin/env python3
"""An OTLP/HTTP receiver for floodgate's tests: decodes each export request with
OpenTelemetry's own protobuf definitions (the `opentelemetry-proto` package) and appends it,
as the official JSON mapping of the message, one line per request, to a file.

    receiver.py [--port N] [--tls CERT KEY] PORT_FILE OUT_FILE [ANSWERS]

Binds 127.0.0.1 on port N (default: a free one) and writes the port to PORT_FILE. OUT_FILE
`-` is standard output (the README's worked example). ANSWERS scripts the first
responses, comma-separated: `503`, `429:2` (429 with `Retry-After: 2`), `400`, `partial:N`
(200 with a partial success rejecting N points); past the script, 200. Requests answered
with anything but 200 are still logged, with "answered": the status.
"""
import argparse
import gzip
import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

parser = argparse.ArgumentParser(description="An OTLP/HTTP receiver that prints what it decodes.")
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve https with this certificate")
parser.add_argument("port_file")
parser.add_argument("out_file")
parser.add_argument("answers", nargs="?", default="")
args = parser.parse_args()
port_file, out_file = args.port_file, args.out_file
answers = [a for a in args.answers.split(",") if a]
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path == "/v1/metrics":
            request = metrics_service_pb2.ExportMetricsServiceRequest()
            response = metrics_service_pb2.ExportMetricsServiceResponse()
        elif self.path == "/v1/logs":
            request = logs_service_pb2.ExportLogsServiceRequest()
            response = logs_service_pb2.ExportLogsServiceResponse()
        else:
            self.send_error(404)
            return
        request.ParseFromString(body)
        with lock:
            answer = answers.pop(0) if answers else "200"
            status, _, arg = answer.partition(":")
            record = {
                "path": self.path,
                "answered": status,
                "at": time.time(),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "request": MessageToDict(request),
            }
            if out_file == "-":
                print(json.dumps(record, indent=1), flush=True)
            else:
                with open(out_file, "a") as f:
                    f.write(json.dumps(record) + "\n")
        if status == "partial":
            if self.path == "/v1/metrics":
                response.partial_success.rejected_data_points = int(arg)
            else:
                response.partial_success.rejected_log_records = int(arg)
            response.partial_success.error_message = "test rejects some"
            status = "200"
        payload = response.SerializeToString()
        if status != "200":
            # google.rpc.Status{code: 14, message}, encoded by hand (its package is not needed
            # otherwise): field 1 varint, field 2 bytes.
            message = ("test says " + status).encode()
            payload = bytes([0x08, 14, 0x12, len(message)]) + message
        self.send_response(int(status))
        if arg and status == "429":
            self.send_header("Retry-After", arg)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
if args.tls:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls[0], args.tls[1])
    server.socket = context.wrap_socket(server.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
