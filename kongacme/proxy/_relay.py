"""
Plumbing for :mod:`kongacme.proxy.forward`: the upstream-side protocol, the
flow-control valve and small helpers. Private: nothing here is API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.error import NotConnectingError
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from kongacme.proxy.forward import ProxyServerProtocol


@implementer(IPushProducer)
class Valve:
    """
    Pauses and resumes one side's reading on behalf of the other side's
    write buffer.

    It goes quiet once that side's read half is closed or the connection is
    closing: resuming a half-closed TCP socket would re-arm its reader and
    deliver a second EOF, and ``StringTransport``-like fakes forbid it.
    """

    def __init__(self, transport: Any):
        self._transport = transport
        self.paused = False
        self.shut = False

    def pauseProducing(self) -> None:
        if not self.shut and not self.paused:
            self.paused = True
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.shut and self.paused:
            self.paused = False
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        # The consumer's transport is gone; its protocol's connectionLost
        # closes this side too, flushing what is already buffered.
        self.shut = True


@implementer(IHalfCloseableProtocol)
class UpstreamProtocol(Protocol):
    """
    The connection to the upstream; it only reports to its client side.
    """

    def __init__(self, client: "ProxyServerProtocol"):
        self._client = client
        # The transport calls the client side's method itself: no hop
        # through this protocol per chunk.
        self.dataReceived = client._upstream_data  # type: ignore[method-assign]

    def dataReceived(self, data: bytes) -> None:
        self._client._upstream_data(data)

    def readConnectionLost(self) -> None:
        self._client._upstream_read_closed()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._client._upstream_lost(reason)


class UpstreamFactory(Factory):
    """Builds the one :class:`UpstreamProtocol` for a client connection."""

    noisy = False

    def __init__(self, client: "ProxyServerProtocol"):
        self._client = client

    def buildProtocol(self, addr: Any) -> UpstreamProtocol:
        return UpstreamProtocol(self._client)


class DirectUpstreamProtocol(UpstreamProtocol):
    """
    :class:`UpstreamProtocol` connected with ``reactor.connectTCP`` rather
    than an endpoint: it reports the connection itself, which saves the
    endpoint's Deferred and wrapping-protocol layers on every connection.
    """

    def connectionMade(self) -> None:
        # As on the client side (SNITLSProtocol.connectionMade): no Nagle.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self._client._upstream_connected(self)


class DirectUpstreamFactory(ClientFactory):
    """Connects one client's upstream for an IP-literal route."""

    noisy = False

    def __init__(self, client: "ProxyServerProtocol"):
        self._client = client

    def buildProtocol(self, addr: Any) -> DirectUpstreamProtocol:
        return DirectUpstreamProtocol(self._client)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._client._upstream_failed(reason)


class PendingConnect:
    """``cancel()`` for a ``connectTCP`` attempt, like a Deferred's."""

    __slots__ = ("_connector",)

    def __init__(self, connector: Any):
        self._connector = connector

    def cancel(self) -> None:
        try:
            self._connector.stopConnecting()
        except NotConnectingError:
            pass  # already connected or failed


def half_closer(transport: Any) -> Callable[[], None] | None:
    """
    The transport's ``loseWriteConnection``, or ``None`` without one.

    Looked up on the class: protocol wrappers (Twisted's stock TLS among
    them) forward unknown attributes to the socket underneath, where a raw
    FIN would cut the TLS stream without close_notify.
    """
    if getattr(type(transport), "loseWriteConnection", None) is None:
        return None
    return transport.loseWriteConnection
