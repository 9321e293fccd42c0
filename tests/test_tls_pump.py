"""
Tests for kongacme.tls.pump (through SNITLSProtocol, which runs it), in
memory: a pyOpenSSL client on memory BIOs talks to the server protocol over
a fake TCP transport, so hypothesis can choose how the client's bytes are
cut into segments and in which order the two sides end the stream.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from kongacme.testing import TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.tls.context import ContextBuilder
from kongacme.tls.fallback import generate_self_signed
from kongacme.tls.protocol import TLSServerFactory
from kongacme.tls.pump import represents_eof
from tests.tlsbinding import session_class, use_binding

PEER = IPv4Address("TCP", "198.51.100.7", 50000)
HOST = IPv4Address("TCP", "192.0.2.1", 443)

_CA = TestCA.create()
_CERT = _CA.issue(["pump.test"])
_FALLBACK = generate_self_signed()


class TCPTransport(StringTransport):
    """A StringTransport that records half-close and abort like a TCP socket."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class Recorder(Protocol):
    """The wrapped protocol: records what it is told, answers with ``response``."""

    response = b""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.read_closed = 0
        self.lost: list[Failure] = []
        self.handshakes = 0

    def handshakeCompleted(self) -> None:
        self.handshakes += 1
        if self.response:
            self.transport.write(self.response)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.read_closed += 1

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost.append(reason)


def segments(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length)."""
    points = sorted({c % len(data) for c in cuts if len(data)} - {0}) if data else []
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class Pair:
    """A client ``SSL.Connection`` and a server protocol joined in memory."""

    def __init__(self, response: bytes = b"", binding: str = "pyopenssl"):
        self.clock = Clock()
        cache = CertificateCache(_FALLBACK)
        cache.put(_CERT)
        wrapped = Factory.forProtocol(Recorder)
        builder = ContextBuilder(self.clock)
        use_binding(builder, binding)
        self.factory = TLSServerFactory(cache, builder, wrapped, self.clock)
        self.server = self.factory.buildProtocol(PEER)
        self.recorder: Recorder = self.server.wrappedProtocol
        self.recorder.response = response
        self.tcp = TCPTransport(HOST, PEER)
        self.server.makeConnection(self.tcp)
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        self.client = SSL.Connection(ctx, None)
        self.client.set_connect_state()
        self.client.set_tlsext_host_name(b"pump.test")
        self.from_server = b""
        self.client_closed_by_server = False
        self.tcp_lost = False

    def to_server(self, data: bytes, cuts: list[int]) -> None:
        for piece in segments(data, cuts):
            if self.tcp_lost or self.tcp.disconnecting and self.tcp.aborted:
                return
            self.server.dataReceived(piece)

    def client_output(self) -> bytes:
        out = b""
        while True:
            try:
                out += self.client.bio_read(1 << 16)
            except SSL.WantReadError:
                return out

    def pump_to_client(self) -> None:
        data = self.tcp.value()
        self.tcp.clear()
        if data:
            self.client.bio_write(data)

    def client_hello(self) -> bytes:
        """The client's first flight."""
        try:
            self.client.do_handshake()
        except SSL.WantReadError:
            pass
        return self.client_output()

    def handshake(self, cuts: list[int]) -> None:
        for _ in range(10):
            try:
                self.client.do_handshake()
            except SSL.WantReadError:
                pass
            self.to_server(self.client_output(), cuts)
            self.pump_to_client()
            if self.server.handshake_done:
                try:
                    self.client.do_handshake()
                except SSL.WantReadError:
                    pass
                return
        raise AssertionError("no handshake")

    def read_client(self) -> bytes:
        """Plaintext the client can read now; notes the server's close_notify."""
        self.pump_to_client()
        got = b""
        while True:
            try:
                got += self.client.recv(1 << 16)
            except SSL.WantReadError:
                return got
            except SSL.ZeroReturnError:
                self.client_closed_by_server = True
                return got

    def lose_tcp(self, reason: Failure) -> None:
        if not self.tcp_lost:
            self.tcp_lost = True
            self.server.connectionLost(reason)


CLIENT_ENDS = ("close_notify", "close_notify+fin", "fin", "rst")
SERVER_ENDS = ("loseWriteConnection", "loseConnection", "abortConnection")


class PumpPropertyTests(SynchronousTestCase):
    """
    Tests for the pump's byte stream and its ends, over every split and
    order hypothesis tries. ``binding``: the TLS binding of the session.
    """

    binding = "pyopenssl"

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
    @given(
        payload=st.binary(min_size=0, max_size=40000),
        response=st.binary(min_size=0, max_size=40000),
        hello_cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
        data_cuts=st.lists(st.integers(min_value=0, max_value=50000), max_size=12),
        client_end=st.sampled_from(CLIENT_ENDS),
        server_end=st.sampled_from(SERVER_ENDS),
        client_first=st.booleans(),
    )
    def test_bytes_through_and_clean_end(
        self, payload, response, hello_cuts, data_cuts, client_end, server_end, client_first
    ) -> None:
        """
        However the client's bytes are cut into segments, the wrapped
        protocol gets exactly the bytes the client sent and the client
        exactly the bytes it wrote; whichever side ends first and however
        (close_notify, FIN, reset; half-close, close, abort), the TCP
        connection is closed in the end and the wrapped protocol hears of
        it once.
        """
        pair = Pair(response, self.binding)
        pair.handshake(hello_cuts)
        self.assertEqual((pair.recorder.handshakes, pair.factory.handshakes["cached"]), (1, 1))
        if payload:
            pair.client.sendall(payload)
        pair.to_server(pair.client_output(), data_cuts)
        self.assertEqual(b"".join(pair.recorder.received), payload)
        self.assertEqual(pair.read_client(), response)

        def end_client() -> None:
            if client_end.startswith("close_notify"):
                try:
                    pair.client.shutdown()
                except SSL.Error:
                    pass
                pair.to_server(pair.client_output(), data_cuts)
            if client_end.endswith("fin") and not pair.tcp_lost:
                pair.server.readConnectionLost()
            if client_end == "rst":
                pair.lose_tcp(Failure(ConnectionLost()))

        def end_server() -> None:
            if not pair.tcp_lost:
                getattr(pair.recorder.transport, server_end)()

        for step in (end_client, end_server) if client_first else (end_server, end_client):
            step()
            pair.read_client()
        if client_end != "rst" and server_end != "abortConnection":
            # The client's end reached the wrapped protocol as a half-close
            # when the server was still open to hear it.
            self.assertLessEqual(pair.recorder.read_closed, 1)
            self.assertTrue(pair.client_closed_by_server)
        # A clean end: the server closes TCP (or it was reset), and the
        # wrapped protocol hears of it once.
        self.assertTrue(pair.tcp_lost or pair.tcp.disconnecting, (client_end, server_end, client_first))
        pair.lose_tcp(Failure(ConnectionDone()))
        self.assertEqual(len(pair.recorder.lost), 1)
        self.assertEqual(b"".join(pair.recorder.received), payload)
        self.assertEqual(pair.clock.getDelayedCalls(), [])


