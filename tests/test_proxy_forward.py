"""
Tests for kongacme.proxy.forward.

Units drive one ProxyServerProtocol with string transports and a
MemoryReactorClock; integration tests run the proxy on 127.0.0.1 behind
Twisted's stock TLS (or plain TCP, for half-close, which stock TLS lacks)
with real upstream servers.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from twisted.internet import defer, error, reactor, task, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import directlyProvides
from zope.interface.verify import verifyObject

from kongacme.interfaces import IRouter
from kongacme.proxy._relay import UpstreamProtocol
from kongacme.proxy.forward import ProxyFactory, ProxyServerProtocol
from kongacme.proxy.routes import Route, RouteTable
from tests.proxyhelpers import (
    FakeHello,
    HelloFactory,
    LogCapture,
    Peer,
    PeerFactory,
    TLSPeer,
    make_certificate,
    tls_client_endpoint,
    tls_server_factory,
    unanswered_port,
)
from tests.proxyproto_decoder import parse_header

NS = "kongacme.proxy.forward"
CLIENT = IPv4Address("TCP", "203.0.113.5", 40000)
LISTENER = IPv4Address("TCP", "192.0.2.1", 443)


class HalfCloseTransport(StringTransport):
    """A StringTransport that records loseWriteConnection, like a TCP socket."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class ProxyFactoryTests(unittest.SynchronousTestCase):
    """
    Tests for ProxyFactory.
    """

    def test_router_must_provide_irouter(self) -> None:
        """
        The router is checked on construction and when a reload replaces it.
        """
        self.assertRaises(TypeError, ProxyFactory, object(), MemoryReactorClock())
        factory = ProxyFactory(RouteTable(), MemoryReactorClock())
        with self.assertRaises(TypeError):
            factory.router = object()
        replacement = RouteTable()
        factory.router = replacement
        self.assertIs(factory.router, replacement)

    def test_endpoints(self) -> None:
        """
        IP literals get plain TCP endpoints (no name resolution); host names
        get HostnameEndpoint.
        """
        factory = ProxyFactory(RouteTable(), MemoryReactorClock(), connect_timeout=2.5)
        self.assertIsInstance(factory.endpoint_for(Route("10.0.0.1", 80)), TCP4ClientEndpoint)
        self.assertIsInstance(factory.endpoint_for(Route("::1", 80)), TCP6ClientEndpoint)
        self.assertIsInstance(factory.endpoint_for(Route("[::1]", 80)), TCP6ClientEndpoint)
        self.assertIsInstance(factory.endpoint_for(Route("app.internal", 80)), HostnameEndpoint)

    def test_alpn_for_follows_router(self) -> None:
        """
        alpn_for answers from the current router, so it follows reloads.
        """
        factory = ProxyFactory(RouteTable([(["a.org"], Route("h", 1, ("h2", "http/1.1")))]), MemoryReactorClock())
        self.assertEqual(factory.alpn_for("a.org"), (b"h2", b"http/1.1"))
        self.assertEqual(factory.alpn_for("b.org"), ())
        factory.router = RouteTable([], default=Route("h", 1))
        self.assertEqual(factory.alpn_for("a.org"), (b"http/1.1",))

    def test_protocol_interfaces(self) -> None:
        """
        The protocols built are handshake listeners and half-closeable.
        """
        protocol = ProxyFactory(RouteTable(), MemoryReactorClock()).buildProtocol(CLIENT)
        self.assertIsInstance(protocol, ProxyServerProtocol)
        self.assertTrue(verifyObject(IHandshakeListener, protocol))
        self.assertTrue(verifyObject(IHalfCloseableProtocol, protocol))


