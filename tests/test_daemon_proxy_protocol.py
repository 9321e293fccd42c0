"""
Tests for receiving the PROXY protocol: a real daemon whose TLS and HTTP
listeners are ``haproxy:`` endpoints, behind a "load balancer" played by
real sockets that send a PROXY v1 or v2 header first. The client address
the header declares must be the one kongacme logs, sends upstream in its
own PROXY v2 header and puts in ``X-Forwarded-For``.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from kongacme.proxy.proxyproto import V2_SIGNATURE
from tests import tlsclients
from tests.daemonproc import Daemon, ShowsDaemonOutput, free_port
from tests.proxyproto_decoder import parse_header

#: What the load balancer declares: a client and the address it reached.
V1_HEADER = b"PROXY TCP4 198.51.100.7 203.0.113.9 51234 443\r\n"
V1_SOURCE = IPv4Address("TCP", "198.51.100.7", 51234)


def v2_tcp6_header(source: str, sport: int, destination: str, dport: int) -> bytes:
    """A PROXY v2 header as a load balancer writes it (spec 2.2), built by hand: TCP over IPv6."""
    addresses = socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, destination)
    body = addresses + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x21, 0x21]) + struct.pack("!H", len(body)) + body


V2_HEADER = v2_tcp6_header("2001:db8::7", 40000, "2001:db8::1", 443)
V2_SOURCE = IPv6Address("TCP", "2001:db8::7", 40000)


class HeaderRecorder(Protocol):
    """An upstream that decodes kongacme's PROXY header, then answers PING with PONG."""

    def connectionMade(self) -> None:
        self.received = b""
        self.header_done = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.header_done:
            parsed = parse_header(self.received)
            if parsed is None:
                return
            self.factory.headers.append(parsed[0])  # type: ignore[attr-defined]
            self.received = parsed[1]
            self.header_done = True
        if self.received.startswith(b"PING\n"):
            self.transport.write(b"PONG\n")  # type: ignore[union-attr]


class ForwardedRecorder(Resource):
    """An HTTP upstream that records the X-Forwarded-For and X-Real-IP it gets."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes | None, bytes | None]] = []

    def render_GET(self, request: Any) -> bytes:
        self.seen.append((request.getHeader(b"x-forwarded-for"), request.getHeader(b"x-real-ip")))
        return b"upstream ok"


def tls_behind_balancer(port: int, header: bytes, server_name: str) -> bytes:
    """The balancer's PROXY header, then the client's TLS session: PING, and the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(header)
        with tlsclients.client_context().wrap_socket(raw, server_hostname=server_name) as tls:
            tls.sendall(b"PING\n")
            return tls.recv(100)


