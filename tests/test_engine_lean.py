"""
Tests for kongacme.engine (the lean engine): real sockets on 127.0.0.1,
real TLS clients (Twisted's and Python's ``ssl``), real upstreams; the
fast path, and the connections it hands to the Twisted path.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl as stdlib_ssl
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import defer, reactor, ssl, task
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from kongacme.connlimit import Budget, ConnectionLimiter
from kongacme.engine.connection import HelloReader
from kongacme.engine.lean import EARLY_HELLO_CREDIT, EARLY_HELLO_PROBE, LeanEngine, served_by_engine
from kongacme.engine.loop import COMPILED, EventLoop
from kongacme.engine.relay import MAX_PENDING, Relay
from kongacme.engine.sockets import READ_SIZE
from kongacme.engine import upstream as upstream_side
from kongacme.proxy.forward import ProxyFactory
from kongacme.proxy.routes import Route, RouteTable
from kongacme.testing import TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.tls.context import ContextBuilder
from kongacme.tls.fallback import generate_self_signed
from kongacme.tls.protocol import TLSServerFactory
from kongacme.tls.session import PyOpenSSLSession
from tests.clienthellos import client_hello_bytes
from tests.proxyhelpers import ALPN, LogCapture, Peer, PeerFactory, TLSPeer, unanswered_port
from tests.test_proxy_forward import IntegrationMixin, settled, wait_until, within
from tests.tlsbinding import session_class, use_binding
from tests.tlsclients import client_context, half_close_blocking, handshake_blocking, memory_tls, read_until_end

MB = 1024 * 1024

_CA = TestCA.create()
_CERT = _CA.issue(["app.example.com", "*.example.com"])
_FALLBACK = generate_self_signed()
_TRUST = ssl.Certificate.loadPEM(_CA.certificate.public_bytes(Encoding.PEM))


class Echo(Peer):
    """An upstream that sends back what it reads, and half-closes after the client's EOF."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.half_closed = True
        self.eof_d.callback(self)
        self.transport.loseWriteConnection()


