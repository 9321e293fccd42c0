"""
``storage: shm``: an in-process :class:`~kongacme.interfaces.IStorage`,
lost on restart (Kong's ``ngx.shared`` dict adapter).
"""

from __future__ import annotations

from typing import Optional

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.storage._common import (
    check_key,
    check_prefix,
    check_ttl,
    check_value,
    expired,
    expiry,
)

#: At most one full sweep of expired entries per this many seconds of clock
#: time, triggered by writes (the only way the table grows).
SWEEP_INTERVAL = 60.0


@implementer(IStorage, IAtomicStorage)
@attrs.define
class MemoryStorage:
    """
    Values in a dict, each with an absolute expiry time taken from the
    injected clock.

    Expired entries are dropped when met (``get``, ``add``, ``list``) and by
    a sweep of the whole table that runs at most once every
    :data:`SWEEP_INTERVAL` seconds, started by a write, so memory stays
    bounded by what was written during one TTL plus one sweep interval.
    ``add`` is atomic because everything runs in the reactor thread. Every
    method returns an already-fired ``Deferred``.

    :ivar _clock: an :class:`~twisted.internet.interfaces.IReactorTime`;
        "now" is ``clock.seconds()``.
    """

    _clock: IReactorTime
    _entries: dict[str, tuple[bytes, Optional[float]]] = attrs.field(factory=dict, init=False, repr=False)
    _next_sweep: float = attrs.field(default=0.0, init=False, repr=False)

    def _live(self, key: str, now: float) -> Optional[bytes]:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expired(expires_at, now):
            del self._entries[key]
            return None
        return value

    def _store(self, key: str, value: bytes, ttl: Optional[float], now: float) -> None:
        self._entries[key] = (value, expiry(now, ttl))
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self.sweep()

    def get(self, key: str) -> Deferred[Optional[bytes]]:
        """
        :return: ``Deferred`` firing with the value, or ``None`` when absent
            or expired.
        """
        check_key(key)
        return succeed(self._live(key, self._clock.seconds()))

    def set(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[None]:
        """
        Store ``value`` under ``key``, replacing any value and TTL.

        :param ttl: seconds until the entry expires, or ``None``.
        :return: ``Deferred`` firing with ``None``.
        """
        check_key(key)
        check_value(value)
        seconds = check_ttl(ttl)
        self._store(key, value, seconds, self._clock.seconds())
        return succeed(None)

    def add(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[bool]:
        """
        Store ``value`` only if ``key`` is absent or expired.

        :return: ``Deferred`` firing with ``True`` if stored.
        """
        check_key(key)
        check_value(value)
        seconds = check_ttl(ttl)
        now = self._clock.seconds()
        if self._live(key, now) is not None:
            return succeed(False)
        self._store(key, value, seconds, now)
        return succeed(True)

    def delete(self, key: str) -> Deferred[None]:
        """
        Remove ``key``; no error if absent.

        :return: ``Deferred`` firing with ``None``.
        """
        check_key(key)
        self._entries.pop(key, None)
        return succeed(None)

    def list(self, prefix: str) -> Deferred[list[str]]:
        """
        :return: ``Deferred`` firing with the unexpired keys that start with
            ``prefix`` (literally; ``""`` lists all).
        """
        check_prefix(prefix)
        now = self._clock.seconds()
        found = [key for key in list(self._entries) if key.startswith(prefix)]
        return succeed([key for key in found if self._live(key, now) is not None])

    def compare_and_set(
        self, key: str, expected: bytes, value: bytes, ttl: Optional[float] = None
    ) -> Deferred[bool]:
        """
        Set ``key`` to ``value`` only if its live value equals ``expected``.

        :return: ``Deferred`` firing with ``True`` if set.
        """
        check_key(key)
        check_value(value)
        seconds = check_ttl(ttl)
        now = self._clock.seconds()
        if self._live(key, now) != expected:
            return succeed(False)
        self._store(key, value, seconds, now)
        return succeed(True)

    def compare_and_delete(self, key: str, expected: bytes) -> Deferred[bool]:
        """
        Delete ``key`` only if its live value equals ``expected``.

        :return: ``Deferred`` firing with ``True`` if deleted.
        """
        check_key(key)
        if self._live(key, self._clock.seconds()) != expected:
            return succeed(False)
        del self._entries[key]
        return succeed(True)

    def sweep(self) -> int:
        """
        Drop every expired entry now.

        :return: how many were dropped.
        """
        now = self._clock.seconds()
        stale = [key for key, (_, expires_at) in self._entries.items() if expired(expires_at, now)]
        for key in stale:
            del self._entries[key]
        return len(stale)

    def __len__(self) -> int:
        """Entries held, including expired ones not yet dropped."""
        return len(self._entries)
