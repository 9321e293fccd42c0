"""
The TLS listener: read the ClientHello, let an optional gate hold the
handshake (on-demand issuance), pick the context for the SNI name from the
certificate cache, then run Twisted's memory-BIO TLS with half-close
support and a handshake deadline.
"""

from __future__ import annotations

import collections
from typing import Callable

from OpenSSL import SSL
from OpenSSL.SSL import Error, ZeroReturnError
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    ISSLTransport,
    ITCPTransport,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol, _representsEOF
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.errors import ClientHelloError
from kongacme.interfaces import GATE_CACHE_FILLED, ICertificateCache, IHandshakeGate
from kongacme.net import peer_name
from kongacme.tls.clienthello import ClientHello, parse_client_hello
from kongacme.tls.context import ContextBuilder

log = Logger()

_NO_HELLO = ClientHello(server_name=None)

#: A fatal unrecognized_name(112) alert record (RFC 8446 §6, RFC 6066 §3).
_UNRECOGNIZED_NAME_ALERT = b"\x15\x03\x03\x00\x02\x02\x70"

#: What becomes of a connection on the TLS listener, one per connection:
#: a handshake completed with a certificate from the cache (``cached``) or
#: the fallback (``fallback``), either after the gate held it
#: (``held_then_issued``, ``held_then_fallback``); or no handshake: not a
#: ClientHello we accept, or an SNI OpenSSL refuses (``rejected``), closed
#: before a whole ClientHello (``abandoned``), the deadline passed
#: (``timeout``), or TLS failed
#: (``failed``: no shared protocol or cipher, the client refused the
#: certificate, the connection dropped mid-handshake).
HANDSHAKE_OUTCOMES = (
    "cached",
    "fallback",
    "held_then_issued",
    "held_then_fallback",
    "rejected",
    "abandoned",
    "timeout",
    "failed",
)


@implementer(IOpenSSLServerConnectionCreator)
class SNIConnectionCreator:
    """
    Creates each server ``SSL.Connection`` with the context for the SNI
    name already read from the ClientHello: no servername callback runs
    inside OpenSSL.
    """

    def __init__(self, cache: ICertificateCache, builder: ContextBuilder):
        self.cache = cache
        self.builder = builder

    def serverConnectionForTLS(self, protocol: "SNITLSProtocol") -> SSL.Connection:
        hello = protocol.client_hello or _NO_HELLO
        certified = self.cache.lookup(hello.server_name)
        protocol.served_fallback = certified is self.cache.fallback
        connection = self.builder.connection_for(certified)
        # Read by the ALPN select callback (context._select_alpn).
        connection.set_app_data(protocol)
        return connection


