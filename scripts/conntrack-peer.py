#!/usr/bin/env python3
"""Opens, holds and closes real connections for the conntrack tests (run inside a network
namespace with `ip netns exec`). Reads commands from stdin, one per line, and answers "ok"
after each, so the test knows the kernel has seen it:

  serve PORT            listen on 0.0.0.0:PORT and accept (and hold) whatever connects
  serve6 PORT           the same on [::]:PORT
  connect HOST PORT N   open N TCP connections and hold them
  send I N              send N bytes on held outbound connection I
  halfclose I           shutdown(SHUT_WR) held outbound connection I
  close I               close held outbound connection I
  closeaccepted I       close accepted connection I
  udp HOST PORT         send one UDP datagram (a UDP flow)
  burst HOST PORT N     open and close N connections as fast as possible
"""
import socket
import sys
import threading

held = []
accepted = []
lock = threading.Lock()


def serve(port, v6=False):
    srv = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::" if v6 else "0.0.0.0", port))
    srv.listen(4096)

    def loop():
        while True:
            c, _ = srv.accept()
            with lock:
                accepted.append(c)

    threading.Thread(target=loop, daemon=True).start()


for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "serve":
        serve(int(cmd[1]))
    elif cmd[0] == "serve6":
        serve(int(cmd[1]), v6=True)
    elif cmd[0] == "connect":
        for _ in range(int(cmd[3])):
            held.append(socket.create_connection((cmd[1], int(cmd[2]))))
    elif cmd[0] == "send":
        held[int(cmd[1])].sendall(b"x" * int(cmd[2]))
    elif cmd[0] == "halfclose":
        held[int(cmd[1])].shutdown(socket.SHUT_WR)
    elif cmd[0] == "close":
        held[int(cmd[1])].close()
    elif cmd[0] == "closeaccepted":
        with lock:
            accepted[int(cmd[1])].close()
    elif cmd[0] == "udp":
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"flow", (cmd[1], int(cmd[2])))
        held.append(u)
    elif cmd[0] == "burst":
        for _ in range(int(cmd[3])):
            s = socket.create_connection((cmd[1], int(cmd[2])))
            s.close()
    print("ok", flush=True)
