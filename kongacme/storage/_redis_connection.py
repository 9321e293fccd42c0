"""
The connection side of :mod:`kongacme.storage.redis`: a txredisapi
connection pool to one Redis server, made through an endpoint on the
injected reactor (plain TCP or TLS), with AUTH and SELECT done here rather
than by txredisapi.

Why not txredisapi's own ``password``/``dbid`` handling: when AUTH or
SELECT is refused it stops reconnecting for good and errbacks a
``Deferred`` nobody holds in a lazy pool (an unhandled error). Here a
refusal is remembered as :attr:`RedisPool.last_error`, the connection is
dropped, and the pool keeps retrying with backoff, so a password fixed on
the server or a server that finished loading is picked up by itself.

txredisapi itself still schedules its reconnection backoff on the global
reactor (its ``ClientService`` has no clock argument); everything this
module and the storage decide (connect timeouts, setup timeouts, per
operation timeouts) runs on the injected one.
"""

from __future__ import annotations

from typing import Any, Optional

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.net import client_endpoint
from kongacme.storage._redis_errors import StorageUnavailable

#: Reconnection backoff (seconds): the first retry after about
#: :data:`RECONNECT_INITIAL_DELAY`, growing by ``e`` up to
#: :data:`RECONNECT_MAX_DELAY`, so a restarted Redis is used again within
#: a few seconds (txredisapi's own default waits up to 10 s).
RECONNECT_INITIAL_DELAY = 0.5
RECONNECT_MAX_DELAY = 5.0


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """Tells the pool why a connection attempt failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, pool: "RedisPool"):
        self._endpoint = endpoint
        self._pool = pool

    def connect(self, protocolFactory: Any) -> Deferred:
        return self._endpoint.connect(protocolFactory).addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        if not failure.check(CancelledError):
            self._pool.failed(f"could not connect: {failure.getErrorMessage()}")
        return failure


class _Protocol(txredisapi.RedisProtocol):
    """
    A txredisapi connection that authenticates, selects the database (or
    PINGs, so that a server wanting a password or a failed TLS handshake
    shows up before the connection is used) and only then joins the pool.
    """

    factory: "_Factory"
    _setup_timer: Any = None
    _aborted = False

    @inlineCallbacks
    def connectionMade(self) -> Any:
        pool = self.factory.owner
        self._setup_timer = pool.reactor.callLater(pool.timeout, self._setup_timed_out)
        step = "PING"
        try:
            if pool.password is not None:
                step = "AUTH" if pool.username is None else f"AUTH as {pool.username!r}"
                yield self.auth(pool.password, pool.username)
            if pool.database:
                step = f"SELECT {pool.database}"
                yield self.select(pool.database)
            else:
                step = "PING"
                yield self.ping()
        except Exception as e:
            if self._setup_timer.active():
                self._setup_timer.cancel()
            # A refusal says more than the "lost connection" that follows a
            # TLS failure or a timeout (already recorded by then).
            if isinstance(e, txredisapi.ResponseError) or (not self._aborted and self.connected):
                pool.failed(f"{step} failed: {e}")
            self._abort()
            return
        if self._setup_timer.active():
            self._setup_timer.cancel()
        # txredisapi's own connectionMade, with no password and no dbid
        # left for it, just marks the connection usable.
        yield super().connectionMade()
        pool.ready(self)

    def _setup_timed_out(self) -> None:
        self.factory.owner.failed(f"no answer to AUTH/SELECT/PING within {self.factory.owner.timeout:g} s")
        self._abort()

    def _abort(self) -> None:
        self._aborted = True
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, why: Failure) -> None:
        if self._setup_timer is not None and self._setup_timer.active():
            self._setup_timer.cancel()
        if not (self._aborted or why.check(ConnectionDone) or self.factory.owner.closed):
            self.factory.owner.failed(f"connection lost: {why.getErrorMessage()}")
        super().connectionLost(why)


class _Factory(txredisapi.RedisFactory):
    protocol = _Protocol
    initialDelay = RECONNECT_INITIAL_DELAY
    maxDelay = RECONNECT_MAX_DELAY

    def __init__(self, pool: "RedisPool", size: int):
        # charset None and convertNumbers False: values stay bytes.
        super().__init__(pool.address, None, size, isLazy=True, charset=None, convertNumbers=False)
        self.owner = pool
        # Lazy pool: nobody waits for all of it to connect; trouble is
        # reported to the operations that need a connection.
        self.deferred.addErrback(lambda failure: None)

    def buildProtocol(self, addr: Any) -> _Protocol:
        protocol = super().buildProtocol(addr)
        protocol.callLater = self.owner.reactor.callLater
        return protocol


class RedisPool:
    """
    Up to ``size`` connections to one Redis server, opened on first use
    and re-opened with backoff whenever lost or refused.

    :ivar store: how errors name the server (``"redis host:port"``).
    :ivar last_error: why the most recent connection attempt or connection
        failed, or ``None`` once a connection is usable again.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        *,
        database: int = 0,
        username: Optional[str] = None,
        password: Optional[str] = None,
        tls: Any = None,
        timeout: float = 2.0,
        size: int = 2,
        label: str = "",
        subscription: Optional["RedisSubscription"] = None,
    ):
        self.reactor = reactor
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.store = f"redis {self.address}{label}"
        #: Makes the connections SUBSCRIBE connections serving it.
        self.subscription = subscription
        self.database = database
        self.username = username
        self.password = password
        self.timeout = timeout
        self.last_error: Optional[str] = None
        self.closed = False
        self._host = host
        self._port = port
        self._tls = tls
        self._size = size
        self._factory: Optional[_Factory] = None
        self._healthy = True
        # Waiters for close() while closing; None once closed.
        self._closing: Optional[list[Deferred[None]]] = []

    def connection(self) -> Deferred:
        """
        A usable connection (a txredisapi protocol), once there is one.
        Connecting starts on the first call. The ``Deferred`` may wait
        forever (Redis down): the caller puts a timeout on it. Cancelling
        it is safe.

        :raises StorageUnavailable: once :meth:`close` was called.
        """
        if self.closed:
            raise StorageUnavailable(self.store, "connection closed")
        if self._factory is None:
            endpoint = client_endpoint(self.reactor, self._host, self._port, self.timeout)
            if self._tls is not None:
                endpoint = wrapClientTLS(self._tls, endpoint)
            factory = _Factory if self.subscription is None else _SubscriberFactory
            self._factory = factory(self, self._size)
            self._factory.startConnecting(_ReportingEndpoint(endpoint, self))
        return self._factory.getConnection(peek=True)

    def failed(self, error: str) -> None:
        """Record why a connection failed (logged once per outage)."""
        self.last_error = error
        if self._healthy:
            self._healthy = False
            self.log.warn("{store}: {error}; retrying", store=self.store, error=error)

    def ready(self, protocol: Any = None) -> None:
        """A connection became usable (handed to the subscription, if any)."""
        if not self._healthy:
            self.log.info("{store}: connected again", store=self.store)
        self._healthy = True
        self.last_error = None
        if self.subscription is not None and protocol is not None:
            self.subscription.connected(protocol)

    def abort(self, protocol: Any, why: str) -> None:
        """Drop a connection that did not answer in time (it may be stuck)."""
        if protocol.connected:
            self.failed(why)
            protocol._abort()

    def close(self) -> Deferred:
        """
        Close every connection and stop reconnecting; calling it again is
        harmless.

        :return: ``Deferred`` firing with ``None`` once all are closed.
        """
        if not self.closed:
            self.closed = True
            if self._factory is not None:
                self._factory.disconnect().addBoth(self._closed)
            else:
                self._closing = None
        if self._closing is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closing.append(waiter)
        return waiter

    def settings(self) -> dict[str, Any]:
        """What another pool to the same server needs (a subscription's)."""
        return {
            "database": self.database,
            "username": self.username,
            "password": self.password,
            "tls": self._tls,
            "timeout": self.timeout,
        }

    def _closed(self, result: Any) -> None:
        waiters, self._closing = self._closing or [], None
        # Fired from inside txredisapi's ClientService state machine, which
        # must not be re-entered (a waiter might close again): a turn later.
        if waiters:
            self.reactor.callLater(0, lambda: [w.callback(None) for w in waiters])
        if isinstance(result, Failure):
            self.log.failure("{store}: error while closing", result, store=self.store)