class ProxyProtocolUnitTests(unittest.SynchronousTestCase):
    """
    Tests for ProxyServerProtocol against string transports and a fake
    reactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.route = Route("10.1.0.1", 8080)
        self.router = RouteTable([(["app.example.com"], self.route)], default=None)
        self.factory = ProxyFactory(self.router, self.reactor, connect_timeout=3.0, idle_timeout=60.0)
        self.logs = LogCapture(NS).start(self)

    def connect_client(self, server_name: str | None = "app.example.com", transport: Any = None, hello: bool = True):
        protocol = self.factory.buildProtocol(CLIENT)
        if hello:
            protocol.client_hello = FakeHello(server_name)
        client = transport if transport is not None else HalfCloseTransport(LISTENER, CLIENT)
        protocol.makeConnection(client)
        protocol.handshakeCompleted()
        return protocol, client

    def accept_upstream(self, index: int = -1) -> tuple[Any, StringTransport]:
        """Complete the pending upstream connection attempt."""
        host, port, wrapping, timeout, _ = self.reactor.tcpClients[index]
        upstream = wrapping.buildProtocol(IPv4Address("TCP", host, port))
        transport = HalfCloseTransport(IPv4Address("TCP", "10.9.9.9", 51000), IPv4Address("TCP", host, port))
        upstream.makeConnection(transport)
        return upstream, transport

    def test_connects_with_timeout(self) -> None:
        """
        After the handshake the route's upstream is dialled with the
        configured connect timeout.
        """
        self.connect_client()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        host, port, _, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("10.1.0.1", 8080, 3.0))

    def test_no_connect_before_handshake(self) -> None:
        """
        Nothing is dialled until handshakeCompleted.
        """
        protocol = self.factory.buildProtocol(CLIENT)
        protocol.client_hello = FakeHello("app.example.com")
        protocol.makeConnection(HalfCloseTransport(LISTENER, CLIENT))
        self.assertEqual(self.reactor.tcpClients, [])

    def test_buffered_until_connected(self) -> None:
        """
        Bytes read before the upstream answers are kept, the client paused;
        once connected they are written in order and the client resumed.
        """
        protocol, client = self.connect_client()
        self.assertEqual(client.producerState, "paused")
        protocol.dataReceived(b"one ")
        protocol.dataReceived(b"two")
        upstream, up = self.accept_upstream()
        self.assertEqual(up.value(), b"one two")
        self.assertEqual(client.producerState, "producing")
        protocol.dataReceived(b" three")
        self.assertEqual(up.value(), b"one two three")
        upstream.dataReceived(b"answer")
        self.assertEqual(client.value(), b"answer")

    def test_flow_control_registered(self) -> None:
        """
        Each transport has the other side registered as a streaming
        producer; pausing it pauses the other side's reading.
        """
        protocol, client = self.connect_client()
        upstream, up = self.accept_upstream()
        self.assertTrue(up.streaming and client.streaming)
        up.producer.pauseProducing()
        self.assertEqual(client.producerState, "paused")
        up.producer.resumeProducing()
        self.assertEqual(client.producerState, "producing")
        client.producer.pauseProducing()
        self.assertEqual(up.producerState, "paused")

    def test_proxy_v1_header_first(self) -> None:
        """
        With proxy_protocol v1 the upstream first gets a PROXY line naming
        the client's address and the address it connected to.
        """
        self.factory.router = RouteTable([], default=Route("10.1.0.1", 8080, proxy_protocol="v1"))
        protocol, client = self.connect_client()
        protocol.dataReceived(b"hello")
        upstream, up = self.accept_upstream()
        self.assertEqual(up.value(), b"PROXY TCP4 203.0.113.5 192.0.2.1 40000 443\r\nhello")

    def test_proxy_v2_header_without_alpn(self) -> None:
        """
        With proxy_protocol v2 and no negotiated ALPN, only the SNI TLV is
        sent.
        """
        self.factory.router = RouteTable([], default=Route("10.1.0.1", 8080, proxy_protocol="v2"))
        self.connect_client()
        upstream, up = self.accept_upstream()
        parsed, rest = parse_header(up.value())
        self.assertEqual((parsed.source, parsed.destination), (CLIENT, LISTENER))
        self.assertEqual((parsed.authority, parsed.alpn, rest), ("app.example.com", None, b""))

    def test_connect_timeout(self) -> None:
        """
        An upstream that times out closes the client and logs one warning
        naming the upstream, the server name and the reason.
        """
        protocol, client = self.connect_client()
        _, _, wrapping, _, _ = self.reactor.tcpClients[0]
        wrapping.clientConnectionFailed(self.reactor.connectors[0], Failure(error.TimeoutError()))
        self.assertTrue(client.disconnecting)
        self.assertEqual(len(self.logs.events), 1)
        event = self.logs.events[0]
        self.assertEqual(event["log_format"], "upstream {upstream} for {server_name} failed: {reason}")
        self.assertEqual((event["upstream"], event["server_name"]), ("10.1.0.1:8080", "app.example.com"))
        self.assertIn("timeout", event["reason"])

    def test_no_route(self) -> None:
        """
        A server name without a route closes the client with one log line
        and dials nothing.
        """
        protocol, client = self.connect_client("other.org")
        self.assertTrue(client.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(len(self.logs.events), 1)
        self.assertEqual(self.logs.events[0]["server_name"], "other.org")

    def test_no_client_hello(self) -> None:
        """
        Without client_hello the server name is None, which takes the
        default route.
        """
        self.factory.router = RouteTable([], default=Route("10.2.0.1", 9000))
        protocol, _ = self.connect_client(hello=False)
        self.assertIsNone(protocol.server_name)
        self.assertEqual(self.reactor.tcpClients[0][:2], ("10.2.0.1", 9000))

    def test_reload_keeps_existing(self) -> None:
        """
        Replacing the router sends new connections to the new upstream while
        existing ones keep theirs.
        """
        old, _ = self.connect_client()
        _, up_old = self.accept_upstream()
        self.factory.router = RouteTable([], default=Route("10.3.0.1", 7000))
        new, _ = self.connect_client()
        _, up_new = self.accept_upstream()
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("10.3.0.1", 7000))
        old.dataReceived(b"old")
        new.dataReceived(b"new")
        self.assertEqual((up_old.value(), up_new.value()), (b"old", b"new"))
        self.assertEqual((old.route, new.route), (self.route, Route("10.3.0.1", 7000)))

    def test_client_gone_while_connecting(self) -> None:
        """
        A client that leaves while the upstream is being dialled cancels the
        attempt, quietly.
        """
        protocol, client = self.connect_client()
        protocol.connectionLost(Failure(error.ConnectionLost()))
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.logs.events, [])

    def test_idle_timeout(self) -> None:
        """
        Only idle_timeout seconds without a byte either way close (abort)
        both sides, with one log line; traffic in either direction resets
        the clock.
        """
        protocol, client = self.connect_client()
        upstream, up = self.accept_upstream()
        self.reactor.advance(59)
        protocol.dataReceived(b"x")
        self.reactor.advance(59)
        upstream.dataReceived(b"y")
        self.reactor.advance(59)
        self.assertFalse(client.disconnecting or up.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(client.disconnected and up.disconnected)
        self.assertEqual(len(self.logs.events), 1)
        self.assertIn("idle", self.logs.events[0]["log_format"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_client_half_close(self) -> None:
        """
        The client's half-close becomes loseWriteConnection on the upstream
        (producer unregistered first); answers still reach the client.
        """
        protocol, client = self.connect_client()
        upstream, up = self.accept_upstream()
        protocol.readConnectionLost()
        self.assertTrue(up.write_closed)
        self.assertIsNone(up.producer)
        self.assertFalse(client.disconnecting or up.disconnecting)
        upstream.dataReceived(b"late answer")
        self.assertEqual(client.value(), b"late answer")
        upstream.readConnectionLost()
        self.assertTrue(client.write_closed)
        self.assertTrue(client.disconnecting and up.disconnecting)

    def test_half_close_before_connected(self) -> None:
        """
        A client that half-closes while the upstream is still being dialled
        gets its bytes and its half-close delivered once it connects.
        """
        protocol, client = self.connect_client()
        protocol.dataReceived(b"all of it")
        protocol.readConnectionLost()
        upstream, up = self.accept_upstream()
        self.assertEqual(up.value(), b"all of it")
        self.assertTrue(up.write_closed)

    def test_upstream_half_close(self) -> None:
        """
        The upstream's half-close becomes loseWriteConnection on the client;
        the client can still send.
        """
        protocol, client = self.connect_client()
        upstream, up = self.accept_upstream()
        upstream.readConnectionLost()
        self.assertTrue(client.write_closed)
        self.assertIsNone(client.producer)
        protocol.dataReceived(b"more")
        self.assertEqual(up.value(), b"more")
        self.assertFalse(client.disconnecting)

    def test_half_close_fallback(self) -> None:
        """
        A client transport without loseWriteConnection is closed instead.
        """
        protocol, client = self.connect_client(transport=StringTransport(LISTENER, CLIENT))
        upstream, up = self.accept_upstream()
        upstream.dataReceived(b"bye")
        upstream.readConnectionLost()
        self.assertEqual(client.value(), b"bye")
        self.assertTrue(client.disconnecting)

    def test_upstream_lost(self) -> None:
        """
        When the upstream connection ends, the client is closed.
        """
        protocol, client = self.connect_client()
        upstream, up = self.accept_upstream()
        upstream.connectionLost(Failure(error.ConnectionDone()))
        self.assertTrue(client.disconnecting)
        self.assertEqual(self.logs.events, [])

    def test_unexpected_error_contained(self) -> None:
        """
        An exception inside the proxy is logged once and the connection
        aborted; nothing propagates to the caller (the reactor).
        """

        class Broken:
            def route_for(self, server_name: str | None) -> Route:
                raise RuntimeError("boom")

        broken = Broken()
        directlyProvides(broken, IRouter)
        self.factory.router = broken
        protocol, client = self.connect_client()
        self.assertTrue(client.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


# -- integration: real sockets on 127.0.0.1 ----------------------------------

MB = 1024 * 1024
BIG = 50 * MB
_CERT: list[Any] = []


def certificate() -> Any:
    if not _CERT:
        _CERT.append(make_certificate(["app.example.com", "*.example.com"]))
    return _CERT[0]


async def wait_until(predicate: Any, timeout: float = 10.0, step: float = 0.02) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await task.deferLater(reactor, step, lambda: None)


async def settled(read: Any, quiet: float = 0.5, timeout: float = 20.0) -> int:
    """Wait until ``read()`` has not changed for ``quiet`` seconds; return it."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"still changing after {timeout}s: {read()}")
        await task.deferLater(reactor, 0.05, lambda: None)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


