"""
``storage: redis``: Kong's Redis storage adapter
(lua-resty-acme's ``storage/redis.lua``) over txredisapi, so that kongacme
and Kong nodes can share one Redis.

Exactly Kong's layout: the namespace glued onto the key
(:func:`kongacme.storage.keys.redis_key`), values as plain strings,
``add`` = ``SET key value NX PX ttl``, ``list`` = ``SCAN MATCH
<prefix>* COUNT scan_count``. Expiry is Redis's own; no clock is involved.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Generator, Optional

import attrs
import txredisapi
from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.config.storage import RedisStorageConfig
from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.net import client_tls
from kongacme.storage import keys
from kongacme.storage._common import check_key, check_prefix, check_ttl, check_value
from kongacme.storage._redis_connection import RedisPool, RedisSubscription
from kongacme.storage._redis_errors import StorageUnavailable

#: Kong's default host when ``storage_config.redis.host`` is unset.
DEFAULT_HOST = "127.0.0.1"

#: Replies with which a server refuses to serve now rather than rejecting
#: the command: reported as :class:`StorageUnavailable`.
_UNAVAILABLE_REPLIES = (
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
)

# Compare, then SET (with PX unless ARGV[3] is "") or DEL, in one atomic
# step. GET of a missing key is false in Lua, never equal to a string.
_COMPARE_AND_SET = b"""\
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""
_COMPARE_AND_DELETE = b"""\
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def _milliseconds(ttl: float) -> int:
    # PX takes whole milliseconds, and refuses 0.
    return max(1, math.ceil(ttl * 1000))


def _positive(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@implementer(IStorage, IAtomicStorage)
@attrs.define
class RedisStorage:
    """
    An :class:`~kongacme.interfaces.IAtomicStorage` in one Redis database.

    Connections (a small txredisapi pool) are opened on first use and
    re-opened with backoff when lost. Every operation fails with
    :class:`StorageUnavailable` when Redis cannot answer it within
    :attr:`timeout` (down, unreachable, stuck, wrong password, database
    out of range) — whether it took effect is then unknown — and works
    again by itself once Redis is back. Other error replies (e.g.
    ``WRONGTYPE`` for a key another program made a list) fail with
    :class:`txredisapi.ResponseError`.

    :ivar _reactor: ``IReactorTCP`` and ``IReactorTime``: connections and
        timeouts.
    :ivar host: server name or address.
    :ivar port: server port.
    :ivar database: the database number (``SELECT``).
    :ivar username: ACL user (Redis 6+), used with ``password``.
    :ivar password: ``AUTH`` password; ``None`` for no ``AUTH``.
    :ivar namespace: glued in front of every key (Kong's
        ``extra_options.namespace``).
    :ivar scan_count: ``COUNT`` of each ``SCAN`` when listing.
    :ivar timeout: seconds each operation (connecting included) may take.
    :ivar ssl: connect with TLS.
    :ivar ssl_verify: check the server's certificate chain and name.
    :ivar server_name: the name sent as SNI and checked; default ``host``.
    :ivar trust_root: an ``IOpenSSLTrustRoot`` for ``ssl_verify``;
        ``None`` is the system's trust store.
    :ivar pool_size: connections kept open.
    """

    _reactor: Any
    host: str = DEFAULT_HOST
    port: int = 6379
    database: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    username: Optional[str] = None
    password: Optional[str] = attrs.field(default=None, repr=False)
    namespace: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    scan_count: int = attrs.field(default=10, validator=_positive)
    timeout: float = attrs.field(default=2.0, validator=_positive)
    ssl: bool = False
    ssl_verify: bool = False
    server_name: Optional[str] = None
    trust_root: Any = attrs.field(default=None, repr=False)
    pool_size: int = attrs.field(default=2, validator=_positive)
    _pool: RedisPool = attrs.field(init=False, repr=False)
    _subscriptions: list = attrs.field(init=False, factory=list, repr=False)

    def __attrs_post_init__(self) -> None:
        tls = None
        if self.ssl:
            # SNI and verification use server_name, else the host; an IP
            # address is verified but never sent as SNI.
            tls = client_tls(self.server_name or self.host, self.ssl_verify, self.trust_root)
        self._pool = RedisPool(
            self._reactor,
            self.host,
            self.port,
            database=self.database,
            username=self.username,
            password=self.password,
            tls=tls,
            timeout=self.timeout,
            size=self.pool_size,
        )

    @classmethod
    def from_config(cls, config: RedisStorageConfig, reactor: Any, *, trust_root: Any = None) -> "RedisStorage":
        """
        The store ``storage_config.redis`` describes (no connection is
        made until the first operation).

        :param config: the parsed ``redis`` record (``timeout`` in ms).
        :param reactor: ``IReactorTCP`` and ``IReactorTime``.
        :param trust_root: for ``ssl_verify``; default the system's store.
        """
        return cls(
            reactor,
            host=config.host or DEFAULT_HOST,
            port=config.port,
            database=config.database,
            # An empty string (what an Admin API may echo) means "none".
            username=config.username or None,
            password=config.password or None,
            namespace=config.extra_options.namespace,
            scan_count=config.extra_options.scan_count,
            timeout=config.timeout / 1000.0,
            ssl=config.ssl,
            ssl_verify=config.ssl_verify,
            server_name=config.server_name,
            trust_root=trust_root,
        )

    # -- commands -----------------------------------------------------------

    def _name(self, key: str) -> bytes:
        return keys.redis_key(self.namespace, key).encode("utf-8")

    def _run(self, operation: str, send: Callable[[Any], Deferred]) -> Deferred:
        """
        Send one command on a pool connection, within :attr:`timeout`.

        :param operation: names the command in errors.
        :param send: called with a txredisapi protocol, returns its reply.
        """
        try:
            d = self._pool.connection()
        except StorageUnavailable:
            return fail()
        sent_on: list[Any] = []

        def got(protocol: Any) -> Deferred:
            sent_on.append(protocol)
            return send(protocol)

        def timed_out(result: Any, timeout: float) -> Failure:
            if sent_on:
                # No reply on a live connection: it may be stuck (a paused
                # server, a dead peer); drop it rather than queue more on it.
                self._pool.abort(sent_on[0], f"no reply to {operation} within {timeout:g} s")
                reason = f"{operation}: no reply within {timeout:g} s"
            else:
                reason = f"{operation}: no connection within {timeout:g} s{self._last_error()}"
            return Failure(StorageUnavailable(self._pool.store, reason))

        d.addCallback(got)
        d.addTimeout(self.timeout, self._reactor, onTimeoutCancel=timed_out)
        d.addErrback(self._unavailable, operation)
        return d

    def _last_error(self) -> str:
        error = self._pool.last_error
        return f" (last error: {error})" if error else ""

    def _unavailable(self, failure: Failure, operation: str) -> Failure:
        if failure.check(txredisapi.ConnectionError):
            reason = f"{operation}: {failure.getErrorMessage()}{self._last_error()}"
            raise StorageUnavailable(self._pool.store, reason)
        if failure.check(txredisapi.ResponseError) and failure.getErrorMessage().startswith(_UNAVAILABLE_REPLIES):
            raise StorageUnavailable(self._pool.store, f"{operation} refused: {failure.getErrorMessage()}")
        return failure

    # -- IStorage -----------------------------------------------------------

    def get(self, key: str) -> Deferred[Optional[bytes]]:
        """
        ``GET``.

        :return: ``Deferred`` firing with the value, or ``None``.
        """
        name = self._name(check_key(key))
        return self._run("GET", lambda p: p.execute_command("GET", name))

    def set(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[None]:
        """
        ``SET key value [PX ms]``: replaces the value and the TTL.

        :return: ``Deferred`` firing with ``None``.
        """
        name = self._name(check_key(key))
        check_value(value)
        seconds = check_ttl(ttl)
        expiry = () if seconds is None else ("PX", _milliseconds(seconds))
        d = self._run("SET", lambda p: p.execute_command("SET", name, value, *expiry))
        return d.addCallback(lambda _: None)

    def add(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[bool]:
        """
        ``SET key value NX [PX ms]``: stores only if absent.

        :return: ``Deferred`` firing with ``True`` if stored.
        """
        name = self._name(check_key(key))
        check_value(value)
        seconds = check_ttl(ttl)
        expiry = () if seconds is None else ("PX", _milliseconds(seconds))
        d = self._run("SET NX", lambda p: p.execute_command("SET", name, value, "NX", *expiry))
        # "OK" when stored, a nil reply when the key exists.
        return d.addCallback(lambda reply: reply is not None)

    def delete(self, key: str) -> Deferred[None]:
        """
        ``DEL``; no error if absent.

        :return: ``Deferred`` firing with ``None``.
        """
        name = self._name(check_key(key))
        return self._run("DEL", lambda p: p.execute_command("DEL", name)).addCallback(lambda _: None)

    def list(self, prefix: str) -> Deferred[list[str]]:
        """
        ``SCAN 0 MATCH <namespace+prefix, glob-escaped>* COUNT scan_count``
        until the cursor comes back to 0 (each ``SCAN`` within
        :attr:`timeout`).

        :return: ``Deferred`` firing with the keys (namespace removed) that
            start with ``prefix``, each once. Keys that are not UTF-8
            (another program's) are left out.
        """
        check_prefix(prefix)
        return self._scan(prefix)

    @inlineCallbacks
    def _scan(self, prefix: str) -> Generator[Deferred[Any], Any, list[str]]:
        pattern = keys.redis_match(self.namespace, prefix).encode("utf-8")
        found: dict[str, None] = {}
        cursor: Any = b"0"
        while True:
            reply = yield self._run(
                "SCAN",
                lambda p, cursor=cursor: p.execute_command("SCAN", cursor, "MATCH", pattern, "COUNT", self.scan_count),
            )
            cursor, batch = reply
            for raw in batch:
                try:
                    key = keys.redis_unkey(self.namespace, raw.decode("utf-8"))
                except ValueError:
                    continue
                # SCAN may return a key more than once (rehashing).
                if key.startswith(prefix):
                    found[key] = None
            if cursor in (b"0", 0):
                return list(found)

    # -- IAtomicStorage -----------------------------------------------------

    def compare_and_set(
        self, key: str, expected: bytes, value: bytes, ttl: Optional[float] = None
    ) -> Deferred[bool]:
        """
        Set ``key`` to ``value`` (with ``ttl``; ``None``: no expiry) only if
        it holds ``expected``: one Lua script, atomic.

        :return: ``Deferred`` firing with ``True`` if set.
        """
        name = self._name(check_key(key))
        check_value(expected)
        check_value(value)
        seconds = check_ttl(ttl)
        px = b"" if seconds is None else b"%d" % (_milliseconds(seconds),)
        d = self._run(
            "EVAL compare_and_set", lambda p: p.eval(_COMPARE_AND_SET, [name], [expected, value, px])
        )
        return d.addCallback(lambda reply: reply == 1)

    def compare_and_delete(self, key: str, expected: bytes) -> Deferred[bool]:
        """
        Delete ``key`` only if it holds ``expected``: one Lua script,
        atomic.

        :return: ``Deferred`` firing with ``True`` if deleted.
        """
        name = self._name(check_key(key))
        check_value(expected)
        d = self._run("EVAL compare_and_delete", lambda p: p.eval(_COMPARE_AND_DELETE, [name], [expected]))
        return d.addCallback(lambda reply: reply == 1)

    # -- pub/sub --------------------------------------------------------------

    def channel(self, name: str) -> bytes:
        """
        The Redis channel for ``name``: namespaced like keys and, as
        channels are shared by every database of a server, suffixed with
        ``:db<N>`` for a database other than 0.
        """
        suffix = f":db{self.database}" if self.database else ""
        return (self.namespace + name + suffix).encode("utf-8")

    def publish(self, channel: str, message: bytes) -> Deferred[int]:
        """
        ``PUBLISH`` on :meth:`channel` ``(channel)``.

        :return: ``Deferred`` firing with the number of subscribers that
            got it (failing like every command when Redis is unavailable).
        """
        name = self.channel(channel)
        check_value(message)
        return self._run("PUBLISH", lambda p: p.execute_command("PUBLISH", name, message))

    def subscribe(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        on_subscribed: Optional[Callable[[], None]] = None,
        on_lost: Optional[Callable[[], None]] = None,
    ) -> RedisSubscription:
        """
        Receive what is published on :meth:`channel` ``(channel)``, on a
        connection of its own that is re-made by itself after an outage;
        started at once, closed by :meth:`close` (or its own ``close``).
        See :class:`~kongacme.storage._redis_connection.RedisSubscription`
        for the callbacks.
        """
        if self._pool.closed:
            raise StorageUnavailable(self._pool.store, "connection closed")
        subscription = RedisSubscription(
            self._reactor,
            self.host,
            self.port,
            self.channel(channel),
            on_message,
            on_subscribed,
            on_lost,
            **self._pool.settings(),
        )
        self._subscriptions.append(subscription)
        subscription.start()
        return subscription

    # -- lifetime -----------------------------------------------------------

    @property
    def last_error(self) -> Optional[str]:
        """Why the last connection failed, or ``None`` while connected."""
        return self._pool.last_error

    def close(self) -> Deferred[None]:
        """
        Close the connections and stop reconnecting; later operations fail
        with :class:`StorageUnavailable`.

        Subscriptions made by :meth:`subscribe` are closed too.

        :return: ``Deferred`` firing with ``None`` once closed.
        """
        closing = [self._pool.close()] + [s.close() for s in self._subscriptions]
        return gatherResults(closing, consumeErrors=True).addCallback(lambda _: None)

    disconnect = close


__all__ = ["DEFAULT_HOST", "RedisStorage", "StorageUnavailable"]
