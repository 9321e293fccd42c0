"""
Fleet propagation over Redis pub/sub: a node that stores a certificate
PUBLISHes ``{"host": ..., "fingerprint": ...}`` on
``<namespace>kongacme:changed`` (see :meth:`RedisStorage.channel`), and
every node keeps a SUBSCRIBE connection to that channel and loads the
host's certificate as soon as a message arrives (milliseconds instead of
a poll interval).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.fleet.feed import IChangeFeed
from kongacme.storage.redis import RedisStorage

#: The channel's name before the namespace is put in front.
CHANNEL = "kongacme:changed"

#: At most one log line per this many seconds about garbage messages.
GARBAGE_LOG_INTERVAL = 60.0

#: A host name as stored under ``kong_acme:cert_key:`` (wildcards too).
_HOST = re.compile(r"\A[a-z0-9_*](?:[a-z0-9_.*-]{0,251}[a-z0-9_])?\Z")
#: Kong's fingerprint format (colon hex; any hash length).
_FINGERPRINT = re.compile(r"\A[0-9A-F]{2}(?::[0-9A-F]{2}){7,63}\Z")


def encode_change(host: str, fingerprint: str) -> bytes:
    """The message announcing ``host``'s certificate ``fingerprint``."""
    return json.dumps({"host": host, "fingerprint": fingerprint}, separators=(",", ":")).encode("ascii")


def decode_change(data: bytes) -> tuple[str, str]:
    """
    ``(host, fingerprint)`` from a message.

    :raises ValueError: if it is not one of :func:`encode_change`'s.
    """
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    host, fingerprint = obj.get("host"), obj.get("fingerprint")
    if not isinstance(host, str) or not _HOST.match(host):
        raise ValueError(f"bad host {host!r:.80}")
    if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
        raise ValueError(f"bad fingerprint {fingerprint!r:.80}")
    return host, fingerprint


@implementer(IChangeFeed)
class RedisChangeFeed:
    """
    :class:`IChangeFeed` on a :class:`RedisStorage`'s server: PUBLISH
    through the storage's pool, SUBSCRIBE on a connection of its own.

    :param storage: the Redis store (namespace, database and connection
        settings come from it).
    :param clock: when garbage was last logged.
    """

    log = Logger()

    def __init__(self, storage: RedisStorage, clock: IReactorTime):
        self._storage = storage
        self._clock = clock
        self._subscription: Any = None
        self._on_change: Optional[Callable[[str, str], Any]] = None
        self._on_connected: Optional[Callable[[], Any]] = None
        self._garbage_logged_at: Optional[float] = None
        self._garbage_suppressed = 0

    @property
    def connected(self) -> bool:
        return self._subscription is not None and self._subscription.active

    def start(self, on_change: Callable[[str, str], Any], on_connected: Callable[[], Any]) -> None:
        if self._subscription is not None:
            return
        self._on_change = on_change
        self._on_connected = on_connected
        self._subscription = self._storage.subscribe(CHANNEL, self._received, on_connected)

    def publish(self, host: str, fingerprint: str) -> Deferred:
        return self._storage.publish(CHANNEL, encode_change(host, fingerprint))

    def stop(self) -> Deferred:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return succeed(None)
        return subscription.close()

    def _received(self, data: bytes) -> None:
        try:
            host, fingerprint = decode_change(data)
        except ValueError as e:
            self._garbage(data, str(e))
            return
        assert self._on_change is not None
        self._on_change(host, fingerprint)

    def _garbage(self, data: bytes, reason: str) -> None:
        # Someone else may publish on the channel: say so, without letting a
        # flood of it flood the log.
        now = self._clock.seconds()
        if self._garbage_logged_at is not None and now - self._garbage_logged_at < GARBAGE_LOG_INTERVAL:
            self._garbage_suppressed += 1
            return
        self.log.warn(
            "ignoring a message on {channel} that is not a certificate change ({reason}): {data}{suppressed}",
            channel=self._storage.channel(CHANNEL).decode("utf-8", "replace"),
            reason=reason,
            data=repr(data[:120]),
            suppressed=f" ({self._garbage_suppressed} more ignored since the last report)"
            if self._garbage_suppressed else "",
        )
        self._garbage_logged_at = now
        self._garbage_suppressed = 0
