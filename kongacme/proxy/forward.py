"""
The byte relay between a TLS-terminated client and its upstream TCP server.

:class:`ProxyFactory` is the factory the TLS layer wraps: each
:class:`ProxyServerProtocol` sees decrypted bytes, waits for the handshake
to finish, picks a route from the SNI name, connects upstream (optionally
announcing the client with a PROXY protocol header) and then relays both
ways with producer/consumer flow control, half-close and an idle timeout.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import attrs
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IStreamClientEndpoint
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.failures import describe_failure
from kongacme.interfaces import IRouter
from kongacme.net import client_endpoint, is_ip_literal, peer_name
from kongacme.proxy._relay import DirectUpstreamFactory, PendingConnect, UpstreamFactory, UpstreamProtocol, Valve
from kongacme.proxy._relay import half_closer
from kongacme.proxy.connect import DirectConnect, NameCache, family_of
from kongacme.proxy.proxyproto import v1_header, v2_header
from kongacme.proxy.routes import Route, route_name
from kongacme.sockwrite import SocketWriter
from kongacme.timers import Deadline, TimerWheel
from kongacme.validators import provides

log = Logger()

#: Bytes read from the client before the upstream is connected. The client
#: is paused at the first chunk, so this is only a guard against a transport
#: that ignores ``pauseProducing``.
MAX_PENDING = 1 << 20

_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(method: _F) -> _F:
    """
    Run a protocol callback so that no exception reaches the reactor: an
    unexpected error is logged once and the connection is torn down.
    """

    @functools.wraps(method)
    def guarded(self: "ProxyServerProtocol", *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception:
            self._unexpected()
            return None

    return guarded  # type: ignore[return-value]


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class ProxyServerProtocol(Protocol):
    """
    One client connection, wrapped inside TLS.

    The TLS layer sets :attr:`client_hello` before ``makeConnection`` and
    calls :meth:`handshakeCompleted`; only then is the upstream dialled.

    :ivar client_hello: an ``IConnectionInfo`` from the TLS layer, or
        ``None`` (treated as no SNI).
    :ivar route: the :class:`Route` chosen at handshake time, or ``None``.
    :ivar received_from_client: bytes read from the client so far.
    :ivar received_from_upstream: bytes read from the upstream so far.
    """

    factory: "ProxyFactory"
    client_hello: Any = None
    route: Route | None = None
    received_from_client = 0
    received_from_upstream = 0

    _upstream: UpstreamProtocol | None = None
    _to_upstream: SocketWriter | None = None
    _pending: list[bytes] | None = None
    _pending_size = 0
    _connecting: Any = None
    _client_valve: Valve | None = None
    _upstream_valve: Valve | None = None
    _handshake_done = False
    _client_eof = False
    _upstream_eof = False
    _closed = False
    _client_gone = False
    _idle_call: Deadline | None = None
    _addresses: list[tuple[int, tuple]] | None = None
    _idle_timeout = 300.0
    _last_activity = 0.0
    #: The reactor's ``seconds``, looked up once: it is read on every chunk.
    _seconds: Callable[[], float]
    # Whether a valve is registered as the producer on each transport (some
    # transports refuse an unregisterProducer without one).
    _client_has_producer = False
    _upstream_has_producer = False

    @property
    def server_name(self) -> str | None:
        """The SNI host name from :attr:`client_hello`, or ``None``."""
        return getattr(self.client_hello, "server_name", None)

    # -- the client side ----------------------------------------------------

    @_guarded
    def connectionMade(self) -> None:
        self._pending = []
        self._client_valve = Valve(self.transport)
        self._seconds = self.factory.reactor.seconds
        # Settings are read once: a reload changes new connections only.
        self._idle_timeout = self.factory.idle_timeout
        self._last_activity = self._seconds()
        self._idle_call = self.factory.wheel.call_later(self._idle_timeout, self._check_idle)

    @_guarded
    def handshakeCompleted(self) -> None:
        """
        TLS is up: choose the route and connect to the upstream.
        """
        if self._handshake_done or self._closed:
            return
        self._handshake_done = True
        route = self.factory.router.route_for(self.server_name)
        if route is None:
            log.warn(
                "no route for {server_name} (client {peer}), closing",
                server_name=self.server_name,
                peer=peer_name(self.transport),
            )
            self._close()
            return
        self.route = route
        # Read nothing more until there is somewhere to put it.
        self._client_valve.pauseProducing()
        factory = self.factory
        if factory.connects_directly:
            host = route.host.strip("[]")
            if is_ip_literal(host):
                self._addresses = [(family_of(host), (host, route.port))]
                self._dial_next(None)
                return
            known = factory.names.cached(host, route.port)
            if known is not None:
                self._addresses = list(known)
                self._dial_next(None)
                return
            resolving = factory.names.resolve(host, route.port)
            self._connecting = resolving
            resolving.addCallbacks(self._resolved, self._upstream_failed)
            return
        if is_ip_literal(route.host):
            connector = self.factory.reactor.connectTCP(
                route.host.strip("[]"), route.port, DirectUpstreamFactory(self), timeout=self.factory.connect_timeout
            )
            self._connecting = PendingConnect(connector)
            return
        endpoint = self.factory.endpoint_for(route)
        d = endpoint.connect(UpstreamFactory(self))
        self._connecting = d
        d.addCallbacks(self._upstream_connected, self._upstream_failed)
        d.addErrback(lambda f: log.failure("proxy: error after connecting to {upstream}", f, upstream=route_name(route)))

    @_guarded
    def _resolved(self, addresses: list[tuple[int, tuple]]) -> None:
        self._connecting = None
        if self._closed:
            return
        self._addresses = list(addresses)
        self._dial_next(None)

    @_guarded
    def _dial_next(self, failure: Failure | None) -> None:
        """
        Connect to the next of the route's addresses (one for an IP
        literal); once none is left, ``failure`` is the upstream's.
        """
        self._connecting = None
        if self._closed:
            return
        if not self._addresses:
            assert failure is not None
            self._upstream_failed(failure)
            return
        family, address = self._addresses.pop(0)
        factory = self.factory
        attempt = DirectConnect(factory.reactor, family, address, DirectUpstreamFactory(self), self._dial_next)
        self._connecting = attempt
        attempt.start(factory.wheel, factory.connect_timeout)

    def dataReceived(self, data: bytes) -> None:
        # Guarded like the other callbacks (see _guarded), inline: this and
        # _upstream_data run once per chunk each way.
        try:
            self.received_from_client += len(data)
            self._last_activity = self._seconds()
            if self._closed:
                return
            if self._to_upstream is not None:
                self._to_upstream.write(data)
            else:
                self._hold(data)
        except Exception:
            self._unexpected()

    def _hold(self, data: bytes) -> None:
        """Keep ``data`` until the upstream is connected (reading paused)."""
        if self._pending is not None:
            self._pending.append(data)
            self._pending_size += len(data)
            self._client_valve.pauseProducing()
            if self._pending_size > MAX_PENDING:
                log.warn(
                    "client {peer} for {server_name} sent {size} bytes before the upstream answered, closing",
                    peer=peer_name(self.transport),
                    server_name=self.server_name,
                    size=self._pending_size,
                )
                self._abort()

    @_guarded
    def readConnectionLost(self) -> None:
        """
        The client finished sending (TLS close_notify or TCP FIN): pass the
        half-close on to the upstream and keep relaying its answer.
        """
        if self._client_eof:
            return
        self._client_eof = True
        if self._client_valve is not None:
            self._client_valve.shut = True
        if self._upstream is not None:
            self._shut_upstream_write()
            self._maybe_finish()
        elif self._pending is None or not self._handshake_done:
            # Closed already, or TLS never finished: nothing will be relayed.
            self._close()
        # else: still connecting; _upstream_connected passes it on.

    def writeConnectionLost(self) -> None:
        """Our half-close reached the client; nothing to do."""

    @_guarded
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._client_gone = True
        self._close()

    # -- the upstream side --------------------------------------------------

    @_guarded
    def _upstream_connected(self, upstream: UpstreamProtocol) -> None:
        self._connecting = None
        if self._closed:
            upstream.transport.loseConnection()
            return
        self._upstream = upstream
        transport = upstream.transport
        self._upstream_valve = Valve(transport)
        # Each side's full write buffer pauses the other side's reading, so a
        # slow peer never makes the proxy buffer without bound.
        transport.registerProducer(self._client_valve, True)
        self._upstream_has_producer = True
        self.transport.registerProducer(self._upstream_valve, True)
        self._client_has_producer = True
        first = [self._proxy_header()] + (self._pending or [])
        self._pending = None
        self._pending_size = 0
        self._client_valve.resumeProducing()
        # One write, so the PROXY header leads the first segment (the spec
        # asks senders to send it at once).
        data = b"".join(first)
        writer = self._to_upstream = SocketWriter(transport)
        if data:
            writer.write(data)
        if self._client_eof:
            self._shut_upstream_write()

    @_guarded
    def _upstream_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self._closed:
            return  # we cancelled it: the client went away first
        log.warn(
            "upstream {upstream} for {server_name} failed: {reason}",
            upstream=route_name(self.route),
            server_name=self.server_name,
            peer=peer_name(self.transport),
            reason=describe_failure(failure),
        )
        self._close()

    def _upstream_data(self, data: bytes) -> None:
        try:
            self.received_from_upstream += len(data)
            self._last_activity = self._seconds()
            if not self._closed:
                self.transport.write(data)
        except Exception:
            self._unexpected()

    @_guarded
    def _upstream_read_closed(self) -> None:
        if self._upstream_eof:
            return
        self._upstream_eof = True
        if self._upstream_valve is not None:
            self._upstream_valve.shut = True
        if self._closed:
            return
        # The upstream produces nothing more. A TLS transport waits for its
        # producer to go away before sending close_notify.
        self._unregister_client_producer()
        half = half_closer(self.transport)
        if half is None:
            self._close()
            return
        half()
        self._maybe_finish()

    @_guarded
    def _upstream_lost(self, reason: Failure) -> None:
        if self._upstream_valve is not None:
            self._upstream_valve.shut = True
        if self._closed:
            return
        if not reason.check(ConnectionDone):
            log.info(
                "upstream {upstream} for {server_name} closed the connection: {reason}",
                upstream=route_name(self.route),
                server_name=self.server_name,
                reason=describe_failure(reason),
            )
        self._upstream = self._to_upstream = None
        self._close()

    # -- helpers ------------------------------------------------------------

    def _proxy_header(self) -> bytes:
        kind = self.route.proxy_protocol if self.route is not None else None
        if kind is None:
            return b""
        source, destination = self.transport.getPeer(), self.transport.getHost()
        if kind == "v1":
            return v1_header(source, destination)
        alpn = getattr(self.transport, "negotiatedProtocol", None)
        return v2_header(source, destination, server_name=self.server_name, alpn=alpn)

    def _shut_upstream_write(self) -> None:
        transport = self._upstream.transport  # type: ignore[union-attr]
        # The client produces nothing more; and a paused producer would keep
        # Twisted from ever sending the FIN.
        self._unregister_upstream_producer()
        half = half_closer(transport)
        if half is None:
            transport.loseConnection()
        else:
            half()

    def _maybe_finish(self) -> None:
        if self._client_eof and self._upstream_eof:
            self._close()

    @_guarded
    def _check_idle(self) -> None:
        self._idle_call = None
        if self._closed:
            return
        # One timer re-armed lazily, rather than reset on every chunk.
        idle_for = self._seconds() - self._last_activity
        if idle_for < self._idle_timeout:
            self._idle_call = self.factory.wheel.call_later(self._idle_timeout - idle_for, self._check_idle)
            return
        log.info(
            "closing connection from {peer} for {server_name}: idle for {seconds} seconds",
            peer=peer_name(self.transport),
            server_name=self.server_name,
            seconds=self._idle_timeout,
        )
        self._abort()

    def _stop(self) -> bool:
        """Mark the connection closed; ``False`` if it already was."""
        if self._closed:
            return False
        self._closed = True
        self._pending = None
        for valve in (self._client_valve, self._upstream_valve):
            if valve is not None:
                valve.shut = True
        if self._idle_call is not None:
            self._idle_call.cancel()
        self._idle_call = None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        return True

    def _close(self) -> None:
        """Close both sides once their buffered data is written."""
        if not self._stop():
            return
        if self._upstream is not None:
            self._unregister_upstream_producer()
            self._upstream.transport.loseConnection()
        if not self._client_gone:
            # Unregister first: TLS will not send close_notify while a
            # producer is registered.
            self._unregister_client_producer()
            self.transport.loseConnection()

    def _unregister_client_producer(self) -> None:
        if self._client_has_producer:
            self._client_has_producer = False
            self.transport.unregisterProducer()

    def _unregister_upstream_producer(self) -> None:
        if self._upstream_has_producer and self._upstream is not None:
            self._upstream_has_producer = False
            self._upstream.transport.unregisterProducer()

    def _unexpected(self) -> None:
        """An unexpected error in a callback: log it once and tear down."""
        log.failure(
            "proxy: unexpected error on connection from {peer} for {server_name}",
            peer=peer_name(self.transport),
            server_name=self.server_name,
        )
        self._abort()

    def _abort(self) -> None:
        """Drop both sides now, buffered data included (peer not reading)."""
        self._stop()
        for transport, gone in ((getattr(self._upstream, "transport", None), False), (self.transport, self._client_gone)):
            if transport is None or gone:
                continue
            try:
                abort = getattr(transport, "abortConnection", None)
                (abort or transport.loseConnection)()
            except Exception:
                log.failure("proxy: error while aborting a connection")


@attrs.define(slots=False, eq=False)
class ProxyFactory(Factory):
    """
    Builds a :class:`ProxyServerProtocol` per client connection.

    :ivar router: an ``IRouter``; a configuration reload may replace it.
        New connections use the new table, existing ones keep their upstream.
    :param reactor: provides ``IReactorTCP`` and ``IReactorTime`` (and
        name resolution, for upstream host names).
    :ivar connect_timeout: seconds to wait for the upstream to accept.
    :ivar idle_timeout: seconds without a byte either way before both sides
        are closed.
    """

    router: Any = attrs.field(validator=provides(IRouter))
    _reactor: Any = attrs.field()
    connect_timeout: float = 5.0
    idle_timeout: float = 300.0
    #: Connect upstream with :class:`DirectConnect` (``None``: when the
    #: reactor is a real POSIX one that owns file descriptors) rather than
    #: ``connectTCP`` / client endpoints.
    direct_connect: bool | None = attrs.field(default=None, kw_only=True)
    _wheel: TimerWheel | None = attrs.field(default=None, init=False)
    _names: NameCache | None = attrs.field(default=None, init=False)

    protocol = ProxyServerProtocol
    noisy = False

    @property
    def reactor(self) -> Any:
        """The reactor connections are made with and timed by."""
        return self._reactor

    @property
    def wheel(self) -> TimerWheel:
        """The one timer behind every connection's idle and connect deadlines."""
        if self._wheel is None:
            self._wheel = TimerWheel(self._reactor)
        return self._wheel

    @property
    def names(self) -> NameCache:
        """Upstream host names resolved once, kept for a while."""
        if self._names is None:
            self._names = NameCache(self._reactor)
        return self._names

    @property
    def connects_directly(self) -> bool:
        """Whether upstreams are dialled with :class:`DirectConnect`."""
        if self.direct_connect is None:
            return isinstance(self._reactor, PosixReactorBase)
        return self.direct_connect

    def endpoint_for(self, route: Route) -> IStreamClientEndpoint:
        """
        The client endpoint for ``route``'s upstream.

        IP literals skip name resolution (and its thread pool), names go
        through ``HostnameEndpoint`` (happy eyeballs).
        """
        return client_endpoint(self._reactor, route.host, route.port, self.connect_timeout)

    def alpn_for(self, server_name: str | None) -> tuple[bytes, ...]:
        """
        The ALPN protocols to offer a client asking for ``server_name``,
        from the current :attr:`router` (so it follows reloads).

        :return: the route's protocols in preference order, or ``()``.
        """
        route = self.router.route_for(server_name)
        return route.alpn_bytes if route is not None else ()
