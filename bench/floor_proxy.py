#!/usr/bin/env python3
"""
Issue 12: what pure Python can do on kongacme's data path, as a yardstick.

A bare L4 TLS proxy in one ``select.epoll`` loop, with none of kongacme's
features (no hello parsing, gate, deadlines, half-close, limits, metrics:
it closes both sides on the first EOF) and no Twisted. Three variants of the
TLS layer:

- ``bio``: pyOpenSSL with kongacme's own context (``ContextBuilder.build``:
  suites, curves, options, the ALPN select callback), the leaf and key set
  per connection as kongacme does, and a memory BIO fed from ``recv`` as in
  kongacme's pump (4 pyOpenSSL calls per request);
- ``pyo``: the same context, the ``SSL.Connection`` on the socket itself
  (2 calls per request);
- ``std``: the standard library's ``ssl`` (the system OpenSSL 3.0, as
  HAProxy uses; pyOpenSSL's wheel brings its own), ``SSLSocket`` on the
  socket;
- ``stdbio``: the standard library's ``ssl`` over memory BIOs
  (``SSLObject`` + ``MemoryBIO``), fed from ``recv`` like ``bio``: the same
  four calls per request, each a C method rather than a cffi wrapper.

Run beside kongacme and HAProxy with
``python3 bench/pump.py --extra "bio=.venv/bin/python bench/floor_proxy.py bio {port} {upstream} {cert} {key}"``
(one ``--extra`` per variant). Not a product: a measurement of where the
interpreter's floor is, so that kongacme's gap to it and its gap to HAProxy
can be told apart.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import sys
import warnings
from typing import Any, Callable

IN, OUT = select.EPOLLIN, select.EPOLLOUT


def pyopenssl_context() -> tuple[Any, Any, Any]:
    """kongacme's server context, leaf and key, as its TLS listener makes them."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from OpenSSL import SSL, crypto

    from kongacme.tls.context import ContextBuilder

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    builder = ContextBuilder.__new__(ContextBuilder)
    object.__setattr__(builder, "session_tickets", True)
    return ContextBuilder.build(builder), crypto, SSL


class Floor:
    """The loop, the listener and the per-connection handlers."""

    def __init__(self, variant: str, port: int, upstream: int, cert: str, key: str) -> None:
        self.variant = variant
        self.upstream = ("127.0.0.1", upstream)
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.poll = select.epoll()
        if variant in ("std", "stdbio"):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            ctx.set_alpn_protocols(["http/1.1"])
            self.std = ctx
        else:
            self.ctx, crypto, self.SSL = pyopenssl_context()
            with open(cert, "rb") as f:
                self.leaf = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
            with open(key, "rb") as f:
                self.key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.poll.register(self.listener.fileno(), IN)

    def run(self) -> None:
        lfd = self.listener.fileno()
        handlers = self.handlers
        while True:
            for fd, events in self.poll.poll():
                if fd == lfd:
                    self.accept()
                else:
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler(events)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            Connection(self, sock)


class Connection:
    """One client, its TLS and its upstream; state 0 handshake, 1 connecting, 2 relaying."""

    def __init__(self, floor: Floor, sock: socket.socket) -> None:
        self.floor, self.state = floor, 0
        self.up: socket.socket | None = None
        self.ufd = -1
        #: Where ciphertext read from the socket goes (None: OpenSSL reads the socket).
        self.feed: Callable[[bytes], Any] | None = None
        if floor.variant == "stdbio":
            self.sock = sock
            self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = floor.std.wrap_bio(self.incoming, self.outgoing, server_side=True)
            self.want_read = ssl.SSLWantReadError
            self.closed = (ssl.SSLError, OSError)
            self.feed = self.incoming.write
            self.flush = self.std_flush  # type: ignore[method-assign]
            self.relay = self.std_relay  # type: ignore[method-assign]
        elif floor.variant == "std":
            self.sock = self.tls = floor.std.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            self.want_read: Any = ssl.SSLWantReadError
            self.closed: Any = (OSError,)
        else:
            SSL = floor.SSL
            self.sock = sock
            self.tls = SSL.Connection(floor.ctx, sock if floor.variant == "pyo" else None)
            self.tls.use_certificate(floor.leaf)
            self.tls.use_privatekey(floor.key)
            self.tls.set_app_data(self)
            self.tls.set_accept_state()
            self.want_read = SSL.WantReadError
            self.closed = (SSL.Error, OSError)
            if floor.variant == "bio":
                self.feed = self.tls.bio_write
        self.alpn_allowed = (b"http/1.1",)
        self.cfd = self.sock.fileno()
        floor.handlers[self.cfd] = self.client_event
        floor.poll.register(self.cfd, IN)

    def client_event(self, events: int) -> None:
        tls = self.tls
        if self.feed is not None:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return self.close()
            if not data:
                return self.close()
            self.feed(data)
        if self.state == 0:
            try:
                tls.do_handshake()
            except self.want_read:
                return self.flush()
            except self.closed:
                return self.close()
            self.flush()
            self.dial()
        elif self.state == 2:
            self.relay()

    def dial(self) -> None:
        """The handshake is done: connect to the upstream (state 1 until it is)."""
        self.state = 1
        up = self.up = socket.socket()
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.connect_ex(self.floor.upstream)
        self.ufd = up.fileno()
        self.floor.handlers[self.ufd] = self.upstream_event
        self.floor.poll.register(self.ufd, OUT)

    def std_relay(self) -> None:
        assert self.up is not None
        incoming = self.incoming
        read, send = self.tls.read, self.up.send
        try:
            while incoming.pending:
                data = read(65536)
                if not data:
                    return self.close()
                send(data)
        except self.want_read:
            return
        except self.closed:
            return self.close()

    def std_flush(self) -> None:
        out = self.outgoing.read()
        if out:
            self.sock.send(out)

    def relay(self) -> None:
        assert self.up is not None
        send, recv = self.up.send, self.tls.recv
        try:
            while True:
                data = recv(65536)
                if not data:
                    return self.close()
                send(data)
        except self.want_read:
            return
        except self.closed:
            return self.close()

    def upstream_event(self, events: int) -> None:
        assert self.up is not None
        if self.state == 1:
            self.floor.poll.modify(self.ufd, IN)
            self.state = 2
            return self.relay()
        try:
            data = self.up.recv(65536)
        except OSError:
            return self.close()
        if not data:
            return self.close()
        if self.floor.variant == "stdbio":
            self.tls.write(data)
            return self.flush()
        self.tls.sendall(data) if self.floor.variant != "bio" else self.tls.send(data)
        self.flush()

    def flush(self) -> None:
        if self.floor.variant != "bio":
            return
        try:
            self.sock.send(self.tls.bio_read(262144))
        except self.want_read:
            pass

    def close(self) -> None:
        for fd, sock in ((self.cfd, self.sock), (self.ufd, self.up)):
            if sock is not None and fd >= 0:
                self.floor.handlers.pop(fd, None)
                try:
                    self.floor.poll.unregister(fd)
                except OSError:
                    pass
                sock.close()
        self.cfd = self.ufd = -1


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[0] not in ("bio", "pyo", "std", "stdbio"):
        print("usage: floor_proxy.py bio|pyo|std|stdbio PORT UPSTREAM_PORT CERT KEY", file=sys.stderr)
        return 2
    Floor(argv[0], int(argv[1]), int(argv[2]), argv[3], argv[4]).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
