"""
Contexts owned by a certificate, kept while it is and while recently used,
and the count of uses that earns one: what the hot pyOpenSSL contexts
(:mod:`kongacme.tls.context`) and the standard library's
(:mod:`kongacme.tls.stdlib`) are both kept in.
"""

from __future__ import annotations

import collections
import weakref
from typing import Any, Callable, Generic, Hashable, Optional, TypeVar

Value = TypeVar("Value")

#: Keys whose uses are counted at most; the counts start over past it
#: (they are only a hint).
COUNTED = 4096


class OwnedCache(Generic[Value]):
    """
    Values by key, each with its owner (held weakly: the owner's end drops
    the value) and the time it was made; at most ``limit``, the least
    recently used out first. Keys not kept yet have their uses counted
    (:meth:`busy`).
    """

    def __init__(self, limit: int):
        self.limit = limit
        #: key → (weak reference to the owner, value, made at); least recently used first.
        self._entries: "collections.OrderedDict[Hashable, tuple[weakref.ref, Value, float]]" = collections.OrderedDict()
        #: key → uses counted (at most COUNTED keys).
        self._uses: dict[Hashable, int] = {}

    def get(self, key: Hashable, owner: Any, now: float, max_age: float) -> tuple[Optional[Value], bool]:
        """
        ``(value, found)``: the value kept for ``key`` if it is ``owner``'s
        and younger than ``max_age`` seconds (then it becomes the most
        recently used); ``found`` also when it is ``owner``'s but too old.
        """
        entry = self._entries.get(key)
        if entry is None or entry[0]() is not owner:
            return None, False
        if now - entry[2] >= max_age:
            return None, True
        self._entries.move_to_end(key)
        return entry[1], True

    def put(self, key: Hashable, owner: Any, value: Value, now: float) -> None:
        """Keep ``value`` for ``key`` while ``owner`` lives (and it is not pushed out)."""
        entries = self._entries

        def gone(ref: weakref.ref, key: Hashable = key) -> None:
            entry = entries.get(key)
            if entry is not None and entry[0] is ref:
                del entries[key]

        entries[key] = (weakref.ref(owner, gone), value, now)
        entries.move_to_end(key)
        self.trim()

    def trim(self) -> None:
        """Drop the least recently used values beyond ``limit`` (after it is lowered)."""
        entries = self._entries
        while len(entries) > self.limit:
            entries.popitem(last=False)

    def busy(self, key: Hashable, promote_after: int) -> bool:
        """
        Count one more use of ``key``: whether it has now been used
        ``promote_after`` times (then its count is dropped: the value is
        about to be :meth:`put`).
        """
        uses = self._uses.pop(key, 0) + 1
        if uses >= promote_after:
            return True
        if len(self._uses) >= COUNTED:
            self._uses.clear()
        self._uses[key] = uses
        return False

    def discard(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Drop every value and every count."""
        self._entries.clear()
        self._uses.clear()

    def __len__(self) -> int:
        return len(self._entries)


def fresh(table: "dict[Any, tuple[Value, float]]", key: Hashable, now: float, max_age: float,
          make: Callable[[], Value]) -> Value:
    """
    ``table[key]``'s value if it was made less than ``max_age`` seconds
    before ``now``, else ``make()``'s, kept as made now. A context is
    rebuilt so (its ticket keys rotate); the others older than ``max_age``
    go at that rebuild, so contexts of chains no longer in use do not stay.
    ``make``'s exceptions propagate, leaving the table as it was but for
    those.
    """
    entry = table.get(key)
    if entry is not None and now - entry[1] < max_age:
        return entry[0]
    for stale in [k for k, (_, made) in table.items() if now - made >= max_age]:
        del table[stale]
    value = make()
    table[key] = (value, now)
    return value
