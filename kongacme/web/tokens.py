"""
An in-memory http-01 token store (Kong's ``<token>#http-01`` keys with their
3600 s TTL, kept in the process).

The port-80 resource reads it; an issuer in the same process writes it. A
daemon with several processes behind one port 80 needs a shared store
instead.
"""

from __future__ import annotations

from typing import Optional

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from kongacme.interfaces import IChallengeTokenStore

#: How often (seconds of clock time) a write also walks the whole table and
#: drops expired entries, so tokens that are never read again cannot pile up.
SWEEP_INTERVAL = 60.0


@implementer(IChallengeTokenStore)
@attrs.define
class MemoryChallengeTokenStore:
    """
    Key authorizations kept in a dict, each with an absolute expiry time
    taken from the injected clock.

    Expired entries are dropped when read, and by a sweep of the whole table
    that runs at most once every :data:`SWEEP_INTERVAL` seconds, triggered by
    :meth:`put` (the only way the table grows), so memory stays bounded by the
    tokens written during one TTL plus one sweep interval.

    :ivar _clock: an :class:`~twisted.internet.interfaces.IReactorTime`;
        "now" is ``clock.seconds()``.
    """

    _clock: IReactorTime
    _entries: dict[str, tuple[str, float]] = attrs.field(factory=dict, init=False)
    _next_sweep: float = attrs.field(default=0.0, init=False)

    def get(self, token: str) -> Deferred[Optional[str]]:
        """
        Look up a key authorization.

        :param token: the challenge token.
        :return: ``Deferred`` firing with the key authorization, or ``None``
            when the token is unknown or has expired.
        """
        _check_str("token", token)
        entry = self._entries.get(token)
        if entry is None:
            return succeed(None)
        key_authorization, expires_at = entry
        if self._clock.seconds() >= expires_at:
            del self._entries[token]
            return succeed(None)
        return succeed(key_authorization)

    def put(self, token: str, key_authorization: str, ttl: float = 3600) -> Deferred[None]:
        """
        Store a key authorization, replacing any previous one for ``token``.

        :param token: the challenge token.
        :param key_authorization: ``<token>.<account key thumbprint>``.
        :param ttl: seconds until the entry expires; must be positive.
        :return: ``Deferred`` firing with ``None`` once stored.
        :raises TypeError: when ``token`` or ``key_authorization`` is not a
            ``str`` or ``ttl`` is not a number.
        :raises ValueError: when ``ttl`` is not positive.
        """
        _check_str("token", token)
        _check_str("key_authorization", key_authorization)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        now = self._clock.seconds()
        self._maybe_sweep(now)
        self._entries[token] = (key_authorization, now + ttl)
        return succeed(None)

    def remove(self, token: str) -> Deferred[None]:
        """
        Forget a token; no error when it is unknown.

        :param token: the challenge token.
        :return: ``Deferred`` firing with ``None`` once removed.
        """
        _check_str("token", token)
        self._entries.pop(token, None)
        return succeed(None)

    def __len__(self) -> int:
        """
        The number of entries held, expired ones not yet swept included.
        """
        return len(self._entries)

    def _maybe_sweep(self, now: float) -> None:
        """
        Drop every expired entry if the last sweep is old enough.
        """
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        expired = [token for token, (_, expires_at) in self._entries.items() if now >= expires_at]
        for token in expired:
            del self._entries[token]


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