class HoldingGate:
    """An ``IHandshakeGate`` that holds every name until :meth:`release`."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []
        self.waiting: list[defer.Deferred] = []

    def before_handshake(self, server_name: str | None) -> defer.Deferred | None:
        self.asked.append(server_name)
        waiting: defer.Deferred = defer.Deferred()
        self.waiting.append(waiting)
        return waiting

    def release(self) -> None:
        for waiting in self.waiting:
            waiting.callback(None)


class Refusing:
    """tls-alpn-01 responder with no pending challenge (``session_for`` answers ``None``)."""

    def __init__(self) -> None:
        self.asked = 0

    def session_for(self, hello: Any, peer: str) -> defer.Deferred:
        self.asked += 1
        return defer.succeed(None)


class LeanMixin(IntegrationMixin):
    """
    A TLS listener served by the lean engine, upstreams and clients; all
    closed after each test. ``binding``: the TLS binding of every
    connection's session.
    """

    binding = "pyopenssl"
    compiled: Any = COMPILED

    def setUp(self) -> None:
        super().setUp()
        self.engine_logs = LogCapture("kongacme.engine.relay").start(self)
        self.hello_logs = LogCapture("kongacme.engine.connection").start(self)
        self.tls_logs = LogCapture("kongacme.tls.protocol").start(self)
        self.proxy_logs = self.logs

    async def close_everything(self) -> None:
        await super().close_everything()
        if getattr(self, "lean_port", None) is not None:
            await self.lean_port.stopListening()
        engine = getattr(self, "engine", None)
        if engine is not None:
            await wait_until(lambda: not engine.loop.handlers)
            engine.loop.stop()

    def listener(
        self, table: RouteTable, gate: Any = None, handshake_timeout: float = 10.0, cap: int = 100, **kwargs: Any
    ) -> int:
        """The lean engine on a TLS port (limits counted); returns the port number."""
        cache = CertificateCache(_FALLBACK)
        cache.put(_CERT)
        self.cache = cache
        self.proxy_factory = ProxyFactory(table, reactor, **kwargs)
        builder = ContextBuilder(reactor)
        use_binding(builder, self.binding)
        self.tls_factory = TLSServerFactory(
            cache, builder, self.proxy_factory, reactor,
            alpn_for=self.proxy_factory.alpn_for, gate=gate, handshake_timeout=handshake_timeout,
        )
        budget = Budget(1024, 64, 100, {"tls": cap, "http": 10, "admin": 10}, {"tls": 2, "http": 1, "admin": 1})
        self.limiter = ConnectionLimiter(reactor, budget)
        self.addCleanup(self.limiter.stop)
        self.limit = self.limiter.listener("tls")
        serving = self.limit.wrap(self.tls_factory)
        port = reactor.listenTCP(0, serving, interface="127.0.0.1")
        self.engine = LeanEngine(reactor, self.tls_factory, self.proxy_factory, compiled=self.compiled)
        self.lean_port = self.engine.take("tcp:0", port, serving, self.limit)
        self.limit.track(self.lean_port)
        return port.getHost().port

    async def client(self, port: int, server_name: str = "app.example.com", **kwargs: Any) -> Any:
        options = ssl.optionsForClientTLS(server_name, trustRoot=_TRUST, acceptableProtocols=ALPN)
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        peer = await within(endpoint.connect(PeerFactory(TLSPeer, **kwargs)))
        self.peers.append(peer)
        await within(peer.handshake_d)
        return peer


class FastPathTests(LeanMixin, unittest.TestCase):
    """
    Tests for the lean engine's fast path: a cached certificate and a route
    to an IP literal.
    """

    async def test_handshake_and_proxy(self) -> None:
        """
        A Python ``ssl`` client gets the cached certificate, and its bytes
        come back from an echoing upstream; counted as ``cached``, served
        by the engine (nothing handed over), the limit given back.
        """
        _, up_port = self.upstream(peer_class=Echo)
        port = self.listener(RouteTable([(["app.example.com"], Route("127.0.0.1", up_port))]))
        result = await deferToThread(handshake_blocking, port, "app.example.com", client_context(), b"hello engine")
        self.assertEqual(result["echo"], b"hello engine")
        self.assertIn("app.example.com", result["names"])
        self.assertEqual(result["version"], "TLSv1.3")
        await wait_until(lambda: self.engine.served == 1)
        self.assertEqual(self.tls_factory.handshakes["cached"], 1)
        self.assertEqual(self.engine.handed_over, 0)
        self.assertEqual(self.limit.in_use, 0)

    async def test_session_binding(self) -> None:
        """
        The relay's TLS session is of the binding the test class chose
        (so each class's tests run the one they name).
        """
        upstreams, up_port = self.upstream()
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        client = await self.client(port)
        await within(upstreams.connected.get())
        relays = list({id(h): h for h in self.engine.loop.handlers.values() if isinstance(h, Relay)}.values())
        self.assertEqual(len(relays), 1)
        self.assertIs(type(relays[0]._tls), session_class(self.binding))
        client.transport.abortConnection()
        await wait_until(lambda: self.engine.served == 1)

    async def test_tls12_binding(self) -> None:
        """
        A client capped at TLS 1.2 is served on pyOpenSSL unless busy
        certificates are on the own binding, whose contexts keep no session
        cache (kongacme.tls.context.session_for); the next, offering TLS
        1.3, on the class's binding.
        """
        _, up_port = self.upstream(peer_class=Echo)
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        builder = self.tls_factory.builder
        real = builder.session_for
        made = []

        def recording(*args: Any) -> Any:
            session = real(*args)
            made.append(type(session))
            return session

        builder.session_for = recording  # type: ignore[method-assign]
        context = client_context()
        context.maximum_version = stdlib_ssl.TLSVersion.TLSv1_2
        result = await deferToThread(handshake_blocking, port, "app.example.com", context, b"twelve")
        self.assertEqual((result["version"], result["echo"]), ("TLSv1.2", b"twelve"))
        result = await deferToThread(handshake_blocking, port, "app.example.com", client_context(), b"thirteen")
        self.assertEqual((result["version"], result["echo"]), ("TLSv1.3", b"thirteen"))
        expected = session_class(self.binding)
        self.assertEqual(made, [expected if self.binding in ("openssl", "shared") else PyOpenSSLSession, expected])

    async def test_resumed(self) -> None:
        """A client's TLS 1.3 session ticket resumes its next connection."""
        _, up_port = self.upstream(peer_class=Echo)
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        context = client_context()
        first = await deferToThread(handshake_blocking, port, "app.example.com", context, b"one")
        second = await deferToThread(handshake_blocking, port, "app.example.com", context, b"two", first["session"])
        self.assertEqual((first["reused"], second["reused"], second["echo"]), (False, True, b"two"))

    async def test_counted_when_relay_starts(self) -> None:
        """
        A connection the engine serves is counted on the ``lean`` path when
        its relay starts, while it is still open (``served`` only once it
        ends), and not again when it ends.
        """
        upstreams, up_port = self.upstream()
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        client = await self.client(port)
        await within(upstreams.connected.get())
        self.assertEqual(self.engine.connections(), {"lean": 1, "handed_over": 0})
        self.assertEqual(self.engine.served, 0)
        client.transport.abortConnection()
        await wait_until(lambda: self.engine.served == 1)
        self.assertEqual(self.engine.connections(), {"lean": 1, "handed_over": 0})

    async def test_alpn_per_route(self) -> None:
        """Each route's ALPN list is what the client gets to choose from."""
        _, up_port = self.upstream(peer_class=Echo)
        port = self.listener(
            RouteTable([
                (["h2.example.com"], Route("127.0.0.1", up_port, ("h2",))),
                (["h1.example.com"], Route("127.0.0.1", up_port, ("http/1.1",))),
                (["none.example.com"], Route("127.0.0.1", up_port, ())),
            ])
        )
        context = client_context(alpn=["h2", "http/1.1"])
        chosen = []
        for name in ("h2.example.com", "h1.example.com", "none.example.com"):
            result = await deferToThread(handshake_blocking, port, name, context)
            chosen.append(result["alpn"])
        self.assertEqual(chosen, ["h2", "http/1.1", None])
        self.assertEqual(self.engine.handed_over, 0)

    async def test_both_ways_intact(self) -> None:
        """8 MB each way at the same time arrive intact (same SHA-256)."""
        up_data, down_data = os.urandom(8 * MB), os.urandom(8 * MB)
        upstreams, up_port = self.upstream(keep=False, on_connect=lambda p: p.send(down_data))
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        client = await self.client(port, keep=False)
        client.send(up_data)
        upstream = await within(upstreams.connected.get())
        await within(defer.gatherResults([client.wait_for(len(down_data)), upstream.wait_for(len(up_data))]), 60)
        self.assertEqual(upstream.sha256.digest(), hashlib.sha256(up_data).digest())
        self.assertEqual(client.sha256.digest(), hashlib.sha256(down_data).digest())

    async def test_client_half_close(self) -> None:
        """
        A client's close_notify, and separately its bare FIN, reach the
        upstream as a half-close; the upstream's answer after it (and its
        own half-close) still reaches the client.
        """
        upstreams, up_port = self.upstream(peer_class=Echo)
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        for mode in ("close_notify", "fin"):
            payload = os.urandom(100_000)
            answer = await deferToThread(half_close_blocking, port, "app.example.com", payload, mode)
            upstream = await within(upstreams.connected.get())
            await within(upstream.eof_d)
            self.assertTrue(upstream.half_closed, mode)
            self.assertEqual(bytes(upstream.received), payload, mode)
            self.assertEqual(answer, payload, mode)
        await wait_until(lambda: self.engine.served == 2)

    async def test_upstream_half_close(self) -> None:
        """
        The upstream's FIN reaches the client as close_notify (the client
        reads a clean end of stream, not a bare EOF), and the client may go
        on sending; its half-close then ends both.
        """

        def banner(peer: Any) -> None:
            peer.transport.write(b"banner")
            peer.transport.loseWriteConnection()

        upstreams, up_port = self.upstream(on_connect=banner)
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        outcome = await deferToThread(_read_to_close_then_send, port, b"after the banner")
        self.assertEqual(outcome, (b"banner", "close_notify"))
        upstream = await within(upstreams.connected.get())
        await within(upstream.eof_d)
        self.assertEqual(bytes(upstream.received), b"after the banner")
        await wait_until(lambda: self.engine.served == 1)

    async def test_client_reset(self) -> None:
        """A client that resets the connection mid-stream gets its upstream a FIN (not a reset), as on the Twisted path."""
        upstreams, up_port = self.upstream()
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        client = await self.client(port)
        client.transport.write(b"partial")
        upstream = await within(upstreams.connected.get())
        await within(upstream.wait_for(7))
        client.transport.abortConnection()
        await within(upstream.eof_d)
        self.assertTrue(upstream.half_closed)
        await wait_until(lambda: self.engine.served == 1)

    async def test_client_not_reading(self) -> None:
        """
        A client that stops reading stops the engine reading the upstream
        (a bounded amount is taken, the rest waits); once it reads again
        every byte arrives intact.
        """
        data = os.urandom(40 * MB)
        upstreams, up_port = self.upstream(keep=False, on_connect=lambda p: p.send(data))
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        client = await self.client(port, keep=False)
        client.transport.pauseProducing()
        upstream = await within(upstreams.connected.get())
        sent = await settled(lambda: upstream.sender.offset if upstream.sender is not None else 0)
        self.assertLess(sent, len(data))
        client.transport.resumeProducing()
        await within(client.wait_for(len(data)), 60)
        self.assertEqual(client.sha256.digest(), hashlib.sha256(data).digest())

    async def test_upstream_not_reading(self) -> None:
        """
        An upstream that stops reading stops the engine reading the client;
        once it reads again every byte arrives intact.
        """
        data = os.urandom(40 * MB)
        upstreams, up_port = self.upstream(keep=False, on_connect=lambda p: p.transport.pauseProducing())
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        client = await self.client(port, keep=False)
        client.send(data)
        upstream = await within(upstreams.connected.get())
        sent = await settled(lambda: client.sender.offset if client.sender is not None else 0)
        self.assertLess(sent, len(data))
        upstream.transport.resumeProducing()
        await within(upstream.wait_for(len(data)), 60)
        self.assertEqual(upstream.sha256.digest(), hashlib.sha256(data).digest())

    async def test_proxy_v2(self) -> None:
        """A route asking for PROXY v2 gets the header (client address, SNI, ALPN) before the bytes."""
        from tests.proxyproto_decoder import parse_header

        upstreams, up_port = self.upstream()
        port = self.listener(RouteTable([(["*.example.com"], Route("127.0.0.1", up_port, ("h2",), "v2"))]))
        client = await self.client(port)
        client.transport.write(b"PRI * HTTP/2.0")
        upstream = await within(upstreams.connected.get())
        await wait_until(lambda: bytes(upstream.received).endswith(b"HTTP/2.0"))
        parsed, rest = parse_header(bytes(upstream.received))
        self.assertEqual((parsed.version, parsed.family), (2, "TCP4"))
        self.assertEqual(parsed.source.port, client.transport.getHost().port)
        self.assertEqual(parsed.destination.port, port)
        self.assertEqual((parsed.authority, parsed.alpn), ("app.example.com", b"h2"))
        self.assertEqual(rest, b"PRI * HTTP/2.0")


def _read_to_close_then_send(port: int, more: bytes) -> tuple[bytes, str]:
    """Handshake, read until the server ends its side (how), send ``more``, close_notify."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        obj, incoming, flush = memory_tls(sock, "app.example.com")
        received, how = read_until_end(sock, obj, incoming)
        obj.write(more)
        try:
            obj.unwrap()
        except stdlib_ssl.SSLError:
            pass
        flush()
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
        return received, how


class LimitTests(LeanMixin, unittest.TestCase):
    """Tests for the lean engine within the connection limits (kongacme.connlimit)."""

    async def test_stops_accepting_at_cap(self) -> None:
        """
        At the listener's cap the engine stops accepting (the port is
        paused); when a connection closes the next waiting client is
        accepted and served.
        """
        _, up_port = self.upstream(peer_class=Echo)
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)), cap=1)
        first = await self.client(port)
        self.assertEqual(self.limit.in_use, 1)
        self.assertTrue(self.limit.paused)
        second = deferToThread(handshake_blocking, port, "app.example.com", client_context(), b"waited")
        first.transport.loseConnection()
        result = await within(second, 20)
        self.assertEqual(result["echo"], b"waited")
        await wait_until(lambda: self.limit.in_use == 0)
        self.assertEqual(self.limit.refused, 0)


class DeadlineTests(LeanMixin, unittest.TestCase):
    """Tests for the lean engine's handshake, connect and idle deadlines."""

    async def test_no_client_hello(self) -> None:
        """A client that sends half a ClientHello is closed after handshake_timeout, counted and logged."""
        port = self.listener(RouteTable([], Route("127.0.0.1", 1)), handshake_timeout=0.3)
        hello = client_hello_bytes("app.example.com")
        received = await deferToThread(_send_and_read, port, hello[:20])
        self.assertEqual(received, b"")
        self.assertEqual(self.tls_factory.handshakes["timeout"], 1)
        self.assertEqual(len(self.hello_logs.events), 1)
        self.assertIn("timed out", self.hello_logs.events[0]["log_format"])
        await wait_until(lambda: self.limit.in_use == 0)

    async def test_handshake_stalled(self) -> None:
        """
        A client that sends a whole ClientHello and then nothing gets the
        server's flight, then is dropped after handshake_timeout: counted
        and logged once, the limit given back.
        """
        port = self.listener(RouteTable([], Route("127.0.0.1", 1)), handshake_timeout=0.3)
        received = await deferToThread(_send_and_read, port, client_hello_bytes("app.example.com"))
        self.assertEqual(received[:1], b"\x16")  # the ServerHello's handshake record
        self.assertEqual(self.tls_factory.handshakes["timeout"], 1)
        self.assertEqual([e["log_format"] for e in self.engine_logs.events], ["TLS: handshake with {peer} timed out"])
        self.assertEqual(self.engine.handed_over, 0)
        await wait_until(lambda: self.limit.in_use == 0)

    async def test_connect_timeout(self) -> None:
        """An upstream that never answers the SYN gets the client closed after connect_timeout, logged once."""
        full = unanswered_port(self)
        port = self.listener(RouteTable([], Route("127.0.0.1", full)), connect_timeout=0.3)
        client = await self.client(port)
        await within(client.lost_d, 5)
        self.assertEqual(len(self.engine_logs.events), 1)
        self.assertIn("failed", self.engine_logs.events[0]["log_format"])
        self.assertIn("timeout", self.engine_logs.events[0]["reason"].lower())

    async def test_upstream_connects_later(self) -> None:
        """
        An upstream whose three-way handshake is not over when ``connect()``
        returns (a remote one; here ``_connected_now`` says so of a local
        one) is waited for on ``EPOLLOUT``, then used: the echo of all the
        client sent comes back, nothing is logged.
        """
        self.patch(upstream_side, "_connected_now", lambda sock: False)
        _, up_port = self.upstream(peer_class=Echo)
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)), connect_timeout=10)
        payload = os.urandom(MAX_PENDING * 4)
        result = await deferToThread(handshake_blocking, port, "app.example.com", client_context(), payload)
        self.assertEqual(result["echo"], payload)
        self.assertEqual(self.engine.handed_over, 0)
        self.assertEqual(self.engine_logs.events, [])

    async def test_pending_bounded_while_connecting(self) -> None:
        """
        While the upstream does not answer (its accept queue full: SYNs
        dropped), the client is read only up to
        :data:`~kongacme.engine.relay.MAX_PENDING` and one read more.
        """
        full = unanswered_port(self)
        port = self.listener(RouteTable([], Route("127.0.0.1", full)), connect_timeout=30)
        payload = os.urandom(MAX_PENDING * 4)
        sending = deferToThread(handshake_blocking, port, "app.example.com", client_context(), payload, timeout=20)
        sending.addErrback(lambda failure: None)  # it ends when the engine drops it, below

        def relays() -> list[Relay]:
            return [h for h in dict.fromkeys(self.engine.loop.handlers.values()) if isinstance(h, Relay)]

        await wait_until(lambda: any(r._pending_size >= MAX_PENDING for r in relays()), timeout=20)
        await task.deferLater(reactor, 0.3, lambda: None)  # the client goes on sending meanwhile
        (relay,) = relays()
        self.assertLessEqual(relay._pending_size, MAX_PENDING + READ_SIZE)
        relay.abort()
        await within(sending, 30)

    async def test_refused(self) -> None:
        """An upstream that refuses gets the client closed with close_notify and one log line."""
        listening = reactor.listenTCP(0, PeerFactory(), interface="127.0.0.1")
        dead = listening.getHost().port
        await listening.stopListening()
        port = self.listener(RouteTable([], Route("127.0.0.1", dead)))
        client = await self.client(port)
        await within(client.lost_d, 5)
        self.assertEqual([e["upstream"] for e in self.engine_logs.events], [f"127.0.0.1:{dead}"])
        self.assertEqual(self.engine_logs.events[0]["reason"], "connection refused")

    async def test_idle_timeout(self) -> None:
        """A connection idle for idle_timeout is closed both ways, with one log line."""
        upstreams, up_port = self.upstream()
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)), idle_timeout=0.3)
        client = await self.client(port)
        upstream = await within(upstreams.connected.get())
        await within(defer.gatherResults([client.lost_d, upstream.lost_d]), 5)
        self.assertEqual(len(self.engine_logs.events), 1)
        self.assertIn("idle", self.engine_logs.events[0]["log_format"])
        await wait_until(lambda: self.limit.in_use == 0)


