"""
Helpers for the kongacme.proxy tests: a self-signed certificate, a stand-in
for the TLS layer, and scriptable peers (client and upstream) that count,
hash and keep what they receive.
"""

from __future__ import annotations

import hashlib
import socket
from typing import Any, Callable

import attrs
from twisted.internet import defer, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from kongacme.interfaces import IConnectionInfo
from kongacme.proxy.forward import ProxyFactory, ProxyServerProtocol

ALPN = [b"h2", b"http/1.1"]


def unanswered_port(test: Any) -> int:
    """
    A local port whose listener never answers a SYN: Linux drops SYNs while
    a listener's accept queue is full, so it is filled. Closed with ``test``.
    """
    listener = socket.socket()
    test.addCleanup(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    for _ in range(3):
        filler = socket.socket()
        test.addCleanup(filler.close)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    return port


@implementer(IConnectionInfo)
@attrs.frozen
class FakeHello:
    """What the TLS layer would have read from the ClientHello."""

    server_name: str | None
    alpn_offered: tuple[bytes, ...] = ()


def make_certificate(names: list[str]) -> ssl.PrivateCertificate:
    """
    A self-signed EC certificate for ``names`` (the first is the CN).
    """
    from kongacme.tls.fallback import generate_self_signed

    certified = generate_self_signed(names[0], extra_names=names[1:], days=1)
    return ssl.PrivateCertificate.loadPEM(certified.key_pem() + certified.chain_pem())


class PlainProxyProtocol(ProxyServerProtocol):
    """
    The proxy over plain TCP, as if a TLS handshake had just finished: the
    transport is a TCP socket, which supports ``loseWriteConnection``.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.handshakeCompleted()


class HelloFactory(Factory):
    """
    Stands in for the TLS layer's part of the contract: sets
    ``client_hello`` on each proxy protocol before it is connected, and
    remembers the protocols built.
    """

    noisy = False

    def __init__(self, proxy_factory: ProxyFactory, server_name: str | None, plain: bool = False):
        self.proxy_factory = proxy_factory
        self.server_name = server_name
        self.plain = plain
        self.built: list[ProxyServerProtocol] = []

    def buildProtocol(self, addr: Any) -> ProxyServerProtocol:
        if self.plain:
            protocol: ProxyServerProtocol = PlainProxyProtocol()
            protocol.factory = self.proxy_factory
        else:
            protocol = self.proxy_factory.buildProtocol(addr)
        protocol.client_hello = FakeHello(self.server_name, tuple(ALPN))
        self.built.append(protocol)
        return protocol


def tls_server_factory(certificate: ssl.PrivateCertificate, wrapped: Factory) -> TLSMemoryBIOFactory:
    """Twisted's stock server TLS around ``wrapped``, offering h2 and HTTP/1.1."""
    options = ssl.CertificateOptions(
        privateKey=certificate.privateKey.original,
        certificate=certificate.original,
        acceptableProtocols=ALPN,
    )
    return TLSMemoryBIOFactory(options, False, wrapped)


def tls_client_endpoint(reactor: Any, port: int, server_name: str, certificate: ssl.PrivateCertificate) -> Any:
    """A TLS client endpoint to 127.0.0.1:``port`` sending SNI ``server_name``."""
    options = ssl.optionsForClientTLS(
        server_name, trustRoot=ssl.Certificate(certificate.original), acceptableProtocols=ALPN
    )
    return wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))


@implementer(IPushProducer)
class _Sender:
    """
    Writes a large payload while the transport wants more (a streaming
    producer, so no cooperator timers are left behind).
    """

    def __init__(self, peer: "Peer", data: bytes, chunk: int, then: Callable[[], None]):
        self._peer = peer
        self._data = data
        self._chunk = chunk
        self._paused = False
        self._then = then
        self.offset = 0

    def resumeProducing(self) -> None:
        self._paused = False
        transport = self._peer.transport
        while not self._paused and self.offset < len(self._data):
            self.offset += self._chunk
            # write() may call pauseProducing() before it returns.
            transport.write(self._data[self.offset - self._chunk : self.offset])
        if self.offset >= len(self._data) and self._then is not None:
            then, self._then = self._then, None
            transport.unregisterProducer()
            then()

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._paused = True
        self._then = None


