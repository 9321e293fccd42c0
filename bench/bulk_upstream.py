#!/usr/bin/env python3
"""
A fast plain-HTTP upstream for bulk benchmarks: answers every request on
127.0.0.1:PORT with ``200`` and the bytes of FILE, sent with sendfile(2)
(the kernel copies; this process uses almost no CPU), then closes.

Usage: python3 bench/bulk_upstream.py PORT FILE
"""

from __future__ import annotations

import argparse
import os
import socket
import socketserver


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                return
            head += chunk
            if len(head) > 65536:
                return
        path = self.server.payload  # type: ignore[attr-defined]
        size = os.path.getsize(path)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size)
        with open(path, "rb") as f:
            offset = 0
            while offset < size:
                sent = os.sendfile(sock.fileno(), f.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            while sock.recv(65536):
                pass
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("port", type=int)
    p.add_argument("file", help="payload sent for every request")
    args = p.parse_args()
    with Server(("127.0.0.1", args.port), Handler) as server:
        server.payload = args.file  # type: ignore[attr-defined]
        server.serve_forever()


if __name__ == "__main__":
    main()