@implementer(IHalfCloseableProtocol, ITCPTransport, ISSLTransport)
class SNITLSProtocol(TLSMemoryBIOProtocol):
    """
    Server-side TLS for one connection.

    Until a whole ClientHello has arrived, bytes are buffered and no OpenSSL
    object exists. Garbage, an oversized hello or a stalled client ends the
    connection with one log line. The wrapped protocol gets
    ``client_hello`` (an ``IConnectionInfo``) before ``connectionMade``.

    Half-close: a client's close_notify (or TCP FIN) becomes the wrapped
    protocol's ``readConnectionLost`` when it is ``IHalfCloseableProtocol``;
    ``loseWriteConnection`` sends close_notify and keeps reading.
    """

    client_hello: ClientHello | None = None
    alpn_allowed: tuple[bytes, ...] = ()
    #: Whether the certificate chosen was the fallback (set when TLS starts).
    served_fallback = False
    #: What became of the handshake, once known (see HANDSHAKE_OUTCOMES).
    outcome: str | None = None
    _held = False
    _tlsConnection = None
    _hello_buffer: bytes | None = b""
    _gate_pending = False
    _lost_early = False
    _deadline = None
    _read_closed = False
    _write_closed = False
    _close_write_pending = False

    # -- before TLS ---------------------------------------------------------

    def makeConnection(self, transport) -> None:
        # TLSMemoryBIOProtocol.makeConnection creates the SSL.Connection;
        # that waits until the ClientHello has been read (_start_tls).
        Protocol.makeConnection(self, transport)
        factory: TLSServerFactory = self.factory  # type: ignore[assignment]
        self._deadline = factory.clock.callLater(factory.handshake_timeout, self._handshake_timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._hello_buffer is None:
            TLSMemoryBIOProtocol.dataReceived(self, data)
            return
        buffered = self._hello_buffer + data
        self._hello_buffer = buffered
        if self._gate_pending:
            return
        try:
            hello = parse_client_hello(buffered)
        except ClientHelloError as e:
            log.info("TLS: dropping connection from {peer}: {reason}", peer=peer_name(self.transport), reason=str(e))
            self._count("rejected")
            self._hello_buffer = None
            self._cancel_deadline()
            self.transport.abortConnection()
            return
        if hello is None:
            return
        self.client_hello = hello
        if hello.unservable is not None:
            # OpenSSL would end the handshake over this name while reading
            # the hello (see ClientHello.unservable): say so ourselves, with
            # the same unrecognized_name alert (RFC 6066 §3).
            log.info(
                "TLS: refusing SNI {raw!r} from {peer}: {reason}",
                raw=hello.raw_server_name[:80],
                peer=peer_name(self.transport),
                reason=hello.unservable,
            )
            self._count("rejected")
            self._hello_buffer = None
            self._cancel_deadline()
            self.transport.write(_UNRECOGNIZED_NAME_ALERT)
            self.transport.loseConnection()
            return
        if hello.raw_server_name is not None:
            log.info(
                "TLS: invalid SNI {raw!r} from {peer}, serving the fallback certificate",
                raw=hello.raw_server_name[:80],
                peer=peer_name(self.transport),
            )
        factory: TLSServerFactory = self.factory  # type: ignore[assignment]
        gate = factory.gate
        waiting = gate.before_handshake(hello.server_name) if gate is not None else None
        if waiting is None:
            self._start_tls()
            return
        self._gate_pending = True
        self._held = True
        self.transport.pauseProducing()
        # The handshake deadline does not run while the gate holds the
        # connection; the gate bounds its own wait, and gate_timeout is the
        # backstop if it never answers.
        self._cancel_deadline()
        self._deadline = factory.clock.callLater(factory.gate_timeout, self._gate_opened, None)
        waiting.addErrback(
            lambda f: log.failure("handshake gate failed for {server_name}", f, server_name=hello.server_name)
        )
        waiting.addBoth(self._gate_opened)

    def _gate_opened(self, result: object) -> None:
        if not self._gate_pending:
            return
        self._gate_pending = False
        if result is GATE_CACHE_FILLED:
            self._held = False  # counted as if never held: no order was waited for
        self._cancel_deadline()
        if self._lost_early:
            return
        factory: TLSServerFactory = self.factory  # type: ignore[assignment]
        self._deadline = factory.clock.callLater(factory.handshake_timeout, self._handshake_timed_out)
        self.transport.resumeProducing()
        self._start_tls()

    def _start_tls(self) -> None:
        factory: TLSServerFactory = self.factory  # type: ignore[assignment]
        hello = self.client_hello or _NO_HELLO
        self.alpn_allowed = factory.alpn_for(hello.server_name)
        self.wrappedProtocol.client_hello = hello
        buffered, self._hello_buffer = self._hello_buffer, None
        # What TLSMemoryBIOProtocol.makeConnection does, minus its two
        # per-connection directlyProvides() calls and double registration
        # (measurable on the handshake path); the transport interfaces the
        # wrapped protocol relies on are declared on this class instead.
        self._tlsConnection = factory._creatorCallable(self)
        self._appSendBuffer = []
        factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(self)
        self._checkHandshakeStatus()
        if buffered and not self._lostTLSConnection:
            TLSMemoryBIOProtocol.dataReceived(self, buffered)

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        if self._handshakeDone:
            return
        log.info("TLS: handshake with {peer} timed out", peer=peer_name(self.transport))
        self._count("timeout")
        if self._tlsConnection is None:
            self._hello_buffer = None
            self.transport.abortConnection()
        else:
            self.abortConnection()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    # -- during TLS ---------------------------------------------------------

    def _checkHandshakeStatus(self) -> None:
        TLSMemoryBIOProtocol._checkHandshakeStatus(self)
        if self._handshakeDone:
            self._cancel_deadline()
            if self.outcome is None:
                served = "fallback" if self.served_fallback else "issued" if self._held else "cached"
                self._count(("held_then_" + served) if self._held else served)

    def _count(self, outcome: str) -> None:
        # One outcome per connection, counted on the factory (metrics).
        if self.outcome is None:
            self.outcome = outcome
            self.factory.handshakes[outcome] += 1

    def _flushSendBIO(self) -> None:
        # Closing the TCP connection can run connectionLost synchronously (it
        # does when our write side is already shut), which drops the
        # SSL.Connection; nothing is left to flush then.
        if self._tlsConnection is not None:
            TLSMemoryBIOProtocol._flushSendBIO(self)

    def _flushReceiveBIO(self) -> None:
        # Twisted's version ends the whole connection on close_notify; a
        # proxy must keep sending the other direction (half-close).
        while not self._lostTLSConnection and not self._read_closed:
            try:
                data = self._tlsConnection.recv(2**15)
            except SSL.WantReadError:
                break
            except ZeroReturnError:
                self._peer_closed_write()
            except Error as e:
                if _representsEOF(e) and self._handshakeDone:
                    self._peer_closed_write()
                else:
                    self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    def _can_half_close(self) -> bool:
        # After loseConnection the wrapped protocol wants no more data: the
        # client's close_notify then completes the shutdown.
        return (
            self._handshakeDone
            and not self.disconnecting
            and IHalfCloseableProtocol.providedBy(self.wrappedProtocol)
        )

    def _peer_closed_write(self) -> None:
        """
        The client finished sending (close_notify, or a TCP FIN read as
        end of stream).

        A half-closeable wrapped protocol is told (``readConnectionLost``)
        and may go on writing. Once our side is closed too (close_notify
        sent, nothing left buffered) the connection ends here.
        """
        self._read_closed = True
        if self._can_half_close():
            self.wrappedProtocol.readConnectionLost()
            if self._lostTLSConnection or not self._write_closed or self._close_write_pending:
                # Still sending; or the wrapped protocol closed or aborted
                # the connection itself. A pending close_notify ends the
                # connection once sent (_send_close_notify).
                return
        self._finish_tls()

    def _finish_tls(self) -> None:
        """
        Both directions are done: answer the client's close_notify (if ours
        was not sent yet) and close the TCP connection.

        ``transport.loseConnection()`` may call ``connectionLost`` before it
        returns (our TCP write side already shut), which drops the
        ``SSL.Connection``: so it comes last.
        """
        if self._lostTLSConnection:
            return
        self._lostTLSConnection = True
        try:
            self._tlsConnection.shutdown()
        except Error:
            pass
        self._flushSendBIO()
        self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        """
        The client sent a TCP FIN. Before TLS started that ends the
        connection; after, it is treated like close_notify.
        """
        if self._tlsConnection is None:
            self._hello_buffer = None
            self._cancel_deadline()
            self.transport.loseConnection()
            return
        if self._read_closed or self._lostTLSConnection:
            if self._write_closed and not self._close_write_pending:
                self.transport.loseConnection()
            return
        self._tlsConnection.bio_shutdown()
        self._flushReceiveBIO()
        if not self._read_closed and not self._lostTLSConnection:
            self._peer_closed_write()

    def writeConnectionLost(self) -> None:
        """Our TCP write side is closed; nothing to do."""

    def loseWriteConnection(self) -> None:
        """
        Send close_notify (then a TCP FIN) and keep reading the client.
        """
        if self._write_closed or self._lostTLSConnection:
            return
        self._write_closed = True
        if self._read_closed:
            self.loseConnection()
            return
        if not self._handshakeDone or self._appSendBuffer or self._producer is not None:
            self._close_write_pending = True
            return
        self._send_close_notify()

    def _send_close_notify(self) -> None:
        self._close_write_pending = False
        if self._read_closed:
            self._finish_tls()
            return
        try:
            self._tlsConnection.shutdown()
        except Error:
            pass
        self._flushSendBIO()
        half = getattr(self.transport, "loseWriteConnection", None)
        if half is not None:
            half()

    def _unbufferPendingWrites(self) -> None:
        TLSMemoryBIOProtocol._unbufferPendingWrites(self)
        if self._close_write_pending and not self._appSendBuffer and self._producer is None:
            self._send_close_notify()

    def unregisterProducer(self) -> None:
        TLSMemoryBIOProtocol.unregisterProducer(self)
        if self._close_write_pending and not self._appSendBuffer:
            self._send_close_notify()

    def write(self, data: bytes) -> None:
        if self._write_closed and not self._close_write_pending:
            return
        TLSMemoryBIOProtocol.write(self, data)

    # -- the end ------------------------------------------------------------

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_deadline()
        if self._tlsConnection is None:
            # TLS never started: the wrapped protocol was never connected.
            self._count("abandoned")
            self._lost_early = True
            self._hello_buffer = None
            self.connected = False
            return
        if not self._handshakeDone:
            self._count("failed")
        if not self._handshakeDone and reason is not None:
            log.info(
                "TLS: handshake with {peer} for {server_name} failed: {reason}",
                peer=peer_name(self.transport),
                server_name=(self.client_hello or _NO_HELLO).server_name,
                reason=_describe(self._reason or reason),
            )
        TLSMemoryBIOProtocol.connectionLost(self, reason)


class TLSServerFactory(TLSMemoryBIOFactory):
    """
    Wraps ``wrapped_factory`` (the proxy) in SNI-selecting TLS.

    :param cache: the certificate cache read on every handshake.
    :param builder: memoises one context per certificate.
    :param alpn_for: server name → ALPN protocols (bytes) the route allows,
        in preference order.
    :param gate: optional ``IHandshakeGate`` consulted before the handshake.
    :param handshake_timeout: seconds from accept to a finished handshake
        (not counting time held by the gate).
    :param gate_timeout: the longest the gate may hold a handshake before
        it goes ahead anyway.

    :ivar handshakes: connections by outcome (:data:`HANDSHAKE_OUTCOMES`),
        for the metrics.
    """

    protocol = SNITLSProtocol
    noisy = False

    def __init__(
        self,
        cache: ICertificateCache,
        builder: ContextBuilder,
        wrapped_factory,
        clock: IReactorTime,
        alpn_for: Callable[[str | None], tuple[bytes, ...]] = lambda name: (),
        gate: IHandshakeGate | None = None,
        handshake_timeout: float = 10.0,
        gate_timeout: float = 60.0,
    ):
        self.creator = SNIConnectionCreator(cache, builder)
        super().__init__(self.creator, False, wrapped_factory, clock=clock)
        self.clock = clock
        self.alpn_for = alpn_for
        self.gate = gate
        self.handshake_timeout = handshake_timeout
        self.gate_timeout = gate_timeout
        self.handshakes: collections.Counter[str] = collections.Counter()


def _describe(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, Error) and value.args and isinstance(value.args[0], list):
        return "; ".join(str(item[2]) for item in value.args[0] if len(item) > 2) or repr(value)
    return str(value) or value.__class__.__name__