@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """
    A test client or upstream.

    :ivar received: everything received when ``keep`` is true.
    :ivar count: bytes received.
    :ivar sha256: hash of everything received.
    """

    def __init__(self, keep: bool = True, on_connect: Callable[["Peer"], None] | None = None):
        self.keep = keep
        self.on_connect = on_connect
        self.received = bytearray()
        self.count = 0
        self.sha256 = hashlib.sha256()
        self.connected_d: defer.Deferred[Peer] = defer.Deferred()
        self.handshake_d: defer.Deferred[Peer] = defer.Deferred()
        self.eof_d: defer.Deferred[Peer] = defer.Deferred()
        self.lost_d: defer.Deferred[Peer] = defer.Deferred()
        self._waiting: list[tuple[int, defer.Deferred[Peer]]] = []
        self.negotiated: bytes | None = None
        self.lost_reason: Any = None
        self.half_closed = False
        self.write_closed = False
        self.sender: _Sender | None = None

    def connectionMade(self) -> None:
        self.connected_d.callback(self)
        if self.on_connect is not None:
            self.on_connect(self)

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        self.sha256.update(data)
        if self.keep:
            self.received += data
        ready = [(n, d) for n, d in self._waiting if self.count >= n]
        self._waiting = [(n, d) for n, d in self._waiting if self.count < n]
        for _, d in ready:
            d.callback(self)

    def wait_for(self, n: int) -> defer.Deferred[Peer]:
        """Fires once ``n`` bytes have been received."""
        if self.count >= n:
            return defer.succeed(self)
        d: defer.Deferred[Peer] = defer.Deferred()
        self._waiting.append((n, d))
        return d

    def send(self, data: bytes, chunk: int = 256 * 1024, then: Callable[[], None] = lambda: None) -> None:
        """Write ``data`` with flow control, then call ``then()``."""
        self.sender = _Sender(self, data, chunk, then)
        self.transport.registerProducer(self.sender, True)
        self.sender.resumeProducing()

    def readConnectionLost(self) -> None:
        self.half_closed = True
        self.eof_d.callback(self)
        # Like any client: once both directions are done, close the socket
        # (Twisted does not do it by itself).
        if self.write_closed:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.write_closed = True
        if self.half_closed:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost_reason = reason
        if not self.eof_d.called:
            self.eof_d.callback(self)
        self.lost_d.callback(self)


@implementer(IHandshakeListener)
class TLSPeer(Peer):
    """
    A :class:`Peer` inside TLS, told when the handshake is done.

    (Kept apart from :class:`Peer` because the endpoints' wrapping protocol
    passes on only one of IHalfCloseableProtocol and IHandshakeListener.)
    """

    def handshakeCompleted(self) -> None:
        self.negotiated = self.transport.negotiatedProtocol
        self.handshake_d.callback(self)


class PeerFactory(Factory):
    """
    Builds :class:`Peer` objects; :attr:`connected` yields each one once it
    is connected.
    """

    noisy = False

    def __init__(self, peer_class: type[Peer] = Peer, **kwargs: Any):
        self.peer_class = peer_class
        self.kwargs = kwargs
        self.peers: list[Peer] = []
        self.connected: defer.DeferredQueue[Peer] = defer.DeferredQueue()

    def buildProtocol(self, addr: Any) -> Peer:
        peer = self.peer_class(**self.kwargs)
        self.peers.append(peer)
        peer.connected_d.addCallback(self._connected)
        return peer

    def _connected(self, peer: Peer) -> Peer:
        self.connected.put(peer)
        return peer


class LogCapture:
    """Collects log events from ``namespace`` while a test runs."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == self.namespace:
            self.events.append(event)

    def start(self, testcase: Any) -> "LogCapture":
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)
        return self

    def formats(self) -> list[str]:
        return [e["log_format"] for e in self.events]