def _send_and_read(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return received
                received += chunk
        except ConnectionResetError:
            return received


class HandOverTests(LeanMixin, unittest.TestCase):
    """
    Tests for the connections the lean engine hands to the Twisted path:
    they behave as the Twisted path does, and are counted once.
    """

    async def test_uncached_name_with_gate(self) -> None:
        """
        A name without a certificate, with a gate, is the Twisted path's:
        the gate is asked once (there), holds it — counted once in the
        listener's limit meanwhile — and releases it to the fallback.
        """
        gate = HoldingGate()
        _, up_port = self.upstream(peer_class=Echo)
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)), gate=gate)
        result = deferToThread(handshake_blocking, port, "new.other.org", client_context(), b"held")
        await wait_until(lambda: gate.waiting)
        self.assertEqual(self.limit.in_use, 1)
        gate.release()
        answer = await result
        self.assertEqual(answer["echo"], b"held")
        self.assertEqual(gate.asked, ["new.other.org"])
        self.assertEqual(self.engine.handed_over, 1)
        self.assertEqual(self.tls_factory.handshakes["held_then_fallback"], 1)
        await wait_until(lambda: self.limit.in_use == 0)

    async def test_no_route(self) -> None:
        """A name with no route is handed over: handshake, then the Twisted path's "no route" line."""
        port = self.listener(RouteTable([(["other.org"], Route("127.0.0.1", 1))]))
        client = await self.client(port)
        await within(client.lost_d, 5)
        self.assertEqual(self.engine.handed_over, 1)
        self.assertEqual(self.engine.connections(), {"lean": 0, "handed_over": 1})
        self.assertEqual(["no route" in f for f in self.proxy_logs.formats()], [True])

    async def test_garbage(self) -> None:
        """Bytes that are no ClientHello are handed over and refused there ("rejected", one line)."""
        port = self.listener(RouteTable([], Route("127.0.0.1", 1)))
        received = await deferToThread(_send_and_read, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(received, b"")
        self.assertEqual(self.engine.handed_over, 1)
        self.assertEqual(self.tls_factory.handshakes["rejected"], 1)
        self.assertEqual(len(self.tls_logs.events), 1)
        await wait_until(lambda: self.limit.in_use == 0)

    async def test_closed_before_hello(self) -> None:
        """A client that closes before a whole ClientHello is handed over and counted "abandoned" there."""
        port = self.listener(RouteTable([], Route("127.0.0.1", 1)))
        received = await deferToThread(_send_and_read_after_fin, port, client_hello_bytes("app.example.com")[:30])
        self.assertEqual(received, b"")
        await wait_until(lambda: self.tls_factory.handshakes["abandoned"] == 1)
        self.assertEqual(self.engine.handed_over, 1)
        await wait_until(lambda: self.limit.in_use == 0)

    async def test_tls_alpn_challenge(self) -> None:
        """A tls-alpn-01 ClientHello goes to the Twisted path's challenge responder."""
        port = self.listener(RouteTable([], Route("127.0.0.1", 1)))
        responder = self.tls_factory.challenges = Refusing()
        received = await deferToThread(_send_and_read, port, client_hello_bytes("app.example.com", alpn=["acme-tls/1"]))
        self.assertEqual(responder.asked, 1)
        self.assertEqual(self.engine.handed_over, 1)
        self.assertEqual(received[:1], b"\x15")  # the no_application_protocol alert
        self.assertEqual(self.tls_factory.handshakes["rejected"], 1)

    async def test_resolution_not_cached(self) -> None:
        """A route to a host name not resolved yet is handed over (the Twisted path resolves it)."""
        _, up_port = self.upstream(peer_class=Echo)
        port = self.listener(RouteTable([], Route("localhost", up_port)))
        result = await deferToThread(handshake_blocking, port, "app.example.com", client_context(), b"named")
        self.assertEqual(result["echo"], b"named")
        self.assertEqual(self.engine.handed_over, 1)
        # Resolved now: the next connection is the engine's.
        result = await deferToThread(handshake_blocking, port, "app.example.com", client_context(), b"again")
        self.assertEqual(result["echo"], b"again")
        self.assertEqual(self.engine.handed_over, 1)
        await wait_until(lambda: self.engine.served == 1)
        self.assertEqual(self.engine.connections(), {"lean": 1, "handed_over": 1})


def _send_and_read_after_fin(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def _accepted() -> tuple[socket.socket, Any, socket.socket]:
    """A TCP connection on loopback: the accepted socket, its peer address, and the client's socket."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        client = socket.create_connection(listening.getsockname())
        accepted, peer = listening.accept()
    accepted.setblocking(False)  # as the engine's listener hands it over
    return accepted, peer, client


async def _arrived(sock: socket.socket, size: int = 1) -> None:
    """Until ``size`` bytes sent to ``sock`` can be read from it (peeked, not taken)."""
    await wait_until(lambda: len(sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)) >= size
                     if select.select([sock], [], [], 0)[0] else False)


class Exploding:
    """A poll handler whose ``on_events`` raises; records ``abort``."""

    def __init__(self) -> None:
        self.aborted = 0

    def on_events(self, fd: int, events: int) -> None:
        raise RuntimeError("boom")

    def abort(self) -> None:
        self.aborted += 1


class LoopTests(LeanMixin, unittest.TestCase):
    """Tests for kongacme.engine.loop.EventLoop."""

    async def test_handler_error_contained(self) -> None:
        """
        A handler's exception is logged once and its ``abort`` called; the
        loop goes on serving connections.
        """
        _, up_port = self.upstream(peer_class=Echo)
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        exploding = Exploding()
        self.engine.loop.register(left.fileno(), select.EPOLLIN | select.EPOLLET, exploding)
        right.send(b"x")
        await wait_until(lambda: exploding.aborted == 1)
        self.engine.loop.unregister(left.fileno())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        result = await deferToThread(handshake_blocking, port, "app.example.com", client_context(), b"still")
        self.assertEqual(result["echo"], b"still")

    async def test_new_connection_error_contained(self) -> None:
        """
        An error while a new connection whose ClientHello is already there
        starts (read at once, before it is in the epoll) ends that
        connection only: it is logged once, the socket closed, its place in
        the limit given back, and the next connection is served.
        """
        _, up_port = self.upstream(peer_class=Echo)
        port = self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        builder = self.tls_factory.builder
        real = builder.session_for
        calls = []

        def exploding(certified: Any, alpn: Any, owner: Any, tls13: bool = True) -> Any:
            calls.append(certified)
            raise RuntimeError("boom")

        builder.session_for = exploding  # type: ignore[method-assign]
        left, peer, right = _accepted()
        self.addCleanup(right.close)
        right.sendall(client_hello_bytes("app.example.com"))
        await _arrived(left)
        self.assertTrue(self.limit.take())
        self.engine.serve(left, peer, self.lean_port)
        self.assertEqual(len(calls), 1)
        self.assertEqual(left.fileno(), -1)
        self.assertEqual(self.limit.in_use, 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNotIn(left, list(self.engine.loop.handlers.values()))
        builder.session_for = real  # type: ignore[method-assign]
        result = await deferToThread(handshake_blocking, port, "app.example.com", client_context(), b"still")
        self.assertEqual(result["echo"], b"still")

    async def test_hello_read_at_once(self) -> None:
        """
        A ClientHello already there when the connection is accepted is read
        at once: the relay holds the connection as soon as it is served. A
        hello still to come is waited for on the epoll.
        """
        _, up_port = self.upstream(peer_class=Echo)
        self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        handlers = self.engine.loop.handlers
        hello = client_hello_bytes("app.example.com")
        left, peer, right = _accepted()
        self.addCleanup(right.close)
        right.sendall(hello)
        await _arrived(left, len(hello))
        self.assertTrue(self.limit.take())
        self.engine.serve(left, peer, self.lean_port)
        self.assertIsInstance(handlers.get(left.fileno()), Relay)
        left2, peer2, right2 = _accepted()
        self.addCleanup(right2.close)
        right2.sendall(hello[:20])
        await _arrived(left2, 20)
        self.assertTrue(self.limit.take())
        self.engine.serve(left2, peer2, self.lean_port)
        self.assertIsInstance(handlers.get(left2.fileno()), HelloReader)
        right2.sendall(hello[20:])
        await wait_until(lambda: isinstance(handlers.get(left2.fileno()), Relay))
        for relay in {id(h): h for h in handlers.values() if isinstance(h, Relay)}.values():
            relay.abort()
        await wait_until(lambda: self.limit.in_use == 0)

    async def test_looks_at_once_while_it_pays(self) -> None:
        """
        After EARLY_HELLO_CREDIT new connections in a row without their
        ClientHello yet, the engine looks at only one in
        EARLY_HELLO_PROBE as they are accepted (the others wait on the
        epoll, hello or not); one found there gives the credit back.
        """
        _, up_port = self.upstream(peer_class=Echo)
        self.listener(RouteTable([], Route("127.0.0.1", up_port)))
        engine = self.engine
        handlers = engine.loop.handlers
        hello = client_hello_bytes("app.example.com")
        engine.early_hellos = 1

        async def serve(send_first: bool) -> socket.socket:
            sock, peer, client = _accepted()
            self.addCleanup(client.close)
            if send_first:
                client.sendall(hello)
                await _arrived(sock, len(hello))
            self.assertTrue(self.limit.take())
            engine.serve(sock, peer, self.lean_port)
            return sock

        silent = await serve(False)
        self.assertIsInstance(handlers.get(silent.fileno()), HelloReader)
        self.assertEqual(engine.early_hellos, 0)
        waited = await serve(True)
        self.assertIsInstance(handlers.get(waited.fileno()), HelloReader)  # not looked at
        engine.since_look = EARLY_HELLO_PROBE - 1
        probed = await serve(True)
        self.assertIsInstance(handlers.get(probed.fileno()), Relay)
        self.assertEqual(engine.early_hellos, EARLY_HELLO_CREDIT)
        await wait_until(lambda: isinstance(handlers.get(waited.fileno()), Relay))
        for handler in {id(h): h for h in handlers.values() if h is not self.lean_port}.values():
            handler.abort()
        await wait_until(lambda: self.limit.in_use == 0)

    def test_interfaces(self) -> None:
        """The loop is a reactor reader; handlers and the port provide IPollHandler."""
        from twisted.internet.interfaces import IReadDescriptor

        loop = EventLoop(reactor)
        self.assertTrue(verifyObject(IReadDescriptor, loop))

    def test_served_by_engine(self) -> None:
        """tcp:, tcp6: and systemd: endpoints may be the engine's; haproxy: and unix: are not."""
        self.assertEqual(
            [served_by_engine(d) for d in ("tcp:443", "tcp6:443", "haproxy:tcp:443", "unix:/x", "systemd:domain=INET:index=0")],
            [True, True, False, False, True],
        )

    def test_unix_port_stays_twisted(self) -> None:
        """A listening port that is not TCP (a UNIX systemd: socket is a unix.Port) is left to Twisted."""
        from twisted.internet.protocol import Factory

        path = self.mktemp()
        port = reactor.listenUNIX(path, Factory())
        self.addCleanup(port.stopListening)
        engine = LeanEngine(reactor, None, None)
        self.assertIsNone(engine.take("systemd:domain=UNIX:index=0", port, None, None))



# The same connections with every session on the standard library's ssl (a
# busy certificate's, kongacme.tls.stdlib) instead of pyOpenSSL.


class FastPathStdlibTests(FastPathTests):
    binding = "stdlib"


class DeadlineStdlibTests(DeadlineTests):
    binding = "stdlib"


class LoopStdlibTests(LoopTests):
    binding = "stdlib"


# The standard library's ssl again, without the compiled dispatch
# (kongacme.engine._steady): the Python loop and steady state.


class FastPathPythonTests(FastPathTests):
    binding = "stdlib"
    compiled = None


class DeadlinePythonTests(DeadlineTests):
    binding = "stdlib"
    compiled = None


class LoopPythonTests(LoopTests):
    binding = "stdlib"
    compiled = None


# Kongacme's own OpenSSL binding (kongacme.tls._openssl, where it is built):
# what busy certificates get by default.


class FastPathOpenSSLTests(FastPathTests):
    binding = "openssl"


class DeadlineOpenSSLTests(DeadlineTests):
    binding = "openssl"


class LoopOpenSSLTests(LoopTests):
    binding = "openssl"


class FastPathOpenSSLPythonTests(FastPathTests):
    binding = "openssl"
    compiled = None


# The own binding's shared contexts: a certificate's connections before it is busy.


class FastPathSharedTests(FastPathTests):
    binding = "shared"