# -- pub/sub ------------------------------------------------------------------


class _SubscriberProtocol(_Protocol, txredisapi.SubscriberProtocol):
    """
    A connection set up like the pool's (AUTH, SELECT/PING) that is then
    put in subscribe mode by its :class:`RedisSubscription`.
    """

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        subscription = self.factory.owner.subscription
        if subscription is not None:
            subscription.message(channel, message)

    def connectionLost(self, why: Failure) -> None:
        pool = self.factory.owner
        # Even a clean close (Redis stopped) is an outage for a subscriber:
        # messages published until it is back are lost.
        if not (self._aborted or pool.closed) and why.check(ConnectionDone):
            pool.failed("subscription connection closed by the server")
        super().connectionLost(why)
        if pool.subscription is not None:
            pool.subscription.lost(self)


class _SubscriberFactory(_Factory):
    protocol = _SubscriberProtocol


#: Seconds between PINGs on an idle subscription: a server that stopped
#: answering (paused, a dead peer behind a firewall) is noticed within
#: this plus the timeout, and the connection re-made.
SUBSCRIPTION_PING_INTERVAL = 10.0


class RedisSubscription:
    """
    One connection SUBSCRIBEd to one channel, re-made with the pool's
    backoff whenever it is lost (one log line when lost, one when back,
    from the pool) and checked with a PING every
    :data:`SUBSCRIPTION_PING_INTERVAL` seconds.

    :param reactor: ``IReactorTCP`` and ``IReactorTime``.
    :param channel: the (already namespaced) channel name.
    :param on_message: called with each message's bytes; its exceptions
        are logged, never raised into the connection.
    :param on_subscribed: called each time the subscription is (re)made,
        so the caller can catch up with what it missed meanwhile.
    :param on_lost: called when a subscribed connection is lost.
    :param pool_args: ``host``, ``port`` and the keyword arguments of
        :class:`RedisPool` (see :meth:`RedisPool.settings`).

    :ivar active: whether the channel is subscribed now.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        channel: bytes,
        on_message: Any,
        on_subscribed: Any = None,
        on_lost: Any = None,
        *,
        ping_interval: float = SUBSCRIPTION_PING_INTERVAL,
        **pool_args: Any,
    ):
        self.channel = channel
        self.active = False
        self._reactor = reactor
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self._ping_interval = ping_interval
        self._protocol: Any = None
        self._ping_call: Any = None
        self._pool = RedisPool(reactor, host, port, size=1, label=" (subscriber)", subscription=self, **pool_args)

    @property
    def store(self) -> str:
        return self._pool.store

    def start(self) -> None:
        """Connect and subscribe (in the background; never fails)."""
        # The pool connects on its first use; what that Deferred says is of
        # no interest here (connected() is told about every connection).
        self._pool.connection().addErrback(lambda failure: None)

    def connected(self, protocol: Any) -> None:
        """A pool connection is ready: SUBSCRIBE on it."""
        if self._pool.closed:
            return
        d = protocol.execute_command("SUBSCRIBE", self.channel, apply_timeout=False)
        d.addTimeout(self._pool.timeout, self._reactor)
        d.addCallbacks(lambda _: self._subscribed(protocol), lambda f: self._pool.abort(
            protocol, f"SUBSCRIBE failed: {f.getErrorMessage() or f.type.__name__}"))

    def _subscribed(self, protocol: Any) -> None:
        if not protocol.connected or self._pool.closed:
            return
        self._protocol = protocol
        self.active = True
        self._schedule_ping()
        self._call(self._on_subscribed)

    def _schedule_ping(self) -> None:
        self._ping_call = self._reactor.callLater(self._ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_call = None
        protocol = self._protocol
        if protocol is None or not protocol.connected:
            return
        d = protocol.execute_command("PING")
        d.addTimeout(self._pool.timeout, self._reactor)

        def answered(_: Any) -> None:
            if self._protocol is protocol:
                self._schedule_ping()

        def unanswered(failure: Failure) -> None:
            self._pool.abort(protocol, f"no reply to PING within {self._pool.timeout:g} s")

        d.addCallbacks(answered, unanswered)

    def message(self, channel: Any, data: Any) -> None:
        """A message arrived on the subscribed channel."""
        if channel != self.channel:
            return
        self._call(self._on_message, data)

    def lost(self, protocol: Any) -> None:
        """A connection of the pool was lost."""
        if protocol is not self._protocol:
            return
        self._protocol = None
        self.active = False
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None
        if not self._pool.closed:
            self._call(self._on_lost)

    def _call(self, callback: Any, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self.log.failure("{store}: error handling a subscription event", store=self.store)

    def close(self) -> Deferred:
        """
        Unsubscribe and close the connection for good; harmless twice.

        :return: ``Deferred`` firing with ``None`` once closed.
        """
        self.active = False
        self._protocol = None
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None
        return self._pool.close()
