"""
Helpers for the kongacme.web tests: a raw TCP HTTP client (so tests can send
malformed, hostile or trickled requests that a real client library would
refuse to produce) and a wait for all connections to close. No tests here.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import attrs
from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from zope.interface import implementer

from kongacme.interfaces import IRouter
from kongacme.web.challenge import HTTPSite, make_http_factory
from kongacme.web.tokens import MemoryChallengeTokenStore


@attrs.frozen
class RawResponse:
    """
    The first response parsed from what a server sent back.

    :ivar status: the status code, or ``None`` when nothing parseable came.
    :ivar headers: lower-cased header name to list of values.
    :ivar body: the body (chunked encoding removed).
    :ivar raw: every byte received.
    """

    status: int | None
    headers: dict[bytes, list[bytes]]
    body: bytes
    raw: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def parse_response(raw: bytes) -> RawResponse:
    """
    Parse the first HTTP/1.1 response in ``raw``.
    """
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1."):
        return RawResponse(None, {}, b"", raw)
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if headers.get(b"transfer-encoding") == [b"chunked"]:
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
    elif b"content-length" in headers:
        body = rest[: int(headers[b"content-length"][0])]
    else:
        body = rest
    return RawResponse(status, headers, body, raw)


class RawClient(Protocol):
    """
    Sends bytes, collects everything until the server closes.

    :ivar closed: fires with all received bytes when the connection closes.
    :ivar closed_at: ``reactor.seconds()`` when it closed.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()
        self.closed_at: float | None = None
        self._pending: Any = None
        self._safety: Any = None

    def connectionMade(self) -> None:
        # A test must never hang on a server that does not close.
        self._safety = reactor.callLater(10, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def trickle(self, data: bytes, interval: float) -> None:
        """
        Send ``data`` one byte per ``interval`` seconds until it is sent or
        the connection closes.
        """
        if not data or self.closed_at is not None:
            return
        self.transport.write(data[:1])
        self._pending = reactor.callLater(interval, self.trickle, data[1:], interval)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed_at = reactor.seconds()
        for call in (self._pending, self._safety):
            if call is not None and call.active():
                call.cancel()
        self.closed.callback(self.received)


def connect(port: int) -> Deferred[RawClient]:
    """
    Connect a :class:`RawClient` to ``127.0.0.1:port``.
    """
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawClient())


@inlineCallbacks
def exchange(port: int, data: bytes) -> Any:
    """
    Send ``data`` on a new connection and wait for the server to close it.

    :return: Deferred firing with a :class:`RawResponse`.
    """
    client = yield connect(port)
    client.transport.write(data)
    raw = yield client.closed
    return parse_response(raw)


def upload_then_read(port: int, head: bytes, chunks: int, size: int) -> tuple[int, bytes, OSError | None]:
    """
    In a thread, with a blocking socket: send ``head``, then ``chunks``
    pieces of ``size`` bytes 5 ms apart without reading (a client uploading
    its body), then read until the server's end.

    :return: the body bytes sent, everything received, and the error that
        stopped the upload or the reading (``None`` if neither failed).
    """
    sent, received, error = 0, b"", None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(head)
            for _ in range(chunks):
                s.sendall(b"x" * size)
                sent += size
                time.sleep(0.005)
        except OSError as e:
            error = e
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                received += data
        except OSError as e:
            error = error or e
    return sent, received, error


def get(port: int, path: bytes, host: bytes | None = b"example.com", method: bytes = b"GET",
        headers: bytes = b"", body: bytes = b"") -> Deferred[RawResponse]:
    """
    One request with ``Connection: close``; ``host=None`` sends no Host.
    """
    request = method + b" " + path + b" HTTP/1.1\r\nConnection: close\r\n"
    if host is not None:
        request += b"Host: " + host + b"\r\n"
    if body:
        request += b"Content-Length: %d\r\n" % (len(body),)
    return exchange(port, request + headers + b"\r\n" + body)


@inlineCallbacks
def settle(timeout: float = 5.0) -> Any:
    """
    Wait until the reactor watches no TCP connection any more (servers close
    first, clients see the close a moment later), so trial finds a clean
    reactor.
    """
    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline and open_connections():
        yield deferLater(reactor, 0.01, lambda: None)


def open_connections() -> set:
    """
    The TCP connections the reactor watches now.
    """
    watched = set(reactor.getReaders()) | set(reactor.getWriters())
    return {selectable for selectable in watched if isinstance(selectable, tcp.Connection)}


@attrs.frozen
class FakeRoute:
    """
    What a router returns: an upstream address.
    """

    host: str
    port: int
    preserve_host: bool = False


@implementer(IRouter)
@attrs.frozen
class FakeRouter:
    """
    An IRouter over a dict of host name to FakeRoute.
    """

    routes: dict

    def route_for(self, server_name: str | None) -> FakeRoute | None:
        return self.routes.get(server_name)


class ServerMixin:
    """
    Starts port-80 sites on 127.0.0.1 and tears them down with every
    connection closed.
    """

    def setUp(self) -> None:
        self.tokens = MemoryChallengeTokenStore(Clock())
        self.router = FakeRouter({})

    def start(self, **overrides: Any) -> tuple[HTTPSite, int]:
        arguments: dict[str, Any] = dict(
            token_store=self.tokens,
            mode="redirect",
            router_getter=lambda: self.router,
            https_port=None,
            max_header_bytes=16384,
            request_timeout=5.0,
            reactor=reactor,
        )
        arguments.update(overrides)
        site = make_http_factory(**arguments)
        return site, self.listen(site)

    def listen(self, site: Any) -> int:
        return listen(self, site)


def listen(test: Any, site: Any) -> int:
    """
    Serve ``site`` on a free 127.0.0.1 port for ``test``; the cleanup stops
    listening and waits until every connection is closed.
    """
    port = reactor.listenTCP(0, site, interface="127.0.0.1")

    @inlineCallbacks
    def stop() -> Any:
        yield port.stopListening()
        yield settle()

    test.addCleanup(stop)
    return port.getHost().port
