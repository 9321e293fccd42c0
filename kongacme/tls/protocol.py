"""
The TLS listener: read the ClientHello, let an optional gate hold the
handshake (on-demand issuance), pick the certificate for the SNI name from
the cache, then run the TLS pump (:mod:`kongacme.tls.pump`) with
half-close support and a handshake deadline.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from OpenSSL.SSL import Error
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from kongacme.errors import ClientHelloError
from kongacme.interfaces import GATE_CACHE_FILLED, ICertificateCache, IHandshakeGate
from kongacme.net import peer_name
from kongacme.timers import Deadline, TimerWheel
from kongacme.tls.alpn_challenge import NO_APPLICATION_PROTOCOL_ALERT, CloseAfterHandshake, is_challenge_hello
from kongacme.tls.clienthello import ClientHello, parse_client_hello
from kongacme.tls.context import ContextBuilder
from kongacme.tls.pump import TLSPump
from kongacme.tls.session import tls_failure_reason

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
#: certificate, the connection dropped mid-handshake); or a tls-alpn-01
#: validation answered with the challenge certificate (``acme_tls_alpn``;
#: one with no pending challenge is ``rejected``).
HANDSHAKE_OUTCOMES = (
    "cached",
    "fallback",
    "held_then_issued",
    "held_then_fallback",
    "rejected",
    "abandoned",
    "timeout",
    "failed",
    "acme_tls_alpn",
)


class SNITLSProtocol(TLSPump):
    """
    Server-side TLS for one connection.

    Until a whole ClientHello has arrived, bytes are buffered and no OpenSSL
    object exists. Garbage, an oversized hello or a stalled client ends the
    connection with one log line. The wrapped protocol gets
    ``client_hello`` (an ``IConnectionInfo``) before ``connectionMade``.

    :ivar client_hello: the parsed ClientHello, once read.
    :ivar alpn_allowed: the route's ALPN protocols, read by the context's
        ALPN callback (``context._select_alpn``) through the connection's
        app data.
    :ivar served_fallback: whether the certificate chosen was the fallback.
    :ivar outcome: what became of the handshake, once known
        (:data:`HANDSHAKE_OUTCOMES`).
    """

    factory: "TLSServerFactory"
    client_hello: ClientHello | None = None
    alpn_allowed: tuple[bytes, ...] = ()
    served_fallback = False
    outcome: str | None = None
    _held = False
    _hello_buffer: bytes | None = b""
    _gate_pending = False
    _lost_early = False
    _deadline: Deadline | None = None

    # -- before TLS ---------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        # The pump writes whole TLS records: Nagle's algorithm would only
        # delay them (a small answer waits for the client's delayed ACK).
        # HAProxy, hitch and nginx set TCP_NODELAY on both sides too.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self._deadline = factory.wheel.call_later(factory.handshake_timeout, self._handshake_timed_out)

    def before_tls(self, data: bytes) -> None:
        """Buffer the ClientHello until it is whole, then decide on it."""
        if self._hello_buffer is None:
            return  # refused or closing: nothing more is read
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
        factory = self.factory
        if factory.challenges is not None and is_challenge_hello(hello):
            # A CA validating tls-alpn-01 (RFC 8737): never proxied nor held.
            self._gate_pending = True
            factory.challenges.session_for(hello, peer_name(self.transport)).addBoth(self._challenge_ready)
            return
        gate = factory.gate
        waiting = gate.before_handshake(hello.server_name) if gate is not None else None
        if waiting is None:
            self._start()
            return
        self._gate_pending = True
        self._held = True
        self.transport.pauseProducing()
        # The handshake deadline does not run while the gate holds the
        # connection; the gate bounds its own wait, and gate_timeout is the
        # backstop if it never answers.
        self._cancel_deadline()
        self._deadline = factory.wheel.call_later(factory.gate_timeout, lambda: self._gate_opened(None))
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
        factory = self.factory
        self._deadline = factory.wheel.call_later(factory.handshake_timeout, self._handshake_timed_out)
        self.transport.resumeProducing()
        self._start()

    def _start(self) -> None:
        factory = self.factory
        hello = self.client_hello or _NO_HELLO
        self.alpn_allowed = factory.alpn_for(hello.server_name)
        self.wrappedProtocol.client_hello = hello
        buffered, self._hello_buffer = self._hello_buffer, None
        certified = factory.cache.lookup(hello.server_name)
        self.served_fallback = certified is factory.cache.fallback
        # The one place a connection gets its certificate (context.py): on
        # pyOpenSSL (this protocol its app data, for the ALPN select
        # callback, context._select_alpn), or the standard library's ssl
        # for a busy certificate and a client offering TLS 1.3.
        tls = factory.builder.session_for(certified, self.alpn_allowed, self, hello.offers_tls13)
        self.start_tls(tls, buffered or b"")

    def _challenge_ready(self, tls: Any) -> None:
        self._gate_pending = False
        if self._lost_early or self._hello_buffer is None:
            return
        buffered, self._hello_buffer = self._hello_buffer, None
        if tls is None or isinstance(tls, Failure):
            self._count("rejected")
            self._cancel_deadline()
            self.transport.write(NO_APPLICATION_PROTOCOL_ALERT)
            self.transport.loseConnection()
            return
        self._count("acme_tls_alpn")
        self.wrappedProtocol = CloseAfterHandshake()
        self.start_tls(tls, buffered)

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        if self.handshake_done:
            return
        log.info("TLS: handshake with {peer} timed out", peer=peer_name(self.transport))
        self._count("timeout")
        if self._tls is None:
            self._hello_buffer = None
            self.transport.abortConnection()
        else:
            self.abortConnection()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # -- during TLS ---------------------------------------------------------

    def handshake_finished(self) -> None:
        self._cancel_deadline()
        if self.outcome is None:
            served = "fallback" if self.served_fallback else "issued" if self._held else "cached"
            self._count(("held_then_" + served) if self._held else served)

    def closing(self) -> None:
        # The wrapped protocol is done; the client gets handshake_timeout
        # seconds to end its side before the connection is dropped.
        self._cancel_deadline()
        self._deadline = self.factory.wheel.call_later(self.factory.handshake_timeout, self.abortConnection)

    def _count(self, outcome: str) -> None:
        # One outcome per connection, counted on the factory (metrics).
        if self.outcome is None:
            self.outcome = outcome
            self.factory.handshakes[outcome] += 1

    def readConnectionLost(self) -> None:
        """
        The client sent a TCP FIN. Before TLS started that ends the
        connection; after, it is treated like close_notify.
        """
        if self._tls is None:
            self._hello_buffer = None
            self._cancel_deadline()
        TLSPump.readConnectionLost(self)

    # -- the end ------------------------------------------------------------

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_deadline()
        if self._tls is None:
            # TLS never started: the wrapped protocol was never connected.
            self._count("abandoned")
            self._lost_early = True
            self._hello_buffer = None
            self.connected = False
            return
        if not self.handshake_done:
            self._count("failed")
            if reason is not None:
                log.info(
                    "TLS: handshake with {peer} for {server_name} failed: {reason}",
                    peer=peer_name(self.transport),
                    server_name=(self.client_hello or _NO_HELLO).server_name,
                    reason=describe_tls_failure(self._reason or reason),
                )
        TLSPump.connectionLost(self, reason)


class TLSServerFactory(ServerFactory):  # type: ignore[type-arg]
    """
    Wraps ``wrapped_factory`` (the proxy) in SNI-selecting TLS.

    :param cache: the certificate cache read on every handshake.
    :param builder: makes each connection's ``SSL.Connection`` for a
        certificate (:meth:`ContextBuilder.connection_for`).
    :param alpn_for: server name → ALPN protocols (bytes) the route allows,
        in preference order.
    :param gate: optional ``IHandshakeGate`` consulted before the handshake.
    :param handshake_timeout: seconds from accept to a finished handshake
        (not counting time held by the gate).
    :param gate_timeout: the longest the gate may hold a handshake before
        it goes ahead anyway.

    :ivar handshakes: connections by outcome (:data:`HANDSHAKE_OUTCOMES`),
        for the metrics.
    :ivar wheel: the one timer behind every connection's deadline.
    """

    protocol = SNITLSProtocol
    noisy = False
    #: Answers tls-alpn-01 validations (a
    #: :class:`~kongacme.tls.alpn_challenge.ChallengeResponder`), if set.
    challenges: Any = None

    def __init__(
        self,
        cache: ICertificateCache,
        builder: ContextBuilder,
        wrapped_factory: Any,
        clock: IReactorTime,
        alpn_for: Callable[[str | None], tuple[bytes, ...]] = lambda name: (),
        gate: IHandshakeGate | None = None,
        handshake_timeout: float = 10.0,
        gate_timeout: float = 60.0,
    ):
        self.cache = cache
        self.builder = builder
        self.wrappedFactory = wrapped_factory
        self.clock = clock
        self.wheel = TimerWheel(clock)
        self.alpn_for = alpn_for
        self.gate = gate
        self.handshake_timeout = handshake_timeout
        self.gate_timeout = gate_timeout
        self.handshakes: collections.Counter[str] = collections.Counter()

    def doStart(self) -> None:
        self.wrappedFactory.doStart()
        super().doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()
        super().doStop()

    def buildProtocol(self, addr: Any) -> SNITLSProtocol | None:
        """A TLS protocol wrapping the wrapped factory's protocol for ``addr``."""
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        protocol = self.protocol()
        protocol.factory = self
        protocol.wrappedProtocol = wrapped
        return protocol


def describe_tls_failure(reason: Failure) -> str:
    """OpenSSL's reasons in ``reason`` (a failed handshake), for the log line."""
    value = reason.value
    if isinstance(value, Error) and value.args and isinstance(value.args[0], list):
        return "; ".join(str(item[2]) for item in value.args[0] if len(item) > 2) or repr(value)
    from_stdlib = tls_failure_reason(value)
    if from_stdlib is not None:
        return from_stdlib
    return str(value) or value.__class__.__name__