def within(d: defer.Deferred, seconds: float = 10.0) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)


class IntegrationMixin:
    """
    Starts upstreams, a proxy (behind stock TLS or plain TCP) and clients,
    and tears every connection down after the test.
    """

    def setUp(self) -> None:
        self.logs = LogCapture(NS).start(self)
        self.peers: list[Any] = []
        self.addCleanup(self.close_everything)

    async def close_everything(self) -> None:
        for peer in self.peers:
            if peer.transport is not None and not peer.lost_d.called:
                peer.transport.abortConnection()
        await within(defer.gatherResults([p.lost_d for p in self.peers], consumeErrors=True))
        # The proxy's own sockets close as they notice; wait for them so the
        # reactor is clean.
        await wait_until(
            lambda: not [s for s in reactor.getReaders() + reactor.getWriters() if isinstance(s, tcp.Connection)]
        )

    def upstream(self, **kwargs: Any) -> tuple[PeerFactory, int]:
        factory = PeerFactory(**kwargs)
        original = factory.buildProtocol

        def build(addr: Any) -> Any:
            peer = original(addr)
            self.peers.append(peer)
            return peer

        factory.buildProtocol = build  # type: ignore[method-assign]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    def proxy(self, table: RouteTable, server_name: str | None = "app.example.com", tls: bool = True, **kwargs: Any):
        proxy_factory = ProxyFactory(table, reactor, **kwargs)
        hello = HelloFactory(proxy_factory, server_name, plain=not tls)
        wrapped = tls_server_factory(certificate(), hello) if tls else hello
        port = reactor.listenTCP(0, wrapped, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return hello, port.getHost().port

    async def client(self, port: int, tls: bool = True, **kwargs: Any) -> Any:
        if tls:
            endpoint = tls_client_endpoint(reactor, port, "app.example.com", certificate())
        else:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        peer = await within(endpoint.connect(PeerFactory(TLSPeer if tls else Peer, **kwargs)))
        self.peers.append(peer)
        if tls:
            await within(peer.handshake_d)
        return peer


class RelayTests(IntegrationMixin, unittest.TestCase):
    """
    Tests for ProxyServerProtocol relaying bytes between real sockets.
    """

    async def test_50mb_each_way_over_tls(self) -> None:
        """
        50 MB each way, at the same time, arrive intact (same SHA-256).
        """
        up_data, down_data = os.urandom(BIG), os.urandom(BIG)
        upstreams, up_port = self.upstream(keep=False, on_connect=lambda p: p.send(down_data))
        _, proxy_port = self.proxy(RouteTable([(["app.example.com"], Route("127.0.0.1", up_port))]))
        client = await self.client(proxy_port, keep=False)
        client.send(up_data)
        upstream = await within(upstreams.connected.get())
        await within(defer.gatherResults([client.wait_for(BIG), upstream.wait_for(BIG)]), 60)
        self.assertEqual(upstream.count, BIG)
        self.assertEqual(upstream.sha256.digest(), hashlib.sha256(up_data).digest())
        self.assertEqual(client.count, BIG)
        self.assertEqual(client.sha256.digest(), hashlib.sha256(down_data).digest())

    async def test_client_half_close(self) -> None:
        """
        A client that finishes sending (half-close) still gets the whole
        answer, which the upstream sends after seeing the EOF; then both
        connections close.
        """
        upstreams, up_port = self.upstream()
        hello, proxy_port = self.proxy(RouteTable([], Route("127.0.0.1", up_port)), tls=False)
        client = await self.client(proxy_port, tls=False)
        client.transport.write(b"request")
        client.transport.loseWriteConnection()
        upstream = await within(upstreams.connected.get())
        await within(upstream.eof_d)
        self.assertTrue(upstream.half_closed)
        self.assertEqual(bytes(upstream.received), b"request")
        upstream.transport.write(b"answer after the client's EOF")
        upstream.transport.loseWriteConnection()
        await within(client.eof_d)
        self.assertTrue(client.half_closed)
        self.assertEqual(bytes(client.received), b"answer after the client's EOF")
        await within(defer.gatherResults([client.lost_d, upstream.lost_d]))

    async def test_upstream_half_close(self) -> None:
        """
        An upstream that finishes first (half-close) lets the client keep
        sending; then both connections close.
        """

        def banner(peer: Any) -> None:
            peer.transport.write(b"banner")
            peer.transport.loseWriteConnection()

        upstreams, up_port = self.upstream(on_connect=banner)
        _, proxy_port = self.proxy(RouteTable([], Route("127.0.0.1", up_port)), tls=False)
        client = await self.client(proxy_port, tls=False)
        await within(client.eof_d)
        self.assertTrue(client.half_closed)
        self.assertEqual(bytes(client.received), b"banner")
        upstream = await within(upstreams.connected.get())
        client.transport.write(b"sent after the upstream's EOF")
        client.transport.loseWriteConnection()
        await within(upstream.eof_d)
        self.assertTrue(upstream.half_closed)
        self.assertEqual(bytes(upstream.received), b"sent after the upstream's EOF")
        await within(defer.gatherResults([client.lost_d, upstream.lost_d]))

    async def test_upstream_socket_has_no_delay(self) -> None:
        """
        The proxy's connection to the upstream sends without Nagle's delay
        (TCP_NODELAY), like its client side.
        """
        upstreams, up_port = self.upstream()
        _, proxy_port = self.proxy(RouteTable([(["app.example.com"], Route("127.0.0.1", up_port))]))
        client = await self.client(proxy_port)
        client.transport.write(b"ping")
        await within(upstreams.connected.get())

        def upstream_sides() -> list[Any]:
            return [s for s in reactor.getReaders() if isinstance(getattr(s, "protocol", None), UpstreamProtocol)]

        await wait_until(upstream_sides)
        self.assertEqual([side.getTcpNoDelay() for side in upstream_sides()], [True])

    async def test_proxy_v1(self) -> None:
        """
        With proxy_protocol v1 the upstream reads a PROXY line with the
        client's address and the proxy's listening address, then the bytes.
        """
        upstreams, up_port = self.upstream()
        table = RouteTable([(["app.example.com"], Route("127.0.0.1", up_port, proxy_protocol="v1"))])
        _, proxy_port = self.proxy(table)
        client = await self.client(proxy_port)
        client.transport.write(b"GET / HTTP/1.1\r\n\r\n")
        upstream = await within(upstreams.connected.get())
        await wait_until(lambda: bytes(upstream.received).endswith(b"\r\n\r\n"))
        parsed, rest = parse_header(bytes(upstream.received))
        self.assertEqual((parsed.version, parsed.family), (1, "TCP4"))
        self.assertEqual(parsed.source, IPv4Address("TCP", "127.0.0.1", client.transport.getHost().port))
        self.assertEqual(parsed.destination, IPv4Address("TCP", "127.0.0.1", proxy_port))
        self.assertEqual(rest, b"GET / HTTP/1.1\r\n\r\n")

    async def test_proxy_v2(self) -> None:
        """
        With proxy_protocol v2 the upstream reads a binary header with the
        addresses, the SNI host and the ALPN protocol negotiated with the
        client.
        """
        upstreams, up_port = self.upstream()
        table = RouteTable([(["*.example.com"], Route("127.0.0.1", up_port, ("h2", "http/1.1"), "v2"))])
        _, proxy_port = self.proxy(table)
        client = await self.client(proxy_port)
        self.assertEqual(client.negotiated, b"h2")
        client.transport.write(b"PRI * HTTP/2.0")
        upstream = await within(upstreams.connected.get())
        await wait_until(lambda: bytes(upstream.received).endswith(b"HTTP/2.0"))
        parsed, rest = parse_header(bytes(upstream.received))
        self.assertEqual((parsed.version, parsed.command, parsed.family), (2, "PROXY", "TCP4"))
        self.assertEqual(parsed.source, IPv4Address("TCP", "127.0.0.1", client.transport.getHost().port))
        self.assertEqual(parsed.destination, IPv4Address("TCP", "127.0.0.1", proxy_port))
        self.assertEqual((parsed.authority, parsed.alpn), ("app.example.com", b"h2"))
        self.assertEqual(rest, b"PRI * HTTP/2.0")


class FailureTests(IntegrationMixin, unittest.TestCase):
    """
    Tests for ProxyServerProtocol when the upstream or the route is missing.
    """

    async def test_refused(self) -> None:
        """
        An upstream that refuses the connection gets the client closed
        promptly, with one log line.
        """
        port = reactor.listenTCP(0, PeerFactory(), interface="127.0.0.1")
        dead = port.getHost().port
        await port.stopListening()
        _, proxy_port = self.proxy(RouteTable([], Route("127.0.0.1", dead)))
        started = time.monotonic()
        client = await self.client(proxy_port)
        await within(client.lost_d, 5)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(len(self.logs.events), 1)
        self.assertIn("failed", self.logs.events[0]["log_format"])
        self.assertEqual(self.logs.events[0]["upstream"], f"127.0.0.1:{dead}")

    async def test_connect_timeout(self) -> None:
        """
        An upstream that never answers the SYN (its accept queue is full)
        gets the client closed after connect_timeout, with one log line.
        """
        full = unanswered_port(self)
        await task.deferLater(reactor, 0.1, lambda: None)
        _, proxy_port = self.proxy(RouteTable([], Route("127.0.0.1", full)), connect_timeout=0.5)
        started = time.monotonic()
        client = await self.client(proxy_port)
        await within(client.lost_d, 5)
        self.assertGreater(time.monotonic() - started, 0.4)
        self.assertEqual(len(self.logs.events), 1)
        self.assertIn("timeout", self.logs.events[0]["reason"].lower())

    async def test_no_route(self) -> None:
        """
        A server name with no route and no default closes the client at
        once, with one log line.
        """
        _, proxy_port = self.proxy(RouteTable([(["other.org"], Route("127.0.0.1", 1))]), server_name="app.example.com")
        client = await self.client(proxy_port)
        await within(client.lost_d, 5)
        self.assertEqual(len(self.logs.events), 1)
        self.assertIn("no route", self.logs.events[0]["log_format"])


class FlowControlTests(IntegrationMixin, unittest.TestCase):
    """
    Tests for ProxyServerProtocol's flow control: a peer that stops reading
    stops the proxy from reading the other side.
    """

    #: What may sit in kernel buffers (the proxy's send buffer autotunes up
    #: to tcp_wmem's 4 MiB on Linux) plus the proxy's own small buffers.
    BOUND = 8 * MB

    async def test_upstream_not_reading(self) -> None:
        """
        When the upstream never reads, the proxy stops reading the client:
        of 50 MB sent, it accepts a bounded amount and then nothing more.
        """
        upstreams, up_port = self.upstream(keep=False, on_connect=lambda p: p.transport.pauseProducing())
        hello, proxy_port = self.proxy(RouteTable([], Route("127.0.0.1", up_port)))
        client = await self.client(proxy_port, keep=False)
        client.send(b"\0" * BIG)
        proxy = hello.built[0]
        accepted = await settled(lambda: proxy.received_from_client)
        self.assertGreater(accepted, 0)
        self.assertLess(accepted, self.BOUND)
        self.assertLess(client.sender.offset, BIG)

    async def test_client_not_reading(self) -> None:
        """
        When the client never reads, the proxy stops reading the upstream:
        of 50 MB sent, it accepts a bounded amount and then nothing more.
        """
        upstreams, up_port = self.upstream(keep=False, on_connect=lambda p: p.send(b"\0" * BIG))
        hello, proxy_port = self.proxy(RouteTable([], Route("127.0.0.1", up_port)))
        client = await self.client(proxy_port, keep=False)
        client.transport.pauseProducing()
        proxy = hello.built[0]
        accepted = await settled(lambda: proxy.received_from_upstream)
        self.assertGreater(accepted, 0)
        self.assertLess(accepted, self.BOUND)
