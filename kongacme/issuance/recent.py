"""
Per-host memory that cannot grow without bound: with ``allow_any_domain``
every random SNI name a client sends may leave an entry (an error, a
backoff), so each entry expires and the number kept is capped.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, MutableMapping
from typing import Optional, TypeVar

from twisted.internet.interfaces import IReactorTime

V = TypeVar("V")

#: Entries kept per map at most; beyond it the oldest are dropped.
MAX_ENTRIES = 10_000


class ExpiringMap(MutableMapping[str, V]):
    """
    A ``{host: value}`` mapping whose entries expire and whose size is
    capped, oldest written first out.

    ``map[host] = value`` keeps the entry ``max_age`` seconds;
    :meth:`put` gives an entry its own expiry (a backoff's end). Expired
    entries are invisible at once and removed by a sweep at most every
    ``sweep_interval`` seconds (started by a write, so a write costs O(1)
    amortised) and whenever the whole map is read (iteration, ``len``).

    :param clock: "now".
    :param max_age: default lifetime of an entry, seconds.
    :param cap: entries kept at most.
    """

    def __init__(self, clock: IReactorTime, max_age: float, cap: int = MAX_ENTRIES, sweep_interval: float = 60.0):
        self._clock = clock
        self.max_age = max_age
        self.cap = cap
        self.sweep_interval = sweep_interval
        self._entries: collections.OrderedDict[str, tuple[float, V]] = collections.OrderedDict()
        self._next_sweep = clock.seconds() + sweep_interval

    def put(self, host: str, value: V, expires_at: Optional[float] = None) -> None:
        """Keep ``value`` for ``host`` until ``expires_at`` (default: ``max_age`` from now)."""
        now = self._clock.seconds()
        self._entries.pop(host, None)
        self._entries[host] = (now + self.max_age if expires_at is None else expires_at, value)
        while len(self._entries) > self.cap:
            self._entries.popitem(last=False)
        if now >= self._next_sweep:
            self.sweep()

    def sweep(self) -> int:
        """Remove every expired entry now; return how many went."""
        now = self._clock.seconds()
        self._next_sweep = now + self.sweep_interval
        expired = [host for host, (until, _) in self._entries.items() if until <= now]
        for host in expired:
            del self._entries[host]
        return len(expired)

    def __setitem__(self, host: str, value: V) -> None:
        self.put(host, value)

    def __getitem__(self, host: str) -> V:
        until, value = self._entries[host]
        if until <= self._clock.seconds():
            del self._entries[host]
            raise KeyError(host)
        return value

    def __delitem__(self, host: str) -> None:
        del self._entries[host]

    def __iter__(self) -> Iterator[str]:
        # A look at every entry anyway: expired ones go now.
        self.sweep()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.sweep()
        return len(self._entries)

    @property
    def held(self) -> int:
        """Entries in memory, expired ones not yet swept included."""
        return len(self._entries)