def http_behind_balancer(port: int, header: bytes, host: str) -> bytes:
    """The balancer's PROXY header, then a plain-HTTP GET; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(header + b"GET /page HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
        return answer


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the daemon closes (or resets) the connection."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(data)
        try:
            while chunk := raw.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


class ProxyProtocolListenerTests(ShowsDaemonOutput, TestCase):
    """
    Tests for ``haproxy:`` TLS and HTTP listeners in a real daemon.

    :cvar workers: the daemon's ``workers`` (the subclass
        :class:`ProxyProtocolWorkersTests` runs with 2).
    """

    timeout = 120
    workers = 1

    @inlineCallbacks
    def setUp(self) -> Any:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        stream = Factory.forProtocol(HeaderRecorder)
        stream.headers = []  # type: ignore[attr-defined]
        self.stream = stream
        stream_port = reactor.listenTCP(0, stream, interface="127.0.0.1")
        self.addCleanup(stream_port.stopListening)
        self.web = ForwardedRecorder()
        web_port = reactor.listenTCP(0, Site(self.web), interface="127.0.0.1")
        self.addCleanup(web_port.stopListening)
        self.tls_port, self.http_port = free_port(), free_port()
        self.daemon = Daemon(
            self.dir,
            {
                "listen": {
                    "tls": [f"haproxy:tcp:{self.tls_port}:interface=127.0.0.1"],
                    "http": [f"haproxy:tcp:{self.http_port}:interface=127.0.0.1"],
                    "admin": [],
                },
                "state_dir": os.path.join(self.dir, "state"),
                "routes": [
                    {"hosts": ["v2.test"], "upstream": f"127.0.0.1:{stream_port.getHost().port}", "proxy_protocol": "v2"},
                    {"hosts": ["web.test"], "upstream": f"127.0.0.1:{web_port.getHost().port}"},
                ],
                "http": {"mode": "proxy"},
                "logging": {"format": "json", "level": "info"},
                "workers": self.workers,
            },
        )
        self.addCleanup(self.daemon.stop)
        yield self.daemon.start(self.tls_port)
        # Both listeners are open once the daemon says it started.
        yield self.daemon.wait_for(" started: ")
        if self.workers > 1:
            yield self.daemon.wait_for("accepting:", count=self.workers)

    @inlineCallbacks
    def test_tls_v1_sender(self) -> Any:
        """
        Behind a PROXY v1 sender, the upstream's PROXY v2 header carries the
        client and destination the sender declared, not the sender's own
        address.
        """
        answer = yield deferToThread(tls_behind_balancer, self.tls_port, V1_HEADER, "v2.test")
        self.assertEqual(answer, b"PONG\n")
        [header] = self.stream.headers
        self.assertEqual((header.version, header.family), (2, "TCP4"))
        self.assertEqual(header.source, V1_SOURCE)
        self.assertEqual(header.destination, IPv4Address("TCP", "203.0.113.9", 443))
        self.assertEqual(header.authority, "v2.test")

    @inlineCallbacks
    def test_tls_v2_sender(self) -> Any:
        """
        Behind a PROXY v2 sender (an IPv6 client here, while the balancer
        reaches kongacme over IPv4), the upstream sees that IPv6 client.
        """
        answer = yield deferToThread(tls_behind_balancer, self.tls_port, V2_HEADER, "v2.test")
        self.assertEqual(answer, b"PONG\n")
        [header] = self.stream.headers
        self.assertEqual((header.version, header.family), (2, "TCP6"))
        self.assertEqual(header.source, V2_SOURCE)
        self.assertEqual(header.destination, IPv6Address("TCP", "2001:db8::1", 443))

    @inlineCallbacks
    def test_http_v1_and_v2_senders(self) -> Any:
        """
        On the port-80 listener in proxy mode, X-Forwarded-For and
        X-Real-IP name the client each sender declared.
        """
        for header in (V1_HEADER, V2_HEADER):
            answer = yield deferToThread(http_behind_balancer, self.http_port, header, "web.test")
            self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])
            self.assertIn(b"upstream ok", answer)
        self.assertEqual(self.web.seen, [(b"198.51.100.7", b"198.51.100.7"), (b"2001:db8::7", b"2001:db8::7")])

    @inlineCallbacks
    def test_logged_client_address(self) -> Any:
        """
        The daemon's log lines name the declared client (IPv6 in brackets,
        canonical form): bytes that are not a ClientHello after the header
        are dropped with a line naming it.
        """
        for header in (V1_HEADER, V2_HEADER):
            yield deferToThread(raw_exchange, self.tls_port, header + b"GET / HTTP/1.1\r\n\r\n")
        yield self.daemon.wait_for("dropping connection", count=2)
        events = [json.loads(line) for line in self.daemon.output.splitlines() if line.startswith("{")]
        dropped = [e["peer"] for e in events if "dropping connection" in json.dumps(e)]
        self.assertEqual(dropped, ["198.51.100.7:51234", "[2001:db8::7]:40000"])

    @inlineCallbacks
    def test_no_header_refused(self) -> Any:
        """
        A connection that does not start with a PROXY header (someone
        reaching the port around the balancer) is closed unanswered and
        nothing goes upstream.
        """
        answer = yield deferToThread(raw_exchange, self.http_port, b"GET /page HTTP/1.1\r\nHost: web.test\r\n\r\n")
        self.assertEqual(answer, b"")
        with self.assertRaises(Exception):
            yield deferToThread(tls_behind_balancer, self.tls_port, b"", "v2.test")
        self.assertEqual((self.stream.headers, self.web.seen), ([], []))


class ProxyProtocolWorkersTests(ProxyProtocolListenerTests):
    """
    Tests for ``haproxy:`` listeners with ``workers: 2``: each worker reads
    the PROXY header on the socket it inherited before the ClientHello, and
    logs and forwards the client it declares.
    """

    workers = 2