class PumpTests(SynchronousTestCase):
    """
    Tests for the pump's edges that a real client rarely reaches.
    """

    binding = "pyopenssl"

    def test_session_binding(self) -> None:
        """The pump's session is of the binding the test class chose."""
        pair = Pair(binding=self.binding)
        pair.server.dataReceived(pair.client_hello())
        pair.handshake([])
        self.assertIs(type(pair.server._tls), session_class(self.binding))

    def test_write_before_handshake_is_sent_after(self) -> None:
        """
        Bytes the wrapped protocol writes before the handshake finishes
        are sent, in order, once it has.
        """
        pair = Pair(binding=self.binding)
        pair.server.dataReceived(b"")
        pair.server.dataReceived(pair.client_hello())
        pair.recorder.transport.write(b"early ")
        pair.recorder.transport.writeSequence([b"and ", b"ordered"])
        pair.handshake([])
        self.assertEqual(pair.read_client(), b"early and ordered")

    def test_garbage_after_hello_fails_handshake(self) -> None:
        """
        A record OpenSSL cannot parse after a good ClientHello fails the
        handshake: counted, logged, the TCP connection closed.
        """
        pair = Pair(binding=self.binding)
        pair.server.dataReceived(pair.client_hello())
        pair.server.dataReceived(b"\x17\x03\x03\x00\x05garbage")
        self.assertTrue(pair.tcp.disconnecting)
        pair.lose_tcp(Failure(ConnectionDone()))
        self.assertEqual(pair.factory.handshakes["failed"], 1)
        self.assertEqual(len(pair.recorder.lost), 1)
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_fin_mid_handshake_fails(self) -> None:
        """A TCP FIN before the handshake completes fails it and closes TCP."""
        pair = Pair(binding=self.binding)
        pair.server.dataReceived(pair.client_hello())
        pair.server.readConnectionLost()
        self.assertTrue(pair.tcp.disconnecting)
        pair.lose_tcp(Failure(ConnectionDone()))
        self.assertEqual(pair.factory.handshakes["failed"], 1)

    def test_interfaces(self) -> None:
        """
        The wrapped protocol's transport reports the peer, the host, no
        client certificate and the negotiated ALPN (none offered: None).
        """
        pair = Pair(binding=self.binding)
        pair.handshake([])
        transport: Any = pair.recorder.transport
        self.assertEqual((transport.getPeer(), transport.getHost()), (PEER, HOST))
        self.assertIsNone(transport.getPeerCertificate())
        self.assertIsNone(transport.negotiatedProtocol)

    def test_producer_passes_through(self) -> None:
        """
        The wrapped protocol's producer is registered on TCP itself, and
        dropped when the pump sends close_notify and half-closes.
        """
        pair = Pair(binding=self.binding)
        pair.handshake([])
        producer = object()
        pair.recorder.transport.registerProducer(producer, True)
        self.assertIs(pair.tcp.producer, producer)
        pair.recorder.transport.loseWriteConnection()
        self.assertIsNone(pair.tcp.producer)
        self.assertTrue(pair.tcp.write_closed)

    def test_represents_eof(self) -> None:
        """Only OpenSSL's unexpected-EOF errors read as a half-close."""
        self.assertTrue(represents_eof(SSL.SysCallError(-1, "Unexpected EOF")))
        self.assertTrue(represents_eof(SSL.Error([("SSL routines", "", "unexpected eof while reading")])))
        self.assertFalse(represents_eof(SSL.Error([("SSL routines", "", "bad record mac")])))
        self.assertFalse(represents_eof(SSL.SysCallError(104, "ECONNRESET")))


# The same pump with its session on the standard library's ssl (a busy
# certificate's, for a client offering TLS 1.3) instead of pyOpenSSL.


class PumpPropertyStdlibTests(PumpPropertyTests):
    binding = "stdlib"


class PumpStdlibTests(PumpTests):
    binding = "stdlib"


# The same pump on kongacme's own OpenSSL binding (kongacme.tls._openssl),
# a busy certificate's where it is built, TLS 1.2 clients included.


class PumpPropertyOpenSSLTests(PumpPropertyTests):
    binding = "openssl"


class PumpOpenSSLTests(PumpTests):
    binding = "openssl"


# The same pump on the own binding's shared contexts.


class PumpSharedTests(PumpTests):
    binding = "shared"
